"""Amazon product reviews, binary sentiment, 400-d features (Chen et al. ICML 2012)."""

from __future__ import annotations

import numpy as np

from dalib.data.domain import Domain
from dalib.data.matfile import features_and_labels, find_data_file
from dalib.data.registry import DatasetInfo, LoadRequest, register_dataset
from dalib.errors import DataError

__all__ = ["INFO"]

FOLDER = "amazon_review_400"
FILES = {
    "books": "books_400.mat",
    "dvd": "dvd_400.mat",
    "electronics": "elec_400.mat",
    "kitchen": "kitchen_400.mat",
}

INFO = DatasetInfo(
    name="amazon-reviews",
    description="Amazon reviews sentiment (negative/positive), 400-d mSDA features, 4 domains",
    domains=("books", "dvd", "electronics", "kitchen"),
    aliases={"B": "books", "D": "dvd", "E": "electronics", "elec": "electronics", "K": "kitchen"},
    kind="features",
    num_classes=2,
    needs="data_root",
    citation="Chen et al., ICML 2012 (mSDA); Blitzer et al., ACL 2007",
)


def load(req: LoadRequest) -> Domain:
    assert req.data_root is not None
    path = find_data_file(
        req.data_root, FOLDER, FILES[req.domain], dataset=INFO.name, domain=req.domain
    )
    x, y = features_and_labels(path, dataset=INFO.name, domain=req.domain, n_features=400)
    found = np.unique(y)
    # (a -1/+1 copy had been told to give y=None, the Python API's words; NaN features are told first, below)
    if not set(found.tolist()) <= {0, 1} and np.isfinite(x).all():
        shown = ", ".join(f"{v:g}" for v in found[:5]) + (", ..." if len(found) > 5 else "")
        raise DataError(f"labels of {path} are {shown}: expected 0 (negative) and 1 (positive) "
                        f"(dataset {INFO.name}, domain {req.domain})")
    # Features are used as given (already in [0, 1]); from_arrays rejects NaN/inf.
    return Domain.from_arrays(
        req.domain,
        x,
        y,
        classes=["negative", "positive"],
        origin=str(path),
        dataset_name=INFO.name,
    )


register_dataset(INFO, load)
