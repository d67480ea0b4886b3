"""Pairwise distances and kernel reductions with three backends: dense, blocked, keops.

See :func:`resolve_backend` for how ``backend="auto"`` chooses, and docs/kernels.md.
"""

from dalib.kernels.backends import keops_available, resolve_backend
from dalib.kernels.distance import median_bandwidth, sqdist
from dalib.kernels.gaussian import gaussian_matvec, gaussian_mean
from dalib.kernels.softmin import softmin

__all__ = [
    "gaussian_matvec",
    "gaussian_mean",
    "keops_available",
    "median_bandwidth",
    "resolve_backend",
    "softmin",
    "sqdist",
]
