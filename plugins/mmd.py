"""DAN: deep adaptation network, multi-kernel MMD on the features (Long et al., ICML 2015)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from dalib import Batch, Method, Outputs, Progress, param, register_method
from dalib.losses import mmd


@register_method("mmd")
class DAN(Method):
    r"""DAN: multi-kernel MMD between source and target features (Long et al., ICML 2015).

    The loss adds the MMD between the source and target bottleneck features (and,
    optionally, the logits: the head on those features, without Dropout) to the source
    cross-entropy. With ``on_logits`` the two layers' MMDs are summed, as DAN adapts several
    layers; JAN's joint MMD (a product of the layers' kernels) is another loss:

    .. math:: L = L_{cls} + \lambda\, \mathrm{MMD}^2_k(F(x_s), F(x_t)),
              \quad k = \sum_{u} \exp(-\lVert x-y\rVert^2 / 2\sigma_u^2)

    with the bandwidths :math:`\sigma_u` from the median heuristic times
    :math:`2^{-2}, \dots, 2^{2}` on each mini-batch, weighted equally (the paper learns the
    kernels' weights). The estimator defaults to the unbiased one over all pairs of the
    mini-batch, as Transfer-Learning-Library's DAN: it varies less than the linear-time
    estimator the paper trains with, ``estimator = "linear"``.
    """

    @dataclass(frozen=True)
    class Config:
        trade_off: float = param(1.0, "weight of the MMD term")
        estimator: Literal["biased", "unbiased", "linear"] = param("unbiased", "MMD^2 estimator")
        on_logits: bool = param(False, "also align the logits (a JAN-like second layer)")

        def __post_init__(self) -> None:
            if self.trade_off < 0:
                raise ValueError("trade_off must be >= 0")

    def loss(self, batch: Batch, out: Outputs, progress: Progress) -> dict[str, Tensor]:
        cls = self.source_loss(batch, out)
        align = mmd(out.feat_s, out.feat_t, estimator=self.config.estimator, backend="dense")
        if self.config.on_logits:
            head = self.model.head  # on the features, not on their Dropout-masked copy (out.logits_*)
            align = align + mmd(head(out.feat_s), head(out.feat_t), estimator=self.config.estimator, backend="dense")
        return {"total": cls + self.config.trade_off * align, "cls": cls, "mmd": align}
