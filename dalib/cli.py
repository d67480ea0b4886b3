"""The ``dalib`` command: run, list, show.

Bad input (an unknown method, dataset, domain or hyperparameter, a missing file, a corrupt
checkpoint, ...) prints one line on stderr and exits with status 2: never a traceback.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import importlib.util
import io
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import click

from dalib.errors import (ConfigError, DalibError, duration, first_line, progress_line, stopped_by,
                          terminate_as_interrupt)

__all__ = ["cli", "main"]


class _OneLineError(click.ClickException):
    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"dalib: error: {self.format_message()}", err=True)


class _Failed(_OneLineError):
    """Work that failed, not bad input (cells of a bench): one line, exit status 1."""

    exit_code = 1


class _ClosedPipe(Exception):
    """The reader of dalib's output closed its pipe (``dalib list | head -1``)."""


#: the exit status of a closed pipe: 128 + SIGPIPE, the status of a program it ended (as it ends
#: most command-line tools)
_CLOSED_PIPE_STATUS = 141


# what torch's allocators say when memory runs out (a plugin's own RuntimeError that merely
# mentions memory keeps its traceback)
_OOM_TEXT = re.compile(r"DefaultCPUAllocator: (can't allocate|not enough) memory|"
                       r"\b(CUDA|XPU|MPS|HIP)( backend)?( error:)? out of memory")


# what torch says of a size past what it can index (a width of 2**62 and more): no allocation tried
_OVERFLOW_TEXT = re.compile(r"Storage size calculation overflowed|Overflow when unpacking long")


def _out_of_memory(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)) if t is not None)
    return isinstance(exc, (MemoryError, *oom_types)) or bool(_OOM_TEXT.search(str(exc)))


