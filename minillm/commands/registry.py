"""`minillm registry | reproduce | release | export`, and the `compare | safety | robustness | cost` actions of
`minillm eval` (the `eval` parser itself belongs to commands/use.py; `register` extends it, see `_extend_eval`).

    minillm registry list|show NAME|diff A B|add RUN [--name N]|promote NAME --to staging|production [--force]
    minillm reproduce RUN [--out DIR] [--tolerance 1e-6]
    minillm release RUN --out DIR [--force] [--gate FILE] [--set release.KEY=VALUE]
    minillm export --format hf --run RUN --out DIR
    minillm eval compare RUN_A RUN_B [--tolerance 0.02];  minillm eval safety|robustness|cost --run RUN
"""
import json
import os

from minillm.errors import MiniLLMError

DEFAULT_REGISTRY = os.environ.get("MINILLM_REGISTRY", "registry")


def register(sub):
    p = sub.add_parser("registry", help="a local registry of runs: list, show, diff, add, promote")
    p.add_argument("--registry", default=DEFAULT_REGISTRY, help="registry directory (default ./registry or "
                                                               "$MINILLM_REGISTRY)")
    rsub = p.add_subparsers(dest="registry_command", metavar="ACTION", required=True)
    rsub.add_parser("list", help="every entry with its stage, status and headline metrics")
    s = rsub.add_parser("show", help="one entry: manifest summary, lineage, history")
    s.add_argument("name")
    s = rsub.add_parser("diff", help="config and metric differences between two entries (or run dirs)")
    s.add_argument("a")
    s.add_argument("b")
    s = rsub.add_parser("add", help="register a run directory")
    s.add_argument("run")
    s.add_argument("--name")
    s = rsub.add_parser("promote", help="move an entry forward: staging, production (production passes the gate)")
    s.add_argument("name")
    s.add_argument("--to", required=True, choices=["staging", "production"])
    s.add_argument("--force", action="store_true", help="promote even if the release gate fails (recorded)")
    s.add_argument("--gate", help="release gate thresholds (.toml/.json, [release] section)")
    p.set_defaults(func=cmd_registry)

    p = sub.add_parser("reproduce", help="re-run a run from its manifest and check that the metrics match")
    p.add_argument("run")
    p.add_argument("--out", help="where to re-run (default RUN-repro)")
    p.add_argument("--tolerance", type=float, default=1e-6, help="relative tolerance per metric (default 1e-6)")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("release", help="package a run: weights, tokenizer, manifest, model card, SHA256SUMS")
    p.add_argument("run")
    p.add_argument("--out", required=True)
    p.add_argument("--force", action="store_true", help="release even if the gate fails (recorded in the card)")
    p.add_argument("--gate", help="release gate thresholds (.toml/.json, [release] section)")
    p.add_argument("--set", action="append", default=[], metavar="release.KEY=VALUE", help="override a threshold")
    p.set_defaults(func=cmd_release)

    p = sub.add_parser("export", help="export a run to another format (hf: a transformers Llama checkpoint)")
    p.add_argument("--format", required=True, choices=["hf"])
    p.add_argument("--run", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_export)
    _extend_eval(sub)


# ------------------------------------------------------------------------------------------ eval actions


