"""dalib: domain adaptation for PyTorch, built on method plugins.

>>> import dalib
>>> result = dalib.run(dalib.RunConfig(method="dann", src="mnist", tgt="usps", steps=500))

The names below (and the subpackages) are imported at first use, not by ``import dalib``:
the command line answers Ctrl-C in one line from its first moment, while torch is still
being imported (that import, of about 1.5 s, had been outside its handler).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: each public name, and the module that defines it
_EXPORTS = {
    "param": "dalib.config",
    "DalibError": "dalib.errors",
    **dict.fromkeys(("Adapted", "Batch", "Context", "Method", "Outputs", "Progress"), "dalib.plugin"),
    **dict.fromkeys(("get_method", "list_methods", "load_plugin_module", "register_method"), "dalib.registry"),
    **dict.fromkeys(("RunConfig", "RunResult", "load_model", "run"), "dalib.runner"),
}
__all__ = [
    "Adapted",
    "Batch",
    "Context",
    "DalibError",
    "Method",
    "Outputs",
    "Progress",
    "RunConfig",
    "RunResult",
    "__version__",
    "get_method",
    "list_methods",
    "load_model",
    "load_plugin_module",
    "param",
    "register_method",
    "run",
]  # written out, as type checkers read it (mypy --strict: what a module exports)

if TYPE_CHECKING:  # what type checkers and editors read
    from dalib.config import param
    from dalib.errors import DalibError
    from dalib.plugin import Adapted, Batch, Context, Method, Outputs, Progress
    from dalib.registry import get_method, list_methods, load_plugin_module, register_method
    from dalib.runner import RunConfig, RunResult, load_model, run


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f"{__name__}.{name}")  # a subpackage or module: dalib.runner, ...
    else:
        raise AttributeError(f"module 'dalib' has no attribute {name!r}")
    globals()[name] = value  # (read once)
    return value


def __dir__() -> list[str]:
    import pkgutil

    return sorted(set(globals()) | set(_EXPORTS) | {m.name for m in pkgutil.iter_modules(__path__)
                                                    if not m.name.startswith("_")})
