"""Speed of dalib's KMM against skada's ``KMMReweightAdapter``, and KMM at 20k points.

Side by side, in one run, on the same synthetic data (seed 0): source ``x ~ N(0, I_d)``,
target ``y ~ 0.8·N(0, I_d) + 0.5``, d = 32.

* ``N_s = N_t = 4000``: skada ``KMMReweightAdapter(gamma=1/(2σ²))`` (its defaults: B = 1000,
  ε = (√n − 1)/√n, Frank-Wolfe, 1000 iterations; dense float64 kernel matrices from
  scikit-learn) against ``dalib.shallow.KMM(bandwidth=σ)`` (defaults). Both get the same
  bandwidth σ (median heuristic, computed once, not timed). Both weight vectors are then
  scored with the same formulas, in float64: the QP objective ``½βᵀKβ − κᵀβ`` that skada
  minimises (κ = (n_s/n_t) K_st 1) and the squared MMD between the β-weighted source and
  the target; ``f − f*`` against the optimum f* of the same QP (dalib in float64 run to
  stagnation, not timed), and whether β is feasible (skada's Frank-Wolfe does not enforce
  β ≤ B). dalib runs twice: with its defaults (tol = 1e-6) and with tol = 1e-4 (still closer
  to f* than skada). The three fits alternate in ``--rounds`` rounds (skada, dalib, dalib
  tol = 1e-4, then again), so that a load that comes and goes on a shared machine slows
  them alike; each round gives a paired speed-up (skada's time over dalib's in that round).
  The table shows the best time of each and the median paired speed-up with its range; the
  target reads the median.
* ``N_s = N_t = 20000``: dalib alone (skada's dense n² float64 matrices would need 3.2 GB
  each and about an hour of Frank-Wolfe), in a fresh subprocess that reports its wall
  time and its peak resident memory (VmHWM from /proc: the whole process, torch included;
  the resident size before the fit is reported beside it).

    python benchmarks/kmm_speed.py                 # ~2 min on 2 cores
    python benchmarks/kmm_speed.py --sizes 4000    # the skada comparison only

Writes benchmarks/results/kmm_speed.json and .md (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def make_data(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    xs = rng.normal(size=(n, d)).astype(np.float32)
    xt = (0.8 * rng.normal(size=(n, d)) + 0.5).astype(np.float32)
    return xs, xt


def score(beta: np.ndarray, xs: np.ndarray, xt: np.ndarray, sigma: float) -> dict:
    """QP objective and MMD² of weights β, float64, by row blocks (no n² matrix kept)."""
    import torch

    from dalib.kernels import gaussian_matvec, gaussian_mean

    x = torch.from_numpy(xs.astype(np.float64))
    y = torch.from_numpy(xt.astype(np.float64))
    b = torch.from_numpy(np.asarray(beta, dtype=np.float64))
    ns, nt = len(xs), len(xt)
    kb = gaussian_matvec(x, x, b, sigma, backend="blocked")  # (ns,)
    kappa = gaussian_matvec(x, y, torch.ones(nt, dtype=torch.float64), sigma, backend="blocked") * (ns / nt)
    qp = float(0.5 * b @ kb - kappa @ b)
    ktt = float(gaussian_mean(y, y, sigma, backend="blocked"))
    return {"qp_objective": qp, "mmd2": 2.0 * qp / ns**2 + ktt}


def feasibility(beta: np.ndarray, upper: float = 1000.0) -> dict:
    """Where β sits in the KMM feasible set {0 ≤ β ≤ B, |mean β − 1| ≤ ε}, ε = (√n − 1)/√n."""
    n = len(beta)
    eps = (math.sqrt(n) - 1.0) / math.sqrt(n)
    mean = float(np.mean(beta))
    return {"max_weight": float(np.max(beta)), "min_weight": float(np.min(beta)), "mean_weight": mean,
            "feasible": bool(np.min(beta) >= 0 and np.max(beta) <= upper and abs(mean - 1.0) <= eps + 1e-12)}


def fit_dalib(xs: np.ndarray, xt: np.ndarray, sigma: float, **params) -> tuple[float, dict]:
    """One timed fit of dalib's KMM: (seconds, what it found)."""
    from dalib.shallow import KMM

    t0 = time.perf_counter()
    est = KMM(bandwidth=sigma, **params).fit(xs, xt)
    seconds = time.perf_counter() - t0
    return seconds, {"weights": est.weights_, "n_iter": est.n_iter_, "kernel_products": est.n_kernel_products_,
                     "backend": est.backend_, "converged": est.converged_}


def fit_skada(xs: np.ndarray, xt: np.ndarray, sigma: float) -> tuple[float, dict]:
    """One timed fit of skada's KMMReweightAdapter: (seconds, its weights)."""
    from skada import KMMReweightAdapter

    x = np.concatenate([xs, xt]).astype(np.float64)
    domain = np.concatenate([np.ones(len(xs), dtype=int), -np.ones(len(xt), dtype=int)])
    t0 = time.perf_counter()
    ad = KMMReweightAdapter(gamma=1.0 / (2.0 * sigma**2)).fit(x, sample_domain=domain)
    seconds = time.perf_counter() - t0
    return seconds, {"weights": np.asarray(ad.source_weights_)}


