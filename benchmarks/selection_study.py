"""How well does each selection criterion of ``dalib.selection`` choose, on tasks whose target
labels we have? A study of ``dalib select``, not a selection for a suite.

Every candidate (by default every deep method at its defaults) trains on each task with
``--holdout``; each criterion then picks one candidate per task from the scores ``dalib
select`` reads (no target label), and the table sets the target accuracy of its pick beside
the best candidate's (the oracle, which needs the target labels) and the worst's. The rank
correlation says how well the criterion orders all the candidates, not only the first.
Writes benchmarks/results/selection_study.{json,md}; with other options than the published run's,
selection_study-custom.{json,md} beside them (or in ``--out``, a folder).

    python benchmarks/selection_study.py [--jobs 2] [--steps 2000] [--holdout 0.1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _machine import at_least, command, machine_info, machine_line, output_stem, write_results  # noqa: E402
from _selection import map_units  # noqa: E402

from dalib import list_methods  # noqa: E402

#: the candidates: every built-in deep method at its defaults (finetune needs a pre-trained model)
METHODS = ("source_only", "dann", "mmd", "coral", "ot", "kmm")
#: the tasks: the embedded digits, both ways
TASKS = (("digits", "mnist", "usps"), ("digits", "usps", "mnist"))


def _unit(method: str, dataset: str, src: str, tgt: str, steps: int, holdout: float, seed: int,
          threads: int) -> dict[str, Any]:
    """One candidate on one task: its selection scores and, to judge them, its target accuracy."""
    import torch

    import dalib

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    r = dalib.run(dalib.RunConfig(method=method, dataset=dataset, src=src, tgt=tgt, steps=steps, holdout=holdout,
                                  seed=seed, device="cpu"), None, progress_bar=False)
    return {"method": method, "task": f"{src}->{tgt}", "target_accuracy": r.target_accuracy,
            "source_accuracy": r.source_accuracy, "selection": r.selection, "seconds": time.perf_counter() - t0}


def judge(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per criterion and task: the pick, its target accuracy, the oracle's and the worst's, and
    the Spearman correlation between the criterion's order and the target accuracy's."""
    from scipy.stats import spearmanr

    from dalib.selection import CRITERIA

    out: dict[str, Any] = {}
    tasks = sorted({r["task"] for r in rows}, key=[r["task"] for r in rows].index)
    for name, crit in CRITERIA.items():
        per_task = {}
        for task in tasks:
            cands = [r for r in rows if r["task"] == task]
            sign = 1.0 if crit.lower_is_better else -1.0
            best = min(sign * r["selection"][crit.key] for r in cands)
            # candidates that tie for the best score: dalib select chooses none of them, and nor does the study
            tied = [r for r in cands if sign * r["selection"][crit.key] == best]
            accs = [r["target_accuracy"] for r in cands]
            # the criterion as "higher is better", against the accuracy
            scores = [-sign * r["selection"][crit.key] for r in cands]
            # (no order to compare where all the scores or all the accuracies are equal)
            rho = spearmanr(scores, accs).statistic if len(set(scores)) > 1 and len(set(accs)) > 1 else None
            regrets = [max(accs) - r["target_accuracy"] for r in tied]
            per_task[task] = {"pick": tied[0]["method"] if len(tied) == 1 else None,
                              "pick_accuracy": tied[0]["target_accuracy"] if len(tied) == 1 else None,
                              "tied": {r["method"]: r["target_accuracy"] for r in tied} if len(tied) > 1 else {},
                              "oracle_accuracy": max(accs), "worst_accuracy": min(accs),
                              "regret": regrets[0] if len(tied) == 1 else None,
                              "regret_range": [min(regrets), max(regrets)],
                              "spearman": None if rho is None else float(rho)}
        ranges = [t["regret_range"] for t in per_task.values()]
        out[name] = {"tasks": per_task,
                     # with a tie, the mean regret is a range: from the best to the worst of the tied
                     "mean_regret": statistics.fmean(lo for lo, _ in ranges) if all(lo == hi for lo, hi in ranges) else None,
                     "mean_regret_range": [statistics.fmean(lo for lo, _ in ranges), statistics.fmean(hi for _, hi in ranges)]}
    return out


