"""The one training loop every deep method runs in.

Paired, infinite source/target batch streams (domains of different sizes are fine),
SGD with Nesterov momentum and Ganin et al.'s inverse-decay schedule, mixed precision on CUDA,
evaluation of source and target accuracy (target labels are only reported), a progress
bar, ``metrics.jsonl`` and ``result.json`` in the output folder, atomic checkpoints and
``resume``. Under ``torchrun`` each rank trains on its own share of every batch and
the gradients are averaged across ranks before each step (data parallelism); only
rank 0 writes files.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import errno
import functools
import hashlib
import itertools
import json
import math
import os
import platform
import random
import shutil
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from dalib._arrays import cpu_by_default
from dalib.config import DataclassInstance, build_config, param
from dalib.data.domain import (check_finite, check_labels, collate_items, label_tensor, labelled_accuracy,
                               matched_by_position, sample_of)
from dalib.errors import (CheckpointError, ConfigError, DalibError, DataError, InputError, OutOfRangeError, PluginError,
                          first_line, load_failure, load_tensors, stop_signals, terminate_as_interrupt, warn_outside_dalib)
from dalib.plugin import (Batch, Context, Method, Outputs, Progress, Unlabelled, in_order, plain_diagnostics,
                          scoring_batch)
from dalib.schedules import inverse_decay

if TYPE_CHECKING:
    from dalib.models import DAModel

__all__ = ["RunConfig", "RunResult", "accuracy_of", "atomic_write_bytes", "atomic_write_text", "comparable_config", "evaluate", "load_checkpoint", "predict", "resolve_mode", "resolved_method_config", "run", "write_result"]

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
RESULT = "result.json"


#: what a field annotated ``int`` or ``float`` accepts (never a bool)
_NUMBER_TYPES: dict[str, tuple[type, ...]] = {"int": (int, np.integer), "float": (int, float, np.integer, np.floating)}


_PATH = "str | os.PathLike[str] | None"  # a folder or file: a Path is kept as its string

@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a training run (the method's own hyperparameters in
    ``method_config``). Two runs with equal configs on the CPU give equal numbers."""

    method: str = param("dann", "registered method name")
    mode: str = param("auto", "deep, shallow, or auto (shallow on feature datasets when the method has a shallow form)")
    classifier: str = param("1nn", "classifier of the shallow form: 1nn, linear or svm")
    src: str = param("mnist", "source domain")
    tgt: str = param("usps", "target domain")
    dataset: str | None = param(None, "dataset name (inferred from the domains when omitted)")
    data_root: str | os.PathLike[str] | None = param(None, "folder holding the datasets (None: $DALIB_DATA_ROOT, else ./shared/data or ../shared/data)")
    data: str | os.PathLike[str] | None = param(None, "image folder with one sub-folder per domain")
    arch: str | None = param(None, "backbone: lenet, mlp, identity, resnet18/34/50 or a registered one (default by input)")
    pretrained: str | os.PathLike[str] | None = param(None, "'imagenet' or a checkpoint path for ResNet backbones; a registered backbone's builder reads it")
    bottleneck_dim: int = param(256, "width of the bottleneck features")
    image_size: int = param(224, "side of the images of an image-folder dataset")
    steps: int = param(2000, "optimizer steps")
    batch_size: int = param(64, "source and target samples per step (each; no more than a domain holds); an image "
                                "folder is also scored in batches of this size")
    lr: float = param(0.01, "base learning rate")
    momentum: float = param(0.9, "SGD momentum (Nesterov's; 0: plain SGD)")
    weight_decay: float = param(1e-3, "L2 weight decay")
    lr_alpha: float = param(10.0, "inverse-decay schedule: lr * (1 + alpha p)^-beta")
    lr_beta: float = param(0.75, "inverse-decay schedule exponent")
    seed: int = param(0, "random seed")
    device: str = param("auto", "auto, cpu, cuda or cuda:N (a torch.device is kept as its name)")
    amp: bool = param(True, "bfloat16 autocast on CUDA GPUs of compute capability 8.0 and later (ignored on others and on CPU)")
    workers: int = param(0, "data-loading worker processes for image folders")
    log_every: int = param(50, "steps between metric lines")
    eval_every: int = param(0, "steps between evaluations logged to metrics.jsonl, the last step's included (0: only the result's, at the end)")
    checkpoint_every: int = param(500, "steps between checkpoints (0: only at the end)")
    holdout: float = param(0.0, "fraction of the source's samples, per class, held out of training and scored at the end "
                                "for model selection without target labels (dalib select); 0: none")
    method_config: dict[str, Any] | DataclassInstance = field(
        default_factory=dict, metadata={"help": "method hyperparameters: a dict, or the method's own Config(...)"})

    def __post_init__(self) -> None:
        """Raises :class:`~dalib.errors.ConfigError` for a value of the wrong type (a float
        step count, a string learning rate, ``True`` for a number) or out of range."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind = str(f.type)  # the annotation, as written
            if kind in ("int", "float") and (isinstance(value, bool) or not isinstance(value, _NUMBER_TYPES[kind])):
                raise ConfigError(f"{f.name} must be {'an integer' if kind == 'int' else 'a number'}, got {value!r}")
            if kind in ("int", "float"):  # Python numbers (results are JSON); 1 and 1.0 the same lr
                value = float(value) if kind == "float" else int(value)
                object.__setattr__(self, f.name, value)
            if kind == "float" and not math.isfinite(value):
                raise ConfigError(f"{f.name} must be a finite number, got {value!r}")
            if kind == "bool" and not isinstance(value, bool):
                raise ConfigError(f"{f.name} must be true or false, got {value!r}")
            if f.name == "device" and isinstance(value, torch.device):  # as load_model takes it: kept as its name
                value = str(value)
                object.__setattr__(self, f.name, value)
            if kind in ("str | None", _PATH) and isinstance(value, os.PathLike):
                object.__setattr__(self, f.name, os.fspath(value))  # a Path is kept as its string
            elif kind in ("str", "str | None", _PATH) and not (isinstance(value, str) or (value is None and kind != "str")):
                raise ConfigError(f"{f.name} must be a string{' or a path' if kind == _PATH else ''}, got {value!r}")
            elif isinstance(value, str) and type(value) is not str:  # numpy's str_, say: saved as a str
                object.__setattr__(self, f.name, str(value))
            if isinstance(value, str) and not value.strip():  # "" is no folder, backbone or dataset: not the default
                raise ConfigError(f"{f.name} is empty: give a value{' or leave it out' if kind != 'str' else ''}")
            if kind.startswith("dict") and dataclasses.is_dataclass(value) and not isinstance(value, type):
                value = {g.name: getattr(value, g.name) for g in dataclasses.fields(value) if g.init}  # a method's own Config
            if kind.startswith("dict") and not isinstance(value, dict):
                raise ConfigError(f"{f.name} must be a table of hyperparameters, got {value!r}")
            if kind.startswith("dict"):  # numpy numbers and paths as the JSON and checkpoint keep them
                object.__setattr__(self, f.name, {str(k): _plain(v) for k, v in value.items()})
        if self.mode not in ("auto", "deep", "shallow"):
            raise ConfigError(f"mode must be auto, deep or shallow, got {self.mode!r}")
        if self.classifier not in ("1nn", "linear", "svm"):
            raise ConfigError(f"classifier must be 1nn, linear or svm, got {self.classifier!r}")
        for name in ("steps", "batch_size", "bottleneck_dim", "image_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("seed", "workers", "log_every", "eval_every", "checkpoint_every", "weight_decay", "lr_alpha", "lr_beta"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        if self.seed >= 2**32:  # torch's CPU generator keeps the low 32 bits: seed 2**32 would be seed 0
            raise ConfigError(f"seed must be below 2**32, got {self.seed}")
        for name in ("lr", "weight_decay"):  # the optimizer keeps them as float32 numbers
            if getattr(self, name) > torch.finfo(torch.float32).max:
                raise ConfigError(f"{name} must be a float32 number, got {getattr(self, name)}")
        if self.image_size > MAX_IMAGE_SIZE:
            raise ConfigError(f"image_size must be at most {MAX_IMAGE_SIZE} pixels, got {self.image_size}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if not 0 <= self.holdout < 1:
            raise ConfigError(f"holdout must be in [0, 1) (a fraction of the source), got {self.holdout}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _plain(value: Any) -> Any:
    """``value`` in plain Python types: a numpy scalar (a sweep's ``np.linspace`` value) as its
    Python number, a path as its string, lists and tables item by item. A run's result.json and
    its checkpoint (loaded ``weights_only``) take nothing else."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


#: image folders are resized to at most this many pixels a side (a ResNet takes 224)
MAX_IMAGE_SIZE = 4096


@dataclass
class RunResult:
    source_accuracy: float
    target_accuracy: float | None  # None: the target has no labels to score
    steps: int
    seconds: float
    out_dir: Path | None
    history: list[dict[str, Any]]
    rank: int = 0  # under torchrun, this process's rank: rank 0 alone writes and reports
    #: what the method reported of itself (KMM: its weights' mean and effective sample size),
    #: as result.json's "diagnostics"
    diagnostics: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: "deep" (a network trained by the loop) or "shallow" (an estimator and a classifier)
    mode: str = "deep"
    #: the trained network of a deep run, in eval mode on the run's device (None for a shallow
    #: run): ``result.model(x).logits`` predicts, with no output folder needed
    model: DAModel | None = dataclasses.field(default=None, repr=False, compare=False)
    #: a run with ``holdout``: the scores of :func:`dalib.selection.score_outputs` and the
    #: held-out source accuracy (%), as result.json's "selection"; else empty
    selection: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source_accuracy": self.source_accuracy,
            "target_accuracy": self.target_accuracy,
            "steps": self.steps,
            "seconds": self.seconds,
        }


# --------------------------------------------------------------------------- utilities
# The layout of a model's 4-d weights, and so of its activations, when it trains on the CPU.
# oneDNN runs convolutions, pooling and batch norm on NHWC (channels_last) tensors without
# re-laying out each activation; measured in benchmarks/channels_last.py. Feature MLPs are
# unchanged by it (only 4-d tensors have a channels_last form).
CPU_MEMORY_FORMAT = torch.channels_last


def _dist_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _maybe_init_distributed(device: torch.device) -> None:
    """Initialise the process group when launched by torchrun. It lasts until the process
    exits (then it is destroyed), for every later run of the process: destroyed at the end of
    a run, the next run's init hung in torchrun's rendezvous."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not torch.distributed.is_available():
        return
    if torch.distributed.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL binds each rank to its own GPU
    torch.distributed.init_process_group(backend=backend)
    atexit.register(_destroy_process_group)


def _destroy_process_group() -> None:
    """At exit: the ranks meet first (gloo), then each gives up the group. A rank that left
    while another still received its last broadcast (a run stopped from ``on_step``, at the
    same step on every rank) closed the connection under it, and that rank aborted at exit
    (SIGABRT, "terminate called without an active exception"). A rank that is gone is waited
    for a minute at most."""
    if not torch.distributed.is_initialized():
        return
    if torch.distributed.get_backend() == "gloo":
        import datetime

        with contextlib.suppress(Exception):
            torch.distributed.monitored_barrier(timeout=datetime.timedelta(seconds=60))
    torch.distributed.destroy_process_group()


def resolve_device(name: str | torch.device) -> torch.device:
    """The torch device of ``--device`` (auto, cpu, cuda, cuda:N, or a ``torch.device``), or a
    one-line :class:`ConfigError`. Under ``torchrun`` (``WORLD_SIZE`` > 1) ``auto`` and ``cuda``
    give each rank the GPU of its ``LOCAL_RANK``."""
    if isinstance(name, torch.device):
        name = str(name)
    if not isinstance(name, str):  # (torch.device(None) is a TypeError of several lines, and 0 is cuda:0)
        raise ConfigError(f"device must be a string such as 'cpu' or 'cuda', or a torch.device, got {name!r}")
    ranks = int(os.environ.get("WORLD_SIZE", "1"))
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"bad device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"bad device {name!r}: use auto, cpu, cuda or cuda:N")
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but torch sees no CUDA GPU here")
    if ranks > 1:
        if device.index is not None:
            raise ConfigError(f"device {name!r} under torchrun would put every rank on one GPU: "
                              "use --device cuda (each rank takes the GPU of its LOCAL_RANK)")
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device {str(device)!r} asked for, but torch sees {torch.cuda.device_count()} CUDA GPU(s) here")
    return device


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    if type(np.random.get_bit_generator()) is not np.random.MT19937:  # the caller's own (set_bit_generator): the
        np.random.set_bit_generator(np.random.MT19937())  # run draws what it draws in a fresh process (given back after)
    np.random.seed(seed)  # (below 2**32, as RunConfig checks)
    torch.manual_seed(seed)


def _host_rng_states() -> dict[str, Any]:
    """Python's and numpy's global random states, in the types a ``weights_only`` checkpoint
    holds: a plugin that draws from them resumes as it would have gone on. numpy's in its
    dict form, whatever its bit generator (a plugin may have set another than MT19937)."""
    version, state, gauss = random.getstate()
    return {"python": {"version": version, "state": torch.tensor(state, dtype=torch.int64), "gauss_next": gauss},
            "numpy": _tensors_for_arrays(np.random.get_state(legacy=False))}


def _tensors_for_arrays(value: Any) -> Any:
    """``value`` (dicts of numbers, strings and numpy arrays) with each array as its bytes, in
    a uint8 tensor beside its dtype and shape: :func:`_arrays_for_tensors` gives it back."""
    if isinstance(value, dict):
        return {k: _tensors_for_arrays(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        raw = torch.frombuffer(bytearray(value.tobytes()), dtype=torch.uint8) if value.nbytes else torch.empty(0, dtype=torch.uint8)
        return {"ndarray": raw, "dtype": value.dtype.str, "shape": list(value.shape)}
    return value


def _arrays_for_tensors(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"ndarray", "dtype", "shape"}:
        return np.frombuffer(value["ndarray"].numpy().tobytes(), dtype=np.dtype(value["dtype"])).reshape(value["shape"]).copy()
    if isinstance(value, dict):
        return {k: _arrays_for_tensors(v) for k, v in value.items()}
    return value


def _set_host_rng_states(rng: dict[str, Any], out: Path) -> None:
    """Restore the states of :func:`_host_rng_states` from a checkpoint; one written before
    they were kept leaves the run's seeding in place."""
    try:
        if "python" in rng:
            py = rng["python"]
            random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
        if "numpy" in rng:
            state = _arrays_for_tensors(rng["numpy"])
            kind = state["bit_generator"]  # the run may have set another than this process has now
            if kind != np.random.get_bit_generator().state["bit_generator"]:
                np.random.set_bit_generator(getattr(np.random, kind)())
            np.random.set_state(state)
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:
        raise CheckpointError(f"the checkpoint in {out} holds a random state this run cannot take ({first_line(exc)}): "
                              "delete it and run again without --resume") from None