class _Group(click.Group):
    """Turns every error a user can cause into one line and exit status 2."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        try:  # (where --help and --version print, before any command)
            return super().make_context(info_name, args, parent, **extra)
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                raise _ClosedPipe from None
            raise

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DalibError as exc:
            raise _OneLineError(first_line(exc)) from None
        except (MemoryError, RuntimeError, TypeError) as exc:  # torch.OutOfMemoryError is a RuntimeError
            text = str(exc)
            if _OVERFLOW_TEXT.search(text):
                raise _OneLineError("a tensor size overflows: lower the sizes involved (the batch, the images, "
                                    "the network's or the method's widths)") from None
            if not _out_of_memory(exc):
                raise
            asked = re.search(r"tried to allocate ([0-9.]+ ?[A-Za-z]+)", text, re.IGNORECASE)
            raise _OneLineError(f"out of memory{f' (tried to allocate {asked.group(1)})' if asked else ''}: lower "
                                "the sizes involved (the batch, the images, the network's or the method's widths)") from None
        except OSError as exc:  # the file system refused a path: too long a name, no permission, full, read-only
            if exc.errno == errno.EPIPE:
                raise _ClosedPipe from None
            if exc.errno not in _FILE_SYSTEM_ERRORS:
                raise
            where = f": {exc.filename}" if exc.filename else ""
            raise _OneLineError(f"{exc.strerror}{where}") from None
        except KeyboardInterrupt as exc:  # as click.Abort: no blank line before "dalib: interrupted"
            raise click.Abort(getattr(exc, "exit_status", 130), getattr(exc, "saved_step", None)) from None

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        _open_standard_streams()
        _tolerant_stdout()
        if sys.stderr is None:  # started with it closed (2>&-): Python's is None, which the progress bar read
            sys.stderr = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 (the process's, to its end)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:  # `dalib` alone: the help, which is the whole message
            click.echo(exc.format_message(), err=True)
            sys.exit(2)
        except click.ClickException as exc:
            message = exc.format_message().splitlines()[0] if exc.format_message() else type(exc).__name__
            click.echo(f"dalib: error: {message}", err=True)
            sys.exit(2 if isinstance(exc, click.UsageError) else exc.exit_code)
        except _ClosedPipe:
            sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 (what is left unflushed goes nowhere)
            sys.exit(_CLOSED_PIPE_STATUS)
        except OSError as exc:  # --help or --version, printed before any command, on a full disk
            if exc.errno not in _FILE_SYSTEM_ERRORS:
                raise
            click.echo(f"dalib: error: {exc.strerror}", err=True)
            sys.exit(2)
        except click.Abort as exc:  # Ctrl-C 130; SIGTERM, where a command stops cleanly on it, 143 (SIGUSR1 138)
            status = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 130
            saved = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else None
            where = f" (the run is saved at step {saved}: --resume continues it)" if saved is not None else ""
            click.echo(f"dalib: {stopped_by(status)}{where}", err=True)
            sys.exit(status)
        sys.exit(rv if isinstance(rv, int) else 0)


#: what the file system answers about a path the user gave (not a bug of dalib's): one line
_FILE_SYSTEM_ERRORS = frozenset({errno.ENAMETOOLONG, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC,
                                 errno.EDQUOT, errno.ELOOP, errno.ENOTDIR})


def _open_standard_streams() -> None:
    """Put the null device on standard input, output and error where the process started
    with them closed (``>&-``): the next file dalib opened (a run's metrics.jsonl) would
    otherwise take the number, and whatever a library or a compiler it starts writes to
    standard output or error would go into that file."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def _tolerant_stdout() -> None:
    """Standard output in an encoding that cannot write every character (a Latin-1 or cp1252
    console, PYTHONIOENCODING): what dalib prints there (a λ in a method's table, a → in a
    path) is escaped, as Python escapes it on standard error, where it had been a
    UnicodeEncodeError after the command's work was done. (The CSV of ``eval --predictions -``
    is data: it is checked before it is written.)"""
    stream = sys.stdout
    if stream is None or getattr(stream, "errors", None) != "strict" or not hasattr(stream, "reconfigure"):
        return
    if (stream.encoding or "").lower().replace("_", "-") not in ("utf-8", "utf8"):
        with contextlib.suppress(Exception):  # (a stream of another kind, which keeps its own)
            stream.reconfigure(errors="backslashreplace")


def _load_plugins(modules: tuple[str, ...]) -> None:
    from dalib.registry import load_plugin_module

    for module in modules:
        load_plugin_module(module)


def _read_toml(path: str) -> dict[str, Any]:
    from dalib.config import read_toml

    path = os.path.expanduser(path)  # (`--config=~/x.toml`: the shell leaves that ~ alone)
    if not os.path.exists(path):  # (a pipe, /dev/stdin or <(...), is no regular file but reads as one)
        raise ConfigError(f"config file not found: {path}")
    if os.path.isdir(path):
        raise ConfigError(f"config file {path} is a folder: give a TOML file")
    return read_toml(path, "config file")


def _parse_sets(items: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set takes key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _canonical_domains(config: Any) -> tuple[str, str]:
    """The run's source and target under their dataset's own names (``M`` is ``mnist``)."""
    from dalib.data import get_dataset
    from dalib.runner import dataset_of

    info = get_dataset(dataset_of(config))
    return info.resolve(config.src), info.resolve(config.tgt)


def _default_out(method: str, src: str, tgt: str, seed: int, taken: tuple[Path, ...] = ()) -> Path:
    """runs/METHOD-SRC-TGT-seedN, or the first of -2, -3, ... that holds no run; ``taken``: folders
    a run started at the same moment claimed first."""
    from dalib.runner import holds_run

    base = Path("runs") / f"{method}-{src}-{tgt}-seed{seed}".replace("/", "_")
    candidate, n = base, 1
    # what a run that stopped early left is no run
    while candidate in taken or (candidate.exists() and holds_run(candidate)):
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dalib", prog_name="dalib")
def cli() -> None:
    """dalib: domain adaptation for PyTorch.

    Train on a labelled source domain, adapt to an unlabelled target domain:
    `dalib run dann --src mnist --tgt usps`.
    """


@cli.command()
@click.argument("method")
@click.option("--src", help="source domain (labelled), e.g. mnist")
@click.option("--tgt", help="target domain (unlabelled), e.g. usps")
@click.option("--dataset", help="dataset name; inferred from the domains when omitted")
@click.option("--data", "data", help="image folder: one sub-folder per domain, one per class inside (a domain of loose images: unlabelled)")
@click.option("--data-root", help="folder holding the datasets [$DALIB_DATA_ROOT, else ./shared/data or ../shared/data]")
@click.option("--arch", help="backbone: lenet, mlp, identity, resnet18, resnet34, resnet50, or one registered (dalib list) [colour images over 32 px: resnet50; other images: lenet; features: mlp]")
@click.option("--pretrained", help="'imagenet' (torchvision's weights: downloaded once into its cache) or the "
                                    "path of a checkpoint (ResNets); a registered backbone's builder reads it")
@click.option("--bottleneck-dim", type=int, help="width of the bottleneck features the losses align [256]")
@click.option("--image-size", type=int, help="side in pixels the images of an image folder are resized to [224]")
@click.option("--mode", type=click.Choice(["auto", "deep", "shallow"]),
              help="deep training, or the shallow form on feature matrices [auto: shallow on feature datasets]")
@click.option("--classifier", type=click.Choice(["1nn", "linear", "svm"]), help="classifier of the shallow form [1nn]")
@click.option("--steps", type=int, help="optimizer steps [2000]")
@click.option("--batch-size", type=int, help="samples per domain per step, no more than a domain holds; an image folder is also scored in "
                   "batches of this size [64]")
@click.option("--lr", type=float, help="base learning rate [0.01]")
@click.option("--seed", type=int, help="random seed [0]")
@click.option("--device", help="auto, cpu, cuda or cuda:N [auto]")
@click.option("--workers", type=int, help="data-loading processes for image folders [0]")
@click.option("--eval-every", type=int, help="steps between evaluations [0: at the end]")
@click.option("--checkpoint-every", type=int, help="steps between checkpoints [500]")
@click.option("--holdout", type=float, help="fraction of the source, per class, held out of training and scored at "
                                             "the end, for dalib select [0: none]")
@click.option("--out", type=click.Path(file_okay=False), help="output folder [runs/METHOD-SRC-TGT-seedN]")
@click.option("--resume", is_flag=True, help="continue the run in --out from its checkpoint")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="a method hyperparameter (repeatable)")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML file of run options and a [method] table")
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE", help="import a module (or .py file) that registers methods, datasets or backbones")
@click.option("--quiet", is_flag=True, help="no progress bar")
def run(method: str, src: str | None, tgt: str | None, out: str | None, resume: bool, sets: tuple[str, ...],
        config_file: str | None, plugins: tuple[str, ...], quiet: bool, **options: Any) -> None:
    """Train METHOD from --src to --tgt and report source and target accuracy."""
    from dalib.registry import get_method
    from dalib.runner import FolderTaken, RunConfig
    from dalib.runner import run as run_training

    _load_plugins(plugins)
    get_method(method)  # an unknown method fails before any data is read
    values: dict[str, Any] = {}
    method_values: dict[str, Any] = {}
    if config_file:
        table = _read_toml(config_file)
        method_table = table.pop("method", {})
        if not isinstance(method_table, dict):
            raise ConfigError(f"'method' in {config_file} must be a [method] table of hyperparameters "
                              "(the method itself is the command's argument: dalib run METHOD)")
        method_values = dict(method_table)
        known = {f.name for f in dataclasses.fields(RunConfig)} - {"method", "method_config"}
        given: dict[str, str] = {}  # each option as the file spells it
        for spelled, value in table.items():
            key = spelled.replace("-", "_")
            if key not in known:
                raise ConfigError(f"unknown option {key!r} in {config_file}; valid: {', '.join(sorted(known))}")
            if key in given:  # (TOML refuses a key given twice; two spellings of it, the last had won)
                raise ConfigError(f"{config_file} gives {given[key]!r} and {spelled!r}, the same option: keep one")
            given[key], values[key] = spelled, value
    values.update({k: v for k, v in options.items() if v is not None})
    if src is not None:
        values["src"] = src
    if tgt is not None:
        values["tgt"] = tgt
    for role in ("src", "tgt"):
        if not values.get(role):
            raise ConfigError(f"missing --{role}: name the {'source' if role == 'src' else 'target'} domain "
                              f"(--{role}, or {role} = \"...\" in the --config file)")
    method_values.update(_parse_sets(sets))
    try:
        config = RunConfig(method=method, method_config=method_values, **values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid run options: {exc}") from None
    if out is not None and not out.strip():  # an unset variable in --out "$OUT": not the default folder
        raise ConfigError("--out is empty: name the output folder, or leave --out out for runs/METHOD-SRC-TGT-seedN")
    if resume and out is None:
        raise ConfigError("--resume needs --out: the folder of the run to continue")
    names = None if out else (method, *_canonical_domains(config), config.seed)  # the default folder's
    out_dir = Path(out) if names is None else _default_out(*names)
    def announce(info: dict[str, Any]) -> None:
        resumed = f", resuming at step {info['start']}" if info.get("start") else ""
        how = (f"{info['steps']} step{'s' if info['steps'] != 1 else ''} on {info['device']}{resumed}" if info["mode"] == "deep"
               else f"shallow form + {info['classifier']} classifier on {info['device']}")
        progress_line(f"dalib: {method} on {info['dataset']}: {info['src']} ({info['n_src']}"
                      f"{' + ' + str(info['n_held']) + ' held out' if info.get('n_held') else ''}) -> {info['tgt']} "
                      f"({info['n_tgt']}), {how}, output in {out_dir}")
        if lines is not None and info["mode"] == "deep":
            lines.begin(info["start"], info["steps"])

    lines = None if quiet or sys.stderr.isatty() else _ProgressLines()  # a log file: no bar, lines instead
    # SIGTERM (a scheduler's stop) as Ctrl-C: the file being written finished, the folder's claim given up
    taken: tuple[Path, ...] = ()
    while True:
        try:
            with terminate_as_interrupt():
                result = run_training(config, out_dir, resume=resume, progress_bar=False if quiet else None,
                                      on_start=announce, on_step=None if lines is None else lines.step)
            break
        except FolderTaken:
            if names is None:
                raise
            # the default folder, which looked free, claimed first by a run started at the same moment
            # (students in one folder, a shell loop): the next number, as if it had been taken before
            taken += (out_dir,)
            out_dir = _default_out(*names, taken=taken)
    if result.rank != 0:
        return  # under torchrun, rank 0 alone reports, as it alone writes
    click.echo(f"source accuracy: {result.source_accuracy:.2f}%")
    if result.target_accuracy is None:
        click.echo("target accuracy: n/a (the target has no labels)")
    else:
        click.echo(f"target accuracy: {result.target_accuracy:.2f}%")
    if result.selection:
        click.echo(f"held-out source accuracy: {result.selection['holdout_accuracy']:.2f}% "
                   f"({result.selection['n_holdout']} samples; dalib select ranks runs by it and the other scores)")
    click.echo(f"results: {out_dir / 'result.json'}")


@cli.command("eval")
@click.argument("run_dir", metavar="RUN", type=click.Path())
@click.option("--domain", help="domain to score [the run's target]")
@click.option("--dataset", help="dataset of the domain [the run's]; its inputs must have the run's shape")
@click.option("--data", "data", help="image folder of the domains [the run's, for image-folder runs]")
@click.option("--data-root", help="folder holding the datasets [the one the run read, else $DALIB_DATA_ROOT, ./shared/data, ../shared/data]")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N")
@click.option("--batch-size", type=click.IntRange(min=1),
              help="samples per forward pass [512; for an image folder 64, a run's default --batch-size: full-size "
                   "images through a ResNet take GBs at 512]")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="data-loading processes for image folders")
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE",
              help="import a module that registers datasets or methods (as the run did)")
