"""Input checks shared by the kernel reductions and the losses built on them."""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

from dalib._arrays import check_dense, number_tensor
from dalib.errors import InputError, OutOfRangeError

__all__ = ["as_gammas", "as_sigmas", "check_points", "check_pair", "check_weights", "outside_autocast"]

F = TypeVar("F", bound=Callable)


#: dtypes computed in float32: their range (float16 overflows at 65504) and precision cannot
#: hold kernel sums over N² pairs, exp(−C/ε) or squared norms
_UPCAST = (torch.float16, torch.bfloat16)


def outside_autocast(fn: F) -> F:
    """Run ``fn`` with autocast off, on the CPU and on CUDA. The checks below compute half
    precision inputs in float32, but inside a caller's ``torch.autocast`` region the matrix
    products would go back to bfloat16/float16, which loses the small differences the
    losses measure (and the exact zero diagonal of a Gram matrix)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _compute_dtype(x: Tensor) -> torch.dtype | None:
    """The floating dtype ``x`` is computed in; None for integer or boolean input."""
    if not x.is_floating_point():
        return None
    return torch.float32 if x.dtype in _UPCAST else x.dtype


def check_points(x: Tensor, name: str = "x", dtype: torch.dtype | None = None) -> Tensor:
    """Return ``x`` as a floating (N, D) tensor (of ``dtype`` when given), or raise
    :class:`InputError`. float16 and bfloat16 come back as float32, integers as the default
    dtype (the gradient flows back to the original)."""
    if not isinstance(x, Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    check_dense(x, name, InputError)  # (sparse, nested or meta)
    if x.dim() != 2:
        raise InputError(f"{name} must be a 2-D (N, D) tensor, got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise InputError(f"{name} is empty: shape {tuple(x.shape)}")
    if x.is_complex():
        raise InputError(f"{name} holds complex numbers: give real features")
    if dtype is None:
        dtype = _compute_dtype(x) or torch.get_default_dtype()
    x = x.to(dtype)
    if x.is_inference() and not torch.is_inference_mode_enabled():
        # made under torch.inference_mode (a frozen encoder's features): the reductions'
        # autograd saves its inputs for the backward pass, which torch refuses for these
        x = x.clone()
    try:
        largest = float(torch.linalg.vector_norm(x.detach(), float("inf")))  # max |x|: one host sync for both checks (NaN propagates)
    except RuntimeError as exc:  # torch.func.vmap: a batched tensor has no one value to read
        if "vmap" not in str(exc):
            raise
        raise InputError("dalib's losses and kernels do not run under torch.func.vmap (their input checks read "
                         "the values): loop over the batch") from None
    if not math.isfinite(largest):
        raise InputError(f"{name} holds NaN or infinite values")
    # squared distances reach D·(2·max|x|)²: beyond the dtype's range they would be inf, and the
    # kernels and costs NaN
    limit = 0.5 * math.sqrt(torch.finfo(dtype).max / x.shape[1])
    if largest > limit:
        raise OutOfRangeError(f"{name} holds values up to {largest:.3g}, too large for {_dtype_name(x)} squared distances "
                         f"(at most {limit:.3g} in {x.shape[1]} dimensions): scale the features"
                         + (", or use float64" if torch.finfo(dtype).max < torch.finfo(torch.float64).max else ""))
    return x


def check_pair(x: Tensor, y: Tensor, names: tuple[str, str] = ("x", "y")) -> tuple[Tensor, Tensor]:
    """Check two point clouds (N, D) and (M, D): same feature size and device; both come
    back in one floating dtype (float16 and bfloat16 as float32). One tensor given twice
    comes back as one tensor, checked once: the reductions then know each point's distance
    to itself is 0 (and the blocked backend computes half of the tiles)."""
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        return check_points(x, names[0]), check_points(y, names[1])  # the type error
    if y is x:
        x = check_points(x, names[0])
        return x, x
    # one dtype for both, chosen before any cast: an integer side takes the other's float dtype
    dx, dy = _compute_dtype(x), _compute_dtype(y)
    dtype = torch.promote_types(dx, dy) if dx is not None and dy is not None else dx or dy or torch.get_default_dtype()
    x = check_points(x, names[0], dtype)
    y = check_points(y, names[1], dtype)
    if x.shape[1] != y.shape[1]:
        raise InputError(
            f"{names[0]} and {names[1]} have different feature sizes: "
            f"{x.shape[1]} != {y.shape[1]}"
        )
    if x.device != y.device:
        raise InputError(f"{names[0]} is on {x.device} but {names[1]} is on {y.device}")
    return x, y


def check_weights(w: Tensor | None, n: int, like: Tensor, name: str) -> Tensor:
    """Return sample weights (n,) summing to 1 (uniform when ``w`` is None), in ``like``'s
    dtype. Weights must sum to 1 up to their own dtype's rounding (1e-4, or twice the
    machine epsilon of float16/bfloat16 weights), and are divided by their sum, so that the
    marginal a solver matches is the one it checks."""
    if w is None:
        return torch.full((n,), 1.0 / n, dtype=like.dtype, device=like.device)
    if isinstance(w, Tensor):
        check_dense(w, name, InputError)
    elif hasattr(w, "dtype"):  # a numpy array keeps its dtype (for the tolerance), read as the points are
        w = number_tensor(w, name, InputError)
    else:  # a list takes like's
        w = torch.as_tensor(w, dtype=like.dtype, device=like.device)
    tol = max(1e-4, 2 * torch.finfo(w.dtype).eps) if w.is_floating_point() else 1e-4
    w = w.to(dtype=like.dtype, device=like.device)
    if w.dim() == 2 and w.shape[1] == 1:
        w = w[:, 0]  # (n,)
    if w.shape != (n,):
        raise InputError(f"{name} must have shape ({n},), got {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()):
        raise InputError(f"{name} holds NaN or infinite values")
    if bool((w < 0).any()):
        raise InputError(f"{name} has negative weights")
    total = float(w.detach().sum())
    if abs(total - 1.0) > tol:
        raise InputError(f"{name} must sum to 1 (a probability vector), sums to {total:.6g}")
    return w if total == 1.0 else w / total


def as_sigmas(sigmas: float | Sequence[float] | Tensor, like: Tensor) -> Tensor:
    """Bandwidths as a 1-D tensor (S,) of positive finite values in ``like``'s dtype, on its
    device. A positive bandwidth that ``like``'s dtype cannot hold (it would round to 0 or to
    infinity) is an :class:`InputError` that says so."""
    return _sigmas_on_cpu(sigmas, like).to(like.device)


def _sigmas_on_cpu(sigmas: float | Sequence[float] | Tensor, like: Tensor) -> Tensor:
    """:func:`as_sigmas` on the CPU: the checks read no GPU memory (no host sync per loss)."""
    if isinstance(sigmas, Tensor):
        check_dense(sigmas, "bandwidths", InputError)
        given = sigmas.detach().to(device="cpu", dtype=torch.float64).reshape(-1)
    else:
        if isinstance(sigmas, (str, bytes)):  # iterable, but its characters are no bandwidths
            raise InputError(f"bandwidths must be numbers, got the string {sigmas!r}")
        if isinstance(sigmas, (numbers.Real, np.generic)) or (isinstance(sigmas, np.ndarray) and sigmas.ndim == 0):
            sigmas = [sigmas]
        try:
            given = torch.tensor([float(v) for v in sigmas], dtype=torch.float64, device="cpu")
        except (TypeError, ValueError):
            raise InputError(f"bandwidths must be a number or a sequence of numbers, got {sigmas!r}") from None
    if given.numel() == 0:
        raise InputError("sigmas is empty: give at least one bandwidth")
    if not bool(torch.isfinite(given).all()) or bool((given <= 0).any()):
        raise InputError(f"bandwidths must be positive and finite, got {float_values(given)}")
    s = given.to(like.dtype)  # (S,)
    for bad, what in ((s == 0, "small"), (~torch.isfinite(s), "large")):
        if bool(bad.any()):
            raise InputError(f"bandwidths {float_values(given[bad])} are too {what} for {_dtype_name(like)} kernels")
    return s


def plain_tensor(t: Tensor) -> bool:
    """Whether ``t`` is neither a ``torch.func`` transform's wrapper (``grad``, ``vjp``, ``vmap``,
    ``jvp``, ...) nor a forward-mode dual tensor: an autograd Function that does not define
    the transforms' rules serves plain tensors only."""
    wrapped = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor", None)
    if wrapped is not None and wrapped(t):
        return False
    return torch.autograd.forward_ad.unpack_dual(t).tangent is None


def float_values(t: Tensor) -> list[float]:
    """``t.tolist()`` of a 1-D tensor, element by element: torch 2.4 wraps even a tensor made
    inside a ``torch.func`` transform (the bandwidths of a loss under ``torch.func.grad``), and a
    wrapped tensor has no ``.tolist()``."""
    return [float(v) for v in t]


def _dtype_name(like: Tensor) -> str:
    return str(like.dtype).replace("torch.", "")


def as_gammas(sigmas: float | Sequence[float] | Tensor, like: Tensor) -> Tensor:
    """The Gaussian kernels' ``1 / (2σ²)`` (S,) of :func:`as_sigmas`' bandwidths; a bandwidth so
    small that this overflows ``like``'s dtype (the kernel would be NaN where x = y) is an
    :class:`InputError`."""
    s = _sigmas_on_cpu(sigmas, like)  # (S,)
    gam = 0.5 / (s * s)  # (S,)
    if not bool(torch.isfinite(gam).all()):
        raise OutOfRangeError(f"bandwidths {float_values(s)} are too small for {_dtype_name(like)} kernels (1/(2σ²) overflows)")
    return gam.to(like.device)