@contextlib.contextmanager
def caller_random_state(uses_cuda: bool = False) -> Iterator[None]:
    """Give back the caller's global random states when the block ends: Python's, numpy's,
    torch's on the CPU and on every CUDA device (when CUDA is already initialised, or
    ``uses_cuda``: it is initialised first, which applies a seed the caller set before). A run
    seeds them for its own reproducibility; the code that called it then draws what it would
    have drawn without the run (a notebook's next split or initialisation is not set by the
    run's seed)."""
    py = random.getstate()
    bits = np.random.get_bit_generator()  # a plugin may set another (np.random.set_bit_generator)
    npy = np.random.get_state(legacy=False)  # with the cached second normal of a pair (RandomState's, not the bits')
    if uses_cuda and not torch.cuda.is_initialized():
        torch.cuda.init()
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        random.setstate(py)
        np.random.set_bit_generator(bits)  # (empties the normal cache: set_state fills it again)
        np.random.set_state(npy)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """``dtype`` as torch's default dtype inside the block; the caller's again after it."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Ctrl-C (SIGINT) and the stop signals (SIGTERM, SIGUSR1/2), where Python code handles them,
    wait until the block ends and are then handed to their handlers: a file being written is
    finished first. (torch.save
    turns an interrupt inside its writer into a RuntimeError, which read as a failed write.)
    Only from the main thread, the one that can set handlers."""
    caught: list[int] = []
    handlers = _stand_in_for_stops(lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        _put_back(handlers)
    for signum in caught[:1]:
        handlers[signum](signum, None)


def _stand_in_for_stops(catch: Callable[[int, Any], None]) -> dict[int, Callable[..., Any]]:
    """Put ``catch`` in place of the Python handlers of Ctrl-C (SIGINT) and the stop signals (not of
    SIG_DFL, SIG_IGN or a C handler); return the handlers it stands in for, for
    :func:`_put_back`. Only from the main thread, the one that can set handlers (elsewhere:
    none)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    import signal

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, *stop_signals())}
    handlers = {sig: h for sig, h in handlers.items() if callable(h)}
    for sig in handlers:
        signal.signal(sig, catch)
    return handlers


def _put_back(handlers: dict[int, Callable[..., Any]]) -> None:
    import signal

    for sig, handler in handlers.items():
        signal.signal(sig, handler)


class _HeldToStepEnd:
    """Ctrl-C (SIGINT) and the stop signals (SIGTERM, SIGUSR1/2), where Python code handles them,
    that come while it is
    ``holding`` (training) wait for the step's end: the run then writes a checkpoint there,
    and :meth:`deliver` hands the signal to its handler, which stops the run. A ``--resume``
    loses no step. A second signal is handed over at once (a step that takes long, an
    evaluation, a read that hangs). Only from the main thread, the one that can set
    handlers; :meth:`release` puts the handlers back (once, wherever it is called from)."""

    def __init__(self, enabled: bool) -> None:
        _STOPPING.clear()  # (an earlier run's stop)
        self.holding = False
        self.pending: int | None = None
        # the handlers it stands in for
        self._handlers: dict[int, Callable[..., Any]] = _stand_in_for_stops(self._catch) if enabled else {}
        self._installed = bool(self._handlers)

    def _catch(self, signum: int, frame: Any) -> None:
        _STOPPING.set()
        if self.holding and self.pending is None:
            self.pending = signum
        else:
            self._handlers[signum](signum, frame)

    def deliver(self) -> None:
        """Hand a held signal to its handler (Ctrl-C's raises KeyboardInterrupt)."""
        signum, self.pending = self.pending, None
        if signum is not None:
            self._handlers[signum](signum, None)

    def release(self) -> None:
        if self._installed:
            _put_back(self._handlers)
        self._installed = self.holding = False


#: what names the temporary files of :func:`atomic_write_bytes`, before the writer's process id
_TEMPORARY = ".dalib-tmp"


def _temporary_name(name: str) -> str:
    """``.NAME.dalib-tmpPID``, the name :func:`atomic_write_bytes` writes before its rename
    (and :func:`tidy_temporaries` tidies: a name no other program's file has, in a folder
    dalib shares, such as the one of ``eval --predictions``). A long name is cut and told
    apart by a hash of itself, so that a file name the file system takes (up to 255 bytes) has
    a temporary one it takes too."""
    raw = os.fsencode(name)
    if len(raw) > 160:
        digest = hashlib.sha1(raw).hexdigest()[:12]
        name = f"{raw[:120].decode('utf-8', 'ignore')}-{digest}"
    return f".{name}{_TEMPORARY}{os.getpid()}"


def posix_files() -> None:
    """One line where dalib cannot write files as it must (Windows): links not followed
    (``O_NOFOLLOW``), run folders claimed with ``flock``. Its losses and kernels run there."""
    try:
        import fcntl  # noqa: F401
    except ImportError:
        pass
    else:
        if hasattr(os, "O_NOFOLLOW"):
            return
    raise ConfigError("dalib writes its files on Linux and macOS only (POSIX file locks, links not followed): on "
                      "Windows, run it under WSL")


def atomic_write_bytes(path: Path, write: Callable[[Any], None], *, exclusive: bool = False) -> None:
    """Write through a temporary file in the same folder, then rename over ``path``:
    a reader (or a crash) never sees a half-written file. An interrupt that comes during
    the write is raised once the file is in place. ``exclusive``: a file that is at ``path``
    by then (another process wrote it meanwhile) is kept, and :class:`ConfigError` raised."""
    posix_files()
    tmp = path.with_name(_temporary_name(path.name))
    placed = True
    try:
        with _signals_deferred():
            tmp.unlink(missing_ok=True)  # this process's own leftover (an id used again): a new file, never through a link
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666), "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
            if exclusive:
                placed = _place_new(tmp, path)
            else:
                os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch.save reports a failed write (a full disk) as RuntimeError
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else first_line(exc)
        if not isinstance(exc, OSError) or exc.errno == errno.ENOSPC:
            with contextlib.suppress(OSError):
                reason += f"; {shutil.disk_usage(path.parent).free / 2**20:.0f} MiB free on its disk"
        kept = "; the file as it was is kept" if path.exists() else ""
        raise DataError(f"cannot write {path} ({reason}){kept}") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    if not placed:
        raise ConfigError(f"{path} already exists: another process wrote it while this one ran (nothing is overwritten)")


def _place_new(tmp: Path, path: Path) -> bool:
    """Give the written file ``tmp`` the name ``path`` unless a file has it; whether it did.
    A hard link refuses a taken name in one step, where a check and then a rename would let
    two writers both pass the check (the second then replaced the first's file)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    except OSError as exc:  # a file system without hard links: the check and the rename, as near as they come
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if os.path.lexists(path):
            return False
        os.replace(tmp, path)
    return True


def _process_lives(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # no signal sent: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, and belongs to another user
        pass
    try:  # a zombie (killed, not yet reaped by its parent) holds nothing any more
        status = Path(f"/proc/{pid}/stat").read_text()
        return status[status.rindex(")") + 2] != "Z"
    except (OSError, ValueError, IndexError):
        return True


def atomic_write_text(path: Path, text: str, *, exclusive: bool = False) -> None:
    """:func:`atomic_write_bytes` for text (UTF-8). A file or class name that is not UTF-8
    on disk (Python holds its bytes as surrogates) is written back as those bytes."""
    atomic_write_bytes(path, lambda fh: fh.write(text.encode("utf-8", "surrogateescape")), exclusive=exclusive)


class _Stream:
    """An infinite stream of index batches over one domain, a pure function of
    ``(seed, step)``: epoch ``e`` visits the permutation drawn from ``seed`` and ``e``,
    so a resumed run sees exactly the batches the uninterrupted one would have."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world = rank, world
        self._cache: dict[int, Tensor] = {}

    def _perm(self, epoch: int) -> Tensor:
        if epoch not in self._cache:
            self._cache = {epoch: torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))}
        return self._cache[epoch]

    def indices(self, step: int) -> Tensor:
        start = step * self.batch_size
        parts, pos = [], start
        while pos < start + self.batch_size:
            epoch, off = divmod(pos, self.n)
            take = min(self.n - off, start + self.batch_size - pos)
            parts.append(self._perm(epoch)[off : off + take])
            pos += take
        idx = torch.cat(parts)  # (batch_size,)
        return idx[self.rank :: self.world]

    def epoch_of(self, step: int) -> int:
        return (step * self.batch_size) // self.n


def _fetch(domain: Any, idx: Tensor) -> tuple[Tensor, Tensor]:
    if getattr(domain, "x", None) is not None:
        return domain.x[idx], domain.y[idx]
    xs, ys = collate_items([domain.dataset[int(i)] for i in idx], sample_of(domain))
    return xs, label_tensor(ys, domain)


def _loader(dataset: Any, where: str = "a sample", **kwargs: Any) -> torch.utils.data.DataLoader:
    """A DataLoader that leaves the global RNG alone: with worker processes, a DataLoader
    draws their base seed from the global generator, which would shift every later dropout
    mask, so that ``workers`` changed a run's numbers. (Loading itself is deterministic.)
    Its workers leave Ctrl-C and SIGTERM to the process that started them (:func:`_worker_init`),
    and load the plugin files this process loaded before they unpickle the dataset
    (:class:`_WithPluginFiles`). Batches are collated by :func:`collate_items` (``where``
    names a sample in its errors)."""
    from dalib.registry import plugin_files

    files: tuple[tuple[str, str], ...] = ()
    if kwargs.get("num_workers"):
        import multiprocessing.util

        # a worker passes its batches' tensors through a socket in multiprocessing's temporary
        # folder: made now, a forked worker's is this process's, removed as it exits (one of its
        # own stayed in /tmp when a stop killed the worker)
        multiprocessing.util.get_temp_dir()
        files = plugin_files()
    if files and kwargs.get("multiprocessing_context", torch.multiprocessing).get_start_method() != "fork":
        dataset = _WithPluginFiles(dataset, files)  # (under fork nothing is pickled: the dataset as it is)
    return torch.utils.data.DataLoader(dataset, generator=torch.Generator().manual_seed(0),
                                       worker_init_fn=_worker_init,
                                       **{"collate_fn": functools.partial(collate_items, where=where), **kwargs})


class _WithPluginFiles(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """A dataset as loader workers get it when this process loaded plugin files. A worker that
    another start method than fork begins (spawn: macOS's default; forkserver: Linux's from Python
    3.14) unpickles the dataset, and a class from a plugin file lives in a module whose name is made
    up (one per file): the worker died on "No module named 'dalib_user_plugin_...'". It now loads
    those files under the same names first, then unpickles the dataset itself. (Under fork nothing
    is pickled.)"""

    def __init__(self, dataset: Any, files: tuple[tuple[str, str], ...]) -> None:
        self.dataset, self.files = dataset, files

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index]

    def __reduce__(self) -> tuple[Any, ...]:
        from multiprocessing.reduction import ForkingPickler

        # (multiprocessing's own pickler, as the loader's would be: tensors go to shared memory)
        return _unpickled_with_plugin_files, (self.files, bytes(ForkingPickler.dumps(self.dataset)))


def _unpickled_with_plugin_files(files: tuple[tuple[str, str], ...], data: bytes) -> Any:
    """The dataset of a :class:`_WithPluginFiles`, in a worker: its plugin files loaded first."""
    import pickle

    from dalib.registry import load_plugin_file_as

    for name, path in files:
        load_plugin_file_as(name, path)
    return pickle.loads(data)


def _worker_init(worker_id: int) -> None:
    """A loader's worker ignores Ctrl-C (SIGINT) and the stop signals (SIGTERM, SIGUSR1/2), which
    a terminal and a job scheduler send to every process of the job: the run then finishes its step with the
    batches the workers still load, saves it and stops them itself. (A worker they stopped
    first had failed the run, or its checkpoint, with torch's "DataLoader worker is killed
    by signal".) A worker whose run is gone exits by itself (torch's watchdog), and one that
    does not stop when asked is killed (:func:`_stop_workers`)."""
    import signal

    for sig in (signal.SIGINT, *stop_signals()):
        signal.signal(sig, signal.SIG_IGN)


def _unwatch_workers(it: Any) -> bool:
    """Take the workers of a DataLoader iterator off torch's watch (its SIGCHLD handler
    raises in this process for a worker that a signal ended), as its shutdown does; False
    where torch's internals are not as expected (the workers are then left to the shutdown)."""
    try:
        from torch.utils.data._utils import signal_handling

        if it._worker_pids_set:
            signal_handling._remove_worker_pids(id(it))
            it._worker_pids_set = False
        return True
    except (ImportError, AttributeError):
        return False


#: set when Ctrl-C or SIGTERM came to a run (:class:`_HeldToStepEnd`): its loaders' workers are
#: killed, not waited for (torch waits 5 s for each one that does not stop)
_STOPPING = threading.Event()


def _stop_workers(it: Any) -> None:
    """Shut down the worker processes of a DataLoader iterator. Its own cleanup waits for a
    garbage collection (the iterator sits in a reference cycle), which a kept traceback (a
    notebook's last error) can put off indefinitely. A worker still alive after torch's
    shutdown (stuck in a read; it ignores SIGTERM, :func:`_worker_init`) is killed; on a
    stop (Ctrl-C, SIGTERM), every worker is, before torch's shutdown, which would wait for them."""
    shutdown = getattr(it, "_shutdown_workers", None)  # torch's multiprocessing iterator
    if shutdown is not None:
        workers = list(getattr(it, "_workers", ()))
        if (_STOPPING.is_set() or isinstance(sys.exc_info()[1], KeyboardInterrupt)) and _unwatch_workers(it):
            _kill_alive(workers)
        shutdown()
        _kill_alive(workers)


def _kill_alive(workers: list[Any]) -> None:
    """Kill the worker processes still alive, then wait for them (5 s at most each)."""
    alive = [worker for worker in workers if worker.is_alive()]
    for worker in alive:
        worker.kill()
    for worker in alive:
        worker.join(timeout=5)


class _StepBatches:
    """The index batches of steps ``start..stop-1``, drawn as the loader asks for them: a
    list of them all, made before the first step, had grown with steps x batch size."""

    def __init__(self, stream: _Stream, start: int, stop: int) -> None:
        self._stream, self._start, self._stop = stream, start, stop

    def __len__(self) -> int:
        return self._stop - self._start

    def __iter__(self) -> Iterator[list[int]]:
        return (self._stream.indices(s).tolist() for s in range(self._start, self._stop))


class _Prefetcher:
    """Loads batches of a lazily decoded dataset (image folders) with worker processes."""

    def __init__(self, domain: Any, stream: _Stream, start: int, stop: int, workers: int, pin: bool = False) -> None:
        self._domain = domain
        self._it = iter(  # pinned batches make the copy to the GPU asynchronous (non_blocking)
            _loader(domain.dataset, sample_of(domain), batch_sampler=_StepBatches(stream, start, stop),
                    num_workers=workers, pin_memory=pin)
        )

    def close(self) -> None:
        """Stop the worker processes now (not when a garbage collection finds the iterator)."""
        it, self._it = self._it, iter(())
        _stop_workers(it)

    def __next__(self) -> tuple[Tensor, Tensor]:
        batch = _next_batch(self._it, workers=1)
        if batch is None:
            raise StopIteration
        x, y = batch
        return x, label_tensor(y, self._domain)