@click.option("--predictions", type=click.Path(dir_okay=False),
              help="write every sample's predicted class to this CSV file, '-' for standard output (index, predicted, "
                   "confidence, label; and file, for an image folder); an unlabelled domain is then predicted, not scored")
def eval_cmd(run_dir: str, domain: str | None, dataset: str | None, data: str | None, data_root: str | None,
             device: str, batch_size: int | None, workers: int, plugins: tuple[str, ...],
             predictions: str | None) -> None:
    """Score the network of a deep run on a domain of its dataset, or write its predictions.

    RUN is the run's folder or its checkpoint.pt; the domain's labels are used only to score
    (a held-out test set, a third domain)."""
    from dalib.data import list_datasets, load_domain
    from dalib.data.domain import matched_by_position
    from dalib.data.image_folder import ImageFolderDataset
    from dalib.errors import DataError, UnknownNameError
    from dalib.plugin import scoring_batch
    from dalib.runner import (
        RunConfig, accuracy_of, atomic_write_text, evaluate, load_model, predict, ready_for_writing, resolve_device,
        tidy_temporaries,
    )

    for option, value in (("--domain", domain), ("--dataset", dataset), ("--data", data), ("--data-root", data_root)):
        if value is not None and not value.strip():  # "" would mean the run's own value
            raise ConfigError(f"{option} is empty: give a value or leave it out")
    to_stdout = predictions == "-"  # the CSV on standard output, and the summary line on stderr
    if predictions is not None and not to_stdout:  # checked before any work: nothing is overwritten, nothing predicted in vain
        predictions = os.path.expanduser(predictions)  # (`--predictions=~/p.csv`: the shell leaves that ~ alone)
        if not predictions.strip():
            raise ConfigError("--predictions needs a file name")
        if os.path.lexists(predictions):  # (a link that leads nowhere too: the file would be written through it)
            raise ConfigError(f"{predictions} already exists: choose another --predictions file (nothing is overwritten)")
        if not Path(predictions).parent.is_dir():
            raise ConfigError(f"no folder {Path(predictions).parent} for --predictions {predictions}")
        # a read-only folder fails now, not after the predictions; and only this file's leftovers go (the
        # folder may be a run's that another machine writes)
        ready_for_writing(Path(predictions).parent)
        tidy_temporaries(Path(predictions).parent, {Path(predictions).name})
    # with the CSV on standard output, what a plugin, a dataset's loader or the network prints goes to stderr
    aside = contextlib.redirect_stdout(sys.stderr) if to_stdout else contextlib.nullcontext()
    with aside:
        _load_plugins(plugins)
    where = resolve_device(device)
    model = load_model(run_dir, device=device)
    spec = model.spec
    name = domain or spec.get("tgt")
    if not name:
        raise DataError("this checkpoint does not name the run's target: name a domain with --domain")
    if dataset is None and data is not None:
        dataset = "image-folder"  # --data names a folder of images, whatever the run trained on
    same = dataset is None or dataset == spec["dataset"]
    dataset = dataset or spec["dataset"]
    data = data or (spec.get("data") if same else None)  # the run's own folders by default
    if data_root is None:  # the run's root: the one it named, else the default it found there (if still there)
        read = spec.get("data_root_read")
        data_root = spec.get("data_root") or (read if read and os.path.isdir(read) else None)
    if same and dataset not in list_datasets():  # a dataset a plugin registered for the run
        raise UnknownNameError(f"unknown dataset {dataset!r} (the run's): pass the --plugin MODULE that registers it, "
                               f"as the run did (known: {', '.join(list_datasets())})")
    with aside:
        target = load_domain(dataset, name, data_root=data_root, data_dir=data, image_size=spec["image_size"])
    n_classes = len(spec["classes"])
    labels = target.known_labels()
    if target.num_classes == 0 and labels is not None and bool((labels < 0).all()):
        # unlabelled images in a folder of their own (no class folders anywhere): the run's classes
        target = dataclasses.replace(target, num_classes=n_classes, classes=list(spec["classes"]))
    if list(target.input_shape) != list(spec["input_shape"]):
        raise DataError(f"domain {target.name} holds {target.num_classes} classes of shape {tuple(target.input_shape)}; "
                        f"the run's network takes {n_classes} classes of shape {tuple(spec['input_shape'])}")
    if matched_by_position(target.classes, spec["classes"]):
        # a domain given no class names (numbered, as from arrays) that no name of the run's matches, or
        # a run's network given none: scored by position, as the run scored its target (where names match,
        # as digits' 0..9 do, by name)
        target = dataclasses.replace(target, classes=list(spec["classes"]))
    elif list(target.classes) != list(spec["classes"]):
        # a held-out folder that files some of the run's classes is scored by their names; a class
        # the network does not know is named
        target = target.with_classes(spec["classes"])
    head = f"{dataset} {target.name} ({len(target)} samples), the network of step {model.step}"
    batch_size = batch_size or scoring_batch(target, RunConfig.batch_size)
    if predictions is None:
        accuracy = evaluate(model, target, where, batch_size, workers)
        if accuracy is None:
            raise DataError(f"domain {target.name} has no labels to score the network with: "
                            "--predictions FILE writes its predictions")
        click.echo(f"{head}: accuracy {accuracy:.2f}%")
        return
    with aside:
        pred, prob, labels = predict(model, target, where, batch_size, workers)
    names = list(spec["classes"])
    rows = [[i, names[p], f"{c:.6f}", names[y] if y >= 0 else ""]  # label: empty for an unlabelled sample
            for i, (p, c, y) in enumerate(zip(pred.tolist(), prob.tolist(), labels.tolist()))]
    header = ["index", "predicted", "confidence", "label"]
    if isinstance(target.dataset, ImageFolderDataset):  # which image each row is, inside the domain folder
        header.append("file")
        for row, (path, _) in zip(rows, target.dataset.samples):
            row.append(Path(path).relative_to(target.origin).as_posix())
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    accuracy = accuracy_of(pred, labels)
    scored = "no labels to score" if accuracy is None else f"accuracy {accuracy:.2f}%"
    if to_stdout:
        # data, in the stream's own encoding: a character it cannot write is neither escaped nor
        # replaced in it (click writes an ASCII stream as UTF-8 with '?'), and a file name read
        # as undecodable bytes (the C locale's surrogateescape) is written back as those bytes
        out = sys.stdout
        encoding = out.encoding or "utf-8"
        try:
            data = text.getvalue().encode(encoding, "surrogateescape" if out.errors == "surrogateescape" else "strict")
        except UnicodeEncodeError as exc:
            raise DataError(f"standard output's encoding ({encoding}) cannot write {exc.object[exc.start:exc.end]!r}, "
                            "which the predictions hold: give --predictions FILE (written in UTF-8), or set "
                            "PYTHONIOENCODING=utf-8") from None
        out.flush()
        out.buffer.write(data)
        out.buffer.flush()
        click.echo(f"{head}: {scored}; predictions of {len(pred)} samples on standard output", err=True)
        return
    atomic_write_text(Path(predictions), text.getvalue(), exclusive=True)  # (another eval may have written it since)
    click.echo(f"{head}: {scored}; predictions of {len(pred)} samples in {predictions}")


