"""DeepJDOT: joint distribution optimal transport on mini-batches (Damodaran et al., ECCV 2018)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from dalib import Adapted, Batch, Method, Outputs, Progress, param, register_method
from dalib.losses import ot_plan
from dalib.shallow import OTConfig


@register_method("ot")
class DeepJDOT(Method):
    r"""DeepJDOT: optimal transport of features and labels (Damodaran et al., ECCV 2018).

    On each mini-batch, an optimal-transport plan :math:`\gamma` between source and target samples under a joint cost on features
    and labels, then the transported cost as a loss:

    .. math:: C_{ij} = \alpha \lVert g(x^s_i) - g(x^t_j)\rVert^2
              + \lambda_t\, \mathrm{CE}(y^s_i, f(g(x^t_j))), \qquad
              L = L_{cls} + \sum_{ij} \gamma_{ij} C_{ij}

    :math:`\gamma` is exact EMD (or entropic with ``reg`` > 0) on the detached cost, with
    uniform source masses (a subclass that sets ``source_weights`` in ``prepare``, as ``kmm``
    does, weights them; no setting of ``ot`` does). :math:`f(g(x^t_j))` is the classifier on the
    target features without Dropout, as at test time. On feature datasets ``dalib run ot`` fits the
    OT mapping of Courty et al. (TPAMI 2017) with a classifier instead (``--mode shallow``).
    """

    @dataclass(frozen=True)
    class Config:
        alpha: float = param(0.001, "weight of the feature distance in the joint cost")
        lambda_t: float = param(0.0001, "weight of the target label cost in the joint cost")
        reg: float = param(0.0, "entropic regularisation of the plan (0: exact EMD)")

        def __post_init__(self) -> None:
            if self.alpha < 0 or self.lambda_t < 0 or self.reg < 0:
                raise ValueError("alpha, lambda_t and reg must be >= 0")

    ShallowConfig = OTConfig

    @classmethod
    def adapt(cls, config: OTConfig, xs: Tensor, ys: Tensor, xt: Tensor) -> Adapted:
        mapping = config.build().fit(xs, xt, ys if config.reg_cl is not None else None)
        info = {"n_iter": mapping.n_iter_, "backend": mapping.backend_, "cost_scale": mapping.cost_scale_}
        return Adapted(torch.as_tensor(mapping.transform(xs)), xt, None, info)

    def loss(self, batch: Batch, out: Outputs, progress: Progress) -> dict[str, Tensor]:
        cls = self.source_loss(batch, out)
        feat = torch.cdist(out.feat_s, out.feat_t) ** 2  # (B_s, B_t)
        # the target predictions as the classifier gives them at test time: the head on the
        # features, not on their Dropout-masked copy (out.logits_t), which would make the
        # matching random
        logp_t = F.log_softmax(self.model.head(out.feat_t), dim=1)  # (B_t, C)
        label = -logp_t[:, batch.y_s].T  # (B_s, B_t): CE(y_s_i, f(g(x_t_j)))
        cost = self.config.alpha * feat + self.config.lambda_t * label  # (B_s, B_t)
        a = None if batch.w_s is None else batch.w_s / batch.w_s.sum()
        plan = ot_plan(cost=cost.detach(), a=a, reg=self.config.reg or None)  # (B_s, B_t)
        transport = (plan.to(cost.dtype) * cost).sum()
        return {"total": cls + transport, "cls": cls, "transport": transport}
