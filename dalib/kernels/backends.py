"""Choosing a backend for the pairwise reductions: ``dense``, ``blocked`` or ``keops``.

``resolve_backend("auto", x, y)`` picks by device and problem size N·M:

* on CPU, torch always (KeOps is slower than torch on a few cores). Kernel reductions:
  ``dense`` while N·M ≤ :data:`CPU_DENSE_MAX_PAIRS`, ``blocked`` above, where tiles are
  faster (cache-resident; 2× at N = M = 1024) and the memory stays bounded. Sinkhorn
  (``op="sinkhorn"``), whose dense backend caches its cost matrices across iterations:
  ``dense`` up to :data:`SINKHORN_DENSE_MAX_PAIRS` (2·512²) pairs, and for d ≥ :data:`SINKHORN_DENSE_MIN_DIM` while the three
  cost matrices fit in :data:`SINKHORN_DENSE_MAX_BYTES` (recomputing the GEMM of each tile
  every iteration costs more than reading the cached cost there); ``blocked`` otherwise;
* on CUDA, ``dense`` below :data:`CUDA_KEOPS_MIN_PAIRS` (5000² pairs, geomloss' own
  switch) and ``keops`` above; ``blocked`` if pykeops is missing, cannot compile, or
  found no CUDA toolkit and runs on the CPU only (then one warning).

The environment variable ``DALIB_KERNEL_BACKEND`` (``dense``, ``blocked``, ``keops`` or
``auto``) replaces ``"auto"`` everywhere, so a whole run can be pinned to a backend.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import TypeVar

import torch
from torch import Tensor

from dalib.errors import BackendError, InputError, UnknownNameError, first_line, warn_outside_dalib
from dalib.kernels._checks import plain_tensor

__all__ = [
    "BACKENDS",
    "CPU_DENSE_MAX_PAIRS",
    "CUDA_KEOPS_MIN_PAIRS",
    "ENV_VAR",
    "SINKHORN_DENSE_MAX_BYTES",
    "SINKHORN_DENSE_MAX_PAIRS",
    "SINKHORN_DENSE_MIN_DIM",
    "keops_available",
    "keops_gpu_available",
    "resolve_backend",
    "with_keops_fallback",
]

BACKENDS = ("auto", "blocked", "dense", "keops")
ENV_VAR = "DALIB_KERNEL_BACKEND"

#: On CPU, ``auto`` materialises the N×M kernel matrix up to this many pairs (≈ 724²).
#: Measured on a 2-core EPYC (MMD², forward + backward): dense and blocked tie at
#: 512², blocked is 1.3-2× faster at 1024² and holds its memory flat; docs/kernels.md.
CPU_DENSE_MAX_PAIRS = 2 * 512 * 512
#: Sinkhorn on CPU (fixed ε-schedule): dense (cached costs) at any d up to this many
#: pairs (at d = 64, dense and blocked tie near 700²; blocked is 1.4× faster at 2000²) ...
SINKHORN_DENSE_MAX_PAIRS = 2 * 512 * 512
#: ... and beyond, for feature sizes from this one on, while the costs fit in ...
SINKHORN_DENSE_MIN_DIM = 256
#: ... this many bytes (2·N·M + N² + M² entries). Measured: at d = 512, N = 4096, dense is
#: 1.5× faster than blocked; at d = 64 blocked is 1.7× faster (the cost no longer in cache).
SINKHORN_DENSE_MAX_BYTES = 768 * 2**20
#: On CUDA, ``auto`` uses KeOps from this many pairs on (geomloss' threshold).
CUDA_KEOPS_MIN_PAIRS = 5000 * 5000

T = TypeVar("T")

_keops_state: dict[str, object] = {"checked": False, "ok": False, "reason": "", "warned": False}


def import_quietly(module: str) -> ModuleType:
    """Import ``module`` with what it prints sent to stderr: pykeops prints its warnings (no
    CUDA here, say) on import, also through POT and geomloss, and stdout is a run's results."""
    with contextlib.redirect_stdout(sys.stderr):
        return importlib.import_module(module)


