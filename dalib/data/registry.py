"""The dataset registry: names, domains and aliases, and the loaders behind them."""

from __future__ import annotations

import contextlib
import functools
import numbers
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dalib.data.domain import Domain, check_finite
from dalib.errors import DataError, RegistryError, UnknownNameError, import_failure, warn_outside_dalib

__all__ = [
    "DatasetInfo",
    "LoadRequest",
    "data_root_read",
    "default_data_root",
    "get_dataset",
    "infer_dataset",
    "list_datasets",
    "list_domains",
    "load_domain",
    "register_dataset",
    "unregister_dataset",
]

DATA_ROOT_ENV = "DALIB_DATA_ROOT"
DEFAULT_ROOT_CANDIDATES = ("shared/data", "../shared/data")


@dataclass(frozen=True)
class DatasetInfo:
    """What the registry knows about a dataset before loading anything.

    ``domains`` are the canonical domain names (empty for ``image-folder``, whose domains are
    the sub-folders of ``--data``); ``aliases`` maps short names to canonical ones. Domain
    names and aliases match case-insensitively. ``needs`` says where the data comes from:
    ``"embedded"`` (inside the package), ``"data_root"`` (files under ``--data-root``) or
    ``"data_dir"`` (a folder the user names with ``--data``). ``inferable=False`` keeps a
    dataset out of :func:`infer_dataset`: a dataset that shares domain names with another
    (``digits-full`` with ``digits``) is only chosen with ``--dataset``.
    """

    name: str
    description: str
    domains: tuple[str, ...]
    aliases: dict[str, str] = field(default_factory=dict)
    kind: Literal["image", "features"] = "features"
    num_classes: int | None = None
    needs: Literal["embedded", "data_root", "data_dir"] = "data_root"
    citation: str = ""
    inferable: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise RegistryError(f"a dataset's name must be a non-empty string, not {self.name!r}")
        if not isinstance(self.domains, (tuple, list)):  # ("lab") without its comma: the letters of "lab"
            raise RegistryError(f"dataset {self.name}: domains must be a tuple of names, not {self.domains!r}"
                                + (f" (one domain: ({self.domains!r},))" if isinstance(self.domains, str) else ""))
        if not self.domains and self.needs != "data_dir":
            raise RegistryError(f"dataset {self.name}: no domains given: name them (only a dataset with "
                                "needs='data_dir' has none, its domains being the sub-folders of --data)")
        if not isinstance(self.aliases, dict):
            raise RegistryError(f"dataset {self.name}: aliases must be a dict of alias -> domain name, "
                                f"not {self.aliases!r}")
        for what, names in (("domain", self.domains), ("alias", self.aliases)):
            for d in names:
                if not isinstance(d, str) or not d or d != d.strip():  # (a name given is stripped: never chosen)
                    raise RegistryError(f"dataset {self.name}: {what} {d!r} is not a name: give a non-empty "
                                        "string without spaces around it")
        if self.num_classes is not None and (isinstance(self.num_classes, bool) or not isinstance(
                self.num_classes, numbers.Integral) or self.num_classes < 1):
            raise RegistryError(f"dataset {self.name}: num_classes must be a positive int or None, "
                                f"not {self.num_classes!r}")
        if not isinstance(self.inferable, bool):
            raise RegistryError(
                f"dataset {self.name}: inferable must be True or False, not {self.inferable!r}"
            )
        if self.kind not in ("image", "features"):
            raise RegistryError(
                f"dataset {self.name}: kind must be 'image' or 'features', not {self.kind!r}"
            )
        if self.needs not in ("embedded", "data_root", "data_dir"):
            raise RegistryError(
                f"dataset {self.name}: needs must be 'embedded', 'data_root' or 'data_dir', "
                f"not {self.needs!r}"
            )
        seen: dict[str, str] = {}
        for d in self.domains:
            if d.lower() in seen:
                raise RegistryError(f"dataset {self.name}: domain {d!r} is listed twice")
            seen[d.lower()] = d
        for alias, target in self.aliases.items():
            if target not in self.domains:
                raise RegistryError(
                    f"dataset {self.name}: alias {alias!r} names unknown domain {target!r}"
                )
            if seen.get(alias.lower(), target) != target:
                raise RegistryError(f"dataset {self.name}: alias {alias!r} is ambiguous")
            seen[alias.lower()] = target

    def _lookup(self) -> dict[str, str]:
        table = {d.lower(): d for d in self.domains}
        table.update({a.lower(): d for a, d in self.aliases.items()})
        return table

    def matches(self, domain: str) -> bool:
        """Whether ``domain`` names one of this dataset's domains or aliases."""
        return isinstance(domain, str) and domain.strip().lower() in self._lookup()

    def resolve(self, domain: str) -> str:
        """The canonical name of ``domain`` (a name or alias, any case).

        For ``image-folder`` (no fixed domains) the name is returned unchanged; the folder is
        checked when the domain is loaded. Raises :class:`UnknownNameError` otherwise.
        """
        if not isinstance(domain, str) or not domain.strip():
            raise UnknownNameError(
                f"no domain name given for dataset {self.name}; "
                f"known: {self.describe_domains() or 'the sub-folders of --data'}"
            )
        if not self.domains:
            return domain
        found = self._lookup().get(domain.strip().lower())
        if found is None:
            raise UnknownNameError(
                f"unknown domain {domain!r} of dataset {self.name}; "
                f"known: {self.describe_domains()}"
            )
        return found

    def describe_domains(self) -> str:
        """``"amazon (A), caltech (C, caltech10), ..."``: the domains with their aliases."""
        parts = []
        for d in self.domains:
            al = [a for a, t in self.aliases.items() if t == d]
            parts.append(f"{d} ({', '.join(al)})" if al else d)
        return ", ".join(parts)


