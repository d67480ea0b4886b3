"""The kernel reductions against float64 numpy brute force, on every backend."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from dalib.kernels import gaussian_matvec, gaussian_mean, median_bandwidth, softmin, sqdist
from dalib.losses import mmd

TORCH_BACKENDS = ["dense", "blocked"]
SIGMAS = [0.5, 1.0, 2.0]  # γ ratios 4: the squaring chain
ODD_SIGMAS = [0.6, 1.1, 2.0, 4.0]  # no chain for the first two


def _np_sqdist(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)


def _np_gauss(x, y, sigmas):
    d = _np_sqdist(x, y)
    return sum(np.exp(-d / (2 * s * s)) for s in sigmas)


def _data(n=23, m=17, d=3, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    y = torch.randn(m, d, generator=g, dtype=dtype) + 0.3
    return x, y


def test_sqdist_matches_brute_force_and_is_clamped():
    x, y = _data()
    d = sqdist(x, y)
    assert d.shape == (23, 17)
    np.testing.assert_allclose(d.numpy(), _np_sqdist(x, y), rtol=1e-12, atol=1e-12)
    # far from the origin, GEMM distances cancel: centring keeps them accurate, clamp ≥ 0
    z = torch.randn(50, 8) + 1000.0
    dz = sqdist(z, z)
    assert bool((dz >= 0).all())
    np.testing.assert_allclose(dz.double().numpy(), _np_sqdist(z.double(), z.double()), atol=2e-3)


def test_median_bandwidth_is_median_pairwise_distance():
    x, y = _data(10, 7)
    z = np.concatenate([x.numpy(), y.numpy()])
    iu = np.triu_indices(len(z), 1)
    dist = np.sqrt(_np_sqdist(z, z)[iu])
    med = median_bandwidth(x, y)
    # torch returns the lower of the two middle values for an even count
    assert med == pytest.approx(np.sort(dist)[(len(dist) - 1) // 2], rel=1e-12)
    assert median_bandwidth(torch.ones(4, 2), torch.ones(3, 2)) == 1.0  # all points equal
    # more than half the pairs duplicates (a median of 0): the mean of the non-zero distances
    z = torch.tensor([[0.0]] * 6 + [[1.0], [5.0]], dtype=torch.float64)  # 15 of the 28 distances are 0
    nonzero = [1.0] * 6 + [5.0] * 6 + [4.0]  # 0-1 six times, 0-5 six times, 1-5: mean 40/13, median 4
    assert median_bandwidth(z[:4], z[4:]) == pytest.approx(sum(nonzero) / len(nonzero), rel=1e-12)


def test_median_bandwidth_subsamples_large_inputs_reproducibly():
    """Above MEDIAN_MAX_POINTS pooled points: the exact median over the documented seeded
    subset of the pooled points, which estimates the median over all of them."""
    from scipy.spatial.distance import pdist

    from dalib.kernels.distance import MEDIAN_MAX_POINTS

    x, y = _data(3000, 2000, d=4)
    y = y + 1.5  # the domains apart: a subset of one of them alone would give another median
    m = median_bandwidth(x, y)
    assert m == median_bandwidth(x, y)
    z = torch.cat([x, y]).numpy()
    pick = torch.randperm(5000, generator=torch.Generator().manual_seed(0))[:MEDIAN_MAX_POINTS].numpy()
    sub = pdist(z[pick])  # the distances i < j
    assert m == pytest.approx(np.sort(sub)[(sub.size - 1) // 2], rel=1e-9)  # the lower middle, torch.median's
    every = pdist(z)
    assert m == pytest.approx(np.median(every), rel=0.01)
    assert abs(np.median(every) - median_bandwidth(x, x[:2000])) > 0.05 * np.median(every)  # (that 1% tells them apart)


@pytest.mark.parametrize("backend", TORCH_BACKENDS)
@pytest.mark.parametrize("k", [None, 2])
@pytest.mark.parametrize("sigmas", [SIGMAS, ODD_SIGMAS])
def test_gaussian_matvec_matches_brute_force(backend, k, sigmas, small_tiles):
    x, y = _data()
    v = torch.randn(17, dtype=torch.float64) if k is None else torch.randn(17, k, dtype=torch.float64)
    out = gaussian_matvec(x, y, v, sigmas, backend=backend)
    ref = _np_gauss(x, y, sigmas) @ v.numpy()
    assert out.shape == ref.shape
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", TORCH_BACKENDS)
@pytest.mark.parametrize("sigmas", [SIGMAS, ODD_SIGMAS])
def test_gaussian_mean_matches_brute_force(backend, sigmas, small_tiles):
    x, y = _data()
    for a, b in [(x, y), (x, x), (y, y)]:  # (x, x): the symmetric, half-tiles path
        ref = _np_gauss(a, b, sigmas).mean()
        assert gaussian_mean(a, b, sigmas, backend=backend).item() == pytest.approx(ref, rel=1e-12)
    # one bandwidth given as a float, or as a tensor
    assert gaussian_mean(x, y, 0.7, backend=backend).item() == pytest.approx(_np_gauss(x, y, [0.7]).mean(), rel=1e-12)
    t = torch.tensor(SIGMAS)
    assert gaussian_mean(x, y, t, backend=backend).item() == pytest.approx(_np_gauss(x, y, SIGMAS).mean(), rel=1e-12)


def test_gaussian_reductions_differentiate_under_torch_func():
    """``torch.func.grad`` of gaussian_mean and gaussian_matvec agrees with autograd's gradient
    (on torch 2.4 the bandwidths, wrapped by the transform, failed to become floats)."""
    x, y = _data(6, 5)
    v = torch.linspace(-1.0, 1.0, 5, dtype=torch.float64)
    for f in (lambda a: gaussian_mean(a, y, SIGMAS, backend="dense"),
              lambda a: gaussian_matvec(a, y, v, SIGMAS, backend="dense").sum()):
        leaf = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(f(leaf), leaf)
        torch.testing.assert_close(torch.func.grad(f)(x), grad)


def test_auto_takes_dense_for_a_dual_tensor_in_any_argument():
    """Past the dense size (800 points), ``auto`` looked only at the point clouds it sized the
    problem by (mmd: the larger one; the reductions: x and y) for forward-mode dual tensors, and
    chose ``blocked`` for a dual smaller cloud, ``v`` or ``h``: torch's "implement the jvp"."""
    import torch.autograd.forward_ad as fwAD

    x, y = _data(800, 100, 4)
    g = torch.Generator().manual_seed(1)
    v, h, t_y, t_v, y_big = (torch.randn(shape, generator=g, dtype=torch.float64)
                             for shape in ((800,), (800,), (100, 4), (800,), (800, 4)))
    cases = [  # (function of one argument, its point, tangent)
        (lambda t: mmd(x, t), y, t_y),
        (lambda t: gaussian_matvec(x, y_big, t, 1.0).sum(), v, t_v),
        (lambda t: softmin(x, y_big, t, 0.5).sum(), h, t_v),
    ]
    for f, point, tangent in cases:
        leaf = point.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(f(leaf), leaf)
        with fwAD.dual_level():
            out = fwAD.unpack_dual(f(fwAD.make_dual(point, tangent))).tangent
        assert float(out) == pytest.approx(float((grad * tangent).sum()), rel=1e-9)


