"""Errors dalib raises for bad input.

Every error a user can cause by what they type or the files they point to is a
:class:`DalibError`. The CLI turns one into a single line on stderr and exit status 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import warnings
from collections.abc import Iterator
from typing import Any

__all__ = [
    "BackendError",
    "CheckpointError",
    "ConfigError",
    "DalibError",
    "DataError",
    "InputError",
    "OutOfRangeError",
    "PluginError",
    "RegistryError",
    "UnknownNameError",
]


class DalibError(Exception):
    """Base class of every error caused by bad input; its message is one line."""


class UnknownNameError(DalibError, KeyError):
    """An unknown method, dataset, domain, backend or architecture name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class RegistryError(DalibError):
    """A duplicate registration or a plugin that cannot be loaded."""


class ConfigError(DalibError, ValueError):
    """An unknown hyperparameter, a value of the wrong type or out of range."""


class DataError(DalibError, ValueError):
    """A missing or corrupt data file, NaN/infinite features, an empty domain,
    or domains whose feature sizes differ."""


class InputError(DalibError, ValueError):
    """Tensors given to a loss or kernel that it cannot use: different feature
    sizes, empty input, NaN, wrong shapes."""


class OutOfRangeError(InputError):
    """Values a loss or kernel cannot compute in their dtype: so large that their squared
    distances, costs or loss overflow it (``ot_plan``'s given cost holding NaN or infinite values
    included: what overflow leaves), or a bandwidth or ε so small that its inverse does.
    In a training run, features that grew there mean the training diverged."""


class PluginError(DalibError):
    """A method plugin that breaks the method contract: ``loss()`` returning something other
    than a dict of scalar tensors with ``"total"``, diagnostics that are not numbers or
    strings, or state that does not fit the run's checkpoint."""


class CheckpointError(DalibError):
    """A checkpoint that is missing, corrupt or from another run configuration."""


class BackendError(DalibError, RuntimeError):
    """A kernel backend that was asked for explicitly but cannot run here
    (for instance ``keops`` without a working pykeops)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a job scheduler's stop), or SIGUSR1/SIGUSR2 (SLURM's ``--signal``
    warning before a time limit), taken Ctrl-C's way where a program stops cleanly on it; the
    command line exits with 128 + the signal's number, the status of a process it ended
    (143 for SIGTERM)."""

    def __init__(self, signum: int = 15) -> None:
        super().__init__(signum)
        self.signum = signum
        self.exit_status = 128 + signum


def stop_signals() -> tuple[int, ...]:
    """The signals that stop a run cleanly besides Ctrl-C: SIGTERM, and SIGUSR1 and SIGUSR2
    where the platform has them (a scheduler's warning, SLURM's ``--signal=USR1@60``: each
    ends a process by default, so taking it as a stop only adds the save)."""
    import signal

    return tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1", "SIGUSR2") if hasattr(signal, name))


def stopped_by(status: int) -> str:
    """How the command line words a stop with exit ``status``: ``interrupted`` (Ctrl-C, 130),
    ``terminated`` (SIGTERM, 143), ``terminated by SIGUSR1``."""
    import signal

    if status == 130:
        return "interrupted"
    if status == 128 + signal.SIGTERM:
        return "terminated"
    try:
        return f"terminated by {signal.Signals(status - 128).name}"
    except ValueError:
        return "terminated"


