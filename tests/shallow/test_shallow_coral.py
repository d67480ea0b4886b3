"""CORAL: the recoloured source has the target's covariance; types and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dalib.errors import InputError
from dalib.shallow import CORAL


def _pair(seed: int = 0, ns: int = 400, nt: int = 300, d: int = 6):
    rng = np.random.default_rng(seed)
    xs = rng.normal(size=(ns, d)) @ rng.normal(size=(d, d))
    xt = rng.normal(size=(nt, d)) @ rng.normal(size=(d, d)) + 2.0
    return xs, xt


def test_transformed_source_covariance_equals_target_covariance():
    xs, xt = _pair()
    out = CORAL(reg=1e-10).fit(xs, xt).transform(xs)
    np.testing.assert_allclose(np.cov(out.T), np.cov(xt.T), rtol=1e-6, atol=1e-8)


def test_regularised_covariance_identity():
    # cov(Xs A) = Ct^{1/2} (I − λ Cs^{-1}) Ct^{1/2}, Cs, Ct the λ-regularised covariances
    xs, xt = _pair(1)
    lam = 1.0
    coral = CORAL(reg=lam).fit(xs, xt)
    out = coral.transform(xs)
    cs = np.cov(xs.T) + lam * np.eye(6)
    ct = np.cov(xt.T) + lam * np.eye(6)
    evals, evecs = np.linalg.eigh(ct)
    ct_half = evecs @ np.diag(np.sqrt(evals)) @ evecs.T
    expected = ct_half @ (np.eye(6) - lam * np.linalg.inv(cs)) @ ct_half
    np.testing.assert_allclose(np.cov(out.T), expected, rtol=1e-8, atol=1e-10)
    # and the closed form of the map itself
    es, vs = np.linalg.eigh(cs)
    np.testing.assert_allclose(coral.matrix_, vs @ np.diag(es**-0.5) @ vs.T @ ct_half, rtol=1e-8, atol=1e-10)


def test_identity_when_domains_coincide():
    xs, _ = _pair(2)
    np.testing.assert_allclose(CORAL().fit(xs, xs).transform(xs), xs, atol=1e-10)


def test_output_type_follows_input():
    xs, xt = _pair(3)
    coral = CORAL().fit(xs, xt)
    as_np = coral.transform(xs)
    as_t = coral.transform(torch.tensor(xs, dtype=torch.float32))
    assert isinstance(as_np, np.ndarray) and as_np.dtype == np.float64
    assert isinstance(as_t, torch.Tensor) and as_t.dtype == torch.float32
    np.testing.assert_allclose(as_t.numpy(), as_np, rtol=1e-4, atol=1e-4)


def test_bad_inputs():
    xs, xt = _pair(4)
    with pytest.raises(InputError, match="feature sizes"):
        CORAL().fit(xs, xt[:, :3])
    with pytest.raises(InputError, match="at least 2"):
        CORAL().fit(xs[:1], xt)
    bad = xs.copy()
    bad[0, 0] = np.inf
    with pytest.raises(InputError, match="NaN or infinite"):
        CORAL().fit(bad, xt)
    with pytest.raises(InputError, match="not fitted"):
        CORAL().transform(xs)
    with pytest.raises(InputError, match="features"):
        CORAL().fit(xs, xt).transform(xs[:, :2])
    with pytest.raises(InputError, match="singular"):
        CORAL(reg=0.0).fit(xs[:3], xt)


def test_bad_reg():
    from dalib.errors import ConfigError

    xs, xt = _pair(5)
    with pytest.raises(ConfigError):
        CORAL(reg=-1.0).fit(xs, xt)


def test_a_failed_refit_leaves_the_previous_fit_whole():
    """A refused refit (a singular source) left the rejected data's covariances beside the old map."""
    xs, xt = _pair()
    c = CORAL(reg=0).fit(xs, xt)
    fitted = (c.matrix_.copy(), c.cov_source_.clone(), c.cov_target_.clone())
    with pytest.raises(InputError, match="singular"):
        c.fit(np.hstack([xs[:, :3], xs[:, :3]]), xt[::2])
    np.testing.assert_array_equal(c.matrix_, fitted[0])
    assert torch.equal(c.cov_source_, fitted[1]) and torch.equal(c.cov_target_, fitted[2])
