"""Model selection without target labels: criteria that score trained networks so that a
setting (a method, a trade-off, a step count) can be chosen for a new target domain whose
labels nobody has.

Each criterion reads what a user has: the network's outputs on the unlabelled target, and
its errors on labelled source samples it did not train on (``dalib run --holdout F``).

- :func:`importance_weighted_risk` and :func:`dev_risk` estimate the target error from the
  held-out source errors, each weighted by the density ratio p_t(x) / p_s(x) of its
  features (:func:`importance_weights`): importance-weighted validation (Sugiyama,
  Krauledat & Müller, JMLR 2007) and Deep Embedded Validation, the same with a control
  variate that lowers its variance (You et al., ICML 2019). Lower is better.
- :func:`prediction_entropy`: the mean entropy of the target predictions (Morerio et al.,
  ICLR 2018). Lower is better.
- :func:`soft_neighborhood_density`: how densely the target predictions cluster (Saito et
  al., ICCV 2021). Higher is better.

:func:`score_network` computes them all for a network (:func:`score_outputs`, from its
outputs); ``dalib select`` ranks runs by one.
No criterion is reliable on every shift: each is a guess at the target error, and the
Selection page of the docs measures how good a guess each one is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dalib.errors import InputError

__all__ = [
    "CRITERIA",
    "Criterion",
    "DOMAIN_C_GRID",
    "dev_risk",
    "effective_sample_fraction",
    "importance_weighted_risk",
    "importance_weights",
    "prediction_entropy",
    "score_network",
    "score_outputs",
    "soft_neighborhood_density",
]


@dataclass(frozen=True)
class Criterion:
    """A selection criterion as ``dalib select`` ranks by it: the key of its score in a run's
    ``selection`` entry, whether a smaller score is better, and whether it needs held-out
    source samples."""

    key: str
    lower_is_better: bool
    needs_holdout: bool
    description: str


#: the criteria ``dalib select --by`` takes, by name
CRITERIA: dict[str, Criterion] = {
    "dev": Criterion("dev_risk", True, True, "Deep Embedded Validation: the held-out source error, importance-"
                     "weighted, with a control variate (You et al., ICML 2019)"),
    "iwv": Criterion("iw_risk", True, True, "importance-weighted validation: the held-out source error, importance-"
                     "weighted (Sugiyama et al., JMLR 2007)"),
    "holdout": Criterion("holdout_error", True, True, "the held-out source error, unweighted"),
    "entropy": Criterion("entropy", True, False, "the mean entropy of the target predictions (Morerio et al., "
                         "ICLR 2018)"),
    "snd": Criterion("snd", False, False, "soft neighborhood density of the target predictions (Saito et al., "
                     "ICCV 2021)"),
}


def _matrix(a: Any, what: str) -> np.ndarray:
    """``a`` (N, D) as float64 numpy, checked: two dimensions, at least one row, finite."""
    if isinstance(a, Tensor):
        a = a.detach().cpu().double().numpy()
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"{what} must be a non-empty (N, D) array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InputError(f"{what} holds NaN or infinite values")
    return arr


def _vector(a: Any, what: str, n: int | None = None) -> np.ndarray:
    """``a`` (N,) as float64 numpy, checked: one dimension, ``n`` entries when given, finite."""
    if isinstance(a, Tensor):
        a = a.detach().cpu().double().numpy()
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim != 1 or arr.shape[0] == 0:
        raise InputError(f"{what} must be a non-empty (N,) array, got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise InputError(f"{what} has {arr.shape[0]} entries for {n} samples")
    if not np.isfinite(arr).all():
        raise InputError(f"{what} holds NaN or infinite values")
    return arr


def _probabilities(probs: Any) -> np.ndarray:
    p = _matrix(probs, "probs")
    if (p < 0).any() or not np.allclose(p.sum(1), 1.0, atol=1e-4):
        raise InputError("probs must hold a probability distribution per row (non-negative, summing to 1): "
                         "pass softmax(logits), not the logits")
    return p


def prediction_entropy(probs: Any) -> float:
    """The mean over the samples of the entropy −Σ_c p_c log p_c (nats) of each row of
    ``probs`` (N, C), the predicted class distributions of the target samples. A network
    confident on the target scores low; lower is better (a network that is confidently
    wrong scores low too)."""
    p = _probabilities(probs)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return float(-terms.sum(1).mean())


def soft_neighborhood_density(probs: Any, temperature: float = 0.05, block: int = 1024) -> float:
    """Soft neighborhood density (Saito et al., ICCV 2021) of the target predictions ``probs``
    (N, C): each row is L2-normalised, sample i's similarities to the other samples
    s_ij = <p_i, p_j> / |p_i| |p_j| become a distribution q_i = softmax_j≠i(s_ij / temperature),
    and the score is the mean entropy of the q_i. Predictions that form dense clusters score
    high; higher is better. Exact, in blocks of ``block`` rows: O(N² C) time, O(block N) memory.
    Needs at least two samples."""
    p = _probabilities(probs)
    if len(p) < 2:
        raise InputError("soft_neighborhood_density needs at least two samples")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise InputError(f"temperature must be a positive number, got {temperature!r}")
    f = torch.from_numpy(p / np.linalg.norm(p, axis=1, keepdims=True))
    total = 0.0
    for i in range(0, len(f), block):
        s = f[i : i + block] @ f.T / temperature  # (b, N)
        rows = torch.arange(s.shape[0])
        s[rows, rows + i] = -math.inf  # a sample is not its own neighbour
        logq = torch.log_softmax(s, 1)
        q = logq.exp()
        total += float(-(q * torch.where(q > 0, logq, torch.zeros_like(logq))).sum())
    return total / len(f)


#: the inverse regularisations the domain classifier of :func:`importance_weights` chooses from
DOMAIN_C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def importance_weights(source: Any, target: Any, points: Any, c: float | None = None, seed: int = 0) -> np.ndarray:
    """The density ratio p_t(x) / p_s(x) at each of ``points`` (M, D), estimated by a
    logistic-regression domain classifier trained to tell ``source`` (N_s, D) from
    ``target`` (N_t, D) on standardised features: the classifier's odds of "target", times
    N_s / N_t. Its inverse regularisation is ``c``, or with ``c=None`` the value of
    :data:`DOMAIN_C_GRID` whose classifier has the smallest 3-fold cross-validated log-loss
    (folds drawn with ``seed``): the best-calibrated odds, chosen from domain labels alone
    (1 where a domain has one sample). Returns (M,) float64, positive.

    For validation, ``source`` is the source samples the network trained on and ``points``
    the held-out ones (You et al., ICML 2019), so the ratio is not fitted on the samples it
    weighs. Over held-out source points the ratios average about 1 when the two domains
    overlap; far below 1, the classifier tells the domains apart almost everywhere and no
    reweighting of source samples can stand for the target."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    xs, xt, xp = _matrix(source, "source"), _matrix(target, "target"), _matrix(points, "points")
    if not (xs.shape[1] == xt.shape[1] == xp.shape[1]):
        raise InputError(f"source, target and points must have the same width, got {xs.shape[1]}, {xt.shape[1]} "
                         f"and {xp.shape[1]}")
    if c is not None and not (isinstance(c, (int, float)) and math.isfinite(c) and c > 0):
        raise InputError(f"c must be a positive number or None (cross-validated), got {c!r}")
    scaler = StandardScaler().fit(np.concatenate([xs, xt]))
    x = scaler.transform(np.concatenate([xs, xt]))
    d = np.r_[np.zeros(len(xs)), np.ones(len(xt))]
    folds = min(3, len(xs), len(xt))
    if c is None and folds < 2:
        c = 1.0  # a domain of one sample: no folds to choose by
    if c is None:
        losses = {v: 0.0 for v in DOMAIN_C_GRID}
        for train, held in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, d):
            for v in DOMAIN_C_GRID:
                clf = LogisticRegression(C=v, max_iter=2000).fit(x[train], d[train])
                losses[v] += log_loss(d[held], clf.predict_proba(x[held])[:, 1], labels=[0, 1])
        c = min(DOMAIN_C_GRID, key=lambda v: losses[v])  # (the smaller c on a tie)
    clf = LogisticRegression(C=c, max_iter=2000).fit(x, d)
    # log-odds, then the exponential: the probabilities themselves round to 1 for points the
    # classifier is sure of, and their odds would be infinite
    log_odds = clf.decision_function(scaler.transform(xp))
    return np.exp(np.clip(log_odds, -700.0, 700.0)) * (len(xs) / len(xt))


