"""`minillm kernels info`, `minillm bench kernels` and `minillm bench train`: which kernel backends work here,
and how fast each one is, side by side (see minillm/kernels/bench.py for how the timing stays fair)."""
import json
import os
import platform
import subprocess
import tempfile

from minillm.errors import MiniLLMError


def register(sub):
    p = sub.add_parser("kernels", help="custom kernels: list backends and whether they work here")
    ks = p.add_subparsers(dest="kernels_command", metavar="ACTION")
    info = ks.add_parser("info", help="every backend, whether it is available, and why not")
    info.set_defaults(func=cmd_info)
    p.set_defaults(func=cmd_info)

    b = sub.add_parser("bench", help="benchmark the kernel backends or the training loop under each backend")
    bs = b.add_subparsers(dest="bench_command", metavar="WHAT")
    bk = bs.add_parser("kernels", help="time softmax, attention and AdamW under every backend")
    bk.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    bk.add_argument("--ops", default="softmax,attention,adamw", help="comma-separated subset")
    bk.add_argument("--repeat", type=int, default=15, help="timed repetitions per backend (medians reported)")
    bk.add_argument("--threads", type=int, default=0, help="torch/OpenMP threads (default: torch's choice)")
    bk.add_argument("--quick", action="store_true", help="small shapes only (a quick look, seconds)")
    bk.add_argument("--json", metavar="FILE", help="write the rows (list of dicts) as JSON")
    bk.add_argument("--plot", metavar="FILE", help="write a bar chart (PNG) of speedup vs torch")
    bk.set_defaults(func=cmd_bench_kernels)
    bt = bs.add_parser("train", help="tokens/s of one tiny training run under each backend combination")
    bt.add_argument("--steps", type=int, default=21, help="training steps per combination (first is warm-up)")
    bt.add_argument("--threads", type=int, default=0, help="torch/OpenMP threads (default: torch's choice)")
    bt.add_argument("--json", metavar="FILE")
    bt.set_defaults(func=cmd_bench_train)
    b.set_defaults(func=lambda args: (b.print_help(), 2)[1])


def cmd_info(args):
    import torch

    from minillm import kernels
    from minillm.kernels import build
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'}), CPU {machine()}, "
          f"{torch.get_num_threads()} threads, ATen CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"kernel sources: {os.path.dirname(build.sources()[0]) if build.sources() else 'missing'}; "
          f"build cache: {build.build_dir()}")
    for row in kernels.info():
        mark = "yes" if row["available"] else "no "
        print(f"  {row['backend']:<10} {mark}  {row['detail']}")
    print("auto picks: cuda (CUDA tensors) -> cpp -> reference")
    return 0


def machine():
    name = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        name = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), name)
    except (OSError, subprocess.SubprocessError):
        pass
    return f"{name} x{os.cpu_count()}"


def load():
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def write_json(path, obj):
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def cmd_bench_kernels(args):
    import torch
    from tqdm import tqdm

    from minillm.kernels import bench
    if args.device == "cuda" and not torch.cuda.is_available():
        raise MiniLLMError("--device cuda needs a CUDA GPU and a torch built with CUDA; use --device cpu")
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    bad = [o for o in ops if o not in ("softmax", "attention", "adamw")]
    if bad or not ops:
        raise MiniLLMError(f"unknown op(s) {bad}; choose from softmax, attention, adamw")
    if args.repeat < 1:
        raise MiniLLMError("--repeat must be at least 1")
    if args.threads < 0:
        raise MiniLLMError("--threads must be >= 0 (0 = torch's default)")
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = load()
    bar = tqdm(total=(len(ops) * 2 if not args.quick else len(ops)), desc="bench kernels", unit="case")
    rows, why, _ = bench.run(args.device, ops, args.repeat, args.quick, progress=lambda: bar.update(1))
    bar.close()
    if why:
        print(f"note: our {'cuda' if args.device == 'cuda' else 'cpp'} backend is unavailable ({why}); "
              "timing reference and torch only")
    print(bench.table(rows))
    meta = dict(machine=machine(), threads=torch.get_num_threads(), torch=torch.__version__, device=args.device,
                load_before=load_before, load_after=load())
    if args.device == "cuda":
        meta["gpu"] = torch.cuda.get_device_name()
    print(f"machine: {meta['machine']}, {meta['threads']} threads; load average before {load_before}, "
          f"after {meta['load_after']}")
    if args.json:
        write_json(args.json, [dict(r, **meta) for r in rows])
        print(f"wrote {args.json}")
    if args.plot:
        bench.plot(rows, args.plot, title=f"speedup vs torch on {meta.get('gpu', meta['machine'])}")
        print(f"wrote {args.plot}")
    return 0


def cmd_bench_train(args):
    try:
        from minillm.kernels import bench_train
    except ImportError as e:
        raise MiniLLMError(f"bench train needs the training loop (minillm.train), which is missing here ({e})")
    return bench_train.main(args)