def keops_available() -> bool:
    """Whether pykeops imports (compile failures are caught when a formula first runs)."""
    if not _keops_state["checked"]:
        if not os.environ.get("KEOPS_CACHE_FOLDER") and no_home():
            # (pykeops would make a folder named "~" in the working directory, and compile there); not
            # kept as checked: the variable may be set in this process next
            _keops_state.update(ok=False, reason=f"pykeops keeps its compiled formulas under the home folder, and "
                                                 f"this process has none ({NO_HOME}): set KEOPS_CACHE_FOLDER to a "
                                                 "folder it can write")
            return False
        _keops_state["checked"] = True
        _keops_state["ok"] = False
        try:
            import_keops()
        except DamagedKeOpsIndex as exc:
            _keops_state["reason"] = str(exc)
            forget_keops_cache_saves()  # (the indexes read before it: nothing new to save, and in place)
        except ImportError as exc:
            _keops_state["reason"] = f"pykeops is not installed ({exc})"
        except OSError as exc:  # its import makes its cache folder (~/.cache/keopsVERSION)
            _keops_state["reason"] = keops_cache_failure(exc)
        else:
            _keops_state["ok"] = True
            with contextlib.suppress(Exception):  # (keopscore's internals)
                import keopscore

                # (keopscore.config is an object with the method from 2.3; a module in 2.2, the function beside it)
                build_folder = getattr(keopscore.config, "get_build_folder", None) or keopscore.get_build_folder
                if not os.access(build_folder(), os.W_OK):  # compiled beforehand, read-only
                    forget_keops_cache_saves()  # (its saves at exit would each print a traceback)
                else:
                    save_keops_indexes_whole()
    return bool(_keops_state["ok"])


class DamagedKeOpsIndex(Exception):
    """An index of keopscore's cache that pickle cannot read, and that could not be set aside."""


def damaged_index(exc: BaseException) -> str | None:
    """The index file of keopscore's cache whose reading raised ``exc``, if it was that reading
    (keopscore loads its indexes, pickles of what it compiled, as pykeops is imported)."""
    if isinstance(exc, (OSError, MemoryError)):  # (a file it may not read, or no memory: not its contents)
        return None
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name == "__init__" and code.co_filename.endswith(os.path.join("keopscore", "utils", "Cache.py")):
            index = getattr(tb.tb_frame.f_locals.get("self"), "cache_file", None)
            return index if isinstance(index, str) else None
        tb = tb.tb_next
    return None


def import_keops() -> None:
    """Import ``pykeops.torch``. An index of keopscore's cache that pickle cannot read (a process
    stopped, or a disk that filled, as keopscore saved it at exit: it writes the file in place)
    made every later import fail with pickle's error: it is set aside, once and with a warning,
    and KeOps builds it again; one that cannot be set aside is a :class:`DamagedKeOpsIndex`."""
    set_aside: set[str] = set()
    while True:
        try:
            import_quietly("pykeops.torch")
            return
        except Exception as exc:
            index = damaged_index(exc)
            if index is None or index in set_aside:
                raise
            why = f"{type(exc).__name__}: {first_line(exc)}"
            try:
                os.replace(index, index + ".damaged")
            except OSError as err:
                raise DamagedKeOpsIndex(
                    f"pykeops cannot read its cache index {index} ({why}) nor set it aside ({err.strerror or err}): "
                    "delete that file, and KeOps builds it again") from exc
            set_aside.add(index)
            warn_outside_dalib(
                f"dalib.kernels: pykeops's cache index {index} was damaged ({why}), as when a process is stopped, or "
                f"the disk is full, while it is saved; set aside as {os.path.basename(index)}.damaged, and KeOps "
                "builds it again", RuntimeWarning)


#: why a process has no home folder, as :func:`no_home` finds it
NO_HOME = "HOME is unset, and this user id has no entry in the password database"


def no_home() -> bool:
    """Whether ``~`` names no folder here (HOME unset, and a container's arbitrary user id unknown
    to the password database): a library that keeps its cache under ``~`` would then make a folder
    named ``~`` in the working directory."""
    return os.path.expanduser("~") == "~"


def keops_indexes() -> list[object]:
    """keopscore's caches that save an index file at exit (its internals: none if they moved)."""
    found: list[object] = []
    with contextlib.suppress(Exception):
        from keopscore.utils.Cache import Cache, Cache_partial

        for name, module in list(sys.modules.items()):
            if module is not None and name.split(".")[0] in ("keopscore", "pykeops"):
                for value in list(vars(module).values()):
                    if isinstance(value, (Cache, Cache_partial)) and getattr(value, "use_cache_file", False):
                        found.append(value)
    return found


#: the saves at exit that :func:`save_keops_indexes_whole` put in place of keopscore's own
_whole_saves: dict[int, Callable[[], None]] = {}


def forget_keops_cache_saves() -> None:
    """keopscore saves the indexes of its caches into its cache folder at exit: a folder that
    refuses its files refuses them too, and each refusal printed a traceback after the run."""
    import atexit

    for cache in keops_indexes():
        atexit.unregister(cache.save_cache)  # type: ignore[attr-defined]
        save = _whole_saves.pop(id(cache), None)
        if save is not None:
            atexit.unregister(save)