def _from_worker(exc: DalibError) -> DalibError:
    """A DalibError raised in a DataLoader worker, whose traceback torch wrapped into the
    message, as the one-line error it was."""
    last = str(exc).strip().splitlines()[-1]
    return type(exc)(last.split(": ", 1)[-1])


def _batches(
    domain: Any, stream: _Stream, start: int, stop: int, workers: int, pin: bool = False, *, labelled: bool
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    # labels read with the samples (a dataset of its own, whose labels _check_domains could not
    # read or whose items disagree with its targets) fail here, on the CPU, in one line, not as an
    # index error inside the loss; an in-memory domain's were checked whole before training
    check = getattr(domain, "x", None) is None
    if not check or workers == 0:
        for s in range(start, stop):
            idx = stream.indices(s)
            x, y = _fetch(domain, idx)
            if check:
                check_labels(y, domain, labelled=labelled)
            yield x, y, idx
    else:
        pf = _Prefetcher(domain, stream, start, stop, workers, pin)
        try:
            for s in range(start, stop):
                x, y = next(pf)
                check_labels(y, domain, labelled=labelled)  # (no in-memory domain comes here)
                yield x, y, stream.indices(s)
        finally:  # the generator closed (the run ended, however): its workers stop now
            pf.close()


def _next_batch(batches: Iterator[Any], workers: int) -> Any:
    """The next batch of ``batches`` (None at their end); an error a loader worker raised is
    the one line it was (:func:`_from_worker`), not torch's wrapping of its traceback."""
    failed = None
    try:
        return next(batches)
    except StopIteration:
        return None
    except DalibError as exc:
        if not workers:
            raise
        failed = _from_worker(exc)
    raise failed  # outside the except: torch's error, which holds the workers, is not kept with it


def _forward_batches(
    model: nn.Module, domain: Any, device: torch.device, batch_size: int, workers: int
) -> Iterator[tuple[Any, Tensor]]:
    """Every sample of ``domain``, in its order and in batches, through ``model`` in eval mode
    without gradients: ``(model's output, labels on the CPU)`` per batch. The model's mode is
    given back, and a loader's workers stopped, however the iteration ends."""
    was = model.training
    model.eval()
    try:
        if getattr(domain, "x", None) is not None:
            batches: Any = ((domain.x[i : i + batch_size], domain.y[i : i + batch_size])
                            for i in range(0, len(domain.x), batch_size))
        else:
            batches = _loader(domain.dataset, sample_of(domain), batch_size=batch_size, num_workers=workers)
        batches = iter(batches)
        try:
            while (batch := _next_batch(batches, workers)) is not None:
                x, y = batch
                labels = label_tensor(y, domain).cpu()
                check_labels(labels, domain, labelled=False)  # (a label out of range had been scored as wrong)
                with torch.no_grad():
                    out = model(x.to(device))
                yield out, labels
        finally:
            _stop_workers(batches)
    finally:
        model.train(was)


def predict(
    model: nn.Module, domain: Any, device: torch.device, batch_size: int = 512, workers: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """Every sample of ``domain``, in its order, through ``model`` in eval mode: the predicted
    class (N,), its softmax probability (N,) and the sample's label (N,; −1 when unlabelled),
    all on the CPU."""
    preds, probs, labels = [], [], []
    for out, y in _forward_batches(model, domain, device, batch_size, workers):
        prob, pred = torch.softmax(out.logits.float(), 1).max(1)  # (B,), (B,)
        preds.append(pred.cpu())
        probs.append(prob.cpu())
        labels.append(y)
    return torch.cat(preds), torch.cat(probs), torch.cat(labels)


def forward_all(
    model: nn.Module, domain: Any, device: torch.device, batch_size: int = 512, workers: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """Every sample of ``domain``, in its order, through ``model`` in eval mode: its features
    (N, F) and logits (N, C), float32, and its label (N,; −1 when unlabelled), on the CPU."""
    feats, logits, labels = [], [], []
    for out, y in _forward_batches(model, domain, device, batch_size, workers):
        feats.append(out.features.float().flatten(1).cpu())
        logits.append(out.logits.float().cpu())
        labels.append(y)
    return torch.cat(feats), torch.cat(logits), torch.cat(labels)


def evaluate(
    model: nn.Module, domain: Any, device: torch.device, batch_size: int = 512, workers: int = 0
) -> float | None:
    """Accuracy (%) of ``model`` on the labelled samples of ``domain``; None when it has none
    (an unlabelled target)."""
    if getattr(domain, "x", None) is not None and not bool((domain.y >= 0).any()):
        return None  # nothing to score: no forward pass
    pred, _, y = predict(model, domain, device, batch_size, workers)
    return accuracy_of(pred, y)


def accuracy_of(pred: Any, labels: Any) -> float | None:
    """Accuracy (%) of the predictions (N,) on the labelled samples; None without any."""
    acc = labelled_accuracy(pred, labels)
    return None if acc is None else 100.0 * acc


def _check_domains(src: Any, tgt: Any, cfg: RunConfig) -> None:
    for d, role in ((src, "source"), (tgt, "target")):
        if len(d) == 0:
            raise DataError(f"the {role} domain {d.name!r} is empty")
    src_labels = None
    for d, labelled in ((src, True), (tgt, False)):
        known = d.known_labels()
        if known is None:  # (read batch by batch instead, by _batches)
            continue
        if labelled:
            src_labels = known
        if labelled and bool((known < 0).any()):
            raise DataError(f"the source domain {src.name!r} has unlabelled samples: the source must be labelled")
        check_labels(known, d, labelled=labelled)
    if tuple(src.input_shape) != tuple(tgt.input_shape):
        raise DataError(
            f"source {cfg.src!r} inputs have shape {tuple(src.input_shape)} but target {cfg.tgt!r} "
            f"inputs have {tuple(tgt.input_shape)}: domains must share a feature space"
        )
    if src.num_classes < 2:  # every prediction would be right: a run would report 100%
        raise DataError(f"the source domain {src.name!r} names {src.num_classes} class(es) "
                        f"({', '.join(map(str, src.classes))}): a classifier needs at least 2")
    present = None if src_labels is None else torch.unique(src_labels)
    if present is not None and len(present) < 2:  # every prediction that class: the target's share of it
        raise DataError(f"the source domain {src.name!r} holds samples of one class only "
                        f"({src.classes[int(present[0])]}, of {src.num_classes}): a classifier needs samples of "
                        "at least 2")
    if src.num_classes != tgt.num_classes:
        raise DataError(f"source has {src.num_classes} classes but target has {tgt.num_classes}: domains built with "
                        "Domain.from_arrays count the classes from the labels they hold; pass num_classes= to both")
    known = tgt.known_labels()
    scored = known is None or bool((known >= 0).any())
    # a domain given no class names is scored by position against the other's names; where names
    # are shared (the numbers of a numbered domain among the other's), by name, which is this order
    if scored and list(src.classes) != list(tgt.classes) and not matched_by_position(tgt.classes, src.classes):
        raise DataError(f"the target {renamed_classes(tgt.classes, src.classes, 'source')}: "
                        "give both domains the same class list, in the same order")


def renamed_classes(classes: Any, expected: Any, whose: str) -> str:
    """The message for a domain that names its classes otherwise than ``expected`` (the
    source's, a run's network's): the first names that differ, and why that matters."""
    other = [f"{a} ({whose}: {b})" for a, b in zip(classes, expected) if a != b]
    return (f"names its classes otherwise than the {whose}: {', '.join(other[:3])}{' ...' if len(other) > 3 else ''}; "
            "its labels would be scored against the wrong logits")


def load_checkpoint(path: str | os.PathLike[str], resuming: bool = False) -> dict[str, Any]:
    """Load a dalib checkpoint safely (``weights_only=True``). ``resuming``: the run's own
    checkpoint, which the error advises to delete (any other file is only named)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")

    def damaged(what: str) -> CheckpointError:
        if resuming:
            return CheckpointError(f"corrupt checkpoint {path} ({what}): not a file dalib wrote whole; delete it and "
                                   "run again without --resume")
        return CheckpointError(f"{path} is not a dalib checkpoint, or a damaged one ({what})")

    try:
        ckpt = load_tensors(path)
    except OSError as exc:  # unreadable here (permissions, the disk), not damaged: no advice to delete it
        if exc.errno is None:
            raise damaged(load_failure(exc)) from None
        raise CheckpointError(f"cannot read the checkpoint {path}: {exc.strerror}") from None
    except Exception as exc:
        raise damaged(load_failure(exc)) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "step" not in ckpt:
        raise damaged("no step and weights in it")
    if not isinstance(ckpt["step"], int) or not isinstance(ckpt["model"], dict):
        raise damaged("its step or weights are damaged")
    return ckpt


def load_weights(model: nn.Module, ckpt: dict[str, Any], path: Path) -> None:
    """``model.load_state_dict`` with a one-line error for weights of another network."""
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"the weights in {path} do not fit this network ({first_line(exc)[:200]}): "
                              "it was written by another network or version") from None


def _intact_result(path: Path) -> dict[str, Any] | None:
    """The run's result that ``path`` holds, or None (a resumed run that had finished keeps it,
    and gives its numbers back; one missing or damaged, a truncated write or an edit, is
    written again from the checkpoint)."""
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    if not isinstance(result, dict):
        return None
    accuracies = all(k in result and (result[k] is None or number(result[k])) for k in ("source_accuracy", "target_accuracy"))
    intact = accuracies and number(result.get("seconds")) and isinstance(result.get("selection", {}), dict)
    return result if intact else None


def write_result(out: Path, payload: dict[str, Any], method_cls: type[Method]) -> None:
    """Write ``result.json`` atomically, with what produced it: the method's class (and its
    file, for a plugin loaded by path), a registered backbone's builder (likewise), and the versions of dalib, torch, the numerical
    libraries the run imported and the package that installed the method, and torch's number
    of CPU threads (the float sums, so the numbers, depend on it)."""
    from dalib.models.backbones import registered_builder
    from dalib.registry import defined_at

    payload = {**payload, "method_class": defined_at(method_cls), "versions": _versions(method_cls),
               "threads": torch.get_num_threads()}
    builder = registered_builder((payload.get("run_config") or {}).get("arch"))
    if builder is not None:  # a backbone of the user's: where it came from, as for the method
        payload["backbone_builder"] = defined_at(builder)
    atomic_write_text(out / RESULT, json.dumps(payload, indent=2) + "\n")


#: modules a run may have imported, by the distribution that result.json names
_NUMERICAL = (("numpy", "numpy"), ("scipy", "scipy"), ("ot", "pot"), ("pykeops", "pykeops"), ("sklearn", "scikit-learn"),
              ("torchvision", "torchvision"), ("PIL", "pillow"))  # (the ResNets; an image folder's decoding and resizing)


def _code_hashes(method_cls: type) -> dict[str, str]:
    """Hashes of the code that makes a run's numbers, taken as it begins, for its checkpoint and
    ``result.json`` (``code``): dalib's own
    (:func:`~dalib.registry.dalib_code_hash`; its version string stays the same from commit to
    commit) and the method's module's; "" where the source cannot be read."""
    from dalib.registry import dalib_code_hash, method_code_hash

    found = {"dalib": "", "method": method_code_hash(method_cls)}
    with contextlib.suppress(Exception):  # a record, never a reason for a finished run to fail
        found["dalib"] = dalib_code_hash()
    return found


def cpu_model() -> str:
    """The CPU's model name, as /proc/cpuinfo gives it (``platform``'s guess elsewhere)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def hardware(device: torch.device, autocast: bool = False) -> dict[str, Any]:
    """What computed a run's numbers (``result.json``'s ``hardware``): the CPU's model and, on
    CUDA, the GPU's, torch's CUDA version and the autocast the forward pass ran under
    (``"bfloat16"``, or ``None``): the same run on another GPU, or with ``amp`` off, rounds
    otherwise."""
    found: dict[str, Any] = {"cpu": cpu_model()}
    if device.type == "cuda":
        with contextlib.suppress(Exception):  # a record, never a reason for a finished run to fail
            found["gpu"] = torch.cuda.get_device_name(device)
        found["cuda"] = torch.version.cuda
        found["autocast"] = "bfloat16" if autocast else None
    return found


def _versions(method_cls: type) -> dict[str, str]:
    import importlib.metadata as metadata

    import dalib

    found = {"dalib": dalib.__version__, "torch": torch.__version__, "python": platform.python_version()}
    for module, dist in _NUMERICAL:
        if module in sys.modules:
            with contextlib.suppress(Exception):
                found[dist] = metadata.version(dist)
    with contextlib.suppress(Exception):  # a record, never a reason for a finished run to fail
        found.update(_plugin_package(method_cls))
    return found


def _plugin_package(method_cls: type) -> dict[str, str]:
    """The name and version of the installed package whose files hold ``method_cls``'s module
    (none for dalib's own methods and for plugin files loaded by path)."""
    import importlib.metadata as metadata

    from dalib.registry import USER_PLUGIN_PREFIX

    module = sys.modules.get(method_cls.__module__)
    top = method_cls.__module__.split(".")[0]
    path = getattr(module, "__file__", None)
    if path is None or top in ("dalib", "dalib_plugins") or method_cls.__module__.startswith(USER_PLUGIN_PREFIX):
        return {}
    names = _packages_distributions().get(top, [])
    if len(names) == 1:  # (an editable install lists no module file of its own)
        dist = metadata.distribution(names[0])
        return {dist.metadata["Name"]: dist.version}
    for name in names:  # packages that share a namespace: the one that holds the file
        dist = metadata.distribution(name)
        if any(Path(dist.locate_file(f)).resolve() == Path(path).resolve() for f in dist.files or ()):
            return {dist.metadata["Name"]: dist.version}
    return {}


@functools.lru_cache(maxsize=1)
def _packages_distributions() -> dict[str, list[str]]:
    import importlib.metadata as metadata

    return metadata.packages_distributions()  # reads every installed package's file list: once a process


