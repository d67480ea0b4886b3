"""Tables and chart of an accuracy suite, from its results JSON.

``bench-SUITE.json`` -> ``bench-SUITE.md`` (target accuracy per method and task, mean ± std
over seeds, the mean over tasks, the difference to source-only, published rows beside ours)
and ``bench-SUITE.png`` (the mean over tasks per method, with the published means).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from dalib.runner import atomic_write_bytes, atomic_write_text

from ._machine import machine_line

__all__ = ["Summary", "summarize", "write_report"]


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _note(settings: dict[str, dict[str, tuple[dict[str, Any], list[str]]]], variant: str,
          values: dict[str, Any] | None, task: str) -> None:
    """Add ``task`` to the tasks of ``variant`` whose cells ran with ``values``."""
    values = values or {}
    tasks = settings.setdefault(variant, {}).setdefault(json.dumps(values, sort_keys=True, default=str), (values, []))[1]
    if task not in tasks:
        tasks.append(task)


def legacy_run_options(state: dict[str, Any]) -> dict[str, Any]:
    """The run options of a results file's deep cells from before each kept its own: the ones
    its top level names, the suite file's [deep] and --steps of the run that wrote it last."""
    return (state.get("deep_options") or {}) | ({"steps": state["steps"]} if state.get("steps") else {})


class Summary:
    """The finished cells of a results file, arranged by variant, task and seed.

    ``acc[variant][task][seed]`` is a target accuracy; ``failed[variant][task]`` the error
    of a cell that failed. ``overall(variant)`` is the mean over tasks: per seed, the mean
    of the tasks; then mean ± std over the seeds that finished every task.
    """

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state
        self.acc: dict[str, dict[str, dict[int, float]]] = {}
        self.failed: dict[str, dict[str, str]] = {}
        self.seconds: dict[str, float] = {}
        self.order: list[str] = []
        self.tasks: list[str] = []
        self.mode: dict[str, str] = {}
        self.classifier: dict[str, str | None] = {}
        # each variant's hyperparameters, with the tasks whose cells ran with them (more than one
        # when the suite file changed between runs that chose some of its cells)
        self.configs: dict[str, dict[str, tuple[dict[str, Any], list[str]]]] = {}
        # each deep variant's run options (the suite's [deep], --steps's steps) in the same way; a
        # cell from before cells kept theirs ran with the file's
        self.run_options: dict[str, dict[str, tuple[dict[str, Any], list[str]]]] = {}
        legacy = legacy_run_options(state)
        for cell in state["cells"].values():
            v, task = cell["variant"], f"{cell['src']}->{cell['tgt']}"
            if v not in self.order:
                self.order.append(v)
            if task not in self.tasks:
                self.tasks.append(task)
            self.mode[v], self.classifier[v] = cell["mode"], cell.get("classifier")
            _note(self.configs, v, cell.get("method_config", {}), task)
            if cell["mode"] == "deep":
                options = cell["run_options"] if "run_options" in cell else legacy
                ran, said = cell.get("steps"), (options or {}).get("steps")
                if isinstance(ran, int) and isinstance(said, int) and ran != said:
                    options = options | {"steps": cell["steps"]}  # what it ran (some versions recorded the file's)
                _note(self.run_options, v, options, task)
            self.seconds[v] = self.seconds.get(v, 0.0) + float(cell.get("seconds", 0.0))
            if cell["status"] == "done":
                self.acc.setdefault(v, {}).setdefault(task, {})[cell["seed"]] = float(cell["target_accuracy"])
            else:
                self.failed.setdefault(v, {})[task] = cell.get("error", "failed")
        # deep before shallow, source-only first within a form, then by name
        self.order.sort(key=lambda v: (self.mode[v] != "deep", self.classifier[v] or "",
                                       not v.startswith("source_only"), v))

    def task_stats(self, variant: str, task: str) -> tuple[float, float, int] | None:
        seeds = self.acc.get(variant, {}).get(task)
        if not seeds:
            return None
        mean, std = _mean_std(list(seeds.values()))
        return mean, std, len(seeds)

    def complete_seeds(self, variant: str) -> set[int]:
        """The seeds of ``variant`` that finished every task."""
        per_task = self.acc.get(variant, {})
        if set(per_task) != set(self.tasks):
            return set()
        return set.intersection(*(set(s) for s in per_task.values()))

    def overall(self, variant: str, among: set[int] | None = None) -> tuple[float, float, int] | None:
        """(mean, std over seeds, number of seeds) of the mean over every task, over the seeds
        that finished every task (those of ``among`` only, if given); None without any."""
        per_task = self.acc.get(variant, {})
        seeds = self.complete_seeds(variant) if among is None else self.complete_seeds(variant) & among
        if not seeds:
            return None
        per_seed = [sum(per_task[t][s] for t in self.tasks) / len(self.tasks) for s in sorted(seeds)]
        mean, std = _mean_std(per_seed)
        return mean, std, len(per_seed)

    def baseline(self, variant: str) -> str:
        return "source_only" if self.mode[variant] == "deep" else f"source_only (shallow, {self.classifier[variant]})"