def save_keops_indexes_whole() -> None:
    """keopscore writes each index over the old one, in place, at exit: a process stopped then,
    or a disk that filled, left a truncated file, and every later import of pykeops failed on it.
    Each is saved instead as dalib saves its own files (:func:`dalib.runner.atomic_write_bytes`:
    a file beside it that then replaces it whole); a save that fails keeps the old index and says
    so in one line."""
    import atexit
    import functools

    for cache in keops_indexes():
        # what it pickles: a Cache its results, a Cache_partial their parameters
        contents = "library_params" if type(cache).__name__ == "Cache_partial" else "library"
        if id(cache) in _whole_saves or not isinstance(getattr(cache, "cache_file", None), str) or not hasattr(
                cache, contents):
            continue  # (saved so already; or keopscore's internals moved: its own save stays)
        save = functools.partial(save_index_whole, cache, contents)
        atexit.unregister(cache.save_cache)  # type: ignore[attr-defined]
        atexit.register(save)
        _whole_saves[id(cache)] = save


def save_index_whole(cache: object, contents: str) -> None:
    """Save one of keopscore's indexes, its attribute ``contents`` (:func:`save_keops_indexes_whole`)."""
    import pickle
    from pathlib import Path

    from dalib.runner import atomic_write_bytes

    try:
        atomic_write_bytes(Path(getattr(cache, "cache_file")), lambda fh: pickle.dump(getattr(cache, contents), fh))
    except Exception as exc:  # (DalibError, a pickling error; at exit, a traceback reads as the run's failure)
        print(f"dalib: pykeops's cache index was not saved: {first_line(exc)}", file=sys.stderr)


def keops_cache_failure(exc: OSError) -> str:
    """Why KeOps cannot run when the file system refused its cache folder, and what to do."""
    where = f": {exc.filename}" if exc.filename else ""
    return (f"pykeops cannot write its cache folder ({exc.strerror or exc}{where}): set KEOPS_CACHE_FOLDER to a "
            "folder it can write")


def keops_unavailable_reason() -> str:
    keops_available()
    return str(_keops_state["reason"])


#: why KeOps cannot take CUDA tensors when pykeops imports but found no CUDA toolkit
NO_KEOPS_GPU = ("pykeops found no CUDA toolkit to compile with (libnvrtc and the CUDA headers: set CUDA_HOME) "
                "and runs on the CPU only")


def keops_gpu_available() -> bool:
    """Whether KeOps can reduce CUDA tensors here: pykeops imports and found, when it was
    imported, the CUDA libraries it compiles its formulas with. Without them it runs on the
    CPU only, and given CUDA tensors it would hand device pointers to CPU code."""
    if not keops_available():
        return False
    import pykeops

    return bool(getattr(pykeops.config, "gpu_available", False))


def mark_keops_broken(reason: str) -> None:
    """Record that KeOps cannot run here (a formula failed to compile)."""
    _keops_state["checked"] = True
    _keops_state["ok"] = False
    _keops_state["reason"] = reason


def warn_keops_fallback(fallback: str, reason: str | None = None) -> None:
    """Warn once per process that ``auto`` could not use KeOps (``reason``: why, by default
    why pykeops does not run at all)."""
    if not _keops_state["warned"]:
        _keops_state["warned"] = True
        warn_outside_dalib(
            f"dalib.kernels: KeOps unavailable ({reason or keops_unavailable_reason()}); "
            f"backend 'auto' falls back to '{fallback}'",
            RuntimeWarning,
        )


def _is_explicit(backend: str | None) -> bool:
    """Whether ``backend`` (or, for ``"auto"``, the environment variable) names a backend."""
    name = "auto" if backend is None else str(backend).strip().lower()
    if name == "auto":
        name = os.environ.get(ENV_VAR, "").strip().lower() or "auto"
    return name != "auto"


def with_keops_fallback(backend: str | None, name: str, fn: Callable[[str], T]) -> T:
    """Run ``fn(name)``; if KeOps was chosen automatically and fails to run (compilation),
    warn once and run ``fn("blocked")`` instead. An explicit ``keops`` re-raises."""
    if name != "keops":
        return fn(name)
    try:
        return fn(name)
    except BackendError:
        if _is_explicit(backend):
            raise
        warn_keops_fallback("blocked")
        return fn("blocked")


def _sizes(tensors: tuple[Tensor, ...]) -> tuple[int, int]:
    if not tensors:
        return 0, 0
    n = int(tensors[0].shape[0]) if tensors[0].dim() > 0 else 1
    m = int(tensors[1].shape[0]) if len(tensors) > 1 and tensors[1].dim() > 0 else n
    return n, m


