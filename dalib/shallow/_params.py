"""``get_params`` / ``set_params`` for the shallow estimators, as scikit-learn estimators have them."""

from __future__ import annotations

import inspect
from typing import Any

from dalib.errors import ConfigError


class Params:
    """The ``__init__`` arguments, kept as attributes of the same names, are the estimator's
    parameters: ``sklearn.base.clone`` and parameter grids work on them."""

    @classmethod
    def _param_names(cls) -> list[str]:
        return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The estimator's parameters by name (``deep`` is accepted for scikit-learn)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> Params:
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
