"""CORAL against its closed form in numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dalib.errors import InputError
from dalib.losses import coral


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(30, 4, generator=g, dtype=torch.float64), 2 * torch.randn(25, 4, generator=g, dtype=torch.float64)


def test_matches_numpy():
    x, y = _data()
    cs, ct = np.cov(x.numpy(), rowvar=False), np.cov(y.numpy(), rowvar=False)
    assert coral(x, y).item() == pytest.approx(((cs - ct) ** 2).sum() / (4 * 16), rel=1e-12)


def test_zero_for_equal_covariances_and_translation_invariant():
    x, _ = _data()
    assert coral(x, x + 3.0).item() == pytest.approx(0.0, abs=1e-14)
    # scaling by 2 multiplies the covariance by 4: ‖3C‖² / (4 d²)
    c = np.cov(x.numpy(), rowvar=False)
    assert coral(x, 2 * x).item() == pytest.approx((9 * c**2).sum() / 64, rel=1e-12)


def test_symmetric_and_gradcheck():
    x, y = _data()
    assert coral(x, y).item() == pytest.approx(coral(y, x).item(), rel=1e-14)
    xs, ys = x[:6].clone().requires_grad_(True), y[:5].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(coral, (xs, ys))


def test_errors():
    x, y = _data()
    with pytest.raises(InputError, match="feature sizes"):
        coral(x, torch.randn(5, 3))
    with pytest.raises(InputError, match="at least 2"):
        coral(x[:1], y)
    with pytest.raises(InputError, match="empty"):
        coral(torch.zeros(0, 4), y)
    bad = y.clone()
    bad[2, 1] = float("inf")
    with pytest.raises(InputError, match="NaN or infinite"):
        coral(x, bad)


def test_a_float32_value_within_range_does_not_overflow():
    """(C_s − C_t)² overflowed float32 before the division by 4d² where the loss itself fits."""
    g = torch.Generator().manual_seed(0)
    x, y = 1e9 * torch.randn(32, 16, generator=g), 2e9 * torch.randn(32, 16, generator=g)
    exact = float(coral(x.double(), y.double()))
    assert exact < torch.finfo(torch.float32).max / 100
    assert float(coral(x, y)) == pytest.approx(exact, rel=1e-4)


def test_a_value_beyond_the_dtype_is_one_line():
    """The loss grows with the features' fourth power: float32 features of 1e10 passed the
    squared-distance check and the loss read inf."""
    g = torch.Generator().manual_seed(0)
    x, y = 1e10 * torch.randn(64, 16, generator=g), 2e10 * torch.randn(64, 16, generator=g)
    with pytest.raises(InputError, match=r"the coral loss of these features overflows float32 .*use float64"):
        coral(x, y)
    assert torch.isfinite(coral(x.double(), y.double()))
