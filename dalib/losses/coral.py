"""Deep CORAL: the distance between source and target feature covariances."""

from __future__ import annotations

import torch
from torch import Tensor

from dalib.errors import InputError, OutOfRangeError
from dalib.kernels._checks import _dtype_name, check_pair, outside_autocast

__all__ = ["coral"]


def _covariance(x: Tensor) -> Tensor:
    xc = x - x.mean(0, keepdim=True)  # (N, D)
    return xc.t() @ xc / (x.shape[0] - 1)  # (D, D)


@outside_autocast
def coral(x: Tensor, y: Tensor) -> Tensor:
    r"""CORAL loss (Sun & Saenko, "Deep CORAL", ECCV 2016 workshops).

    .. math:: \ell = \frac{1}{4 d^2}\, \| C_s - C_t \|_F^2, \qquad
        C = \tfrac{1}{n - 1} (X - \bar X)^\top (X - \bar X)

    ``x`` (N, D) source and ``y`` (M, D) target features, N, M ≥ 2; ``C_s``, ``C_t`` their
    unbiased covariances (D, D). Returns a scalar tensor, differentiable w.r.t. both.
    Costs O((N + M) D²) with no pairwise kernel, hence no ``backend`` argument.
    """
    x, y = check_pair(x, y)
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise InputError(f"coral needs at least 2 samples per side, got {x.shape[0]} and {y.shape[0]}")
    d = x.shape[1]
    diff = _covariance(x) - _covariance(y)  # (D, D)
    value = (diff / (2 * d)).pow(2).sum()  # scaled before squaring: the square alone can overflow float32
    if not torch.isfinite(value):  # finite inputs (checked): the fourth power of the features overflowed
        raise OutOfRangeError(f"the coral loss of these features overflows {_dtype_name(value)} (it grows with the fourth "
                         "power of the features): scale the features, or use float64")
    return value