# --------------------------------------------------------------------------- the loop
def run(
    config: RunConfig,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    resume: bool = False,
    progress_bar: bool | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    on_start: Callable[[dict[str, Any]], None] | None = None,
) -> RunResult:
    """Train ``config.method`` from ``config.src`` to ``config.tgt`` and evaluate it.

    ``out_dir`` receives ``metrics.jsonl``, ``checkpoint.pt`` and ``result.json`` (a shallow
    run: ``result.json`` alone); ``out_dir=None`` writes nothing. With
    ``resume=True`` training continues from its checkpoint and ends with the same result
    an uninterrupted run gives. ``on_start(info)`` is called once the data is loaded and
    checked (``info``: dataset, domains, sizes, start step), ``on_step(step, logs)`` after
    every step.

    The global random states (Python's, numpy's, torch's) are seeded for the run and given
    back to the caller as they were when it returns.

    With ``out_dir``, and outside torchrun, Ctrl-C (SIGINT) in a training step waits for the
    step's end: the run saves a checkpoint there and raises :class:`KeyboardInterrupt`,
    whose ``saved_step`` names the step (``resume=True`` continues it). SIGTERM (a
    scheduler's stop, ``Pool.terminate``) waits for the step's end too: where the process
    leaves it to its default, the process then ends as the default ends it, killed by
    SIGTERM, once the run is saved; a program that handles SIGTERM has its handler called
    there. SIGUSR1 and SIGUSR2 (a scheduler's warning, SLURM's ``--signal``) are taken as
    SIGTERM is. (Without ``out_dir``, or under torchrun, these stop the step at once.)
    """
    if not isinstance(config, RunConfig):
        raise ConfigError(f"dalib.run takes a dalib.RunConfig, got {type(config).__name__}: "
                          "dalib.run(dalib.RunConfig(method=..., src=..., tgt=...), out_dir)")
    if resume and out_dir is None:
        raise ConfigError("resume=True continues a run from its output folder: give out_dir")
    if out_dir is not None and not os.fspath(out_dir):  # Path("") would be the working directory
        raise ConfigError("out_dir is empty: name the output folder, or pass None to write nothing")
    device = resolve_device(config.device)
    # cuda:N the current device for the run, so that nothing (the pin-memory thread, a
    # plugin's torch.cuda call) opens a context on GPU 0 as well; the caller's is given back
    on_gpu = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    # a run trains whatever the caller's grad mode (a notebook's no_grad block) and builds its
    # networks in float32 whatever the caller's default dtype (and on its own device whatever
    # the caller's default device); all are given back
    # one run at a time in a process: runs seed and restore the process's random states and
    # default dtype, and dropout draws from torch's global generator; two at once (threads, or a
    # run from a callback of another) change each other's numbers and release each other's claims
    # ... and in float32 outside the caller's autocast (the runner's own covers the forward pass)
    with _holding_run_lock("another dalib.run is running in this process (another thread, or a callback of that run; "
                           "or a load_model in another thread builds its network): runs share the process's random "
                           "state, so run them one after the other, or in separate processes"), \
            terminate_as_interrupt(then_end=True), caller_random_state(uses_cuda=device.type == "cuda"), on_gpu, \
            torch.inference_mode(False), torch.enable_grad(), _default_dtype(torch.float32), \
            torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
        return _run(config, device, out_dir, resume=resume, progress_bar=progress_bar, on_step=on_step,
                    on_start=on_start)


#: held while a run goes on in this process (:func:`run`), and while :func:`load_model` builds
_RUN_LOCK = threading.Lock()
#: the thread that holds it: a run's (whose callbacks may call load_model), or a building load's
#: (whose backbone builder may load another run's network)
_RUN_LOCK_OWNER: int | None = None
#: held by the load_model that builds: loads in other threads wait for it (a run refuses them)
_BUILD_LOCK = threading.Lock()


@contextlib.contextmanager
def _holding_run_lock(refusal: str) -> Iterator[None]:
    """:data:`_RUN_LOCK` held by this thread, or :class:`ConfigError` ``refusal`` where another
    run or load holds it."""
    global _RUN_LOCK_OWNER
    if not _RUN_LOCK.acquire(blocking=False):
        raise ConfigError(refusal)
    _RUN_LOCK_OWNER = threading.get_ident()
    try:
        yield
    finally:
        _RUN_LOCK_OWNER = None
        _RUN_LOCK.release()


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    """Held while :func:`load_model` builds its network, which draws from (and gives back) the
    process's random generators and sets its default dtype: a run training in another thread
    draws its dropout from them, and would end elsewhere than alone (refused in one line). A
    callback of the run, in its thread, builds between two of its steps: nothing interleaves.
    Loads in several threads (a pool of them) build one after the other; a load within a load
    (a backbone whose builder loads another run's network) builds in the thread that holds the lock."""
    if threading.get_ident() == _RUN_LOCK_OWNER:  # a callback of the run, or a load's builder
        yield
        return
    with _BUILD_LOCK, _holding_run_lock("a dalib.run is running in another thread of this process: load_model builds "
                                        "the network with the process's random generators, which that run draws "
                                        "from, so load it when the run has ended, from the run's own callbacks, or in "
                                        "another process"):
        yield


@cpu_by_default  # (the caller's default device is given back)
def _run(
    config: RunConfig,
    device: torch.device,
    out_dir: str | os.PathLike[str] | None,
    *,
    resume: bool,
    progress_bar: bool | None,
    on_step: Callable[[int, dict[str, float]], None] | None,
    on_start: Callable[[dict[str, Any]], None] | None,
) -> RunResult:
    from dalib.data import load_domain
    from dalib.models import build_model, default_arch
    from dalib.registry import get_method

    method_cls = get_method(config.method)
    dataset = dataset_of(config)
    if resolve_mode(config, method_cls, dataset) == "shallow":
        from dalib.shallow_runner import run_shallow

        if config.holdout:  # else recorded in result.json as if it had been, beside an accuracy on every source sample
            raise ConfigError(f"--holdout holds source samples out of a network's training, and the shallow form of "
                              f"{config.method} fits on all of them: leave --holdout out, or train with --mode deep")
        ignored = [f.name for f in dataclasses.fields(RunConfig)
                   if f.name not in SHALLOW_SETTINGS | SHALLOW_ALSO_READS and getattr(config, f.name) != f.default]
        if ignored:
            warn_outside_dalib(f"{', '.join(ignored)} {'is' if len(ignored) == 1 else 'are'} for deep training: the "
                               f"shallow form of {config.method} ignores {'it' if len(ignored) == 1 else 'them'} (mode "
                               "deep trains a network)", UserWarning)
        return run_shallow(config, dataset, device, out_dir, resume=resume, on_start=on_start)
    if config.classifier != RunConfig.classifier:
        warn_outside_dalib(f"classifier {config.classifier!r} is for the shallow form: a deep run classifies with "
                           "its network's own head", UserWarning)
    method_config = build_method_config(config, method_cls, "deep")
    _maybe_init_distributed(device)
    rank, world = _dist_info()
    is_main = rank == 0
    out = Path(out_dir).expanduser() if out_dir is not None else None
    made = out is not None and not out.exists()
    ok = False
    try:
        kw = {"data_root": config.data_root, "data_dir": config.data, "image_size": config.image_size}
        src = load_domain(dataset, config.src, **kw)
        tgt = load_domain(dataset, config.tgt, **kw)
        _check_domains(src, tgt, config)
        held = None  # the labelled source samples the network does not train on
        if config.holdout:
            held_idx = src.holdout_indices(config.holdout, config.seed)
            # which samples of how many: a resume on a source that changed since would hold out others
            held_digest = hashlib.sha256(np.int64(len(src)).tobytes() + held_idx.tobytes()).hexdigest()[:16]
            src, held = src.partition(held_idx)
        for role, domain in (("source", src), ("target", tgt))[: 2 if method_cls.uses_target else 1]:
            if config.batch_size > len(domain):  # every step would repeat its samples (and use the memory)
                kept = (f"{len(domain)} samples of its {len(domain) + len(held)} once holdout {config.holdout:g} held "
                        f"{len(held)} out" if role == "source" and held is not None else f"{len(domain)} samples")
                smaller = " or a smaller holdout" if role == "source" and held is not None else ""
                raise ConfigError(f"batch_size {config.batch_size} is larger than the {role} domain {domain.name!r} "
                                  f"({kept}): use batch_size <= {len(domain)}{smaller}")
        rows = (config.batch_size // world) * (2 if method_cls.uses_target else 1)  # the smallest forward pass
        if rows < 2:  # the bottleneck's BatchNorm cannot normalise one sample
            need = world * (1 if method_cls.uses_target else 2)
            on = "" if world == 1 else f" on some of the {world} processes"
            raise ConfigError(f"batch_size {config.batch_size} forwards {rows} sample at a time{on}, and BatchNorm "
                              f"needs 2: {config.method} needs batch_size >= {need}")

        ckpt, earlier = None, []
        if out is not None:
            ckpt, earlier = _prepare_out_dir(out, config, resume, is_main, default_arch(tuple(src.input_shape)))
        if ckpt is not None:
            src, tgt, held = _with_saved_classes(ckpt, src, tgt, held)

        _seed_everything(config.seed)
        # a resumed run's weights are its checkpoint's: --pretrained's file (or ImageNet's, which
        # may need the network) is not read again, only remembered for the backbone's learning rate
        model = build_model(config.arch, tuple(src.input_shape), src.num_classes, config.bottleneck_dim,
                            None if ckpt is not None else config.pretrained)
        model.pretrained = config.pretrained is not None
        spec = model_spec(config, dataset, src, tgt.name)
        spec["samples"] = {"source": len(src), "target": len(tgt)}  # (the batches a resume draws depend on them)
        if held is not None:
            spec["holdout"] = held_digest
        method = method_cls(method_config, model)
        if "_modules" not in vars(method):  # (torch's own error came later, from method.to(device))
            raise PluginError(f"method {config.method!r}: its __init__ did not call super().__init__(config, model)")
        spec["cut"] = model.cut  # a method may cut the backbone's last stages (finetune's cut:K)
        model.to(device)
        if device.type == "cpu" and all(t.dim() != 5 for t in [*model.parameters(), *model.buffers()]):
            _cpu_layout(model, config.arch, tuple(src.input_shape))  # (a 3-d convolution's 5-d weights have no such layout)
        method.to(device)

        groups = _checked_groups(method.param_groups(model), method_cls.name)
        grouped = {id(p) for g in groups for p in g["params"]}
        # the method's own modules (a discriminator) join with lr_mult 1, unless its param_groups placed them
        own = [p for p in method.parameters() if p.requires_grad and id(p) not in grouped]
        if own:
            groups = [*groups, {"params": own, "lr_mult": 1.0}]
        for g in groups:
            g.setdefault("lr_mult", 1.0)
            g["params"] = [p for p in g["params"] if p.requires_grad]
        groups = [g for g in groups if g["params"]]
        # foreach: one multi-tensor update for every parameter, the numbers of the per-parameter
        # loop (its default on the CPU), a few percent of a step faster
        optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                                    nesterov=config.momentum > 0, foreach=True)

        s_stream = _Stream(len(src), config.batch_size, config.seed, rank, world)
        t_stream = _Stream(len(tgt), config.batch_size, config.seed + 7_919, rank, world)
        start = 0
        from dalib.registry import defined_at

        # bfloat16 only where the GPU computes it natively (Ampere, compute capability 8.0, and
        # later): older GPUs emulate it, and cuDNN has no bfloat16 convolutions for them
        use_amp = config.amp and device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8
        hashes = _code_hashes(method_cls)
        ran_on = _RanOn(method_code=hashes["method"], dalib_code=hashes["dalib"], threads=torch.get_num_threads(),
                        device=device.type + (" with bfloat16 autocast" if use_amp else ""))
        if ckpt is not None:
            _check_same_data(ckpt, spec, out, config.steps)
            load_weights(model, ckpt, out / CHECKPOINT)
            try:
                method.load_state_dict(ckpt["method"])
            except RuntimeError as exc:
                lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
                why = lines[1] if len(lines) > 1 and lines[0].endswith(":") else first_line(exc)  # (torch's header, then the reason)
                raise PluginError(
                    f"method {config.method!r}: its state in {out / CHECKPOINT} does not fit a new instance "
                    f"({why}); state that prepare() creates, or whose shape training changes, must live in "
                    "get_extra_state()/set_extra_state(), and buffers registered in __init__ keep their shape"
                ) from None
            try:
                optimizer.load_state_dict(ckpt["optimizer"])
            except (ValueError, KeyError, TypeError, RuntimeError) as exc:
                raise CheckpointError(
                    f"the optimizer state in {out / CHECKPOINT} does not fit this run ({first_line(exc)[:200]}): "
                    "the method's param_groups() changed since, or the file is damaged; delete it and run again "
                    "without --resume") from None
            start = int(ckpt["step"])
            ran_on.resume(ckpt, {
                "method_code": lambda step, then, now: (
                    f"the code of method {config.method!r} ({defined_at(method_cls)}) changed since the checkpoint of "
                    f"step {step}: the steps after it train with the new code"),
                "dalib_code": lambda step, then, now: (
                    f"dalib's own code (its runner, models, losses or data) changed since the checkpoint of step {step}: "
                    "the steps after it train with the new code"),
                # (on CUDA the CPU's threads compute no numbers of the model)
                "threads": None if device.type != "cpu" else lambda step, then, now: (
                    f"the checkpoint of step {step} was written with {then} torch threads, this resume has {now}: sums "
                    "then round differently, so the run will not match an uninterrupted one bit for bit; "
                    "OMP_NUM_THREADS sets the count"),
                "device": lambda step, then, now: (
                    f"the checkpoint of step {step} was written on {then}, this resume runs on {now}: the numbers then "
                    "differ from an uninterrupted run's"),
            })
            if ckpt.get("source_weights") is not None:
                method.source_weights = ckpt["source_weights"].to(device)
            method.diagnostics = dict(ckpt.get("diagnostics") or {})

        if on_start is not None and is_main:
            on_start({"mode": "deep", "dataset": dataset, "src": src.name, "tgt": tgt.name, "n_src": len(src),
                      "n_tgt": len(tgt), "n_held": len(held) if held is not None else 0, "start": start,
                      "steps": config.steps, "device": str(device)})
        scoring = scoring_batch(src, config.batch_size)
        context = _RunContext(model, src.dataset, Unlabelled(tgt.dataset), device, config.batch_size,
                              Progress(start, config.steps), classes=list(src.classes), source_domain=src)
        unkept = _UnkeptState(method, config.method)  # what a checkpoint would not keep, as it stands now
        if start == 0:
            before = {id(p) for module in (method, model) for p in module.parameters()}
            method.prepare(context)
            unkept.after_prepare()  # a resume skips prepare: a checkpoint must keep what it set
            method.diagnostics = _diagnostics(method, config.method)  # a bad value fails now, not after training
            _check_source_weights(method.source_weights, len(src), config.method)
            _check_made_in_prepare(method, model, optimizer, before, config.method)
        if ckpt is not None:
            _set_host_rng_states(ckpt["rng"], out)
            torch.set_rng_state(ckpt["rng"]["torch"])
            if device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)
            ranks_rng = ckpt["rng"].get("ranks")
            if isinstance(ranks_rng, list) and len(ranks_rng) == world:  # each rank its own (rank 0's above)
                n_cpu = torch.get_rng_state().numel()
                torch.set_rng_state(ranks_rng[rank][:n_cpu])
                if device.type == "cuda" and ranks_rng[rank].numel() > n_cpu:
                    torch.cuda.set_rng_state(ranks_rng[rank][n_cpu:], device)

        history: list[dict[str, Any]] = list(earlier)  # a resumed run's lines before its checkpoint
        metrics_path = out / METRICS if (out is not None and is_main) else None
        # unbuffered: each line reaches the file as it is logged, and a write the disk refuses
        # fails there, not again when the file is closed (over the error that says which file)
        metrics_fh = _append_to(metrics_path) if metrics_path is not None else None
        bar = _progress_bar(config.steps, start, progress_bar and is_main)
        last_line: dict[str, Any] | None = None  # the last step's metrics line
        t0 = time.perf_counter()
        model.train()
        method.train()
        loaders: list[Any] = []  # closed at the end: their worker processes go with them, not with the traceback
        done = saved_at = start

        def checkpoint(step_done: int) -> None:
            nonlocal saved_at
            ranks_rng = _ranks_rng_states(world, device)  # (every rank takes part)
            if is_main:
                unkept.warn_if_changed()
                elapsed = time.perf_counter() - t0 + (float(ckpt["seconds"]) if ckpt is not None else 0.0)
                try:
                    _save_checkpoint(out, config, spec, model, method, optimizer, step_done, device, elapsed, ran_on,
                                     world, ranks_rng=ranks_rng)
                except KeyboardInterrupt:  # a second Ctrl-C during the write: raised once the file is in place
                    saved_at = step_done
                    raise
            saved_at = step_done

        # Ctrl-C or SIGTERM during a step: a checkpoint at its end, then the stop (not under torchrun:
        # its ranks would have to agree on the step)
        interrupts = _HeldToStepEnd(out is not None and world == 1)
        try:
            pin = device.type == "cuda"
            # a method that learns from the source alone loads no target batch (and forwards none)
            t_batches = (_batches(tgt, t_stream, start, config.steps, config.workers, pin, labelled=False)
                         if method.uses_target else itertools.repeat(None))
            s_batches = _batches(src, s_stream, start, config.steps, config.workers, pin, labelled=True)
            loaders += [s_batches, t_batches]
            batches = zip(s_batches, t_batches)
            interrupts.holding = True  # (the loader's workers ignore the signals: the batches they load come)
            try:
                for step, ((x_s, y_s, idx_s), t_batch) in enumerate(batches, start=start):
                    x_t, idx_t = (x_s[:0], idx_s[:0]) if t_batch is None else (t_batch[0], t_batch[2])
                    progress = Progress(step, config.steps, s_stream.epoch_of(step))
                    lr_mult = inverse_decay(progress, config.lr_alpha, config.lr_beta)
                    for g in optimizer.param_groups:
                        g["lr"] = config.lr * g["lr_mult"] * lr_mult
                    x_s, y_s, x_t = x_s.to(device, non_blocking=True), y_s.to(device), x_t.to(device, non_blocking=True)
                    w_s = method.source_weights[idx_s.to(method.source_weights.device)].to(device) if method.source_weights is not None else None
                    batch = Batch(x_s, y_s, x_t, w_s, idx_s, idx_t)
                    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                        # one forward pass over both batches: BatchNorm normalises them with joint statistics
                        feats, logits = model(torch.cat([x_s, x_t]) if len(x_t) else x_s)  # (B_s + B_t, F), (B_s + B_t, C)
                    n_s = len(x_s)
                    outputs = Outputs(feats[:n_s].float(), feats[n_s:].float(), logits[:n_s].float(), logits[n_s:].float())
                    # the method's losses in float32, outside autocast: a bfloat16 Gram matrix has no exact
                    # zero diagonal (unbiased MMD) and loses the small differences the alignment losses measure
                    failure = None
                    try:
                        try:
                            losses = method.loss(batch, outputs, progress)
                        except InputError as exc:  # a loss refusing the features the network gave: if they are NaN, it diverged
                            if all(bool(torch.isfinite(t).all()) for t in outputs):
                                # what the network gives from the start (the inputs, or the method), or a
                                # refusal of anything but their size (a plugin's call that a later step
                                # first makes, a batch too small for its loss): the loss's own words
                                if step == start or not isinstance(exc, OutOfRangeError):
                                    raise
                                # finite, but larger than the loss takes (squared distances beyond float32): it diverged
                                # too, and the loss's own advice (scale the features, use float64) is no user's to follow
                                peak = max(float(t.detach().abs().max()) for t in outputs if t.numel())
                                raise DataError(f"the network's outputs reached {peak:.1e} at step {step + 1}, and "
                                                f"{config.method}'s loss refused them ({first_line(exc).split(': ')[0]}): "
                                                "training diverged: lower --lr or the method's trade-off") from None
                            _check_batches_finite(((x_s, "source", src), (x_t, "target", tgt)), step)
                            raise DataError(f"the network's outputs became NaN or infinite at step {step + 1}: lower "
                                            "--lr or the method's trade-off") from None
                        _check_losses(losses, config.method)
                        total = losses["total"]
                        if not torch.isfinite(total):
                            _check_batches_finite(((x_s, "source", src), (x_t, "target", tgt)), step)
                            raise DataError(f"the loss became {float(total.detach())} at step {step + 1}: lower --lr or the "
                                            "method's trade-off")
                    except DalibError as exc:
                        if world == 1:
                            raise
                        failure = exc
                    if world > 1:
                        _stop_together(failure, world, device, config.batch_size)
                    optimizer.zero_grad(set_to_none=True)
                    total.backward()
                    if step == start:  # (the first step of this process: the loss's graph is the same at every step)
                        _check_reaches_trained(optimizer, config.method)
                    if world > 1:
                        _average_gradients(optimizer, world)
                    optimizer.step()
                    if world > 1:  # one model on every rank: BatchNorm's statistics too (rank 0's, as DDP keeps them)
                        _on_all_ranks([*model.buffers(), *method.buffers()], lambda flat: torch.distributed.broadcast(flat, 0))
                    done = step + 1
                    logs = {k: float(v.detach()) if isinstance(v, Tensor) else float(v) for k, v in losses.items()}
                    if world > 1:  # the loss the averaged gradient descends: the mean of the ranks' shares
                        logs = _mean_over_ranks(logs, world, device)
                    if bar is not None:
                        bar.update(1)
                        if done % 10 == 0:
                            bar.set_postfix(loss=f"{logs['total']:.3f}")
                    line: dict[str, Any] | None = None
                    if config.log_every and (done % config.log_every == 0 or done == config.steps):
                        line = {"step": done, "lr": config.lr * lr_mult,  # a non-finite logged entry: null, valid JSON
                                **{f"loss/{k}": v if math.isfinite(v) else None for k, v in logs.items()}}
                    if config.eval_every and done % config.eval_every == 0 and done != config.steps:
                        line = (line or {"step": done}) | {
                            "source_acc": evaluate(model, src, device, scoring, config.workers),
                            "target_acc": evaluate(model, tgt, device, scoring, config.workers),
                        } | ({} if held is None else {"holdout_acc": evaluate(model, held, device, scoring, config.workers)})
                    if line is not None and done == config.steps:
                        last_line = line  # written once the run's accuracies are known, below
                    elif line is not None:
                        _log_line(line, history, metrics_fh)
                    new_epoch = s_stream.epoch_of(done) != s_stream.epoch_of(step)
                    if new_epoch:
                        context.progress = Progress(done, config.steps, s_stream.epoch_of(done))
                        method.on_epoch_end(context)
                    if out is not None and config.checkpoint_every and done % config.checkpoint_every == 0 and done != config.steps:
                        checkpoint(done)
                    if on_step is not None:
                        on_step(done, logs)
                    if interrupts.pending is not None and done != config.steps:  # a signal held to this step's end
                        if saved_at != done:
                            checkpoint(done)
                        interrupts.deliver()
            except KeyboardInterrupt as exc:  # a second Ctrl-C: at once, mid-step; saved only if it came after a checkpoint
                if saved_at == done and done > start:
                    exc.saved_step = done  # (the command line says so)
                raise
            # a resumed run that had finished (no step left) keeps its own time, and its files below
            stored = _intact_result(out / RESULT) if ckpt is not None and start >= config.steps and out is not None else None
            finished = stored is not None
            seconds = float(ckpt["seconds"]) if finished else (
                time.perf_counter() - t0 + (float(ckpt["seconds"]) if ckpt is not None else 0.0))
            if out is not None and is_main and start < config.steps:
                # the trained network is kept before it is scored: an image that fails to decode
                # in the final evaluation (a target that training never read) then costs a
                # --resume, not the steps since the last checkpoint
                _save_checkpoint(out, config, spec, model, method, optimizer, config.steps, device, seconds, ran_on, world,
                                 last_line)
            elif ckpt is not None and start >= config.steps and not finished:  # the line its failed scoring held back
                last_line = ckpt.get("last_line")
            interrupts.release()
            try:
                interrupts.deliver()  # one held through the last step: the network is saved, a resume scores it
            except KeyboardInterrupt as exc:
                exc.saved_step = config.steps
                raise
            try:
                if stored is not None:  # its numbers, those of the data it ran on (which may have changed since)
                    src_acc, tgt_acc = stored["source_accuracy"], stored["target_accuracy"]
                    selection = stored.get("selection", {})
                elif held is None:
                    src_acc = evaluate(model, src, device, scoring, config.workers)
                    tgt_acc = evaluate(model, tgt, device, scoring, config.workers)
                    selection = {}
                else:  # the accuracies and the scores from one pass over each domain
                    src_acc, tgt_acc, selection = _scored_with_selection(model, src, held, tgt, device, config.workers,
                                                                         scoring)
            except DataError as exc:
                if out is None:
                    raise
                raise DataError(f"{first_line(exc)} (the trained network is saved in {out}: fix the data, "
                                "then --resume, resume=True from Python, scores it)") from None
            if config.eval_every and not finished:  # the curve ends at the run's own result
                last_line = (last_line or {"step": config.steps}) | {"source_acc": src_acc, "target_acc": tgt_acc} | (
                    {} if held is None else {"holdout_acc": selection["holdout_accuracy"]})
            # a finished run resumed for its lost result.json has its last line in metrics.jsonl already
            # (written twice before); a run whose scoring failed held it back
            logged = start >= config.steps and any(line.get("step") == config.steps for line in history)
            if last_line is not None and not logged:
                _log_line(last_line, history, metrics_fh)
        finally:
            interrupts.release()
            for loader in loaders:
                if hasattr(loader, "close"):
                    loader.close()
            if bar is not None:
                bar.close()
            if metrics_fh is not None:
                metrics_fh.close()

        # as load_model gives it back: the logits' class names, what rebuilds it, its step
        model.classes, model.spec, model.step = list(spec["classes"]), dict(spec), config.steps
        result = RunResult(src_acc, tgt_acc, config.steps, seconds, out, history, rank,
                           diagnostics=_diagnostics(method, config.method), mode="deep", model=model.eval(),
                           selection=selection)
        if out is not None and is_main and not finished:
            payload = {
                "method": config.method,
                "dataset": dataset,
                "src": src.name,
                "tgt": tgt.name,
                **result.to_dict(),
                "mode": "deep",
                "method_config": dataclasses.asdict(method_config),
                "run_config": config.to_dict(),
                "arch": spec["arch"],  # the backbone built (run_config's is None where it was the default)
                "samples": dict(spec["samples"]),  # the source's trained on (less a holdout), the target's
                "data": spec["data"],  # the image folder, as an absolute path (dalib select compares it)
                "data_root": spec["data_root_read"],  # which copy of the data: the one given, or the default found
                "device": str(device),
                "hardware": hardware(device, use_amp),
                "code": {"dalib": ran_on.now["dalib_code"], "method": ran_on.now["method_code"]},  # (hashed at its start)
                "world_size": world,
                "diagnostics": result.diagnostics,
            }
            if selection:
                payload["selection"] = selection
            payload.update(ran_on.changes())  # the steps at which a resume went on with other code, threads, device
            write_result(out, payload, method_cls)
        ok = True
        return result
    finally:
        end_of_writing(out if is_main else None, made, ok)