def _extend_eval(sub):
    """Give `minillm eval` (from commands/use.py) the actions compare, safety, robustness and cost.

    `minillm eval --run R` keeps its meaning; `minillm eval compare A B` and `minillm eval safety --run R`
    are new. Done here, after use.py registered `eval`, so that file needs no change.
    """
    p = sub.choices.get("eval")
    if p is None:  # use.py not there: a parser of our own
        p = sub.add_parser("eval", help="evaluate runs")
        p.add_argument("--run")
        p.set_defaults(func=None)
    original = p.get_default("func")
    for action in p._actions:
        if "--run" in action.option_strings:
            action.required = False
    p.add_argument("action", nargs="*", metavar="compare A B | safety | robustness | cost",
                   help="compare two runs, or run a suite on --run (default: the stage's own evaluation)")
    p.add_argument("--tolerance", type=float, default=0.02, help="compare: relative tolerance (default 0.02)")
    p.add_argument("--world-seed", type=int, default=0)

    def dispatch(args):
        act = args.action
        if not act:
            if not getattr(args, "run", None) or original is None:
                raise MiniLLMError("minillm eval needs --run RUN (or an action: compare A B, safety, robustness, cost)")
            return original(args)
        if act[0] == "compare":
            if len(act) != 3:
                raise MiniLLMError("usage: minillm eval compare RUN_A RUN_B [--tolerance 0.02]")
            return cmd_compare(act[1], act[2], args.tolerance, getattr(args, "json", False))
        if act[0] in ("safety", "robustness", "cost") and len(act) == 1:
            if not getattr(args, "run", None):
                raise MiniLLMError(f"minillm eval {act[0]} needs --run RUN")
            return cmd_suite(act[0], args.run, args.world_seed, getattr(args, "json", False))
        raise MiniLLMError(f"unknown eval action {' '.join(act)!r}; use compare A B, safety, robustness or cost")
    p.set_defaults(func=dispatch)


def cmd_compare(a, b, tolerance, as_json=False):
    from minillm.evals.compare import compare_runs, render_table
    rows = compare_runs(a, b, tolerance)
    if as_json:
        print(json.dumps(rows))
    else:
        print(render_table(rows, os.path.basename(os.path.normpath(a)), os.path.basename(os.path.normpath(b))))
    bad = [r["metric"] for r in rows if r["regression"]]
    print(f"{len(bad)} regression(s) beyond tolerance {tolerance:.0%}" + (f": {', '.join(bad)}" if bad else ""))
    return 1 if bad else 0


def cmd_suite(name, run, world_seed, as_json=False):
    if name == "safety":
        from minillm.evals.report import render_safety
        from minillm.evals.safety import run_safety
        res = run_safety(run, world_seed)
        text = render_safety(res)
    elif name == "robustness":
        from minillm.evals.report import render_robustness
        from minillm.evals.robustness import run_robustness
        res = run_robustness(run, world_seed)
        text = render_robustness(res)
    else:
        from minillm.evals.cost import lineage_cost, render_cost_table
        from minillm.registry import write_json_atomic
        res = lineage_cost(run)
        write_json_atomic(os.path.join(run, "cost.json"), res)
        text = render_cost_table(res)
    print(json.dumps({k: v for k, v in res.items() if k != "items"}) if as_json else text)
    return 0


# ------------------------------------------------------------------------------------------ registry


def cmd_registry(args):
    from minillm.registry import Registry, config_diff, load_gate, read_manifest
    reg = Registry(args.registry)
    act = args.registry_command
    if act == "list":
        entries = reg.load()["entries"]
        if not entries:
            print(f"registry {reg.root} is empty; add a run with `minillm registry add RUN`")
            return 0
        print(f"{'name':<24} {'stage':<10} {'status':<11} {'parent':<20} headline")
        for e in entries:
            head = {k: v for k, v in e["metrics"].items() if k.split(".")[-1] in (
                "val_loss", "fact_accuracy", "oracle_score", "refusal_rate", "instruction_accuracy")}
            parent = os.path.basename(str(e.get("parent") or "-").rstrip("/"))
            print(f"{e['name']:<24} {str(e['stage']):<10} {e['status']:<11} {parent:<20} "
                  + ", ".join(f"{k}={v:.4g}" for k, v in head.items()))
        return 0
    if act == "show":
        e = reg.find(args.name)
        m = read_manifest(e["run_dir"])
        print(json.dumps({k: e[k] for k in ("name", "run_dir", "stage", "status", "model_sha256", "added")}, indent=1))
        print("lineage: " + " -> ".join(os.path.basename(r) for r in e["lineage"]))
        print(f"seed {m.get('seed')}, data {str(m.get('data_sha256'))[:12]}, tokenizer "
              f"{str(m.get('tokenizer_sha256'))[:12]}, code {json.dumps(m.get('code_version'))}")
        for h in e["history"]:
            print(f"  {h['time']} {h['action']} -> {h['status']}" + ("  (forced)" if h.get("forced") else ""))
        return 0
    if act == "diff":
        from minillm.evals.compare import compare_runs, render_table
        ra, rb = (_run_of(reg, x) for x in (args.a, args.b))
        ca, cb = read_manifest(ra).get("config") or {}, read_manifest(rb).get("config") or {}
        diffs = config_diff(ca, cb)
        print("config differences:" if diffs else "configs are identical")
        for k, va, vb in diffs:
            print(f"  {k}: {va!r} -> {vb!r}")
        print(render_table(compare_runs(ra, rb), os.path.basename(ra), os.path.basename(rb)))
        return 0
    if act == "add":
        e = reg.add(args.run, args.name)
        print(f"registered {e['name']} ({e['stage']}) -> {reg.index_path}")
        return 0
    if act == "promote":
        e = reg.promote(args.name, args.to, force=args.force, gate=load_gate(args.gate))
        last = e["history"][-1]
        print(f"{e['name']} is now {e['status']}" + (" (forced past a failing gate)" if last.get("forced") else ""))
        return 0
    raise MiniLLMError(f"unknown registry action {act!r}")


