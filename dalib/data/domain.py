"""A loaded domain: a torch Dataset plus what a model needs to know about it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from dalib.errors import DataError

__all__ = ["Domain"]


@dataclass(frozen=True, eq=False)
class Domain:
    """One domain of a dataset, ready for a DataLoader.

    ``dataset`` yields ``(x, y)``: ``x`` a float32 tensor of shape ``input_shape``, ``y`` the
    class index (an int64 scalar tensor for in-memory data, an ``int`` for image folders).
    In-memory domains (digits, feature files) also expose the whole domain as ``x`` (N, ...)
    float32 and ``y`` (N,) int64; both are ``None`` for image folders, which decode lazily.
    ``origin`` says where the data came from (a file, a folder, "embedded").
    """

    name: str
    dataset: Dataset
    num_classes: int
    input_shape: tuple[int, ...]
    classes: list[str]
    x: torch.Tensor | None = None
    y: torch.Tensor | None = None
    origin: str = ""
    dataset_name: str = field(default="")

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    @classmethod
    def from_arrays(
        cls,
        name: str,
        x: np.ndarray | torch.Tensor,
        y: np.ndarray | torch.Tensor,
        *,
        classes: Sequence[str] | None = None,
        num_classes: int | None = None,
        origin: str = "",
        dataset_name: str = "",
    ) -> Domain:
        """Build an in-memory domain from a feature/image array and integer labels.

        ``x`` (N, ...) is cast to float32, ``y`` (N,) to int64. Labels must lie in
        ``0 .. num_classes-1`` (``num_classes`` defaults to ``len(classes)``, else ``max(y)+1``).
        Raises :class:`~dalib.errors.DataError` for an empty domain, NaN/inf values, a label
        count that does not match, or labels out of range.
        """
        where = _where(name, dataset_name, origin)
        xt = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
        yt = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y)
        xt = xt.to(torch.float32).contiguous()
        yt = yt.reshape(-1)
        if xt.ndim == 0 or xt.shape[0] == 0:
            raise DataError(f"empty domain: no samples in {where}")
        if yt.shape[0] != xt.shape[0]:
            raise DataError(f"{xt.shape[0]} samples but {yt.shape[0]} labels in {where}")
        if yt.is_floating_point():
            if not bool(torch.all(yt == yt.round())):
                raise DataError(f"labels are not integers in {where}")
        yt = yt.to(torch.int64)
        check_finite(xt, where)
        if classes is not None:
            classes = [str(c) for c in classes]
            if num_classes is None:
                num_classes = len(classes)
        if num_classes is None:
            num_classes = int(yt.max()) + 1
        if classes is None:
            classes = [str(i) for i in range(num_classes)]
        if len(classes) != num_classes:
            raise DataError(f"{len(classes)} class names for {num_classes} classes in {where}")
        lo, hi = int(yt.min()), int(yt.max())
        if lo < 0 or hi >= num_classes:
            raise DataError(f"labels span {lo}..{hi}, expected 0..{num_classes - 1} in {where}")
        return cls(
            name=name,
            dataset=TensorDataset(xt, yt),
            num_classes=num_classes,
            input_shape=tuple(xt.shape[1:]),
            classes=list(classes),
            x=xt,
            y=yt,
            origin=origin,
            dataset_name=dataset_name,
        )


def check_finite(x: torch.Tensor, where: str) -> None:
    """Raise DataError if ``x`` holds NaN or infinite values."""
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        n_bad = int(bad.reshape(bad.shape[0], -1).any(dim=1).sum())
        raise DataError(f"NaN or infinite features in {n_bad} sample(s) of {where}")


def _where(name: str, dataset_name: str, origin: str) -> str:
    parts = [f"domain {name}"]
    if dataset_name:
        parts.insert(0, f"dataset {dataset_name}")
    text = ", ".join(parts)
    return f"{origin} ({text})" if origin else text
