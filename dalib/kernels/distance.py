"""Squared Euclidean distances by GEMM, and the median-distance bandwidth heuristic.

Distances are computed as ``‖x‖² + ‖y‖² − 2 x·y`` (one matrix product) after both clouds
are shifted by their common mean, which keeps the norms small and the cancellation error
of float32 low; the result is clamped at 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dalib.kernels._checks import check_pair, outside_autocast

__all__ = ["center_pair", "median_bandwidth", "median_bandwidth_unchecked", "nearest_rows", "root_cost_operands",
           "sqdist", "sqdist_unchecked", "sqdist_tile_"]

#: At most this many pooled points enter :func:`median_bandwidth` (a fixed random subset).
MEDIAN_MAX_POINTS = 2048
#: :func:`median_bandwidth` counts a distance below this fraction of the largest as 0 (the
#: float64 rounding noise of a duplicated point's distance is about 1e-8 of it)
DUPLICATE_TOL = 1e-6


def root_cost_operands(x: Tensor, y: Tensor, p: float) -> tuple[Tensor, Tensor]:
    """``x``, ``y`` to compute the squared distances of the cost ``‖x − y‖^p`` from: for p < 2,
    float64 copies of float32 points. The root's slope is unbounded at 0, so the product form's
    rounding on a close pair (about 1e-7 of the norms in float32) became a cost of 3e-4 of
    them at p = 1: S(x, x) was 1.7e-4, not 0, and 1% off between clouds 1e-3 apart. In float64
    the rounding is 1e-16, below float32's resolution of the cost. (MPS has no float64.)"""
    if p < 2 and x.dtype == torch.float32 and x.device.type != "mps":
        return x.double(), y.double()
    return x, y


