"""Maximum mean discrepancy with a multi-bandwidth Gaussian kernel (MK-MMD, DAN)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from dalib.errors import InputError
from dalib.kernels._checks import as_gammas, check_pair, float_values, outside_autocast, plain_tensor
from dalib.kernels.backends import resolve_backend, with_keops_fallback
from dalib.kernels.distance import median_bandwidth_unchecked, sqdist_tile_
from dalib.kernels.gaussian import gaussian_sum_unchecked

__all__ = ["MEDIAN_MULTIPLIERS", "mmd"]

#: With ``bandwidths=None``: σ_k = (median pairwise distance) × 2^k, k = −2 … 2.
MEDIAN_MULTIPLIERS = (0.25, 0.5, 1.0, 2.0, 4.0)

ESTIMATORS = ("biased", "unbiased", "linear")


def _estimator_weights(n: int, m: int, s: int, unbiased: bool) -> tuple[float, float, float, float]:
    """MMD² = w_x Σ k(x, x') + w_y Σ k(y, y') + w_xy Σ k(x, y) − diag, the sums over all pairs:
    w_x = 1/N² or, unbiased, 1/(N(N−1)) with the diagonal's k(x_i, x_i) = S taken out by
    ``diag``; w_y likewise; w_xy = −2/(NM). Returns (w_x, w_y, w_xy, diag)."""
    if unbiased:
        wx, wy = 1.0 / (n * (n - 1)), 1.0 / (m * (m - 1))
        return wx, wy, -2.0 / (n * m), s * (wx * n + wy * m)
    return 1.0 / (n * n), 1.0 / (m * m), -2.0 / (n * m), 0.0


def _dense_forward(x: Tensor, y: Tensor, gam: Tensor, unbiased: bool, need_grad: bool = True) -> tuple[Tensor, ...]:
    """MMD² (biased or unbiased) from the three kernel blocks x–x, y–y and x–y, and what its
    gradient needs: the points, each block's centred as below, and G_B = ∂MMD²/∂D_B.

    MMD² = w_x Σ f(D_xx) + w_y Σ f(D_yy) + w_xy Σ f(D_xy) − diag with f(D) = Σ_s exp(−γ_s D)
    (:func:`_estimator_weights`; ``gam`` (S,) holds the γ_s); G_B = w_B f'(D_B).
    Each block's distances come from one product of centred points: x–x on x's mean, y–y on
    y's, x–y on the pooled mean (centring both domains on the pooled mean would leave the
    within-domain distances of two domains far apart to the cancellation of large norms).
    Each block is summed in float64: the MMD² of two close domains is 1e-4 of the kernel means
    it is the difference of, and a float32 sum over a block loses 4e-7 of it.
    Without ``need_grad``, only the value (a 1-tuple).
    """
    n, m = x.shape[0], y.shape[0]
    same = y is x  # then k(x_i, y_i) = S exactly too
    mx = x.mean(0)
    xc = x - mx
    if same:
        yc = xj = yj = xc
    else:
        my = y.mean(0)
        yc = y - my
        c = (mx * n + my * m) / (n + m)  # the pooled mean
        xj, yj = x - c, y - c
    *weights, diag = _estimator_weights(n, m, gam.numel(), unbiased)
    # the three blocks side by side in one buffer: each exponential pass covers all of them
    sizes = (n * n, m * m, n * m)
    shapes = ((n, n), (m, m), (n, m))
    d = torch.empty(sum(sizes), dtype=x.dtype, device=x.device)
    blocks = [part.view(shape) for part, shape in zip(d.split(sizes), shapes)]
    for out, a, b in zip(blocks, (xc, yc, xj), (xc, yc, yj)):
        a2 = (a * a).sum(1, keepdim=True)  # (R, 1)
        sqdist_tile_(a, a2, b, a2.t() if b is a else (b * b).sum(1).unsqueeze(0), out=out)
    for block in blocks[: 3 if same else 2]:
        block.diagonal().zero_()  # exactly 0, whatever the rounding of the product
    e = torch.mul(d, gam.neg().unsqueeze(1)).exp_()  # (S, L): every bandwidth in one pass
    k = e.sum(0)  # (L,) Σ_s exp(−γ_s D)
    kd = torch.mv(e.t(), gam) if need_grad else None  # (L,) Σ_s γ_s exp(−γ_s D) = −f'(D)
    value = sum(w * part.sum(dtype=torch.float64) for w, part in zip(weights, k.split(sizes)))
    value = (value - diag).to(x.dtype)
    if kd is None:
        return (value,)
    grads = [part.view(shape).mul_(-w) for part, shape, w in zip(kd.split(sizes), shapes, weights)]
    for g in grads[:2]:
        g.diagonal().zero_()  # a point's own term has no gradient (its distance is 0 whatever it is)
    return value, xc, yc, xj, yj, *grads


class _DenseMMD(torch.autograd.Function):
    """MMD² on the ``dense`` backend with a hand-written backward pass.

    With G_B = ∂MMD²/∂D_B (kept from the forward pass) and D_ij = ‖u_i − v_j‖², the gradient
    is, per block, Σ_j G_ij · 2 (u_i − v_j) = 2 (diag(G 1) u − G v): one matrix product per
    block where autograd would go back through every exponential; the within-domain blocks
    count each pair twice (4 instead of 2). The centring of each block cancels out of
    u_i − v_j. A double backward (``create_graph=True``) recomputes the loss through autograd
    (:func:`_three_sums`); so does every ``torch.func`` transform and forward-mode AD
    (:func:`dalib.kernels._checks.plain_tensor`: :class:`_DenseMMD` serves plain tensors only,
    since the transforms differentiate its backward again and batch it, and forward AD needs a
    ``jvp`` rule)."""

    @staticmethod
    def forward(x: Tensor, y: Tensor, gam: Tensor, unbiased: bool) -> tuple[Tensor, ...]:
        # (no_grad: as autograd runs a forward anyway; torch 2.4's torch.compile traced it with
        # gradients on, and refused its products written into a buffer: "out=... arguments")
        with torch.no_grad():
            return _dense_forward(x, y, gam, unbiased)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, y, gam, unbiased = inputs
        ctx.mark_non_differentiable(*output[1:])
        ctx.save_for_backward(*output[1:])
        ctx.gam, ctx.unbiased = gam, unbiased
        # for a double backward only: kept without save_for_backward's version check, so that an
        # in-place change of an input after the loss does not stop the first backward (its own
        # check is below; not under torch.compile, which cannot trace a tensor's version counter)
        ctx.inputs = (x, y)
        ctx.versions = None if torch.compiler.is_compiling() else (x._version, y._version)

    @staticmethod
    @outside_autocast  # a backward pass called in a caller's autocast region would run its products in bfloat16
    def backward(ctx, grad: Tensor, *_unused: Tensor):
        # unpacked first in both branches: a graph already freed by a backward pass says so
        xc, yc, xj, yj, gxx, gyy, gxy = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: the gradient must have a graph, autograd's
            return _second_order(ctx, grad)
        gx = torch.addmm(gxx.sum(1, keepdim=True) * xc, gxx, xc, alpha=-1.0).mul_(2.0)
        gx = gx.add_(gxy.sum(1, keepdim=True) * xj).addmm_(gxy, yj, alpha=-1.0).mul_(2 * grad)  # (N, D)
        gy = torch.addmm(gyy.sum(1, keepdim=True) * yc, gyy, yc, alpha=-1.0).mul_(2.0)
        gy = gy.add_(gxy.sum(0).unsqueeze(1) * yj).addmm_(gxy.t(), xj, alpha=-1.0).mul_(2 * grad)  # (M, D)
        return gx, gy, None, None


def _second_order(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
    """The first derivative of :class:`_DenseMMD` with a graph, from autograd's form."""
    x, y = ctx.inputs
    if ctx.versions is not None and (x._version, y._version) != ctx.versions:
        raise RuntimeError("mmd: an input was modified in place after the loss was computed; its second "
                           "derivative (create_graph=True) needs the original values")
    wanted = [t for t in dict.fromkeys((x, y)) if t.requires_grad]  # one tensor given twice: once
    with torch.enable_grad():
        value = _three_sums(x, y, tuple(float_values(ctx.gam)), "dense", ctx.unbiased)
    found = dict(zip(map(id, wanted), torch.autograd.grad(value, wanted, grad, create_graph=True)))
    return found.get(id(x)), (found.get(id(y)) if y is not x else None), None, None