@dataclass(frozen=True)
class LoadRequest:
    """What a dataset loader is given: the dataset, the canonical domain name, and the
    resolved locations (``data_root`` for ``needs="data_root"``, ``data_dir`` for
    ``needs="data_dir"``, else ``None``) and the image size for image datasets."""

    info: DatasetInfo
    domain: str
    data_root: Path | None
    data_dir: Path | None
    image_size: int


Loader = Callable[[LoadRequest], Domain]

_DATASETS: dict[str, tuple[DatasetInfo, Loader]] = {}


def same_definition(old: Any, new: Any) -> bool:
    """Whether ``new`` is ``old``, or ``old`` defined again: the same module and qualified
    name, at a module's top level (a notebook cell or a module run a second time; classes
    or functions made inside a function may differ under one name). A ``functools.partial``
    is the same when its function is and its arguments are equal; another callable object
    (an instance of a loader class) when its class is. The dataset and method registries
    replace such a definition instead of refusing it."""
    if old is new:
        return True
    if isinstance(old, functools.partial) or isinstance(new, functools.partial):
        return (isinstance(old, functools.partial) and isinstance(new, functools.partial)
                and same_definition(old.func, new.func) and _equal(old.args, new.args)
                and _equal(old.keywords, new.keywords))
    if _is_object(old) or _is_object(new):
        return _is_object(old) and _is_object(new) and same_definition(type(old), type(new))
    qualname = getattr(old, "__qualname__", None)
    return (qualname is not None and "<locals>" not in qualname
            and (getattr(old, "__module__", None), qualname) == (getattr(new, "__module__", None),
                                                                 getattr(new, "__qualname__", None)))


def _is_object(obj: Any) -> bool:
    """Whether ``obj`` is a callable object, not a function or a class (it has no qualified name)."""
    return not isinstance(obj, type) and getattr(obj, "__qualname__", None) is None


def _equal(a: Any, b: Any) -> bool:
    """``a == b``, False where comparing fails (arrays, whose ``==`` is no answer)."""
    try:
        return bool(a == b)
    except Exception:  # (the user's objects: an error is no answer either)  # noqa: BLE001
        return False


#: (id of a registry, name) -> the module whose code registered the entry (:func:`note_origin`)
_ORIGIN: dict[tuple[int, str], str] = {}


