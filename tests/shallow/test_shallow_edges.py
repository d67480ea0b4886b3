"""The shallow estimators at the edges a scikit-learn / POT user meets: solver limits,
settings changed after fit, inputs out of range, unlabelled targets."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from dalib.errors import ConfigError, InputError
from dalib.shallow import CORAL, KMM, OTMapping
from dalib.shallow.classifiers import make_classifier
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
    big_endian = CORAL().fit(xs.astype(">f8")[::-1], xt.astype(">f8")).transform(xs.astype(">f8"))  # as .mat/HDF5 store
    np.testing.assert_allclose(big_endian, CORAL().fit(xs[::-1], xt).transform(xs))


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


def test_the_pot_path_reports_the_error_of_the_plan_it_returns(data):
    """POT logs its error every 10 iterations: after 10 iterations the plan had converged
    while the logged error was the one of iteration 0 (a false not-converged warning)."""
    xs, xt, _ = data
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = OTMapping(reg=1.0, max_iter=10, backend="pot").fit(xs, xt)
    true_error = np.linalg.norm(m.coupling_.sum(0) - 1 / xt.shape[0])
    assert m.converged_ and m.marginal_error_ == pytest.approx(true_error, rel=1e-9, abs=1e-15)


def test_the_not_converged_warning_points_at_the_callers_line(data):
    xs, xt, _ = data
    with pytest.warns(RuntimeWarning, match="stopped after max_iter") as rec:
        OTMapping(reg=0.01, max_iter=3, backend="dense").fit(xs, xt)
    assert rec[0].filename == __file__


@pytest.mark.parametrize("offset", [1e7, 1e8])
def test_nearest_neighbours_far_from_the_origin(offset):
    """1-NN and the exact OT map's out-of-sample step find the nearest sample by brute force
    however far the data sit from the origin (‖r‖² − 2 q·r cancelled there: 120 of 500
    queries went to the wrong neighbour at 1e7)."""
    rng = np.random.default_rng(0)
    x, q = rng.normal(size=(300, 2)), rng.normal(size=(500, 2))
    labels = rng.integers(0, 3, 300)
    nearest = ((q[:, None] - x[None]) ** 2).sum(-1).argmin(1)  # brute force, near the origin
    pred = make_classifier("1nn").fit(x + offset, labels).predict(q + offset)
    np.testing.assert_array_equal(pred, labels[nearest])
    xt = rng.normal(size=(200, 2)) + 3.0
    m = OTMapping(reg=None).fit(x + offset, xt + offset)
    shift = m.mapped_ - m.xs_.numpy()  # (300, 2) each fitted sample's displacement
    np.testing.assert_allclose(m.transform(q + offset), q + offset + shift[nearest], rtol=0, atol=offset * 1e-15)


def test_a_numerically_singular_source_covariance_is_refused_without_reg():
    """A rank-2 source in 4-d: its smallest eigenvalues are rounding noise, sometimes of
    either sign; the whitening blew them up into entries of 1e8 when only the sign was checked."""
    for seed in range(40):
        rng = np.random.default_rng(seed)
        xs = rng.normal(size=(30, 2)) @ rng.normal(size=(2, 4))
        with pytest.raises(InputError, match="singular"):
            CORAL(reg=0).fit(xs, rng.normal(size=(50, 4)))
    rng = np.random.default_rng(0)
    full = CORAL(reg=0).fit(rng.normal(size=(30, 4)), rng.normal(size=(50, 4)))
    assert np.abs(full.matrix_).max() < 10


@pytest.mark.parametrize("offset", [0.0, 1e6])
def test_nearest_neighbour_ties_go_to_the_first_sample(offset):
    """Integer points on a small grid: many queries lie at exactly the same distance from
    several references (of different labels). The first of them wins, as documented, however
    the matrix product rounds (duplicated reviews on Amazon flipped 2 of 1998 predictions)."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, size=(400, 3)).astype(np.float64)
    q = rng.integers(0, 4, size=(300, 3)).astype(np.float64) + 0.5 * rng.integers(0, 2, size=(300, 3))
    labels = rng.integers(0, 5, 400)
    dist = ((q[:, None] - x[None]) ** 2).sum(-1)  # exact: integers and halves
    assert ((dist == dist.min(1, keepdims=True)).sum(1) > 1).mean() > 0.5  # ties are the rule here
    pred = make_classifier("1nn").fit(x + offset, labels).predict(q + offset)
    np.testing.assert_array_equal(pred, labels[dist.argmin(1)])  # numpy's argmin: the first