def _scored_with_selection(model: nn.Module, src: Any, held: Any, tgt: Any, device: torch.device,
                           workers: int, batch_size: int) -> tuple[float | None, float | None, dict[str, Any]]:
    """The source and target accuracies (%), as :func:`evaluate` gives them, and what ``dalib
    select`` ranks a run by: the held-out source accuracy (%) and every criterion of
    :func:`dalib.selection.score_outputs`; from one forward pass over each domain."""
    from dalib.selection import score_outputs

    (f_s, z_s, y_s), (f_h, z_h, y_h), (f_t, z_t, y_t) = (forward_all(model, d, device, batch_size, workers)
                                                         for d in (src, held, tgt))
    scores = score_outputs(f_s, f_h, z_h, y_h, f_t, z_t)
    src_acc, tgt_acc = (accuracy_of(torch.softmax(z, 1).argmax(1), y) for z, y in ((z_s, y_s), (z_t, y_t)))
    return src_acc, tgt_acc, {"holdout_accuracy": 100.0 * (1.0 - scores["holdout_error"]), "n_holdout": len(held),
                              **scores}


def _log_line(line: dict[str, Any], history: list[dict[str, Any]], fh: Any) -> None:
    """One metrics line into the run's history and, when it writes one, its metrics.jsonl."""
    history.append(line)
    if fh is not None:
        try:
            fh.write((json.dumps(line) + "\n").encode("utf-8"))
        except OSError as exc:  # a full disk: the file's name, which a write's error lacks
            raise DataError(f"cannot write {fh.name} ({exc.strerror})") from None


def _diagnostics(method: Method, name: str) -> dict[str, Any]:
    if not isinstance(method.diagnostics, dict):
        raise PluginError(f"method {name!r}: diagnostics must be a dict, got {type(method.diagnostics).__name__}")
    return plain_diagnostics(method.diagnostics, name)


@dataclass
class _RunContext(Context):
    """The runner's :class:`Context`. The source labels a method reads (KMM's diagnostics, in
    ``prepare``, before any batch is drawn) are read and checked as training reads them: a
    label -1, out of range or no class index is the one-line DataError that training gives,
    not an error inside the method."""

    source_domain: Any = field(default=None, repr=False)

    def source_labels(self) -> Tensor:
        domain = self.source_domain
        known = domain.known_labels()
        if known is not None:  # (checked before training: _check_domains)
            return known.detach().cpu().clone()
        labels = torch.cat([label_tensor(ys, domain) for _, ys in in_order(domain.dataset, 4096, sample_of(domain))])
        check_labels(labels, domain, labelled=True)
        return labels


def _check_source_weights(weights: Any, n: int, name: str) -> None:
    """``source_weights`` as :meth:`Method.source_loss` takes them: None, or one finite,
    non-negative weight per source sample, (N_s,), not all zero. Else one line: an (N_s, 1)
    column (a QP solver's usual answer) had broadcast to (B, B) in the loss, which lost the
    weighting and scaled the loss by the batch size."""
    if weights is None:
        return
    if not isinstance(weights, Tensor) or not weights.is_floating_point() or tuple(weights.shape) != (n,):
        got = f"{tuple(weights.shape)} {weights.dtype}" if isinstance(weights, Tensor) else _describe(weights)
        raise PluginError(f"method {name!r}: source_weights must be a floating-point tensor of shape ({n},), one weight "
                          f"per source sample, got {got}")
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()) or not bool((weights > 0).any()):
        raise PluginError(f"method {name!r}: source_weights must be finite and non-negative, and not all zero "
                          f"(min {float(weights.min()):g}, max {float(weights.max()):g})")


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, dict):
        return f"a dict with keys {sorted(map(str, value))}"
    return f"a {type(value).__name__}"


