"""Log-domain Sinkhorn and barycentric mapping that never form the N×M plan.

Plan convention (POT's): ``P_ij = a_i b_j exp((f_i + g_j − C_ij − η W_{c(i) j}) / reg)``
with ``C_ij = ‖x_i − y_j‖² / scale``. ``W`` (n_groups, M) is an optional per-(source
group, target sample) extra cost: the class-regulariser's majorisation weights; ``c(i)``
is the group (class) of source row i. Without groups, W = 0.

Every reduction is a soft-minimum, computed by :func:`dalib.kernels.softmin`
(``−ε log Σ_j exp(h_j − ‖x_i − y_j‖²/(2ε))``) with ``ε = reg·scale/2``, so its
``blocked``/``keops`` backends keep the memory at O((N + M)·D).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["LogSinkhornResult", "barycentric_map", "group_softmin", "log_sinkhorn"]


@dataclass
class LogSinkhornResult:
    f: Tensor  # (N,) source potential
    g: Tensor  # (M,) target potential
    n_iter: int
    marginal_error: float  # L1 error on the target marginal of the plan (f, g), or of the last one checked when within tol


def group_softmin(y: Tensor, x: Tensor, f: Tensor, loga: Tensor, groups: list[Tensor], reg: float,
                   scale: float, backend: str) -> Tensor:
    """``S_cj = −reg log Σ_{i∈c} a_i exp((f_i − C_ij)/reg)`` for every group c: (n_groups, M)."""
    from dalib.kernels import softmin

    eps = 0.5 * reg * scale
    rows = [softmin(y, x[idx], f[idx] / reg + loga[idx], eps, p=2, backend=backend) for idx in groups]  # (M,) each
    return torch.stack(rows) * (2.0 / scale)  # (G, M)


def log_sinkhorn(
    x: Tensor,
    y: Tensor,
    a: Tensor,
    b: Tensor,
    reg: float,
    scale: float = 1.0,
    groups: list[Tensor] | None = None,
    w: Tensor | None = None,
    f0: Tensor | None = None,
    g0: Tensor | None = None,
    max_iter: int = 1000,
    tol: float = 1e-9,
    backend: str = "auto",
) -> LogSinkhornResult:
    """Sinkhorn iterations on the potentials (f, g) in the log domain.

    ``x`` (N, D), ``y`` (M, D), ``a`` (N,), ``b`` (M,) positive weights summing to 1;
    ``groups``: index tensors partitioning the rows of x (default: one group), ``w``
    (n_groups, M) extra cost per group (scaled by nothing: pass ``η W``). Alternates the
    exact updates ``g ← argmin`` then ``f ← argmin``; after each f update the row
    marginals are exact, and the next g update yields the target-marginal error
    ``Σ_j |Σ_i P_ij − b_j|`` for free. Stops when it is at most ``tol``.
    """
    from dalib.kernels import softmin

    n = x.shape[0]
    if groups is None:
        groups = [torch.arange(n, device=x.device)]
    loga, logb = a.log(), b.log()
    eps = 0.5 * reg * scale
    wg = torch.zeros(len(groups), y.shape[0], dtype=x.dtype, device=x.device) if w is None else w  # (G, M)
    f = torch.zeros(n, dtype=x.dtype, device=x.device) if f0 is None else f0.clone()
    g = torch.zeros(y.shape[0], dtype=x.dtype, device=x.device) if g0 is None else g0.clone()

    def g_update() -> tuple[Tensor, float]:
        """The exact g for the current f (M,), and the current plan's target-marginal error:
        its column marginal is b_j exp((g_j − g_new_j)/reg)."""
        s = group_softmin(y, x, f, loga, groups, reg, scale, backend)  # (G, M)
        g_new = -reg * torch.logsumexp(-(s + wg) / reg, dim=0)  # (M,)
        return g_new, float((b * torch.expm1((g - g_new) / reg)).abs().sum())

    err = math.inf
    it = 0
    for it in range(1, max_iter + 1):
        g_new, measured = g_update()
        if it > 1 or f0 is not None:  # (the first g, from f = 0, pairs with no plan yet)
            err = measured
        g = g_new
        if err <= tol:
            break
        for c, idx in enumerate(groups):
            f[idx] = softmin(x[idx], y, (g - wg[c]) / reg + logb, eps, p=2, backend=backend) * (2.0 / scale)
    if err > tol:  # stopped by max_iter: the error of the plan returned, not of the one before its last f update
        err = g_update()[1]
    return LogSinkhornResult(f=f, g=g, n_iter=it, marginal_error=err)


def barycentric_map(x: Tensor, y: Tensor, h: Tensor, reg: float, scale: float = 1.0,
                    max_entries: int = 1 << 22) -> Tensor:
    """``T(x_i) = Σ_j π_ij y_j`` with ``π_ij = softmax_j(h_j − ‖x_i − y_j‖²/(scale·reg))``.

    ``x`` (N, D), ``y`` (M, D), ``h`` (M,) log-weights of the target samples (for the
    barycentric map of an entropic plan, ``g/reg + log b``). Computed over blocks of rows
    of at most ``max_entries`` logits each, in the log domain: no N×M matrix.
    """
    from dalib.kernels import sqdist

    rows = max(1, max_entries // max(1, y.shape[0]))
    # written in place, block by block: small results kept between the blocks' large temporaries
    # (then joined) had fragmented the heap, whose peak grew with N×M (470 MB at 10k x 10k, float32)
    out = torch.empty(x.shape[0], y.shape[1], dtype=y.dtype, device=y.device)  # (N, D)
    for i in range(0, x.shape[0], rows):
        logits = sqdist(x[i : i + rows], y).div_(-scale * reg).add_(h)  # (r, M)
        torch.mm(torch.softmax(logits, dim=1), y, out=out[i : i + rows])
    return out
