"""A method's input for tests that call ``loss`` directly: a batch of random features."""

from __future__ import annotations

import torch

from dalib import Batch


def random_batch(n_s: int = 12, n_t: int = 10, d: int = 16, k: int = 4, seed: int = 0) -> Batch:
    """``n_s`` labelled source and ``n_t`` target samples of ``d`` features (the target
    shifted by 0.5), ``k`` classes, no weights."""
    g = torch.Generator().manual_seed(seed)
    x_s = torch.randn(n_s, d, generator=g)
    x_t = torch.randn(n_t, d, generator=g) + 0.5
    y_s = torch.randint(0, k, (n_s,), generator=g)
    return Batch(x_s, y_s, x_t, None, torch.arange(n_s), torch.arange(n_t))
