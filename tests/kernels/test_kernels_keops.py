"""The keops backend against the torch ones (KeOps runs on CPU here).

Each distinct formula is compiled by g++ on first use (~10 s) and cached in ~/.cache; to
keep that cost small these tests use one feature size (3), float64, three bandwidths and
one-column ``v`` throughout: one Gaussian formula and one softmin formula (plus their
gradients).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("pykeops")

from dalib.kernels import gaussian_matvec, gaussian_mean, softmin  # noqa: E402

SIGMAS = [0.5, 1.0, 2.0]


def _data(n=23, m=17):
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(n, 3, generator=g, dtype=torch.float64),
        torch.randn(m, 3, generator=g, dtype=torch.float64) + 0.3,
    )


def test_keops_gaussian_matches_dense_and_gradcheck():
    x, y = _data()
    v = torch.randn(17, dtype=torch.float64)
    torch.testing.assert_close(
        gaussian_matvec(x, y, v, SIGMAS, backend="keops"), gaussian_matvec(x, y, v, SIGMAS, backend="dense"), rtol=1e-12, atol=1e-12
    )
    torch.testing.assert_close(
        gaussian_mean(x, y, SIGMAS, backend="keops"), gaussian_mean(x, y, SIGMAS, backend="dense"), rtol=1e-12, atol=0
    )
    xs, ys = x[:6].clone().requires_grad_(True), y[:5].clone().requires_grad_(True)
    vs = v[:5].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b, c: gaussian_matvec(a, b, c, SIGMAS, backend="keops"), (xs, ys, vs))


def test_keops_softmin_matches_dense_and_gradcheck():
    x, y = _data()
    h = torch.randn(17, dtype=torch.float64)
    for eps in (0.3, 2.0):  # ε is a parameter: no recompilation
        torch.testing.assert_close(
            softmin(x, y, h, eps, backend="keops"), softmin(x, y, h, eps, backend="dense"), rtol=1e-12, atol=1e-12
        )
    xs, ys = x[:6].clone().requires_grad_(True), y[:5].clone().requires_grad_(True)
    hs = h[:5].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b, c: softmin(a, b, c, 0.4, backend="keops"), (xs, ys, hs))


def test_keops_softmin_with_zero_weights_matches_dense():
    """Zero weights reach the softmin as h_j = −inf (log 0): KeOps' max-shifted log-sum-exp
    must give the dense value, not NaN (the same formula as above: no new compilation)."""
    x, y = _data()
    h = torch.randn(17, dtype=torch.float64)
    h[:4] = -float("inf")
    out = softmin(x, y, h, 0.3, backend="keops")
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, softmin(x, y, h, 0.3, backend="dense"), rtol=1e-12, atol=1e-12)


def test_keops_softmin_gradient_is_finite_where_points_meet_for_p_between_1_and_2():
    """d^(p/2)'s derivative is infinite at d = 0 for p < 2: KeOps multiplied it by the zero
    difference and gave NaN for every point that meets one of the other cloud, as the
    debiasing terms of ``sinkhorn`` always pair each point with itself."""
    x, y = _data()
    y = torch.cat([x[:3], y[3:]])  # three shared points
    h = torch.randn(17, dtype=torch.float64)
    grads = {}
    for backend in ("keops", "dense"):
        xs = x.clone().requires_grad_(True)
        out = softmin(xs, y, h, 0.4, p=1.5, backend=backend)
        grads[backend] = torch.autograd.grad(out.sum(), xs)[0]
    assert torch.isfinite(grads["keops"]).all()
    # (dense rounds the shared points' distance, 0, to about 1e-16: its cost there is about 1e-12)
    torch.testing.assert_close(grads["keops"], grads["dense"], rtol=1e-9, atol=1e-10)