def _scaled_weights(weights: Any, n: int | None = None) -> tuple[np.ndarray, float]:
    """Non-negative ``weights`` (N,), not all 0, as ``(u, scale)`` with ``weights = u * scale``
    and ``u``'s largest 1: sums and squares of ``u`` cannot overflow, where importance_weights's
    weights up to e^700 had (and the scores of a run were NaN)."""
    w = _vector(weights, "weights", n)
    if (w < 0).any() or not (w > 0).any():
        raise InputError("weights must be non-negative with a positive sum")
    scale = float(w.max())
    return w / scale, scale


def importance_weighted_risk(losses: Any, weights: Any) -> float:
    """Importance-weighted validation (Sugiyama, Krauledat & Müller, JMLR 2007): the held-out
    source ``losses`` (N,) averaged with the density ratios ``weights`` (N,) ≥ 0, in its
    self-normalised form Σ w_i l_i / Σ w_i: an estimate of the target risk."""
    loss = _vector(losses, "losses")
    u, _ = _scaled_weights(weights, len(loss))  # the ratio does not change with their scale
    return float(np.dot(u, loss) / u.sum())


def effective_sample_fraction(weights: Any) -> float:
    """The effective sample size (Σw)² / Σw² of non-negative ``weights`` (N,) with a positive sum,
    as a fraction of N: 1 for equal weights, 1/N when one weight holds all the mass."""
    u, _ = _scaled_weights(weights)
    return float(u.sum() ** 2 / (u @ u) / len(u))