def _fmt(stats: tuple[float, float, int] | None) -> str:
    if stats is None:
        return "–"
    mean, std, n = stats
    if n < 2:
        return f"{mean:.1f}"
    # a spread that one decimal would show as 0.0 keeps its second: seeds that did differ are
    # not shown as a deterministic row's
    return f"{mean:.1f} ± {std:.2f}" if 1e-9 < std < 0.05 else f"{mean:.1f} ± {std:.1f}"  # (1e-9: float noise)


def _published_rows(suite: Any, summary: Summary) -> dict[str, list[tuple[str, dict[str, float], float | None]]]:
    """variant -> [(label, {task: value}, mean over tasks)] from the suite's [published]."""
    from .suite import parse_task

    rows: dict[str, list[tuple[str, dict[str, float], float | None]]] = {}
    for key, table in suite.published.items():
        variant = table.get("variant", key)
        values = {}
        for task_text, value in table.items():
            if task_text in ("variant", "source", "mean"):
                continue
            src, tgt = parse_task(task_text, suite.dataset)
            values[f"{src}->{tgt}"] = float(value)
        # the paper's own mean is over all the suite's tasks: beside a narrowed run, recompute it over the run's
        mean = table.get("mean") if set(summary.tasks) == _suite_tasks(suite) else None
        if mean is None and values and set(values) >= set(summary.tasks):
            mean = sum(values[t] for t in summary.tasks) / len(summary.tasks)
        rows.setdefault(variant, []).append((f"*published: {table.get('source', key)}*", values, mean))
    return rows


def _short(task: str, suite: Any) -> str:
    """``amazon->webcam`` -> ``A→W`` with the dataset's one-letter aliases when it has them."""
    from dalib.data import get_dataset

    info = get_dataset(suite.dataset)
    back = {}
    for alias, target in info.aliases.items():
        if len(alias) <= 2 and target not in back:
            back[target] = alias
    src, _, tgt = task.partition("->")
    return f"{back.get(src, src)}→{back.get(tgt, tgt)}"


def _suite_tasks(suite: Any) -> set[str]:
    return {f"{src}->{tgt}" for src, tgt in suite.tasks}