def note_origin(registry: dict[str, Any], name: str) -> None:
    """Remember the module whose code registers ``registry[name]``: the caller of the function
    that calls this (``register_dataset``, a decorator). A plugin may register a loader or a
    builder defined in a helper module; what it registered goes with it if its import fails."""
    _ORIGIN[(id(registry), name)] = str(sys._getframe(2).f_globals.get("__name__", ""))


def forget_failed(registry: dict[str, Any], before: dict[str, Any]) -> None:
    """After a plugin's import failed: ``registry`` (name -> class or function, or a tuple
    ending with one) as it was ``before`` it, less what it registered on its way to the
    failure. That is what a module whose import failed defined or registered, or a module
    inside one (a module that a package's ``__init__`` imported before it raised): Python takes
    a failed module out of ``sys.modules``. A package that imported whole on the way to its
    failed sub-module (``pkg`` of ``pkg.broken``) keeps what it registered."""

    def gone(module: str) -> bool:
        parts = module.split(".")
        return any(sys.modules.get(".".join(parts[:i])) is None for i in range(1, len(parts) + 1))

    for name, obj in list(registry.items()):
        defined = str(getattr(obj[-1] if isinstance(obj, tuple) else obj, "__module__", ""))
        origin = _ORIGIN.get((id(registry), name))
        if before.get(name) is not obj and (gone(defined) or (origin is not None and gone(origin))):
            del registry[name]
    for name, obj in before.items():
        registry.setdefault(name, obj)


def register_dataset(info: DatasetInfo, loader: Loader) -> None:
    """Add a dataset to the registry.

    ``loader(request: LoadRequest) -> Domain`` loads one domain; ``request.domain`` is already
    canonical. Build in-memory domains with :meth:`Domain.from_arrays`, which checks shapes,
    labels and finiteness. A name that is already registered raises :class:`RegistryError`, and
    so does one that differs from a registered name in case alone (``--dataset Digits`` reads
    ``digits``), unless the same loader is registered again under the same name (the same
    module and qualified name: a notebook cell run twice, :func:`same_definition`), which
    replaces it. :func:`unregister_dataset` removes a dataset.
    """
    if not isinstance(info, DatasetInfo):
        raise RegistryError(f"register_dataset needs a DatasetInfo, got {type(info).__name__}")
    if not callable(loader):
        raise RegistryError(f"dataset {info.name}: the loader is not callable")
    taken = _find(_DATASETS, info.name)
    if taken is not None and (taken != info.name or not same_definition(_DATASETS[taken][1], loader)):
        old = _DATASETS[taken][1]
        again = (f"; to replace it in this session: dalib.data.registry.unregister_dataset({taken!r}) first"
                 if _loader_module(old) == "__main__" else "")  # (a loader of a notebook cell, renamed since)
        raise RegistryError(f"dataset {info.name!r} is already registered"
                            + ("" if taken == info.name else f" as {taken!r}") + f" (by {_loader_name(old)}{again})"
                            + ("" if taken == info.name else ": dataset names match in any case"))
    _DATASETS[info.name] = (info, loader)
    note_origin(_DATASETS, info.name)


def unregister_dataset(name: str) -> None:
    """Remove a dataset (mainly for tests and interactive sessions)."""
    _load_dataset_entry_points()  # (else an installed package's dataset came back at the next lookup)
    _DATASETS.pop(name, None)


def _loader_module(loader: Any) -> str:
    """The module that defines ``loader``: its function's, a partial's function's or a
    callable object's class's."""
    while isinstance(loader, functools.partial):
        loader = loader.func
    return str(getattr(type(loader) if _is_object(loader) else loader, "__module__", "?"))


def _loader_name(loader: Any) -> str:
    """Where ``loader`` is defined, for messages: ``module.function``, ``module.Class`` of a
    callable object, ``functools.partial(module.function)``."""
    if isinstance(loader, functools.partial):
        return f"functools.partial({_loader_name(loader.func)})"
    if _is_object(loader):
        loader = type(loader)
    return f"{getattr(loader, '__module__', '?')}.{getattr(loader, '__qualname__', type(loader).__name__)}"


