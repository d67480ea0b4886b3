"""The soft-minimum (log-sum-exp) reduction of Sinkhorn's iterations."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dalib._arrays import check_dense
from dalib.errors import InputError, OutOfRangeError
from dalib.kernels._checks import check_pair, outside_autocast
from dalib.kernels.backends import resolve_backend, with_keops_fallback
from dalib.kernels.blocked import blocked_softmin
from dalib.kernels.distance import root_cost_operands, sqdist_unchecked

__all__ = ["cost_matrix", "softmin", "softmin_unchecked"]


def cost_matrix(x: Tensor, y: Tensor, p: float, same: bool = False) -> Tensor:
    """Dense cost ``C_ij = ‖x_i − y_j‖^p / p``: (N, M), differentiable (0-safe for p < 2).
    ``same``: ``y`` holds the points of ``x`` (maybe another tensor, detached): the diagonal
    is exactly 0, not the rounding of ``‖x‖² − 2x·x + ‖x‖²`` (which p = 1's root magnifies);
    for p < 2 the distances of float32 points are computed in float64 (:func:`root_cost_operands`)."""
    d = sqdist_unchecked(*root_cost_operands(x, y, p))  # (N, M)
    if same:
        d = d.fill_diagonal_(0.0)
    if p == 2:
        return d * 0.5
    # clamp before the root so that the gradient at x_i = y_j is 0, not NaN
    return (d.clamp_min(torch.finfo(d.dtype).tiny).pow(p / 2) / p).to(x.dtype)  # (N, M)


def softmin_unchecked(x: Tensor, y: Tensor, h: Tensor, eps: float, p: float, name: str,
                      same: bool = False) -> Tensor:
    """:func:`softmin` on a resolved backend, without input checks. ``same``: ``y`` holds the
    points of ``x``, whose cost to themselves is exactly 0 (KeOps' ``Σ (x − y)²`` has it)."""
    if name == "keops":
        from dalib.kernels._keops import keops_softmin

        return keops_softmin(x, y, h, eps, p)
    if name == "blocked":
        return blocked_softmin(x, y, h, eps, p, same)
    c = cost_matrix(x, y, p, same)  # (N, M)
    return -eps * torch.logsumexp(h.unsqueeze(0) - c / eps, dim=1)  # (N,)


@outside_autocast
def softmin(x: Tensor, y: Tensor, h: Tensor, eps: float, p: float = 2, backend: str = "auto") -> Tensor:
    r"""Soft-minimum over ``j`` of the cost, weighted by ``h`` (log-domain Sinkhorn step).

    .. math:: \mathrm{out}_i = -\varepsilon \log \sum_j \exp\!\big(h_j - \|x_i - y_j\|^p / (p\,\varepsilon)\big)

    ``x`` (N, D), ``y`` (M, D), ``h`` (M,) log-weights (``−inf`` allowed: zero weight),
    ``eps`` > 0, ``p`` ≥ 1 the cost exponent (cost ``‖x − y‖^p / p``, the geomloss
    convention). Returns (N,), differentiable w.r.t. ``x``, ``y`` and ``h``. With
    ``h = log b + g/ε`` this is the update ``f ← softmin(x, y, log b + g/ε, ε)``.
    """
    x, y = check_pair(x, y)
    if not isinstance(h, Tensor):
        raise InputError(f"h must be a torch.Tensor, got {type(h).__name__}")
    check_dense(h, "h", InputError)
    if h.shape != (y.shape[0],):
        raise InputError(f"h must have shape ({y.shape[0]},), got {tuple(h.shape)}")
    if bool(torch.isnan(h).any()) or bool((h == torch.inf).any()):
        raise InputError("h holds NaN or +inf values")
    if not float(eps) > 0:
        raise InputError(f"eps must be positive, got {eps}")
    if not 1.0 / float(eps) < torch.finfo(x.dtype).max:  # every backend multiplies by 1/ε
        wider = ", or use float64" if x.dtype != torch.float64 else ""
        raise OutOfRangeError(f"eps {float(eps):.3g} is too small for {x.dtype} (1/eps overflows): scale the points up "
                         f"(and eps with them){wider}")
    if not (float(p) >= 1 and math.isfinite(float(p))):
        raise InputError(f"p must be >= 1 and finite, got {p}")
    h = h.to(device=x.device, dtype=x.dtype)
    p = float(p) if p != int(p) else int(p)
    return with_keops_fallback(
        backend, resolve_backend(backend, x, y, others=(h,)), lambda name: softmin_unchecked(x, y, h, float(eps), p, name, y is x)
    )
