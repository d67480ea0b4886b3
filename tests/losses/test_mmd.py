"""MMD² against a float64 numpy brute force, its properties, backends and errors."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

import dalib.kernels.backends as backends
from dalib.errors import InputError
from dalib.losses import mmd
from dalib.losses.mmd import MEDIAN_MULTIPLIERS

MMD_MODULE = importlib.import_module("dalib.losses.mmd")  # ``dalib.losses.mmd`` is the function
SIGMAS = [0.5, 1.0, 2.0]
GAMMAS = tuple(0.5 / (s * s) for s in SIGMAS)


def _k(x, y, sigmas):
    d = ((np.asarray(x)[:, None, :] - np.asarray(y)[None, :, :]) ** 2).sum(-1)
    return sum(np.exp(-d / (2 * s * s)) for s in sigmas)


def _np_mmd(x, y, sigmas, estimator):
    x, y = x.numpy(), y.numpy()
    n, m = len(x), len(y)
    kxx, kyy, kxy = _k(x, x, sigmas), _k(y, y, sigmas), _k(x, y, sigmas)
    if estimator == "biased":
        return kxx.mean() + kyy.mean() - 2 * kxy.mean()
    if estimator == "unbiased":
        off = lambda k: (k.sum() - np.trace(k)) / (len(k) * (len(k) - 1))  # noqa: E731
        return off(kxx) + off(kyy) - 2 * kxy.mean()
    h = min(n, m) // 2
    terms = [
        _k(x[2 * i : 2 * i + 1], x[2 * i + 1 : 2 * i + 2], sigmas)
        + _k(y[2 * i : 2 * i + 1], y[2 * i + 1 : 2 * i + 2], sigmas)
        - _k(x[2 * i : 2 * i + 1], y[2 * i + 1 : 2 * i + 2], sigmas)
        - _k(x[2 * i + 1 : 2 * i + 2], y[2 * i : 2 * i + 1], sigmas)
        for i in range(h)
    ]
    return float(np.mean(terms))


def _data(n=23, m=17, d=3, shift=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(m, d, generator=g, dtype=torch.float64) + shift


@pytest.mark.parametrize("estimator", ["biased", "unbiased", "linear"])
@pytest.mark.parametrize("backend", ["dense", "blocked"])
def test_mmd_matches_brute_force(estimator, backend, small_tiles):
    x, y = _data()
    value = mmd(x, y, bandwidths=SIGMAS, estimator=estimator, backend=backend)
    assert value.item() == pytest.approx(_np_mmd(x, y, SIGMAS, estimator), rel=1e-10, abs=1e-12)


def test_median_heuristic_bandwidths():
    x, y = _data()
    z = np.concatenate([x.numpy(), y.numpy()])
    dist = np.sqrt(((z[:, None] - z[None]) ** 2).sum(-1))[np.triu_indices(len(z), 1)]
    med = np.sort(dist)[(len(dist) - 1) // 2]
    expected = _np_mmd(x, y, [med * k for k in MEDIAN_MULTIPLIERS], "biased")
    assert mmd(x, y).item() == pytest.approx(expected, rel=1e-10)
    assert MEDIAN_MULTIPLIERS == (0.25, 0.5, 1.0, 2.0, 4.0)


def test_identical_samples_give_zero_and_shift_gives_positive():
    x, y = _data()
    assert mmd(x, x, bandwidths=SIGMAS).item() == pytest.approx(0.0, abs=1e-12)
    assert mmd(x, x.clone(), bandwidths=SIGMAS, backend="blocked").item() == pytest.approx(0.0, abs=1e-12)
    assert mmd(x, y, bandwidths=SIGMAS).item() > 0.05
    # a larger shift, a larger discrepancy
    assert mmd(x, y + 1.0, bandwidths=SIGMAS).item() > mmd(x, y, bandwidths=SIGMAS).item()


@pytest.mark.parametrize("estimator", ["biased", "unbiased", "linear"])
def test_symmetric(estimator):
    x, y = _data(20, 20)
    assert mmd(x, y, bandwidths=SIGMAS, estimator=estimator).item() == pytest.approx(
        mmd(y, x, bandwidths=SIGMAS, estimator=estimator).item(), rel=1e-12, abs=1e-14
    )


def test_unbiased_is_zero_in_expectation_biased_is_not():
    """Same distribution, 200 draws of n = 12: the U-statistic's mean is within 3 standard
    errors of 0, while the V-statistic is biased upwards by far more."""
    g = torch.Generator().manual_seed(3)
    u, v = [], []
    for _ in range(200):
        x = torch.randn(12, 2, generator=g, dtype=torch.float64)
        y = torch.randn(12, 2, generator=g, dtype=torch.float64)
        u.append(mmd(x, y, bandwidths=1.0, estimator="unbiased").item())
        v.append(mmd(x, y, bandwidths=1.0, estimator="biased").item())
    u, v = np.array(u), np.array(v)
    se = u.std(ddof=1) / np.sqrt(len(u))
    assert abs(u.mean()) < 3 * se
    assert v.mean() > 10 * se
    assert (u < 0).any()  # the unbiased estimate can be negative


def test_float32_blocked_agrees_with_dense():
    """float32, 300 vs 250 points in 16-d: blocked vs dense within 1e-6 absolute."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, 16, generator=g), torch.randn(250, 16, generator=g) + 0.2
    a = mmd(x, y, backend="dense")
    b = mmd(x, y, backend="blocked")
    assert abs(a.item() - b.item()) < 1e-6
    assert a.item() > 0