def _three_sums(x: Tensor, y: Tensor, gammas: tuple[float, ...], name: str, unbiased: bool) -> Tensor:
    """MMD² from the three kernel sums Σ k(x, x'), Σ k(y, y'), Σ k(x, y) on backend ``name``."""
    wx, wy, wxy, diag = _estimator_weights(x.shape[0], y.shape[0], len(gammas), unbiased)
    kxx, kyy, kxy = (gaussian_sum_unchecked(a, b, gammas, name) for a, b in ((x, x), (y, y), (x, y)))
    return (wx * kxx + wy * kyy + wxy * kxy - diag).to(x.dtype)  # (combined in the sums' float64 where they are)


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
    ``backend``: see :func:`dalib.kernels.resolve_backend`, which decides on the larger of
    the within-domain problems (max(N, M)² pairs). On ``dense`` the gradient is written by
    hand: one matrix product per block. Returns a scalar tensor, differentiable w.r.t. ``x``
    and ``y`` (under ``torch.func.grad``, ``vjp``, ``jvp`` and forward-mode AD too, which take
    autograd's form on ``dense``, the backend ``auto`` then picks; not under
    ``torch.func.vmap``, whose batched tensors the input checks cannot read). Twice on
    ``dense`` (which ``auto`` picks for small inputs, up to 724 points on the CPU) and on
    ``keops``: ``blocked`` gives first-order gradients and refuses ``create_graph=True`` in
    one line; pass ``backend="dense"`` (or ``"keops"``) for a second derivative.
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
        med = median_bandwidth_unchecked(x, y)  # (checked above)
        bandwidths = [med * k for k in MEDIAN_MULTIPLIERS]
    gam = as_gammas(bandwidths, x)  # (S,) 1/(2σ²)
    if estimator == "linear":
        return _linear(x, y, gam)
    unbiased = estimator == "unbiased"
    # the within-domain sums are the largest: N² or M² pairs, the cross one N·M; a 10-point
    # source against a 20000-point target is 2·10⁵ cross pairs but a 20000² target matrix
    big = x if n >= m else y
    name = resolve_backend(backend, big, big, others=(x, y))
    if name == "dense" and plain_tensor(x) and plain_tensor(y):  # torch.func transforms, forward AD: autograd's form
        if torch.is_grad_enabled() and (x.requires_grad or y.requires_grad):
            return _DenseMMD.apply(x, y, gam, unbiased)[0]
        return _dense_forward(x, y, gam, unbiased, need_grad=False)[0]
    gammas = tuple(float_values(gam))
    return with_keops_fallback(backend, name, lambda name: _three_sums(x, y, gammas, name, unbiased))