def center_pair(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Shift ``x`` (N, D) and ``y`` (M, D) by their pooled mean (distances unchanged)."""
    n, m = x.shape[0], y.shape[0]
    c = (x.sum(0) + y.sum(0)) / (n + m)  # (D,)
    return x - c, y - c


def nearest_rows(x: Tensor, ref: Tensor, block_rows: int = 1024) -> Tensor:
    """Index (N,) of the nearest row of ``ref`` (M, D) to each row of ``x`` (N, D), in squared
    Euclidean distance; a tie goes to the first.

    Distances come from one matrix product per block of ``block_rows`` query rows (memory
    ``block_rows × M``), after both are shifted by ``ref``'s mean (far from the origin,
    ``‖r‖² − 2 q·r`` would cancel). Candidates within that expansion's rounding of the
    smallest (duplicated reference rows, say) are compared again by their differences, so
    that a tie goes to the first whatever the rounding of the product."""
    c = ref.mean(0)  # (D,)
    refc = ref - c  # (M, D)
    ref_sq = (refc * refc).sum(1)  # (M,)
    slack = 4 * ref.shape[1] * torch.finfo(refc.dtype).eps  # relative rounding of the expansion
    nearest = []
    for i in range(0, x.shape[0], block_rows):
        q = x[i : i + block_rows] - c  # (b, D)
        d = torch.addmm(ref_sq.unsqueeze(0), q, refc.T, alpha=-2.0)  # (b, M): distance − ‖q‖²
        best, idx = d.min(1)  # (b,)
        close = d <= (best + slack * ((q * q).sum(1) + ref_sq.max())).unsqueeze(1)  # (b, M)
        for r in torch.nonzero(close.sum(1) > 1).flatten().tolist():  # rows with a near tie
            cand = torch.nonzero(close[r]).flatten()  # ascending
            # by the differences of the given rows: exact for duplicates and for integer data
            idx[r] = cand[torch.argmin(((ref[cand] - x[i + r]) ** 2).sum(1))]  # the first of the minima
        nearest.append(idx)
    return torch.cat(nearest) if nearest else torch.zeros(0, dtype=torch.long, device=x.device)


def sqdist_unchecked(x: Tensor, y: Tensor) -> Tensor:
    """``sqdist`` without input checks; differentiable. Returns (N, M)."""
    xc, yc = center_pair(x, y)
    x2 = (xc * xc).sum(1, keepdim=True)  # (N, 1)
    y2 = (yc * yc).sum(1).unsqueeze(0)  # (1, M)
    d = torch.addmm(y2, xc, yc.t(), alpha=-2.0) + x2  # (N, M)
    return d.clamp_min(0.0)


def sqdist_tile_(xi: Tensor, x2i: Tensor, yj: Tensor, y2j: Tensor, out: Tensor | None = None) -> Tensor:
    """One tile of squared distances, in place ops, no autograd: (bi, bj).

    ``xi`` (bi, D), ``x2i`` (bi, 1) its squared norms, ``yj`` (bj, D), ``y2j`` (1, bj);
    ``out``: a (bi, bj) buffer to write them into.
    """
    d = torch.addmm(y2j, xi, yj.t(), alpha=-2.0, out=out)  # (bi, bj)
    return d.add_(x2i).clamp_min_(0.0)


@outside_autocast
def sqdist(x: Tensor, y: Tensor) -> Tensor:
    r"""Dense squared Euclidean distances ``D_ij = ‖x_i − y_j‖²``, clamped at 0.

    ``x`` (N, D), ``y`` (M, D) → (N, M). Differentiable w.r.t. both. Materialises the
    full matrix: for large N use the reductions (:func:`gaussian_matvec`, :func:`softmin`)
    whose ``blocked`` and ``keops`` backends never do.
    """
    x, y = check_pair(x, y)
    return sqdist_unchecked(x, y)


@outside_autocast
def median_bandwidth(x: Tensor, y: Tensor) -> float:
    r"""Median heuristic: the median of the pairwise distances ``‖z_i − z_j‖``, i < j,
    over the pooled samples ``z = [x; y]``; for an even count of distances, the lower of the
    two middle ones (``torch.median``'s), not their mean as numpy's.

    ``x`` (N, D), ``y`` (M, D). Above :data:`MEDIAN_MAX_POINTS` pooled points, a fixed
    (seeded, reproducible) random subset of that many is used. Returns a python float
    (no gradient). If more than half of the distances are 0 (duplicated points; below
    :data:`DUPLICATE_TOL` of the largest distance) it returns the mean of the non-zero
    ones, and 1.0 if all points coincide.
    """
    return median_bandwidth_unchecked(*check_pair(x, y))


def median_bandwidth_unchecked(x: Tensor, y: Tensor) -> float:
    """``median_bandwidth`` without input checks, for ``x`` and ``y`` that ``check_pair`` has
    checked (a loss that checked its inputs need not read every value again)."""
    z = torch.cat([x.detach(), y.detach()]).to(torch.float64)  # (N + M, D)
    if z.shape[0] > MEDIAN_MAX_POINTS:
        gen = torch.Generator().manual_seed(0)
        idx = torch.randperm(z.shape[0], generator=gen, device="cpu")[:MEDIAN_MAX_POINTS]
        z = z[idx.to(z.device)]  # (P, D)
    if z.shape[0] < 2:
        return 1.0
    z = z - z.mean(0)  # (P, D)
    z2 = (z * z).sum(1, keepdim=True)  # (P, 1)
    d = sqdist_tile_(z, z2, z, z2.t())  # (P, P), in place
    iu = torch.triu_indices(z.shape[0], z.shape[0], offset=1, device=z.device)
    sq = d[iu[0], iu[1]]  # (P (P - 1) / 2,) squared distances, i < j
    # the square root is monotone: the median and the largest of the squares give those of the
    # distances, and only they need the root
    largest, med = (math.sqrt(float(v)) for v in (sq.max(), sq.median()))
    # ‖z_i‖² + ‖z_j‖² − 2 z_i·z_j leaves rounding noise (~1e-8 relative, as a distance) where
    # z_i = z_j: below this, a distance counts as 0
    zero = largest * DUPLICATE_TOL
    if med > zero:
        return med
    dist = sq.sqrt()
    nonzero = dist[dist > zero]
    return float(nonzero.mean()) if nonzero.numel() else 1.0