def _find(table: dict[str, Any], name: str) -> str | None:
    """The key of ``table`` that ``name`` names: itself, else the one equal to it in any case
    (and without surrounding spaces); ``None`` when there is none."""
    if name in table:
        return name
    return next((key for key in table if key.lower() == name.strip().lower()), None)


#: entry-point group of installed packages that bring datasets: each entry point names a module
#: whose import registers them (``register_dataset``)
DATASET_ENTRY_POINT_GROUP = "dalib.datasets"
_dataset_entry_points_loaded = False
_broken_datasets: dict[str, str] = {}


def _load_dataset_entry_points() -> None:
    """Import every ``dalib.datasets`` entry point once, in name order, each in isolation: one
    that fails is recorded (:func:`dataset_plugin_errors`, ``dalib list``), never fatal."""
    global _dataset_entry_points_loaded
    if _dataset_entry_points_loaded:
        return
    _dataset_entry_points_loaded = True  # first: a plugin that lists datasets while it loads does not recurse
    load_entry_point_group(DATASET_ENTRY_POINT_GROUP, _DATASETS, _broken_datasets)


def load_entry_point(ep: Any) -> Any:
    """``ep.load()``, with a value that names no module ("my-plugin", a path) refused in one
    line: the entry point's own parser fails on it with an AttributeError of its internals."""
    try:
        ep.module
    except AttributeError:
        raise RegistryError("names no module: an entry point's value is 'package.module' or "
                            "'package.module:attribute'") from None
    return ep.load()


def dist_name(ep: Any) -> str:
    """The name of the installed package that declares the entry point ``ep`` ("" when unknown)."""
    dist = getattr(ep, "dist", None)
    return "" if dist is None else str(dist.metadata["Name"] or "")


def record_failure(broken: dict[str, str], ep: Any, exc: BaseException) -> None:
    """Note in ``broken`` (name -> one-line reason) why the entry point ``ep`` failed to load,
    naming its package. Two packages' failures under one name share its line: the second
    had taken the first one's place, which then failed without a word."""
    package = dist_name(ep)
    reason = f"{ep.value}{f' (package {package})' if package else ''}: {import_failure(exc)}"
    broken[ep.name] = f"{broken[ep.name]}; {reason}" if ep.name in broken else reason


def failed_plugin(broken: dict[str, str], name: str | None) -> str:
    """What an unknown name's error adds when the entry point ``name`` failed to load
    (``broken``: name -> one-line reason, :func:`record_failure`): `` (plugin 'x' failed to
    load: ...)``; "" for any other name."""
    return f" (plugin {name!r} failed to load: {broken[name]})" if name in broken else ""


def load_entry_point_group(group: str, registry: dict[str, Any], broken: dict[str, str]) -> None:
    """Import every entry point of ``group`` (module entry points, whose import adds to
    ``registry``) in name order, each in isolation: one that fails registers nothing
    (:func:`forget_failed`) and is recorded in ``broken`` (name -> one-line reason)."""
    from importlib.metadata import entry_points

    for ep in sorted(entry_points(group=group), key=lambda ep: ep.name):
        before = dict(registry)
        try:
            load_entry_point(ep)
        except (Exception, SystemExit) as exc:  # a broken package must not break the others
            forget_failed(registry, before)
            record_failure(broken, ep, exc)


def dataset_plugin_errors() -> dict[str, str]:
    """``dalib.datasets`` entry points that failed to load: name -> one-line reason."""
    _load_dataset_entry_points()
    return dict(_broken_datasets)


def list_datasets() -> list[str]:
    """Sorted names of the registered datasets, the installed packages' included."""
    _load_dataset_entry_points()
    return sorted(_DATASETS)