class _RanOn:
    """What a run's numbers depend on beyond its settings: the method's code (its module's syntax
    tree), dalib's own code, torch's number of CPU threads and the kind of device (float sums
    differ with the last two). A checkpoint keeps each as ``KEY`` and the steps at which a resume
    went on with another as ``KEY_changed_at`` (the run then no longer matches an uninterrupted
    one bit for bit); result.json keeps those steps."""

    def __init__(self, **now: Any) -> None:
        self.now = now
        self.changed_at: dict[str, list[int]] = {key: [] for key in now}

    def resume(self, ckpt: dict[str, Any], said: dict[str, Callable[[int, Any, Any], str] | None]) -> None:
        """Take the checkpoint's steps; where it was written with another value (and both are
        known), warn with ``said[KEY](step, then, now)`` (None: not compared) and add its step."""
        step = int(ckpt["step"])
        for key, now in self.now.items():
            self.changed_at[key] = list(ckpt.get(f"{key}_changed_at") or [])
            then, message = ckpt.get(key), said.get(key)
            if message is not None and then not in (None, "") and now not in (None, "") and then != now:
                warn_outside_dalib(f"{message(step, then, now)} (result.json records the step)", RuntimeWarning)
                self.changed_at[key].append(step)

    def saved(self) -> dict[str, Any]:
        """What a checkpoint keeps of it."""
        return {**self.now, **{f"{key}_changed_at": steps for key, steps in self.changed_at.items()}}

    def changes(self) -> dict[str, list[int]]:
        """What result.json keeps of it: the steps, where there are some."""
        return {f"{key}_changed_at": steps for key, steps in self.changed_at.items() if steps}


def _check_batches_finite(batches: tuple[tuple[Tensor, str, Any], ...], step: int) -> None:
    """One line naming a batch that holds NaN or infinite values (a dataset of the user's own is
    not checked when read): the data's fault, not the training's."""
    for x, role, domain in batches:
        if not bool(torch.isfinite(x).all()):
            check_finite(x, f"the {role} batch of step {step + 1} (domain {domain.name})")


def _cpu_layout(model: DAModel, arch: str | None, input_shape: tuple[int, ...]) -> None:
    """Lay the model's weights out in :data:`CPU_MEMORY_FORMAT`. A registered backbone is first
    tried in it, on zeros in eval mode: one that needs the default layout (it flattens feature
    maps with ``.view``) keeps it, with a warning, rather than failing at its first step."""
    from dalib.models.backbones import probe, registered_builder

    model.to(memory_format=CPU_MEMORY_FORMAT)
    if registered_builder(arch) is None:  # the built-in networks run in it (tested)
        return
    try:
        probe(model, input_shape, like=model.head.weight)
    except Exception as exc:  # it ran in the default layout when built (backbones._registered)
        model.to(memory_format=torch.contiguous_format)
        warn_outside_dalib(f"backbone {arch!r} cannot run in the channels_last layout ({first_line(exc)}): it "
                           "trains in the default layout, more slowly on the CPU (flatten with .flatten(1) or "
                           ".reshape, not .view, to let it)", UserWarning)


def _checked_groups(groups: Any, name: str) -> list[dict[str, Any]]:
    """What ``param_groups()`` returned, as the optimizer takes it: a list of dicts whose
    ``params`` is a list of tensors (an iterator is read once, here); else one line."""
    def refuse() -> PluginError:
        return PluginError(f"method {name!r}: param_groups() must return a list of dicts, each with 'params' (a list "
                           f"of the model's parameters) and optionally 'lr_mult', 'weight_decay' and 'momentum', got {_describe(groups)}")

    if not isinstance(groups, (list, tuple)):
        raise refuse()
    seen: set[int] = set()
    for group in groups:
        params = group.get("params") if isinstance(group, dict) else None
        params = [params] if isinstance(params, Tensor) else params
        if params is None or isinstance(params, (dict, str)) or not hasattr(params, "__iter__"):
            raise refuse()
        if isinstance(params, (set, frozenset)):  # no order: a resume would give momenta to other parameters
            raise PluginError(f"method {name!r}: param_groups()'s 'params' is a set, whose order changes from run "
                              "to run: give a list")
        params = list(params)
        if not all(isinstance(p, Tensor) for p in params):
            raise refuse()
        if len({id(p) for p in params} | seen) < len(seen) + len(params):  # torch: a ValueError, or a warning
            raise PluginError(f"method {name!r}: param_groups() gives a parameter twice (in one group or in two): "
                              "each parameter belongs to one group, once")
        seen.update(id(p) for p in params)
        if "lr" in group:
            raise PluginError(f"method {name!r}: param_groups() gives a group its own 'lr', which the runner sets at "
                              "every step from --lr and the schedule: give 'lr_mult', a multiplier of it")
        unknown = sorted(set(group) - GROUP_KEYS, key=str)
        if unknown:  # the optimizer keeps any key without a word: a typo would change nothing
            raise PluginError(f"method {name!r}: param_groups() gives a group the key(s) {', '.join(map(repr, unknown))}; "
                              f"a group takes {', '.join(sorted(GROUP_KEYS))}")
        for key, ok, rule in _GROUP_VALUES:  # the optimizer takes any value without a word
            value = group.get(key, 0.0)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and ok(value)):
                raise PluginError(f"method {name!r}: param_groups() gives a group {key!r} {value!r}: it must be {rule}")
        group["params"] = params  # the method's own dicts stay the optimizer's groups
    return list(groups)


#: the range of each number a group of ``param_groups()`` may set
_GROUP_VALUES = (("lr_mult", lambda v: v >= 0, "a finite number >= 0"),
                 ("weight_decay", lambda v: v >= 0, "a finite number >= 0"),
                 ("momentum", lambda v: 0 <= v < 1, "a number in [0, 1)"))


#: what a group of ``param_groups()`` may hold: its parameters, the runner's multiplier and SGD's own settings
GROUP_KEYS = frozenset({"params", *(key for key, _, _ in _GROUP_VALUES)})


def _check_losses(losses: Any, name: str) -> None:
    """What ``loss()`` returned is a dict of scalars whose ``"total"`` is a tensor that
    reaches trained parameters; else one line that says what it was."""
    if not isinstance(losses, dict) or "total" not in losses:
        raise PluginError(f"method {name!r}: loss() must return a dict of scalar tensors with a 'total' entry, "
                          f"got {_describe(losses)}")
    total = losses["total"]
    if not isinstance(total, Tensor):
        raise PluginError(f"method {name!r}: loss()['total'] must be a scalar tensor that the trained parameters "
                          f"reach, got {_describe(total)}{' (.item() gives up the gradient)' if isinstance(total, float) else ''}")
    if not total.is_floating_point():
        raise PluginError(f"method {name!r}: loss()['total'] is an integer tensor ({str(total.dtype).removeprefix('torch.')}): "
                          "a loss is a floating-point tensor (a count of correct predictions has no gradient)")
    for key, value in losses.items():
        scalar = (value.numel() == 1 if isinstance(value, Tensor)
                  else key != "total" and isinstance(value, (int, float)) and not isinstance(value, bool))
        if not scalar:
            raise PluginError(f"method {name!r}: loss()[{key!r}] must be a scalar tensor, got {_describe(value)}")
    if not losses["total"].requires_grad:
        raise PluginError(f"method {name!r}: loss()['total'] does not depend on any trained parameter "
                          "(detached, or computed under torch.no_grad)")


def _check_made_in_prepare(method: Method, model: nn.Module, optimizer: torch.optim.Optimizer, before: set[int],
                           name: str) -> None:
    """No trainable parameter that ``prepare()`` created (``before``: the ids of the method's
    and the model's parameters until then) is left out of the optimizer: a discriminator built
    once the data is known came after the optimizer, and would never train. (Parameters that
    ``param_groups`` leaves out on purpose, to freeze them, were there before.)"""
    known = before | {id(p) for g in optimizer.param_groups for p in g["params"]}
    late = [f"{owner}.{n}" for owner, module in (("self", method), ("model", model))
            for n, p in module.named_parameters() if p.requires_grad and id(p) not in known]
    if late:
        raise PluginError(f"method {name!r}: prepare() created parameters ({', '.join(late[:3])}"
                          f"{', ...' if len(late) > 3 else ''}) after the optimizer was built, which would never train "
                          "them: create the modules in __init__ (model.features_dim and model.num_classes are known there)")


def _check_reaches_trained(optimizer: torch.optim.Optimizer, name: str) -> None:
    """After the first backward pass: the loss's gradient reached a parameter the optimizer
    moves (in a group whose ``lr_mult`` is above 0). A ``"total"`` built from a tensor of its own, or from a
    module made in ``loss()``, requires grad and trains nothing."""
    if not any(g.get("lr_mult", 1.0) > 0 for g in optimizer.param_groups):
        raise PluginError(f"method {name!r}: every group of param_groups() has lr_mult 0, so nothing trains: give the "
                          "parameters to train a multiplier above 0")
    if not any(p.grad is not None for g in optimizer.param_groups if g.get("lr_mult", 1.0) > 0 for p in g["params"]):
        raise PluginError(f"method {name!r}: loss()['total'] reaches no trained parameter (its gradient reached none "
                          "of the model's or the method's parameters that the optimizer moves): compute it from the "
                          "model's outputs or from modules the method creates in __init__")


class _UnkeptState:
    """The method's attributes that a checkpoint does not keep: numbers, tensors and arrays
    set as plain attributes (``self.ema = 0.0``), not as parameters, buffers or
    :meth:`get_extra_state`. One that training changes starts again from its value at the
    start on a resume, which then ends elsewhere than the uninterrupted run: warned about
    once, at the first checkpoint after the change. Likewise one that ``prepare`` sets (see
    :meth:`after_prepare`), which a resume, skipping ``prepare``, does not compute again."""

    _KEPT = frozenset({"source_weights", "diagnostics"})  # (what the runner's checkpoints keep)

    def __init__(self, method: Method, name: str) -> None:
        self._method, self._name, self._warned = method, name, False
        self._set_in_prepare: list[str] = []
        # a class with a get_extra_state of its own, or of a parent's, keeps its state: trusted (what
        # it keeps cannot be told from the keys it returns; a subclass that adds state extends it)
        self._trusted = type(method).get_extra_state is not nn.Module.get_extra_state
        self._start = self._snapshot()

    def _snapshot(self) -> dict[str, Any]:
        if self._trusted:
            return {}
        return {k: self._copy(v) for k, v in vars(self._method).items() if self._watched(k, v)}

    def after_prepare(self) -> None:
        """Note what ``prepare`` set (changed or created), and watch training from here."""
        now = self._snapshot()
        self._set_in_prepare = [k for k, v in now.items() if k not in self._start or not _same_value(v, self._start[k])]
        self._start = now

    def _watched(self, key: str, value: Any) -> bool:
        # a number, an array or a tensor, a container of them (a queue), or None (filled later)
        return (not key.startswith("_") and key not in self._KEPT and not isinstance(value, bool)
                and (value is None or isinstance(value, (int, float, Tensor, np.ndarray, np.generic, list, tuple, dict))))

    @staticmethod
    def _copy(value: Any) -> Any:
        if isinstance(value, Tensor):
            return value.detach().clone()
        if isinstance(value, np.ndarray):
            return np.copy(value)
        if isinstance(value, dict):  # its items as they are: a new or replaced item is a change
            return dict(value)
        if isinstance(value, (list, tuple)):  # (a namedtuple's own type takes its fields, not one iterable)
            return tuple(value)
        return value

    def warn_if_changed(self) -> None:
        if self._warned:
            return
        if self._set_in_prepare:
            self._warned = True
            warn_outside_dalib(
                f"method {self._name!r} sets self.{self._set_in_prepare[0]} in prepare(), which a checkpoint does not "
                "keep (it keeps parameters, buffers and get_extra_state()) and a resumed run does not compute again "
                "(--resume skips prepare): keep it in get_extra_state()/set_extra_state(), or in a buffer "
                "registered in __init__", RuntimeWarning)
            return
        now = vars(self._method)
        changed = [k for k, v in self._start.items() if not _same_value(now.get(k), v)]
        if changed:
            self._warned = True
            warn_outside_dalib(
                f"method {self._name!r} changes self.{changed[0]} during training, which a checkpoint does not keep (it "
                "keeps parameters, buffers and get_extra_state()): if later steps read it, a resumed run starts it "
                "again from its first value and ends elsewhere than an uninterrupted one; keep such state in a buffer of "
                "fixed shape (self.register_buffer() in __init__) or in get_extra_state()/set_extra_state() (a cache "
                "rebuilt at every step needs neither: name it _last, say)",
                RuntimeWarning)


def _same_value(a: Any, b: Any) -> bool:
    """Whether ``a`` is still ``b`` (:class:`_UnkeptState`'s copy): NaN equal to NaN, a
    container's items compared by identity."""
    if isinstance(b, Tensor):
        if not (isinstance(a, Tensor) and a.shape == b.shape and a.dtype == b.dtype):
            return False
        a = a.detach().to(b.device)
        if not b.is_floating_point():
            return bool(torch.equal(a, b))
        gaps = a.isnan()
        return bool(torch.equal(gaps, b.isnan())) and bool(torch.equal(a[~gaps], b[~gaps]))
    if isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and a.shape == b.shape and np.array_equal(a, b, equal_nan=b.dtype.kind in "fc")
    if isinstance(b, dict):
        return isinstance(a, dict) and a.keys() == b.keys() and all(a[k] is b[k] for k in b)
    if isinstance(b, tuple):  # (a list's or a tuple's items, as _UnkeptState copies them)
        return isinstance(a, (list, tuple)) and len(a) == len(b) and all(x is y for x, y in zip(a, b))
    if isinstance(b, float) and isinstance(a, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def _average_gradients(optimizer: torch.optim.Optimizer, world: int) -> None:
    """Data parallelism: every rank steps with the mean of all ranks' gradients."""
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]

    def mean(flat: Tensor) -> None:
        torch.distributed.all_reduce(flat)
        flat /= world

    _on_all_ranks(grads, mean)


def _on_all_ranks(tensors: list[Tensor], collective: Callable[[Tensor], Any]) -> None:
    """Run ``collective`` (an in-place all-reduce or broadcast) once per dtype, on the
    ``tensors`` flattened into one buffer, and copy the result back: one call per step, not
    one per parameter (175 for a ResNet-50 with DANN's discriminator)."""
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for same in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for t in same])  # (sum of numels,): channels_last read in logical order
        collective(flat)
        offset = 0
        for t in same:
            t.copy_(flat[offset : offset + t.numel()].view(t.shape))
            offset += t.numel()


def _stop_together(failure: DalibError | None, world: int, device: torch.device, batch_size: int) -> None:
    """Under torchrun, after each step's loss: if a rank's failed (a method's check on its
    share of the batch, a loss that became NaN there), every rank raises that one line. The
    others had waited in the gradients' all-reduce, and died there with gloo's traceback."""
    failed = torch.tensor([0.0 if failure is None else 1.0], device=device)
    torch.distributed.all_reduce(failed)
    if not failed.item():
        return
    said: list[Any] = [None] * world
    torch.distributed.all_gather_object(said, None if failure is None else (type(failure).__name__, first_line(failure)))
    rank, (name, text) = next((r, s) for r, s in enumerate(said) if s is not None)
    from dalib import errors

    kind = getattr(errors, name, DalibError)
    kind = kind if isinstance(kind, type) and issubclass(kind, DalibError) else DalibError
    raise kind(f"{text} (on process {rank} of {world}, whose share of each batch of {batch_size} is "
               f"{batch_size // world + (rank < batch_size % world)} samples)")


