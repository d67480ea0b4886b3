"""A loaded domain: a torch Dataset plus what a model needs to know about it."""

from __future__ import annotations

import collections
import dataclasses
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import Dataset, TensorDataset

from dalib._arrays import number_tensor
from dalib.errors import DataError, warn_outside_dalib

__all__ = ["Domain", "UNLABELLED", "labelled_accuracy"]

#: the label of a sample whose class is unknown: an unlabelled target domain's samples
UNLABELLED = -1


def numbered_classes(num_classes: int) -> list[str]:
    """The class names of a domain given none: ``"0"`` to ``"C-1"``."""
    return [str(i) for i in range(num_classes)]


def matched_by_position(classes: Sequence[str], other: Sequence[str]) -> bool:
    """Whether two class lists are matched by position, not by name: they are as long, one of
    them is numbered (a domain given no class names, ``"0"`` to ``"C-1"``) and no name is in
    both. Where names are shared, as digits' 0..9 are, they are matched by name: a numbered
    list beside the same numbers in another order is another order, not other names."""
    a, b = list(classes), list(other)
    return len(a) == len(b) and numbered_classes(len(a)) in (a, b) and not set(a) & set(b)


def labelled_accuracy(pred: Any, labels: Any) -> float | None:
    """Accuracy (a fraction) of the predictions (N,) over the labelled samples (those not
    :data:`UNLABELLED`); None when there are none. Arrays or CPU tensors."""
    if labels is None:
        return None
    known = np.asarray(labels) != UNLABELLED
    return float(np.mean(np.asarray(pred)[known] == np.asarray(labels)[known])) if known.any() else None


def sample_of(domain: Any) -> str:
    """"a sample of domain NAME (DATASET)": how errors name a sample of ``domain``."""
    return f"a sample of domain {domain.name!r}{' (' + domain.dataset_name + ')' if domain.dataset_name else ''}"


def _one_number(y: Any) -> bool:
    """Whether ``y`` is a tensor or numpy value of one element (its ``item()`` the label)."""
    if isinstance(y, torch.Tensor):
        return y.numel() == 1
    return isinstance(y, (np.ndarray, np.generic)) and y.size == 1


def collate_items(items: list[Any], where: str = "a sample") -> tuple[torch.Tensor, list[Any]]:
    """A batch of ``(x, y)`` items as ``(x stacked, [y, ...] as the dataset gave them)``, the
    one collation of every loader of a domain's dataset (``where`` names a sample of it in
    errors: :func:`sample_of`). The labels of a dataset of one's own may come in mixed kinds
    (an int beside a numpy integer or a one-element tensor), which torch's collate refuses:
    :func:`label_tensor` reads them (a one-element tensor or numpy value as its number: from
    loader workers, each tensor would be a shared-memory file of its own). Inputs given as
    numpy arrays (flipped ones too: negative strides) or lists of numbers are made tensors,
    ones that require grad are detached. An item that is no ``(x, y)`` pair, an input that
    is no array of numbers (a PIL image) or inputs of different shapes in one batch are one
    :class:`DataError` line."""
    xs, ys = [], []
    for item in items:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            what = f"a {type(item).__name__} of {len(item)}" if isinstance(item, (tuple, list)) else \
                f"a {type(item).__name__}"
            raise DataError(f"{where} is {what}: a dataset's items are (x, y) pairs, its input and its label")
        x, y = item
        if isinstance(x, np.ndarray) and x.dtype.kind in "biufc":
            x = torch.from_numpy(np.ascontiguousarray(x))  # (a flipped image's negative strides: copied)
        elif not isinstance(x, torch.Tensor):
            try:
                x = torch.as_tensor(x)  # (lists of numbers)
            except (TypeError, ValueError, RuntimeError):
                raise DataError(f"{where} has an input of type {type(x).__name__}: inputs are tensors or arrays of "
                                "numbers (an image dataset converts its images, e.g. with a transform)") from None
        xs.append(x.detach())
        ys.append(y.item() if _one_number(y) else y)
    shapes = list(dict.fromkeys(tuple(x.shape) for x in xs))
    if len(shapes) > 1:
        raise DataError(f"{where.replace('a sample', 'the samples', 1)} have inputs of different shapes, {shapes[0]} "
                        f"and {shapes[1]}: every input of a domain has its input_shape")
    return torch.utils.data.default_collate(xs), ys