def child_large(n: int, d: int) -> None:
    """Runs in a fresh process: fit KMM on n points, print one JSON line."""
    import torch

    from dalib.shallow import KMM

    xs, xt = make_data(n, d)
    from _machine import memory_kib  # ships beside this script

    before = memory_kib()  # torch, dalib and the data loaded
    t0 = time.perf_counter()
    est = KMM().fit(xs, xt)  # bandwidth: median heuristic, inside the timed fit
    seconds = time.perf_counter() - t0
    after = memory_kib()
    print(json.dumps({
        "n": n, "d": d, "seconds": seconds, "peak_rss_mib": after["VmHWM"] / 1024,
        "rss_before_fit_mib": before["VmRSS"] / 1024, "peak_before_fit_mib": before["VmHWM"] / 1024,
        "sigma": est.bandwidth_,
        "n_iter": est.n_iter_, "kernel_products": est.n_kernel_products_, "backend": est.backend_,
        "converged": est.converged_, "mmd2": est.mmd2_, "qp_objective": est.objective_,
        "torch_threads": torch.get_num_threads(),
    }))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from _machine import at_least, command, output_stem  # ships beside this script

    ap.add_argument("--sizes", type=at_least(2), nargs="+", default=[4000, 20000])
    ap.add_argument("--dim", type=at_least(1), default=32)
    ap.add_argument("--rounds", type=at_least(1), default=5, help="alternating rounds of the three 4000-point fits")
    ap.add_argument("--out", default=None, help="output stem (default: results/kmm_speed, -custom for other options)")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_large(args.child, args.dim)
        return
    out = output_stem(ap, args, HERE / "results" / "kmm_speed", args.out)

    import torch

    from dalib.kernels import median_bandwidth

    from _machine import machine_info, machine_line, write_results  # ships beside this script

    info = machine_info()
    results: dict = {"machine": info, "dim": args.dim, "comparison": [], "large": []}

    for n in args.sizes:
        if n > 8000:
            proc = subprocess.run(
                [sys.executable, __file__, "--child", str(n), "--dim", str(args.dim)],
                capture_output=True, text=True, check=False,
            )
            if proc.returncode != 0:
                raise SystemExit(f"child for n={n} failed:\n{proc.stderr[-2000:]}")
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"n={n}: {row['seconds']:.1f} s, peak RSS {row['peak_rss_mib']:.0f} MiB, "
                  f"{row['n_iter']} iterations", flush=True)
            results["large"].append(row)
            continue
        xs, xt = make_data(n, args.dim)
        sigma = median_bandwidth(torch.from_numpy(xs), torch.from_numpy(xt))
        settings = (("defaults", {}), ("tol=1e-4", {"tol": 1e-4}))
        times: dict[str, list[float]] = {"skada": [], **{label: [] for label, _ in settings}}
        found: dict[str, dict] = {}
        for _ in range(args.rounds):  # alternate, so that a passing load slows all three alike
            seconds, found["skada"] = fit_skada(xs, xt, sigma)
            times["skada"].append(seconds)
            for label, params in settings:
                seconds, found[label] = fit_dalib(xs, xt, sigma, **params)
                times[label].append(seconds)
        theirs = found["skada"]
        s_theirs = {**score(theirs["weights"], xs, xt, sigma), **feasibility(theirs.pop("weights"))}
        # the optimum, to say how far each solution is from it (float64, run to stagnation; not timed)
        _, ref = fit_dalib(xs, xt, sigma, tol=0.0, max_iter=5000, dtype="float64")
        f_star = score(ref.pop("weights"), xs, xt, sigma)["qp_objective"]
        row = {"n": n, "d": args.dim, "sigma": sigma, "reference_qp_objective": f_star, "rounds": args.rounds,
               "skada": {"seconds": min(times["skada"]), "all_seconds": times["skada"], **s_theirs,
                         "gap_to_optimum": s_theirs["qp_objective"] - f_star},
               "uniform_weights": score(np.ones(n), xs, xt, sigma), "dalib": []}
        print(f"n={n}: skada {min(times['skada']):.2f} s, QP {s_theirs['qp_objective']:.8g} "
              f"(f − f* = {s_theirs['qp_objective'] - f_star:.3g}), MMD² {s_theirs['mmd2']:.5g}", flush=True)
        for label, params in settings:
            ours = found[label]
            s_ours = {**score(ours["weights"], xs, xt, sigma), **feasibility(ours.pop("weights"))}
            paired = sorted(a / b for a, b in zip(times["skada"], times[label]))
            entry = {"setting": label, "params": params, **ours, **s_ours,
                     "seconds": min(times[label]), "all_seconds": times[label],
                     "gap_to_optimum": s_ours["qp_objective"] - f_star,
                     "paired_speedups": paired, "speedup": float(np.median(paired)),
                     "objective_no_worse": s_ours["qp_objective"] <= s_theirs["qp_objective"]}
            row["dalib"].append(entry)
            print(f"  dalib ({label}) {entry['seconds']:.3f} s, QP {s_ours['qp_objective']:.8g} "
                  f"(f − f* = {entry['gap_to_optimum']:.3g}), MMD² {s_ours['mmd2']:.5g}: "
                  f"{entry['speedup']:.1f}x (rounds: {paired[0]:.1f}-{paired[-1]:.1f}x)", flush=True)
        results["comparison"].append(row)

    results["command"] = command("kmm_speed.py", sys.argv[1:])
    print(write_results(out, results, markdown(results, machine_line(info))))


