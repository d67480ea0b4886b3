"""DANN: domain-adversarial training (Ganin et al., JMLR 2016)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dalib import Batch, Method, Outputs, Progress, param, register_method
from dalib.losses import domain_adversarial, grad_reverse
from dalib.schedules import grl_coefficient


def discriminator(in_dim: int, hidden: int, hidden_layers: int = 2) -> nn.Module:
    """The domain discriminator, giving one logit (source = 1): ``hidden_layers`` blocks of
    Linear, BatchNorm and ReLU of width ``hidden``, then a linear layer. With no hidden layer
    it is a logistic regressor on the features."""
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(hidden_layers):
        layers += [nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
        width = hidden
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


@register_method("dann")
class DANN(Method):
    r"""Domain-adversarial neural network (Ganin et al., JMLR 2016).

    A discriminator learns to tell source features from target features; through a
    gradient-reversal layer the feature extractor learns to make them indistinguishable:

    .. math:: \min_{F,C} \max_D \; L_{cls}(C(F(x_s)), y_s) - \lambda\, L_{dom}(D(F(x)))

    The reversal coefficient rises as :math:`2/(1+e^{-\gamma p}) - 1` over training.
    :math:`L_{dom}` is the mean of the source and the target terms (the two domains' mean
    binary cross-entropies, halved: :func:`dalib.losses.domain_adversarial`, as
    Transfer-Learning-Library writes it); the paper's objective adds the two means: here,
    that is ``trade_off = 2``. The discriminator defaults to two hidden layers of 1024 units, the paper's for its Office
    experiments; ``hidden_layers=0`` makes it the logistic domain regressor of the paper's
    shallow networks (its sentiment experiments). Among the logged losses, ``loss/domain`` is
    :math:`L_{dom}` before the trade-off, and ``loss/grl`` is no loss: it is the reversal
    coefficient of that step (it takes no part in ``loss/total``).
    """

    @dataclass(frozen=True)
    class Config:
        trade_off: float = param(1.0, "weight of the domain loss")
        hidden: int = param(1024, "discriminator width")
        hidden_layers: int = param(2, "discriminator hidden layers; 0: a logistic regressor on the features "
                                      "(the DANN paper's shallow form)")
        gamma: float = param(10.0, "steepness of the reversal-coefficient schedule")

        def __post_init__(self) -> None:
            if self.trade_off < 0:
                raise ValueError("trade_off must be >= 0")
            if self.hidden < 1:
                raise ValueError("hidden must be >= 1")
            if self.hidden_layers < 0:
                raise ValueError("hidden_layers must be >= 0")
            if self.gamma < 0:  # the reversal coefficient would be negative: the features would help the discriminator
                raise ValueError("gamma must be >= 0")

    def __init__(self, config: Config, model) -> None:
        super().__init__(config, model)
        self.discriminator = discriminator(model.features_dim, config.hidden, config.hidden_layers)

    def loss(self, batch: Batch, out: Outputs, progress: Progress) -> dict[str, Tensor]:
        cls = self.source_loss(batch, out)
        coeff = grl_coefficient(progress, self.config.gamma)
        feats = grad_reverse(torch.cat([out.feat_s, out.feat_t]), coeff)  # (B_s + B_t, F)
        d = self.discriminator(feats).squeeze(1)  # (B_s + B_t,)
        n_s = len(out.feat_s)
        dom = domain_adversarial(d[:n_s], d[n_s:], batch.w_s)
        return {"total": cls + self.config.trade_off * dom, "cls": cls, "domain": dom, "grl": torch.tensor(coeff)}
