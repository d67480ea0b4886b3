"""OT mapping against POT's ot.da transports, on both of its solver paths."""

from __future__ import annotations

import numpy as np
import ot
import pytest
import torch

from dalib.errors import ConfigError, InputError
from dalib.shallow import OTMapping
from dalib.shallow import _sinkhorn
from dalib.shallow import ot_mapping as ot_module


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(60, 5))
    xt = rng.normal(size=(50, 5)) + 1.0
    ys = rng.integers(0, 3, 60)
    xnew = rng.normal(size=(7, 5))
    return xs, xt, ys, xnew


def test_exact_matches_pot_emd_transport(data):
    xs, xt, _, xnew = data
    ours = OTMapping(reg=None).fit(xs, xt)
    pot = ot.da.EMDTransport().fit(Xs=xs, Xt=xt)
    np.testing.assert_allclose(ours.coupling_, pot.coupling_, atol=1e-12)
    np.testing.assert_allclose(ours.transform(xs), pot.transform(Xs=xs), atol=1e-10)
    np.testing.assert_allclose(ours.transform(xnew), pot.transform(Xs=xnew), atol=1e-10)


def test_exact_ot_reaches_the_optimal_plan_of_a_large_problem_and_says_when_it_cannot(monkeypatch):
    """At 2000 x 2000, POT's default iteration cap had stopped the network simplex short: a
    plan 0.25% above the optimal cost mapped 21% of the samples elsewhere, with converged_ True."""
    import warnings

    rng = np.random.default_rng(1)
    xs, xt = rng.normal(size=(2000, 10)), rng.normal(size=(2000, 10)) + 0.5
    cost = ot.dist(xs, xt)
    cost /= np.median(cost)
    a = np.full(2000, 1 / 2000)
    optimal = ot.emd(a, a, cost, numItermax=10_000_000)
    ours = OTMapping(reg=None).fit(xs, xt)
    assert ours.converged_
    assert (ours.coupling_ * cost).sum() == pytest.approx((optimal * cost).sum(), rel=1e-12)
    # a cap too low for the problem: our warning, converged_ False (POT's own warning not repeated)
    monkeypatch.setattr(ot_module, "EMD_ITER_PER_ENTRY", 0)
    monkeypatch.setattr(ot_module, "EMD_MIN_ITER", 100)  # (max_iter, 1000, is the floor then)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        short = OTMapping(reg=None).fit(xs[:200], xt[:200])
    assert not short.converged_
    assert [str(w.message) for w in seen] == [
        "OTMapping: exact OT stopped after 1000 network-simplex iterations short of the optimal plan (numItermax "
        "reached before optimality. Try to increase numItermax.): raise max_iter"]


@pytest.mark.parametrize("norm", [None, "median", "max"])
def test_entropic_matches_pot_sinkhorn_transport(data, norm):
    xs, xt, _, xnew = data
    reg = 0.5
    pot = ot.da.SinkhornTransport(reg_e=reg, norm=norm, tol=1e-12, max_iter=10000).fit(Xs=xs, Xt=xt)
    ours = OTMapping(reg=reg, norm=norm, tol=1e-12, max_iter=10000).fit(xs, xt)
    assert ours.backend_ == "pot"
    np.testing.assert_allclose(ours.coupling_, pot.coupling_, atol=1e-12)
    np.testing.assert_allclose(ours.transform(xs), pot.transform(Xs=xs), atol=1e-9)
    # out-of-sample: the entropic map's continuous extension, as POT
    np.testing.assert_allclose(ours.transform(xnew), pot.transform(Xs=xnew), atol=1e-9)
    # the log-domain solver through dalib.kernels.softmin gives the same map
    for backend in ("dense", "blocked"):
        log = OTMapping(reg=reg, norm=norm, tol=1e-12, max_iter=10000, backend=backend, dtype="float64").fit(xs, xt)
        assert log.coupling_ is None
        np.testing.assert_allclose(log.transform(xs), pot.transform(Xs=xs), atol=1e-8)
        np.testing.assert_allclose(log.transform(xnew), pot.transform(Xs=xnew), atol=1e-8)


@pytest.mark.parametrize("norm", [None, "median"])
def test_class_regularised_matches_pot_lpl1(data, norm):
    xs, xt, ys, xnew = data
    pot = ot.da.SinkhornLpl1Transport(reg_e=0.5, reg_cl=0.3, norm=norm, tol=1e-12, max_inner_iter=10000)
    pot.fit(Xs=xs, ys=ys, Xt=xt)
    ours = OTMapping(reg=0.5, reg_cl=0.3, norm=norm, tol=1e-12, max_iter=10000).fit(xs, xt, ys)
    np.testing.assert_allclose(ours.coupling_, pot.coupling_, atol=1e-12)
    np.testing.assert_allclose(ours.transform(xs), pot.transform(Xs=xs), atol=1e-9)
    np.testing.assert_allclose(ours.transform(xnew), pot.transform(Xs=xnew), atol=1e-9)
    log = OTMapping(reg=0.5, reg_cl=0.3, norm=norm, tol=1e-12, max_iter=10000, backend="blocked", dtype="float64")
    log.fit(xs, xt, ys)
    np.testing.assert_allclose(log.transform(xs), pot.transform(Xs=xs), atol=1e-8)