def test_transform_and_fit_transform_hand_out_copies(data):
    """Centring the result in place (a user's next step) leaves the fitted model as it was."""
    xs, xt, _ = data
    m = OTMapping(reg=0.1).fit(xs, xt)
    first = m.transform(xs).copy()
    m.transform(xs)[:] = 0.0
    m.fit_transform(torch.from_numpy(xs), xt).mul_(0)
    np.testing.assert_array_equal(m.transform(xs), first)
    k = KMM(max_iter=20)
    w = k.fit_transform(xs, xt)
    w[:] = 0.0
    assert k.weights_.sum() > 0


def test_a_failed_refit_leaves_the_previous_fit_whole(data, monkeypatch):
    from dalib.shallow import ot_mapping

    xs, xt, _ = data
    m = OTMapping(reg=0.1, backend="blocked").fit(xs, xt)
    before, moved = m.transform(xs), m.transform(xs + 0.01)

    def fails(*args, **kwargs):
        raise RuntimeError("the solver broke")

    monkeypatch.setattr(ot_mapping, "log_sinkhorn", fails)
    with pytest.raises(RuntimeError, match="the solver broke"):
        m.set_params(reg=0.5).fit(2 * xs, xt)
    m.set_params(reg=0.1)
    np.testing.assert_array_equal(m.transform(xs), before)
    np.testing.assert_array_equal(m.transform(xs + 0.01), moved)


def test_a_reg_too_small_for_the_arithmetic_is_a_setting_error(data):
    xs, xt, _ = data
    with pytest.raises(ConfigError, match=r"reg=1e-300 is too small for float32 arithmetic.*dtype='float64'"):
        OTMapping(reg=1e-300, backend="blocked").fit(xs, xt)


def test_data_whose_scale_leaves_epsilon_too_small_for_float32_is_one_input_error(data):
    """With norm='median' the problem is scale-free, but ε = reg·median/2 of data at 1e-20
    makes 1/ε overflow float32 (torch's RuntimeError escaped): an InputError that says to use
    float64, in which the mapping is the unscaled one, scaled."""
    xs, xt, _ = data
    with pytest.raises(InputError, match=r"make Sinkhorn's ε = reg·.*too small for float32 arithmetic: set dtype='float64'"):
        OTMapping(reg=1e-4, backend="blocked").fit(xs * 1e-18, xt * 1e-18)  # (1/reg alone fits float32)
    s = 1e-20  # squares below float32's normal numbers: check_narrowed's error (test below)
    ref = OTMapping(reg=1.0, backend="blocked", dtype="float64").fit(xs, xt).mapped_
    tiny = OTMapping(reg=1.0, backend="blocked", dtype="float64").fit(xs * s, xt * s).mapped_
    np.testing.assert_allclose(tiny / s, ref, rtol=1e-9, atol=1e-9)
    with pytest.raises(ConfigError, match=r"reg=4e-39 is too small for float32 arithmetic \(1/ε = 2/reg overflows\)"):
        OTMapping(reg=4e-39, norm=None, backend="blocked").fit(xs, xt)  # 1/reg fits, 2/reg does not
    with pytest.raises(InputError, match=r"too small for float64 arithmetic: scale the data up$"):  # ε underflows to 0
        OTMapping(reg=1e-300, backend="blocked", dtype="float64").fit(xs * 1e-13, xt * 1e-13)


def test_the_fit_keeps_copies_of_the_data_not_views_of_the_callers_arrays(data):
    xs, xt, _ = data
    xs, xt = np.asarray(xs, dtype=np.float64).copy(), np.asarray(xt, dtype=np.float64).copy()
    new = xs[:5] + 0.3
    for reg in (None, 1.0):
        m = OTMapping(reg=reg).fit(xs, xt)
        before = m.transform(new)
        xs += 100.0  # the caller reuses its buffers
        xt *= 0.0
        np.testing.assert_array_equal(m.transform(new), before)
        xs -= 100.0
        xt[:] = np.asarray(data[1], dtype=np.float64)


def test_class_labels_may_be_strings_and_are_read_only_when_used(data):
    xs, xt, ys = data
    names = np.array(["cat", "dog", "eel"])
    by_number = OTMapping(reg=0.5, reg_cl=0.1).fit(xs, xt, ys).mapped_
    by_name = OTMapping(reg=0.5, reg_cl=0.1).fit(xs, xt, names[ys]).mapped_
    np.testing.assert_array_equal(by_number, by_name)
    OTMapping(reg=0.5).fit(xs, xt, names[ys][:3])  # no reg_cl: the labels are not read


def test_the_float32_log_domain_map_keeps_its_precision_far_from_the_origin(data):
    xs, xt, _ = data
    near = OTMapping(reg=0.1, backend="blocked").fit(xs, xt).mapped_
    far = OTMapping(reg=0.1, backend="blocked").fit(xs + 1e5, xt + 1e5).mapped_
    assert np.abs(far - 1e5 - near).max() < 1e-3  # was 0.05 before centring: float32 has 7 digits