#: where ``dalib bench`` writes by default (run from the repository's root)
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _command_cells(suite: Any, state: dict[str, Any], summary: Summary) -> tuple[list[str], list[str], list[int], int]:
    """The methods, tasks and seeds of the command that makes this file's cells (what its runs
    chose, where the suite still runs it, and what its cells hold: a run stopped early chose
    more than it finished), and how many cells that command makes."""
    chosen, cells = state.get("chosen", {}), state["cells"].values()
    runs = suite.variants()
    methods = sorted({c["method"] for c in cells} | (set(chosen.get("methods", [])) & {v.method for v in runs}))
    order = [f"{src}->{tgt}" for src, tgt in suite.tasks]
    tasks = sorted(set(summary.tasks) | (set(chosen.get("tasks", [])) & set(order)),
                   key=lambda t: order.index(t) if t in order else len(order))
    counted = table_seeds(suite, state)  # (seeds taken out of the suite's list since leave it)
    seeds = sorted({c["seed"] for c in cells} | {s for s in chosen.get("seeds", []) if counted is None or s in counted})
    variants = set(summary.order) | {v.name for v in runs if v.method in methods}
    return methods, tasks, seeds, len(variants) * len(tasks) * len(seeds)


def _reproduce(suite: Any, state: dict[str, Any], command: tuple[list[str], list[str], list[int], int],
               out_dir: Path | None = None) -> str:
    """The command that makes the cells of this file (``command``, :func:`_command_cells`):
    the narrowing flags it needs included, and ``--out`` when the file is not in
    ``benchmarks/results``."""
    args = [f"dalib bench {suite.ref}"]
    methods, tasks, seeds, _ = command
    if methods != sorted({v.method for v in suite.variants()}):
        args.append(f"--methods {','.join(methods)}")
    if set(tasks) != _suite_tasks(suite):
        args.append(f"--tasks \"{','.join(tasks)}\"")
    if seeds != sorted(suite.seeds):
        args.append(f"--seeds {','.join(str(x) for x in seeds)}")
    if state.get("steps"):
        args.append(f"--steps {state['steps']}")
    if int(state.get("jobs", 1)) > 1:  # each worker runs with cores/jobs torch threads: the numbers depend on it
        args.append(f"--jobs {state['jobs']}")
    if out_dir is not None and out_dir.resolve() != RESULTS_DIR:
        args.append(f"--out {out_dir.resolve()}")
    args += [f"--plugin {module}" for module in state.get("plugins", [])]
    return " ".join(args)


def _threads_text(state: dict[str, Any]) -> str:
    """How many torch threads the cells ran with (on the CPU the numbers depend on it; ``--jobs``
    gives each worker cores/jobs of them): "" for files from before cells recorded it."""
    done = [c for c in state["cells"].values() if c.get("status", "done") == "done"]  # (a failed cell ran no numbers)
    known = [int(c["threads"]) for c in done if c.get("threads") is not None]
    counts = sorted(set(known))
    if not counts:
        return ""
    which = ("Each cell" if len(known) == len(done) else
             "The cell that recorded it" if len(known) == 1 else f"The {len(known)} cells that recorded it")
    if len(counts) == 1:
        return f" {which} ran with {counts[0]} torch thread{'s' if counts[0] != 1 else ''}."
    return f" {which} ran with {' or '.join(map(str, counts))} torch threads (runs with other `--jobs`)."