def _speedup(entry: dict) -> str:
    paired = entry.get("paired_speedups") or [entry["speedup"]]
    return f"{entry['speedup']:.1f}x ({min(paired):.1f}-{max(paired):.1f}x)"


def markdown(res: dict, machine: str) -> str:
    lines = [
        "# KMM speed: dalib vs skada",
        "",
        f"Machine: {machine}. torch threads: {res['machine'].get('torch_threads')}.",
        "",
        "Data: source N(0, I), target 0.8·N(0, I) + 0.5, d = "
        f"{res['dim']}, seed 0; Gaussian kernel, σ = median heuristic (same σ for both); "
        "B = 1000, ε = (√n − 1)/√n. Objectives of both weight vectors evaluated with the "
        "same float64 formulas: QP = ½βᵀKβ − κᵀβ (skada's), MMD² of the weighted source "
        "to the target. Lower is better for both.",
        "",
    ]
    if res["comparison"]:
        lines += [
            "| n_s = n_t | solver | best seconds | speed-up vs skada: median (range) over rounds | QP objective | f − f* | MMD² | max β | "
            "feasible (0 ≤ β ≤ B, \\|mean β − 1\\| ≤ ε) | iterations | target met |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in res["comparison"]:
            sk = r["skada"]
            lines.append(
                f"| {r['n']} | skada KMMReweightAdapter (Frank-Wolfe, 1000 it.) | {sk['seconds']:.2f} | 1x | "
                f"{sk['qp_objective']:.9g} | {sk['gap_to_optimum']:.3g} | {sk['mmd2']:.5g} | "
                f"{sk['max_weight']:.3g} | {'yes' if sk['feasible'] else 'NO'} | 1000 | |"
            )
            for e in r["dalib"]:
                ok = e["speedup"] >= 10 and e["objective_no_worse"]
                lines.append(
                    f"| {r['n']} | dalib KMM ({e['setting']}, {e['backend']}) | {e['seconds']:.3f} | "
                    f"{_speedup(e)} | {e['qp_objective']:.9g} | {e['gap_to_optimum']:.3g} | "
                    f"{e['mmd2']:.5g} | {e['max_weight']:.3g} | {'yes' if e['feasible'] else 'NO'} | "
                    f"{e['n_iter']} | {'yes' if ok else 'NO'} (median ≥ 10x, objective no worse) |"
                )
            lines.append(f"| {r['n']} | uniform weights β = 1 | | | | | {r['uniform_weights']['mmd2']:.5g} | 1 | "
                         "yes | | |")
        lines += ["", "f* is the optimum of the same QP (dalib in float64 run to stagnation, not timed). "
                  "skada's Frank-Wolfe does not enforce β ≤ B (its vertices are (1 + ε)·n·e_i). Seconds: "
                  "the best of the rounds; both fits include their kernel computations, not the bandwidth. "
                  "Speed-ups are paired: skada's time over dalib's within each of the "
                  f"{res['comparison'][0].get('rounds', 1)} rounds, in which the three fits alternate.", ""]
    if res["large"]:
        lines += [
            "| n_s = n_t | dalib s (incl. median bandwidth) | peak RSS (MiB, whole process) | RSS before the "
            "fit (MiB: torch, dalib, data) | iterations | backend | MMD² | target met |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in res["large"]:
            ok = r["seconds"] < 60 and r["peak_rss_mib"] < 1024
            lines.append(
                f"| {r['n']} | {r['seconds']:.1f} | {r['peak_rss_mib']:.0f} | {r['rss_before_fit_mib']:.0f} | "
                f"{r['n_iter']} | {r['backend']} | "
                f"{r['mmd2']:.5g} | {'yes' if ok else 'NO'} (< 60 s, < 1 GiB) |"
            )
        lines.append("")
    lines.append(f"Reproduce: `{res.get('command', 'python benchmarks/kmm_speed.py')}` (skada from the `bench` extra: "
                 "`pip install -c constraints.txt skada`).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
