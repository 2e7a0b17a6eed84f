"""Pretraining targets, measured: facts learned on the world (clm), masks filled (mlm), Tiny Shakespeare (char).

    python benchmarks/pretrain_targets.py world-clm  [--preset tiny] [--every 250] [--set k=v ...]
    python benchmarks/pretrain_targets.py world-mlm  [--preset tiny]
    python benchmarks/pretrain_targets.py shakespeare --config benchmarks/shakespeare_char.toml

The run is cut into pieces of --every steps; after each piece the held-out metric is measured and the run is
resumed (resume is exact, so this is one uninterrupted run with looks in between). Training time excludes those
looks. train_cpu_s is the CPU time the training used: on a shared, overloaded machine it estimates the wall time
on a quiet one running the same number of threads. Prints one JSON line per look and a final summary line; results go to benchmarks/results/.
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from minillm.config import load_config  # noqa: E402
from minillm.evals.lm import lm_losses  # noqa: E402
from minillm.model import Transformer  # noqa: E402
from minillm.stages.pretrain import evaluate_pretrain, prepare  # noqa: E402
from minillm.train import train  # noqa: E402


def machine():
    try:
        cpu = [l.split(":", 1)[1].strip() for l in subprocess.run(["lscpu"], capture_output=True, text=True)
               .stdout.splitlines() if l.startswith("Model name")][0]
    except Exception:
        cpu = platform.processor()
    return {"cpu": cpu, "nproc": os.cpu_count(), "load": os.getloadavg(), "torch_threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("task", choices=["world-clm", "world-mlm", "shakespeare"])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--config")
    ap.add_argument("--every", type=int, default=250)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--out", default="/tmp/minillm_bench")
    ap.add_argument("--val-windows", type=int, default=4000, help="validation windows for user text")
    ap.add_argument("--limit", type=int, default=None, help="evaluate on the first N held-out prompts")
    args = ap.parse_args()

    overrides = list(args.set)
    if args.task == "world-mlm":
        overrides.append("objective=mlm")
    if args.task == "shakespeare" and not args.config:
        args.config = os.path.join(os.path.dirname(__file__), "shakespeare_char.toml")
    cfg = load_config(args.preset, args.config, overrides + ["train.progress=false"])
    run = os.path.join(args.out, args.task)
    shutil.rmtree(run, ignore_errors=True)
    stage, tok, fields = prepare(cfg, run)
    torch.manual_seed(cfg.train.seed)
    model = Transformer(cfg.model)
    info = {"task": args.task, "params": model.num_params(), "vocab": tok.vocab_size, "config": cfg.to_dict(),
            "machine": machine(), "argv": sys.argv[1:]}
    print(json.dumps({"start": info}), flush=True)
    train_time, train_cpu, step, looks = 0.0, 0.0, 0, []
    while step < cfg.train.max_steps:
        stop = min(step + args.every, cfg.train.max_steps)
        t, cpu = time.time(), time.process_time()
        final = train(model, stage, cfg.train, run, config=cfg.to_dict(), manifest=fields, resume=step > 0,
                      stop_after=stop, final_eval=False)
        train_time += time.time() - t
        train_cpu += time.process_time() - cpu
        step = stop
        t = time.time()
        if stage.world is not None:
            metrics = evaluate_pretrain(model, tok, stage.val_tokens, cfg.objective, stage.world,
                                        cfg.data.mlm_prob, args.limit)
        else:  # user text: the loss over (nearly) the whole validation split, not a sample
            metrics = lm_losses(model, stage.val_tokens, tok, cfg.objective, max_windows=args.val_windows)
        row = {"step": step, "train_time_s": round(train_time, 1), "train_cpu_s": round(train_cpu, 1), "eval_s": round(time.time() - t, 1),
               "tok_per_s": final.get("tok_per_s"), "loss": final.get("loss"),
               **{k: round(v, 4) for k, v in metrics.items()}, "load": os.getloadavg()[0]}
        looks.append(row)
        print(json.dumps(row), flush=True)
    summary = {"summary": looks[-1], "start": info}
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
