"""The method contract: what a domain-adaptation method is to the runner.

A method owns its hyperparameters (a frozen ``Config`` dataclass whose defaults are the
paper's, or say in the method's docstring where they are not), its extra modules (a discriminator, say) and its loss. It never owns the
training loop: :mod:`dalib.runner` calls it.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from dalib.data.domain import UNLABELLED, collate_items

if TYPE_CHECKING:
    from dalib.models import DAModel

__all__ = ["Adapted", "Batch", "Context", "Method", "Outputs", "Progress"]


class Batch(NamedTuple):
    """One paired source/target mini-batch.

    ``x_s`` (B_s, ...), ``y_s`` (B_s,) int64, ``x_t`` (B_t, ...). Target labels never
    enter training. ``w_s`` (B_s,) holds source sample weights when the method set
    :attr:`Method.source_weights` (KMM), else ``None``. ``idx_s`` / ``idx_t`` are the
    positions of the samples in their domain's training set.
    """

    x_s: Tensor
    y_s: Tensor
    x_t: Tensor
    w_s: Tensor | None = None
    idx_s: Tensor | None = None
    idx_t: Tensor | None = None


class Outputs(NamedTuple):
    """What the model computed on a batch: bottleneck features and class logits."""

    feat_s: Tensor  # (B_s, F)
    feat_t: Tensor  # (B_t, F)
    logits_s: Tensor  # (B_s, C)
    logits_t: Tensor  # (B_t, C)


class Adapted(NamedTuple):
    """What a method's shallow form returns: the source features a classifier trains on
    (with optional sample weights), the target features it predicts, and diagnostics
    worth reporting (numbers or strings, written to ``result.json``)."""

    xs: Tensor  # (N_s, D')
    xt: Tensor  # (N_t, D')
    weights: Tensor | None = None  # (N_s,)
    info: dict[str, Any] | None = None


@dataclass(frozen=True)
class Progress:
    """Where training stands. Schedules are pure functions of this, never counters.

    ``step`` is the number of optimizer steps already taken (0 at the first batch),
    ``total`` the number the run will take.
    """

    step: int
    total: int
    epoch: int = 0

    @property
    def fraction(self) -> float:
        """Training progress in [0, 1]: Ganin et al.'s ``p``."""
        return min(1.0, self.step / max(1, self.total))


def scoring_batch(data: Any, batch_size: int) -> int:
    """The batch a run scores, or embeds, a domain in (``data``: a :class:`~dalib.data.Domain`
    or its dataset): 512 samples of data held in memory (features, small images: a fraction of
    what the domain already takes), the run's own ``batch_size`` for an image folder, whose
    images through a ResNet at 512 a batch would take gigabytes (``--batch-size`` is what a user
    chose to fit in memory, with gradients)."""
    if isinstance(data, Unlabelled):  # (the target, as a method sees it)
        data = data.data
    in_memory = isinstance(getattr(data, "x", None), Tensor) or isinstance(data, torch.utils.data.TensorDataset)
    return 512 if in_memory else batch_size


