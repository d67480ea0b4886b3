"""The shallow estimators at the edges a scikit-learn / POT user meets: solver limits,
settings changed after fit, inputs out of range, unlabelled targets."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from dalib.errors import ConfigError, InputError
from dalib.shallow import CORAL, KMM, OTMapping
from dalib.shallow.pipeline import run_shallow


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(120, 5))
    xt = rng.normal(size=(90, 5)) * 1.5 + 1.0
    return xs, xt, rng.integers(0, 3, 120)


def test_the_float32_log_domain_solver_converges_with_its_defaults(data):
    """tol = 1e-9 is below float32's reach: the solver used to run all max_iter iterations."""
    xs, xt, _ = data
    m = OTMapping(reg=0.1, backend="blocked", max_iter=300).fit(xs, xt)
    assert m.converged_ and m.n_iter_ < 100 and m.marginal_error_ <= 16 * np.finfo(np.float32).eps
    ref = OTMapping(reg=0.1, backend="blocked", max_iter=300, dtype="float64").fit(xs, xt)
    np.testing.assert_allclose(m.mapped_, ref.mapped_, atol=1e-4)


@pytest.mark.parametrize("backend", ["pot", "dense"])
def test_a_solve_cut_short_by_max_iter_warns_and_says_so(data, backend):
    xs, xt, _ = data
    with pytest.warns(RuntimeWarning, match="stopped after max_iter=5 iterations"):
        m = OTMapping(reg=0.01, max_iter=5, backend=backend).fit(xs, xt)
    assert not m.converged_ and m.marginal_error_ > m.tol and m.n_iter_ == 5
    ok = OTMapping(reg=1.0, backend=backend).fit(xs, xt)
    assert ok.converged_ and ok.marginal_error_ <= max(ok.tol, 16 * np.finfo(np.float32).eps)


def test_transform_uses_the_fitted_settings(data):
    xs, xt, _ = data
    new = np.random.default_rng(1).normal(size=(7, 5))
    m = OTMapping(reg=1.0).fit(xs, xt)
    before = m.transform(new)
    m.set_params(reg=0.1)  # not fitted with it: transform must not mix the plan and the new reg
    np.testing.assert_array_equal(m.transform(new), before)
    exact = OTMapping(reg=None).fit(xs, xt)
    exact.set_params(reg=1.0)
    assert exact.transform(new).shape == (7, 5)  # still the nearest-neighbour displacement, no crash


@pytest.mark.parametrize("make", [lambda: KMM(dtype="float64"), OTMapping, CORAL])
def test_values_whose_squares_overflow_are_refused(data, make):
    xs, xt, _ = data
    with pytest.raises(InputError, match="too large .* scale the features"):
        make().fit(xs * 1e160, xt * 1e160)


def test_kmm_bandwidth_limits(data):
    xs, xt, _ = data
    with pytest.raises(ConfigError, match="too small for float32"):
        KMM(bandwidth=1e-20).fit(xs, xt)
    # a bandwidth far below the distances: K = I, κ ≈ 0, so the optimum spreads the least mass
    # the constraints allow evenly (it put 3.46 on one sample when K's diagonal was rounded)
    k = KMM(bandwidth=1e-4).fit(xs, xt)
    n = len(xs)
    np.testing.assert_allclose(k.weights_, np.full(n, 1.0 - k.eps_), rtol=1e-6)


def test_ot_class_regularisation_takes_none_not_zero_and_boolean_labels(data):
    xs, xt, ys = data
    with pytest.raises(ConfigError, match="reg_cl must be > 0"):
        OTMapping(reg_cl=0).fit(xs, xt, ys)
    two = ys > 0
    assert OTMapping(reg_cl=0.1).fit(xs, xt, two).mapped_.shape == xs.shape


def test_input_types(data):
    xs, xt, _ = data
    out = CORAL().fit(xs.astype(np.float32), xt).transform(xs.astype(np.float32))
    assert out.dtype == np.float32  # as scikit-learn's transformers keep it
    assert CORAL().fit(xs, xt).transform(xs).dtype == np.float64
    with pytest.raises(InputError, match="complex"):
        CORAL().fit(xs.astype(complex), xt)
    with pytest.raises(InputError, match=r"sparse matrix: give a dense array \(Xs.toarray\(\)\)"):
        CORAL().fit(sp.csr_matrix(xs), xt)
    long = CORAL().fit(xs.astype(np.longdouble), xt).transform(xs)
    np.testing.assert_allclose(long, CORAL().fit(xs, xt).transform(xs))


def test_run_shallow_scores_only_labelled_targets(data):
    xs, xt, ys = data
    assert run_shallow("coral", xs, ys, xt, -np.ones(len(xt), dtype=int)).target_accuracy is None
    yt = np.random.default_rng(2).integers(0, 3, len(xt))
    full = run_shallow("coral", xs, ys, xt, yt)
    part = yt.copy()
    part[:30] = -1
    partial = run_shallow("coral", xs, ys, xt, part)
    assert partial.target_accuracy == pytest.approx(np.mean(full.pred_t[30:] == yt[30:]))


def test_estimators_ignore_a_callers_autocast(data):
    # inside a caller's bfloat16 autocast the kernel and covariance products would run in
    # bfloat16; the estimators compute as they do outside it
    # (autocast casts float32 work only; on the CPU it reaches the log-domain OT solver's
    # products, on CUDA the kernel products of KMM and the covariances of CORAL too)
    xs, xt = data[0].astype(np.float32), data[1].astype(np.float32)

    def fits():
        return [KMM(max_iter=200).fit(xs, xt).weights_, CORAL().fit_transform(xs, xt),
                OTMapping(reg=1.0, max_iter=200, backend="blocked").fit_transform(xs, xt),
                OTMapping(reg=1.0, max_iter=200).fit(xs, xt).transform(xt[:5])]

    plain = fits()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = fits()
    for a, b in zip(plain, inside):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