@contextlib.contextmanager
def terminate_as_interrupt(*, then_end: bool = False) -> Iterator[None]:
    """SIGTERM (``kill``, a job scheduler's stop: SLURM's, before its SIGKILL), SIGUSR1 and
    SIGUSR2 (a scheduler's warning) take Ctrl-C's way in the block: :class:`Terminated` is
    raised, so that a file being written is finished, a training step ends and is saved, the
    folder's claim released and the command line says "dalib: terminated" (status 128 + the
    signal's number: 143 for SIGTERM). With ``then_end`` (:func:`dalib.run`), the signal then
    does what its default does, once that is done: the process ends, killed by it.
    Only the signals the process leaves to their default (a program that handles one keeps
    its handler), and from the main thread, the one that can set handlers."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise Terminated(signum)

    previous = {sig: signal.getsignal(sig) for sig in stop_signals()}
    previous = {sig: handler for sig, handler in previous.items() if handler == signal.SIG_DFL}
    for sig in previous:
        signal.signal(sig, interrupt)
    try:
        yield
    except Terminated as exc:
        if not then_end or exc.signum not in previous:
            raise
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        saved = getattr(exc, "saved_step", None)
        if saved is not None and sys.stderr is not None:
            print(f"dalib: {stopped_by(exc.exit_status)} (the run is saved at step {saved}: resume=True continues it)",
                  file=sys.stderr, flush=True)
        signal.raise_signal(exc.signum)  # the default's end: the process is gone
        raise  # (the signal blocked by the caller: it arrives when unblocked)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def first_line(exc: BaseException) -> str:
    """What went wrong in one line: the first non-blank line of ``exc``'s message, else the
    name of its type (``EOFError`` from an empty file has no message)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def import_failure(exc: BaseException) -> str:
    """Why a plugin's import failed, in one line: the error's type and first line; a module
    that exits as it is imported (a script's argument parsing at module level) says so."""
    if isinstance(exc, SystemExit):  # sys.exit(), sys.exit(2) or sys.exit("usage: ...\n...: error: ...")
        code = exc.code
        said = f"status {0 if code is None else code}" if code is None or isinstance(code, int) else first_line(exc)
        return f"SystemExit: the module exited as it was imported ({said})"
    return f"{type(exc).__name__}: {first_line(exc)}"


def load_tensors(path: Any) -> Any:
    """``torch.load(path)`` of tensors only (``weights_only``), onto the CPU, without torch's
    warning about a pickle protocol other than its own (a file that ``pickle.dump`` wrote):
    that warning asked the user to file an issue with torch, above dalib's one line on why the
    file cannot be read (:func:`load_failure`)."""
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        return torch.load(path, map_location="cpu", weights_only=True)


def load_failure(exc: BaseException) -> str:
    """Why ``torch.load`` failed, in one short line: the error's type and first line, without
    torch's advice to load unsafely and with its long story of a file that is not a
    weights-only pickle shortened."""
    why = first_line(exc).split(" Re-running")[0]
    enforced = re.fullmatch(r"\[enforce fail at [^\]]*\][ .]*(.*)", why)  # the zip reader's C++ check
    if isinstance(exc, EOFError):  # (no message of its own)
        why = "the file is empty or cut short"
    elif isinstance(exc, KeyError):  # the unpickler's, on a byte that is no pickle opcode: "KeyError: 101" alone
        why = "not a file that torch.save wrote (its first bytes are no pickle)"
    elif enforced:
        why = f"a zip archive that torch.save did not write, or one cut short ({enforced.group(1)})"
    if "Weights only load failed" in why:
        needs = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        why = ("not a file of tensors that torch.save wrote and torch loads safely"
               + (f" (it needs {needs.group(1)})" if needs else ""))
    if len(why) > 200:  # torch's long advice: its first sentence, or a cut at a word
        first = why.split(". ")[0]
        why = first if len(first) <= 200 else why[:200].rsplit(" ", 1)[0] + " ..."
    name = type(exc).__name__
    return name if why == name else f"{name}: {why}"


def duration(seconds: float) -> str:
    """A time for a progress line: ``41 s``, ``12.5 min``, ``2.1 h``."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def progress_line(text: str) -> None:
    """A line of progress on stderr. Where stderr is gone (a log reader that closed its pipe,
    a full disk), the line is dropped and stderr with it, and the work goes on: progress is
    no reason to stop a run."""
    if sys.stderr is None:
        return
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # (ValueError: a stream closed)
        sys.stderr = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 (the process's, to its end)


#: modules whose frames a warning skips: dalib's, its bundled methods', torch's (which calls a
#: method's forward, or a loss's backward, from the user's line) and click's (which calls dalib's
#: commands from the line that invokes the CLI)
_OWN = re.compile(r"(dalib|dalib_plugins|torch|click)(\.|$)")


def warn_outside_dalib(message: str, category: type[Warning]) -> None:
    """``warnings.warn`` attributed to the first caller outside dalib's own package, its bundled
    methods (``dalib_plugins``), click and torch (the user's line, whatever the depth of the calls and
    decorators in between: a warning from a method's ``adapt``, called by the runner, names the
    user's ``dalib.run``)."""
    frame, level = sys._getframe(1), 2  # level 2: the caller of this function
    while frame is not None and _OWN.match(frame.f_globals.get("__name__") or ""):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
