"""What the selection scripts share (coral_tradeoff.py, kmm_bandwidth.py): a grid of one
hyperparameter scored per task, and the choice of the value with the best mean score."""

from __future__ import annotations

import statistics
from typing import Any


def smallest_mean(rows: list[dict[str, Any]], by: str, score: str) -> float:
    """The value of ``rows[i][by]`` whose ``score``, averaged over its rows, is smallest; the
    smaller value on a tie."""
    groups: dict[float, list[float]] = {}
    for r in rows:
        groups.setdefault(r[by], []).append(r[score])
    return min(sorted(groups), key=lambda v: statistics.fmean(groups[v]))