def label_tensor(labels: Any, domain: Any) -> torch.Tensor:
    """A batch's labels from ``domain``'s dataset (a plugin's own may give floats, numpy
    numbers, one-element tensors or text) as class indices, int64 (B,). A label that is no
    whole number is one :class:`DataError` line (``int()`` had truncated 0.9 to class 0; text
    had failed in the final scoring, after training)."""
    if not isinstance(labels, torch.Tensor):  # one label per sample, as the dataset gave them
        values = [y.item() if _one_number(y) else y for y in labels]
        for y in values:
            if isinstance(y, bool) or not isinstance(y, (int, float)):
                raise DataError(f"{sample_of(domain)} is labelled {y!r} ({type(y).__name__}): labels are class "
                                "indices, integers 0..C-1 (-1: unlabelled)")
            if isinstance(y, int) and not -(2**63) <= y < 2**63:  # (no int64: torch.tensor's overflow)
                raise DataError(f"{sample_of(domain)} is labelled {y}: labels are class indices, integers 0..C-1 "
                                "(-1: unlabelled)")
        labels = torch.tensor(values, dtype=torch.float64 if any(isinstance(y, float) for y in values) else torch.int64)
    if labels.dim() > 1 and labels[0].numel() == 1:  # (B, 1): one-element label tensors, collated
        labels = labels.reshape(len(labels))
    if labels.dim() != 1 or labels.dtype == torch.bool or labels.is_complex():
        raise DataError(f"the labels of domain {domain.name!r} are {tuple(labels.shape)} {labels.dtype}: one class "
                        "index per sample, an integer 0..C-1 (-1: unlabelled)")
    if labels.is_floating_point():
        whole = (labels == labels.round()) & (labels.abs() < 2**53)  # (NaN: not whole; inf and 1e20 no int64)
        if not bool(whole.all()):
            raise DataError(f"{sample_of(domain)} is labelled {labels[~whole][0].item()!r}: labels are class "
                            "indices, integers 0..C-1 (-1: unlabelled)")
    return labels.long()


def check_labels(y: torch.Tensor, domain: Any, *, labelled: bool) -> None:
    """Raise DataError when a label of ``y`` (the labels of samples of ``domain``) lies
    outside ``0 .. num_classes-1``: :data:`UNLABELLED` (−1) too where ``labelled`` (a source)."""
    if y.numel() == 0:
        return
    low, high = int(y.min()), int(y.max())
    floor = 0 if labelled else UNLABELLED
    if low < floor or high >= domain.num_classes:
        bad = low if low < floor else high
        what = "is unlabelled (-1): the source must be labelled" if bad == UNLABELLED and labelled else (
            f"is labelled {bad}: labels must lie in 0..{domain.num_classes - 1}"
            + ("" if labelled else f", or be {UNLABELLED} for an unlabelled sample"))
        raise DataError(f"{sample_of(domain)} {what}")


