"""Domain datasets: a registry of named datasets whose domains load as torch Datasets.

Built in: ``digits`` (MNIST/USPS 16x16, embedded), ``digits-full`` (MNIST 15000 and USPS
9298 at 16x16, under a data root), ``office-caltech-surf`` and ``amazon-reviews`` (feature
files under a data root), ``image-folder`` (any DATA/DOMAIN/CLASS/IMAGE folder). See
docs/data.md.

>>> from dalib.data import load_domain
>>> src = load_domain("digits", "M")
>>> src.name, src.input_shape, len(src)
('mnist', (1, 16, 16), 2000)
"""

from __future__ import annotations

# The dataset modules register themselves on import.
from dalib.data import (  # noqa: F401
    amazon_reviews,
    digits,
    digits_full,
    image_folder,
    office_caltech,
)
from dalib.data.domain import UNLABELLED, Domain
from dalib.data.registry import (
    DatasetInfo,
    LoadRequest,
    default_data_root,
    get_dataset,
    infer_dataset,
    list_datasets,
    list_domains,
    load_domain,
    register_dataset,
    unregister_dataset,
)

__all__ = [
    "DatasetInfo",
    "Domain",
    "LoadRequest",
    "UNLABELLED",
    "default_data_root",
    "get_dataset",
    "infer_dataset",
    "list_datasets",
    "list_domains",
    "load_domain",
    "register_dataset",
    "unregister_dataset",
]