def get_dataset(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name`` (exact or case-insensitive)."""
    return _entry(name)[0]


def _entry(name: str) -> tuple[DatasetInfo, Loader]:
    _load_dataset_entry_points()
    key = _find(_DATASETS, name)
    if key is not None:
        return _DATASETS[key]
    raise UnknownNameError(f"unknown dataset {name!r}{failed_plugin(_broken_datasets, _find(_broken_datasets, name))}; "
                           f"known: {', '.join(list_datasets())}")


def default_data_root() -> Path | None:
    """``$DALIB_DATA_ROOT`` if set, else the first existing of ``./shared/data`` and
    ``../shared/data`` (relative to the working directory), else ``None``."""
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        return Path(env).expanduser()
    for cand in DEFAULT_ROOT_CANDIDATES:
        p = Path(cand)
        with contextlib.suppress(OSError):  # (a working directory this user may not search: not there)
            if p.is_dir():
                return p.resolve()
    return None


def infer_dataset(src: str, tgt: str) -> str:
    """The one registered dataset that has both ``src`` and ``tgt`` as domains or aliases.

    ``image-folder`` (and any dataset without fixed domains) and datasets registered with
    ``inferable=False`` are never inferred. Raises :class:`UnknownNameError` when no dataset
    or more than one matches.
    """
    _load_dataset_entry_points()
    hits = [
        info.name
        for info, _ in _DATASETS.values()
        if info.domains and info.inferable and info.matches(src) and info.matches(tgt)
    ]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise UnknownNameError(
            f"domains {src!r} and {tgt!r} are ambiguous: they belong to "
            f"{', '.join(sorted(hits))}; pass --dataset"
        )
    known = "; ".join(
        f"{info.name}: {info.describe_domains()}"
        for name in list_datasets()
        for info in [_DATASETS[name][0]]
        if info.domains
    )
    raise UnknownNameError(
        f"no dataset has both domains {src!r} and {tgt!r}; pass --dataset (known: {known}), "
        "or --data PATH for a folder of images"
    )


def list_domains(dataset: str, *, data_dir: str | os.PathLike | None = None) -> list[str]:
    """Canonical domain names of ``dataset``; for ``image-folder``, the sub-folders of
    ``data_dir``."""
    info = get_dataset(dataset)
    if info.domains:
        return list(info.domains)
    if info.needs == "data_dir":
        from dalib.data.image_folder import folder_domains

        return folder_domains(_need_data_dir(info, "", data_dir))
    return []


def load_domain(
    dataset: str,
    domain: str,
    *,
    data_root: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    image_size: int = 224,
) -> Domain:
    """Load one domain of a registered dataset.

    ``data_root`` (default :func:`default_data_root`) holds the benchmark files
    (``office_caltech10_surf/``, ``amazon_review_400/``); ``data_dir`` is the folder of an
    ``image-folder`` dataset; ``image_size`` is the side images are resized to.
    Raises :class:`UnknownNameError` for an unknown dataset or domain and :class:`DataError`
    for missing or corrupt files, NaN/inf features and empty domains.
    """
    info, loader = _entry(dataset)
    if data_dir is not None and info.needs != "data_dir":
        raise DataError(f"dataset {info.name} reads no data folder, but one was given ({data_dir}: --data, the "
                        "folder of an image-folder dataset): leave out --dataset to read the folder, or --data")
    if data_root is not None and info.needs == "embedded":  # (it had been dropped without a word)
        larger = " (--dataset digits-full reads the larger sets there)" if info.name == "digits" else ""
        held = ("is embedded in dalib" if _loader_module(loader).startswith("dalib.")
                else f"holds its data itself (needs='embedded', {_loader_name(loader)})")  # (a package's dataset)
        warn_outside_dalib(f"dataset {info.name} {held} and reads no data root: {data_root} is not used{larger}",
                           UserWarning)
    name = info.resolve(domain)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise DataError(f"image size must be a positive integer, not {image_size!r}")
    root = dir_ = None
    if info.needs == "data_root":
        root = _need_data_root(info, name, data_root)
    elif info.needs == "data_dir":
        dir_ = _need_data_dir(info, name, data_dir)
    result = loader(
        LoadRequest(info=info, domain=name, data_root=root, data_dir=dir_, image_size=image_size)
    )
    if not isinstance(result, Domain):
        raise RegistryError(
            f"the loader of dataset {info.name} returned {type(result).__name__}, not a Domain"
        )
    # (else recorded as the run's domain, which dalib eval cannot load; a name that resolves to it,
    # as a folder's Amazon for amazon, loads again)
    if info.domains and result.name != name and info._lookup().get(str(result.name).strip().lower()) != name:
        raise RegistryError(f"the loader of dataset {info.name} returned domain {result.name!r} for domain {name!r}: "
                            "name it request.domain")
    where = (
        f"{result.origin} (dataset {info.name}, domain {result.name})"
        if result.origin
        else (f"dataset {info.name}, domain {result.name}")
    )
    if len(result) == 0:
        raise DataError(f"empty domain: no samples in {where}")
    if info.num_classes is not None and result.num_classes != info.num_classes:  # (else a head of the loader's size, unsaid)
        raise RegistryError(f"the loader of dataset {info.name} returned domain {result.name} with {result.num_classes} "
                            f"classes, but the dataset declares num_classes={info.num_classes}")
    if result.x is not None:
        check_finite(result.x, where)
    return result


def data_root_read(dataset: str, data_root: str | os.PathLike | None) -> str | None:
    """The data root that :func:`load_domain` reads ``dataset`` from, given ``data_root``
    (``None``: the default one), as an absolute path; ``None`` for a dataset that reads no
    root (an embedded one, an image folder) or when no root is found. A run records it, so
    that its result says which copy of the data it read and ``dalib eval`` reads that one."""
    if get_dataset(dataset).needs != "data_root":
        return None
    root = data_root if data_root is not None else default_data_root()
    return absolute_as_read(root) if root is not None else None  # (which expands ~)


def absolute_as_read(path: str | os.PathLike) -> str:
    """``path`` (``~`` expanded) as an absolute path to what opening it reads, for a record that
    another working directory finds again: a ``..`` right after a link climbs out of the link's
    target, as the system does, where a textual normalisation (``os.path.abspath``) would go
    back to the link's folder and name another folder; every other link is kept as named."""
    p = os.path.expanduser(os.fspath(path))
    if os.pardir not in Path(p).parts:
        return os.path.abspath(p)
    here = os.getcwd() if not os.path.isabs(p) else os.path.abspath(os.sep)
    for part in Path(p).parts:
        if part == os.pardir:  # the parent of what `here` opens: of the link's target, for a link
            here = os.path.dirname(os.path.realpath(here) if os.path.islink(here) else here)
        elif part not in (os.curdir, os.sep):
            here = os.path.join(here, part)
    return here


def _not_a_folder(path: Path) -> str:
    """Why ``path``, which is no folder, cannot be read as one."""
    return "is a file, not a folder" if path.exists() else "not found"


def _need_data_root(info: DatasetInfo, domain: str, data_root: str | os.PathLike | None) -> Path:
    root = Path(data_root).expanduser() if data_root is not None else default_data_root()
    if root is None:
        raise DataError(
            f"no data root for dataset {info.name}, domain {domain}: set --data-root or "
            f"{DATA_ROOT_ENV} (looked for {' and '.join(DEFAULT_ROOT_CANDIDATES)})"
        )
    if not root.is_dir():
        source = f"from ${DATA_ROOT_ENV}; " if data_root is None else ""
        raise DataError(
            f"data root {_not_a_folder(root)}: {root} ({source}dataset {info.name}, domain {domain}; set --data-root)"
        )
    return root


def _need_data_dir(info: DatasetInfo, domain: str, data_dir: str | os.PathLike | None) -> Path:
    dom = f", domain {domain}" if domain else ""
    if data_dir is None:
        raise DataError(f"dataset {info.name}{dom} needs a data folder: pass --data PATH")
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise DataError(f"data folder {_not_a_folder(path)}: {path} (dataset {info.name}{dom}; pass --data PATH)")
    return path
