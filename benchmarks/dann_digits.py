"""DANN against source-only on the embedded digits (MNIST 2000 -> USPS 1800, 16x16).

Runs ``dalib run METHOD --src mnist --tgt usps`` with the default settings for each
method and seed, side by side, and writes benchmarks/results/dann_digits_SRC_TGT.{json,md}.

    python benchmarks/dann_digits.py [--seeds 0 1 2] [--steps 2000] [--pair mnist usps]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _machine import at_least, command, machine_info, machine_line, output_stem, write_results  # noqa: E402

from dalib import list_methods  # noqa: E402
from dalib.data import get_dataset  # noqa: E402
from dalib.runner import RunConfig, run  # noqa: E402

RESULTS = HERE / "results"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=at_least(0), nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=at_least(1), default=2000)
    ap.add_argument("--pair", nargs=2, default=["mnist", "usps"], metavar=("SRC", "TGT"),
                    choices=[d for d in get_dataset("digits").domains])
    ap.add_argument("--methods", nargs="+", default=["source_only", "dann"], choices=list_methods())
    ap.add_argument("--out", default=None, help="output stem (default: results/dann_digits_SRC_TGT, -custom for "
                                                "other seeds, steps or methods)")
    given = list(sys.argv[1:] if argv is None else argv)
    args = ap.parse_args(argv)
    src, tgt = args.pair
    out = output_stem(ap, args, RESULTS / f"dann_digits_{src}_{tgt}", args.out, same=("out", "pair"))
    rows: dict[str, list[dict]] = {m: [] for m in args.methods}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for method in args.methods:
                cfg = RunConfig(method=method, src=src, tgt=tgt, steps=args.steps, seed=seed)
                t0 = time.perf_counter()
                res = run(cfg, Path(tmp) / f"{method}-{seed}", progress_bar=False)
                rows[method].append({"seed": seed, "source_accuracy": res.source_accuracy,
                                     "target_accuracy": res.target_accuracy, "seconds": time.perf_counter() - t0})
                print(f"{method:<12} seed {seed}: source {res.source_accuracy:6.2f}  target {res.target_accuracy:6.2f}"
                      f"  ({rows[method][-1]['seconds']:.0f} s)", flush=True)
    summary = {}
    for method, runs in rows.items():
        accs = [r["target_accuracy"] for r in runs]
        summary[method] = {"mean": statistics.mean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                           "min": min(accs), "max": max(accs)}
    payload = {
        "benchmark": "dann_digits", "src": src, "tgt": tgt, "steps": args.steps, "seeds": args.seeds,
        "protocol": "embedded JDA digits (MNIST 2000, USPS 1800, 16x16), LeNet-style CNN, default run settings, "
                    "target accuracy on all target samples after the last step (no target-label model selection)",
        "runs": rows, "summary": summary,
        "machine": machine_info(),
    }
    payload["command"] = command("dann_digits.py", given)
    text = markdown(payload)
    write_results(out, payload, text)
    print(text)
    return 0


def markdown(payload: dict) -> str:
    """The table of a results file: its protocol, machine and command above the rows."""
    lines = [f"# {payload['src']} -> {payload['tgt']}: target accuracy (%), {payload['steps']} steps, "
             f"seeds {payload['seeds']}", "",
             f"Protocol: {payload['protocol']}.", "",
             f"Machine: {machine_line(payload['machine'])}", "",
             f"Command: `{payload['command']}`", "",
             "| method | mean | std (sample, n−1) | min | max | per seed |", "|---|---|---|---|---|---|"]
    for method, s in payload["summary"].items():
        per = ", ".join(f"{r['target_accuracy']:.2f}" for r in payload["runs"][method])
        lines.append(f"| {method} | {s['mean']:.2f} | {s['std']:.2f} | {s['min']:.2f} | {s['max']:.2f} | {per} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
