"""numpy arrays into tensors, whatever their layout."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["tensor_of"]


def tensor_of(a: np.ndarray) -> torch.Tensor:
    """``a`` as a tensor, sharing memory where torch can: an array that torch cannot view
    (negative strides, as ``x[::-1]`` or a BGR-to-RGB ``img[..., ::-1]`` makes; a byte order
    other than the machine's, as HDF5 and .mat files often store) is copied into one it can."""
    return torch.from_numpy(np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("=")))