def _ranks_rng_states(world: int, device: torch.device) -> list[Tensor] | None:
    """Under torchrun, each rank's torch generator states (the CPU's, then the GPU's), gathered
    on every rank: the ranks' shares of a batch that does not divide evenly differ in size, so
    their dropout masks draw differently, and a resume that gave every rank rank 0's states
    had gone on from other masks than the run it continued. None for one process."""
    if world == 1:
        return None
    mine = torch.get_rng_state()
    if device.type == "cuda":
        mine = torch.cat([mine, torch.cuda.get_rng_state(device)])
    mine = mine.to(device)  # (NCCL gathers GPU tensors)
    every = [torch.empty_like(mine) for _ in range(world)]
    torch.distributed.all_gather(every, mine)
    return [t.cpu() for t in every]


def _mean_over_ranks(logs: dict[str, float], world: int, device: torch.device) -> dict[str, float]:
    """The ranks' logged values averaged (every rank takes the same)."""
    values = torch.tensor(list(logs.values()), dtype=torch.float64, device=device)  # (K,)
    torch.distributed.all_reduce(values)
    return dict(zip(logs, (values / world).tolist()))


def dataset_of(config: RunConfig) -> str:
    """The dataset a run reads: ``config.dataset``, ``image-folder`` for ``config.data``, else
    the one dataset that has both domains."""
    from dalib.data import get_dataset, infer_dataset

    if config.dataset:
        return get_dataset(config.dataset).name  # as registered: --dataset Digits is digits in result.json
    return "image-folder" if config.data else infer_dataset(config.src, config.tgt)


def resolve_mode(config: RunConfig, method_cls: type[Method], dataset: str) -> str:
    """"deep" or "shallow": ``auto`` runs the shallow form on feature datasets."""
    from dalib.data import get_dataset

    has_shallow = method_cls.ShallowConfig is not None
    if config.mode == "shallow" and not has_shallow:
        from dalib.shallow.pipeline import shallow_methods

        raise ConfigError(
            f"method {config.method!r} has no shallow form; methods with one: {', '.join(shallow_methods())}"
        )
    if config.mode == "auto":
        return "shallow" if has_shallow and get_dataset(dataset).kind == "features" else "deep"
    return config.mode


def _progress_bar(total: int, start: int, enabled: bool | None) -> Any:
    stream = sys.stderr  # None under pythonw or `2>&-`, which tqdm writes to all the same
    if enabled is False or stream is None or getattr(stream, "closed", False):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc="train", unit="step", file=sys.stderr, disable=None if enabled is None else not enabled, dynamic_ncols=True)


def build_method_config(config: RunConfig, method_cls: type[Method], mode: str) -> Any:
    """The method's ``Config`` (``ShallowConfig`` for ``mode == "shallow"``) built from
    ``config.method_config``; an unknown or invalid key raises :class:`ConfigError`."""
    if mode == "shallow":
        return build_config(method_cls.ShallowConfig, config.method_config, owner=f"{config.method} (shallow)")
    return build_config(method_cls.Config, config.method_config, owner=config.method)


def resolved_method_config(config: RunConfig) -> dict[str, Any]:
    """Every hyperparameter the run of ``config`` uses, defaults included. Two configs with
    equal results here train the same method the same way, even when one names a default
    that the other leaves out; a changed default changes the result."""
    from dalib.registry import get_method

    method_cls = get_method(config.method)
    mode = resolve_mode(config, method_cls, dataset_of(config))
    return dataclasses.asdict(build_method_config(config, method_cls, mode))


def comparable_config(config: RunConfig) -> dict[str, Any]:
    """The fields of ``config`` that change a run's numbers (not where it runs or logs)."""
    return comparable_settings(config.to_dict())


def comparable_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Of a run's settings (a :class:`RunConfig` as a dict, as result.json keeps it), those
    that change its numbers; a field added since runs were first saved is left out at the
    value those runs had (their checkpoints and the benchmark cells' fingerprints stay
    comparable)."""
    volatile = {"device", "workers", "log_every", "eval_every", "checkpoint_every", "data_root", "data", "amp"}
    return {k: v for k, v in settings.items()
            if k not in volatile and not (k in _ADDED_SINCE and v == _ADDED_SINCE[k])}


#: RunConfig fields added after runs were saved, with the value a run that predates them had
_ADDED_SINCE = {"holdout": 0.0}


def _canonical_names(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` with the dataset it infers and canonical domain names (``--src M`` and
    ``--src mnist`` are the same run); as given where they do not resolve."""
    from dalib.data.registry import get_dataset, infer_dataset

    out = dict(settings)
    with contextlib.suppress(DalibError, KeyError, TypeError, AttributeError):
        info = get_dataset(out.get("dataset") or infer_dataset(out["src"], out["tgt"]))
        if info.domains:  # a folder-of-folders dataset names its domains freely
            out.update(dataset=info.name, src=info.resolve(out["src"]), tgt=info.resolve(out["tgt"]))
    return out


#: the settings of a run that a shallow fit reads (the others train networks)
SHALLOW_SETTINGS = frozenset({"method", "mode", "classifier", "src", "tgt", "dataset", "seed", "method_config"})
#: where a shallow run reads its data and computes, which its result does not depend on
SHALLOW_ALSO_READS = frozenset({"data_root", "data", "device"})


def _as_run(settings: dict[str, Any], mode: str, arch: str | None) -> dict[str, Any]:
    """The settings a run of ``mode`` reads, as they resolve: ``auto`` as that mode, no
    ``arch`` as ``arch`` (the backbone the default gives on the run's inputs), the domains by
    their names."""
    # a field added since is compared at the value runs had before it (left out of both when so)
    out = _ADDED_SINCE | _canonical_names(comparable_settings(settings))
    if out.get("mode") == "auto":
        out["mode"] = mode
    if out.get("arch") is None and arch is not None:
        out["arch"] = arch
    reads = SHALLOW_SETTINGS if mode == "shallow" else set(out) - {"classifier"}  # a deep run has its own head
    return {k: v for k, v in out.items() if k in reads}


def check_same_settings(saved: Any, config: RunConfig, what: str, mode: str, default_arch: str | None = None) -> None:
    """Refuse to resume (or report) a run made with other settings than ``config``'s: the
    message names each setting with its saved and its given value (datasets and domains
    by what they name, not how they were spelled; only the settings a ``mode`` run reads,
    as they resolve: ``--mode deep`` for an ``auto`` run that trained a network, ``--arch``
    naming ``default_arch``, the backbone that none gives)."""
    saved = _as_run(saved, mode, default_arch) if isinstance(saved, dict) else {}
    mine = _as_run(comparable_config(config), mode, default_arch)
    diff = [k for k in sorted(mine) if json.dumps(saved.get(k), sort_keys=True) != json.dumps(mine[k], sort_keys=True)]
    if diff == ["method_config"]:
        # as given ("--set trade_off=1", or nothing for the default 1.0), they may still be the same
        # hyperparameters: compare what each resolves to
        with contextlib.suppress(DalibError, TypeError, ValueError):
            # every other setting is equal: the run's own (with its --data, which the saved copy leaves out)
            before = dataclasses.replace(config, method_config=dict(saved.get("method_config") or {}))
            if resolved_method_config(before) == resolved_method_config(config):
                diff = []
    if diff:
        shown = "; ".join(f"{k}: {json.dumps(saved.get(k))} there, {json.dumps(mine[k])} now" for k in diff[:4])
        more = f"; and {len(diff) - 4} more" if len(diff) > 4 else ""
        raise CheckpointError(f"{what} is from a run with other settings ({shown}{more}): give the same "
                              "options to resume it, or choose another --out")


