"""KMM's bandwidth σ for a suite's shallow rows, by importance-weighted cross-validation on the
source (Sugiyama, Krauledat & Müller, JMLR 2007), with no target label.

For each σ of the grid and each task of the suite, KMM fits its weights β from the source to the
target's inputs (the suite's other ``[methods.kmm.shallow]`` settings kept), then the weighted
logistic regression of the suite's ``linear`` rows is cross-validated on the source: three
stratified folds, each scored by its weighted error Σ β_i [ŷ_i ≠ y_i] / Σ β_i over the held-out
fold. The chosen σ has the smallest error, averaged over the tasks. The target enters through its
inputs alone, as it does in KMM itself. Writes benchmarks/results/kmm_bandwidth_SUITE.{json,md};
the suite's ``[methods.kmm.shallow]`` table then carries the choice.

    python benchmarks/kmm_bandwidth.py --suite amazon-reviews --grid 0.3 0.6 1.2 2.4 [--jobs 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _machine import at_least, machine_info  # noqa: E402
from _selection import map_units, reproduce_line, smallest_mean, write_selection  # noqa: E402

#: folds of the source's cross-validation, and the seed that shuffles them
FOLDS = 3
FOLD_SEED = 0


def iwcv_error(xs: np.ndarray, ys: np.ndarray, weights: np.ndarray, classifier: str = "linear") -> float:
    """The importance-weighted cross-validation error on the source: the mean over the folds of
    Σ β_i [ŷ_i ≠ y_i] / Σ β_i on each held-out fold, the classifier trained with the weights of
    the other folds. ``xs`` (N, D), ``ys`` (N,), ``weights`` (N,) ≥ 0."""
    from sklearn.model_selection import StratifiedKFold

    from dalib.shallow import make_classifier

    err = 0.0
    for train, held in StratifiedKFold(FOLDS, shuffle=True, random_state=FOLD_SEED).split(xs, ys):
        clf = make_classifier(classifier).fit(xs[train], ys[train], sample_weight=weights[train])
        w = weights[held]
        err += float(np.sum(w * (clf.predict(xs[held]) != ys[held])) / max(float(np.sum(w)), 1e-300))
    return err / FOLDS


def choose(rows: list[dict[str, Any]]) -> float:
    """The σ whose error, averaged over the tasks, is smallest (the smaller σ on a tie)."""
    return smallest_mean(rows, "bandwidth", "error")


def _features(dataset: str, domain: str, data_root: str | None) -> tuple[np.ndarray, np.ndarray]:
    """A domain as the shallow runner fits it: (N, D) float64 features and (N,) labels."""
    from dalib.data import load_domain

    d = load_domain(dataset, domain, data_root=data_root)
    return d.x.flatten(1).double().numpy(), d.y.numpy()


def _unit(dataset: str, src: str, tgt: str, settings: dict[str, Any], data_root: str | None,
          threads: int) -> dict[str, Any]:
    """One (σ, task): the fitted weights' statistics and the source's IWCV error."""
    import torch

    from dalib.shallow import KMMConfig

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    xs, ys = _features(dataset, src, data_root)
    xt, _ = _features(dataset, tgt, data_root)  # the target's labels are not read
    kmm = KMMConfig(**settings).build().fit(xs, xt)
    w = np.asarray(kmm.weights_, dtype=np.float64)
    return {"task": f"{src}->{tgt}", "bandwidth": settings["bandwidth"], "error": iwcv_error(xs, ys, w),
            "effective_sample_size": float(kmm.effective_sample_size_), "n_source": len(w),
            "zero_fraction": float(np.mean(w == 0)), "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="amazon-reviews")
    ap.add_argument("--grid", type=at_least(0, float, strict=True), nargs="+", required=True,
                    help="bandwidths σ to compare")
    ap.add_argument("--jobs", type=at_least(1), default=1)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--out", type=Path, default=None, help="folder for kmm_bandwidth_SUITE.{json,md} [results/]")
    args = ap.parse_args(argv)

    from dalib_benchmarks.suite import load_suite, worker_threads

    from dalib.errors import DalibError, first_line

    try:
        suite = load_suite(args.suite)
    except DalibError as exc:
        ap.error(first_line(exc))
    base = dict(suite.methods.get("kmm", {}).get("shallow", {}))  # σ itself comes from the grid
    threads = worker_threads(args.jobs)
    units = [(suite.dataset, src, tgt, base | {"bandwidth": sigma}, args.data_root, threads)
             for sigma in args.grid for src, tgt in suite.tasks]
    t0 = time.perf_counter()
    rows = map_units(_unit, units, args.jobs)
    for r in rows:
        print(f"σ = {r['bandwidth']:g}  {r['task']}: IWCV error {r['error']:.4f}  "
              f"effective sample size {r['effective_sample_size']:.0f} of {r['n_source']}", flush=True)
    chosen = choose(rows)
    means = {s: statistics.fmean(r["error"] for r in rows if r["bandwidth"] == s) for s in args.grid}
    payload = {"benchmark": "kmm_bandwidth", "suite": suite.name, "grid": args.grid, "folds": FOLDS,
               "fold_seed": FOLD_SEED, "settings": base, "rows": rows, "mean_error": means, "chosen": chosen,
               "wall_seconds": time.perf_counter() - t0, "machine": machine_info()}
    grid = " ".join(f"{g:g}" for g in args.grid)
    lines = [f"# KMM's bandwidth on the `{suite.name}` suite, by importance-weighted cross-validation", "",
             "Each row fits KMM's weights β from the source to the target's inputs with bandwidth σ, then "
             f"cross-validates the weighted logistic regression on the source ({FOLDS} stratified folds); "
             "error = Σ β_i [ŷ_i ≠ y_i] / Σ β_i on the held-out folds (Sugiyama et al., JMLR 2007). The chosen "
             "σ makes the error, averaged over the tasks, smallest. No target label is read.", "",
             "| σ | mean error over the tasks |", "|---|---|"]
    lines += [f"| {s:g} | {m:.4f} |" for s, m in means.items()]
    lines += ["", "| σ | task | error | effective sample size | zero weights |", "|---|---|---|---|---|"]
    lines += [f"| {r['bandwidth']:g} | {r['task']} | {r['error']:.4f} | {r['effective_sample_size']:.0f} of "
              f"{r['n_source']} | {r['zero_fraction']:.0%} |" for r in rows]
    command = reproduce_line(f"python benchmarks/kmm_bandwidth.py --suite {args.suite} --grid {grid} --jobs {args.jobs}",
                             args.data_root, args.out)
    print(write_selection((args.out or HERE / "results") / f"kmm_bandwidth_{suite.name}", payload, lines, f"σ = {chosen:g}", command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
