"""Maximum mean discrepancy with a multi-bandwidth Gaussian kernel (MK-MMD, DAN)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from dalib.errors import InputError
from dalib.kernels._checks import as_gammas, check_pair, outside_autocast
from dalib.kernels.backends import resolve_backend, with_keops_fallback
from dalib.kernels.distance import median_bandwidth
from dalib.kernels.gaussian import gaussian_sum_unchecked

__all__ = ["MEDIAN_MULTIPLIERS", "mmd"]

#: With ``bandwidths=None``: σ_k = (median pairwise distance) × 2^k, k = −2 … 2.
MEDIAN_MULTIPLIERS = (0.25, 0.5, 1.0, 2.0, 4.0)

ESTIMATORS = ("biased", "unbiased", "linear")


def _linear(x: Tensor, y: Tensor, gammas: Tensor) -> Tensor:
    """Gretton et al.'s linear-time estimator over disjoint pairs (x_{2i}, x_{2i+1})."""
    n = min(x.shape[0], y.shape[0]) // 2 * 2
    x1, x2, y1, y2 = x[0:n:2], x[1:n:2], y[0:n:2], y[1:n:2]  # (n/2, D) each

    def k(u: Tensor, v: Tensor) -> Tensor:
        d = (u - v).pow(2).sum(1, keepdim=True)  # (n/2, 1)
        return torch.exp(-d * gammas).sum(1)  # (n/2,)

    return (k(x1, x2) + k(y1, y2) - k(x1, y2) - k(x2, y1)).mean()


@outside_autocast
def mmd(
    x: Tensor,
    y: Tensor,
    kernel: str = "gaussian",
    bandwidths: float | Sequence[float] | Tensor | None = None,
    estimator: str = "biased",
    backend: str = "auto",
) -> Tensor:
    r"""Squared maximum mean discrepancy with a multi-bandwidth Gaussian kernel.

    .. math::
        \mathrm{MMD}^2(X, Y) = \mathbb E\,k(x, x') + \mathbb E\,k(y, y') - 2\,\mathbb E\,k(x, y),
        \qquad k(u, v) = \sum_{\sigma} \exp\!\big(-\|u - v\|^2 / (2\sigma^2)\big)

    (Gretton et al., "A Kernel Two-Sample Test", JMLR 2012; the multi-kernel of DAN, Long
    et al., ICML 2015, with equal weights). ``x`` (N, D) and ``y`` (M, D), e.g. source
    and target features. ``estimator``:

    * ``"biased"`` (V-statistic): the means over all pairs, diagonals included; ≥ 0 up to rounding (in float32, down to about −1e-6 of a unit kernel);
    * ``"unbiased"`` (U-statistic): diagonal terms ``k(x_i, x_i)`` excluded from the
      within-domain means; 0 in expectation when X and Y share a distribution, can be < 0;
      needs N, M ≥ 2;
    * ``"linear"``: Gretton's O(N) estimator over disjoint pairs, as DAN trains with:
      ``mean_i k(x_{2i}, x_{2i+1}) + k(y_{2i}, y_{2i+1}) − k(x_{2i}, y_{2i+1}) − k(x_{2i+1}, y_{2i})``
      over the first ``2⌊min(N, M)/2⌋`` samples; needs N, M ≥ 2.

    ``bandwidths``: a float or a sequence / 1-D tensor of σ's (constants); ``None`` uses
    the median heuristic, σ_k = median(‖z_i − z_j‖) × {1/4, 1/2, 1, 2, 4} over the pooled
    samples (:func:`dalib.kernels.median_bandwidth`, computed without gradient).
    ``backend``: see :func:`dalib.kernels.resolve_backend`. Returns a scalar tensor,
    differentiable w.r.t. ``x`` and ``y``.
    """
    if kernel != "gaussian":
        raise InputError(f"unknown kernel {kernel!r}; known: 'gaussian'")
    if estimator not in ESTIMATORS:
        raise InputError(f"unknown estimator {estimator!r}; known: {', '.join(ESTIMATORS)}")
    x, y = check_pair(x, y)
    n, m = x.shape[0], y.shape[0]
    if estimator != "biased" and min(n, m) < 2:
        raise InputError(f"the {estimator} MMD estimator needs at least 2 samples per side, got {n} and {m}")
    if bandwidths is None:
        med = median_bandwidth(x, y)
        bandwidths = [med * k for k in MEDIAN_MULTIPLIERS]
    gam = as_gammas(bandwidths, x)  # (S,) 1/(2σ²)
    if estimator == "linear":
        return _linear(x, y, gam)
    gammas = tuple(gam.tolist())

    def sums(name: str) -> tuple[Tensor, Tensor, Tensor]:
        return (
            gaussian_sum_unchecked(x, x, gammas, name),
            gaussian_sum_unchecked(y, y, gammas, name),
            gaussian_sum_unchecked(x, y, gammas, name),
        )

    kxx, kyy, kxy = with_keops_fallback(backend, resolve_backend(backend, x, y), sums)
    if estimator == "biased":
        return kxx / (n * n) + kyy / (m * m) - 2 * kxy / (n * m)
    s = len(gammas)  # k(z, z) = S for every z: remove the diagonals
    return (kxx - n * s) / (n * (n - 1)) + (kyy - m * s) / (m * (m - 1)) - 2 * kxy / (n * m)