def _read_selection(path: str) -> tuple[str, Path, dict[str, Any]]:
    """A finished run's result.json (``path`` is the run's folder or the file), checked to hold
    selection scores: ``(path as given, the file's real path, the result)``."""
    from dalib.errors import DataError

    p = Path(path).expanduser()
    file = p / "result.json" if p.is_dir() else p
    if not file.is_file():
        raise DataError(f"no result.json in {path}: give the folders of finished runs" if p.is_dir() or not p.exists()
                        else f"{path} is not a run's folder or result.json")
    try:
        result = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"cannot read {file}: {first_line(exc)}") from None
    if not isinstance(result, dict) or not isinstance(result.get("run_config"), dict):
        raise DataError(f"{file} is not the result of a dalib run")
    if not isinstance(result.get("selection"), dict):
        why = ("a shallow run" if result.get("mode") == "shallow"
               else "its run held no source samples out: run it with --holdout F, e.g. --holdout 0.1")
        raise DataError(f"{file} has no selection scores ({why})")

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    from dalib.selection import CRITERIA

    sel = result["selection"]
    bad = [k for k in ("holdout", "seed") if not number(result["run_config"].get(k))]
    bad += [k for k in ("dataset", "src", "tgt", "method") if not isinstance(result.get(k), str)]
    bad += [k for k in ("data",) if result.get(k) is not None and not isinstance(result[k], str)]
    bad += [k for k in ("method_config",) if not isinstance(result.get(k), dict)]
    bad += [k for k in ("target_accuracy",) if result.get(k) is not None and not number(result[k])]
    # a score may be missing (snd of a one-sample target), not anything else
    bad += [f"selection.{k}" for k in [c.key for c in CRITERIA.values()] + ["weights_mean"]
            if sel.get(k) is not None and not number(sel[k])]
    if bad:
        raise DataError(f"{file} is damaged: {', '.join(bad)} {'is' if len(bad) == 1 else 'are'} not what a run "
                        "writes; run it again")
    return path.rstrip("/") or path, file.resolve(), result