def markdown(rows: list[dict[str, Any]], verdict: dict[str, Any], info: dict[str, Any], cmd: str) -> str:
    from dalib.selection import CRITERIA

    tasks = list(next(iter(verdict.values()))["tasks"])
    lines = ["# Selection without target labels: a study of `dalib select`", "",
             f"Candidates: {', '.join(f'`{m}`' for m in info['methods'])} at their defaults, "
             f"{info['steps']} steps, seed {info['seed']}, each trained with `--holdout {info['holdout']:g}` "
             f"(the held-out source samples do not train). Tasks: {', '.join(tasks)} on the embedded digits. "
             "Each criterion picks one candidate per task from its scores alone; the target labels are read only "
             "to judge the pick. Regret: the oracle's target accuracy minus the pick's. ρ: Spearman's rank "
             "correlation between the criterion (best first) and the target accuracy over the candidates "
             "(1: it orders them as the target accuracy does). Candidates that tie for a criterion's best score "
             "are all listed, and none is chosen, as `dalib select` chooses none; the mean regret is then the range "
             "from the best of them to the worst.", "",
             "| criterion | " + " | ".join(f"{t}: pick (accuracy) | ρ" for t in tasks) + " | mean regret |",
             "|---|" + "---|---|" * len(tasks) + "---|"]
    def pick(t: dict[str, Any]) -> str:
        if not t["tied"]:
            return f"`{t['pick']}` ({t['pick_accuracy']:.2f})"
        return "tie, none chosen: " + ", ".join(f"`{m}` ({a:.2f})" for m, a in t["tied"].items())

    for name, v in verdict.items():
        cells = [pick(v["tasks"][t]) + " | "
                 + ("n/a" if v["tasks"][t]["spearman"] is None else f"{v['tasks'][t]['spearman']:+.2f}") for t in tasks]
        lo, hi = v["mean_regret_range"]
        regret = f"{lo:.2f}" if v["mean_regret"] is not None else f"{lo:.2f} to {hi:.2f} (a tie)"
        lines.append(f"| `{name}`: {CRITERIA[name].description} | " + " | ".join(cells) + f" | {regret} |")
    first = next(iter(verdict.values()))["tasks"]
    for label, key, regret in (("oracle (target labels)", "oracle_accuracy", "0"), ("worst candidate", "worst_accuracy", "")):
        lines.append(f"| {label} | " + " | ".join(f"({first[t][key]:.2f}) | " for t in tasks) + f" | {regret} |")
    lines += ["", "Every candidate's scores:", "",
              "| task | method | target acc. | held-out source acc. | dev | iwv | entropy | snd | weights' mean | "
              "weights' ESS |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["selection"]
        lines.append(f"| {r['task']} | `{r['method']}` | {r['target_accuracy']:.2f} | {s['holdout_accuracy']:.2f} | "
                     f"{s['dev_risk']:.4f} | {s['iw_risk']:.4f} | {s['entropy']:.4f} | {s['snd']:.4f} | "
                     f"{s['weights_mean']:.3f} | {s['weights_ess']:.3f} |")
    lines += ["", f"Machine: {machine_line(info['machine'])}", "",
              f"Reproduce: `{cmd}` ({info['wall_seconds'] / 60:.1f} min)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list_methods())
    ap.add_argument("--steps", type=at_least(1), default=2000)
    ap.add_argument("--holdout", type=float, default=0.1)
    ap.add_argument("--seed", type=at_least(0), default=0)
    ap.add_argument("--jobs", type=at_least(1), default=1)
    ap.add_argument("--out", type=Path, default=None,
                    help="folder for selection_study.{json,md} (default: results/, as selection_study-custom.* "
                         "for options other than the published run's)")
    args = ap.parse_args(argv)
    if not 0 < args.holdout < 1:
        ap.error(f"--holdout must be in (0, 1), got {args.holdout}")
    if len(args.methods) < 2:
        ap.error("--methods: a selection needs at least two candidates")
    # where it writes, said before training: a narrowed run never replaces the published table
    stem = args.out / "selection_study" if args.out else output_stem(ap, args, HERE / "results" / "selection_study", None)
    from dalib_benchmarks.suite import worker_threads

    threads = worker_threads(args.jobs)
    units = [(m, d, s, t, args.steps, args.holdout, args.seed, threads) for d, s, t in TASKS for m in args.methods]
    t0 = time.perf_counter()
    rows = map_units(_unit, units, args.jobs)
    for r in rows:
        print(f"{r['task']} {r['method']}: target {r['target_accuracy']:.2f}, held-out source "
              f"{r['selection']['holdout_accuracy']:.2f} ({r['seconds']:.0f} s)", flush=True)
    verdict = judge(rows)
    info = {"methods": args.methods, "steps": args.steps, "holdout": args.holdout, "seed": args.seed,
            "jobs": args.jobs, "wall_seconds": time.perf_counter() - t0, "machine": machine_info()}
    cmd = command("selection_study.py", sys.argv[1:] if argv is None else argv)
    payload = {"benchmark": "selection_study", **info, "rows": rows, "verdict": verdict, "command": cmd}
    print(write_results(stem, payload, markdown(rows, verdict, info, cmd)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
