"""The losses and kernel reductions compute in float32 even inside a caller's autocast region
(where torch would otherwise run their matrix products in bfloat16)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dalib.kernels import gaussian_matvec, softmin, sqdist
from dalib.losses import coral, mmd, sinkhorn


def _pair():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 128, generator=g) + 2
    y = torch.randn(256, 128, generator=g) * 1.02 + 2
    return x, y


@pytest.mark.parametrize("name, fn", [
    ("mmd unbiased", lambda x, y: mmd(x, y, estimator="unbiased")),
    ("mmd biased", lambda x, y: mmd(x, y)),
    ("coral", coral),
    ("sinkhorn", lambda x, y: sinkhorn(x, y, blur=0.5)),
    ("gaussian_matvec", lambda x, y: gaussian_matvec(x, y, torch.ones(len(y)), 8.0)),
    ("sqdist", sqdist),
])
def test_a_callers_autocast_region_does_not_lower_the_precision(name, fn):
    x, y = _pair()
    exact = fn(x.double(), y.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = fn(x, y)
    assert value.dtype == torch.float32
    # bfloat16 products put the unbiased MMD 35% off; float32 stays within 1e-4
    torch.testing.assert_close(value.double(), exact, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("sigma", [np.float32(2.0), np.int64(2), np.array(2.0), 2, 2.0, [2.0]])
def test_numpy_scalar_bandwidths_are_numbers(sigma):
    x, y = _pair()
    assert torch.allclose(mmd(x, y, bandwidths=sigma), mmd(x, y, bandwidths=2.0))


@pytest.mark.parametrize("name, fn", [
    ("mmd dense", lambda x, y: mmd(x, y, backend="dense")),
    ("gaussian_matvec blocked", lambda x, y: gaussian_matvec(x, y, torch.linspace(0, 1, len(y)), 8.0, backend="blocked").sum()),
    ("softmin blocked", lambda x, y: softmin(x, y, torch.zeros(len(y)), 0.5, backend="blocked").sum()),
    ("sinkhorn blocked", lambda x, y: sinkhorn(x, y, blur=0.5, backend="blocked")),
])
def test_hand_written_gradients_stay_float32_when_backward_runs_under_autocast(name, fn):
    """torch runs a backward pass called inside an autocast region with that region's
    products in bfloat16, custom autograd functions' too: the blocked softmin's gradient was
    66% off, the blocked Sinkhorn's 88%. dalib's own backward passes compute in float32."""
    x, y = (t[:60].clone().requires_grad_(True) for t in _pair())
    (exact,) = torch.autograd.grad(fn(x, y), x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (grad,) = torch.autograd.grad(fn(x, y), x)
    torch.testing.assert_close(grad, exact, rtol=1e-5, atol=1e-6 * float(exact.abs().max()))
