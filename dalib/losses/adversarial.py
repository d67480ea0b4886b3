"""Losses of adversarial domain adaptation: gradient reversal, the domain loss, entropy."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from dalib.errors import InputError

__all__ = ["domain_adversarial", "entropy", "grad_reverse"]


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, coeff: float) -> Tensor:  # type: ignore[override]
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return -ctx.coeff * grad, None


def grad_reverse(x: Tensor, coeff: float = 1.0) -> Tensor:
    """Gradient reversal layer (Ganin & Lempitsky, ICML 2015).

    Identity in the forward pass; multiplies the gradient by ``-coeff`` in the backward
    pass, so that a feature extractor upstream *maximises* the loss computed downstream.
    """
    return _GradReverse.apply(x, float(coeff))


def domain_adversarial(
    logits_s: Tensor, logits_t: Tensor, weights_s: Tensor | None = None, weights_t: Tensor | None = None
) -> Tensor:
    r"""Binary domain-classification loss of DANN (Ganin et al., JMLR 2016).

    .. math::
        L = \tfrac12 \Big[ \tfrac{1}{\sum_i w_i} \sum_i w_i\,\mathrm{BCE}(d_i^s, 1)
            + \tfrac{1}{\sum_j v_j} \sum_j v_j\,\mathrm{BCE}(d_j^t, 0) \Big]

    ``logits_s`` (B_s,) or (B_s, 1) and ``logits_t`` (B_t,) or (B_t, 1) are the
    discriminator's logits (source = 1, target = 0); ``weights_s`` (B_s,) and ``weights_t``
    (B_t,) optional sample weights (finite, non-negative, not all zero; without them every
    weight is 1): importance weights of the source, or CDAN+E's entropy weights
    :math:`1 + e^{-H(p)}` on both domains (Long et al., NeurIPS 2018), passed detached (the
    weights' own sums are differentiated otherwise). Computed with
    ``binary_cross_entropy_with_logits``, stable for large logits. Another shape, or an empty
    batch, raises :class:`dalib.errors.InputError`; NaN logits give a NaN loss (unchecked: no
    host synchronisation per step).
    """
    ls = _domain_logits(logits_s, "logits_s")  # (B_s,)
    lt = _domain_logits(logits_t, "logits_t")  # (B_t,)
    src = _weighted_mean(F.binary_cross_entropy_with_logits(ls, torch.ones_like(ls), reduction="none"),
                         weights_s, "weights_s", "source")
    tgt = _weighted_mean(F.binary_cross_entropy_with_logits(lt, torch.zeros_like(lt), reduction="none"),
                         weights_t, "weights_t", "target")
    return 0.5 * (src + tgt)


def _weighted_mean(loss: Tensor, weights: Tensor | None, name: str, domain: str) -> Tensor:
    """The mean of ``loss`` (B,), weighted by ``weights`` (B,) when given."""
    if weights is None:
        return loss.mean()
    w = torch.as_tensor(weights, dtype=loss.dtype, device=loss.device)
    if w.dim() == 2 and w.shape[1] == 1:
        w = w[:, 0]  # (B, 1), as the logits may be
    if w.shape != loss.shape:
        raise InputError(f"{name} must have one weight per {domain} logit ({loss.shape[0]}), got shape "
                         f"{tuple(torch.as_tensor(weights).shape)}")
    if not bool(((w >= 0) & torch.isfinite(w)).all() & (w > 0).any()):  # one host sync
        raise InputError(f"{name} must be finite and non-negative, and not all zero")
    return (w * loss).sum() / w.sum()


def _shape(x: object) -> str:
    return f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else f"a {type(x).__name__}"


def _domain_logits(x: Tensor, name: str) -> Tensor:
    """One discriminator logit per sample: (B,) or (B, 1) as (B,), B >= 1."""
    if not isinstance(x, Tensor) or not (x.dim() == 1 or (x.dim() == 2 and x.shape[1] == 1)) or x.shape[0] == 0:
        raise InputError(f"{name} must be a non-empty (B,) or (B, 1) tensor of logits, got {_shape(x)}")
    return _floating(x).reshape(-1)


def _floating(x: Tensor) -> Tensor:
    """Logits in a floating dtype (integer logits as the default one)."""
    return x if x.is_floating_point() else x.to(torch.get_default_dtype())


def entropy(logits: Tensor) -> Tensor:
    r"""Mean Shannon entropy of the predicted class distributions.

    .. math:: H = -\tfrac1B \sum_i \sum_c p_{ic} \log p_{ic}, \quad p_i = \mathrm{softmax}(z_i)

    ``logits`` (B, C), B, C >= 1 (else :class:`dalib.errors.InputError`; NaN logits give a
    NaN loss). Used for entropy minimisation on target predictions (Grandvalet & Bengio,
    NIPS 2004).
    """
    if not isinstance(logits, Tensor) or logits.dim() != 2 or 0 in logits.shape:
        raise InputError(f"logits must be a non-empty (B, C) tensor, got {_shape(logits)}")
    logits = _floating(logits)
    # a −inf logit (a masked class) has p = 0: the floor keeps 0 · log 0 at 0, not NaN
    logp = F.log_softmax(logits, dim=1).clamp_min(torch.finfo(logits.dtype).min)  # (B, C)
    return -(logp.exp() * logp).sum(dim=1).mean()