@dataclass
class Context:
    """What :meth:`Method.prepare` and :meth:`Method.on_epoch_end` may look at.

    ``source`` and ``target`` are the training datasets: source items are ``(x, y)``,
    target items ``(x, -1)`` (training never sees a target label); ``model`` the model
    being trained.
    """

    model: DAModel
    source: torch.utils.data.Dataset
    target: torch.utils.data.Dataset
    device: torch.device
    batch_size: int
    progress: Progress
    #: the class names, in label order (the model's outputs)
    classes: list[str] | None = None

    def embed(
        self, domain: str, fn: Callable[[Tensor], Tensor] | None = None, batch_size: int | None = None
    ) -> Tensor:
        """Map every training sample of ``domain`` ("source" or "target") through ``fn``.

        ``fn`` defaults to the identity, flattened: the raw input features. Pass
        ``lambda x: ctx.model(x).features`` for the model's features. Returns (N, D)
        on :attr:`device`, computed in eval mode without gradients, ``batch_size`` samples at a
        time (by default as the run scores: :func:`scoring_batch`).
        """
        data = {"source": self.source, "target": self.target}[domain]
        fn = fn or (lambda x: x.reshape(len(x), -1))  # (inputs of one number each, (N,): one feature)
        batch_size = scoring_batch(data, self.batch_size) if batch_size is None else batch_size
        loader = in_order(data, batch_size, f"a sample of the {domain}")
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                parts = [fn(x.to(self.device)).reshape(len(x), -1) for x, _ in loader]
        finally:
            self.model.train(was_training)
        return torch.cat(parts)  # (N, D)

    def source_labels(self) -> Tensor:
        """The labels of every source training sample, (N_s,) int64 on the CPU. (Target
        labels are not offered: training must not see them.)"""
        data = self.source
        if isinstance(data, torch.utils.data.TensorDataset):
            return data.tensors[1].detach().cpu().long()
        if hasattr(data, "targets"):  # image folders: no image decoded
            return torch.as_tensor(data.targets).long()
        loader = in_order(data, 4096)  # (labels of mixed kinds: as numbers)
        return torch.cat([torch.as_tensor(ys, dtype=torch.float64).reshape(-1) for _, ys in loader]).long()


def in_order(data: torch.utils.data.Dataset, batch_size: int, where: str = "a sample") -> torch.utils.data.DataLoader:
    """The samples of ``data`` in their order, in batches collated by :func:`collate_items`
    (``where`` names a sample in its errors), by a DataLoader with a generator of its own: one
    without draws its seed from the global generator, whose later draws (the dropout masks)
    would then depend on how often a method reads its data."""
    return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False, generator=torch.Generator(),
                                       collate_fn=functools.partial(collate_items, where=where))