def _run_of(reg, key):
    if os.path.isdir(key):
        return os.path.abspath(key)
    return reg.find(key)["run_dir"]


# ------------------------------------------------------------------------------------------ reproduce, release, export


def cmd_reproduce(args):
    from minillm.registry import reproduce
    out = args.out or os.path.normpath(args.run) + "-repro"
    rep = reproduce(args.run, out, tolerance=args.tolerance)
    for r in rep["metrics"]:
        mark = "ok" if r["match"] else "DIFFERS"
        print(f"{r['metric']:>24}: {r['original']!s:>14} {r['reproduced']!s:>14}  {mark}")
    print(f"data and tokenizer hashes equal: {all(rep['hashes'].values())}; bitwise identical weights: "
          f"{rep['bitwise_identical_weights']}")
    print(("reproduced: every metric matches" if rep["match"] else "NOT reproduced: metrics differ")
          + f" (tolerance {args.tolerance:g}; timing metrics ignored) -> {rep['run']}")
    diffs = rep["machine_differences"]
    if diffs:
        print("the machine differs from the original run's (" + "; ".join(f"{k}: {a} -> {b}" for k, a, b in diffs)
              + "): floating-point sums run in another order there, so metrics can differ without any change in code "
              "or data; reproduce on the same kind of machine for an exact match" + _isa_hint(diffs))
    return 0 if rep["match"] else 1


def _isa_hint(differences):
    """A higher vector ISA can run a lower one's kernels: torch reads ATEN_CPU_CAPABILITY (avx2, avx512, default)."""
    was = next((a for k, a, _ in differences if k == "cpu_capability"), None)
    if str(was).lower() not in ("avx2", "default"):
        return ""
    return (f" (or, here, set ATEN_CPU_CAPABILITY={was.lower()} to run torch's {was} kernels: on an AVX-512 "
            f"machine that reproduced an AVX2 pipeline's metrics exactly)")


def cmd_release(args):
    from minillm.registry import load_gate, release
    overrides = {}
    for s in args.set:
        if "=" not in s:
            raise MiniLLMError(f"--set {s!r} must look like release.KEY=VALUE")
        k, v = s.split("=", 1)
        k = k.removeprefix("release.")
        try:
            overrides[k] = json.loads(v.lower() if v.lower() in ("true", "false") else v)
        except ValueError:
            raise MiniLLMError(f"--set {s!r}: the value must be a number or true/false") from None
    info = release(args.run, args.out, load_gate(args.gate, overrides), force=args.force)
    if info["forced"]:
        print("WARNING: released with --force past a failing gate: " + "; ".join(info["gate_failures"]))
    print(f"released {args.run} -> {args.out} ({len(info['files'])} files, SHA256SUMS, MODEL_CARD.md)")
    return 0


def cmd_export(args):
    from minillm.export import export_hf
    info = export_hf(args.run, args.out)
    print(f"exported {args.run} -> {args.out} as a transformers {info['architecture']} checkpoint "
          f"({', '.join(info['files'])})")
    return 0
