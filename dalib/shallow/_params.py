"""``get_params`` / ``set_params`` for the shallow estimators, as scikit-learn estimators have them."""

from __future__ import annotations

import inspect
from typing import Any, TypeVar

from sklearn.exceptions import NotFittedError as _SklearnNotFitted
from torch import Tensor

from dalib.errors import ConfigError, InputError


class NotFittedError(InputError, _SklearnNotFitted):
    """A shallow estimator or classifier used before ``fit``: a dalib input error that
    ``except sklearn.exceptions.NotFittedError`` catches too."""


_P = TypeVar("_P", bound="Params")  # set_params gives the estimator back as its own class (chained: .fit)


class Params:
    """The ``__init__`` arguments, kept as attributes of the same names, are the estimator's
    parameters: ``sklearn.base.clone`` and parameter grids work on them, and scikit-learn's
    ``check_is_fitted`` and tags read the estimator."""

    def __sklearn_is_fitted__(self) -> bool:
        return any(k.endswith("_") and not k.startswith("__") for k in vars(self))

    def __sklearn_tags__(self) -> Any:
        """scikit-learn >= 1.6 reads an estimator's tags (``check_is_fitted``, ``is_classifier``):
        neither a classifier nor a regressor; a transformer where it has ``transform``; ``fit``
        takes the target samples, not labels, as its second argument."""
        from sklearn.utils import Tags, TargetTags, TransformerTags

        return Tags(estimator_type=None, target_tags=TargetTags(required=False),
                    transformer_tags=TransformerTags() if hasattr(self, "transform") else None)

    def _keep_features(self, Xs: Any, n_features: int) -> None:
        """Keep which features a fit saw, for :meth:`_transform_input` and scikit-learn, once the
        fit has computed all else: ``n_features_in_`` and, for a DataFrame of named columns,
        ``feature_names_in_`` (absent otherwise: a refit on arrays keeps no earlier names)."""
        from dalib.shallow._checks import feature_names

        self.n_features_in_ = n_features
        names = feature_names(Xs)
        if names is None:
            self.__dict__.pop("feature_names_in_", None)
        else:
            self.feature_names_in_ = names

    def _transform_input(self, X: Any, Xs: Any, fitted: str) -> tuple[Tensor, Any]:
        """``transform``'s samples, ``X`` or ``Xs`` (as POT's ``ot.da`` names them), as a checked
        (n, d) float64 matrix with the fitted features, and as given; :class:`NotFittedError`
        before a fit (one that set the attribute ``fitted``)."""
        from dalib.shallow._checks import as_matrix, check_feature_names

        kind = type(self).__name__
        if not hasattr(self, fitted):
            raise NotFittedError(f"{kind} is not fitted yet: call fit(Xs, Xt) first")
        if (X is None) == (Xs is None):
            raise InputError(f"{kind}.transform takes the samples once: transform(X), or transform(Xs=X) as POT "
                             f"names them; got {'neither' if X is None else 'both'}")
        given, name = (X, "X") if Xs is None else (Xs, "Xs")
        x = as_matrix(given, name)
        if x.shape[1] != self.n_features_in_:
            raise InputError(f"{name} has {x.shape[1]} features, {kind} was fitted on {self.n_features_in_}")
        check_feature_names(getattr(self, "feature_names_in_", None), given, name, f"those {kind} was fitted on",
                            f"{name}[{kind.lower()}.feature_names_in_]")
        return x, given

    @classmethod
    def _param_names(cls) -> list[str]:
        return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The estimator's parameters by name (``deep`` is accepted for scikit-learn)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self: _P, **params: Any) -> _P:
        """Set parameters by name; an unknown name raises :class:`~dalib.errors.ConfigError`."""
        names = self._param_names()
        unknown = sorted(set(params) - set(names))
        if unknown:
            raise ConfigError(f"unknown parameter(s) {', '.join(unknown)} of {type(self).__name__}; "
                              f"valid: {', '.join(names)}")
        for name, value in params.items():
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        defaults = {n: p.default for n, p in inspect.signature(type(self).__init__).parameters.items() if n != "self"}
        changed = [f"{n}={v!r}" for n, v in self.get_params().items() if not _same(v, defaults.get(n))]
        return f"{type(self).__name__}({', '.join(changed)})"


def _same(value: Any, default: Any) -> bool:
    """Whether a parameter is at its default (an array's comparison has no single truth value)."""
    if value is default:
        return True
    try:
        return bool(value == default)
    except (ValueError, RuntimeError, TypeError):
        return False
