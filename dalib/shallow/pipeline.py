"""The shallow pipeline: adapt feature matrices, train a classifier on the source, predict
the target. What ``dalib run`` calls on feature datasets, usable on plain arrays too.

>>> from dalib.shallow import run_shallow
>>> res = run_shallow("coral", Xs, ys, Xt, yt, classifier="svm", params={"reg": 1.0})
>>> res.target_accuracy

A method's shallow form is its plugin's ``adapt`` classmethod with its ``ShallowConfig``
(see :mod:`dalib.plugin`), so any registered method with a shallow form runs here,
third-party ones included. The built-in forms:

* ``source_only``: the classifier on the raw source features;
* ``kmm``: the classifier trained with :class:`KMM` source weights (``sample_weight``);
* ``coral``: the classifier trained on :class:`CORAL`-recoloured source features;
* ``ot``: the classifier trained on the source samples transported by :class:`OTMapping`
  (with the source labels, which the class-regularised plan uses).

The hyperparameter dataclasses of the built-in estimators live here, once:
:class:`KMMConfig`, :class:`CoralConfig`, :class:`OTConfig` (the plugins use them as
their ``ShallowConfig``). ``params`` are given as values or as strings (``{"reg": "0.1"}``
from ``key=value`` on a command line); unknown keys and bad values raise
:class:`dalib.errors.ConfigError`. Target labels are used for the reported accuracy only.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from dalib._arrays import cpu_by_default
from dalib.config import build_config, param
from dalib.data.domain import UNLABELLED, labelled_accuracy
from dalib.errors import ConfigError, InputError, UnknownNameError
from dalib.shallow._checks import as_labels, fit_pair, to_numpy
from dalib.shallow.classifiers import CLASSIFIERS, make_classifier
from dalib.shallow.coral import CORAL
from dalib.shallow.kmm import KMM
from dalib.shallow.ot_mapping import OTMapping

__all__ = [
    "CoralConfig",
    "KMMConfig",
    "OTConfig",
    "ShallowResult",
    "fit_shallow",
    "run_shallow",
    "shallow_methods",
]


class _EstimatorConfig:
    """Mixin of an estimator's hyperparameter dataclass: checked on creation by the
    estimator's own checks, and :meth:`build` makes the estimator. Subclasses may add
    fields the estimator does not take (a deep plugin's options); ``build`` leaves
    them out."""

    estimator: ClassVar[type]

    def __post_init__(self) -> None:
        self.build()._check_params()

    def build(self) -> Any:
        names = inspect.signature(self.estimator).parameters
        return self.estimator(**{k: v for k, v in dataclasses.asdict(self).items() if k in names})


@dataclass(frozen=True)
class KMMConfig(_EstimatorConfig):
    """Kernel mean matching (Huang et al., NIPS 2006)."""

    estimator: ClassVar[type] = KMM
    bandwidth: float | None = param(None, "Gaussian kernel bandwidth σ; None: median heuristic")
    B: float = param(1000.0, "upper bound on each source weight")
    eps: float | None = param(None, "slack on the mean weight; None: (√n_s − 1)/√n_s")
    max_iter: int = param(1000, "maximum solver iterations (one kernel product each)")
    tol: float = param(1e-6, "stop when f decreased by at most tol·|f| over 10 iterations")
    backend: str = param("auto", "auto, dense, blocked or keops")
    kernel: str = param("rbf", "kernel (rbf only)")
    dtype: str = param("float32", "precision of the kernel products: float32 or float64")


@dataclass(frozen=True)
class CoralConfig(_EstimatorConfig):
    """CORAL (Sun, Feng & Saenko, AAAI 2016)."""

    estimator: ClassVar[type] = CORAL
    reg: float = param(1.0, "λ added to both covariances")


@dataclass(frozen=True)
class OTConfig(_EstimatorConfig):
    """OT mapping (Courty et al., TPAMI 2017)."""

    estimator: ClassVar[type] = OTMapping
    reg: float | None = param(1.0, "entropic regularisation ε; None: exact OT")
    reg_cl: float | None = param(None, "class regularisation η (Lp-L1, p = 1/2); None: off")
    norm: str | None = param("median", "cost normalisation: None, median or max")
    max_iter: int = param(1000, "Sinkhorn iterations (per outer step with reg_cl)")
    tol: float = param(1e-9, "Sinkhorn tolerance on the target marginal's error (POT path: its stopThr, an L2 norm; log-domain path: the L1 norm, at least 16 x the dtype's epsilon)")
    max_outer_iter: int = param(10, "majorisation-minimisation steps with reg_cl")
    backend: str = param("auto", "auto, pot, dense, blocked or keops")
    dtype: str = param("float32", "precision of the log-domain solver: float32 or float64")


@dataclass
class ShallowResult:
    """What :func:`run_shallow` returns.

    ``pred_t`` (n_t,) predicted target labels; ``target_accuracy`` and
    ``source_accuracy`` in [0, 1] (the target one None when no target labels were given;
    the source one is on the adapted source samples the classifier trained on);
    ``config`` the hyperparameters used; ``extra`` the method's diagnostics (KMM:
    objective, MMD², iterations, weight statistics; OT: iterations, backend);
    ``seconds``: adaptation and classification wall time.
    """

    method: str
    classifier: str
    pred_t: np.ndarray
    target_accuracy: float | None
    source_accuracy: float
    config: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def shallow_methods() -> list[str]:
    """The registered methods that have a shallow form, sorted."""
    from dalib.registry import get_method, list_methods

    return [m for m in list_methods() if get_method(m).ShallowConfig is not None]


def _shallow_method(method: str) -> type:
    from dalib.registry import get_method

    method_cls = get_method(method)  # UnknownNameError lists the known names
    if method_cls.ShallowConfig is None:
        raise ConfigError(f"method {method!r} has no shallow form; methods with one: {', '.join(shallow_methods())}")
    return method_cls


def fit_shallow(
    method_cls: type, config: Any, xs: torch.Tensor, ys: np.ndarray, xt: torch.Tensor, classifier: str
) -> tuple[Any, Any]:
    """Adapt with ``method_cls.adapt(config, ...)`` and fit ``classifier`` on the result.

    ``xs`` (n_s, d) and ``xt`` (n_t, d) float tensors, ``ys`` (n_s,) integer labels.
    Returns ``(classifier, adapted)``: predict ``adapted.xt`` with the classifier.
    """
    if classifier not in CLASSIFIERS:
        raise UnknownNameError(f"unknown classifier {classifier!r}; known: {', '.join(CLASSIFIERS)}")
    adapted = method_cls.adapt(config, xs, torch.as_tensor(ys), xt)
    weights = None if adapted.weights is None else to_numpy(torch.as_tensor(adapted.weights))
    clf = make_classifier(classifier)
    clf.fit(to_numpy(torch.as_tensor(adapted.xs)), ys, sample_weight=weights)
    return clf, adapted


@cpu_by_default
def run_shallow(
    method: str,
    Xs: Any,
    ys: Any,
    Xt: Any,
    yt: Any = None,
    *,
    classifier: str = "1nn",
    params: dict[str, Any] | None = None,
) -> ShallowResult:
    """Adapt with ``method``'s shallow form, train ``classifier`` on the (adapted /
    weighted) source ``Xs`` (n_s, d), ``ys`` (n_s,), predict the target ``Xt`` (n_t, d).

    ``yt`` (n_t,), optional, only scores the predictions: its samples labelled
    :data:`dalib.data.domain.UNLABELLED` (−1) are left out, and with none labelled the target
    accuracy is None. Raises
    :class:`dalib.errors.UnknownNameError` for an unknown method or classifier,
    :class:`dalib.errors.ConfigError` for bad ``params`` or a method without a shallow
    form, :class:`dalib.errors.InputError` for bad arrays.
    """
    method_cls = _shallow_method(method)
    if classifier not in CLASSIFIERS:
        raise UnknownNameError(f"unknown classifier {classifier!r}; known: {', '.join(CLASSIFIERS)}")
    cfg = build_config(method_cls.ShallowConfig, params, owner=method)
    xs, xt = fit_pair(Xs, Xt, labels_hint="")  # (no Pipeline here: its Xt is given by name)
    labels = as_labels(ys, xs.shape[0], "ys")
    if bool((labels < 0).any()):  # −1 would be trained as a class of its own, and predicted
        raise InputError(f"ys holds {int((labels < 0).sum())} negative label(s): class labels are >= 0, and the "
                         f"source must be labelled ({UNLABELLED} marks an unlabelled sample)")
    yt_arr = None if yt is None else as_labels(yt, xt.shape[0], "yt")
    if yt_arr is not None and bool((yt_arr < UNLABELLED).any()):  # (they had been left out of the score)
        raise InputError(f"yt holds {int((yt_arr < UNLABELLED).sum())} label(s) below {UNLABELLED}: class labels "
                         f"are >= 0, and {UNLABELLED} marks an unlabelled sample")
    start = time.perf_counter()
    clf, adapted = fit_shallow(method_cls, cfg, xs, labels, xt, classifier)
    pred = np.asarray(clf.predict(to_numpy(torch.as_tensor(adapted.xt))))
    source_acc = float(np.mean(np.asarray(clf.predict(to_numpy(torch.as_tensor(adapted.xs)))) == labels))
    seconds = time.perf_counter() - start
    return ShallowResult(
        method=method,
        classifier=classifier,
        pred_t=pred,
        target_accuracy=labelled_accuracy(pred, yt_arr),
        source_accuracy=source_acc,
        config=dataclasses.asdict(cfg),
        extra=dict(adapted.info or {}),
        seconds=seconds,
    )

