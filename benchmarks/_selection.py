"""What the selection scripts share (coral_tradeoff.py, kmm_bandwidth.py): a grid of one
hyperparameter scored per task, in parallel worker processes, the choice of the value with
the best mean score, and the report that says how it was chosen."""

from __future__ import annotations

import multiprocessing
import shlex
import statistics
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # (imported from the package, not as a script)
from _machine import machine_line, write_results  # noqa: E402


def map_units(fn: Callable[..., Any], units: Sequence[tuple], jobs: int) -> list[Any]:
    """``fn(*unit)`` for every unit, in order: in this process when ``jobs`` is 1 (datasets
    registered here need no worker), else in ``jobs`` spawned worker processes."""
    if jobs == 1:
        return [fn(*unit) for unit in units]
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(fn, *zip(*units)))


def reproduce_line(base: str, data_root: str | None, out: Path | None) -> str:
    """``base``, the command with the options that choose the figures, followed by the options
    that say where this run read its data and wrote its results, when they were given: a
    Reproduce line that, run again, reads and writes where this one did."""
    return " ".join([base, *(f"{opt} {shlex.quote(str(v))}" for opt, v in (("--data-root", data_root), ("--out", out))
                             if v)])


def smallest_mean(rows: list[dict[str, Any]], by: str, score: str) -> float:
    """The value of ``rows[i][by]`` whose ``score``, averaged over its rows, is smallest; the
    smaller value on a tie."""
    groups: dict[float, list[float]] = {}
    for r in rows:
        groups.setdefault(r[by], []).append(r[score])
    return min(sorted(groups), key=lambda v: statistics.fmean(groups[v]))


def write_selection(stem: Path, payload: dict[str, Any], lines: list[str], chosen: str, command: str) -> str:
    """Write ``STEM.json`` (``payload``, with its ``machine`` and ``wall_seconds``) and ``STEM.md``:
    ``lines``, then the choice, the machine and the command that reproduces it."""
    lines = [*lines, "", f"Chosen: **{chosen}**.", "", f"Machine: {machine_line(payload['machine'])}", "",
             f"Reproduce: `{command}` ({payload['wall_seconds'] / 60:.1f} min)."]
    return write_results(stem, payload, "\n".join(lines))
