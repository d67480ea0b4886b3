"""MNIST and USPS at 16x16, the JDA release's pair, embedded in the package."""

from __future__ import annotations

import zipfile
import zlib
from importlib import resources

import numpy as np

from dalib.data.domain import Domain
from dalib.data.registry import DatasetInfo, LoadRequest, register_dataset
from dalib.errors import DataError

__all__ = ["INFO", "read_digits16"]

DIGITS_FILE = "digits16.npz"

INFO = DatasetInfo(
    name="digits",
    description="MNIST (2000) and USPS (1800) digits, 16x16 grey, embedded (JDA subsets)",
    domains=("mnist", "usps"),
    aliases={"M": "mnist", "U": "usps"},
    kind="image",
    num_classes=10,
    needs="embedded",
    citation="Long et al., ICCV 2013 (JDA); LeCun et al., 1998 (MNIST); Hull, TPAMI 1994 (USPS)",
)


def read_digits16(domain: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 16, 16) float32 in [0, 1], labels (N,) int64 in 0..9) of ``mnist`` or ``usps``
    from the embedded file."""
    res = resources.files(__package__).joinpath(DIGITS_FILE)
    regen = "reinstall dalib or rebuild it with python -m dalib.data.convert_digits"
    try:
        with res.open("rb") as fh, np.load(fh) as z:
            images, labels, scale = (z[f"{domain}_{k}"] for k in ("images", "labels", "scale"))
    except FileNotFoundError as exc:
        raise DataError(
            f"embedded data file not found: {res} (dataset digits, domain {domain}; {regen})"
        ) from exc
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:  # (zlib: a damaged member)
        raise DataError(
            f"corrupt embedded data file: {res} (dataset digits, domain {domain}; {regen}): {exc}"
        ) from exc
    x = images.astype(np.float32) / np.float32(scale)  # (N, 16, 16) in [0, 1]
    return x, labels.astype(np.int64)


def load(req: LoadRequest) -> Domain:
    x, y = read_digits16(req.domain)
    return Domain.from_arrays(
        req.domain,
        x[:, None],  # (N, 1, 16, 16)
        y,
        classes=[str(d) for d in range(10)],
        origin="embedded " + DIGITS_FILE,
        dataset_name=INFO.name,
    )


register_dataset(INFO, load)