class Unlabelled(torch.utils.data.Dataset):
    """A view of a dataset whose items are ``(x, UNLABELLED)``: what a method sees of the
    target, so that no loop over it can reach the target labels."""

    def __init__(self, data: torch.utils.data.Dataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.data[i][0], UNLABELLED


def plain_diagnostics(value: Any, method: str, key: str = "diagnostics") -> Any:
    """``value`` as JSON-ready numbers, strings, lists and dicts (numpy values and tensors
    converted, NaN and infinities as None), or a :class:`~dalib.errors.PluginError` naming
    the entry that is none of these."""
    from dalib.errors import PluginError

    if value is None or isinstance(value, (bool, np.bool_, str)):
        return bool(value) if isinstance(value, np.bool_) else value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Tensor):
        return plain_diagnostics(value.detach().cpu().tolist(), method, key)
    if isinstance(value, np.ndarray):
        return plain_diagnostics(value.tolist(), method, key)
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: plain_diagnostics(v, method, f"{key}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_diagnostics(v, method, f"{key}[{i}]") for i, v in enumerate(value)]
    raise PluginError(f"method {method!r}: {key} is {type(value).__name__}; diagnostics hold numbers, strings, "
                      "lists and dicts with string keys")


@dataclass(frozen=True)
class _NoConfig:
    """This method has no hyperparameters."""


class Method(nn.Module):
    """Base class of every domain-adaptation method.

    Subclasses define a nested frozen dataclass ``Config`` and :meth:`loss`; they are
    registered with :func:`dalib.register_method`. Extra modules a method creates in
    ``__init__`` (a discriminator) are trained with the model; the model itself is held
    by reference and is not a sub-module of the method, so ``method.parameters()`` and
    ``method.state_dict()`` hold only the method's own modules.
    """

    Config: ClassVar[type] = _NoConfig
    #: name under which the method is registered (set by ``register_method``)
    name: ClassVar[str] = ""
    #: hyperparameters of the method's shallow form (a frozen dataclass), or None when the
    #: method has none; the shallow form is :meth:`adapt`
    ShallowConfig: ClassVar[type | None] = None
    #: whether :meth:`loss` reads the target batch (``batch.x_t``, ``out.feat_t``,
    #: ``out.logits_t``). A method that learns from the source alone (source_only, kmm,
    #: finetune) sets it False: the runner then loads no target batch and forwards the
    #: source batch alone, so no target sample reaches BatchNorm's statistics and the model
    #: is trained on the source only; those three fields are then empty (0 rows).
    #: ``prepare`` still receives the target domain (KMM fits its weights there).
    uses_target: ClassVar[bool] = True

    def __init__(self, config: Any, model: DAModel) -> None:
        super().__init__()
        self.config = config
        object.__setattr__(self, "_model", model)  # a reference, not a sub-module
        #: per-sample weights over the whole source training set, or None
        self.source_weights: Tensor | None = None
        #: what :meth:`prepare` found worth reporting (numbers or strings; KMM: its weights'
        #: statistics), written to ``result.json`` as ``diagnostics`` and kept by checkpoints
        self.diagnostics: dict[str, Any] = {}

    @property
    def model(self) -> DAModel:
        return self._model

    # -- the one method every plugin writes -------------------------------------------
    def loss(self, batch: Batch, out: Outputs, progress: Progress) -> dict[str, Any]:
        """Return the losses of one step, a dict: ``"total"`` (a scalar tensor) is minimised,
        the rest (scalar tensors or plain numbers) logged. (An override may say
        ``dict[str, Tensor]``, or ``dict[str, Tensor | float]``.)"""
        raise NotImplementedError(f"{type(self).__name__} must define loss()")

    # -- the shallow form, for methods that define ShallowConfig ------------------------
    @classmethod
    def adapt(cls, config: Any, xs: Tensor, ys: Tensor, xt: Tensor) -> Adapted:
        """Adapt feature matrices without a training loop: ``xs`` (N_s, D) with labels
        ``ys`` (N_s,), ``xt`` (N_t, D). A classifier then trains on the result."""
        from dalib.errors import ConfigError

        raise ConfigError(f"method {cls.name!r} has no shallow form")

    @classmethod
    def description(cls) -> str:
        """The method's own docstring, cleaned; "" without one (never this base class's, which
        :func:`inspect.getdoc` would give)."""
        return inspect.cleandoc(cls.__doc__) if cls.__doc__ else ""

    @classmethod
    def forms(cls) -> tuple[str, ...]:
        """``("deep",)`` or ``("deep", "shallow")``."""
        return ("deep", "shallow") if cls.ShallowConfig is not None else ("deep",)

    # -- optional hooks -----------------------------------------------------------------
    def param_groups(self, model: DAModel) -> list[dict[str, Any]]:
        """Parameter groups of the model for the optimizer, each a dict with
        ``params`` and optionally ``lr_mult`` (a multiplier of the base learning rate)
        and ``weight_decay``. Fine-tuning methods override it to freeze layers."""
        return model.param_groups()

    def prepare(self, context: Context) -> None:
        """Called once before training (KMM computes ``source_weights`` here)."""

    def on_epoch_end(self, context: Context) -> None:
        """Called after each pass over the source training set."""

    # -- helpers plugins share ------------------------------------------------------------
    def source_loss(self, batch: Batch, out: Outputs) -> Tensor:
        """Cross-entropy on the labelled source samples, weighted by ``batch.w_s``."""
        ce = nn.functional.cross_entropy(out.logits_s, batch.y_s, reduction="none")  # (B_s,)
        if batch.w_s is None:
            return ce.mean()
        w = batch.w_s.to(ce.dtype)
        return (w * ce).sum() / w.sum().clamp_min(torch.finfo(ce.dtype).tiny)

    @classmethod
    def config_fields(cls) -> list[dataclasses.Field]:
        """The fields of :attr:`Config`, in declaration order."""
        return list(dataclasses.fields(cls.Config))