@dataclass(frozen=True, eq=False)
class Domain:
    """One domain of a dataset, ready for a DataLoader.

    ``dataset`` yields ``(x, y)``: ``x`` a float32 tensor of shape ``input_shape``, ``y`` the
    class index (an int64 scalar tensor for in-memory data, an ``int`` for image folders), or
    :data:`UNLABELLED` (−1) in an unlabelled domain.
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

    def known_labels(self) -> torch.Tensor | None:
        """The labels (N,) int64, :data:`UNLABELLED` for an unlabelled sample, when they are
        known without reading the samples (in-memory domains, image folders); else None."""
        if self.y is not None:
            return self.y
        targets = getattr(self.dataset, "targets", None)
        if targets is None:
            return None
        try:  # a plugin's dataset may hold other targets (class names, several labels per sample)
            labels = torch.as_tensor(targets, dtype=torch.int64)
        except (TypeError, ValueError, RuntimeError):
            return None
        return labels if labels.dim() == 1 and len(labels) == len(self) else None

    def with_classes(self, classes: Sequence[str]) -> Domain:
        """This domain with its labels numbered as ``classes`` (a trained network's, which may
        hold more): each of its own classes must be among them, matched by name.
        :data:`UNLABELLED` stays. Raises :class:`DataError` naming the classes ``classes`` lacks."""
        order = {c: i for i, c in enumerate(classes)}
        labels = self.known_labels()
        if labels is not None:
            check_labels(labels, self, labelled=False)
        # the classes its samples hold: an image folder's class list is the union over the
        # folder's domains, and a class that only a sibling domain has is no matter here
        own = self.classes if labels is None else [self.classes[i] for i in sorted(set(labels[labels >= 0].tolist()))]
        unknown = [c for c in own if c not in order]
        if unknown:
            raise DataError(f"domain {self.name} has {len(unknown)} class(es) the network does not know: "
                            f"{', '.join(map(str, unknown[:3]))}{' ...' if len(unknown) > 3 else ''} "
                            f"(it knows {', '.join(map(str, list(classes)[:5]))}{' ...' if len(classes) > 5 else ''})")
        mapping = [order.get(c, UNLABELLED) for c in self.classes]  # (a class no sample holds: any number)
        if self.x is not None and self.y is not None:
            lookup = torch.tensor(mapping or [0], dtype=torch.int64)
            y = torch.where(self.y >= 0, lookup[self.y.clamp_min(0)], self.y)
            dataset: Dataset = TensorDataset(self.x, y)
        elif hasattr(self.dataset, "relabelled"):  # an image folder's
            y, dataset = None, self.dataset.relabelled(mapping)
        else:
            raise DataError(f"domain {self.name} names its classes otherwise than the network, and its dataset "
                            "cannot be relabelled")
        return dataclasses.replace(self, dataset=dataset, y=y, classes=list(classes), num_classes=len(classes))

    def holdout_indices(self, fraction: float, seed: int) -> np.ndarray:
        """The samples :meth:`split` holds out, as sorted indices (int64): ``round(fraction *
        n_c)`` of each class c (at most n_c − 1, so that every class keeps one), drawn with
        ``seed``. Where the labels cannot be read without the samples (a dataset of a plugin's
        own), the draw ignores the classes. The same fraction and seed give the same samples.
        Raises :class:`DataError` when none would be held out."""
        rng = np.random.default_rng([seed, 0x5E1EC7])  # a stream of its own: the run's seed draws the rest
        labels = self.known_labels()
        groups = ([np.arange(len(self))] if labels is None else
                  [np.flatnonzero(labels.numpy() == c) for c in np.unique(labels.numpy())])
        held = [rng.permutation(idx)[: min(int(round(fraction * len(idx))), len(idx) - 1)] for idx in groups]
        held_idx = np.sort(np.concatenate(held)).astype(np.int64)
        if len(held_idx) == 0:
            raise DataError(f"holding out {fraction:g} of domain {self.name!r} ({len(self)} samples"
                            f"{'' if labels is None else f', {len(groups)} classes'}) leaves no sample to hold out: "
                            "raise the fraction")
        return held_idx

    def split(self, fraction: float, seed: int) -> tuple[Domain, Domain]:
        """This domain as two disjoint parts, ``(kept, held)``: ``held`` the samples of
        :meth:`holdout_indices`, ``kept`` the rest, each in their order."""
        return self.partition(self.holdout_indices(fraction, seed))

    def partition(self, held_idx: np.ndarray) -> tuple[Domain, Domain]:
        """``(the samples not in held_idx, the samples held_idx)``, each in their order."""
        keep = np.ones(len(self), dtype=bool)
        keep[held_idx] = False
        return self.subset(np.flatnonzero(keep)), self.subset(held_idx)

    def subset(self, idx: np.ndarray) -> Domain:
        """The samples ``idx`` (int64 indices) of this domain, in that order, as a domain of its own."""
        index = torch.from_numpy(np.asarray(idx, dtype=np.int64))
        if self.x is not None and self.y is not None:
            x, y = self.x[index], self.y[index]
            return dataclasses.replace(self, dataset=TensorDataset(x, y), x=x, y=y)
        if hasattr(self.dataset, "subset"):  # an image folder's: it can still be relabelled
            return dataclasses.replace(self, dataset=self.dataset.subset(index.tolist()))
        return dataclasses.replace(self, dataset=_Subset(self.dataset, index.tolist(), self.known_labels()))

    @classmethod
    def from_arrays(
        cls,
        name: str,
        x: npt.ArrayLike | torch.Tensor,
        y: npt.ArrayLike | torch.Tensor | None,
        *,
        classes: Sequence[str] | None = None,
        num_classes: int | None = None,
        origin: str = "",
        dataset_name: str = "",
    ) -> Domain:
        """Build an in-memory domain from a feature/image array and integer labels.

        ``x`` (N, ...) is cast to float32, ``y`` (N,) to int64. Labels must lie in
        ``0 .. num_classes-1`` (``num_classes`` defaults to ``len(classes)``, else ``max(y)+1``).
        ``y=None`` makes an unlabelled domain (a target whose classes are unknown: every label
        is :data:`UNLABELLED`); it needs ``num_classes`` or ``classes``, the source's.
        Raises :class:`~dalib.errors.DataError` for an empty domain, NaN/inf values, a label
        count that does not match, labels out of range, or class names that repeat (compared
        as text: ``1`` and ``"1"`` are one name).
        """
        where = _where(name, dataset_name, origin)
        if num_classes is not None:
            num_classes = _whole_number(num_classes, "num_classes", where)
            if num_classes < 1:
                raise DataError(f"num_classes must be at least 1, got {num_classes} in {where}")
        if y is None:
            if classes is None and num_classes is None:
                raise DataError(f"an unlabelled domain needs num_classes or classes (the source's) in {where}")
            x = _as_number_tensor(x, "features", where)  # (a sparse matrix has no len(), a 0-d array neither)
            n = x.shape[0] if x.ndim else 0  # (0-d features: refused below, as labelled ones are)
            labelled = cls.from_arrays(name, x, np.zeros(n, dtype=np.int64), classes=classes,
                                       num_classes=num_classes, origin=origin, dataset_name=dataset_name)
            labelled.y.fill_(UNLABELLED)  # the tensor the dataset holds too
            return labelled
        # kept on the CPU, like every domain: the runner moves each batch to its device
        xt = _as_number_tensor(x, "features", where).detach().cpu()
        yt = _as_number_tensor(y, "labels", where).detach().cpu()
        wide = xt if xt.is_floating_point() and xt.dtype.itemsize > 4 else None
        xt = xt.to(torch.float32).contiguous()
        if wide is not None and not bool(torch.isfinite(xt).all()) and bool(torch.isfinite(wide).all()):
            raise DataError(f"features up to {float(wide.abs().max()):.3g} in {where} overflow float32 (up to "
                            f"{torch.finfo(torch.float32).max:.3g}), the precision dalib trains in: scale them")
        if yt.ndim > 1 and tuple(yt.shape[1:]) != (1,):  # (N, C) one-hot or scores: flattened, N·C "labels"
            raise DataError(f"labels of shape {tuple(yt.shape)} in {where}: give one class index per sample, "
                            "shape (N,) (from one-hot labels or scores: y.argmax(1))")
        yt = yt.reshape(-1)
        if xt.ndim > 0 and xt.shape[0] == 0:
            raise DataError(f"empty domain: no samples in {where}")
        if xt.ndim <= 1 or xt[0].numel() == 0:
            raise DataError(f"features of shape {tuple(xt.shape)} in {where}: give (N, D) or (N, C, H, W) "
                            "(one feature per sample: reshape to (N, 1))")
        if wide is not None:
            _warn_if_blurred(wide, where)  # (NaN and inf compare false: check_finite says so next)
        if yt.shape[0] != xt.shape[0]:
            raise DataError(f"{xt.shape[0]} samples but {yt.shape[0]} labels in {where}")
        if yt.is_floating_point():
            if not bool(torch.all(torch.isfinite(yt) & (yt == yt.round()))):
                raise DataError(f"labels are not integers in {where}")
            if bool((yt.abs() >= 2**53).any()):
                raise DataError(f"labels span {float(yt.min()):g}..{float(yt.max()):g}, expected 0..C-1 in {where}")
        yt = yt.to(torch.int64)
        check_finite(xt, where)
        _warn_if_unusual(xt, where)
        if classes is not None:
            classes = [str(c) for c in classes]
            repeated = sorted({c for c, n in collections.Counter(classes).items() if n > 1})
            if repeated:  # a label of one of them would be scored by name as the other's
                raise DataError(f"class names repeat in {where}: {', '.join(map(repr, repeated[:3]))}"
                                f"{' ...' if len(repeated) > 3 else ''} (names are compared as text: 1 and '1' are "
                                "one name); give each class a name of its own")
            if num_classes is None:
                num_classes = len(classes)
        lo, hi = int(yt.min()), int(yt.max())
        # what mends labels outside 0..C-1: indices for labels of another kind (numpy's
        # np.unique(y, return_inverse=True)[1] gives them); a class count for labels beyond it
        to_indices = "map the labels to class indices, e.g. np.unique(y, return_inverse=True)[1]"
        if lo == UNLABELLED and hi == 1 and bool(((yt == -1) | (yt == 1)).all()):  # the -1/+1 of binary tasks
            raise DataError(f"labels are -1 and 1 in {where}: labels are class indices 0..C-1, so give (y + 1) // 2 "
                            f"({UNLABELLED} marks an unlabelled sample)")
        if lo == UNLABELLED:
            raise DataError(f"labels span {lo}..{hi} in {where}: labels are class indices 0..C-1, and a domain is "
                            f"labelled or not, not partly ({UNLABELLED}, UNLABELLED: give y=None for an unlabelled domain, "
                            f"or {to_indices})")
        if num_classes is None:
            if lo < 0:
                raise DataError(f"labels span {lo}..{hi} in {where}: labels are class indices 0..C-1 ({to_indices})")
            if hi >= max(MAX_INFERRED_CLASSES, len(yt)):  # before a class list that size is built
                count = f", or give num_classes={hi + 1}" if hi < 10**7 else ""  # (not a list of 2**40 class names)
                raise DataError(f"labels span {lo}..{hi} in {where}: labels are class indices 0..C-1 "
                                f"({to_indices}{count})")
            num_classes = hi + 1
        if classes is None:
            classes = numbered_classes(num_classes)
        if len(classes) != num_classes:
            raise DataError(f"{len(classes)} class names for {num_classes} classes in {where}")
        if lo < 0 or hi >= num_classes:
            raise DataError(f"labels span {lo}..{hi}, expected 0..{num_classes - 1} in {where}"
                            + (f" ({to_indices})" if lo < 0 else ""))
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


#: without ``num_classes``, labels beyond this (and beyond the sample count) are refused, not
#: taken as that many classes
MAX_INFERRED_CLASSES = 100_000


def _as_number_tensor(a: Any, what: str, where: str) -> torch.Tensor:
    """``a`` as :func:`~dalib._arrays.number_tensor` reads it (a sparse matrix, complex numbers
    or text are one line, as in the shallow estimators)."""
    hint = " (map class names to indices 0..C-1 and pass classes=)" if what == "labels" else ""
    return number_tensor(a, what, lambda message: DataError(f"{message} in {where}{hint}"))


def _warn_if_blurred(wide: torch.Tensor, where: str) -> None:
    """Warn when float32, which dalib casts features to, keeps fewer than about a thousand
    steps across a feature's range: features far from the origin (an offset of 1e8 under a
    spread of a few units, as absolute positions or times give) keep only a few distinct
    values, and every method, deep or shallow, learns from what is left."""
    x = wide.reshape(wide.shape[0], -1)
    top, low = x.amax(0), x.amin(0)
    size = torch.maximum(top.abs(), low.abs())
    # float32's largest rounding error there: relative 2^-24, and never below its smallest step
    # (2^-149): features of about 1e-42 and less keep few values, or flush to zero
    rounding = torch.clamp(size * 2.0 ** -24, min=2.0 ** -149)
    blurred = torch.nonzero(rounding > 1e-3 * (top - low)).flatten()
    blurred = blurred[top[blurred] > low[blurred]]  # (a constant feature loses nothing)
    if len(blurred):
        j = int(blurred[0])
        tiny = size[j] < torch.finfo(torch.float32).tiny * 2.0 ** 10  # the subnormals' few bits
        fix = ("scale them up (standardise each feature)" if tiny else "subtract their mean (centre them)")
        warn_outside_dalib(
            f"{len(blurred)} feature(s) of {where} lose their detail in float32, the precision dalib runs in: "
            f"feature {j} spans {float(low[j]):.9g}..{float(top[j]):.9g}; {fix} before giving them", UserWarning)


def _whole_number(value: Any, name: str, where: str) -> int:
    """``value`` as an int: a Python or numpy integer, or a 0-d integer tensor (``y.max() + 1``)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)
    except TypeError:
        kind = f" (a {type(value).__name__})" if isinstance(value, (float, np.floating)) else ""
        raise DataError(f"{name} must be an int, got {value!r}{kind} in {where}") from None


