"""Office-Caltech10 with SURF bag-of-words features (Gong et al. CVPR 2012)."""

from __future__ import annotations

import numpy as np

from dalib.data.domain import Domain
from dalib.data.matfile import features_and_labels, find_data_file
from dalib.data.registry import DatasetInfo, LoadRequest, register_dataset
from dalib.errors import DataError

__all__ = ["CLASSES", "INFO", "preprocess_surf"]

FOLDER = "office_caltech10_surf"
FILES = {
    "amazon": "amazon_SURF_L10.mat",
    "caltech": "Caltech10_SURF_L10.mat",
    "dslr": "dslr_SURF_L10.mat",
    "webcam": "webcam_SURF_L10.mat",
}
# Label k (1..10) in the files is CLASSES[k-1]; the per-class counts of the amazon file match
# Office-31's amazon folders in this (alphabetical) order.
CLASSES = [
    "back_pack",
    "bike",
    "calculator",
    "headphones",
    "keyboard",
    "laptop_computer",
    "monitor",
    "mouse",
    "mug",
    "projector",
]

INFO = DatasetInfo(
    name="office-caltech-surf",
    description="Office-Caltech10, 800-bin SURF bag-of-words, 10 classes, 4 domains",
    domains=("amazon", "caltech", "dslr", "webcam"),
    aliases={"A": "amazon", "C": "caltech", "caltech10": "caltech", "D": "dslr", "W": "webcam"},
    kind="features",
    num_classes=10,
    needs="data_root",
    citation="Gong et al., CVPR 2012; Saenko et al., ECCV 2010; Griffin et al., Caltech-256, 2007",
)


def preprocess_surf(counts: np.ndarray) -> np.ndarray:
    """The data's own preprocessing: each row divided by its sum, then each feature z-scored
    within the domain (population std). A zero row is divided by 1 (no NaN: it is zeros
    until the z-score); a constant feature becomes 0.

    counts: (N, D) bag-of-words histogram → (N, D) float64.
    """
    x = np.asarray(counts, dtype=np.float64)
    total = x.sum(axis=1, keepdims=True)  # (N, 1)
    x = x / np.where(total == 0, 1.0, total)
    mean = x.mean(axis=0)  # (D,)
    std = x.std(axis=0)  # population std, as MATLAB's zscore(x, 1)
    # constant by its values, not by its std: the mean's rounding leaves a std of ~1e-17
    constant = np.ptp(x, axis=0) == 0  # (D,)
    return np.where(constant, 0.0, (x - mean) / np.where(constant | (std == 0), 1.0, std))


def load(req: LoadRequest) -> Domain:
    assert req.data_root is not None
    path = find_data_file(
        req.data_root, FOLDER, FILES[req.domain], dataset=INFO.name, domain=req.domain
    )
    x, y = features_and_labels(path, dataset=INFO.name, domain=req.domain, n_features=800)
    # Non-finite counts would silently turn into NaN rows: Domain.from_arrays rejects them,
    # so check the raw file first and report that.
    if not np.all(np.isfinite(x)):
        raise DataError(
            f"NaN or infinite features in {path} (dataset {INFO.name}, domain {req.domain})"
        )
    # the preprocessing takes the files' SURF word counts: features preprocessed before (z-scored,
    # normalised) had been normalised and z-scored again, without a word
    if x.size and (x.min() < 0 or not np.array_equal(x, np.round(x))):
        raise DataError(
            f"features of {path} are not counts (non-negative integers; min {x.min():g}): the files of "
            f"DATA.md hold SURF word counts, which dalib normalises itself (dataset {INFO.name}, domain {req.domain})"
        )
    # the file numbers its classes 1..10: say so in its own numbers, not in the shifted ones
    if y.size and (y.min() < 1 or y.max() > len(CLASSES)):
        raise DataError(
            f"labels span {y.min():g}..{y.max():g}, expected 1..{len(CLASSES)} (the file's class numbers) "
            f"in {path} (dataset {INFO.name}, domain {req.domain})"
        )
    return Domain.from_arrays(
        req.domain,
        preprocess_surf(x),
        y - 1,  # 1..10 -> 0..9
        classes=CLASSES,
        origin=str(path),
        dataset_name=INFO.name,
    )


register_dataset(INFO, load)
