"""The ``blocked`` backend: torch reductions over tiles of the N×M matrix.

Each reduction is a custom :class:`torch.autograd.Function`: the forward pass walks
(row block, column block) tiles, computes the tile's squared distances with one GEMM
(``‖x‖² + ‖y‖² − 2x·y`` on centred points, clamped at 0; for the Gaussian reductions already
scaled, as ``−γ₀ D / ln 2``), applies every bandwidth's exponential to that one tile and
reduces it at once; the backward pass walks the
tiles again and recomputes them. Nothing of size N×M is ever stored: the extra memory is a
few tiles of ``TILE_ROWS × TILE_COLS`` floats plus O((N + M)·D).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dalib.kernels._checks import outside_autocast
from dalib.kernels.distance import center_pair, root_cost_operands, sqdist_tile_

__all__ = [
    "TILE_COLS",
    "TILE_ROWS",
    "blocked_gaussian_matvec",
    "blocked_gaussian_sum",
    "blocked_softmin",
]

#: Tile height and width. 1024 × 1024 float32 tiles (4 MiB) were fastest on a 2-core
#: EPYC (L2-resident passes, GEMMs still efficient). Tests shrink them to hit edges.
TILE_ROWS = 1024
TILE_COLS = 1024


def _blocks(n: int, size: int) -> list[tuple[int, int]]:
    return [(i, min(i + size, n)) for i in range(0, n, size)]


def _pow2_steps(prev: float | None, g: float) -> int:
    """m if ``g / prev == 2^m`` (1 ≤ m ≤ 4), else 0: exp(−g D) = exp(−prev D)^(2^m)."""
    if prev is None or prev <= 0:
        return 0
    r = g / prev
    m = round(math.log2(r)) if r > 1 else 0
    return m if 1 <= m <= 4 and abs(r - 2.0**m) <= 1e-9 * r else 0


def _prep(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    xc, yc = center_pair(x, y)
    x2 = (xc * xc).sum(1, keepdim=True)  # (N, 1)
    y2 = (yc * yc).sum(1).unsqueeze(0)  # (1, M)
    return xc, x2, yc, y2


def cost_prep(x: Tensor, y: Tensor, p: float, prepared: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """What the tiles of the cost ``‖x − y‖^p`` take their squared distances from:
    ``prepared`` (:func:`_prep` of ``x``, ``y``), or its float64 form where
    :func:`root_cost_operands` asks for one (the tiles cast the distances back)."""
    wide = root_cost_operands(x, y, p)
    return prepared if wide[0] is x else _prep(*wide)


class _GaussTiles:
    """Tiles of a multi-bandwidth Gaussian kernel between ``x`` (N, D) and ``y`` (M, D).

    A tile starts as ``T = −γ₀ D / ln 2`` (γ₀ the smallest γ = 1/(2σ²)) from a single GEMM
    of augmented, centred points, ``[2cx, −c‖x‖², 1] · [y, 1, −c‖y‖²]ᵀ`` with
    ``c = γ₀ / ln 2``, clamped at 0, so that ``exp(−γ₀ D) = 2^T``: torch's ``exp2`` is 2.5×
    faster than its ``exp`` on CPU (AVX-512, float32) at the same accuracy, and the
    exponential is most of a tile's cost. The bandwidth terms ``exp(−γ_s D)`` come in
    increasing γ: one exponential per chain of γ's that differ by powers of two (the
    default σ·2^k sets), each next term being the previous one squared m times — 20×
    cheaper than an exp on CPU, at a relative error of 2^m ulp (≤ 1.5e-5 in float32 for
    five bandwidths 2^-2…2^2, 3e-14 in float64).
    """

    def __init__(self, x: Tensor, y: Tensor, gammas: tuple[float, ...], same: bool = False):
        self.gammas = tuple(sorted(gammas))
        self.same = same  # y is x: the distance of a point to itself is exactly 0
        c = self.gammas[0] / math.log(2.0)
        self.xc, x2, self.yc, y2 = _prep(x, y)
        # the single GEMM adds c‖x‖², c‖y‖² and 2c·x·y, each of which can overflow (inf − inf = NaN)
        # for large points and a small bandwidth even where c‖x − y‖² is small: then two passes,
        # the distances first and the scale after
        largest = float(torch.maximum(x2.max(), y2.max()))
        self.two_pass = not 4.0 * c * largest < torch.finfo(x.dtype).max
        self.c, self.x2, self.y2 = c, x2, y2
        one_x = torch.ones_like(x2)
        one_y = torch.ones_like(y2)
        self.a = torch.cat([self.xc * (2.0 * c), x2 * -c, one_x], 1)  # (N, D + 2)
        self.b = torch.cat([self.yc, one_y.t(), y2.t() * -c], 1)  # (M, D + 2)
        size = min(TILE_ROWS, x.shape[0]) * min(max(TILE_COLS, TILE_ROWS), y.shape[0])
        self._t = torch.empty(size, dtype=x.dtype, device=x.device)
        self._e = torch.empty(size, dtype=x.dtype, device=x.device)

    def tile(self, i0: int, i1: int, j0: int, j1: int) -> Tensor:
        """``−γ₀ ‖x_i − y_j‖² / ln 2`` for the tile, ≤ 0: (bi, bj)."""
        t = self._t[: (i1 - i0) * (j1 - j0)].view(i1 - i0, j1 - j0)
        if self.two_pass:
            d = sqdist_tile_(self.xc[i0:i1], self.x2[i0:i1], self.yc[j0:j1], self.y2[:, j0:j1])  # (bi, bj)
            torch.mul(d, -self.c, out=t)
        else:
            torch.mm(self.a[i0:i1], self.b[j0:j1].t(), out=t)
            t.clamp_max_(0.0)
        pairs = _self_pairs(i0, i1, j0, j1, t.device) if self.same else None
        if pairs is not None:  # the pairs (i, i) in the tile: 0, not the GEMM's rounding of it
            t[pairs] = 0.0
        return t

    def terms(self, t: Tensor):
        """Yield ``(γ_s, exp(−γ_s D))`` for the tile ``t`` (the second in a reused buffer)."""
        e = self._e[: t.numel()].view(t.shape)
        g0, prev = self.gammas[0], None
        for g in self.gammas:
            m = _pow2_steps(prev, g)
            if m:
                for _ in range(m):
                    e.mul_(e)
            elif g == g0:
                torch.exp2(t, out=e)
            else:
                torch.mul(t, g / g0, out=e).exp2_()
            prev = g
            yield g, e

    def kernel(self, t: Tensor, deriv: bool) -> tuple[Tensor, Tensor | None]:
        """``K = Σ_s exp(−γ_s D)`` and, if ``deriv``, ``W = Σ_s 2γ_s exp(−γ_s D)``.
        With one bandwidth K is the terms' reused buffer (valid until the next tile)."""
        if len(self.gammas) == 1:
            (g, e), = self.terms(t)
            return e, (torch.mul(e, 2.0 * g) if deriv else None)
        k = torch.zeros_like(t)
        w = torch.zeros_like(t) if deriv else None
        for g, e in self.terms(t):
            k.add_(e)
            if w is not None:
                w.add_(e, alpha=2.0 * g)
        return k, w

    def total(self, t: Tensor) -> Tensor:
        """``Σ_ij Σ_s exp(−γ_s D_ij)`` over the tile (scalar, float64; torch's sum within the
        tile is a cascade, the tiles are accumulated in float64 by the caller)."""
        total = torch.zeros((), dtype=torch.float64, device=t.device)
        for _, e in self.terms(t):
            total += e.sum()
        return total