def test_class_regularisation_concentrates_each_target_on_one_class(data):
    xs, xt, ys, _ = data
    plain = OTMapping(reg=0.5).fit(xs, xt)
    classy = OTMapping(reg=0.5, reg_cl=5.0).fit(xs, xt, ys)

    def purity(plan):
        mass = np.stack([plan[ys == c].sum(0) for c in range(3)])  # (3, nt)
        return float((mass.max(0) / mass.sum(0)).mean())

    assert purity(classy.coupling_) > purity(plain.coupling_) + 0.1


def test_auto_switches_to_the_log_domain_solver_for_large_problems(data, monkeypatch):
    xs, xt, ys, _ = data
    monkeypatch.setattr(ot_module, "POT_MAX_ENTRIES", 100)
    monkeypatch.setattr(ot_module, "MEDIAN_SUBSET", 20)  # the median is then estimated
    for params, labels in (({"reg": 0.5, "norm": "max"}, None), ({"reg": 0.5, "reg_cl": 0.3, "norm": None}, ys)):
        large = OTMapping(tol=1e-10, max_iter=10000, dtype="float64", **params).fit(xs, xt, labels)
        assert large.coupling_ is None and large.backend_.startswith("log-")
        small = OTMapping(tol=1e-10, max_iter=10000, backend="pot", **params).fit(xs, xt, labels)
        np.testing.assert_allclose(large.transform(xs), small.transform(xs), atol=1e-7)
    est = OTMapping(reg=0.5, norm="median", dtype="float64").fit(xs, xt)
    assert est.cost_scale_ > 0


def test_barycentric_map_by_row_blocks_matches_dense():
    rng = np.random.default_rng(1)
    x = torch.tensor(rng.normal(size=(37, 4)))
    y = torch.tensor(rng.normal(size=(23, 4)))
    h = torch.tensor(rng.normal(size=23))
    logits = h[None, :] - torch.cdist(x, y) ** 2 / (2.0 * 0.7)
    expected = torch.softmax(logits, 1) @ y
    got = _sinkhorn.barycentric_map(x, y, h, reg=0.7, scale=2.0, max_entries=50)  # 2 rows per block
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-12)


def test_log_sinkhorn_marginals():
    rng = np.random.default_rng(2)
    x = torch.tensor(rng.normal(size=(30, 3)))
    y = torch.tensor(rng.normal(size=(20, 3)))
    a = torch.full((30,), 1 / 30, dtype=torch.float64)
    b = torch.full((20,), 1 / 20, dtype=torch.float64)
    res = _sinkhorn.log_sinkhorn(x, y, a, b, reg=0.3, tol=1e-11, max_iter=5000, backend="dense")
    cost = torch.cdist(x, y) ** 2
    plan = a[:, None] * b[None, :] * torch.exp((res.f[:, None] + res.g[None, :] - cost) / 0.3)
    np.testing.assert_allclose(plan.sum(1).numpy(), a.numpy(), atol=1e-10)
    np.testing.assert_allclose(plan.sum(0).numpy(), b.numpy(), atol=1e-10)
    assert res.marginal_error <= 1e-11


def test_errors(data):
    xs, xt, ys, _ = data
    with pytest.raises(InputError, match="labels"):
        OTMapping(reg_cl=0.1).fit(xs, xt)
    with pytest.raises(InputError, match="labels for"):
        OTMapping(reg_cl=0.1).fit(xs, xt, ys[:5])
    with pytest.raises(InputError, match="feature sizes"):
        OTMapping().fit(xs, xt[:, :2])
    with pytest.raises(InputError, match="empty"):
        OTMapping().fit(xs[:0], xt)
    with pytest.raises(InputError, match="not fitted"):
        OTMapping().transform(xs)
    with pytest.raises(ConfigError):
        OTMapping(norm="mean").fit(xs, xt)
    with pytest.raises(ConfigError):
        OTMapping(reg=-1.0).fit(xs, xt)
    with pytest.raises(ConfigError, match="reg_cl"):
        OTMapping(reg=None, reg_cl=0.1).fit(xs, xt, ys)
    with pytest.raises(ConfigError, match="POT"):
        OTMapping(reg=None, backend="blocked").fit(xs, xt)
    with pytest.raises(ConfigError):
        OTMapping(max_iter=0).fit(xs, xt)


def test_the_class_regulariser_refuses_unlabelled_source_samples(data):
    """-1 marks an unlabelled sample in dalib: POT, and this, had taken it as one more class."""
    xs, xt, ys, _ = data
    ys = ys.copy()
    ys[3] = -1
    with pytest.raises(InputError, match=r"^ys holds -1, dalib's mark of an unlabelled sample"):
        OTMapping(reg=1.0, reg_cl=0.1).fit(xs, xt, ys)
