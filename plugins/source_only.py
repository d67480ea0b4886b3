"""Source only: train on labelled source data, no adaptation (the baseline)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from dalib import Adapted, Batch, Method, Outputs, Progress, register_method


@register_method("source_only")
class SourceOnly(Method):
    """Cross-entropy on the source domain only: the baseline every method must beat.

    The target batch is never forwarded (``uses_target = False``), so not even BatchNorm's
    statistics see the target: the model is trained on the source alone. Its shallow form
    trains the classifier on the source features as they are.
    """

    uses_target = False

    @dataclass(frozen=True)
    class Config:
        """No hyperparameters."""

    @dataclass(frozen=True)
    class ShallowConfig:
        """No hyperparameters."""

    @classmethod
    def adapt(cls, config: ShallowConfig, xs: Tensor, ys: Tensor, xt: Tensor) -> Adapted:
        return Adapted(xs, xt)

    def loss(self, batch: Batch, out: Outputs, progress: Progress) -> dict[str, Tensor]:
        cls = self.source_loss(batch, out)
        return {"total": cls, "cls": cls}
