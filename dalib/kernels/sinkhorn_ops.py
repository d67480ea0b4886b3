"""The reductions of one Sinkhorn iteration, for the loop in :mod:`dalib.losses.sinkhorn`.

:class:`CostOps` holds one cost ``C_ij = ‖x_i − y_j‖^p / p`` on a resolved backend and
updates a pair of dual potentials:

.. math::
    \\tilde f_i = -\\varepsilon \\log \\sum_j b_j \\exp\\big((g_j - C_{ij})/\\varepsilon\\big),
    \\qquad
    \\tilde g_j = -\\varepsilon \\log \\sum_i a_i \\exp\\big((f_i - C_{ij})/\\varepsilon\\big).

Both are the :func:`~dalib.kernels.softmin` of the potentials. The torch backends compute
them from one pass over ``E_ij = (f_i + g_j − C_ij)/ε``: ``exp(E)`` is reduced against
``b`` along rows and against ``a`` along columns, so that

.. math:: \\tilde f_i = f_i - \\varepsilon \\log \\sum_j b_j e^{E_{ij}},

which needs no running maximum as long as the sums stay in range (they do once the
potentials are near a fixed point: the weighted row means of ``exp(E)`` are then ≈ 1).
When a sum under- or overflows, that update is redone with a stable log-sum-exp. KeOps
runs the two softmins as two reductions. Everything here runs without autograd.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dalib.kernels import blocked as _blocked
from dalib.kernels.softmin import cost_matrix, softmin_unchecked

__all__ = ["ABSORB_BOUND", "ABSORB_BOUND_DEFAULT", "CostOps", "DENSE_CHUNK"]

#: Kernel-domain iterations absorb their scalings into the potentials beyond e^±bound.
ABSORB_BOUND = {torch.float64: 200.0}
ABSORB_BOUND_DEFAULT = 30.0

#: The dense backend walks its cached cost matrix in chunks of about this many entries.
DENSE_CHUNK = 1 << 20


def _in_range(s: Tensor) -> bool:
    """Whether row sums of exp(E) are safe to take the log of (no under/overflow)."""
    fi = torch.finfo(s.dtype)
    return bool(((s >= fi.tiny**0.5) & (s <= fi.max**0.5)).all())


class CostOps:
    """Sinkhorn reductions of the cost between ``x`` (N, D) and ``y`` (M, D).

    ``name``: a resolved backend. ``symmetric``: ``y is x`` with the same weights on both
    sides (the debiasing terms OT(a, a), OT(b, b)): only row updates are asked for, and
    the blocked backend computes only the tiles on and above the diagonal.
    """

    def __init__(self, x: Tensor, y: Tensor, p: float, name: str, symmetric: bool = False):
        self.x, self.y, self.p, self.name, self.symmetric = x, y, p, name, symmetric
        self.c: Tensor | None = None
        self.buf: Tensor | None = None
        self.kbuf: Tensor | None = None
        if name == "dense":
            self.c = cost_matrix(x, y, p, symmetric)  # (N, M); a point's cost to itself exactly 0
        elif name == "blocked":
            self.xc, self.x2, self.yc, self.y2 = _blocked._prep(x, y)  # (N, D) (N, 1) (M, D) (1, M)
            self.dist = _blocked.cost_prep(x, y, p, (self.xc, self.x2, self.yc, self.y2))  # float64 for p < 2

    # -- the stable path: two log-sum-exps -------------------------------------------------
    def _softmin_rows(self, g: Tensor, logb: Tensor, eps: float) -> Tensor:
        h = logb + g / eps  # (M,)
        if self.c is not None:
            return -eps * torch.logsumexp(h.unsqueeze(0) - self.c / eps, dim=1)  # (N,)
        return softmin_unchecked(self.x, self.y, h, eps, self.p, self.name, self.symmetric)

    def _softmin_cols(self, f: Tensor, loga: Tensor, eps: float) -> Tensor:
        h = loga + f / eps  # (N,)
        if self.c is not None:
            return -eps * torch.logsumexp(h.unsqueeze(1) - self.c / eps, dim=0)  # (M,)
        return softmin_unchecked(self.y, self.x, h, eps, self.p, self.name, self.symmetric)

    # -- the fast path: one pass over exp(E) -----------------------------------------------
    def _sums_dense(self, f, g, a, b, eps, rows, cols):
        """Row and column sums of exp(E) over the cached cost, a chunk of rows at a time
        (the chunk stays in cache: one read of C per iteration)."""
        c_full = self.c
        n, m = c_full.shape
        step = max(1, min(n, DENSE_CHUNK // max(m, 1)))
        inv = 1.0 / eps
        gs = g * inv  # (M,)
        fs = (f * inv).unsqueeze(1)  # (N, 1)
        r = torch.empty_like(f) if rows else None
        c = torch.zeros_like(g) if cols else None
        if self.buf is None or self.buf.shape[0] < step:
            self.buf = torch.empty(step, m, dtype=c_full.dtype, device=c_full.device)
        for i0 in range(0, n, step):
            i1 = min(i0 + step, n)
            e = self.buf[: i1 - i0]
            torch.add(gs, c_full[i0:i1], alpha=-inv, out=e).add_(fs[i0:i1])  # (R, M): E
            e.exp_()
            if r is not None:
                torch.mv(e, b, out=r[i0:i1])
            if c is not None:
                c.addmv_(e.t(), a[i0:i1])
        return r, c

    def _sums_blocked(self, f, g, a, b, eps, rows, cols):
        p = self.p
        xc, x2, yc, y2 = self.xc, self.x2, self.yc, self.y2
        dx, dx2, dy, dy2 = self.dist  # what the distances of p != 2 come from (float64 for p < 2)
        r = torch.zeros_like(f) if rows else None
        c = torch.zeros_like(g) if (cols or self.symmetric) else None
        if p == 2:  # E = [x/ε, (f − ‖x‖²/2)/ε, 1] · [y, 1, (g − ‖y‖²/2)/ε]ᵀ: one GEMM a tile
            fx = ((f - 0.5 * x2.squeeze(1)) / eps).unsqueeze(1)  # (N, 1)
            gy = ((g - 0.5 * y2.squeeze(0)) / eps).unsqueeze(1)  # (M, 1)
            xa = torch.cat([xc / eps, fx, torch.ones_like(fx)], 1)  # (N, D+2)
            ya = torch.cat([yc, torch.ones_like(gy), gy], 1)  # (M, D+2)
            size = min(_blocked.TILE_ROWS, xc.shape[0]) * min(max(_blocked.TILE_ROWS, _blocked.TILE_COLS), yc.shape[0])
            if self.buf is None or self.buf.numel() < size:
                self.buf = torch.empty(size, dtype=xc.dtype, device=xc.device)
        rb = _blocked._blocks(self.x.shape[0], _blocked.TILE_ROWS)
        cb = rb if self.symmetric else _blocked._blocks(self.y.shape[0], _blocked.TILE_COLS)
        for bi_idx, (i0, i1) in enumerate(rb):
            for (j0, j1) in cb[bi_idx:] if self.symmetric else cb:
                pairs = _blocked._self_pairs(i0, i1, j0, j1, xc.device) if self.symmetric else None
                if p == 2:
                    e = self.buf[: (i1 - i0) * (j1 - j0)].view(i1 - i0, j1 - j0)
                    torch.mm(xa[i0:i1], ya[j0:j1].t(), out=e)  # (bi, bj): E
                    if pairs is not None:  # a point's cost to itself: exactly 0, E = (f_i + g_i)/ε
                        e[pairs] = (f[i0:i1][pairs[0]] + g[j0:j1][pairs[1]]) / eps
                else:
                    d = _blocked.sqdist_tile_(dx[i0:i1], dx2[i0:i1], dy[j0:j1], dy2[:, j0:j1]).to(xc.dtype)
                    if pairs is not None:
                        d[pairs] = 0.0
                    cost = d.sqrt_() if p == 1 else d.pow_(p / 2)  # (bi, bj)
                    e = cost.mul_(-1.0 / p).add_(f[i0:i1].unsqueeze(1)).add_(g[j0:j1]).div_(eps)
                e.exp_()
                if self.symmetric:
                    r[i0:i1].addmv_(e, b[j0:j1])
                    if j0 != i0:
                        r[j0:j1].addmv_(e.t(), a[i0:i1])
                    continue
                if r is not None:
                    r[i0:i1].addmv_(e, b[j0:j1])
                if cols:
                    c[j0:j1].addmv_(e.t(), a[i0:i1])
        return r, (c if cols else None)

    # -- public ----------------------------------------------------------------------------
    @torch.no_grad()
    def update(
        self,
        f: Tensor,
        g: Tensor,
        a: Tensor,
        b: Tensor,
        loga: Tensor,
        logb: Tensor,
        eps: float,
        rows: bool = True,
        cols: bool = True,
    ) -> tuple[Tensor | None, Tensor | None]:
        """Softmin updates ``(f̃, g̃)`` from the potentials ``f`` (N,) and ``g`` (M,), both
        computed from the same (old) ``f, g``; ``None`` for a side not asked for."""
        ft = gt = None
        if self.name in ("dense", "blocked"):
            sums = self._sums_dense if self.name == "dense" else self._sums_blocked
            r, c = sums(f, g, a, b, eps, rows, cols)
            if r is not None and _in_range(r):
                ft = f - eps * r.log()
            if c is not None and _in_range(c):
                gt = g - eps * c.log()
        if rows and ft is None:
            ft = self._softmin_rows(g, logb, eps)
        if cols and gt is None:
            gt = self._softmin_cols(f, loga, eps)
        return ft, gt

    @torch.no_grad()
    def solve_to_tolerance(
        self,
        f: Tensor,
        g: Tensor,
        a: Tensor,
        b: Tensor,
        loga: Tensor,
        logb: Tensor,
        eps: float,
        tol: float,
        max_iter: int,
    ) -> tuple[Tensor, Tensor, int, float]:
        """Alternate exact row and column updates at a fixed ε until the column marginal
        error ``‖Pᵀ1 − b‖₂`` of the plan (rows exact) is below ``tol``; at most
        ``max_iter`` iterations. Returns ``(f, g, iterations, error)``.

        On ``dense`` the iterations run in the kernel domain, stabilised by absorption:
        ``K = exp((f₀ ⊕ g₀ − C)/ε)`` is formed once and the scalings ``u = e^{(f−f₀)/ε}``,
        ``v = e^{(g−g₀)/ε}`` follow ``u = 1/(K(b∘v))``, ``v = 1/(Kᵀ(a∘u))`` — the same
        iterates as the log domain, two matrix-vector products per iteration instead of
        two exponentials of the whole matrix. When a scaling leaves [e^-S, e^S] it is
        absorbed into the potentials and ``K`` rebuilt (S = 30 in float32, 200 in float64).
        """
        err = float("inf")
        if self.name != "dense":
            it = 0
            for it in range(1, int(max_iter) + 1):  # noqa: B007
                f = self.update(f, g, a, b, loga, logb, eps, cols=False)[0]
                gt = self.update(f, g, a, b, loga, logb, eps, rows=False)[1]
                err = float((b * torch.expm1((g - gt) / eps)).norm())
                g = gt
                if err < tol:
                    break
            return f, g, it, err
        bound = ABSORB_BOUND.get(self.c.dtype, ABSORB_BOUND_DEFAULT)
        k = self._kernel(f, g, eps)  # (N, M)
        u, v = torch.ones_like(f), torch.ones_like(g)
        it = 0
        for it in range(1, int(max_iter) + 1):  # noqa: B007
            u_new = torch.mv(k, b * v).reciprocal_()  # (N,)
            ktu = torch.mv(k.t(), a * u_new)  # (M,)
            v_new = ktu.reciprocal()
            ok = bool(torch.isfinite(u_new).all() & torch.isfinite(v_new).all() & (ktu > 0).all())
            if not ok:  # under/overflow: back to the last good potentials, log-domain step
                f, g = f + eps * u.log(), g + eps * v.log()
                f = self.update(f, g, a, b, loga, logb, eps, cols=False)[0]
                gt = self.update(f, g, a, b, loga, logb, eps, rows=False)[1]
                err = float((b * torch.expm1((g - gt) / eps)).norm())
                g = gt
                k = self._kernel(f, g, eps)
                u, v = torch.ones_like(f), torch.ones_like(g)
            else:
                err = float((b * (v * ktu - 1.0)).norm())
                u, v = u_new, v_new
                lu, lv = u.log(), v.log()
                if float(torch.maximum(lu.abs().max(), lv.abs().max())) > bound:
                    f, g = f + eps * lu, g + eps * lv
                    k = self._kernel(f, g, eps)
                    u, v = torch.ones_like(f), torch.ones_like(g)
            if err < tol:
                break
        return f + eps * u.log(), g + eps * v.log(), it, err

    def _kernel(self, f: Tensor, g: Tensor, eps: float) -> Tensor:
        """``exp((f_i + g_j − C_ij)/ε)`` (N, M), in the scratch matrix of the dense backend."""
        if self.kbuf is None:
            self.kbuf = torch.empty_like(self.c)
        inv = 1.0 / eps
        torch.add(g * inv, self.c, alpha=-inv, out=self.kbuf).add_((f * inv).unsqueeze(1))
        return self.kbuf.exp_()

    @torch.no_grad()
    def solve_symmetric_to_tolerance(
        self, f: Tensor, a: Tensor, loga: Tensor, eps: float, tol: float, max_iter: int
    ) -> tuple[Tensor, int, float]:
        """The symmetric problem OT_ε(a, a): averaged updates ``f ← ½(f + T(f))`` until
        ``‖a ∘ (e^{(f − T(f))/ε} − 1)‖₂ < tol``. Returns ``(f, iterations, error)``."""
        err, it = float("inf"), 0
        for it in range(1, int(max_iter) + 1):  # noqa: B007
            ft = self.update(f, f, a, a, loga, loga, eps, cols=False)[0]
            err = float((a * torch.expm1((f - ft) / eps)).norm())
            f = 0.5 * (f + ft)
            if err < tol:
                break
        return f, it, err