@pytest.mark.parametrize("backend", TORCH_BACKENDS)
def test_a_point_is_at_distance_zero_from_itself(backend, small_tiles):
    """k(x_i, x_i) = 1 exactly when both arguments are one tensor. The GEMM form of the distance,
    ‖x‖² + ‖x‖² − 2 x·x, leaves its rounding on the diagonal (~1e-3 for these float32 norms of
    ~80), which a bandwidth of 0.01 turned into k(x, x) ≈ 0.66. Every other pair is 0 there."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 64, generator=g) * 10  # (20, 64) float32; pairs ~110 apart
    y = torch.randn(15, 64, generator=g) * 10
    assert gaussian_mean(x, x, 0.01, backend=backend).item() == pytest.approx(1 / 20, rel=1e-6)
    assert gaussian_mean(x, x, [0.01, 0.02], backend=backend).item() == pytest.approx(2 / 20, rel=1e-6)
    v = torch.randn(20, generator=g)
    torch.testing.assert_close(gaussian_matvec(x, x, v, 0.01, backend=backend), v)  # K = I
    # half precision is cast to float32 for each argument: still one tensor
    h = x.half()
    torch.testing.assert_close(gaussian_matvec(h, h, v, 0.01, backend=backend), v)
    # the biased MMD² is then the diagonals' 1/n + 1/m
    assert mmd(x, y, bandwidths=0.01, estimator="biased", backend=backend).item() == pytest.approx(1 / 20 + 1 / 15, rel=1e-6)


@pytest.mark.parametrize("backend", TORCH_BACKENDS)
@pytest.mark.parametrize("p", [1, 2, 1.5])
def test_softmin_matches_brute_force(backend, p, small_tiles):
    x, y = _data()
    h = torch.randn(17, dtype=torch.float64)
    h[3] = -torch.inf  # a zero weight
    eps = 0.3
    c = np.sqrt(_np_sqdist(x, y)) ** p / p
    ref = -eps * logsumexp(h.numpy()[None, :] - c / eps, axis=1)
    np.testing.assert_allclose(softmin(x, y, h, eps, p=p, backend=backend).numpy(), ref, rtol=1e-11, atol=1e-11)


def test_float32_backends_agree():
    """float32: blocked (GEMM tiles) against dense, relative 1e-5 on sums, 1e-4 on softmin."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(300, 16, generator=g), torch.randn(200, 16, generator=g)
    v = torch.rand(200, generator=g)
    s = [2.0, 4.0, 8.0]
    torch.testing.assert_close(
        gaussian_matvec(x, y, v, s, backend="blocked"), gaussian_matvec(x, y, v, s, backend="dense"), rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(
        gaussian_mean(x, x, s, backend="blocked"), gaussian_mean(x, x, s, backend="dense"), rtol=1e-5, atol=0
    )
    h = torch.zeros(200)
    torch.testing.assert_close(softmin(x, y, h, 0.5, backend="blocked"), softmin(x, y, h, 0.5, backend="dense"), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", TORCH_BACKENDS)
def test_gradcheck_float64(backend, small_tiles):
    x, y = _data(11, 9)
    x.requires_grad_(True)
    y.requires_grad_(True)
    v = torch.randn(9, 2, dtype=torch.float64, requires_grad=True)
    h = torch.randn(9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: gaussian_matvec(a, b, c, SIGMAS, backend=backend), (x, y, v))
    assert torch.autograd.gradcheck(lambda a, b: gaussian_mean(a, b, SIGMAS, backend=backend), (x, y))
    assert torch.autograd.gradcheck(lambda a, b: gaussian_mean(a, b, ODD_SIGMAS, backend=backend), (x, y))
    assert torch.autograd.gradcheck(lambda a: gaussian_mean(a, a, SIGMAS, backend=backend), (x,))
    for p in (1, 2):
        assert torch.autograd.gradcheck(lambda a, b, c: softmin(a, b, c, 0.4, p=p, backend=backend), (x, y, h))


def test_blocked_grad_through_selected_inputs_only(small_tiles):
    """Only the inputs that require grad get one (and nothing breaks)."""
    x, y = _data(11, 9)
    x.requires_grad_(True)
    v = torch.randn(9, dtype=torch.float64)
    gaussian_matvec(x, y, v, 1.0, backend="blocked").sum().backward()
    ref_x = x.detach().clone().requires_grad_(True)
    gaussian_matvec(ref_x, y, v, 1.0, backend="dense").sum().backward()
    torch.testing.assert_close(x.grad, ref_x.grad)


@pytest.mark.parametrize("backend", ["dense", "blocked"])
def test_inference_mode_features_on_one_side(backend, small_tiles):
    """Target features from a frozen encoder under torch.inference_mode: the other side still
    gets its gradient (the blocked reductions' autograd had refused to save them)."""
    with torch.inference_mode():
        t = torch.randn(9, 3)
    s = torch.randn(7, 3, requires_grad=True)
    (g1,) = torch.autograd.grad(gaussian_mean(s, t, 1.0, backend=backend), s)
    (g2,) = torch.autograd.grad(softmin(s, t, torch.zeros(9), 0.5, backend=backend).sum(), s)
    (r1,) = torch.autograd.grad(gaussian_mean(s, t.clone(), 1.0, backend="dense"), s)
    (r2,) = torch.autograd.grad(softmin(s, t.clone(), torch.zeros(9), 0.5, backend="dense").sum(), s)
    torch.testing.assert_close((g1, g2), (r1, r2))


def test_the_dense_backend_has_a_second_derivative():
    """docs/kernels.md: under create_graph=True use the dense backend (blocked is first-order)."""
    from dalib.losses import mmd

    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(5, 3, generator=g, dtype=torch.float64)
    assert torch.autograd.gradgradcheck(lambda a: mmd(a, y, bandwidths=[1.0, 2.0], backend="dense"), (x,))


@pytest.mark.parametrize("loss", ["mmd", "softmin"])
def test_the_blocked_backend_refuses_a_second_derivative_in_one_line(loss):
    """Its tiles are written in place: create_graph=True is our one-line error, not torch's."""
    from dalib.errors import BackendError
    from dalib.kernels import softmin
    from dalib.losses import mmd

    x = torch.randn(7, 3, requires_grad=True)
    y = torch.randn(5, 3)
    value = (mmd(x, y, backend="blocked") if loss == "mmd"
             else softmin(x, y, torch.zeros(5), 0.5, backend="blocked").sum())
    with pytest.raises(BackendError, match="backend 'blocked' gives first-order gradients only: pass backend='dense'"):
        torch.autograd.grad(value, x, create_graph=True)
    value = (mmd(x, y, backend="blocked") if loss == "mmd"
             else softmin(x, y, torch.zeros(5), 0.5, backend="blocked").sum())
    assert torch.autograd.grad(value, x)[0].shape == (7, 3)  # first order: as before


def test_values_too_large_in_float64_do_not_advise_float64():
    from dalib.errors import InputError
    from dalib.losses import coral

    with pytest.raises(InputError, match=r"too large for float64 squared distances .*scale the features$"):
        coral(torch.full((4, 3), 1e200, dtype=torch.float64), torch.zeros(4, 3, dtype=torch.float64))
