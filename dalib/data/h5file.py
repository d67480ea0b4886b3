"""Reading numeric arrays from an HDF5 file (h5py), with one-line errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dalib.data.matfile import unreadable
from dalib.errors import DataError

__all__ = ["read_h5"]

# What h5py raises for a file that is not HDF5, truncated or damaged (OSError: bad signature,
# truncated file, a chunk whose filter fails), for an object whose header is damaged
# (KeyError, RuntimeError) and for an unreadable layout or datatype (ValueError, TypeError).
H5_ERRORS = (OSError, KeyError, RuntimeError, ValueError, TypeError)


def read_h5(
    path: Path, keys: tuple[str, ...], *, dataset: str, domain: str
) -> dict[str, np.ndarray]:
    """The datasets ``keys`` (paths inside the file, ``"train/data"``) of an HDF5 file, each
    read whole into memory; :class:`DataError` if the file is unreadable, a key is missing or
    is not a numeric array."""
    where = f"(dataset {dataset}, domain {domain})"
    try:
        import h5py
    except ImportError as exc:
        raise DataError(f"reading {path} {where} needs h5py: pip install h5py") from exc
    out: dict[str, np.ndarray] = {}
    try:
        with h5py.File(path, "r") as fh:
            missing = [k for k in keys if k not in fh]
            if missing:
                names: list[str] = []
                fh.visit(names.append)  # every group and dataset, recursively
                found = [n for n in names if isinstance(fh[n], h5py.Dataset)]
                raise DataError(
                    f"{path} {where} lacks key(s) {', '.join(missing)}; "
                    f"it holds: {', '.join(sorted(found)) or 'nothing'}"
                )
            for k in keys:
                obj = fh[k]
                if not isinstance(obj, h5py.Dataset) or obj.dtype.kind not in "biuf":
                    raise DataError(f"key {k!r} of {path} {where} is not a numeric array")
                out[k] = np.asarray(obj[()])
    except DataError:
        raise
    except H5_ERRORS as exc:
        raise unreadable("HDF5 file", path, where, exc) from exc
    return out
