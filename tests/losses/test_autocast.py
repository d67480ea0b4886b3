"""The losses and kernel reductions compute in float32 even inside a caller's autocast region
(where torch would otherwise run their matrix products in bfloat16)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dalib.kernels import gaussian_matvec, sqdist
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
