"""``get_params`` / ``set_params`` for the shallow estimators, as scikit-learn estimators have them."""

from __future__ import annotations

import inspect
from typing import Any, TypeVar

from sklearn.exceptions import NotFittedError as _SklearnNotFitted

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
