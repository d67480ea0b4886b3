"""Input checks for the shallow estimators: feature matrices as numpy arrays or tensors."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dalib._arrays import check_dense, number_tensor
from dalib.data.domain import UNLABELLED
from dalib.errors import ConfigError, InputError

__all__ = [
    "as_labels",
    "as_matrix",
    "centred_pair",
    "check_choice",
    "check_narrowed",
    "check_positive",
    "check_feature_names",
    "feature_names",
    "fit_pair",
    "like_input",
    "to_numpy",
]


#: why a target of labels' shape reached fit(Xs, Xt): a scikit-learn Pipeline passes y there
LABELS_AS_TARGET = (": fit(Xs, Xt) takes the target's features, not labels, so these estimators are no steps of a "
                     "scikit-learn Pipeline (which passes y there): fit them on both domains, then train the "
                     "classifier on transform(Xs)")


def as_matrix(x: Any, name: str, dtype: torch.dtype = torch.float64, labels_hint: str = "") -> Tensor:
    """Return ``x`` (a numpy array, tensor or nested list) as a (N, D) tensor of ``dtype``
    (``labels_hint``: what the error adds for what a Pipeline passes in a target's place, a
    vector of labels or None).

    Raises :class:`InputError` when it is missing, not 2-D, empty, or holds NaN/inf.
    """
    if x is None:
        raise InputError(f"{name} is missing (None){labels_hint}")
    t = number_tensor(x, name, InputError)
    if t.dim() != 2:
        raise InputError(f"{name} must be a 2-D (n_samples, n_features) array, got shape {tuple(t.shape)}"
                         + (labels_hint if t.dim() == 1 else ""))
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise InputError(f"{name} is empty: shape {tuple(t.shape)}")
    t = t.to(dtype)
    if not bool(torch.isfinite(t).all()):
        raise InputError(f"{name} holds NaN or infinite values")
    _check_squared_norms(t, name)
    return t


def _check_squared_norms(t: Tensor, name: str) -> float:
    """The largest squared norm of ``t``'s rows, or :class:`InputError` when one overflows."""
    largest = float((t * t).sum(1).max())
    if not math.isfinite(largest):  # distances and covariances would overflow
        raise InputError(f"{name} holds values too large for {str(t.dtype).removeprefix('torch.')} distances "
                         "(squared norms overflow): scale the features")
    return largest


#: rows centred at a time by :func:`centred_pair`: its temporaries stay this many rows
CENTRE_CHUNK = 4096
_NARROW = {torch.float32, torch.float16, torch.bfloat16, np.dtype(np.float32), np.dtype(np.float16)}


