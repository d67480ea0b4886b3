"""Schedules: pure functions of :class:`~dalib.Progress`, never hidden counters."""

from __future__ import annotations

import math

from dalib.plugin import Progress

__all__ = ["grl_coefficient", "inverse_decay"]


def grl_coefficient(progress: Progress, gamma: float = 10.0, high: float = 1.0) -> float:
    r"""Gradient-reversal coefficient of Ganin et al. (JMLR 2016), rising from 0 to ``high``:

    .. math:: \lambda_p = \text{high}\cdot\Big(\frac{2}{1 + e^{-\gamma p}} - 1\Big),
              \quad p = \text{progress.fraction}
    """
    p = progress.fraction
    return high * (2.0 / (1.0 + math.exp(-gamma * p)) - 1.0)


def inverse_decay(progress: Progress, alpha: float = 10.0, beta: float = 0.75) -> float:
    r"""Learning-rate multiplier of Ganin et al.: :math:`(1 + \alpha p)^{-\beta}`."""
    return (1.0 + alpha * progress.fraction) ** (-beta)