class _Frame:
    """What dalib reads of a pandas DataFrame: its values, and one dtype per column."""

    def __init__(self, values):
        self.values, self.dtypes = values, [values.dtype] * values.shape[1]

    def __array__(self, dtype=None, copy=None):
        return self.values if dtype is None else self.values.astype(dtype)


def test_repr_takes_array_parameters_and_dataframes_keep_float32(data):
    assert repr(KMM(bandwidth=np.array([1.0, 2.0]))).startswith("KMM(bandwidth=array([1., 2.])")
    assert repr(KMM()) == "KMM()"
    xs, xt, _ = data
    frame = _Frame(xs.astype(np.float32))
    assert CORAL().fit(frame, xt).transform(frame).dtype == np.float32


@pytest.mark.parametrize("make", [KMM, lambda **kw: OTMapping(backend="blocked", **kw)])
@pytest.mark.parametrize("scale", [1e-20, 1e-160])
def test_data_too_small_for_float32_distances_is_one_input_error(data, make, scale):
    """Cast to float32, data at 1e-160 became all zeros: KMM gave weights of 1 and the OT map
    sent every sample to the target mean, without a word; at 1e-20 KMM blamed a bandwidth the
    user never set. In float64 the fit is the unscaled one."""
    xs, xt, _ = data
    with pytest.raises(InputError, match=r"^Xs and Xt hold values too small for float32 distances .*set dtype='float64'$"):
        make().fit(xs * scale, xt * scale)
    if scale == 1e-20:
        ref, tiny = make(dtype="float64").fit(xs, xt), make(dtype="float64").fit(xs * scale, xt * scale)
        if isinstance(ref, KMM):
            np.testing.assert_allclose(tiny.weights_, ref.weights_, rtol=1e-6, atol=1e-8)
        else:
            np.testing.assert_allclose(tiny.mapped_ / scale, ref.mapped_, rtol=1e-9, atol=1e-9)
    # one domain all at the pooled centre (up to float64's rounding: 3e-20 from it) is no
    # underflow: the other's distances to it are normal
    d = np.array([[1.0, 2.0, 3.0], [-1.0, -2.0, -3.0]]) * 1e-3
    at_centre = np.full((6, 3), 1e-8)
    around = np.concatenate([1e-8 + d, 1e-8 - d, 1e-8 + 2 * d, 1e-8 - 2 * d])
    assert 0 < np.abs(at_centre - np.concatenate([at_centre, around]).mean(0)).max() < 1e-18
    make().fit(at_centre, around)


@pytest.mark.parametrize("max_iter", [1, 3])
def test_a_log_domain_solve_stopped_by_max_iter_reports_the_error_of_the_plan_it_returns(data, max_iter):
    """One iteration reported an infinite marginal error, and more reported the error of the
    plan before the last f update, not of the potentials returned."""
    xs, xt, _ = data
    with pytest.warns(RuntimeWarning, match=f"stopped after max_iter={max_iter} iterations"):
        m = OTMapping(reg=0.1, max_iter=max_iter, backend="blocked", dtype="float64").fit(xs, xt)
    cost = ((xs[:, None, :] - xt[None, :, :]) ** 2).sum(-1) / m.cost_scale_  # brute force, POT's convention
    a, b = np.full(len(xs), 1 / len(xs)), np.full(len(xt), 1 / len(xt))
    plan = a[:, None] * b[None, :] * np.exp((m.f_[:, None] + m.g_[None, :] - cost) / 0.1)
    np.testing.assert_allclose(plan.sum(1), a, rtol=1e-9)  # the last f update makes the rows exact
    assert m.marginal_error_ == pytest.approx(np.abs(plan.sum(0) - b).sum(), rel=1e-6)
    assert m.marginal_error_ > 1e-6


def test_run_shallow_refuses_unlabelled_source_samples(data):
    """A source label −1 (dalib's unlabelled mark) was trained as a class, and predicted."""
    xs, xt, ys = data
    ys = ys.copy()
    ys[:4] = -1
    with pytest.raises(InputError, match=r"^ys holds 4 negative label\(s\): class labels are >= 0, and the source "
                                         r"must be labelled \(-1 marks an unlabelled sample\)$"):
        run_shallow("source_only", xs, ys, xt)


def test_run_shallow_refuses_target_labels_below_minus_one(data):
    """Target labels below −1 had been left out of the score like −1's, in silence: half a
    target labelled −2 scored 100% on the other half."""
    xs, xt, ys = data
    yt = np.random.default_rng(2).integers(0, 3, len(xt))
    yt[:5] = -2
    with pytest.raises(InputError, match=r"^yt holds 5 label\(s\) below -1: class labels are >= 0, and -1 marks an "
                                         r"unlabelled sample$"):
        run_shallow("source_only", xs, ys, xt, yt)
