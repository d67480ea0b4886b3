"""Shallow domain adaptation on feature matrices: fit/transform estimators and a pipeline.

Estimators take numpy arrays or torch tensors (n_samples, n_features), scikit-learn style:

* :class:`KMM` — kernel mean matching source weights (Huang et al., NIPS 2006);
* :class:`CORAL` — correlation alignment (Sun, Feng & Saenko, AAAI 2016);
* :class:`OTMapping` — optimal-transport mapping, exact, entropic or class-regularised
  (Courty et al., TPAMI 2017);
* :func:`make_classifier` — ``"1nn"``, ``"linear"`` (logistic regression), ``"svm"``;
* :func:`run_shallow` — a registered method's shallow form, then the classifier, on the
  target. See docs/shallow.md.
"""

from dalib.shallow.classifiers import CLASSIFIERS, NearestNeighbor, make_classifier
from dalib.shallow.coral import CORAL
from dalib.shallow.kmm import KMM
from dalib.shallow.ot_mapping import OTMapping
from dalib.shallow._params import NotFittedError
from dalib.shallow.pipeline import (
    CoralConfig,
    KMMConfig,
    OTConfig,
    ShallowResult,
    fit_shallow,
    run_shallow,
    shallow_methods,
)

__all__ = [
    "CLASSIFIERS",
    "CORAL",
    "CoralConfig",
    "KMM",
    "KMMConfig",
    "NearestNeighbor",
    "NotFittedError",
    "OTConfig",
    "OTMapping",
    "ShallowResult",
    "fit_shallow",
    "make_classifier",
    "run_shallow",
    "shallow_methods",
]
