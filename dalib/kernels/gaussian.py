"""Multi-bandwidth Gaussian kernel reductions: kernel-vector products and kernel means.

A Gaussian kernel of bandwidth σ is ``k_σ(x, y) = exp(−‖x − y‖² / (2σ²))``; a
multi-bandwidth kernel sums ``k_σ`` over the given σ's (DAN's multi-kernel, unweighted).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from dalib._arrays import check_dense
from dalib.errors import InputError
from dalib.kernels._checks import as_gammas, check_pair, float_values, outside_autocast
from dalib.kernels.backends import resolve_backend, with_keops_fallback
from dalib.kernels.blocked import blocked_gaussian_matvec, blocked_gaussian_sum
from dalib.kernels.distance import sqdist_unchecked

__all__ = ["gaussian_matvec", "gaussian_mean", "gaussian_sum_unchecked"]

Sigmas = float | Sequence[float] | Tensor


def _dense_kernel(x: Tensor, y: Tensor, gammas: tuple[float, ...]) -> Tensor:
    d = sqdist_unchecked(x, y)  # (N, M)
    if y is x:
        d = d.fill_diagonal_(0.0)  # exactly 0, whatever the rounding of ‖x‖² − 2x·x + ‖x‖²
    k = torch.exp(d * -gammas[0])  # (N, M)
    for g in gammas[1:]:
        k = k + torch.exp(d * -g)
    return k


@outside_autocast
def gaussian_matvec(x: Tensor, y: Tensor, v: Tensor, sigmas: Sigmas, backend: str = "auto") -> Tensor:
    r"""Kernel-vector product with a (multi-bandwidth) Gaussian kernel.

    .. math:: \mathrm{out}_i = \sum_\sigma \sum_j \exp\!\big(-\|x_i - y_j\|^2 / (2\sigma^2)\big)\, v_j

    ``x`` (N, D), ``y`` (M, D), ``v`` (M,) or (M, K); ``sigmas`` a float or a sequence /
    1-D tensor of bandwidths (treated as constants). Returns (N,) or (N, K), differentiable
    w.r.t. ``x``, ``y`` and ``v`` on every backend (``dense``, ``blocked``, ``keops``,
    ``auto``: see :func:`dalib.kernels.resolve_backend`). With ``y is x``, on ``dense`` and
    ``blocked``, the distance of each point to itself is exactly 0.
    """
    x, y = check_pair(x, y)
    if not isinstance(v, Tensor):
        raise InputError(f"v must be a torch.Tensor, got {type(v).__name__}")
    check_dense(v, "v", InputError)
    if v.dim() not in (1, 2) or v.shape[0] != y.shape[0]:
        raise InputError(f"v must have shape ({y.shape[0]},) or ({y.shape[0]}, K), got {tuple(v.shape)}")
    if not bool(torch.isfinite(v).all()):
        raise InputError("v holds NaN or infinite values")
    v2 = (v if v.dim() == 2 else v.unsqueeze(1)).to(device=x.device, dtype=x.dtype)  # (M, K)
    gam = as_gammas(sigmas, x)

    def run(name: str) -> Tensor:
        if name == "keops":
            from dalib.kernels._keops import keops_gaussian_matvec

            return keops_gaussian_matvec(x, y, v2, gam)  # (N, K)
        if name == "blocked":
            return blocked_gaussian_matvec(x, y, v2, tuple(float_values(gam)))  # (N, K)
        return _dense_kernel(x, y, tuple(float_values(gam))) @ v2  # (N, K)

    out = with_keops_fallback(backend, resolve_backend(backend, x, y, others=(v2,)), run)
    return out if v.dim() == 2 else out.squeeze(1)


def gaussian_sum_unchecked(x: Tensor, y: Tensor, gammas: tuple[float, ...], name: str) -> Tensor:
    """Σ_ij Σ_s exp(−γ_s ‖x_i − y_j‖²) on a resolved backend, no input checks (scalar): in
    float64 on ``blocked`` and ``keops`` (summed there over tiles and rows; MMD², a small
    difference of three such sums, is combined before the cast), else in the inputs' dtype.

    ``y is x`` is detected and, on ``blocked``, only half of the tiles are computed.
    """
    if name == "keops":
        from dalib.kernels._keops import keops_gaussian_matvec

        gam = torch.tensor(gammas, dtype=x.dtype, device=x.device)
        ones = torch.ones(y.shape[0], 1, dtype=x.dtype, device=x.device)  # (M, 1)
        return keops_gaussian_matvec(x, y, ones, gam).double().sum()
    if name == "blocked":
        return blocked_gaussian_sum(x, y, gammas, symmetric=y is x)
    return _dense_kernel(x, y, gammas).sum()


@outside_autocast
def gaussian_mean(x: Tensor, y: Tensor, sigmas: Sigmas, backend: str = "auto") -> Tensor:
    r"""Mean of a (multi-bandwidth) Gaussian kernel over all pairs.

    .. math:: \frac{1}{NM} \sum_{i,j} \sum_\sigma \exp\!\big(-\|x_i - y_j\|^2 / (2\sigma^2)\big)

    ``x`` (N, D), ``y`` (M, D) → scalar tensor, differentiable w.r.t. ``x`` and ``y``.
    Pass the same tensor twice (``gaussian_mean(x, x, ...)``) for the within-domain term of
    MMD: the ``blocked`` backend then computes only half of the tiles, and on ``dense`` and
    ``blocked`` each ``k(x_i, x_i)`` is exactly the number of bandwidths (the GEMM form of
    the distance would leave its rounding there, which a small σ turns into a visible error).
    """
    x, y = check_pair(x, y)
    gam = tuple(float_values(as_gammas(sigmas, x)))
    total = with_keops_fallback(
        backend, resolve_backend(backend, x, y), lambda name: gaussian_sum_unchecked(x, y, gam, name)
    )
    return (total / (x.shape[0] * y.shape[0])).to(x.dtype)
