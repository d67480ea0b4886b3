"""Deep CORAL: correlation alignment of the features (Sun & Saenko, ECCV-W 2016)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from dalib import Adapted, Batch, Method, Outputs, Progress, param, register_method
from dalib.losses import coral
from dalib.shallow import CoralConfig


@register_method("coral")
class DeepCORAL(Method):
    r"""Deep CORAL: align feature covariances (Sun & Saenko, ECCV workshops 2016).

    The loss matches the covariances of the source and target bottleneck features,

    .. math:: L = L_{cls} + \lambda\, \frac{1}{4d^2} \lVert C_s - C_t \rVert_F^2 .

    The paper puts the term on its last layer, AlexNet's fc8 (the class scores); here it is
    on the bottleneck, where dalib's other alignment losses act.

    The paper sets :math:`\lambda` so that, at the end of training, the CORAL term and the
    classification loss are about the same; the normalisation by :math:`4d^2` makes the term
    small, so the weight that does this is often well above the default 1 (30 on dalib's
    digits suite). ``benchmarks/coral_tradeoff.py`` applies the rule to a benchmark suite
    from training losses alone, with no target label.

    On feature datasets ``dalib run coral`` fits the closed-form CORAL of
    Sun, Feng & Saenko (AAAI 2016) with a classifier instead (``--mode shallow``).
    """

    @dataclass(frozen=True)
    class Config:
        trade_off: float = param(1.0, "weight of the CORAL term")

        def __post_init__(self) -> None:
            if self.trade_off < 0:
                raise ValueError("trade_off must be >= 0")

    ShallowConfig = CoralConfig

    @classmethod
    def adapt(cls, config: CoralConfig, xs: Tensor, ys: Tensor, xt: Tensor) -> Adapted:
        return Adapted(config.build().fit(xs, xt).transform(xs), xt)

    def loss(self, batch: Batch, out: Outputs, progress: Progress) -> dict[str, Tensor]:
        cls = self.source_loss(batch, out)
        align = coral(out.feat_s, out.feat_t)
        return {"total": cls + self.config.trade_off * align, "cls": cls, "coral": align}