def _first_order_only() -> None:
    """The tiles are written in place, so the backward itself has no graph: a gradient of a
    gradient (``create_graph=True``, grad mode on in the backward) would fail deep in torch."""
    if torch.is_grad_enabled():
        from dalib.errors import BackendError

        raise BackendError("backend 'blocked' gives first-order gradients only: pass backend='dense' "
                           "for create_graph=True (a gradient penalty)")


class _GaussianMatvec(torch.autograd.Function):
    """out (N, K) = Σ_s exp(−γ_s ‖x_i − y_j‖²) @ v (M, K)."""

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, v: Tensor, gammas: tuple[float, ...], same: bool) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, y, v)
        ctx.gammas, ctx.same = gammas, same
        tiles = _GaussTiles(x, y, gammas, same)
        out = torch.zeros(x.shape[0], v.shape[1], dtype=x.dtype, device=x.device)  # (N, K)
        for (i0, i1), (j0, j1), _ in _tiles(x.shape[0], y.shape[0], False):
            k, _ = tiles.kernel(tiles.tile(i0, i1, j0, j1), False)  # (bi, bj)
            out[i0:i1].addmm_(k, v[j0:j1])
        return out

    @staticmethod
    @outside_autocast  # called in a caller's autocast region, its products would run in bfloat16
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        _first_order_only()
        x, y, v = ctx.saved_tensors
        need_x, need_y, need_v = ctx.needs_input_grad[:3]
        tiles = _GaussTiles(x, y, ctx.gammas, ctx.same)
        xc, yc = tiles.xc, tiles.yc
        gx = torch.zeros_like(x) if need_x else None
        gy = torch.zeros_like(y) if need_y else None
        gv = torch.zeros_like(v) if need_v else None
        for (i0, i1), (j0, j1), _ in _tiles(x.shape[0], y.shape[0], False):
            gi = grad[i0:i1]  # (bi, K)
            k, w = tiles.kernel(tiles.tile(i0, i1, j0, j1), need_x or need_y)  # (bi, bj)
            if gv is not None:
                gv[j0:j1].addmm_(k.t(), gi)
            if w is not None:
                w.mul_(gi @ v[j0:j1].t())  # (bi, bj)
                if gx is not None:  # −Σ_j W_ij (x_i − y_j)
                    gx[i0:i1].addmm_(w, yc[j0:j1]).sub_(xc[i0:i1] * w.sum(1, keepdim=True))
                if gy is not None:  # Σ_i W_ij (x_i − y_j)
                    gy[j0:j1].addmm_(w.t(), xc[i0:i1]).sub_(yc[j0:j1] * w.sum(0).unsqueeze(1))
        return gx, gy, gv, None, None