def markdown(suite: Any, state: dict[str, Any], summary: Summary, chart: str | None, out_dir: Path | None = None) -> str:
    tasks = summary.tasks
    seeds = sorted({c["seed"] for c in state["cells"].values()})
    over = (f"mean ± sample standard deviation (n − 1) over seeds {', '.join(str(s) for s in seeds)}; the mean "
            "column's is the spread over seeds of each seed's mean over tasks" if len(seeds) > 1
            else f"seed {seeds[0]} alone (no spread)" if seeds else "no run yet")
    narrowed = (f"This file holds {len(tasks)} of the suite's {len(suite.tasks)} tasks; means are over those. "
                if set(tasks) != _suite_tasks(suite) else "")
    head = ["method", *(_short(t, suite) for t in tasks), "mean", "Δ vs source-only"]
    lines = [
        f"# {suite.title}" + (f", {state['steps']} steps" if state.get("steps") else ""),
        "",
        state.get("protocol", suite.protocol),
        "",
        narrowed + f"Target accuracy (%), {over}. "
        "Every number is the model of the **last** step (deep) or the one fitted model (shallow): no "
        "model selection on target labels, and one hyperparameter setting per method for all tasks "
        f"(`{suite.file}`). Target labels are used only to score. "
        "Rows in italics are published figures on the same data (their protocols are stated).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    published = _published_rows(suite, summary)
    partial_delta: list[tuple[str, list[int]]] = []
    for v in summary.order:
        cells = []
        for t in tasks:
            err = summary.failed.get(v, {}).get(t)
            cells.append("failed" if err and summary.task_stats(v, t) is None else _fmt(summary.task_stats(v, t)))
        overall, base = summary.overall(v), summary.baseline(v)
        # against source-only on the seeds both finished: a row of other seeds than the baseline's
        # compared its mean with a mean over other draws
        mine, theirs = summary.complete_seeds(v), summary.complete_seeds(base)
        shared = mine & theirs
        if not shared or v == base:
            delta = ""
        else:
            d = summary.overall(v, shared)[0] - summary.overall(base, shared)[0]
            delta = f"{d:+.2f} {'✓' if d > 0 else '✗'}"
            if shared != mine or shared != theirs:
                partial_delta.append((v, sorted(shared)))
        lines.append(f"| `{v}` | " + " | ".join(cells) + f" | **{_fmt(overall)}** | {delta} |")
        for label, values, mean in published.get(v, []):
            row = [f"{values[t]:.1f}" if t in values else "" for t in tasks]
            lines.append(f"| {label} | " + " | ".join(row) + f" | {'' if mean is None else f'{mean:.1f}'} | |")
    lines += ["", "Δ vs source-only: the mean over tasks minus source-only's in the same form "
              "(deep against deep; shallow against the same classifier without adaptation); ✓ above, ✗ not."]
    if partial_delta:
        lines += ["", "Δ of " + "; ".join(f"`{v}` over seed(s) {', '.join(map(str, seeds))}" for v, seeds in partial_delta)
                  + ": the seeds that both it and its source-only row finished on every task."]
    uneven = [v for v in summary.order if summary.overall(v) is not None
              and summary.overall(v)[2] < len({s for per in summary.acc.get(v, {}).values() for s in per})]
    if uneven:
        lines += ["", "The mean over tasks of " + ", ".join(f"`{v}`" for v in uneven) + " is over the seeds that "
                  "finished every task; the task columns hold every seed run."]
    failures = [(v, t, e) for v, per in summary.failed.items() for t, e in per.items()]
    if failures:
        lines += ["", "Failed cells:", ""] + [f"- `{v}` on {_short(t, suite)}: {e}" for v, t, e in failures]
    if chart:
        lines += ["", f"![mean target accuracy over the tasks]({chart})", "",
                  "Chart: each method's mean target accuracy over the tasks (dot) and its sample standard deviation "
                  "over seeds (whiskers); ◆ a published mean, under its own protocol (stated in the table). The axis "
                  "spans the values shown, not 0 to 100."]
        absent = [v for v in summary.order if summary.overall(v) is None]
        if absent:
            lines += ["", "Not in the chart (no seed finished every task): " + ", ".join(f"`{v}`" for v in absent) + "."]
    suite_steps = (state.get("deep_options") or {}).get("steps")
    text = lambda cfg: ", ".join(f"{k} = {val}" for k, val in sorted(cfg.items())) or "defaults"  # noqa: E731
    lines += ["", "## Settings", ""]
    runs: dict[str, tuple[dict[str, Any], list[str]]] = {}  # each setting of [deep], and the rows that ran with it
    for v in [v for v in summary.order if v in summary.run_options]:  # (the table's order)
        settings = summary.run_options[v]
        for key, (options, tasks) in settings.items():
            where = f" ({', '.join(_short(t, suite) for t in tasks)})" if len(settings) > 1 else ""
            runs.setdefault(key, (options, []))[1].append(f"`{v}`{where}")
    if len(runs) == 1:
        lines.append(f"Deep runs: {text(next(iter(runs.values()))[0])}.")
    elif runs:  # the suite file's [deep] changed between runs that chose some of its cells
        lines.append("Deep runs, with the run options each ran with ([deep] changed between runs that chose some of "
                     "the cells): " + "; ".join(f"{text(o)} for {', '.join(rows)}" for o, rows in runs.values()) + ".")
    if state.get("steps"):
        suite_says = f" (the suite's own: {suite_steps})" if suite_steps is not None else ""
        lines.append(f"The steps were set on the command line: {state['steps']}{suite_says}.")
    lines += ["", "| method | hyperparameters (all tasks) | time, all its cells (s) |", "|---|---|---|"]
    mixed = []
    for v in summary.order:
        settings = list(summary.configs[v].values())
        if len(settings) == 1:
            cfg = text(settings[0][0])
        else:  # the row's numbers come from cells of each setting: all of them are named
            mixed.append(v)
            cfg = "; ".join(f"{text(c)} ({', '.join(_short(t, suite) for t in tasks)})" for c, tasks in settings)
        lines.append(f"| `{v}` | {cfg} | {summary.seconds[v]:.0f} |")
    if mixed:
        lines += ["", "The cells of " + ", ".join(f"`{v}`" for v in mixed) + " ran with different hyperparameters "
                  "(the suite file changed between runs that chose some of its cells), each named with the tasks "
                  "it ran on: their rows mix them. `--methods " + ",".join(mixed) + "` runs the others again "
                  "with the file's."]
    if suite.skip:
        lines += ["", "Not run: " + "; ".join(f"`{k}` ({why})" for k, why in sorted(suite.skip.items())) + "."]
    total = sum(float(c.get("seconds", 0.0)) for c in state["cells"].values())
    used = state.get("jobs_used") or [state.get("jobs", 1)]
    jobs_text = " and ".join(f"`--jobs {j}`" for j in used)
    wall = (f"{state['wall_seconds'] / 60:.1f} min of wall time with {jobs_text}, " if state.get("wall_seconds") else "")
    by_form = {form: sum(t for v, t in summary.seconds.items() if summary.mode[v] == form) for form in ("deep", "shallow")}
    split = (f" (deep rows {by_form['deep'] / 60:.1f} min, shallow rows {by_form['shallow'] / 60:.1f} min)"
             if by_form["deep"] and by_form["shallow"] else "")
    command = _command_cells(suite, state, summary)
    made = command[3]
    timing = state.get("timing", suite.timing)
    if timing and state.get("steps") and suite_steps is not None:  # the suite's note speaks of its own steps
        timing = f'The suite\'s note, written for its own {suite_steps} steps: "{timing}"'
    lines += [
        "",
        f"Time: {wall}{total / 60:.1f} min of cell time ({len(state['cells'])} cell{'s' if len(state['cells']) != 1 else ''}){split}. " + timing,
        "",
        f"Machine: {machine_line(state['machine'])}." + _threads_text(state),
        "",
        f"Reproduce: `{_reproduce(suite, state, command, out_dir)}` (a killed run resumes where it stopped; finished "
        "cells are kept)" + ("." if len(state["cells"]) == made else
                             f"; the file holds {len(state['cells'])} of its {made} cells (its runs chose fewer, or "
                             "stopped early), so the command runs the others."),
    ]
    return "\n".join(lines) + "\n"


def _chart(suite: Any, summary: Summary, path: Path) -> bool:
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    names = [v for v in summary.order if summary.overall(v) is not None]
    if not names:
        return False
    published = _published_rows(suite, summary)
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1.4))
    ys = list(range(len(names)))[::-1]
    stats = [summary.overall(v) for v in names]
    colors = ["#4c72b0" if summary.mode[v] == "deep" else "#dd8452" for v in names]
    means = [s[0] for s in stats]  # type: ignore[index]
    # dots, not bars: the axis spans the values, and a bar's length from a cut axis would
    # overstate the ratios between methods
    for y, s, color in zip(ys, stats, colors):
        ax.errorbar([s[0]], [y], xerr=[s[1]], fmt="o", color=color, ecolor=color, capsize=3,  # type: ignore[index]
                    markersize=6)
    marked: list[float] = []  # the published means drawn beside ours
    for y, v in zip(ys, names):
        for _, _, mean in published.get(v, []):
            if mean is not None:
                ax.plot([mean], [y], marker="D", color="black", markersize=5, linestyle="none")
                marked.append(mean)
    # each value in its label, where no marker covers it
    ax.set_yticks(ys, [f"{v}  {s[0]:.1f}" for v, s in zip(names, stats)], fontsize=8)  # type: ignore[index]
    ax.set_xlabel("target accuracy (%): mean over tasks (dot), sample std over seeds (whiskers)\n"
                  "◆ a published mean (its protocol in the table)", fontsize=9)
    ax.set_title(suite.title, fontsize=10)
    spread = [s[0] - s[1] for s in stats] + [s[0] + s[1] for s in stats]  # type: ignore[index]
    lo, hi = min(spread + marked), max(spread + marked)  # a published mean below or above ours stays on the chart
    pad = max(1.0, 0.08 * (hi - lo))
    ax.set_xlim(max(0.0, lo - pad), min(100.0, hi + pad))
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    atomic_write_bytes(path, lambda fh: fig.savefig(fh, format="png", dpi=110))
    plt.close(fig)
    return True


