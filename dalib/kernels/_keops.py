"""The ``keops`` backend: pykeops LazyTensor reductions, no N×M matrix in memory.

Formulas are written so that their compiled form depends only on the feature size D, the
number of bandwidths S and the width K of ``v``: bandwidths and ε enter as parameters
(``Pm``), so new values do not trigger a new g++/nvcc compilation.
"""

from __future__ import annotations

import contextlib
import errno
import io
import sys
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor

from dalib.errors import BackendError, first_line
from dalib.kernels.backends import forget_keops_cache_saves, keops_cache_failure, mark_keops_broken

__all__ = ["keops_gaussian_matvec", "keops_softmin"]

T = TypeVar("T")


class _Lines(io.TextIOBase):
    """stderr, remembering whether what was written last ended its line."""

    def __init__(self, stream: object) -> None:
        self._stream, self.open = stream, False

    def write(self, text: str) -> int:
        if text:
            self.open = not text.endswith("\n")
        return self._stream.write(text)  # type: ignore[attr-defined]

    def flush(self) -> None:
        self._stream.flush()  # type: ignore[attr-defined]


_CACHE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


def _run(fn: Callable[[], T]) -> T:
    """Run a KeOps reduction; a compilation failure becomes a :class:`BackendError`."""
    out = _Lines(sys.stderr)
    try:
        with contextlib.redirect_stdout(out):  # KeOps prints its compile messages: off stdout
            return fn()
    except (ValueError, RuntimeError, OSError, ImportError) as exc:  # a failed build: the module is missing
        msg = str(exc)
        # its cache folder, whatever it is called: not writable, or full (other system errors are not its)
        cache = isinstance(exc, OSError) and exc.errno in _CACHE_ERRNOS
        if not cache and "KeOps" not in msg and "keops" not in msg:
            raise
        if out.open:  # KeOps' "Generating code for ... " line, left open by the failure: not the error's
            sys.stderr.write("\n")
        why = first_line(exc)
        if cache:
            why = keops_cache_failure(exc)
            forget_keops_cache_saves()
        mark_keops_broken(why)
        raise BackendError(f"the keops backend failed to run here: {why}") from exc


def _lazy():
    from pykeops.torch import LazyTensor

    return LazyTensor


def keops_gaussian_matvec(x: Tensor, y: Tensor, v: Tensor, gammas: Tensor) -> Tensor:
    """(N, K) = Σ_s exp(−γ_s ‖x_i − y_j‖²) @ v (M, K); ``gammas`` (S,)."""
    LazyTensor = _lazy()

    def go() -> Tensor:
        x_i = LazyTensor(x.contiguous()[:, None, :])  # (N, 1, D)
        y_j = LazyTensor(y.contiguous()[None, :, :])  # (1, M, D)
        v_j = LazyTensor(v.contiguous()[None, :, :])  # (1, M, K)
        g = LazyTensor(gammas.contiguous().to(x.dtype))  # Pm(S)
        d_ij = x_i.sqdist(y_j)  # (N, M, 1) symbolic
        k_ij = (-(d_ij * g)).exp().sum()  # (N, M, 1): Σ_s exp(−γ_s D)
        return (k_ij * v_j).sum(dim=1)  # (N, K)

    return _run(go)


def keops_softmin(x: Tensor, y: Tensor, h: Tensor, eps: float, p: int | float) -> Tensor:
    """(N,) = −ε log Σ_j exp(h_j − ‖x_i − y_j‖^p / (p ε))."""
    LazyTensor = _lazy()

    def go() -> Tensor:
        x_i = LazyTensor(x.contiguous()[:, None, :])  # (N, 1, D)
        y_j = LazyTensor(y.contiguous()[None, :, :])  # (1, M, D)
        # a zero weight's −inf would make KeOps' max-shifted log-sum-exp NaN: a finite floor
        # that exp still sends to 0
        h_j = LazyTensor(h.clamp_min(torch.finfo(h.dtype).min / 8).contiguous().reshape(1, -1, 1))  # (1, M, 1)
        inv = LazyTensor(torch.tensor([1.0 / (p * eps)], dtype=x.dtype, device=x.device))
        d_ij = x_i.sqdist(y_j)  # (N, M, 1)
        if p in (1, 2):
            c_ij = d_ij if p == 2 else d_ij.sqrt()
        else:
            # d^(p/2) as exp((p/2) log d): KeOps' power (Powf) rounds in float32 whatever the dtype
            # (3e-8 off in float64); and its derivative, infinite at d = 0 for p < 2, met the zero
            # difference of every pair of a point with itself (NaN): the floor keeps it finite,
            # its product 0, as the torch backends' clamp does
            c_ij = ((d_ij + float(torch.finfo(x.dtype).tiny)).log() * (p / 2)).exp()
        return -eps * (h_j - c_ij * inv).logsumexp(dim=1).squeeze(1)  # (N,)

    return _run(go)