def dev_risk(losses: Any, weights: Any) -> float:
    """Deep Embedded Validation (You et al., ICML 2019): the importance-weighted mean of the
    held-out source ``losses`` (N,) with the density ratios ``weights`` (N,) as a control
    variate: with L_i = w_i l_i and η = −Cov(L, w) / Var(w),
    DEV = mean(L) + η mean(w) − η, an unbiased estimate of the target risk (E[w] = 1) of lower
    variance than mean(L). With weights all equal (Var(w) = 0) it is mean(L)."""
    loss = _vector(losses, "losses")
    # η is a ratio of second moments: computed on the weights divided by the largest
    u, scale = _scaled_weights(weights, len(loss))
    weighted = u * loss
    var = float(np.var(u, ddof=1)) if len(u) > 1 else 0.0
    if var <= 0.0:
        return float(weighted.mean() * scale)
    eta = -float(np.cov(weighted, u, ddof=1)[0, 1]) / var
    return float((weighted.mean() + eta * u.mean()) * scale - eta)


def score_outputs(
    train_features: Any,
    held_features: Any,
    held_logits: Any,
    held_labels: Any,
    target_features: Any,
    target_logits: Any,
) -> dict[str, float | None]:
    """Every criterion of :data:`CRITERIA` from a network's outputs: its features on the
    source samples it trained on (N_s, F), its features (N_h, F), logits (N_h, C) and the labels
    (N_h,) of the labelled source samples it did not train on, and its features (N_t, F) and
    logits (N_t, C) on the target, whose labels are not needed. The losses are 0-1 errors, so
    the risks estimate the target error rate. Returns ``{"holdout_error", "iw_risk",
    "dev_risk", "entropy", "snd"}`` (``snd`` None for a target of one sample) and the weights'
    summary ``{"weights_mean", "weights_ess"}``: their mean over the held-out samples (about 1
    when the domains' features overlap; near 0, the domain classifier tells them apart and the
    weighted risks say little) and their effective sample size (Σw)² / Σw² as a fraction of
    the held-out samples (near 0, the risks rest on a few samples)."""
    f_train, f_held, f_tgt = (_matrix(f, what) for f, what in ((train_features, "train_features"),
                                                               (held_features, "held_features"),
                                                               (target_features, "target_features")))
    p_held, p_tgt = (torch.softmax(torch.from_numpy(_matrix(z, what)), 1).numpy()
                     for z, what in ((held_logits, "held_logits"), (target_logits, "target_logits")))
    y_held = _vector(held_labels, "held_labels", len(p_held))
    if (y_held < 0).any():
        raise InputError("the held-out source samples must all be labelled")
    errors = (p_held.argmax(1) != y_held).astype(np.float64)
    w = importance_weights(f_train, f_tgt, f_held)
    u, scale = _scaled_weights(w)
    return {
        "holdout_error": float(errors.mean()),
        "iw_risk": importance_weighted_risk(errors, w),
        "dev_risk": dev_risk(errors, w),
        "entropy": prediction_entropy(p_tgt),
        "snd": soft_neighborhood_density(p_tgt) if len(p_tgt) > 1 else None,  # no neighbours to one sample
        "weights_mean": float(u.mean()) * scale,  # (inf only where the mean itself is beyond a float)
        "weights_ess": effective_sample_fraction(u),
    }


def score_network(
    model: nn.Module,
    source_train: Any,
    source_held: Any,
    target: Any,
    device: str | torch.device = "cpu",
    batch_size: int = 512,
    workers: int = 0,
) -> dict[str, float | None]:
    """:func:`score_outputs` for ``model`` (a dalib network: ``model(x)`` gives ``.features``
    and ``.logits``), from three domains (:class:`dalib.data.Domain`): the source samples it
    trained on, the labelled source samples it did not (``source_held``), and the target,
    whose labels are not read. One forward pass over each, in eval mode."""
    from dalib.runner import forward_all

    device = torch.device(device)
    f_train, _, _ = forward_all(model, source_train, device, batch_size, workers)
    f_held, z_held, y_held = forward_all(model, source_held, device, batch_size, workers)
    f_tgt, z_tgt, _ = forward_all(model, target, device, batch_size, workers)  # its labels unread
    return score_outputs(f_train, f_held, z_held, y_held, f_tgt, z_tgt)