def _transformed(tensors: tuple[Tensor, ...]) -> bool:
    """Whether a ``torch.func`` transform is active, or a tensor is a forward-mode dual one (not
    asked while ``torch.compile`` traces: Dynamo, tracing functorch's and forward AD's checks,
    ran out of recursion depth in a long process)."""
    if torch.compiler.is_compiling():
        return False
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(active is not None and active()) or not all(plain_tensor(t) for t in tensors if isinstance(t, Tensor))


def resolve_backend(backend: str | None, *tensors: Tensor, op: str = "kernel", others: tuple[Tensor, ...] = ()) -> str:
    """Turn ``backend`` into ``"dense"``, ``"blocked"`` or ``"keops"``.

    ``backend``: one of ``"auto"`` (or None), ``"dense"``, ``"blocked"``, ``"keops"``;
    ``"auto"`` is first replaced by ``$DALIB_KERNEL_BACKEND`` when that is set.
    ``tensors``: the point clouds ``x`` (N, D) and ``y`` (M, D) of the reduction; their
    device and N·M drive the automatic choice. ``op``: ``"kernel"`` (one reduction),
    ``"sinkhorn"`` (a Sinkhorn loop on a fixed ε-schedule, whose dense backend caches its
    costs) or ``"sinkhorn-tol"`` (a Sinkhorn loop run to a marginal-error tolerance).
    ``others``: the reduction's other tensors (the vector of a product, log-weights, weights),
    read only for whether one of them is a forward-mode dual tensor.

    Under a ``torch.func`` transform, or with forward-mode dual tensors, ``"auto"`` is
    ``"dense"``: the ``blocked`` and ``keops`` reductions (autograd Functions with a
    hand-written backward) serve plain tensors only, and asked for explicitly there they are an
    :class:`InputError` (torch's own error had named their missing ``setup_context``).

    Raises :class:`UnknownNameError` for an unknown name and :class:`BackendError` when
    ``"keops"`` is asked for explicitly but pykeops is unavailable.
    """
    name = "auto" if backend is None else str(backend).strip().lower()
    explicit_source = "argument"
    if name == "auto":
        env = os.environ.get(ENV_VAR, "").strip().lower()
        if env:
            name, explicit_source = env, f"${ENV_VAR}"
    if name not in BACKENDS:
        raise UnknownNameError(
            f"unknown kernel backend {backend if explicit_source == 'argument' else name!r}"
            f" (from {explicit_source}); known: {', '.join(BACKENDS)}"
        )
    if name != "dense" and _transformed((*tensors, *others)):
        if name == "auto":
            return "dense"
        raise InputError(f"kernel backend {name!r} ({explicit_source}) serves plain tensors only: under torch.func "
                         "transforms (grad, vjp, jvp) and forward-mode AD use 'dense' or 'auto'")
    on_cuda = any(t.is_cuda for t in tensors)
    if name == "keops":
        if not keops_available():
            raise BackendError(
                f"kernel backend 'keops' requested ({explicit_source}) but "
                f"{keops_unavailable_reason()}; use 'dense' or 'blocked', or install pykeops"
            )
        if on_cuda and not keops_gpu_available():
            raise BackendError(f"kernel backend 'keops' requested ({explicit_source}) for CUDA tensors but "
                               f"{NO_KEOPS_GPU}; use 'dense' or 'blocked'")
        return "keops"
    if name != "auto":
        return name
    n, m = _sizes(tensors)
    pairs = n * m
    if on_cuda:
        if pairs < CUDA_KEOPS_MIN_PAIRS:
            return "dense"
        if keops_gpu_available():
            return "keops"
        warn_keops_fallback("blocked", None if not keops_available() else NO_KEOPS_GPU)
        return "blocked"
    if op in ("sinkhorn", "sinkhorn-tol"):
        d = int(tensors[0].shape[1]) if tensors[0].dim() > 1 else 1
        itemsize = tensors[0].element_size() if hasattr(tensors[0], "element_size") else 4
        nbytes = (2 * pairs + n * n + m * m) * itemsize
        if nbytes > SINKHORN_DENSE_MAX_BYTES:
            return "blocked"
        if op == "sinkhorn-tol" or pairs <= SINKHORN_DENSE_MAX_PAIRS or d >= SINKHORN_DENSE_MIN_DIM:
            return "dense"
        return "blocked"
    return "dense" if pairs <= CPU_DENSE_MAX_PAIRS else "blocked"
