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

__all__ = ["MEDIAN_MULTIPLIERS", "POOLED_MAX_POINTS", "mmd"]

#: With ``bandwidths=None``: σ_k = (median pairwise distance) × 2^k, k = −2 … 2.
MEDIAN_MULTIPLIERS = (0.25, 0.5, 1.0, 2.0, 4.0)

#: On ``dense``, up to this many pooled points (N + M) the three kernel means come from one
#: kernel matrix of the pooled batch, differentiated by hand (:class:`_PooledMMD`); above, from
#: three matrices through autograd. Measured on the CPU (forward + backward, float32, d = 64
#: and 256, one thread): 1.6-2.2× faster up to 64 + 64 points, 1.2-1.6× at 128 + 128 to
#: 192 + 192; from 224 + 224 on, it is as often slower (the pooled matrix's two cross blocks
#: cost 4/3 of the three matrices' exponentials); benchmarks/mmd_loss.py.
POOLED_MAX_POINTS = 384

ESTIMATORS = ("biased", "unbiased", "linear")


class _PooledMMD(torch.autograd.Function):
    """MMD² (biased or unbiased) of ``x`` (N, D) and ``y`` (M, D) from one kernel matrix of
    the pooled batch ``z = [x; y]`` (P = N + M).

    With W the estimator's weights per pair (1/N², 1/M² or −1/(NM) by block; 0 on the
    within-domain diagonals when unbiased), MMD² = Σ_ij W_ij K_ij, K_ij = Σ_s exp(−γ_s D_ij).
    The forward pass also keeps G = ∂MMD²/∂D = −W ∘ Σ_s γ_s exp(−γ_s D) (P, P), symmetric;
    since D_ij = ‖z_i‖² + ‖z_j‖² − 2 z_i·z_j, the gradient is ∂/∂z = 4 (diag(G 1) z − G z):
    one matrix product, where autograd would go back through every exponential. The points
    are centred first (the gradient of the centring vanishes, G being symmetric). A double
    backward recomputes the loss through autograd (:func:`_three_sums`)."""

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, gammas: tuple[float, ...], unbiased: bool) -> Tensor:
        n, m, s = x.shape[0], y.shape[0], len(gammas)
        z = torch.cat([x, y])  # (P, D)
        zc = z - z.mean(0)
        sq = (zc * zc).sum(1)  # (P,)
        d = torch.addmm(sq.unsqueeze(0), zc, zc.t(), alpha=-2.0).add_(sq.unsqueeze(1))  # (P, P)
        d.clamp_min_(0.0).fill_diagonal_(0.0)  # k(z_i, z_i) = S exactly
        if y is x:  # and k(x_i, y_i) too, as the other path gives
            d[:n, n:].fill_diagonal_(0.0)
            d[n:, :n].fill_diagonal_(0.0)
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        e = torch.empty_like(d)
        for i, g in enumerate(gammas):
            torch.mul(d, -g, out=e).exp_()
            if i == 0:
                k = e.clone()
                kd = e * g if need_grad else None  # Σ_s γ_s exp(−γ_s D)
            else:
                k += e
                if kd is not None:
                    kd.add_(e, alpha=g)
        if unbiased:
            a, b = 1.0 / (n * (n - 1)), 1.0 / (m * (m - 1))
            diag = s * (a * n + b * m)  # the within-domain diagonals, k = S each, are left out
        else:
            a, b, diag = 1.0 / (n * n), 1.0 / (m * m), 0.0
        c = -2.0 / (n * m)  # the two cross blocks, each counted once: −1/(NM) per pair and block
        # the block sums from the row sums (one product with the domains' indicators), added in
        # float64: a float32 sum over a strided block loses 4e-7 of it, and the MMD² of close
        # domains is 1e-4 of the kernel means it is the difference of
        side = torch.zeros(n + m, 2, dtype=d.dtype, device=d.device)
        side[:n, 0] = 1.0
        side[n:, 1] = 1.0
        rows = (k @ side).double()  # (P, 2): Σ_j k(z_i, x_j), Σ_j k(z_i, y_j)
        value = (a * rows[:n, 0].sum() + b * rows[n:, 1].sum() + c * rows[:n, 1].sum() - diag).to(d.dtype)
        if kd is not None:
            # where rounding put D below 0 (near duplicates) autograd's clamp gives no gradient and
            # this gives G_ij (z_i − z_j), the unclamped one: both ≈ 0, as z_i ≈ z_j
            kd[:n, :n] *= -a
            kd[n:, n:] *= -b
            kd[:n, n:] *= -0.5 * c
            kd[n:, :n] *= -0.5 * c
            ctx.save_for_backward(zc, kd, x, y)
        ctx.n, ctx.gammas, ctx.unbiased = n, gammas, unbiased
        return value

    @staticmethod
    @outside_autocast  # a backward pass called in a caller's autocast region would run its products in bfloat16
    def backward(ctx, grad: Tensor):
        zc, g, x, y = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: a graph of the gradient is needed, autograd's
            inputs = [t for t in (x, y) if t.requires_grad]
            with torch.enable_grad():
                value = _three_sums(x, y, ctx.gammas, "dense", ctx.unbiased)
            grads = iter(torch.autograd.grad(value, inputs, grad, create_graph=True))
            return (*(next(grads) if t.requires_grad else None for t in (x, y)), None, None)
        gz = torch.addmm(g.sum(1, keepdim=True) * zc, g, zc, alpha=-1.0).mul_(4 * grad)  # (P, D)
        return gz[: ctx.n], gz[ctx.n :], None, None


def _three_sums(x: Tensor, y: Tensor, gammas: tuple[float, ...], name: str, unbiased: bool) -> Tensor:
    """MMD² from the three kernel sums Σ k(x, x'), Σ k(y, y'), Σ k(x, y) on backend ``name``."""
    n, m, s = x.shape[0], y.shape[0], len(gammas)
    kxx, kyy, kxy = (gaussian_sum_unchecked(a, b, gammas, name) for a, b in ((x, x), (y, y), (x, y)))
    if unbiased:  # k(z, z) = S for every z: remove the diagonals
        return (kxx - n * s) / (n * (n - 1)) + (kyy - m * s) / (m * (m - 1)) - 2 * kxy / (n * m)
    return kxx / (n * n) + kyy / (m * m) - 2 * kxy / (n * m)


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
    the within-domain problems (max(N, M)² pairs). On ``dense``, up to
    :data:`POOLED_MAX_POINTS` pooled points (training batches), one kernel matrix of the
    pooled batch serves the three means and the gradient is one matrix product. Returns a
    scalar tensor, differentiable w.r.t. ``x`` and ``y`` (twice, too).
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
    unbiased = estimator == "unbiased"
    # the within-domain sums are the largest: N² or M² pairs, the cross one N·M; a 10-point
    # source against a 20000-point target is 2·10⁵ cross pairs but a 20000² target matrix
    big = x if n >= m else y
    name = resolve_backend(backend, big, big)
    if name == "dense" and n + m <= POOLED_MAX_POINTS:
        return _PooledMMD.apply(x, y, gammas, unbiased)
    return with_keops_fallback(backend, name, lambda name: _three_sums(x, y, gammas, name, unbiased))
