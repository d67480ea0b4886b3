"""numpy arrays (and what numpy reads as one) into tensors, whatever their layout."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch

__all__ = ["check_dense", "cpu_by_default", "number_tensor", "tensor_of"]

_F = TypeVar("_F", bound=Callable[..., Any])


def tensor_of(a: np.ndarray) -> torch.Tensor:
    """``a`` as a tensor, sharing memory where torch can: an array that torch cannot view
    (negative strides, as ``x[::-1]`` or a BGR-to-RGB ``img[..., ::-1]`` makes; a byte order
    other than the machine's, as HDF5 and .mat files often store) is copied into one it can,
    and so is a read-only one (pandas' ``to_numpy()``, a memory-mapped file), which torch
    would share with a warning that writes to it are undefined. A 0-d array stays 0-d."""
    out = np.asarray(a, dtype=a.dtype.newbyteorder("="), order="C")  # (np.ascontiguousarray makes 0-d 1-d)
    return torch.from_numpy(out if out.flags.writeable else out.copy())


def check_dense(t: torch.Tensor, name: str, error: Callable[[str], Exception]) -> None:
    """Raise ``error(message)``, the message naming ``t`` as ``name``, unless ``t`` holds its
    values as a plain (strided) tensor: a sparse (COO, CSR, ...) or nested tensor, which most
    of torch's operations refuse, or one on the meta device, which holds no values."""
    if t.is_nested:
        raise error(f"{name} is a nested tensor: give a dense one (torch.stack({name}.unbind()))")
    if t.layout != torch.strided:
        raise error(f"{name} is a sparse tensor: give {name}.to_dense()")
    if t.is_meta:
        raise error(f"{name} is on the meta device, which holds no values: dalib reads them, so give {name} on "
                    "the CPU or a GPU")


def number_tensor(x: Any, name: str, error: Callable[[str], Exception]) -> torch.Tensor:
    """``x`` (a tensor, numpy array, pandas DataFrame or Series, nested list) as a tensor of
    real numbers or booleans, sharing memory where it can; anything else is ``error(message)``
    raised, the message naming ``x`` as ``name``: a sparse matrix or tensor, a nested or meta
    tensor, complex numbers (torch would drop their imaginary part), text, objects or times."""
    if isinstance(x, torch.Tensor):
        check_dense(x, name, error)
        if x.is_complex():
            raise error(f"{name} holds complex numbers: give real features")
        return x.detach()
    if hasattr(x, "tocsr") and hasattr(x, "nnz"):  # scipy.sparse
        raise error(f"{name} is a sparse matrix: give a dense array ({name}.toarray())")
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise error(f"{name} is not an array: {exc}") from None
    if np.iscomplexobj(arr):
        raise error(f"{name} holds complex numbers: give real features")
    if arr.dtype == object and hasattr(x, "dtypes") and hasattr(x, "to_numpy"):
        arr = _numeric_frame(x, name, error)  # a DataFrame of mixed (float and bool) or nullable columns
    # (numpy counts timedelta64 as a number, which torch cannot read)
    if arr.dtype == object or arr.dtype.kind == "m" or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise error(f"{name} must hold numbers, got dtype {arr.dtype}")
    if arr.dtype == np.longdouble and np.longdouble != np.float64:
        arr = arr.astype(np.float64)  # torch has no extended precision
    return tensor_of(arr)


def _numeric_frame(frame: Any, name: str, error: Callable[[str], Exception]) -> np.ndarray:
    """A pandas DataFrame (or Series) whose columns are all numbers or booleans (mixed, or
    pandas' nullable Float64/Int64/boolean, which numpy reads as objects) as a float64 array;
    any other as numpy reads it, for the caller to refuse."""
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    dtypes = [frame.dtype] if getattr(frame, "ndim", 2) == 1 else list(frame.dtypes)  # a Series has one
    if not all(is_numeric_dtype(d) or is_bool_dtype(d) for d in dtypes):
        return np.asarray(frame)
    try:
        return frame.to_numpy(dtype=np.float64)
    except (TypeError, ValueError):  # pd.NA
        raise error(f"{name} has missing values (pandas NA): fill or drop them") from None


def cpu_by_default(fn: _F) -> _F:
    """``fn`` run with torch's default device the CPU (nothing changes where it already is): a
    caller's ``torch.set_default_device("cuda")``, or ``"meta"``, in a notebook does not move the
    tensors that dalib makes without naming a device (weights, indices, numpy arrays read in),
    which then met the inputs' on another device or held no values. Computation stays on the
    device of the inputs."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if default_device().type == "cpu":
            return fn(*args, **kwargs)
        with torch.device("cpu"):
            return fn(*args, **kwargs)

    return wrapped  # type: ignore[return-value]


def default_device() -> torch.device:
    """The device a tensor made without naming one gets: ``torch.set_default_device``'s, or
    that of a ``with torch.device(...)`` block. Not ``torch.get_default_device()``, which before
    torch 2.8 misses the block, and on torch 2.4 raised AttributeError once the default had been
    set back with ``set_default_device(None)``: every dalib call after it failed."""
    return torch.empty(0).device