def write_report(suite: Any, json_path: Path) -> tuple[Path, Path | None]:
    """Write ``.md`` (and ``.png`` when matplotlib is installed) beside ``json_path``."""
    state = json.loads(json_path.read_text(encoding="utf-8"))
    # cells of tasks, forms, classifiers or seeds the suite no longer has, or of a method it now
    # skips, stay in the JSON but not in the table, its means or its Reproduce line
    kept = suite_cells(suite, state)
    left_out = len(state["cells"]) - len(kept)
    state = dict(state, cells=kept)
    summary = Summary(state)
    order = [f"{src}->{tgt}" for src, tgt in suite.tasks]  # the suite's order, not the order cells finished
    summary.tasks.sort(key=lambda t: order.index(t) if t in order else len(order))
    png = json_path.with_suffix(".png")
    drawn = _chart(suite, summary, png)
    md = json_path.with_suffix(".md")
    text = markdown(suite, state, summary, png.name if drawn else None, json_path.parent)
    if left_out:
        text += (f"\n{left_out} finished cell(s) of {json_path.name} belong to tasks, methods, forms or seeds that "
                 f"{suite.file} no longer runs: they stay in the JSON and are left out of this table.\n")
    atomic_write_text(md, text)
    return md, png if drawn else None


def table_seeds(suite: Any, state: dict[str, Any]) -> set[int] | None:
    """The seeds whose cells a results file's table counts: the suite's and those ``--seeds``
    ran beside them (``extra_seeds``); None, for a file from before they were kept: every seed."""
    extra = state.get("extra_seeds")
    return None if extra is None else set(suite.seeds) | set(extra)


def suite_cells(suite: Any, state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A results file's cells that the suite, as it stands, runs: the table's."""
    seeds = table_seeds(suite, state)
    return {k: c for k, c in state["cells"].items() if in_suite(suite, c) and (seeds is None or c.get("seed") in seeds)}


def in_suite(suite: Any, cell: dict[str, Any]) -> bool:
    """Whether a results file's cell is of a task, method and form that the suite, as it stands,
    runs (a method registered by a plugin that this process did not load counts); its seed is
    :func:`suite_cells`' to judge."""
    if cell.get("method") in suite.skip:
        return False
    if (cell.get("src"), cell.get("tgt")) not in {tuple(t) for t in suite.tasks}:
        return False
    if cell.get("mode") == "deep":
        return suite.deep is not None
    return cell.get("classifier") in suite.shallow_classifiers