def centred_pair(xs: Any, xt: Any, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``xs`` (n_s, d) and ``xt`` (n_t, d) as checked matrices of ``dtype``, moved together so
    that their pooled mean is 0: for methods that depend on differences alone, data far from
    the origin keep their precision. Input wider than ``dtype`` (float64 data for float32
    products) is centred before the cast, a chunk of rows at a time, so that the only full
    copy is the result."""
    wide = dtype != torch.float64 and any(getattr(x, "dtype", None) not in _NARROW for x in (xs, xt))
    read = torch.float64 if wide else dtype
    a, b = fit_pair(xs, xt, read)
    centre = (a.sum(0, dtype=torch.float64) + b.sum(0, dtype=torch.float64)) / (a.shape[0] + b.shape[0])  # (d,)
    out = []
    spread = 0.0
    for x in (a, b):
        moved = torch.empty(x.shape, dtype=dtype, device=x.device)  # a new tensor: the caller's data stay as given
        for i in range(0, x.shape[0], CENTRE_CHUNK):
            rows = x[i:i + CENTRE_CHUNK] - centre
            spread = max(spread, float(rows.abs().max()))
            moved[i:i + CENTRE_CHUNK] = rows
        out.append(moved)
    check_narrowed((out[0], out[1]), spread)
    return out[0], out[1]


def check_narrowed(pair: tuple[Tensor, Tensor], spread: float) -> None:
    """``pair``: the two domains' data, centred together and cast to the dtype of the distance
    computations; ``spread``, their largest absolute value before the cast. Raises
    :class:`InputError` when squared norms overflow, or when data that differ (``spread`` > 0)
    fall, all of them, below the smallest normal number of a narrower dtype than float64,
    where every distance is 0 or has lost its digits (one domain alone may sit at the centre)."""
    largest = max(_check_squared_norms(moved, name) for moved, name in zip(pair, ("Xs", "Xt")))
    dtype = pair[0].dtype
    if dtype == torch.float64 or spread <= 0:
        return
    if not largest >= torch.finfo(dtype).tiny:
        kind = str(dtype).removeprefix("torch.")
        raise InputError(f"Xs and Xt hold values too small for {kind} distances (squared norms "
                         f"underflow, largest value {spread:.3g} after centring): scale the features up or set "
                         "dtype='float64'")


def fit_pair(Xs: Any, Xt: Any, dtype: torch.dtype = torch.float64,
             labels_hint: str = LABELS_AS_TARGET) -> tuple[Tensor, Tensor]:
    """What a shallow estimator's ``fit(Xs, Xt)`` was given, as two checked matrices of
    ``dtype`` with the same features: a target missing or of labels' shape (as a scikit-learn
    Pipeline passes ``y`` there) is told so (``labels_hint``), and DataFrames whose columns
    differ in name or order are refused (they would be matched by position)."""
    xs = as_matrix(Xs, "Xs", dtype)
    xt = as_matrix(Xt, "Xt", dtype, labels_hint=labels_hint)
    if xs.device != xt.device:
        raise InputError(f"Xs and Xt are on different devices: {xs.device} and {xt.device}")
    if xs.shape[1] != xt.shape[1]:
        raise InputError(f"Xs and Xt have different feature sizes: {xs.shape[1]} and {xt.shape[1]}"
                         + (labels_hint if xt.shape[1] == 1 else ""))  # ((n, 1) labels)
    check_feature_names(feature_names(Xs), Xt, "Xt", "Xs's", "Xt[Xs.columns]")
    return xs, xt


def feature_names(x: Any) -> np.ndarray | None:
    """A DataFrame's column names, where all are strings (scikit-learn's ``feature_names_in_``);
    ``None`` for other input."""
    columns = getattr(x, "columns", None)
    if columns is None or isinstance(x, (np.ndarray, Tensor)):
        return None
    names = np.asarray(list(columns), dtype=object)
    return names if len(names) and all(isinstance(n, str) for n in names) else None


def check_feature_names(expected: np.ndarray | None, x: Any, name: str, whose: str, reorder: str) -> None:
    """:class:`InputError` when ``x`` is a DataFrame whose column names are not ``expected``
    (``whose`` they are), in the same order: numbers are read by position, so another order
    would silently mix the features up (``reorder``: the expression that puts them right).
    Input without names (arrays, tensors) is not checked."""
    names = feature_names(x)
    if expected is None or names is None or np.array_equal(names, expected):
        return
    known, given = set(expected), set(names)
    if len(known) == len(expected) and len(given) == len(names):  # (a name given twice matches no reordering)
        if known == given:
            raise InputError(f"{name}'s columns are {whose} in another order, and columns are read by position: "
                             f"give {reorder}")
        missing, extra = [n for n in expected if n not in given], [n for n in names if n not in known]
        raise InputError(f"{name}'s columns are not {whose}: missing {missing[:5]}, unexpected {extra[:5]}")
    raise InputError(f"{name}'s columns ({', '.join(names[:8])}{', ...' if len(names) > 8 else ''}) are not {whose} "
                     f"({', '.join(expected[:8])}{', ...' if len(expected) > 8 else ''}), in that order")


def _label_vector(y: Any, n: int, name: str) -> np.ndarray:
    """``y`` as a (n,) numpy array ((n, 1) and (1, n) flattened), or :class:`InputError`."""
    if isinstance(y, Tensor):
        check_dense(y, name, InputError)
    arr = y.detach().cpu().numpy() if isinstance(y, Tensor) else np.asarray(y)
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise InputError(f"{name} must be a 1-D array of labels, got shape {arr.shape}")
    if arr.shape[0] != n:
        raise InputError(f"{name} has {arr.shape[0]} labels for {n} samples")
    return arr


def _integer_labels(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.dtype == bool:
        arr = arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise InputError(f"{name} must hold integer class labels, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def as_labels(y: Any, n: int, name: str = "ys") -> np.ndarray:
    """Return class labels as a (n,) int64 numpy array, or raise :class:`InputError`."""
    return _integer_labels(_label_vector(y, n, name), name)


def as_groups(y: Any, n: int, name: str = "ys") -> np.ndarray:
    """Class labels of any kind (integers, strings, a pandas Categorical) as (n,) int64 group
    indices: integer labels as they are, others 0..G-1 in the order of the sorted labels; or
    raise :class:`InputError`."""
    arr = _label_vector(y, n, name)
    if np.issubdtype(arr.dtype, np.number) or arr.dtype == bool:
        groups = _integer_labels(arr, name)
        if (groups == UNLABELLED).any():  # (POT groups them as one more class, which they are not)
            raise InputError(f"{name} holds {UNLABELLED}, dalib's mark of an unlabelled sample: each source sample "
                             "needs its class here")
        return groups
    if arr.dtype == object and any(isinstance(v, (float, np.floating)) and np.isnan(v) for v in arr):
        # (NaN equals nothing, itself included: np.unique would make each one a class of its own)
        raise InputError(f"{name} has missing labels (NaN): each source sample needs its class here")
    try:
        _, groups = np.unique(arr, return_inverse=True)
    except TypeError:  # labels of mixed types, which cannot be sorted
        raise InputError(f"{name} must hold class labels of one kind (numbers or strings), got {arr.dtype}") from None
    return groups.reshape(-1).astype(np.int64)


def to_numpy(x: Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


def like_input(result: Tensor, reference: Any) -> Any:
    """``result`` as a tensor (on the reference's device, in its float dtype) if the
    reference input was a tensor, else as a numpy array (float32 for a float32 array, as
    scikit-learn's transformers keep it; float64 otherwise)."""
    if isinstance(reference, Tensor):
        dtype = reference.dtype if reference.is_floating_point() else result.dtype
        return result.to(device=reference.device, dtype=dtype)
    out = to_numpy(result)
    dtypes = getattr(reference, "dtypes", None)  # a DataFrame: one dtype per column
    if getattr(reference, "dtype", None) == np.float32 or (
            dtypes is not None and len(dtypes) and all(d == np.float32 for d in dtypes)):
        return out.astype(np.float32)
    return out


def check_positive(value: Any, name: str, *, allow_none: bool = False, allow_zero: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a finite number > 0 (or >= 0, or None)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ConfigError(f"{name} must be {'>= 0' if allow_zero else '> 0'} and finite, got {value!r}")


def check_choice(value: Any, name: str, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