def test_the_blocked_sums_are_combined_in_float64_before_the_cast():
    """MMD² is a small difference of three kernel sums: each was cast to float32 before they
    were combined, 3.5x less exact than combining them first (1.3e-4 against 3.8e-5 of MMD²
    at 2000 points in 64-d); the loss itself stays in the inputs' dtype, and so does its gradient."""
    from dalib.kernels.gaussian import gaussian_sum_unchecked

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, 16, generator=g), torch.randn(250, 16, generator=g) + 0.2
    assert gaussian_sum_unchecked(x, y, (0.5,), "blocked").dtype == torch.float64
    xg = x.clone().requires_grad_()
    value = mmd(xg, y, bandwidths=SIGMAS, backend="blocked")
    value.backward()
    assert value.dtype == torch.float32 and xg.grad.dtype == torch.float32
    exact = mmd(x.double(), y.double(), bandwidths=SIGMAS, backend="dense")
    assert abs(value.item() - exact.item()) < 1e-6


@pytest.mark.parametrize("estimator", ["biased", "unbiased", "linear"])
@pytest.mark.parametrize("backend", ["dense", "blocked"])
def test_gradcheck(estimator, backend, small_tiles):
    x, y = _data(9, 8)
    x.requires_grad_(True)
    y.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: mmd(a, b, bandwidths=SIGMAS, estimator=estimator, backend=backend), (x, y))


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_the_dense_form_differentiates_twice_and_under_autocast(estimator):
    """The dense form's backward is written by hand; a second derivative (a gradient
    penalty, say) goes through autograd's graph, in float32 also in a caller's autocast
    region."""
    x, y = _data(9, 8)
    x.requires_grad_(True)
    y.requires_grad_(True)
    f = lambda a, b: mmd(a, b, bandwidths=SIGMAS, estimator=estimator, backend="dense")  # noqa: E731
    assert torch.autograd.gradgradcheck(f, (x, y))
    (gx,) = torch.autograd.grad(f(x, y.detach()), x, create_graph=True)
    (gxx,) = torch.autograd.grad(gx.pow(2).sum(), x)
    assert torch.isfinite(gxx).all() and float(gxx.abs().sum()) > 0
    # differentiated in a caller's autocast region, the gradients and the second derivative's
    # graph are still computed in float32 (bfloat16 products put the gradient 2e-3 off here)
    x32, y32 = (t.detach().float().requires_grad_(True) for t in (x * 3, y * 3))
    for create_graph in (False, True):
        first = [torch.autograd.grad(f(x32, y32), x32, create_graph=create_graph)[0] for _ in range(2)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            first[1] = torch.autograd.grad(f(x32, y32), x32, create_graph=create_graph)[0]
        torch.testing.assert_close(first[1], first[0], rtol=1e-6, atol=1e-8)
    second = [torch.autograd.grad(g.pow(2).sum(), x32)[0] for g in first]
    torch.testing.assert_close(second[1], second[0], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_one_tensor_on_both_sides_gets_the_gradient_once(estimator):
    """``mmd(x, x)``: both sides' gradients reach x, as autograd's form gives them, with and
    without ``create_graph`` (which once returned them twice over). For the biased estimate,
    identically 0, the gradient is 0."""
    x = _data(9, 8)[0].requires_grad_(True)
    f = lambda a, b: mmd(a, b, bandwidths=SIGMAS, estimator=estimator, backend="dense")  # noqa: E731
    (plain,) = torch.autograd.grad(f(x, x), x)
    (graphed,) = torch.autograd.grad(f(x, x), x, create_graph=True)
    (reference,) = torch.autograd.grad(MMD_MODULE._three_sums(x, x, GAMMAS, "dense", estimator == "unbiased"), x)
    torch.testing.assert_close(plain, reference, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(graphed, reference, rtol=1e-10, atol=1e-14)
    assert (float(plain.abs().max()) < 1e-12) == (estimator == "biased")


@pytest.mark.parametrize("backend", ["dense", "blocked"])
def test_one_float32_tensor_on_both_sides_gives_exactly_zero(backend):
    """Far from the origin with a small bandwidth, the GEMM form's rounding of ‖x_i − x_i‖²
    (norms of about 3000 here) would leave k(x_i, x_i) below 1 and a positive MMD²."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(40, 8, generator=g) * 5 + 1000
    assert float(mmd(x, x, bandwidths=0.01, estimator="biased", backend=backend)) == 0.0


@pytest.mark.parametrize("backend", ["dense", "blocked"])
def test_float32_domains_far_apart_keep_their_precision(backend):
    """Two domains 1000 apart, σ = 1: centred on the pooled mean, the within-domain distances
    came from norms of about 500² and the dense gradient was 7e-3 off; each block is centred
    on its own points."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 2, generator=g), torch.randn(32, 2, generator=g) + 1000
    xd = x.double().requires_grad_(True)
    exact = mmd(xd, y.double(), bandwidths=1.0, backend=backend)
    (exact_grad,) = torch.autograd.grad(exact, xd)
    xf = x.clone().requires_grad_(True)
    value = mmd(xf, y, bandwidths=1.0, backend=backend)
    (grad,) = torch.autograd.grad(value, xf)
    assert abs(float(value.detach()) - float(exact.detach())) < 1e-6 * float(exact.detach())
    assert float((grad.double() - exact_grad).abs().max()) < 1e-5 * float(exact_grad.abs().max())


@pytest.mark.parametrize("seed", [0, 1])
def test_float32_mmd_of_close_domains_is_summed_precisely(seed):
    """300 + 300 points in 64-d, scales 1 and 1.01: MMD² is 1e-4 to 2e-3 of kernel means near
    1. Each block's row sums are added in float64: within 1e-8 of the float64 value here,
    where float32 sums were 1.4e-7 off."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(300, 64, generator=g), torch.randn(300, 64, generator=g) * 1.01
    exact = mmd(x.double(), y.double(), estimator="unbiased", bandwidths=[4.0, 8.0, 16.0])
    value = mmd(x, y, estimator="unbiased", bandwidths=[4.0, 8.0, 16.0], backend="dense")
    assert abs(float(value) - float(exact)) < 3e-8


def test_the_torch_func_transforms_and_forward_mode_differentiate_it():
    """``torch.func``'s transforms (they differentiate a backward pass again, and batch it)
    and forward-mode AD take autograd's form of the dense formula, and agree with the
    hand-written gradient; ``vjp``, ``jacrev``, ``jvp`` and ``hessian`` once failed on it."""
    x, y = _data(6, 5)
    f = lambda a: mmd(a, y, bandwidths=SIGMAS, estimator="unbiased", backend="dense")  # noqa: E731
    leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(leaf), leaf)
    torch.testing.assert_close(torch.func.grad(f)(x), grad)
    torch.testing.assert_close(torch.func.vjp(f, x)[1](torch.tensor(1.0, dtype=x.dtype))[0], grad)
    torch.testing.assert_close(torch.func.jacrev(f)(x), grad)
    tangent = torch.linspace(-1, 1, x.numel(), dtype=x.dtype).reshape(x.shape)
    torch.testing.assert_close(torch.func.jvp(f, (x,), (tangent,))[1], (grad * tangent).sum())
    hessian = torch.func.hessian(f)(x).reshape(x.numel(), x.numel())
    reference = torch.autograd.functional.hessian(f, x).reshape(x.numel(), x.numel())
    torch.testing.assert_close(hessian, reference)


def test_an_input_changed_after_the_loss_and_a_freed_graph():
    """An input changed in place after the loss does not stop the first derivative (autograd's
    form kept only copies), and a second derivative, which would need the old values, says
    so. A second backward pass through a freed graph raises, with ``create_graph`` too (it
    once recomputed the loss and doubled ``.grad``)."""
    x, y = _data(40, 30)
    leaf = x.clone().requires_grad_(True)
    (before,) = torch.autograd.grad(mmd(leaf, y, bandwidths=1.0, backend="dense"), leaf)
    h = leaf * 1.0
    loss = mmd(h, y, bandwidths=1.0, backend="dense")
    h.add_(1.0)
    (after,) = torch.autograd.grad(loss, leaf)
    torch.testing.assert_close(after, before)
    h = leaf * 1.0
    loss = mmd(h, y, bandwidths=1.0, backend="dense")
    h.add_(1.0)
    with pytest.raises(RuntimeError, match="modified in place"):
        torch.autograd.grad(loss, leaf, create_graph=True)
    loss = mmd(leaf, y, bandwidths=1.0, backend="dense")
    torch.autograd.grad(loss, leaf)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        torch.autograd.grad(loss, leaf, create_graph=True)


def test_the_backend_is_chosen_for_the_larger_within_domain_sum(monkeypatch):
    """5 source points against 15 target points: 75 cross pairs, but the target's own sum has
    225. With ``auto`` switching to blocked above 100 pairs, every sum is blocked: choosing by
    N·M, a 10-point batch against a 20000-point target built a 20000² dense matrix (6.6 GB)."""
    monkeypatch.setattr(backends, "CPU_DENSE_MAX_PAIRS", 100)
    seen = []
    real = MMD_MODULE.gaussian_sum_unchecked

    def spy(a, b, gammas, name):
        seen.append(name)
        return real(a, b, gammas, name)

    monkeypatch.setattr(MMD_MODULE, "gaussian_sum_unchecked", spy)
    x, y = _data(5, 15)
    for a, b in ((x, y), (y, x)):
        seen.clear()
        value = mmd(a, b, bandwidths=SIGMAS, estimator="unbiased")
        assert seen == ["blocked"] * 3
        assert value.item() == pytest.approx(_np_mmd(a, b, SIGMAS, "unbiased"), rel=1e-10)
    seen.clear()
    mmd(x[:5], y[:10], bandwidths=SIGMAS)  # 10² pairs at most: dense
    assert seen == []


def test_keops_backend_agrees():
    pytest.importorskip("pykeops")
    x, y = _data()
    ref = mmd(x, y, bandwidths=SIGMAS, backend="dense")
    assert mmd(x, y, bandwidths=SIGMAS, backend="keops").item() == pytest.approx(ref.item(), rel=1e-10)


def test_keops_differentiates_twice_as_dense_does():
    """The docs offer dense and keops for a second derivative (a gradient penalty)."""
    pytest.importorskip("pykeops")
    x, y = _data()
    x, y = x[:9].clone().requires_grad_(True), y[:7]
    penalties = []
    for backend in ("dense", "keops"):
        (gx,) = torch.autograd.grad(mmd(x, y, bandwidths=SIGMAS, backend=backend), x, create_graph=True)
        penalties.append(torch.autograd.grad(gx.pow(2).sum(), x)[0])
    assert penalties[0].abs().max() > 0
    torch.testing.assert_close(penalties[1], penalties[0], rtol=1e-9, atol=1e-12)


def test_errors():
    x, y = _data()
    with pytest.raises(InputError, match="feature sizes"):
        mmd(x, torch.randn(5, 4, dtype=torch.float64))
    with pytest.raises(InputError, match="empty"):
        mmd(x, torch.zeros(0, 3))
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        mmd(bad, y)
    with pytest.raises(InputError, match="estimator"):
        mmd(x, y, estimator="quadratic")
    with pytest.raises(InputError, match="kernel"):
        mmd(x, y, kernel="laplacian")
    with pytest.raises(InputError, match="at least 2"):
        mmd(x[:1], y, estimator="unbiased")
    with pytest.raises(InputError, match="bandwidth"):
        mmd(x, y, bandwidths=[1.0, -1.0])
    with pytest.raises(InputError, match="bandwidths must be numbers, got the string '12'"):
        mmd(x, y, bandwidths="12")  # not the two bandwidths 1 and 2
    with pytest.raises(InputError, match="sequence of numbers"):
        mmd(x, y, bandwidths=[1.0, None])
    # the input checks read the values, which vmap's batched tensors do not have (torch's .item() message)
    with pytest.raises(InputError, match=r"do not run under torch.func.vmap .*loop over the batch"):
        torch.func.vmap(lambda q: mmd(q, y, bandwidths=SIGMAS))(torch.stack([x, x + 1]))
    # nor do meta tensors (torch's "Tensor.item() cannot be called on meta tensors" came through)
    with pytest.raises(InputError, match=r"^x is on the meta device, which holds no values"):
        mmd(x.to("meta"), y.to("meta"), bandwidths=SIGMAS)


def test_the_median_bandwidth_counts_duplicated_points_as_zero_distance():
    """Most pairs of duplicated points: the median distance is 0, and the rounding noise of
    ‖z‖² + ‖z‖² − 2 z·z (about 1e-8) must not become the bandwidth, which would saturate the
    kernel (MMD at its maximum, zero gradient). The rule is the mean of the non-zero
    distances, here the one distance between the two points."""
    from dalib.kernels import median_bandwidth

    g = torch.Generator().manual_seed(9)
    a, b = torch.randn(1, 16, generator=g, dtype=torch.float64), torch.randn(1, 16, generator=g, dtype=torch.float64)
    x, y = a.repeat(8, 1).requires_grad_(True), b.repeat(2, 1)
    gap = float((a - b).norm())
    assert median_bandwidth(x, y) == pytest.approx(gap, rel=1e-12)
    value = mmd(x, y)
    value.backward()
    assert float(value.detach()) < 2 * 5 * 0.99  # 5 bandwidths, each kernel term at most 1: not saturated
    assert float(x.grad.abs().sum()) > 1e-3


def test_half_precision_inputs_are_computed_in_float32():
    """float16 overflows at 65504: an N² kernel sum, a squared norm or exp(−C/ε) would be
    inf or NaN. Half inputs are computed in float32 and the gradient reaches them."""
    from dalib.losses import coral, sinkhorn

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(200, 8, generator=g), torch.randn(200, 8, generator=g) + 0.3
    for dtype in (torch.float16, torch.bfloat16):
        xh, yh = x.to(dtype).requires_grad_(True), y.to(dtype)
        for loss, kw in ((mmd, {}), (coral, {}), (sinkhorn, {"backend": "dense"})):
            value = loss(xh, yh, **kw)
            assert value.dtype == torch.float32
            expected = loss(xh.detach().float(), yh.float(), **kw)  # the same rounded inputs
            torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-7)
            value.backward()
            assert xh.grad.dtype == dtype and torch.isfinite(xh.grad.float()).all()
            xh.grad = None
    # scale: the cost's diameter and exp(−C/ε) in float16 overflowed
    assert torch.isfinite(sinkhorn((10 * x).half(), (10 * y).half(), blur=0.5))


def test_an_integer_side_takes_the_float_sides_dtype():
    big = torch.tensor([[16777217], [16777218], [16777219]])  # not representable in float32
    assert float(mmd(big, big.double())) == 0.0


def test_a_bandwidth_too_small_for_the_dtype_is_an_error_not_nan():
    x, y = torch.randn(8, 3), torch.randn(8, 3)
    with pytest.raises(InputError, match=r"too small for float32 kernels \(1/\(2σ²\) overflows\)"):
        mmd(x, y, bandwidths=1e-30)  # σ² underflows in float32: the kernel's diagonal would be NaN
    # float64 holds 1/(2σ²) = 5e59: every off-diagonal kernel value is 0, so the biased estimate
    # is the diagonals' 1/n + 1/m
    value = mmd(x.double(), y.double(), bandwidths=1e-30, estimator="biased")
    assert abs(float(value) - 2 / 8) < 1e-12


@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")  # (dynamo's own access)
def test_mmd_compiles_inside_a_training_step_and_gives_the_eager_loss_and_gradients():
    # the dense path's double-backward check read the inputs' version counters, which
    # torch.compile cannot trace: a compiled step that needed gradients stopped with an
    # internal dynamo error (PendingUnbackedSymbolNotFound); and its zeroed diagonals, written
    # through as_strided views of one buffer, stopped AOT autograd (the default inductor
    # compiler's front end: "a mutation on a view chain"), which the eager backend never reaches
    import torch._dynamo

    torch.manual_seed(0)
    net = torch.nn.Linear(5, 4)
    xs, xt = torch.randn(8, 5), torch.randn(8, 5) + 0.5

    def step(a, b):
        return mmd(net(a), net(b))

    eager = step(xs, xt)
    expected = torch.autograd.grad(eager, list(net.parameters()))
    torch._dynamo.reset()
    try:
        compiled = torch.compile(step, backend="aot_eager")(xs, xt)
        found = torch.autograd.grad(compiled, list(net.parameters()))
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(compiled, eager)
    for g, e in zip(found, expected):
        torch.testing.assert_close(g, e)


def test_torch_func_transforms_take_the_dense_path_and_an_explicit_blocked_is_one_line(monkeypatch):
    """Above the size where ``auto`` picks ``blocked`` (724 points a domain on the CPU), a
    torch.func.grad of mmd or sinkhorn stopped with torch's internal error about the blocked
    reductions' missing setup_context; ``auto`` now takes the dense path under the transforms,
    and ``blocked`` asked for there says so in one line."""
    from dalib.losses import sinkhorn

    monkeypatch.setattr(backends, "CPU_DENSE_MAX_PAIRS", 10)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 3, generator=g, dtype=torch.float64), torch.randn(16, 3, generator=g, dtype=torch.float64)
    assert backends.resolve_backend("auto", x, y) == "blocked"
    for loss in (lambda t: mmd(t, y), lambda t: sinkhorn(t, y, blur=0.5)):
        leaf = x.clone().requires_grad_(True)
        (expected,) = torch.autograd.grad(loss(leaf), leaf)
        torch.testing.assert_close(torch.func.grad(loss)(x), expected)
    with pytest.raises(InputError, match=r"^kernel backend 'blocked' \(argument\) serves plain tensors only: under "
                                         r"torch.func transforms"):
        torch.func.grad(lambda t: mmd(t, y, backend="blocked"))(x)