#: float32's largest value whose square it still holds: batch norm's variance and every squared
#: distance overflow on features beyond it
_SQUARE_LIMIT = float(torch.finfo(torch.float32).max) ** 0.5


def _warn_if_unusual(x: torch.Tensor, where: str) -> None:
    """Warn of what trains without an error and learns nothing, or the wrong thing: features whose
    squares overflow float32 (a network trains to a constant output), and images laid out
    channels last (N, H, W, C), which dalib reads as (N, C, H, W)."""
    low, high = torch.aminmax(x)  # (no copy of x, as x.abs() would make)
    top = max(-float(low), float(high))
    if top > _SQUARE_LIMIT:
        warn_outside_dalib(f"features up to {top:.3g} in {where}: their squares overflow float32 (above "
                           f"{_SQUARE_LIMIT:.3g}), the precision a deep run's network trains in, so its batch norm "
                           "sees infinities and it learns a constant output; scale them (standardise each feature) "
                           "before giving them", UserWarning)
    _, c, h, w = x.shape if x.ndim == 4 else (0, 0, 0, 0)
    # colour channels last ((N, H, W, 3) read as H channels of Wx3 pixels), or a square grey image's
    if w in (3, 4) and c >= 8 and h >= 8 or w == 1 and c == h >= 8:
        warn_outside_dalib(f"images of shape {tuple(x.shape)} in {where} look channels last (N, H, W, C), and "
                           f"dalib reads (N, C, H, W): {c} channels of {h}x{w} pixels; "
                           "give x.transpose(0, 3, 1, 2) (a tensor: x.permute(0, 3, 1, 2))", UserWarning)


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


class _Subset(torch.utils.data.Subset):
    """Some samples of a dataset, with their labels as ``targets`` when the dataset's are known."""

    def __init__(self, dataset: Dataset, indices: list[int], labels: torch.Tensor | None) -> None:
        super().__init__(dataset, indices)
        if labels is not None:
            self.targets = labels[indices].tolist()
