"""Reading the benchmark ``.mat`` feature files, with one-line errors that name the file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dalib.errors import DataError

__all__ = ["error_reason", "features_and_labels", "find_data_file", "read_mat", "unreadable"]


def find_data_file(root: Path, folder: str, filename: str, *, dataset: str, domain: str) -> Path:
    """``root/folder/filename``, or ``root/filename`` when ``root`` already is that folder
    (it holds no ``folder``). A root that holds the folder is read there only: a file of the
    name beside the folder (a stray copy, another domain's file renamed) had stood in for one
    missing from it."""
    where = f"(dataset {dataset}, domain {domain}; set --data-root)"
    own, flat = root / folder, root / filename
    try:  # pathlib's is_dir and is_file let EACCES through: a folder on the way this user may not enter
        path = own / filename if own.is_dir() or not os.path.lexists(flat) and root.name != folder else flat
        if path.is_file():
            return path
        if path.is_dir():
            raise DataError(f"data file {path} is a folder, not a file {where}")
    except PermissionError:
        raise DataError(f"cannot reach data file {own / filename}: permission denied on a folder of its path "
                        f"{where}") from None
    if path.is_symlink():
        raise DataError(f"data file {path} is a broken link (to {os.readlink(path)}) {where}")
    raise DataError(f"data file not found: {path} {where}")


def error_reason(exc: BaseException) -> str:
    """A reader's exception as one line (its message, else its type's name)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def unreadable(what: str, path: Path, where: str, exc: BaseException) -> DataError:
    """The error for a data file that a reader failed on: a file this user may not read is
    said so (it is not damaged, and the fix is its permissions), anything else is a corrupt
    or unreadable file, with the reader's reason."""
    if isinstance(exc, PermissionError):
        return DataError(f"cannot read {what} {path} {where}: permission denied")
    return DataError(f"corrupt or unreadable {what}: {path} {where}: {error_reason(exc)}")


def read_mat(
    path: Path, keys: tuple[str, ...], *, dataset: str, domain: str
) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of a MATLAB (v4-v7.2) file; :class:`DataError` if it is unreadable
    or a key is missing."""
    import scipy.io

    where = f"(dataset {dataset}, domain {domain})"
    try:
        content = scipy.io.loadmat(str(path))
    except NotImplementedError as exc:
        # how scipy refuses a v7.3 (HDF5) file; its own advice (use h5py) is not one the user can act on here
        raise DataError(f"{path} {where} is a MATLAB v7.3 (HDF5) file, which dalib does not read: save it with "
                        "MATLAB's -v7 option (v4 to v7.2 are read)") from exc
    except Exception as exc:  # noqa: BLE001
        # A damaged file makes scipy's parser fail in many ways (MatReadError, ValueError,
        # OSError, IndexError, zlib.error, ...): all of them mean "this file cannot be read"
        raise unreadable(".mat file", path, where, exc) from exc
    missing = [k for k in keys if k not in content]
    if missing:
        found = sorted(k for k in content if not k.startswith("__"))
        raise DataError(
            f"{path} {where} lacks key(s) {', '.join(missing)}; "
            f"it holds: {', '.join(found) or 'nothing'}"
        )
    import scipy.sparse

    out = {}
    for k in keys:
        arr = content[k]
        if scipy.sparse.issparse(arr):  # MATLAB's sparse matrices (bag-of-words features often are)
            arr = arr.toarray()
        if not isinstance(arr, np.ndarray) or arr.dtype == object or arr.dtype.kind not in "biuf":
            raise DataError(f"key {k!r} of {path} {where} is not a numeric array")
        out[k] = arr
    return out


def features_and_labels(
    path: Path, *, dataset: str, domain: str, n_features: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """``fts`` (N, D) as float64 and ``labels`` (N,) as int64 from a benchmark file, with
    shapes checked (``n_features`` the expected D, or None)."""
    arrays = read_mat(path, ("fts", "labels"), dataset=dataset, domain=domain)
    x, y = arrays["fts"], arrays["labels"]
    where = f"{path} (dataset {dataset}, domain {domain})"
    if x.ndim != 2:
        raise DataError(f"'fts' of {where} has shape {x.shape}, expected (N, D)")
    if n_features is not None and x.shape[1] != n_features:
        raise DataError(f"'fts' of {where} has {x.shape[1]} features, expected {n_features}")
    if y.size != x.shape[0] or (y.ndim == 2 and 1 not in y.shape) or y.ndim > 2:
        raise DataError(f"'labels' of {where} has shape {y.shape}, expected ({x.shape[0]}, 1)")
    if x.shape[0] == 0:
        raise DataError(f"empty domain: no samples in {where}")
    y = y.reshape(-1)
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise DataError(f"'labels' of {where} are not integers")
    return x.astype(np.float64), y.astype(np.int64)
