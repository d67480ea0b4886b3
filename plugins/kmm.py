"""KMM: kernel mean matching importance weights for the source samples (Huang et al., NIPS 2006)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from dalib import Adapted, Batch, Context, Method, Outputs, Progress, param, register_method
from dalib.errors import warn_outside_dalib
from dalib.shallow import KMMConfig


#: the deep form's default bound on a source weight: effective sample size >= sum(weights) / DEEP_B
DEEP_B = 4.0


@register_method("kmm")
class KernelMeanMatching(Method):
    r"""KMM: re-weight source samples to match the target (Huang et al., NIPS 2006).

    Before training, weights :math:`\beta` for the source samples so that the weighted source and the target have
    the same kernel mean embedding,

    .. math:: \min_\beta \Big\lVert \frac{1}{n_s}\sum_i \beta_i \phi(x^s_i)
              - \frac{1}{n_t}\sum_j \phi(x^t_j) \Big\rVert^2, \quad
              0 \le \beta_i \le B,\ \Big|\frac{1}{n_s}\sum_i\beta_i - 1\Big| \le \epsilon

    then the classifier trains on the source with the weighted loss, normalised per mini-batch
    (:math:`\sum_{i \in b} \beta_i \ell_i / \sum_{i \in b} \beta_i`, a ratio estimate of Huang et
    al.'s weighted risk over the whole source: biased for small batches when the weights are
    uneven, and unchanged by the scale of :math:`\beta`). The bound :math:`B`
    also bounds how few samples the network learns from: the effective sample size
    :math:`(\sum_i\beta_i)^2/\sum_i\beta_i^2 \ge \sum_i\beta_i / B`, about :math:`n_s/B` when
    the mean weight is near 1.
    The shallow estimator keeps Huang et al.'s :math:`B = 1000`; the deep form defaults to
    :math:`B = 4`, so that the network learns from an effective sample of at least
    :math:`\sum_i\beta_i / 4` (on raw pixels or words the unbounded solution puts all the
    weight on a few dozen samples; the mean weight may fall to :math:`1 - \epsilon`, so
    check ``effective_sample_size`` among the run's diagnostics). The weights come from
    the input features (``features="input"``) or the model's bottleneck features
    (``features="model"``): the starting model's, and with ``refit_every = k`` the model's
    again after every k-th pass over the source, so that weights fitted where the network
    separates the classes follow the target's classes rather than its appearance (on a
    model trained from scratch, the first weights come from its random features and last
    until the first re-fit). Each fit maps every source and target sample through the
    network once, in eval mode: on image folders, a re-fit costs about a pass over both
    domains. The kernel products run through ``dalib.kernels``,
    so tens of thousands of samples fit on a CPU. The target enters only through the
    weights: training forwards the source batch alone (``uses_target = False``).
    """

    uses_target = False

    @dataclass(frozen=True)
    class Config(KMMConfig):
        B: float = param(DEEP_B, "upper bound on each source weight; keeps the effective sample size >= sum(β)/B")
        features: Literal["input", "model"] = param("input", "what the weights are computed on")
        refit_every: int = param(0, "with features='model': re-fit the weights after every this many passes over "
                                    "the source (0: fitted once, before training)")

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.refit_every < 0:
                raise ValueError(f"refit_every must be >= 0, got {self.refit_every}")
            if self.refit_every and self.features != "model":
                raise ValueError("refit_every needs features='model': the input features do not change")

    ShallowConfig = KMMConfig

    def __init__(self, config: Config, model: Any) -> None:
        super().__init__(config, model)
        self._warned = False  # the concentrated-weights warning was given
        self._labels: Tensor | None = None  # the source's labels, read once for every fit's diagnostics

    @classmethod
    def adapt(cls, config: KMMConfig, xs: Tensor, ys: Tensor, xt: Tensor) -> Adapted:
        kmm = fit_weights(config, xs, xt)
        return Adapted(xs, xt, torch.as_tensor(kmm.weights_), diagnostics(kmm, ys))

    def prepare(self, context: Context) -> None:
        self._fit(context)

    def on_epoch_end(self, context: Context) -> None:
        k, progress = self.config.refit_every, context.progress
        if not k or progress.step >= progress.total:  # no re-fit after the last step
            return
        # a multiple of k passes reached since the last fit; the last fit's pass is in the
        # diagnostics, which checkpoints keep
        if progress.epoch // k > self.diagnostics.get("fitted_at_epoch", 0) // k:
            self._fit(context)

    def _fit(self, context: Context) -> None:
        """Fit the weights on every source and target sample, mapped through the input features
        or the model's (each fit forwards both domains once, in eval mode)."""
        fn = (lambda x: context.model(x).features) if self.config.features == "model" else None
        xs = context.embed("source", fn)  # (N_s, D)
        xt = context.embed("target", fn)  # (N_t, D)
        kmm = fit_weights(self.config, xs, xt, warn=not self._warned)
        self._warned |= is_concentrated(kmm)  # one warning a run, not one per re-fit
        weights = torch.as_tensor(kmm.weights_, dtype=torch.float32, device=context.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # ranks share the gradients but not BatchNorm's running statistics, so their features,
            # and weights fitted on them, can differ: every rank trains with rank 0's
            torch.distributed.broadcast(weights, src=0)
        self.source_weights = weights
        fits = self.diagnostics.get("fits", 0) + 1  # prepare's fit is the first; checkpoints keep the count
        if self._labels is None:  # (a dataset without a label list is read whole for them)
            self._labels = context.source_labels()
        self.diagnostics = diagnostics(kmm, self._labels, len(context.classes) if context.classes else None)
        if self.config.refit_every:  # the statistics are the last fit's
            self.diagnostics |= {"fits": fits, "fitted_at_step": context.progress.step,
                                 "fitted_at_epoch": context.progress.epoch}

    def loss(self, batch: Batch, out: Outputs, progress: Progress) -> dict[str, Tensor]:
        cls = self.source_loss(batch, out)  # weighted by batch.w_s
        return {"total": cls, "cls": cls}


#: below this fraction of the source samples, the weights leave too few samples to learn from
MIN_EFFECTIVE_FRACTION = 0.05


def fit_weights(config: KMMConfig, xs: Tensor, xt: Tensor, warn: bool = True) -> Any:
    """The fitted :class:`dalib.shallow.KMM` of ``config`` on (N_s, D) and (N_t, D) samples,
    with a warning (``warn``) when its weights sit on a few source samples, naming the line of
    the caller outside dalib (of :meth:`adapt`, or of ``dalib.run``)."""
    kmm = config.build().fit(xs, xt)
    if warn and is_concentrated(kmm):
        n, ess = len(kmm.weights_), kmm.effective_sample_size_
        warn_outside_dalib(
            f"KMM weights are concentrated: effective sample size {ess:.0f} of {n} source samples "
            f"({int((kmm.weights_ > 0).sum())} non-zero); the weighted source loss learns from very few samples. "
            "A larger bandwidth, a smaller B or eps, or features='model' on a pre-trained model spread them.",
            RuntimeWarning,
        )
    return kmm


def is_concentrated(kmm: Any) -> bool:
    """Whether the weights sit on a few source samples (an effective sample size under
    :data:`MIN_EFFECTIVE_FRACTION` of them): a classifier trained with them learns from almost
    nothing (KMM on raw high-dimensional inputs with little overlap between the domains does this)."""
    return kmm.effective_sample_size_ < MIN_EFFECTIVE_FRACTION * len(kmm.weights_)


def diagnostics(kmm: Any, ys: Tensor, num_classes: int | None = None) -> dict[str, Any]:
    """The fitted weights' statistics, with the source's class proportions before and after
    weighting (``ys`` (N_s,) the source labels): weights fitted on inputs that differ in
    appearance between the domains can follow the appearance and re-weight the classes.
    Labels >= 0 are class indices: entry k of the proportions is class k, 0 for a class the
    source lacks, in the shallow form as in the deep one (``num_classes`` of them, or without
    it as many as the source's largest label needs). Labels of other values (-1/+1): entry k
    is the k-th label present, in sorted order."""
    w = np.asarray(kmm.weights_, dtype=np.float64)
    y = torch.as_tensor(ys).cpu().numpy().reshape(-1)
    if y.dtype.kind in "biuf" and bool((y >= 0).all()) and bool((y == np.floor(y)).all()):
        y = y.astype(np.int64)  # class indices (0. and 1. read from a .mat file too)
    elif num_classes is None:
        _, y = np.unique(y, return_inverse=True)  # classes in sorted order, whatever their labels
    counts = np.bincount(y, minlength=num_classes or 0)
    mass = np.bincount(y, weights=w, minlength=len(counts))
    return {"objective": kmm.objective_, "mmd2": kmm.mmd2_, "bandwidth": kmm.bandwidth_, "n_iter": kmm.n_iter_,
            "converged": kmm.converged_, "weights_mean": float(w.mean()), "weights_max": float(w.max()),
            "weights_zero_fraction": float((w == 0).mean()), "effective_sample_size": kmm.effective_sample_size_,
            "class_proportions": [round(float(c), 4) for c in counts / counts.sum()],
            "weighted_class_proportions": [round(float(m), 4) for m in mass / max(mass.sum(), np.finfo(float).tiny)]}