class _GaussianSum(torch.autograd.Function):
    """Scalar Σ_ij Σ_s exp(−γ_s ‖x_i − y_j‖²). With ``symmetric`` (``y is x``) the row and
    column blocks coincide: only tiles on and above the diagonal are computed, the
    off-diagonal ones counted twice."""

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, gammas: tuple[float, ...], symmetric: bool) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, y)
        ctx.gammas, ctx.symmetric = gammas, symmetric
        tiles = _GaussTiles(x, y, gammas, symmetric)
        total = torch.zeros((), dtype=torch.float64, device=x.device)
        for (i0, i1), (j0, j1), weight in _tiles(x.shape[0], y.shape[0], symmetric):
            total += weight * tiles.total(tiles.tile(i0, i1, j0, j1))
        return total  # float64: MMD² is a small difference of three such sums (the caller casts)

    @staticmethod
    @outside_autocast  # called in a caller's autocast region, its products would run in bfloat16
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        _first_order_only()
        x, y = ctx.saved_tensors
        symmetric = ctx.symmetric
        need_x, need_y = ctx.needs_input_grad[:2]
        if not (need_x or need_y):
            return None, None, None, None
        tiles = _GaussTiles(x, y, ctx.gammas, symmetric)
        xc, yc = tiles.xc, tiles.yc
        g = float(grad)
        gx = torch.zeros_like(x)
        gy = gx if symmetric else torch.zeros_like(y)
        for (i0, i1), (j0, j1), _ in _tiles(x.shape[0], y.shape[0], symmetric):
            _, w = tiles.kernel(tiles.tile(i0, i1, j0, j1), True)  # (bi, bj)
            w.mul_(g)  # W_ij: the loss's weight on −∇_x k(x_i, y_j) / (x_i − y_j)
            # x_i: −Σ_j W_ij (x_i − y_j);  y_j: +Σ_i W_ij (x_i − y_j)
            gx[i0:i1].addmm_(w, yc[j0:j1]).sub_(xc[i0:i1] * w.sum(1, keepdim=True))
            if symmetric and j0 == i0:
                continue
            if symmetric:  # the mirrored tile (J, I): the same as x_j's row term
                gx[j0:j1].addmm_(w.t(), xc[i0:i1]).sub_(xc[j0:j1] * w.sum(0).unsqueeze(1))
            else:
                gy[j0:j1].addmm_(w.t(), xc[i0:i1]).sub_(yc[j0:j1] * w.sum(0).unsqueeze(1))
        if symmetric:
            # f(x) = Σ_ij k(x_i, x_j) and x entered as both arguments: autograd adds the two
            # returned grads, whose sum must be 2 × the row term computed above.
            return gx, gx, None, None
        return gx if need_x else None, gy if need_y else None, None, None


