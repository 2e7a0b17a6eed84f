"""Record the kernel benchmarks for this machine in benchmarks/results/kernels_<device>.{md,json,png}.

    python benchmarks/bench_kernels.py [--device cpu|cuda] [--threads 1,2] [--repeat 11] [--train]

Runs `minillm bench kernels` once per thread count (ratios are measured side by side inside each run, see
minillm/kernels/bench.py), optionally `minillm bench train`, and writes one markdown report with the exact
commands, the machine (lscpu model name, nproc), the load average before/after, and the date.
"""
import argparse
import datetime
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from minillm.commands.kernels import load, machine, write_json  # noqa: E402
from minillm.kernels import bench  # noqa: E402


def run(cmd):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeat", type=int, default=11)
    ap.add_argument("--train", action="store_true", help="also run `minillm bench train`")
    a = ap.parse_args()
    out = os.path.join(ROOT, "benchmarks", "results")
    os.makedirs(out, exist_ok=True)
    lines = [f"# Kernel benchmarks ({a.device})", "",
             f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
             f"- machine: {machine()} (nproc {os.cpu_count()})", f"- load average at start: {load()}",
             "- every ratio is measured side by side in one process, backends interleaved round by round", ""]
    all_rows = []
    for t in [int(x) for x in a.threads.split(",")]:
        js = os.path.join(out, f".tmp_kernels_{t}.json")
        shown = ["bench", "kernels", "--device", a.device, "--threads", str(t), "--repeat", str(a.repeat)]
        cmd = [sys.executable, "-m", "minillm"] + shown + ["--json", js]
        if t == int(a.threads.split(",")[0]):  # the plot shows the first thread count
            cmd += ["--plot", os.path.join(out, f"kernels_{a.device}.png")]
        run(cmd)
        with open(js) as f:
            rows = json.load(f)
        os.remove(js)
        all_rows += rows
        lines += [f"## {t} thread(s)", "", "`minillm " + " ".join(shown) + "`", "",
                  f"load average before {rows[0]['load_before']}, after {rows[0]['load_after']}", "",
                  bench.table(rows), ""]
    if a.train:
        js = os.path.join(out, ".tmp_train.json")
        cmd = [sys.executable, "-m", "minillm", "bench", "train", "--threads", "1", "--json", js]
        run(cmd)
        with open(js) as f:
            rows = json.load(f)
        os.remove(js)
        lines += ["## bench train (1 thread)", "", "`minillm bench train --threads 1`", "",
                  f"model: {rows[0]['model']}; load before {rows[0]['load_before']}, after {rows[0]['load_after']}", "",
                  "| attention | optimizer | tokens/s | vs torch | final loss |", "|---|---|---|---|---|"]
        lines += [f"| {r['attention']} | {r['optimizer']} | {r['tokens_per_s']} | {r['speedup_vs_torch']} | "
                  f"{r['final_loss']} |" for r in rows]
        all_rows += [dict(r, op="train") for r in rows]
    write_json(os.path.join(out, f"kernels_{a.device}.json"), all_rows)
    path = os.path.join(out, f"kernels_{a.device}.md")
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(path + ".tmp", path)
    print("wrote", path)


if __name__ == "__main__":
    main()
