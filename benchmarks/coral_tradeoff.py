"""Deep CORAL's weight λ by the paper's rule, with no target label: the λ whose CORAL term and
classification loss are about equal at the end of training.

Sun & Saenko (ECCV workshops 2016, section 4.1) set λ "in such a way that at the end of training
the classification loss and CORAL loss are roughly the same". Here the CORAL loss is the term as
it enters the objective, λ·ℓ_CORAL. For each λ of the grid and each task of a suite this trains
Deep CORAL with the suite's settings (one seed), averages both losses over the last fifth of the
logged steps and takes r = λ·ℓ_CORAL / ℓ_cls; the chosen λ makes |log r|, averaged over the tasks,
smallest. It reads the training losses only: the runs' target accuracy is neither kept nor shown.
Writes benchmarks/results/coral_tradeoff_SUITE.{json,md}; the suite's ``[methods.coral]`` table
then carries the choice.

    python benchmarks/coral_tradeoff.py [--suite digits] [--grid 1 3 10 30] [--seed 0] [--jobs 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _machine import at_least, machine_info, output_stem  # noqa: E402
from _selection import map_units, reproduce_line, smallest_mean, write_selection  # noqa: E402

#: the share of the logged steps, at the end of training, whose losses are averaged
TAIL = 0.2
#: a run logs at least this many loss lines (its log_every is lowered when it would log fewer)
MIN_LINES = 10


def end_losses(history: list[dict[str, Any]], tail: float = TAIL) -> tuple[float, float]:
    """Mean classification and CORAL losses over the last ``tail`` of the logged lines."""
    lines = [h for h in history if "loss/cls" in h and "loss/coral" in h]
    if not lines:
        raise ValueError("the run logged no loss/cls and loss/coral lines")
    last = lines[-max(1, round(len(lines) * tail)):]
    return statistics.fmean(h["loss/cls"] for h in last), statistics.fmean(h["loss/coral"] for h in last)


def ratio(trade_off: float, cls: float, coral: float) -> float:
    """λ·ℓ_CORAL / ℓ_cls, both kept above 0."""
    return max(trade_off * coral, 1e-300) / max(cls, 1e-300)


def balance(trade_off: float, cls: float, coral: float) -> float:
    """|log(λ·ℓ_CORAL / ℓ_cls)|: 0 when the two terms are equal."""
    return abs(math.log(ratio(trade_off, cls, coral)))


def choose(rows: list[dict[str, Any]]) -> float:
    """The λ whose mean balance over the tasks is smallest (the smaller λ on a tie)."""
    return smallest_mean(rows, "trade_off", "balance")


def _train(config: Any, threads: int) -> dict[str, Any]:
    import torch

    from dalib.runner import run

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    result = run(config, None, progress_bar=False)
    cls, coral = end_losses(result.history)  # the target accuracy is dropped here, unread
    return {"cls": cls, "coral": coral, "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="digits")
    ap.add_argument("--grid", type=at_least(0, float, strict=True), nargs="+", default=[1.0, 3.0, 10.0, 30.0])
    ap.add_argument("--seed", type=at_least(0), default=0)
    ap.add_argument("--steps", type=at_least(1), default=None, help="the suite's steps unless given")
    ap.add_argument("--jobs", type=at_least(1), default=1)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--out", type=Path, default=None,
                    help="folder for coral_tradeoff_SUITE.{json,md} (default: results/, as coral_tradeoff_SUITE-custom.* "
                         "for another --seed or --steps than the published run's)")
    args = ap.parse_args(argv)

    from dalib_benchmarks.suite import Cell, Variant, load_suite, worker_threads

    from dalib.errors import DalibError, first_line

    try:
        suite = load_suite(args.suite)
    except DalibError as exc:
        ap.error(first_line(exc))
    name = f"coral_tradeoff_{suite.name}"  # the file the suite's [methods.coral] cites, whatever the grid
    stem = args.out / name if args.out else output_stem(ap, args, HERE / "results" / name, None,
                                                         same=("out", "data_root", "jobs", "suite", "grid"))
    deep = [v for v in suite.variants(["coral"]) if v.mode == "deep"]
    if not deep:
        raise SystemExit(f"coral_tradeoff: suite {args.suite} runs no deep coral (no [deep] table, or coral skipped)")
    base = dict(deep[0].method_config)  # the suite's [methods.coral] settings, λ set by the grid
    cells = [Cell(Variant("coral", "deep", None, base | {"trade_off": lam}), task, args.seed)
             for lam in args.grid for task in suite.tasks]
    configs = [suite.run_config(c, steps=args.steps, data_root=args.data_root, device="cpu") for c in cells]
    # at least MIN_LINES logged lines for the end-of-training average, whatever the suite's log_every
    configs = [c if c.log_every and c.steps // c.log_every >= MIN_LINES
               else dataclasses.replace(c, log_every=max(1, c.steps // MIN_LINES)) for c in configs]
    threads = worker_threads(args.jobs)
    t0 = time.perf_counter()
    outcomes = map_units(_train, [(c, threads) for c in configs], args.jobs)
    rows = []
    for cell, config, out in zip(cells, configs, outcomes):
        lam = cell.variant.method_config["trade_off"]
        rows.append({"task": f"{cell.task[0]}->{cell.task[1]}", "trade_off": lam, "cls": out["cls"],
                     "coral": out["coral"], "ratio": ratio(lam, out["cls"], out["coral"]),
                     "balance": balance(lam, out["cls"], out["coral"]), "seconds": out["seconds"]})
        print(f"λ = {lam:g}  {rows[-1]['task']}: cls {out['cls']:.4f}  λ·coral {lam * out['coral']:.4f}"
              f"  ratio {rows[-1]['ratio']:.2f}", flush=True)
    chosen = choose(rows)
    steps = configs[0].steps
    payload = {"benchmark": "coral_tradeoff", "suite": suite.name, "seed": args.seed, "steps": steps,
               "grid": args.grid, "tail": TAIL, "rows": rows, "chosen": chosen,
               "wall_seconds": time.perf_counter() - t0, "machine": machine_info()}
    grid = " ".join(f"{g:g}" for g in args.grid)
    lines = [f"# Deep CORAL's λ on the `{suite.name}` suite, by the paper's rule", "",
             "Sun & Saenko (2016) set λ so that at the end of training the classification loss and the CORAL "
             "loss are about the same. Each row trains Deep CORAL with the suite's settings "
             f"({steps} steps, seed {args.seed}) and averages the losses over the last {TAIL:.0%} of the logged "
             "steps; ratio = λ·ℓ_CORAL / ℓ_cls. The chosen λ makes |log ratio|, averaged over the tasks, "
             "smallest. Only training losses are read: no target label is used.", "",
             "| λ | task | ℓ_cls | λ·ℓ_CORAL | ratio |", "|---|---|---|---|---|"]
    lines += [f"| {r['trade_off']:g} | {r['task']} | {r['cls']:.4f} | {r['trade_off'] * r['coral']:.4f} | "
              f"{r['ratio']:.2f} |" for r in rows]
    command = reproduce_line(f"python benchmarks/coral_tradeoff.py --suite {args.suite} --grid {grid} --seed {args.seed}"
                             f"{f' --steps {args.steps}' if args.steps else ''} --jobs {args.jobs}",
                             args.data_root, args.out)
    print(write_selection(stem, payload, lines, f"λ = {chosen:g}", command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