def _tiles(n: int, m: int, symmetric: bool):
    """(row block, column block, weight) triples; upper triangle only if ``symmetric``."""
    if symmetric:
        blocks = _blocks(n, TILE_ROWS)
        for a, bi in enumerate(blocks):
            for bj in blocks[a:]:
                yield bi, bj, (1.0 if bj == bi else 2.0)
        return
    for bi in _blocks(n, TILE_ROWS):
        for bj in _blocks(m, TILE_COLS):
            yield bi, bj, 1.0


def blocked_gaussian_matvec(x: Tensor, y: Tensor, v: Tensor, gammas: tuple[float, ...]) -> Tensor:
    """(N, K) = Σ_s exp(−γ_s D) @ v for v (M, K), tiled; with ``y is x`` the distance of each
    point to itself is exactly 0."""
    return _GaussianMatvec.apply(x, y, v, gammas, y is x)


def blocked_gaussian_sum(x: Tensor, y: Tensor, gammas: tuple[float, ...], symmetric: bool = False) -> Tensor:
    """Scalar Σ_ij Σ_s exp(−γ_s D_ij), tiled, in float64 (the tiles' sums are); ``symmetric``
    when ``y is x``."""
    return _GaussianSum.apply(x, y, gammas, symmetric)


def _self_pairs(i0: int, i1: int, j0: int, j1: int, device: torch.device) -> tuple[Tensor, Tensor] | None:
    """The (row, column) indices, in a tile, of the pairs (i, i): None when it holds none."""
    lo, hi = max(i0, j0), min(i1, j1)
    if lo >= hi:
        return None
    k = torch.arange(lo, hi, device=device)
    return k - i0, k - j0


