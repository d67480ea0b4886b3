"""The registry of method plugins.

Methods register with the :func:`register_method` decorator, or are found through the
entry-point group ``dalib.methods`` (first-party plugins use it too). Entry points load
lazily, one at a time: a plugin that fails to import is recorded and reported by
``dalib list``; it does not stop the others from loading.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
import types
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any, ClassVar, TypeVar, get_origin

from dalib.config import parse_value, resolved_types
from dalib.data.registry import (dataset_plugin_errors, dist_name, failed_plugin, forget_failed, load_entry_point,
                                 note_origin, record_failure, same_definition)
from dalib.errors import ConfigError, RegistryError, UnknownNameError, first_line, import_failure
from dalib.plugin import Method

__all__ = [
    "get_method",
    "list_methods",
    "load_plugin_module",
    "plugin_errors",
    "register_method",
    "unregister_method",
]

ENTRY_POINT_GROUP = "dalib.methods"
#: the start of the module name a plugin file loaded by path (``--plugin file.py``) gets
USER_PLUGIN_PREFIX = "dalib_user_plugin_"

M = TypeVar("M", bound=type[Method])

_methods: dict[str, type[Method]] = {}
_broken: dict[str, str] = {}
_entry_points_loaded = False
_deferred: list[EntryPoint] = []  # class entry points of modules that were being imported
#: the plugin modules loaded by load_plugin_module -> the methods each registered
_loaded_modules: dict[str, list[str]] = {}


def check_name(name: str, kind: str = "method") -> None:
    """Refuse a name the command line cannot take (``kind``: what it names, for the message)."""
    if not isinstance(name, str) or not name or not name[0].isalnum() or not name.replace("_", "").replace("-", "").isalnum():
        raise RegistryError(f"invalid {kind} name {name!r}: use letters, digits, '_' or '-', "
                            "starting with a letter or a digit (the command line reads a leading '-' as an option)")


def defined_at(cls: type) -> str:
    """Where a class is defined, for messages: ``module.Class``, or ``Class in FILE`` for a
    plugin file loaded by path (its module's name is made up)."""
    if cls.__module__.startswith(USER_PLUGIN_PREFIX):
        try:
            return f"{cls.__qualname__} in {inspect.getsourcefile(cls) or cls.__module__}"
        except TypeError:
            pass
    return f"{cls.__module__}.{cls.__qualname__}"


def code_digest(source: str | bytes) -> bytes:
    """What of a Python source can change numbers: its syntax tree without docstrings (comments
    and layout are not in it), so that a finished cell stays current through an edit of the
    documentation; the source itself where it does not parse."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return source.encode() if isinstance(source, str) else source
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree).encode()


def method_code_hash(cls: type) -> str:
    """A hash of the code of the source file of a method class's module (:func:`code_digest`):
    a resumed run and a benchmark's kept cells tell when it changed. A class whose module has no
    source to read (a notebook cell, ``python -``) is hashed by its compiled code
    (:func:`_compiled_digest`); "" when that fails (a record, never a reason for a run to
    fail). A subclass of a class of another module (a bundled plugin's ``DANN``, a mixin) runs
    that module's code too (an inherited ``loss``): its hash covers its bases' modules but
    dalib's own, which :func:`dalib_code_hash` covers, torch's and the standard library's (a
    class of one module hashes as before)."""
    own = _module_code_hash(cls)
    modules = {cls.__module__}
    parts = [own]
    for base in getattr(cls, "__mro__", ())[1:]:  # (an architecture builder is a function)
        module = base.__module__
        top = module.partition(".")[0]
        if module not in modules and top not in ("dalib", "torch", "builtins") and top not in sys.stdlib_module_names:
            modules.add(module)  # a parent method's module, or a mixin's (a loss of its own)
            parts.append(_module_code_hash(base))
    if len(parts) == 1:
        return own
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16] if all(parts) else ""


def _module_code_hash(cls: type) -> str:
    """:func:`method_code_hash` of one class's module alone."""
    try:
        source = inspect.getsource(sys.modules[cls.__module__])
    except (OSError, TypeError, KeyError):
        try:
            return hashlib.sha256(_compiled_digest(cls)).hexdigest()[:16]
        except Exception:  # (a repr that raises, a structure too deep: an object of the user's)  # noqa: BLE001
            return ""
    return hashlib.sha256(code_digest(source)).hexdigest()[:16]


#: the plain values whose repr is the same in every process
_PLAIN = (int, float, complex, str, bytes, bool, type(None))


def _stable_repr(value: Any, depth: int = 0) -> str:
    """What of ``value`` every process writes the same: plain values and their lists, tuples,
    sets (sorted: their order follows the hash seed) and dicts; functions and classes by their
    qualified names; any other object by its type alone (its repr may hold an address, or a set
    in hash-seed order)."""
    if isinstance(value, _PLAIN):
        return repr(value)
    if isinstance(value, (types.FunctionType, types.BuiltinFunctionType, type)):
        return f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', '')}"
    if depth < 8:  # (a list that holds itself)
        if isinstance(value, (set, frozenset)):
            return "{" + ", ".join(sorted(_stable_repr(v, depth + 1) for v in value)) + "}"
        if isinstance(value, (tuple, list)):
            return type(value).__name__ + "(" + ", ".join(_stable_repr(v, depth + 1) for v in value) + ")"
        if isinstance(value, dict):
            return "{" + ", ".join(sorted(f"{_stable_repr(k, depth + 1)}: {_stable_repr(v, depth + 1)}"
                                          for k, v in value.items())) + "}"
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


def _compiled_digest(cls: type) -> bytes:
    """What of a class's compiled code can change numbers, for a class with no source file: the
    instructions, names and constants of its functions (the ones decorators, ``cached_property``
    and ``partialmethod`` wrap, too), their defaults and the values their closures give them, its
    other class attributes, and the same of its nested classes (its Config), of its bases from the
    same module, and of the module's constants, functions and classes (a discriminator) that its
    code reads as globals; without docstrings, file names, line numbers or memory addresses (a
    notebook cell run again gets another file name). Other objects count by their type alone."""
    import dis

    parts: list[str] = []
    seen: set[int] = set()

    def add_code(code: types.CodeType, scope: dict[str, Any]) -> None:
        parts.extend((code.co_code.hex(), repr(code.co_names)))
        consts = code.co_consts
        if not code.co_name.startswith("<") and consts and (
                code.co_flags & 0x4000000 if sys.version_info >= (3, 14) else isinstance(consts[0], (str, type(None)))):
            consts = consts[1:]  # a def's docstring (or, before 3.14, the None kept in its place)
        for const in consts:
            if isinstance(const, types.CodeType):
                add_code(const, scope)
            else:
                parts.append(_stable_repr(const))
        for ins in dis.get_instructions(code):  # the module's names the code reads (not attributes')
            if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME") and isinstance(ins.argval, str) and ins.argval in scope:
                value = scope[ins.argval]
                if isinstance(value, (types.FunctionType, type)) and value.__module__ == cls.__module__:
                    parts.append(ins.argval)
                    add_function(value) if isinstance(value, types.FunctionType) else add_class(value)
                elif not isinstance(value, (types.ModuleType, types.FunctionType, type)):
                    parts.append(f"{ins.argval}={_stable_repr(value)}")

    def add_function(fn: Any) -> None:
        fn = inspect.unwrap(fn)  # (a decorated method: the user's function, not the decorator's wrapper)
        if id(fn) in seen or not isinstance(fn, types.FunctionType):
            return
        seen.add(id(fn))
        parts.append(f"{fn.__qualname__}{_stable_repr(fn.__defaults__)}{_stable_repr(fn.__kwdefaults__)}")
        add_code(fn.__code__, fn.__globals__)
        for cell in fn.__closure__ or ():
            with contextlib.suppress(ValueError):  # (an empty cell)
                value = cell.cell_contents
                if isinstance(value, types.FunctionType):
                    add_function(value)
                else:
                    parts.append(_stable_repr(value))

    def add_class(owner: type) -> None:
        if id(owner) in seen:
            return
        seen.add(id(owner))
        for name, value in sorted(vars(owner).items()):
            if name.startswith("__") and name.endswith("__") and not callable(value):
                continue  # (__module__, __qualname__, __doc__, __dict__, a dataclass's fields...)
            # static and class methods, properties, cached_property, partialmethod: their function
            inner = next((getattr(value, a) for a in ("__func__", "fget", "func") if hasattr(value, a)), value)
            if isinstance(inner, types.FunctionType) or hasattr(inner, "__wrapped__"):
                parts.append(f"{name}{_stable_repr(getattr(value, 'args', ()))}")
                add_function(inner)
            elif isinstance(value, type) and value.__module__ == cls.__module__:
                parts.append(name)
                add_class(value)
            else:
                parts.append(f"{name}={_stable_repr(value)}")
        for base in owner.__mro__[1:]:  # (a helper network's own bases from the cell)
            if base.__module__ == cls.__module__:
                add_class(base)

    add_class(cls)
    return "\0".join(parts).encode()


#: dalib's modules that cannot change a run's numbers (the command line, messages, docs rendering)
_NO_NUMBERS = frozenset({"cli.py", "errors.py", "_rst.py"})
_dalib_code: dict[tuple[tuple[str, int, int], ...], str] = {}  # by the files' names, sizes and times


def dalib_code_hash() -> str:
    """A hash of dalib's own code (:func:`code_digest` of the ``.py`` files of the installed package but
    :data:`_NO_NUMBERS`: the runner, models, losses, kernels, data and shallow estimators that
    every method shares): a run's result.json and a benchmark's cells record it, so that numbers
    of another version of dalib can be told apart (its version string is not changed by every
    commit). Parsed again only when a file changed."""
    import dalib

    root = Path(dalib.__file__).parent
    files = [p for p in sorted(root.rglob("*.py")) if not (p.parent == root and p.name in _NO_NUMBERS)]
    key = []
    for path in files:
        st = path.stat()
        key.append((path.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    found = _dalib_code.get(tuple(key))
    if found is None:
        digest = hashlib.sha256()
        for path, (name, _, _) in zip(files, key):
            digest.update(name.encode() + b"\0" + code_digest(path.read_bytes()) + b"\0")
        found = _dalib_code[tuple(key)] = digest.hexdigest()[:16]
    return found


def _plain_default(value: Any) -> bool:
    """Whether a hyperparameter's default is what ``--set``, a suite's TOML and result.json
    hold: None, a boolean, a number, a string, or lists, tuples and string-keyed tables of them."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return type(value) in (type(None), bool, int, float, str)
    if isinstance(value, (list, tuple)):
        return type(value) in (list, tuple) and all(_plain_default(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_default(v) for k, v in value.items())
    return False


def _check_config(name: str, attr: str, config: type) -> None:
    """A method's hyperparameters can be left at their defaults and written to result.json:
    refused at registration, not after a run has trained."""
    for f in dataclasses.fields(config):
        if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise RegistryError(f"method {name!r}: {attr} field {f.name!r} has no default; every hyperparameter "
                                "needs one (the paper's), as a run may leave it unset")
    try:
        defaults = config()
    except Exception as exc:
        raise RegistryError(f"method {name!r}: its {attr}'s own defaults are refused by its checks: "
                            f"{type(exc).__name__}: {first_line(exc)}") from None
    hints = resolved_types(config)
    for f in dataclasses.fields(config):
        value = getattr(defaults, f.name, None)  # a field(init=False) that __post_init__ leaves unset: none
        if not _plain_default(value):
            raise RegistryError(f"method {name!r}: {attr} field {f.name!r} defaults to {value!r}, which result.json "
                                "cannot hold: use None, a boolean, a number, a string, or a list of them")
        hint = hints.get(f.name)
        if f.init and hint is not None and not isinstance(hint, str):  # (an annotation left unresolved: unknown)
            try:  # the value --set and suite files are held to (an int field's 0.5 went to result.json)
                parse_value(value, hint, f.name)
            except ConfigError as exc:
                raise RegistryError(f"method {name!r}: {attr} field {f.name!r} defaults to {value!r}: "
                                    f"{first_line(exc).removeprefix(f'bad value {value!r} for {f.name}: ')}") from None


def _class_var(hint: Any) -> bool:
    """Whether an annotation is ``ClassVar[...]`` (a class attribute, never a dataclass field),
    as an object or as the string that ``from __future__ import annotations`` leaves, under
    whatever name the module gave typing (``typing.``, ``t.``, ``tp.``, ``typing_extensions.``)."""
    if isinstance(hint, str):
        return re.match(r"\s*(?:\w+\s*\.\s*)?ClassVar\b", hint) is not None
    return hint is ClassVar or get_origin(hint) is ClassVar


def _add(name: str, cls: type) -> None:
    if not (inspect.isclass(cls) and issubclass(cls, Method)):
        raise RegistryError(f"method {name!r} must be a subclass of dalib.Method, got {cls!r}")
    for attr in ("Config", "ShallowConfig"):
        config = getattr(cls, attr, None)
        if config is None and attr == "ShallowConfig":
            continue
        if not (isinstance(config, type) and dataclasses.is_dataclass(config) and config.__dataclass_params__.frozen):
            raise RegistryError(f"method {name!r}: its {attr} must be a class decorated with @dataclass(frozen=True)")
        if "__dataclass_fields__" not in vars(config):  # a subclass of a Config, itself undecorated: its own
            fields = {f.name for f in dataclasses.fields(config)}  # fields and defaults are not the dataclass's
            own = {key for key, hint in inspect.get_annotations(config).items() if not _class_var(hint)}
            ignored = sorted(own | (fields & set(vars(config))))
            if ignored:
                parent = next(b for b in config.__mro__ if "__dataclass_fields__" in vars(b))
                raise RegistryError(f"method {name!r}: its {attr} subclasses {parent.__qualname__} but is not itself "
                                    f"decorated with @dataclass(frozen=True), so its {', '.join(ignored)} would be "
                                    "ignored")
        _check_config(name, attr, config)
    for typo in ("config", "shallow_config", "shallowConfig"):
        if inspect.isclass(cls.__dict__.get(typo)):
            raise RegistryError(f"method {name!r} defines a class {typo!r}: the hyperparameters are read from "
                                "Config (and ShallowConfig), spelt so")
    if cls.loss is Method.loss:  # (else refused at the first step, after the data and prepare())
        raise RegistryError(f"method {name!r} defines no loss(batch, out, progress): every method trains with one")
    existing = _methods.get(name)
    if existing is not None and not same_definition(existing, cls):
        again = (f" (to replace it in this session: dalib.registry.unregister_method({name!r}) first)"
                 if existing.__module__ == "__main__" else "")  # (a class of a notebook cell, renamed since)
        raise RegistryError(f"method {name!r} is already registered by {defined_at(existing)}{again}")
    other = cls.__dict__.get("name")
    if isinstance(other, str) and other != name and _methods.get(other) is cls:
        raise RegistryError(f"method {name!r}: the class {defined_at(cls)} is registered as {other!r} already "
                            f"(a class has one name: register a subclass under {name!r})")
    cls.name = name
    _methods[name] = cls


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator that registers a :class:`~dalib.Method` under ``name``.

    A second, different class under the same name raises :class:`RegistryError`, the
    installed plugins' names included: they are registered first, so a user's class can never
    shadow a built-in method by being imported before it. The same definition run again (a
    notebook cell, a reloaded module: the same module and qualified name) replaces the first.
    """
    check_name(name)

    def decorate(cls: M) -> M:
        _load_entry_points()  # a no-op while the entry points themselves are loading
        _add(name, cls)
        note_origin(_methods, name)
        return cls

    return decorate


def unregister_method(name: str) -> None:
    """Remove a method (mainly for tests and interactive sessions)."""
    _methods.pop(name, None)


def _initializing(ep: EntryPoint) -> bool:
    try:
        name = ep.module
    except AttributeError:  # a value that names no module ("my-entmin"): its load fails, and is reported, as any
        return False
    module = sys.modules.get(name)
    return module is not None and bool(getattr(module.__spec__, "_initializing", False))


def _load_entry_points() -> None:
    """Import every ``dalib.methods`` entry point once, each in isolation: dalib's own
    first, then the other packages' in name order. A name that is already taken is
    reported as a failed plugin, never silently replaced or skipped. An entry point whose
    module is being imported right now (its decorator got here) waits until it is."""
    global _entry_points_loaded
    if _entry_points_loaded:
        waiting = [ep for ep in _deferred if not _initializing(ep)]
        for ep in waiting:
            _deferred.remove(ep)
            _load_one(ep)
        return
    _entry_points_loaded = True
    eps = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: (dist_name(ep) != "dalib", dist_name(ep), ep.name))
    for ep in eps:
        if _initializing(ep):
            if ep.attr:  # a class of that module, perhaps not defined yet: loaded at the next lookup
                _deferred.append(ep)
            continue  # a module entry point registers itself as its import goes on
        _load_one(ep)


def _registries() -> tuple[dict[str, Any], ...]:
    """The registries a plugin's import may add to: methods, backbones, datasets."""
    from dalib.data.registry import _DATASETS
    from dalib.models.backbones import BACKBONES

    return _methods, BACKBONES, _DATASETS


def _snapshot() -> tuple[dict[str, Any], ...]:
    """Copies of :func:`_registries`, for :func:`_restore`."""
    return tuple(dict(r) for r in _registries())


def _restore(before: tuple[dict[str, Any], ...]) -> None:
    """After a plugin's import failed: the registries as they were ``before`` it
    (:func:`_snapshot`), less what it registered on its way to the failure
    (:func:`dalib.data.registry.forget_failed`), so that run and bench do not offer it."""
    for registry, was in zip(_registries(), before):
        forget_failed(registry, was)


def _load_one(ep: EntryPoint) -> None:
    before = _snapshot()
    try:
        check_name(ep.name)  # the decorator checks its own; an entry point's is named here
        try:
            obj = load_entry_point(ep)
        except BaseException:
            _restore(before)
            raise
        if inspect.ismodule(obj):
            owner = _methods.get(ep.name)
            if owner is None:
                raise RegistryError(f"module {ep.value!r} was imported but registered no method {ep.name!r}")
            if owner.__module__ != obj.__name__:
                raise RegistryError(f"method {ep.name!r} is already registered by {owner.__module__}.{owner.__qualname__}")
        else:
            _add(ep.name, obj)  # a Method class named by the entry point itself
    except (Exception, SystemExit) as exc:  # a broken plugin must not break the others (nor parse argv and exit)
        # (an import that succeeded keeps what it registered: the module is there, as a package's
        # __init__ is for another of its entry points)
        record_failure(_broken, ep, exc)


def plugin_files() -> tuple[tuple[str, str], ...]:
    """The plugin files this process loaded (:func:`load_plugin_module`), as (module name, path):
    the names are made up, one per file, and no other process can import them by name."""
    return tuple((name, module.__file__) for name, module in list(sys.modules.items())
                 if name.startswith(USER_PLUGIN_PREFIX) and isinstance(getattr(module, "__file__", None), str))


def load_plugin_file_as(name: str, path: str) -> None:
    """Load the plugin file ``path`` as the module ``name`` that another process gave it, unless a
    module of that name is here: a worker process that another start method than fork began
    (spawn, forkserver) can then unpickle what the plugin's classes made there."""
    if name not in sys.modules:
        _run_file_as(name, path)


def _run_file_as(name: str, path: str | Path, alias: str | None = None) -> None:
    """Run the file ``path`` as the module ``name`` (and ``alias``), in :data:`sys.modules` while it
    runs, as an import would be: dataclasses resolve string annotations (``from __future__ import
    annotations``) through it. Out of it again if it fails."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise RegistryError(f"cannot load plugin {str(path)!r}: not a Python file")
    mod = importlib.util.module_from_spec(spec)
    names = [name] if alias is None else [name, alias]
    for each in names:
        sys.modules[each] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        for each in names:
            sys.modules.pop(each, None)
        raise


def load_plugin_module(module: str | os.PathLike[str]) -> list[str]:
    """Import ``module`` (a dotted name or a path to a .py file) so that its
    ``@register_method`` decorators run; return the names it registered. Loading the same
    file again (a notebook cell run twice) replaces its classes. A file's folder joins
    ``sys.path`` (at its end), as running the file would: it can import the modules beside it."""
    _load_entry_points()  # the installed methods first: they are not the module's
    before = _snapshot()
    module = os.fspath(module)
    try:
        if module.endswith(".py"):
            path = Path(module).expanduser()  # (`--plugin=~/x.py`: the shell leaves that ~ alone)
            if not path.is_file():
                raise FileNotFoundError(f"no such file: {module}")
            folder = str(path.resolve().parent)
            if folder not in sys.path:
                sys.path.append(folder)
            stem = path.stem if path.stem.isidentifier() else None
            imported = sys.modules.get(stem) if stem else None
            if imported is not None and imported.__name__ == stem and _same_file(getattr(imported, "__file__", None), path):
                # a plugin file beside it imported it already, by its own name: that module it is
                names = sorted(name for name, cls in _methods.items() if cls.__module__ == stem)
                _loaded_modules[module] = names
                return names
            # one module name per file: two plugin.py files in other folders do not replace each other
            tag = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
            made_up = f"{USER_PLUGIN_PREFIX}{path.stem}_{tag}"
            # the file loaded before: its own classes make way for the ones it defines now
            for name in [name for name, cls in _methods.items() if cls.__module__ == made_up]:
                del _methods[name]
            # under its plain name too, when an import of that name finds this very file: a plugin
            # file beside it that imports it then gets this module, not a second copy whose classes
            # would clash
            alias = stem is not None and (imported is not None and imported.__name__ == made_up
                                          or imported is None and _finds(stem, path))
            try:
                _run_file_as(made_up, path, stem if alias else None)
            except BaseException as exc:
                _restore(before)  # its earlier classes back, the ones it registered before failing gone
                if isinstance(exc, RegistryError) and f" by {path.stem}." in str(exc):  # installed as a package too
                    raise RegistryError(f"{exc}: the module {path.stem!r} is installed (an entry point), "
                                        f"so drop --plugin {module}") from None
                raise
        else:
            # as `python -m` would: a module in the working directory can be named
            if "" not in sys.path and os.getcwd() not in sys.path:
                sys.path.append(os.getcwd())
            importlib.import_module(module)
    except RegistryError:
        _restore(before)
        raise
    except (Exception, SystemExit) as exc:
        _restore(before)
        raise RegistryError(f"cannot load plugin {module!r}: {import_failure(exc)}") from exc
    added = sorted(name for name, cls in _methods.items() if before[0].get(name) is not cls)
    _loaded_modules[module] = added
    return added


def _same_file(a: str | None, b: Path) -> bool:
    try:
        return a is not None and os.path.samefile(a, b)
    except OSError:
        return False


def _finds(name: str, path: Path) -> bool:
    """Whether ``import name`` would load the file ``path``."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return False
    return spec is not None and _same_file(spec.origin, path)


def list_methods() -> list[str]:
    """Names of every registered method, sorted (entry points included)."""
    _load_entry_points()
    return sorted(_methods)


def plugin_errors() -> dict[str, str]:
    """Entry points that failed to load, methods', datasets' and backbones': name -> one-line reason."""
    from dalib.models.backbones import backbone_plugin_errors

    _load_entry_points()
    return {**_broken, **{f"{name} (datasets)": why for name, why in dataset_plugin_errors().items()},
            **{f"{name} (backbones)": why for name, why in backbone_plugin_errors().items()}}


def get_method(name: str) -> type[Method]:
    """The class registered under ``name``; :class:`UnknownNameError` lists the known ones."""
    _load_entry_points()
    try:
        return _methods[name]
    except KeyError:
        known = ", ".join(sorted(_methods)) or "(none)"
        hint = failed_plugin(_broken, name)
        if not hint and _loaded_modules:
            hint = "; ".join(f"{module} registered {', '.join(names) if names else 'no method'}"
                             for module, names in _loaded_modules.items())
            hint = f" ({hint}: a method is registered by @register_method({name!r}) on its class)"
        elif not hint:
            hint = (" (a plugin's method needs --plugin FILE, dalib.load_plugin_module(FILE) from Python, "
                    "or its package installed)")
        raise UnknownNameError(f"unknown method {name!r}{hint}; known methods: {known}") from None
