"""Convert the JDA release's ``MNIST_vs_USPS.mat`` into the embedded ``digits16.npz``.

Usage: ``python -m dalib.data.convert_digits SRC.mat OUT.npz``

The source holds ``X_src`` (256, 2000) MNIST and ``X_tar`` (256, 1800) USPS, floats in [0, 1],
one sample per column (a column reshaped (16, 16) in C order is an upright digit), and
``Y_src``/``Y_tar`` (N, 1) in 1..10 where label k is the digit k-1.

The output holds, per domain ``d`` in (mnist, usps): ``d_images`` (N, 16, 16) uint8,
``d_labels`` (N,) uint8 in 0..9 and ``d_scale`` (a scalar): the image is ``d_images / d_scale``.
The scale is 256 when every value is exactly k/256 (the MNIST part: stored losslessly) or
255 when every value is k/255, else 255 with rounding (the USPS part: error <= 1/510).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np

from dalib.data.matfile import read_mat
from dalib.errors import DalibError, DataError

__all__ = ["convert", "main", "quantize"]

DOMAINS = {"mnist": ("X_src", "Y_src"), "usps": ("X_tar", "Y_tar")}


def quantize(x: np.ndarray) -> tuple[np.ndarray, int]:
    """(uint8 array, scale) with ``x ≈ array / scale``; lossless when ``x`` is on the
    k/255 or k/256 grid. ``x`` must lie in [0, 1]."""
    for scale in (255, 256):
        q = np.round(x * scale)
        if q.max() <= 255 and np.array_equal(q / scale, x):
            return q.astype(np.uint8), scale
    return np.round(x * 255).astype(np.uint8), 255


def convert(src: Path, out: Path) -> dict[str, int]:
    """Write ``out`` from ``src``; returns the sample count per domain."""
    if not src.is_file():
        raise DataError(f"source file not found: {src}")
    keys = tuple(k for pair in DOMAINS.values() for k in pair)
    m = read_mat(src, keys, dataset="digits", domain="mnist, usps")
    arrays: dict[str, np.ndarray] = {}
    counts = {}
    for dom, (xkey, ykey) in DOMAINS.items():
        x = np.asarray(m[xkey], dtype=np.float64)  # (256, N): one sample per column
        y = np.asarray(m[ykey]).reshape(-1)
        if x.shape[0] != 256 or x.shape[1] != y.size:
            raise DataError(f"{src}: {xkey} has shape {x.shape}, {ykey} {y.size} labels")
        if not np.all(np.isfinite(x)) or x.min() < 0 or x.max() > 1:
            raise DataError(f"{src}: {xkey} is not in [0, 1]")
        if y.min() < 1 or y.max() > 10:
            raise DataError(f"{src}: {ykey} is not in 1..10")
        images = x.T.reshape(-1, 16, 16)  # (N, 16, 16), C order: upright digits
        q, scale = quantize(images)
        arrays[f"{dom}_images"] = q
        arrays[f"{dom}_labels"] = (y - 1).astype(np.uint8)  # label k is digit k-1
        arrays[f"{dom}_scale"] = np.array(scale, dtype=np.int64)
        counts[dom] = int(y.size)
    out.parent.mkdir(parents=True, exist_ok=True)
    from dalib.runner import atomic_write_bytes

    # through a file beside it, then renamed: it is usually the package's own file, which every
    # digits run reads, and a full disk (or a kill) had left it cut short
    atomic_write_bytes(out, lambda fh: np.savez_compressed(fh, **arrays))
    return counts


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    src, out = Path(args[0]), Path(args[1])
    try:
        counts = convert(src, out)
    except DalibError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot write {out}: {exc.strerror}", file=sys.stderr)
        return 2
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    print(f"wrote {out} ({out.stat().st_size} bytes): {counts}; source sha256 {digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
