"""Classifiers of the shallow pipeline: exact 1-NN, logistic regression, linear SVM.

``make_classifier(name)`` returns an object with ``fit(X, y, sample_weight=None)`` and
``predict(X)``; X may be a numpy array or a tensor.

* ``"1nn"``: exact 1-nearest neighbour (Euclidean, float64, torch). A sample weight
  cannot change a nearest neighbour, so only its support matters: samples of weight 0
  are left out of the reference set.
* ``"linear"``: scikit-learn ``LogisticRegression`` (L2, C = 1, lbfgs), weighted.
* ``"svm"``: scikit-learn ``LinearSVC`` (C = 1, squared hinge, one-vs-rest), weighted;
  solved in the dual with enough iterations to converge on 800-d SURF features (the
  primal solver that ``dual="auto"`` picks there stops unconverged after minutes).
* ``"svc"``: scikit-learn ``SVC(kernel="linear", C=1)``, i.e. libsvm (hinge, one-vs-one),
  weighted: the classifier of the CORAL paper's code (libsvm with a linear kernel).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dalib._arrays import cpu_by_default
from dalib.errors import InputError, UnknownNameError
from dalib.kernels.distance import nearest_rows
from dalib.shallow._checks import as_labels, as_matrix, to_numpy
from dalib.shallow._params import NotFittedError

__all__ = ["CLASSIFIERS", "NearestNeighbor", "make_classifier"]

CLASSIFIERS = ("1nn", "linear", "svm", "svc")


def _check_weights(sample_weight: Any, n: int) -> np.ndarray | None:
    if sample_weight is None:
        return None
    w = to_numpy(sample_weight) if isinstance(sample_weight, torch.Tensor) else np.asarray(sample_weight)
    w = w.astype(np.float64)
    if w.ndim == 0:  # one weight for every sample, as scikit-learn takes it
        w = np.full(n, float(w))
    if w.ndim > 2 or (w.ndim == 2 and w.shape[1] != 1) or w.shape[0] != n:
        raise InputError(f"sample_weight has shape {w.shape} for {n} samples: give ({n},)")
    w = w.reshape(-1)
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise InputError("sample_weight must be finite and non-negative")
    if not np.any(w > 0):
        raise InputError("sample_weight is zero everywhere")
    return w


class NearestNeighbor:
    """Exact 1-nearest-neighbour classifier (squared Euclidean distance, float64).

    Ties go to the reference sample that comes first. Distances are computed in blocks of
    query rows, so memory stays bounded by ``block_rows × n_reference``.
    """

    def __init__(self, block_rows: int = 1024) -> None:
        self.block_rows = block_rows

    @cpu_by_default
    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> NearestNeighbor:
        x = as_matrix(X, "X")
        labels = as_labels(y, x.shape[0], "y")
        w = _check_weights(sample_weight, x.shape[0])
        if w is not None:
            keep = torch.from_numpy(w > 0)
            x, labels = x[keep], labels[w > 0]
        self.reference_ = x  # (n, d)
        self.labels_ = labels  # (n,)
        self.classes_ = np.unique(labels)
        return self

    @cpu_by_default
    def predict(self, X: Any) -> np.ndarray:
        if not hasattr(self, "reference_"):
            raise NotFittedError("classifier is not fitted yet: call fit first")
        ref = self.reference_
        x = as_matrix(X, "X").to(ref.device)  # queries on the device of the fitted samples
        if x.shape[1] != ref.shape[1]:
            raise InputError(f"X has {x.shape[1]} features, the classifier was fitted on {ref.shape[1]}")
        return self.labels_[nearest_rows(x, ref, self.block_rows).cpu().numpy()]


def make_classifier(name: str) -> Any:
    """A fresh classifier: ``"1nn"``, ``"linear"`` (logistic regression), ``"svm"``
    (linear SVM, liblinear) or ``"svc"`` (linear-kernel SVM, libsvm). Unknown names raise
    :class:`dalib.errors.UnknownNameError`."""
    if name == "1nn":
        return NearestNeighbor()
    if name in ("linear", "svm", "svc"):
        try:
            from sklearn.linear_model import LogisticRegression
            from sklearn.svm import SVC, LinearSVC
        except ImportError as exc:  # a declared dependency, but say what is missing
            raise ImportError(f"classifier {name!r} needs scikit-learn: pip install scikit-learn ({exc})") from exc
        # the SVMs' own seed: without one, scikit-learn draws it from numpy's global generator,
        # which moved the caller's next numbers, and liblinear's order of coordinates with them
        # (an unconverged fit predicted by the caller's seed)
        if name == "linear":
            est = LogisticRegression(C=1.0, max_iter=1000)
        elif name == "svm":
            est = LinearSVC(C=1.0, dual=True, max_iter=20000, random_state=0)
        else:
            est = SVC(kernel="linear", C=1.0, random_state=0)
        return _SklearnClassifier(est)
    raise UnknownNameError(f"unknown classifier {name!r}; known: {', '.join(CLASSIFIERS)}")


class _SklearnClassifier:
    """Adapts a scikit-learn classifier to numpy/tensor inputs and dalib's input errors."""

    def __init__(self, estimator: Any) -> None:
        self.estimator = estimator

    @cpu_by_default
    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> _SklearnClassifier:
        x = to_numpy(as_matrix(X, "X"))
        labels = as_labels(y, x.shape[0], "y")
        w = _check_weights(sample_weight, x.shape[0])
        if np.unique(labels if w is None else labels[w > 0]).shape[0] < 2:
            raise InputError("the classifier needs samples of at least 2 classes")
        self.estimator.fit(x, labels, sample_weight=w)
        self.classes_ = self.estimator.classes_
        return self

    @cpu_by_default
    def predict(self, X: Any) -> np.ndarray:
        if not hasattr(self, "classes_"):
            raise NotFittedError("classifier is not fitted yet: call fit first")
        x = to_numpy(as_matrix(X, "X"))
        if x.shape[1] != self.estimator.n_features_in_:
            raise InputError(
                f"X has {x.shape[1]} features, the classifier was fitted on {self.estimator.n_features_in_}"
            )
        return self.estimator.predict(x)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.estimator!r})"