def make_folder(out: Path, what: str) -> None:
    """Create ``out`` (and its parents), or fail in one line that says why: a link to a folder
    that does not exist had read "File exists"."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if out.is_symlink() and not out.exists():
            raise ConfigError(f"cannot create {what} {out}: it is a symbolic link to {os.readlink(out)}, which does "
                              "not exist") from None
        raise ConfigError(f"cannot create {what} {out}: {exc.strerror}") from None


def ready_for_writing(out: Path) -> None:
    """Before a run or a suite writes into ``out``: a one-line error now, not a traceback
    after the work, when it cannot take files. (Its leftovers go once it is claimed,
    :func:`tidy_temporaries`: a writer on another machine of a shared file system is no process
    here, and a second run that was then refused had removed the first one's checkpoint as it
    was being written.)"""
    try:
        fd, probe = tempfile.mkstemp(dir=out, prefix=".dalib-write-test")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"cannot write to output folder {out}: {exc.strerror}") from None


def tidy_temporaries(out: Path, names: Collection[str] | None = None) -> None:
    """Away with the temporary files of :func:`atomic_write_bytes` that a killed writer (kill -9
    mid-write) left in ``out`` (with ``names``, those of the files of these names alone)."""
    for stale in out.glob(f".*{_TEMPORARY}*"):
        name, pid = stale.name[1:].rsplit(_TEMPORARY, 1)
        if names is not None and name not in names:
            continue
        if pid.isdigit() and not _process_lives(int(pid)):
            stale.unlink(missing_ok=True)


#: the file a run keeps in its output folder while it writes there: the process id of its writer
LOCK = ".dalib-run.lock"


def claim_out_dir(out: Path) -> None:
    """Claim ``out`` for this process: a second run started there while the first still
    writes (before its first checkpoint nothing else tells them apart) is a one-line error,
    not a run whose files the first one overwrites later. The claim of a process that died is
    taken over. Then the temporary files that a killed writer left there go."""
    claim_file(out / LOCK, f"{out} {_BUSY}", "or choose another --out")
    tidy_temporaries(out)


_BUSY = "is being written by another dalib run"


class FolderTaken(ConfigError):
    """The output folder holds a run, or another process claims it: the CLI's default folder
    moves on to the next number when a run started at the same moment took it first."""


#: the claims this process holds: lock path -> the open descriptor whose flock keeps it
_claims: dict[str, int] = {}


def _read_pid(fd: int) -> int | None:
    """The process id written in an open lock file; None when it is empty or not a number."""
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        return int(os.read(fd, 64).decode("ascii", "replace").strip())
    except ValueError:
        return None


def claim_file(lock: Path, busy: str, advice: str) -> None:
    """Create or take ``lock`` for this process, or fail in one line (``busy``, the holder's
    process id, ``advice``) while another process holds it. The claim is an exclusive
    ``flock`` on the file, which the system drops when its holder dies, plus this process's
    id written in it (to name it): the flock alone tells a live claim, so a claim left by a
    killed run is taken over whatever process has its id now (on this machine, or on another
    one of a shared file system), and two processes that find it at the same moment cannot
    both take it over. A file system that does not lock files is one line: two runs there
    could not be kept apart. :func:`release_file` gives it up."""
    posix_files()
    for _ in range(3):
        try:  # never through a link: a link planted in a shared folder would have this process empty its file
            fd = os.open(lock, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as exc:  # a claim file of another user's (read-only for this one), a name too long
            why = ("it is a symbolic link, which dalib does not follow: remove it" if exc.errno == errno.ELOOP
                   else exc.strerror)
            raise ConfigError(f"cannot claim {lock}: {why}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ConfigError(f"cannot claim {lock}: it is not a regular file: remove it")
        try:
            _flock(fd, exclusive=True)
        except OSError as exc:
            pid = _read_pid(fd)
            empty = os.fstat(fd).st_size == 0
            os.close(fd)
            if exc.errno not in _HELD:  # ENOLCK (NFS without its lock service), ENOSYS (Lustre's noflock) ...
                if empty:  # (made by this process, as like as not: an empty claim would read as a run for ever)
                    with contextlib.suppress(OSError):
                        lock.unlink()
                raise ConfigError(f"cannot claim {lock}: its file system does not lock files ({exc.strerror}), "
                                  "which keeps two runs from writing one folder: write to a folder on another file "
                                  "system") from None
            holder = f"process {pid}" if pid is not None else f"{lock}"
            raise FolderTaken(f"{busy} ({holder}): wait for it {advice}") from None
        try:  # released and claimed anew since it was opened: this descriptor is the old file's
            current = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if not current:
            os.close(fd)  # (the flock goes with it)
            continue
        try:
            os.ftruncate(fd, 0)  # empty (its claimer died before writing), a dead process's, or this one's
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, str(os.getpid()).encode())
        except OSError as exc:  # a disk with room for an empty file, not for its few bytes: an empty claim
            with contextlib.suppress(OSError):  # left there would read as a run that writes, for ever
                lock.unlink()
            os.close(fd)
            raise ConfigError(f"cannot claim {lock}: {exc.strerror}") from None
        _claims[str(lock)] = fd
        return
    raise ConfigError(f"cannot claim {lock}: another process keeps claiming it")


#: what flock fails with while another process holds the lock (anything else: no file locks there)
_HELD = {errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES}


def _flock(fd: int, *, exclusive: bool) -> None:
    """A flock on ``fd`` without waiting, or the OSError. A lock held a moment by another
    process that only looks (:func:`_writer`'s shared one) is waited out: a few tries."""
    import fcntl

    for attempt in range(5):
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in _HELD or attempt == 4 or not exclusive:
                raise
        time.sleep(0.02)


def release_file(lock: Path) -> None:
    """Remove ``lock`` if this process holds it (:func:`claim_file`): the file first, then the
    flock, so that a process waiting on the old file sees that it was released. A process that
    never claimed it leaves it alone, whatever id it names (a run refused by a live one on
    another node, or in another container, may have that run's id)."""
    fd = _claims.pop(str(lock), None)
    if fd is None:
        return
    with contextlib.suppress(OSError, ValueError):
        if int(lock.read_text().strip()) == os.getpid():
            lock.unlink()
    os.close(fd)


def end_of_writing(out: Path | None, made: bool, ok: bool) -> None:
    """When a run that writes into ``out`` ends: give up this process's claim on the folder
    (a no-op when it holds none) and, if the run failed, remove the folder it created when
    nothing was written there (an empty metrics file aside), so that the next default --out is
    not skipped ahead."""
    if out is None:
        return
    # only with the claim: a run refused by another that made the folder at the same moment
    # had removed that run's empty metrics file, which it then wrote its lines into, unlinked
    tidy = made and not ok and str(out / LOCK) in _claims
    if tidy:  # while the claim holds: a run that claims the folder next may open this file
        with contextlib.suppress(OSError):
            if (out / METRICS).is_file() and (out / METRICS).stat().st_size == 0:
                (out / METRICS).unlink()  # opened before the first step failed: nothing in it
    release_file(out / LOCK)
    if tidy:
        with contextlib.suppress(OSError):  # a folder with anything else in it (a metrics line, say) stays
            out.rmdir()


def holds_run(out: Path) -> bool:
    """Whether ``out`` holds a run: its checkpoint or its result, or the claim of a run that
    still writes there (before its first checkpoint). Metric lines alone are what a run that
    stopped early left: a new run may start there (:func:`check_fresh_out_dir`)."""
    try:
        if _keeps_a_run(out) or not _left_by_a_run(out / METRICS):  # a metrics file of its own is kept too
            return True
    except ConfigError:  # a metrics.jsonl that is a link or a pipe, a folder that cannot be read: not free
        return True
    return _writer(out) is not None


def _writer(out: Path) -> int | str | None:
    """The process id of another run that claims ``out`` and lives ("" while its claim is being
    written), or None. The claim's flock tells whether it lives (:func:`claim_file`): the id
    of a run killed since may be another process's now, here or on another machine."""
    posix_files()
    try:
        fd = os.open(out / LOCK, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # (a claim refuses it in its own words)
            return None
        pid = _read_pid(fd)
        try:
            _flock(fd, exclusive=False)
        except OSError as exc:
            if exc.errno not in _HELD:  # no file locks there: the id alone
                return pid if pid is not None and pid != os.getpid() and _process_lives(pid) else None
        else:
            return None  # no one holds it (the shared flock goes as the file is closed)
        if pid == os.getpid():  # this process's own claim
            return None
        return pid if pid is not None else ""
    finally:
        os.close(fd)


def _keeps_a_run(out: Path) -> bool:
    """Whether ``out`` keeps a run's checkpoint or result."""
    return any((out / name).exists() for name in (CHECKPOINT, RESULT))


def refuse_while_written(out: Path) -> None:
    """One line if another live process is writing a run into ``out``."""
    writer = _writer(out)
    if writer is not None:
        raise FolderTaken(f"{out} {_BUSY}{f' (process {writer})' if writer else ''}: wait for it or choose "
                          "another --out")


def _holds_a_run(out: Path) -> FolderTaken:
    return FolderTaken(f"{out} already holds a run: pass --resume (resume=True from Python) to continue it, "
                       "or choose another --out")


def _refuse_a_kept_run(out: Path) -> None:
    """One line if ``out`` keeps a run's checkpoint or result: nothing is overwritten."""
    if _keeps_a_run(out):
        refuse_while_written(out)  # --resume would be refused too, while it writes
        raise _holds_a_run(out)


def _regular_or_absent(path: Path) -> bool:
    """Whether a regular file is at ``path`` (False where nothing is). Anything else there (a
    symbolic link, a pipe, a folder) is refused in one line: through a link planted in a run
    folder someone else prepared, a resume would read a file of the user's elsewhere into the
    folder, or create and write the file the link names; on a pipe, it would wait for ever."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return False
    except OSError as exc:  # the folder is a file's path, a loop of links, unreadable
        raise ConfigError(f"cannot use {path.parent} as a run folder: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        kind = ("a symbolic link" if stat.S_ISLNK(mode) else "a folder" if stat.S_ISDIR(mode)
                else "not a regular file (a pipe, a device)")
        raise ConfigError(f"{path} is {kind}, which dalib does not read or write through: remove it, or choose "
                          "another --out")
    return True


def _append_to(path: Path) -> Any:
    """``path`` opened to append to, unbuffered, and never through a symbolic link (one put
    there since the checks would name the file it writes); named by its path, which a write
    the disk refuses names (an open descriptor is named by its number)."""
    posix_files()
    fh = open(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666), "ab", buffering=0)
    fh.name = str(path)
    return fh


def _left_by_a_run(metrics: Path) -> bool:
    """Whether ``metrics`` is absent or reads as a run's metric lines (its first line begins
    a JSON object with the step): the file a run that stopped early left, which a new run
    replaces."""
    if not _regular_or_absent(metrics):
        return True
    try:
        with metrics.open("rb") as fh:
            first = fh.readline(1 << 16).strip()
    except FileNotFoundError:
        return True
    except OSError as exc:  # the folder is a file's path, a loop of links, unreadable: it had read as "no run wrote it"
        raise ConfigError(f"cannot use {metrics.parent} as a run folder: {exc.strerror}") from None
    return not first or first.startswith(b'{"step": ')  # as _log_line writes it (a kill may cut the line short)


def check_fresh_out_dir(out: Path) -> None:
    """Refuse to write into a folder that already holds a run (a checkpoint or a result):
    nothing is overwritten. The metric lines of a run that stopped before its first
    checkpoint (an error, a kill) are all that run left, and cannot be continued: a new run
    there starts them afresh."""
    _refuse_a_kept_run(out)
    if not _left_by_a_run(out / METRICS):
        raise ConfigError(f"{out} holds a {METRICS} that no dalib run wrote: choose another --out")
    existed = out.is_dir()
    make_folder(out, "output folder")
    try:
        ready_for_writing(out)
        claim_out_dir(out)  # before anything of a run that may be writing here is touched
    except ConfigError:
        if not existed:  # (a folder of this run's making that nothing took meanwhile: no run left there)
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    if _keeps_a_run(out):  # a run that claimed the folder, finished and gave it up since the check above
        release_file(out / LOCK)
        raise _holds_a_run(out)
    (out / METRICS).unlink(missing_ok=True)


def _prepare_out_dir(
    out: Path, config: RunConfig, resume: bool, is_main: bool, arch: str
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Make ``out`` ready; return the checkpoint to resume from, if any, and the metric lines
    the run has written so far (its history up to that checkpoint). ``arch``: the backbone
    that no ``arch`` gives on this run's inputs."""
    ckpt_path = out / CHECKPOINT
    if resume:
        if is_main and out.is_dir():  # a run still writing there (maybe before its first checkpoint) is named first
            ready_for_writing(out)
            claim_out_dir(out)
        if not ckpt_path.exists():
            if (out / RESULT).exists():  # without --resume the folder is refused as holding a run
                raise CheckpointError(f"nothing to resume: the run in {out} finished ({RESULT}) and its {CHECKPOINT} "
                                      "is gone; choose another --out")
            stopped = " (the run stopped before its first checkpoint: run it again without --resume)" if (
                out / METRICS).exists() else ""
            raise CheckpointError(f"nothing to resume: no {CHECKPOINT} in {out}{stopped}")
        ckpt = load_checkpoint(ckpt_path, resuming=True)
        missing = [k for k in ("config", "method", "optimizer", "rng") if not isinstance(ckpt.get(k), dict)]
        rng = ckpt["rng"].get("torch") if isinstance(ckpt.get("rng"), dict) else None
        ranks = ckpt["rng"].get("ranks") if isinstance(ckpt.get("rng"), dict) else None  # (torchrun's; CUDA's after)
        n_cpu = torch.get_rng_state().numel()
        if not (isinstance(rng, Tensor) and rng.dtype == torch.uint8 and rng.shape == torch.get_rng_state().shape) or not (
                ranks is None or isinstance(ranks, list) and all(isinstance(t, Tensor) and t.dtype == torch.uint8
                                                                 and t.dim() == 1 and t.numel() >= n_cpu for t in ranks)):
            missing.append("its random state")
        if isinstance(ckpt.get("seconds"), bool) or not isinstance(ckpt.get("seconds"), (int, float)):
            missing.append("its time so far")
        if not isinstance(ckpt.get("model_spec"), dict):  # (eval and load_model refuse it too)
            missing.append("the description of its network, which an older dalib did not write")
        if missing:
            raise CheckpointError(f"the checkpoint in {out} lacks what a resume needs ({', '.join(dict.fromkeys(missing))}): "
                                  "delete it and run again without --resume")
        check_same_settings(ckpt.get("config"), config, f"the checkpoint in {out}", "deep", arch)
        world = _dist_info()[1]
        trained_on = ckpt.get("world_size", world)  # (older checkpoints: unknown)
        if trained_on != world:  # each process's share of a step's batch, and its BatchNorm statistics, differ
            raise CheckpointError(f"the run in {out} trained on {trained_on} process(es), this one has {world}: "
                                  f"resume it with as many (torchrun --nproc_per_node {trained_on}, or one process "
                                  "without torchrun), or choose another --out")
        if is_main:
            return ckpt, _trim_metrics(out / METRICS, int(ckpt["step"]))
        return ckpt, []
    if is_main:
        check_fresh_out_dir(out)
    else:  # the other ranks refuse too, rather than train while rank 0 stops
        _refuse_a_kept_run(out)
    return None, []


def _trim_metrics(path: Path, step: int) -> list[dict[str, Any]]:
    """Drop metric lines written after the checkpoint: the resumed run writes them again.
    Returns the lines kept, the history of the run so far."""
    if not _regular_or_absent(path):
        return []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror}") from None
    kept, lines = [], []
    for raw in text.splitlines():
        try:
            line = json.loads(raw)
        except json.JSONDecodeError:
            continue  # a line cut short by the kill
        # (a line without its step is none of a run's, which all have one)
        if isinstance(line, dict) and type(line.get("step")) is int and line["step"] <= step:
            kept.append(raw)
            lines.append(line)
    atomic_write_text(path, "".join(k + "\n" for k in kept))
    return lines


def _with_saved_classes(ckpt: dict[str, Any], src: Any, *others: Any) -> tuple[Any, ...]:
    """The domains numbered as the checkpoint's classes when those hold the data's, by name:
    an image folder's class list has lost a name since the run began (a class folder whose
    images were removed, or one without images in a domain the run does not read, which
    counted as a class for runs begun with an earlier dalib), and the trained head keeps
    its outputs."""
    saved = list((ckpt.get("model_spec") or {}).get("classes") or [])
    if not saved or list(src.classes) == saved or not set(src.classes) <= set(saved):
        return src, *others  # the same classes, or others: _check_same_data tells
    return tuple(d if d is None else d.with_classes(saved) for d in (src, *others))


def _check_same_data(ckpt: dict[str, Any], spec: dict[str, Any], out: Path, steps: int) -> None:
    """A resume reads data with the checkpoint's classes and input shape: the data folder may
    have moved (``data`` is not compared), but a folder of other classes would relabel the
    trained head, and another number of samples (before the last step) draw other batches."""
    saved = ckpt.get("model_spec") or {}
    if saved.get("holdout") != spec.get("holdout"):  # (a different fraction or seed is refused before)
        raise CheckpointError(
            f"the source has changed since the checkpoint in {out} was written (samples added or removed): the run "
            "would hold out other samples than it did, and train on some it held out; resume with the source as it "
            "was, or run again into another --out")
    then, now = saved.get("samples"), spec["samples"]  # (a checkpoint from before they were kept: none)
    # images added to or removed from a folder; once every step has run, a resume only scores
    # (an unreadable image removed since, say) and draws no batch
    if isinstance(then, dict) and then != now and int(ckpt["step"]) < steps:
        changed = "; ".join(f"the {role} had {then.get(role)}, has {now[role]}" for role in now if then.get(role) != now[role])
        raise CheckpointError(
            f"the data has changed since the checkpoint in {out} was written ({changed} samples): the run would draw "
            "other batches than the one it continues; resume with the data as it was, or run again into another --out")
    for key, what in (("classes", "classes"), ("input_shape", "input shape")):
        if key in saved and list(saved[key]) != list(spec[key]):
            shown = [", ".join(map(str, v[:4])) + (" ..." if len(v) > 4 else "") for v in (saved[key], spec[key])]
            raise CheckpointError(
                f"the checkpoint in {out} was trained on data of other {what} ({shown[0]}; this run's source has "
                f"{shown[1]}): resume with the run's own data ({saved.get('data') or saved.get('dataset')}), "
                "or run again into another --out")


def model_spec(config: RunConfig, dataset: str, src: Any, tgt_name: str) -> dict[str, Any]:
    """What rebuilds a run's network without its data (:func:`load_model`): the backbone, the
    input shape, the classes, and where its inputs come from (the dataset, the image size, the
    data folders as absolute paths when the run named them, and the data root it read)."""
    from dalib.data.registry import data_root_read
    from dalib.models import default_arch

    shape = tuple(src.input_shape)
    return {"arch": config.arch or default_arch(shape), "input_shape": list(shape),
            "bottleneck_dim": config.bottleneck_dim, "classes": list(src.classes), "dataset": dataset,
            "image_size": config.image_size, "src": src.name, "tgt": tgt_name,
            "data": _absolute(config.data), "data_root": _absolute(config.data_root),
            "data_root_read": data_root_read(dataset, config.data_root)}


def _absolute(path: str | os.PathLike[str] | None) -> str | None:
    """A data folder as the loaders read it (``~`` expanded), absolute: what ``dalib eval``
    finds again from another working directory."""
    from dalib.data.registry import absolute_as_read

    return absolute_as_read(path) if path else None


def run_checkpoint(path: str | os.PathLike[str]) -> Path:
    """The checkpoint of a run: ``path`` itself, or the one in the run folder ``path``. A
    shallow run's folder (its result, no network) is a :class:`CheckpointError` that says so."""
    p = Path(path).expanduser()
    if p.is_dir():
        if not (p / CHECKPOINT).exists() and (p / RESULT).exists():
            raise CheckpointError(f"{p} holds no network: a shallow run keeps only its result (--mode deep trains one)")
        p = p / CHECKPOINT
    return p


@cpu_by_default
def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> DAModel:
    """The network a deep run trained, from its folder or its ``checkpoint.pt``, in eval mode
    on ``device``: ``model(x)`` gives ``(features, logits)`` for inputs prepared as
    :func:`dalib.data.load_domain` prepares them; ``model.classes`` names the logits' columns.

    Raises :class:`~dalib.errors.CheckpointError` for a folder without a checkpoint (a shallow
    run keeps no network), a corrupt file, or a checkpoint written by an older dalib, which did not describe its network.
    """
    from dalib.models import build_model

    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"no run at {p}: give a run's output folder or its {CHECKPOINT}")
    p = run_checkpoint(p)
    ckpt = load_checkpoint(p)
    spec = ckpt.get("model_spec")
    if not isinstance(spec, dict):
        raise CheckpointError(f"{p} does not describe its network (written by an older dalib): train the run again")
    with _build_lock():  # the random initialisation the weights replace draws nothing of the caller's; float32,
        with caller_random_state(), _default_dtype(torch.float32):  # as the run built it
            model = build_model(spec["arch"], tuple(spec["input_shape"]), len(spec["classes"]),
                                int(spec["bottleneck_dim"]))
    if spec.get("cut"):
        model.cut_stages(int(spec["cut"]))
    load_weights(model, ckpt, p)
    model.classes = list(spec["classes"])
    model.spec = dict(spec)
    model.step = int(ckpt["step"])
    return model.to(resolve_device(device)).eval()


def _save_checkpoint(
    out: Path, config: RunConfig, spec: dict[str, Any], model: nn.Module, method: Method,
    optimizer: torch.optim.Optimizer, step: int, device: torch.device, seconds: float, ran_on: _RanOn,
    world: int, last_line: dict[str, Any] | None = None, ranks_rng: list[Tensor] | None = None,
) -> None:
    """``last_line``: the last step's metrics line, held back for the run's accuracies (the
    final checkpoint comes before the scoring): a resume after a failed scoring writes it.
    ``ranks_rng``: under torchrun, every rank's generator states (:func:`_ranks_rng_states`)."""
    state = {
        "world_size": world,
        "step": step,
        "config": comparable_config(config),
        "model_spec": spec,
        "model": model.state_dict(),
        "method": method.state_dict(),
        "optimizer": optimizer.state_dict(),
        "source_weights": None if method.source_weights is None else method.source_weights.detach().cpu(),
        "diagnostics": _diagnostics(method, config.method),
        "rng": {
            **_host_rng_states(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "ranks": ranks_rng,
        },
        "seconds": seconds,
        **ran_on.saved(),
        "last_line": last_line,
    }
    atomic_write_bytes(out / CHECKPOINT, lambda fh: torch.save(state, fh))
