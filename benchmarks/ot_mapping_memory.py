"""Peak memory and time of ``OTMapping`` on its two paths: POT's dense plan, and the
log-domain solver that forms no n_s x n_t matrix.

Side by side, in one run, on kmm_speed.py's synthetic data (seed 0): source ``x ~ N(0, I_d)``,
target ``y ~ 0.8·N(0, I_d) + 0.5``, d = 32 (float32, given as float64 arrays), ``OTMapping(reg=1)`` (norm "median"). Each fit
runs in a fresh subprocess that reports its wall time and the peak resident memory its fit
added (VmHWM from /proc after the fit, less VmHWM before it: torch, dalib and the data
loaded). At each size of ``--pot-sizes`` both paths run, and the largest difference between
their mapped samples is reported relative to the spread of the target (the log-domain path
estimates the median of the cost on a subset of at most 2048 x 2048, which moves it a little);
the other sizes run the log-domain path alone. The log-domain path is ``backend="auto"``'s
above 4096² plan entries, and ``blocked`` at smaller sizes (where ``auto`` would take POT); (POT's plan at 10000 x 10000 is 800 MB in
float64, with the cost matrix beside it). A dense float32 plan's size is given beside each
row: the log-domain path is expected to stay far below it.

    python benchmarks/ot_mapping_memory.py          # ~1 min on 2 cores

Writes benchmarks/results/ot_mapping_memory.json and .md (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def make_data(n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """kmm_speed.py's data (float32 there), as float64 arrays."""
    from kmm_speed import make_data as kmm_data  # ships beside this script

    return tuple(a.astype(np.float64) for a in kmm_data(n, d))  # type: ignore[return-value]


def child(n: int, d: int, backend: str, save: str | None) -> None:
    """Runs in a fresh process: one fit, one JSON line (and the mapped samples to ``save``)."""
    import torch

    from dalib.shallow import OTMapping

    from _machine import memory_kib  # ships beside this script

    xs, xt = make_data(n, d)
    before = memory_kib()
    t0 = time.perf_counter()
    est = OTMapping(reg=1.0, backend=backend).fit(xs, xt)
    seconds = time.perf_counter() - t0
    after = memory_kib()
    if save:
        np.save(save, est.mapped_)
    print(json.dumps({"n": n, "d": d, "backend": est.backend_, "seconds": seconds,
                      "added_peak_mib": (after["VmHWM"] - before["VmHWM"]) / 1024,
                      "peak_mib": after["VmHWM"] / 1024, "converged": bool(est.converged_),
                      "plan_formed": est.coupling_ is not None, "torch_threads": torch.get_num_threads()}))


def _run_child(n: int, d: int, backend: str, save: str | None = None) -> dict:
    argv = [sys.executable, __file__, "--child", str(n), "--dim", str(d), "--backend", backend]
    proc = subprocess.run(argv + (["--save", save] if save else []), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"the fit at n={n} ({backend}) failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from _machine import at_least, command, output_stem  # ships beside this script

    ap.add_argument("--sizes", type=at_least(2), nargs="+", default=[5000, 10000, 20000])
    ap.add_argument("--pot-sizes", type=at_least(2), nargs="*", default=[5000],
                    help="sizes at which POT's dense path runs too (and the mappings are compared)")
    ap.add_argument("--dim", type=at_least(1), default=32)
    ap.add_argument("--out", default=None, help="output stem (default: results/ot_mapping_memory, -custom otherwise)")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--backend", default="auto", help=argparse.SUPPRESS)
    ap.add_argument("--save", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.dim, args.backend, args.save)
        return
    out = output_stem(ap, args, HERE / "results" / "ot_mapping_memory", args.out)

    import tempfile

    from dalib.shallow.ot_mapping import POT_MAX_ENTRIES

    from _machine import machine_info, machine_line, write_results  # ships beside this script

    info = machine_info()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sorted(set(args.sizes) | set(args.pot_sizes)):
            both = n in args.pot_sizes
            # auto takes POT up to POT_MAX_ENTRIES plan entries: there the log-domain path is asked for
            log_backend = "auto" if n * n > POT_MAX_ENTRIES else "blocked"
            log = _run_child(n, args.dim, log_backend, f"{tmp}/log.npy" if both else None)
            row = {"n": n, "dense_float32_plan_mib": n * n * 4 / 2**20, "log_domain": log}
            if both:
                row["pot"] = _run_child(n, args.dim, "pot", f"{tmp}/pot.npy")
                _, xt = make_data(n, args.dim)
                gap = np.abs(np.load(f"{tmp}/log.npy") - np.load(f"{tmp}/pot.npy")).max()
                row["max_mapping_difference_over_target_spread"] = float(gap / np.ptp(xt, axis=0).max())
            rows.append(row)
            print(f"n={n}: log-domain {log['seconds']:.1f} s, +{log['added_peak_mib']:.0f} MiB"
                  + (f"; POT {row['pot']['seconds']:.1f} s, +{row['pot']['added_peak_mib']:.0f} MiB" if both else "")
                  + f" (a dense float32 plan: {row['dense_float32_plan_mib']:.0f} MiB)", flush=True)
    results = {"machine": info, "dim": args.dim, "rows": rows, "command": command("ot_mapping_memory.py", sys.argv[1:])}
    print(write_results(out, results, markdown(results, machine_line(info))))


def markdown(res: dict, machine: str) -> str:
    lines = [
        "# OTMapping: peak memory and time of its two paths",
        "",
        f"Machine: {machine}.",
        "",
        f"Data: source N(0, I), target 0.8·N(0, I) + 0.5, d = {res['dim']}, seed 0 (kmm_speed.py's, float32, given as float64 arrays); "
        "`OTMapping(reg=1)` (norm median). Each fit in a fresh process; \"added peak\" is the peak resident "
        "memory the fit added (VmHWM after it, less VmHWM before it). The log-domain path is what "
        "`backend=\"auto\"` picks above 4096² plan entries; at the sizes where POT ran as well, both were fitted "
        "and their mapped samples compared.",
        "",
        "| n_s = n_t | path | time (s) | added peak (MiB) | a dense float32 plan (MiB) | plan formed | max mapping difference / target spread |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in res["rows"]:
        for key in ("pot", "log_domain"):
            if key not in row:
                continue
            fit = row[key]
            diff = row.get("max_mapping_difference_over_target_spread")
            lines.append(f"| {row['n']} | {fit['backend']} | {fit['seconds']:.1f} | {fit['added_peak_mib']:.0f} | "
                         f"{row['dense_float32_plan_mib']:.0f} | {'yes' if fit['plan_formed'] else 'no'} | "
                         f"{'' if diff is None or key == 'pot' else f'{diff:.2e}'} |")
    lines += ["", f"Reproduce: `{res['command']}`"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
