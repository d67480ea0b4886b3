"""KMM: the projection, the solver against a direct QP solution, the backends, the errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from dalib.errors import ConfigError, InputError
from dalib.shallow import KMM
from dalib.shallow import kmm as kmm_module
from dalib.shallow.kmm import kmm_feasible_set_projection


def _gauss(x: np.ndarray, y: np.ndarray, sigma: float) -> np.ndarray:
    d2 = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    return np.exp(-d2 / (2 * sigma**2))


def _shifted_pair(ns: int, nt: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    xs = rng.normal(size=(ns, d))
    xt = 0.7 * rng.normal(size=(nt, d)) + 0.6
    return xs, xt


def _qp_reference(xs, xt, sigma, upper, eps):
    """The KMM QP solved directly (dense, SLSQP): β, value ½βᵀKβ − κᵀβ, K, κ."""
    ns, nt = len(xs), len(xt)
    k = _gauss(xs, xs, sigma)
    kappa = ns / nt * _gauss(xs, xt, sigma).sum(1)
    lo, hi = ns * (1 - eps), ns * (1 + eps)
    res = minimize(
        lambda b: 0.5 * b @ k @ b - kappa @ b,
        np.ones(ns),
        jac=lambda b: k @ b - kappa,
        bounds=[(0, upper)] * ns,
        constraints=[
            {"type": "ineq", "fun": lambda b: b.sum() - lo, "jac": lambda b: np.ones(ns)},
            {"type": "ineq", "fun": lambda b: hi - b.sum(), "jac": lambda b: -np.ones(ns)},
        ],
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 2000},
    )
    assert res.success, res.message
    return res.x, float(res.fun), k, kappa


def _mmd2(beta, xs, xt, sigma):
    ns, nt = len(xs), len(xt)
    return (
        beta @ _gauss(xs, xs, sigma) @ beta / ns**2
        - 2 * beta @ _gauss(xs, xt, sigma).sum(1) / (ns * nt)
        + _gauss(xt, xt, sigma).sum() / nt**2
    )


def _bisect(f, lo: float, hi: float) -> float:
    """The root of the nondecreasing ``f`` on [lo, hi] (f(lo) <= 0 <= f(hi)), to float precision."""
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
    return 0.5 * (lo + hi)


def _projection_reference(z, metric_c, upper, lo, hi):
    """The projection from its KKT conditions. With the metric I + c·11ᵀ, stationarity reads
    x = clip(z − τ, 0, upper) with τ = c·Σ(x − z) + ν, ν the sum constraint's multiplier.
    With ν = 0, τ − c·Σ(x(τ) − z) increases with τ: one root. If its sum leaves [lo, hi],
    the constraint is active (the problem is convex) and τ puts the sum on the bound."""
    x = lambda tau: np.clip(z - tau, 0.0, upper)  # noqa: E731
    span = np.abs(z).max() + upper + metric_c * len(z) * (np.abs(z).max() + upper) + 1.0
    tau = _bisect(lambda t: t - metric_c * (x(t) - z).sum(), -span, span)
    total = x(tau).sum()
    if not lo <= total <= hi:
        bound = lo if total < lo else hi
        tau = _bisect(lambda t: bound - x(t).sum(), -span, span)
    return x(tau)


@pytest.mark.parametrize("c", [0.0, 0.3, 5.0])
@pytest.mark.parametrize("case", range(5))
def test_projection_matches_its_kkt_solution(case, c):
    rng = np.random.default_rng(case)
    n = 15
    z = rng.normal(size=n) * 3 + (case - 1.5)
    if case == 4:  # tied values (breakpoints shared by several z_i)
        z = np.round(z / 2) * 2
    upper, lo, hi = [(1000.0, 0.0, 1e9), (1.0, 0.8 * n, 0.9 * n), (3.0, 3.0, 4.0), (0.5, 0.0, 2.0),
                     (1000.0, 2.0, 3.0)][case]
    beta = kmm_feasible_set_projection(torch.from_numpy(z), upper, lo, hi, c).numpy()
    ref = _projection_reference(z, c, upper, lo, hi)
    np.testing.assert_allclose(beta, ref, atol=1e-9)
    assert beta.min() >= 0 and beta.max() <= upper
    assert lo - 1e-9 <= beta.sum() <= hi + 1e-9
    # the reference is the minimiser: no feasible point near it is lower
    metric = np.eye(n) + c * np.ones((n, n))
    f = lambda x: 0.5 * (x - z) @ metric @ (x - z)  # noqa: E731
    # ... along the segments towards other feasible points (the set is convex): the optimality
    # condition of a convex problem, whatever found those points
    others = [kmm_feasible_set_projection(torch.from_numpy(rng.normal(size=n) * 3), upper, lo, hi, 0.0).numpy()
              for _ in range(50)]
    for y in others:
        assert lo - 1e-9 <= y.sum() <= hi + 1e-9 and y.min() >= 0 and y.max() <= upper
        for t in (1e-3, 1e-2, 0.1, 1.0):
            assert f(ref + t * (y - ref)) >= f(ref) - 1e-12


@pytest.mark.parametrize(
    ("upper", "eps"),
    [(1000.0, None), (3.0, 0.1), (1.5, 0.0)],  # defaults; tight box and slab; equality
)
def test_weights_match_direct_qp_solution(upper, eps):
    xs, xt = _shifted_pair(40, 30, 3)
    sigma = 1.5
    kmm = KMM(bandwidth=sigma, B=upper, eps=eps, tol=1e-10, max_iter=5000, dtype="float64").fit(xs, xt)
    eps_used = (math.sqrt(40) - 1) / math.sqrt(40) if eps is None else eps
    ref_beta, ref_value, k, kappa = _qp_reference(xs, xt, sigma, upper, eps_used)
    beta = kmm.weights_
    assert isinstance(beta, np.ndarray) and beta.shape == (40,)
    # constraints met
    assert beta.min() >= 0 and beta.max() <= upper + 1e-12
    assert abs(beta.mean() - 1) <= eps_used + 1e-9
    # same QP objective (skada's scale) and MMD² within 1%
    value = 0.5 * beta @ k @ beta - kappa @ beta
    assert kmm.objective_ == pytest.approx(value, rel=1e-9)
    assert value <= ref_value + 1e-6 * abs(ref_value)
    ref_mmd2 = _mmd2(ref_beta, xs, xt, sigma)
    assert kmm.mmd2_ == pytest.approx(_mmd2(beta, xs, xt, sigma), rel=1e-6)
    assert kmm.mmd2_ <= ref_mmd2 * 1.01 + 1e-12
    np.testing.assert_allclose(beta, ref_beta, atol=1e-2 * upper)
    assert kmm.converged_


def test_reweighting_reduces_the_mmd():
    xs, xt = _shifted_pair(200, 150, 4, seed=1)
    kmm = KMM().fit(xs, xt)
    uniform = _mmd2(np.ones(200), xs, xt, kmm.bandwidth_)
    assert kmm.mmd2_ < 0.5 * uniform
    # points near the target get more weight than points far from it
    dist_to_target = np.linalg.norm(xs - xt.mean(0), axis=1)
    assert np.corrcoef(dist_to_target, kmm.weights_)[0, 1] < -0.3


def test_effective_sample_size_and_the_warning_when_weights_concentrate():
    import warnings

    from dalib.registry import get_method
    from dalib.shallow import KMMConfig

    kmm_cls = get_method("kmm")
    xs, xt = _shifted_pair(200, 150, 4, seed=1)
    w = KMM().fit(xs, xt)
    assert w.effective_sample_size_ == pytest.approx(w.weights_.sum() ** 2 / (w.weights_ ** 2).sum())
    # the same distribution on both sides: weights near 1, no warning
    rng = np.random.default_rng(3)
    same_s, same_t = rng.normal(size=(200, 4)), rng.normal(size=(150, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = kmm_cls.adapt(KMMConfig(), torch.as_tensor(same_s), torch.zeros(200), torch.as_tensor(same_t))
    assert out.info["effective_sample_size"] > 0.5 * 200
    # a target that only a handful of source points reach: the weights pile up on those
    far_s = rng.normal(size=(200, 4))
    far_t = rng.normal(size=(150, 4)) * 0.1 + far_s[:3].mean(0)
    with pytest.warns(RuntimeWarning, match="effective sample size") as record:
        out = kmm_cls.adapt(KMMConfig(bandwidth=0.3), torch.as_tensor(far_s), torch.zeros(200), torch.as_tensor(far_t))
    assert out.info["effective_sample_size"] < 0.05 * 200
    assert record[0].filename == __file__  # the warning names the caller of adapt


def test_median_heuristic_is_the_default_bandwidth():
    from dalib.kernels import median_bandwidth

    xs, xt = _shifted_pair(50, 40, 3)
    kmm = KMM().fit(xs, xt)
    assert kmm.bandwidth_ == pytest.approx(median_bandwidth(torch.tensor(xs), torch.tensor(xt)), rel=1e-5)


def test_blocked_path_agrees_with_dense_path(monkeypatch):
    # small tiles so that the symmetric tiling has diagonal, off-diagonal and ragged tiles
    from dalib.kernels import blocked as blocked_module

    monkeypatch.setattr(blocked_module, "TILE_ROWS", 64)
    monkeypatch.setattr(blocked_module, "TILE_COLS", 48)
    xs, xt = _shifted_pair(300, 250, 5, seed=2)
    dense = KMM(backend="dense", tol=1e-9, max_iter=3000, dtype="float64").fit(xs, xt)
    blocked = KMM(backend="blocked", tol=1e-9, max_iter=3000, dtype="float64").fit(xs, xt)
    assert dense.backend_ == "dense" and blocked.backend_ == "blocked"
    assert blocked.objective_ == pytest.approx(dense.objective_, rel=1e-7)
    np.testing.assert_allclose(blocked.weights_, dense.weights_, atol=1e-3)
    # the tiled product itself against K v
    x = torch.from_numpy(xs)
    op = kmm_module._GramOperator(x, 1.3, "blocked")
    v = torch.rand(300, dtype=torch.float64)
    np.testing.assert_allclose(op(v).numpy(), _gauss(xs, xs, 1.3) @ v.numpy(), rtol=1e-10)


def test_auto_uses_the_tiled_path_for_large_n(monkeypatch):
    monkeypatch.setattr(kmm_module, "DENSE_MAX_ENTRIES", 100 * 100)
    xs, xt = _shifted_pair(150, 100, 3, seed=3)
    large = KMM(tol=1e-9, max_iter=3000).fit(xs, xt)
    small = KMM(backend="dense", tol=1e-9, max_iter=3000).fit(xs, xt)
    assert large.backend_ == "blocked"
    assert large.mmd2_ == pytest.approx(small.mmd2_, rel=1e-3, abs=1e-6)


def test_float32_and_tensor_input():
    xs, xt = _shifted_pair(120, 90, 3, seed=4)
    ref = KMM(dtype="float64", tol=1e-9, max_iter=3000).fit(xs, xt)
    fast = KMM(tol=1e-9, max_iter=3000).fit(torch.tensor(xs, dtype=torch.float32), torch.tensor(xt))
    assert fast.weights_.dtype == np.float64
    # float32 kernel products: the objective is right to ~1e-7 relative, the solution to ~1e-5
    assert fast.objective_ == pytest.approx(ref.objective_, rel=1e-5)


@pytest.mark.parametrize(
    ("xs", "xt", "match"),
    [
        (np.ones((5, 3)), np.ones((4, 2)), "feature sizes"),
        (np.full((5, 3), np.nan), np.ones((4, 3)), "NaN"),
        (np.ones((0, 3)), np.ones((4, 3)), "empty"),
        (np.ones(5), np.ones((4, 1)), "2-D"),
        (np.array([["a", "b"]]), np.ones((4, 2)), "numbers"),
    ],
)
def test_bad_inputs_raise_input_error(xs, xt, match):
    with pytest.raises(InputError, match=match):
        KMM().fit(xs, xt)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"B": 0.0},
        {"B": -1.0},
        {"eps": -0.1},
        {"bandwidth": 0.0},
        {"kernel": "laplacian"},
        {"max_iter": 0},
        {"backend": "gpu"},
        {"dtype": "float16"},
        {"B": 0.5, "eps": 0.1},  # infeasible: mean(β) ≤ 0.5 < 1 − eps
    ],
)
def test_bad_hyperparameters_raise_config_error(kwargs):
    xs, xt = _shifted_pair(10, 10, 2)
    with pytest.raises(ConfigError):
        KMM(**kwargs).fit(xs, xt)


@pytest.mark.parametrize("bandwidth,fragment", [(1e-300, "too small for float32"), (1e300, "too large for float32")])
def test_a_bandwidth_beyond_the_dtype_is_a_config_error(bandwidth, fragment):
    x = np.random.default_rng(0).normal(size=(20, 3))
    with pytest.raises(ConfigError, match=fragment):
        KMM(bandwidth=bandwidth).fit(x, x + 1)


def test_a_keops_choice_that_fails_to_compile_reports_the_backend_that_ran(monkeypatch):
    """On CUDA, ``auto`` takes KeOps for large N; when a formula then fails to compile, the
    products fall back to the tiled form, and ``backend_`` says "blocked", not "keops". (Played
    on the CPU: the choice as CUDA makes it, and a compiler that fails.)"""
    from dalib.errors import BackendError
    from dalib.kernels import _keops, backends

    pytest.importorskip("pykeops")
    monkeypatch.setitem(backends._keops_state, "checked", True)
    monkeypatch.setitem(backends._keops_state, "ok", True)
    monkeypatch.setitem(backends._keops_state, "warned", False)
    monkeypatch.setattr(kmm_module, "_auto_backend", lambda xs: "keops")
    from dalib.kernels import gaussian

    # the kernels' automatic choice as on CUDA for large N: KeOps while it works
    monkeypatch.setattr(gaussian, "resolve_backend",
                        lambda backend, *t, **kw: "keops" if backends.keops_available() else "blocked")

    def broken(*args):
        backends.mark_keops_broken("g++ not found")
        raise BackendError("the keops backend failed to run here: g++ not found")

    monkeypatch.setattr(_keops, "keops_gaussian_matvec", broken)
    xs, xt = _shifted_pair(300, 200, 2, seed=5)
    with pytest.warns(RuntimeWarning, match="falls back to 'blocked'"):
        fell = KMM(tol=1e-9, max_iter=3000, dtype="float64").fit(xs, xt)
    assert fell.backend_ == "blocked"
    ref = KMM(backend="dense", tol=1e-9, max_iter=3000, dtype="float64").fit(xs, xt)
    assert fell.objective_ == pytest.approx(ref.objective_, rel=1e-7)


@pytest.mark.parametrize("offset", [1e6, 1e8])
def test_float32_weights_do_not_move_with_the_data(offset):
    """The kernel depends on differences alone, so data moved as a whole keeps its weights. In
    float32 the data were cast before centring: 0.84 off at 1e6, and at 1e8 every point was the
    same float32 (the bandwidth fell back to 1, the MMD read 0)."""
    xs, xt = _shifted_pair(200, 150, 3, seed=0)
    ref = KMM(dtype="float64").fit(xs, xt)
    far = KMM().fit(xs + offset, xt + offset)
    assert far.bandwidth_ == pytest.approx(ref.bandwidth_, rel=1e-6)
    np.testing.assert_allclose(far.weights_, ref.weights_, rtol=0, atol=0.02)


def test_centring_names_the_argument_and_leaves_the_callers_data_as_given():
    xs, xt = _shifted_pair(50, 40, 3, seed=1)
    for big in (xs * 1e20, (xs * 1e20).astype(np.float32)):  # float64 data, centred then cast; float32 data
        with pytest.raises(InputError, match=r"^Xs holds values too large for float32 distances"):
            KMM().fit(big, xt)
    given = torch.tensor(xs + 5.0, dtype=torch.float32)
    kept = given.clone()
    KMM(max_iter=5).fit(given, xt)
    assert torch.equal(given, kept)
