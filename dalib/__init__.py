"""dalib: domain adaptation for PyTorch, built on method plugins.

>>> import dalib
>>> result = dalib.run(dalib.RunConfig(method="dann", src="mnist", tgt="usps", steps=500))
"""

from dalib.config import param
from dalib.errors import DalibError
from dalib.plugin import Adapted, Batch, Context, Method, Outputs, Progress
from dalib.registry import get_method, list_methods, load_plugin_module, register_method
from dalib.runner import RunConfig, RunResult, load_model, run

__version__ = "0.1.0"

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
]