def _softmin_tile(
    xi: Tensor, x2i: Tensor, yj: Tensor, y2j: Tensor, hj: Tensor, eps: float, p: float,
    pairs: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Logits ``Z_ij = h_j − C_ij/ε`` of one tile (bi, bj), up to a row constant for p = 2.

    For p = 2 the row constant ``−‖x_i‖²/(2ε)`` is left out (the caller adds it back) so
    that the tile is a single GEMM: ``Z = (h_j − ‖y_j‖²/(2ε)) + x_i·y_j/ε``. For other p
    the distance tile is returned too (the backward pass needs it). ``pairs``: the tile's
    pairs of a point with itself (:func:`_self_pairs`), whose cost is set to exactly 0.
    """
    if p == 2:
        bias = hj.unsqueeze(0) - y2j * (0.5 / eps)  # (1, bj)
        z = torch.addmm(bias, xi, yj.t(), alpha=1.0 / eps)  # (bi, bj)
        if pairs is not None:  # C = 0: Z = h_j, plus the row constant left out
            z[pairs] = hj[pairs[1]] + x2i[pairs[0], 0] * (0.5 / eps)
        return z, None
    d = sqdist_tile_(xi, x2i, yj, y2j).to(hj.dtype)  # (bi, bj); from float64 operands for p < 2
    if pairs is not None:
        d[pairs] = 0.0
    c = d.sqrt() if p == 1 else d.pow(p / 2)  # (bi, bj)
    return torch.sub(hj.unsqueeze(0), c, alpha=1.0 / (p * eps)), d


class _Softmin(torch.autograd.Function):
    """out (N,) = −ε log Σ_j exp(h_j − ‖x_i − y_j‖^p / (p ε))."""

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, h: Tensor, eps: float, p: float, same: bool) -> Tensor:  # type: ignore[override]
        xc, x2, yc, y2 = _prep(x, y)
        dx, dx2, dy, dy2 = cost_prep(x, y, p, (xc, x2, yc, y2))
        lse = torch.full((x.shape[0],), -torch.inf, dtype=x.dtype, device=x.device)  # (N,)
        for i0, i1 in _blocks(x.shape[0], TILE_ROWS):
            li = lse[i0:i1]
            for j0, j1 in _blocks(y.shape[0], TILE_COLS):
                pairs = _self_pairs(i0, i1, j0, j1, x.device) if same else None
                z, _ = _softmin_tile(dx[i0:i1], dx2[i0:i1], dy[j0:j1], dy2[:, j0:j1], h[j0:j1], eps, p, pairs)
                torch.logaddexp(li, torch.logsumexp(z, 1), out=li)
        ctx.save_for_backward(x, y, h, lse)
        ctx.eps, ctx.p, ctx.same = eps, p, same
        if p == 2:
            return -eps * lse + 0.5 * x2.squeeze(1)  # (N,)
        return -eps * lse

    @staticmethod
    @outside_autocast  # called in a caller's autocast region, its products would run in bfloat16
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        _first_order_only()
        x, y, h, lse = ctx.saved_tensors
        eps, p = ctx.eps, ctx.p
        need_x, need_y, need_h = ctx.needs_input_grad[:3]
        xc, x2, yc, y2 = _prep(x, y)
        dx, dx2, dy, dy2 = cost_prep(x, y, p, (xc, x2, yc, y2))
        gx = torch.zeros_like(x) if need_x else None
        gy = torch.zeros_like(y) if need_y else None
        gh = torch.zeros_like(h) if need_h else None
        for i0, i1 in _blocks(x.shape[0], TILE_ROWS):
            gi = grad[i0:i1].unsqueeze(1)  # (bi, 1)
            li = lse[i0:i1].unsqueeze(1)  # (bi, 1)
            for j0, j1 in _blocks(y.shape[0], TILE_COLS):
                pairs = _self_pairs(i0, i1, j0, j1, x.device) if ctx.same else None
                z, d = _softmin_tile(dx[i0:i1], dx2[i0:i1], dy[j0:j1], dy2[:, j0:j1], h[j0:j1], eps, p, pairs)
                w = z.sub_(li).exp_().mul_(gi)  # (bi, bj): g_i P_ij, P the row softmax
                if gh is not None:
                    gh[j0:j1].add_(w.sum(0), alpha=-eps)
                if gx is None and gy is None:
                    continue
                if d is not None:  # ∇_x ‖x − y‖^p / p = ‖x − y‖^(p−2) (x − y)
                    scale = d.pow_((p - 2) / 2)
                    if p < 2:
                        scale.nan_to_num_(posinf=0.0)
                    w.mul_(scale)
                if gx is not None:  # Σ_j W_ij (x_i − y_j)
                    gx[i0:i1].add_(xc[i0:i1] * w.sum(1, keepdim=True)).sub_(w @ yc[j0:j1])
                if gy is not None:  # −Σ_i W_ij (x_i − y_j)
                    gy[j0:j1].add_(yc[j0:j1] * w.sum(0).unsqueeze(1)).sub_(w.t() @ xc[i0:i1])
        return gx, gy, gh, None, None, None


def blocked_softmin(x: Tensor, y: Tensor, h: Tensor, eps: float, p: float, same: bool = False) -> Tensor:
    """(N,) = −ε log Σ_j exp(h_j − ‖x_i − y_j‖^p / (p ε)), tiled; ``same``: ``y`` holds the
    points of ``x``, whose cost to themselves is exactly 0."""
    return _Softmin.apply(x, y, h, eps, p, same)