def _settings(result: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """What a run chose: the run options that change its numbers, and its method's
    hyperparameters as resolved; each as ``{name: value as text}``."""
    from dalib.runner import comparable_settings

    def text(v: Any) -> str:
        return v if isinstance(v, str) else json.dumps(v)

    options = {k: text(v) for k, v in sorted(comparable_settings(result["run_config"]).items())
               if k not in ("method", "method_config", "src", "tgt", "dataset")}
    # where it ran, which the numbers depend on too: torchrun's processes, the device, the CPU threads
    options |= {k: text(result[k]) for k in ("world_size", "device", "threads") if result.get(k) is not None}
    return options, {k: text(v) for k, v in sorted((result.get("method_config") or {}).items())}


def _differing(tables: list[dict[str, str]]) -> list[str]:
    """The names whose values are not the same in all ``tables`` (missing counts as a value)."""
    names = sorted({k for t in tables for k in t})
    return [k for k in names if len({t.get(k) for t in tables}) > 1]


@cli.command("select")
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option("--by", type=click.Choice(["dev", "iwv", "holdout", "entropy", "snd"]), default="holdout",
              show_default=True, help="the criterion: holdout (the held-out source error), dev (Deep Embedded "
                                      "Validation), iwv (importance-weighted validation), entropy or snd (of the "
                                      "target predictions)")
@click.option("--show-target", is_flag=True, help="also show each run's target accuracy, for a study on a target "
                                                  "with labels; it plays no part in the choice")
def select_cmd(runs: tuple[str, ...], by: str, show_target: bool) -> None:
    """Choose among deep runs of one task (a method, a hyperparameter, a step count) without
    target labels.

    Each RUN is the folder of a finished run trained with --holdout (its result.json holds
    the scores). The runs are listed best first by the criterion --by, with the settings they
    differ in, and the first is named (none, where the best tie)."""
    from dalib.errors import DataError
    from dalib.selection import CRITERIA

    crit = CRITERIA[by]
    found, where = [], {}
    for name, file, result in map(_read_selection, runs):
        if file in where:  # the same run twice would be counted twice
            raise ConfigError(f"{name} and {where[file]} are the same run: give each run once")
        where[file] = name
        found.append((name, result))
    tasks = {(r["dataset"], r["src"], r["tgt"], r.get("data")) for _, r in found}  # (data: an image folder's path)
    if len(tasks) > 1:
        shown = "; ".join(f"{d} {s} -> {t}{f' in {f}' if f else ''}" for d, s, t, f in sorted(tasks, key=str)[:3])
        raise DataError(f"the runs are on {len(tasks)} tasks ({shown}): choose among runs of one task")
    for name, r in found:
        if r["selection"].get(crit.key) is None:
            # a run leaves out only the snd of a target of one sample (no neighbours); other gaps are
            # an older dalib's result.json (before the criterion) or a damaged one
            why = ("a result.json of an older dalib, or a damaged one" if crit.key not in r["selection"]
                   else "its target is one sample, which has no neighbours" if crit.key == "snd"
                   else "the result.json is damaged")
            raise DataError(f"run {name} has no {crit.key} score ({why}): choose by another criterion, "
                            "or run it again")
    settings = [_settings(r) for _, r in found]
    shown_options = _differing([o for o, _ in settings])
    methods = [str(r.get("method")) for _, r in found]
    # a method's hyperparameters where its runs differ in them (another method's mean nothing to it)
    shown_hyper = {m: _differing([h for (_, h), n in zip(settings, methods) if n == m]) for m in set(methods)}
    score = lambda i: found[i][1]["selection"][crit.key]  # noqa: E731
    order = sorted(range(len(found)), key=lambda i: (1 if crit.lower_is_better else -1) * score(i))
    best = [i for i in order if score(i) == score(order[0])]  # a tie (few held-out samples: errors of k/n) chooses none
    columns = list(CRITERIA)
    header = ["", "run", "method", "setting", *columns, "w mean"] + (["target acc"] if show_target else [])
    rows = []
    for rank, i in enumerate(order):
        name, r = found[i]
        sel = r["selection"]
        options, hyper = settings[i]
        setting = " ".join([*(f"{k}={hyper.get(k, '-')}" for k in shown_hyper[methods[i]]),
                            *(f"{k}={options.get(k, '-')}" for k in shown_options)]) or "-"
        cells = ["-" if sel.get(key) is None else f"{sel[key]:.{3 if key == 'weights_mean' else 4}f}"
                 for key in [CRITERIA[c].key for c in columns] + ["weights_mean"]]
        row = ["*" if i in best else "", name, methods[i], setting, *cells]
        if show_target:
            acc = r.get("target_accuracy")
            row.append("n/a" if acc is None else f"{acc:.2f}")
        rows.append([_printable(str(x)) for x in row])  # (settings read from files others may have written)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for row in [header, *rows]:
        click.echo("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())
    held_out = {(r["run_config"]["seed"], r["run_config"]["holdout"]) for _, r in found}
    if len(held_out) > 1 and crit.needs_holdout:
        click.echo(f"note: the runs hold out different source samples (seed and fraction: "
                   f"{', '.join(f'{s}/{h:g}' for s, h in sorted(held_out))}), so their {by} scores rest on different "
                   "samples: give runs the same --seed and --holdout to compare them on the same ones", err=True)
    apart = [name for name, r in found if r["selection"].get("weights_mean") is not None
             and r["selection"]["weights_mean"] < 0.5]
    if apart and by in ("dev", "iwv"):
        click.echo(f"note: the importance weights of {len(apart)} of the {len(found)} runs average below 0.5 (w mean): "
                   f"their features tell the domains apart, and {by} says little about them (the Selection page of "
                   "the docs)", err=True)
    better = f"{'lower' if crit.lower_is_better else 'higher'} is better"
    if len(best) > 1:  # the order given on the command line would have decided
        click.echo(f"tie by {by} ({better}): {len(best)} runs score {score(order[0]):.4f} ({', '.join(found[i][0] for i in best)}), "
                   f"and {by} chooses none of them: compare them by another criterion (--by){', or hold out more samples (--holdout)' if crit.needs_holdout else ''}")
        return
    click.echo(f"chosen by {by} ({better}): {found[order[0]][0]}")


def _split_list(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


@cli.command()
@click.argument("suite")
@click.option("--methods", help="comma-separated methods to run [every registered method the suite applies to]")
@click.option("--tasks", help="comma-separated tasks SRC->TGT, e.g. 'A->W,W->A' [all the suite's]")
@click.option("--seeds", help="comma-separated seeds [the suite's: 0,1,2]; others than the suite's join its table")
@click.option("--steps", type=int, help="optimizer steps of the deep runs [the suite's]; kept in a file of its own")
@click.option("--jobs", type=int, default=1, show_default=True, help="cells run in parallel worker processes")
@click.option("--out", type=click.Path(file_okay=False), default="benchmarks/results", show_default=True,
              help="folder of bench-SUITE.json/.md/.png")
@click.option("--data-root", help="folder holding the datasets [$DALIB_DATA_ROOT, else ./shared/data or ../shared/data]")
@click.option("--device", help="auto, cpu, cuda or cuda:N [auto]")
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE", help="import a module that registers methods, datasets or backbones")
@click.option("--rerun", is_flag=True, help="run the chosen cells again even if finished (after changing a method's code or "
              "dalib's); a killed re-run resumes: the cells it finished are kept")
@click.option("--quiet", is_flag=True, help="no progress bar")
def bench(suite: str, methods: str | None, tasks: str | None, seeds: str | None, steps: int | None, jobs: int,
          out: str, data_root: str | None, device: str | None, plugins: tuple[str, ...], rerun: bool,
          quiet: bool) -> None:
    """Run the accuracy SUITE (digits, office-caltech-surf, amazon-reviews, or a .toml file).

    Every registered method the suite applies to, on every task, over the suite's seeds (3
    for the built-in ones); writes bench-SUITE.json (every run), bench-SUITE.md (the table) and
    bench-SUITE.png into --out (bench-SUITE-stepsN.* with --steps). A killed suite resumes where
    it stopped, and its table shows the cells finished so far. A suite of your own is a .toml
    file: start from a copy of a built-in one (benchmarks/suites/ in the repository,
    dalib_benchmarks/suites/ where dalib is installed) and see the Benchmarks page of the docs.
    """
    from dalib_benchmarks.suite import load_suite, run_suite

    _load_plugins(plugins)
    chosen = load_suite(suite)
    seed_list = None
    if seeds is not None:
        try:
            seed_list = [int(s) for s in _split_list(seeds) or []]
        except ValueError:
            raise ConfigError(f"--seeds takes integers separated by commas, got {seeds!r}") from None
        if not seed_list:
            raise ConfigError("--seeds is empty")
    failed: dict[str, dict[str, Any]] = {}  # of the cells run now (a chosen cell that failed before runs again)

    def note(cell: Any, outcome: dict[str, Any]) -> None:
        if outcome.get("status") == "failed":
            failed[cell.key] = outcome

    path = run_suite(chosen, out, methods=_split_list(methods), tasks=_split_list(tasks), seeds=seed_list,
                     steps=steps, data_root=data_root, device=device, jobs=jobs, plugins=plugins,
                     progress=False if quiet else None, rerun=rerun, on_cell=note)
    click.echo(f"results: {path}")
    click.echo(f"table: {path.with_suffix('.md')}")
    if importlib.util.find_spec("matplotlib") is None:
        click.echo("chart: not drawn, matplotlib is not installed (pip install matplotlib, or dalib's bench extra)",
                   err=True)
    elif path.with_suffix(".png").is_file():
        click.echo(f"chart: {path.with_suffix('.png')}")
    if failed:  # (status 1: the work failed, where 2 is bad input)
        key, cell = next(iter(sorted(failed.items())))
        raise _Failed(f"{len(failed)} cell(s) failed, listed in the table; the first, {key}: {cell.get('error')}")


def _first_line(cls: Any) -> str:
    doc = cls.description()
    return doc.splitlines()[0] if doc else ""


class _ProgressLines:
    """Progress as plain lines on stderr at every tenth of the steps, for a log file (a batch
    job's), where the bar is off: a whole run had logged its first line alone. Only on the
    process that reports (rank 0 under torchrun), where :meth:`begin` is called."""

    def __init__(self) -> None:
        self._marks: set[int] = set()

    def begin(self, start: int, steps: int) -> None:
        self._start, self._steps, self._t0 = start, steps, time.monotonic()
        self._marks = {math.ceil(steps * k / 10) for k in range(1, 11)} - set(range(start + 1))

    def step(self, done: int, logs: dict[str, float]) -> None:
        if done not in self._marks:
            return
        spent = time.monotonic() - self._t0
        left = spent / (done - self._start) * (self._steps - done)
        progress_line(f"dalib: step {done}/{self._steps} ({100 * done // self._steps}%), loss "
                      f"{logs.get('total', math.nan):.4g}, {duration(spent)} so far"
                      f"{f', about {duration(left)} left' if done < self._steps else ''}")


def _printable(text: str) -> str:
    """``text`` with its control characters escaped (a newline as \\n, ESC as \\x1b): a name
    from an installed package's metadata neither breaks a listing's lines nor reaches the
    terminal as a command."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


@cli.command("list")
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE", help="import a module that registers methods, datasets or backbones")
def list_cmd(plugins: tuple[str, ...]) -> None:
    """List the registered methods, datasets and backbones."""
    from dalib.data import get_dataset, list_datasets
    from dalib.models.backbones import describe_backbone, list_backbones
    from dalib.registry import get_method, list_methods, plugin_errors

    _load_plugins(plugins)
    click.echo("methods:")
    for name in list_methods():
        cls = get_method(name)
        click.echo(f"  {name:<14} {'+'.join(cls.forms()):<13} {_first_line(cls)}")
    broken = plugin_errors()
    if broken:
        click.echo("plugins that failed to load:")
        for name, why in sorted(broken.items()):  # an installed package's names and values, as they come
            click.echo(f"  {_printable(name):<14} {_printable(why)}")
    click.echo("datasets:")
    for name in list_datasets():
        info = get_dataset(name)
        domains = ", ".join(info.domains) if info.domains else "(the sub-folders of --data)"
        click.echo(f"  {name:<20} {domains}")
    click.echo("backbones (--arch):")
    for name in list_backbones():
        click.echo(f"  {name:<20} {describe_backbone(name)}".rstrip())


@cli.command()
@click.argument("method")
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE", help="import a module that registers methods")
def show(method: str, plugins: tuple[str, ...]) -> None:
    """Show METHOD's description and hyperparameters (name, type, default, help)."""
    from dalib._rst import rst_to_text
    from dalib.config import describe_config
    from dalib.registry import defined_at, get_method

    _load_plugins(plugins)
    cls = get_method(method)
    click.echo(f"{method} ({' + '.join(cls.forms())}): {defined_at(cls)}")
    doc = cls.description()
    if doc:
        click.echo("")
        click.echo(rst_to_text(doc).rstrip())
    tables = [("hyperparameters", "", cls.Config)]
    if cls.ShallowConfig is not None:
        tables.append(("shallow-form hyperparameters", "--mode shallow; ", cls.ShallowConfig))
    for title, mode, config_cls in tables:
        rows = describe_config(config_cls)
        click.echo("")
        if not rows:
            click.echo(f"{title}: none")
            continue
        click.echo(f"{title} ({mode}set with --set KEY=VALUE):")
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        for name, typ, default, help_text in rows:
            click.echo(f"  {name:<{widths[0]}}  {typ:<{widths[1]}}  {default:<{widths[2]}}  {help_text}")


def _one_line_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> str:
    return f"dalib: warning: {str(message).splitlines()[0] if str(message) else category.__name__}\n"


def main() -> None:
    import warnings

    warnings.formatwarning = _one_line_warning  # the console script: one line per warning, no source echo
    cli(prog_name="dalib")


if __name__ == "__main__":
    main()
