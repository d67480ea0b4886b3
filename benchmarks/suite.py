"""Accuracy suites: every applicable registered method on every task of a suite, over seeds.

A suite is a TOML file (the built-in ones are in ``benchmarks/suites/``)::

    title = "Digits: MNIST <-> USPS"
    dataset = "digits-full"
    tasks = ["M->U", "U->M"]
    seeds = [0, 1, 2]
    protocol = "..."                 # what is trained on what, and what is reported
    [deep]                           # run options of every deep cell (dalib.RunConfig fields;
    steps = 2000                     # the data root is --data-root's; an image folder:
                                     # dataset = "image-folder" and data = "PATH", a relative
                                     # PATH from the working directory, as a run takes it:
                                     # the results name the folder it was, and another is
                                     # other data)
    [shallow]                        # present: methods with a shallow form run it too
    classifiers = ["1nn", "linear"]  # once per classifier
    [methods.dann]                   # one hyperparameter setting per method, for all tasks:
    trade_off = 1.0                  # flat keys (or [methods.NAME.deep]) set the deep form,
    [methods.ot.shallow]             # [methods.NAME.shallow] the shallow one
    reg = 1.0
    [skip]                           # methods that do not apply, and why
    finetune = "needs a pre-trained model"
    [published.source_only]          # published figures, shown beside the variant's row
    source = "JDA paper, Table 2 (1-NN)"
    variant = "source_only (shallow, 1nn)"
    "C->A" = 23.70

The methods are never listed in the suite: every name of :func:`dalib.list_methods` that is
not skipped runs, so a newly registered plugin joins the suite by itself (with its
defaults unless the suite gives it a ``[methods.NAME]`` table). Each (variant, task, seed)
is a *cell*; finished cells are written to the suite's JSON as soon as they finish, so a
killed suite resumes where it stopped. A finished cell is run again only when its settings
change (the suite's or the method's defaults); ``--rerun`` runs the chosen cells again, and a
killed re-run resumes as well. A setting for a form the suite does not run (a deep setting
without ``[deep]``, a shallow one without ``[shallow]``) or that the form does not have is
refused when the suite loads, rather than ignored. Cells of tasks, methods or seeds the
suite no longer lists stay in the JSON and leave the table; ``--seeds`` may run seeds beside
the suite's (``--seeds 3,4`` adds two), whose cells count in the table.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dalib.config import read_toml
from dalib.errors import (ConfigError, DalibError, UnknownNameError, duration, first_line, progress_line,
                          terminate_as_interrupt)
from dalib.registry import dalib_code_hash, get_method, list_methods, method_code_hash
from dalib.runner import (atomic_write_text, claim_file, make_folder, ready_for_writing, release_file,
                          tidy_temporaries)

from ._machine import machine_info
from .report import legacy_run_options, suite_cells, write_report

__all__ = [
    "Cell",
    "Suite",
    "Variant",
    "builtin_suites",
    "load_suite",
    "parse_task",
    "results_path",
    "run_suite",
]

SUITES_DIR = Path(__file__).resolve().parent / "suites"
FORMAT = 1


def builtin_suites() -> list[str]:
    """Names of the suites shipped in ``benchmarks/suites/``."""
    return sorted(p.stem for p in SUITES_DIR.glob("*.toml"))


@dataclass(frozen=True)
class Variant:
    """One column of the tables: a method in one form (and, shallow, with one classifier)."""

    method: str
    mode: str  # "deep" or "shallow"
    classifier: str | None = None
    method_config: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.method if self.mode == "deep" else f"{self.method} (shallow, {self.classifier})"


@dataclass(frozen=True)
class Cell:
    variant: Variant
    task: tuple[str, str]
    seed: int

    @property
    def key(self) -> str:
        return f"{self.variant.name} | {self.task[0]}->{self.task[1]} | seed {self.seed}"


@dataclass
class Suite:
    name: str
    path: Path
    title: str
    dataset: str
    tasks: list[tuple[str, str]]
    seeds: list[int]
    protocol: str
    deep: dict[str, Any] | None
    shallow_classifiers: list[str]
    methods: dict[str, dict[str, Any]]
    skip: dict[str, str]
    published: dict[str, dict[str, Any]]
    timing: str = ""
    #: ``[deep] data`` as the file writes it, where that is not the folder's own path (``deep`` holds that)
    data_as_written: str | None = None

    @property
    def ref(self) -> str:
        """How ``dalib bench`` names this suite: a built-in's name, else its file's absolute
        path (a command that works from any folder)."""
        return self.name if _is_builtin_file(self.path) else str(self.path.resolve())

    @property
    def file(self) -> str:
        """The suite's file, as a reader finds it (a built-in's inside the repository)."""
        return f"benchmarks/suites/{self.name}.toml" if _is_builtin_file(self.path) else str(self.path)

    def variants(self, only: Iterable[str] | None = None) -> list[Variant]:
        """Every registered, non-skipped method in each form the suite runs.

        ``only`` narrows to the named methods (an unknown name raises, listing the known)."""
        names = list_methods()
        wanted = None
        if only is not None:
            wanted = list(only)
            for name in wanted:
                get_method(name)  # UnknownNameError lists the known methods
                if name in self.skip:
                    raise ConfigError(f"method {name!r} is skipped by suite {self.name}: {self.skip[name]}")
        out = []
        for name in names:
            if name in self.skip or (wanted is not None and name not in wanted):
                continue
            cls = get_method(name)
            deep_cfg, shallow_cfg = method_forms(self.methods.get(name, {}))
            if self.deep is not None:
                out.append(Variant(name, "deep", None, deep_cfg))
            if cls.ShallowConfig is not None:
                for clf in self.shallow_classifiers:
                    out.append(Variant(name, "shallow", clf, dict(shallow_cfg)))
        return out

    def run_config(self, cell: Cell, *, steps: int | None, data_root: str | None, device: str | None) -> Any:
        from dalib.runner import RunConfig

        values: dict[str, Any] = {"dataset": self.dataset, "src": cell.task[0], "tgt": cell.task[1], "seed": cell.seed}
        if cell.variant.mode == "deep":
            values.update(self.deep or {})
            if steps is not None:
                values["steps"] = steps
            if device is not None:
                values["device"] = device
        else:
            values["classifier"] = cell.variant.classifier
        if data_root is not None:
            values["data_root"] = data_root
        try:
            return RunConfig(method=cell.variant.method, mode=cell.variant.mode,
                             method_config=dict(cell.variant.method_config), **values)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"suite {self.name}: invalid run options: {exc}") from None

def parse_task(text: str, dataset: str) -> tuple[str, str]:
    """``"A->W"``, ``"amazon->webcam"`` or ``"A:W"`` to canonical domain names."""
    from dalib.data import get_dataset

    for sep in ("->", "→", ":"):
        if sep in text:
            src, _, tgt = text.partition(sep)
            info = get_dataset(dataset)
            return info.resolve(src.strip()), info.resolve(tgt.strip())
    raise ConfigError(f"a task is SRC->TGT, e.g. A->W; got {text!r}")


def task_names(tasks: Iterable[tuple[str, str]]) -> str:
    """``"amazon->webcam, webcam->amazon"``: tasks as the messages name them."""
    return ", ".join(f"{src}->{tgt}" for src, tgt in tasks)


def _is_builtin_file(path: Path) -> bool:
    """Whether ``path`` is the file of a built-in suite (by any path that leads there)."""
    return path.resolve() == (SUITES_DIR / f"{path.stem}.toml").resolve()


def load_suite(name_or_path: str) -> Suite:
    """A built-in suite by name, or a suite TOML file by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" and not path.is_file():
        raise ConfigError(f"suite file not found: {path}")
    if path.suffix != ".toml":
        if name_or_path not in builtin_suites():
            raise UnknownNameError(f"unknown suite {name_or_path!r}; known: {', '.join(builtin_suites())} "
                                   "(or the path of a suite .toml)")
        path = SUITES_DIR / f"{name_or_path}.toml"
    raw = read_toml(path, "suite")
    known = {"title", "dataset", "tasks", "seeds", "protocol", "timing", "deep", "shallow", "methods", "skip",
             "published"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"suite {path}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    for key in ("dataset", "tasks"):
        if key not in raw:
            raise ConfigError(f"suite {path}: missing {key!r}")
    for key in ("title", "dataset", "protocol", "timing"):
        if key in raw and not isinstance(raw[key], str):
            raise ConfigError(f"suite {path}: {key} must be a string, got {raw[key]!r}")
    for key in ("deep", "shallow", "methods", "skip", "published"):
        if key in raw and not isinstance(raw[key], dict):
            raise ConfigError(f"suite {path}: [{key}] must be a table, got {raw[key]!r}")
    from dalib.data import get_dataset

    with _naming(path, "dataset"):
        get_dataset(raw["dataset"])  # an unknown dataset fails here, listing the known ones
    if not isinstance(raw["tasks"], list) or not raw["tasks"] or not all(isinstance(t, str) for t in raw["tasks"]):
        raise ConfigError(f"suite {path}: tasks must be a non-empty list of \"SRC->TGT\" strings, got {raw['tasks']!r}")
    with _naming(path, "tasks"):
        tasks = [parse_task(t, raw["dataset"]) for t in raw["tasks"]]
    _once(path, "tasks", raw["tasks"], tasks)
    _check_method_tables(path, raw)
    seeds = raw.get("seeds", [0, 1, 2])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"suite {path}: seeds must be a non-empty list of integers")
    _once(path, "seeds", seeds)
    deep, written = raw.get("deep"), None
    if deep is not None:
        from dalib.runner import RunConfig

        if "data_root" in deep:  # every cell reads the data, the shallow ones too, and from this machine's folder
            raise ConfigError(f"suite {path}: [deep] data_root: where the datasets are is not a setting of the suite "
                              "(every cell, shallow or deep, reads them there): give --data-root, or set $DALIB_DATA_ROOT")
        options = {f.name for f in dataclasses.fields(RunConfig)} - {"method", "method_config", "dataset", "src", "tgt",
                                                                     "seed", "mode", "classifier", "data_root"}
        unknown = sorted(set(deep) - options)
        if unknown:
            raise ConfigError(f"suite {path}: unknown [deep] option(s) {', '.join(unknown)}; "
                              f"valid: {', '.join(sorted(options))}")
        if isinstance(deep.get("data"), str) and deep["data"].strip():
            # an image folder, from the working directory as a run takes it, named by where it is: the same
            # words from another directory are other data (the cells kept had joined the new ones' table)
            written, deep = deep["data"], {**deep, "data": os.path.abspath(os.path.expanduser(deep["data"]))}
    shallow = raw.get("shallow")
    unknown = sorted(set(shallow or {}) - {"classifiers"})
    if unknown:  # ("classifier = [...]" had run 1-NN alone without a word)
        raise ConfigError(f"suite {path}: unknown [shallow] option(s) {', '.join(unknown)}; valid: classifiers")
    classifiers = shallow.get("classifiers", ["1nn"]) if shallow is not None else []
    if not isinstance(classifiers, list):
        raise ConfigError(f"suite {path}: [shallow] classifiers must be a list, e.g. [\"1nn\", \"linear\"], "
                          f"got {classifiers!r}")
    from dalib.shallow import CLASSIFIERS

    for clf in classifiers:
        if clf not in CLASSIFIERS:
            raise ConfigError(f"suite {path}: unknown classifier {clf!r}; known: {', '.join(CLASSIFIERS)}")
    _once(path, "[shallow] classifiers", classifiers)
    _check_published(path, raw, classifiers, tasks)
    return Suite(
        name=path.stem, path=path, title=raw.get("title", path.stem), dataset=raw["dataset"], tasks=tasks,
        seeds=list(seeds), protocol=raw.get("protocol", "").strip(), deep=deep,
        shallow_classifiers=classifiers, methods=raw.get("methods", {}), skip=raw.get("skip", {}),
        published=raw.get("published", {}), timing=raw.get("timing", "").strip(),
        data_as_written=written if deep is not None and written != deep.get("data") else None,
    )


@contextlib.contextmanager
def _naming(path: Path, where: str) -> Iterator[None]:
    """An error of the suite file's ``where`` (an unknown dataset, domain or method, a task that
    is no SRC->TGT, a bad hyperparameter) names the file and the place, keeping its kind."""
    try:
        yield
    except DalibError as exc:
        raise type(exc)(f"suite {path}: {where}: {first_line(exc)}") from None


def _check_method_tables(path: Path, raw: dict[str, Any]) -> None:
    """``[methods.NAME]`` and ``[skip]`` name registered methods: a misspelt table would
    otherwise be ignored, and the method run with its defaults."""
    for section in ("methods", "skip"):
        table = raw.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"suite {path}: [{section}] must be a table keyed by method name")
        for name, value in table.items():
            with _naming(path, f"[{section}.{name}]"):
                get_method(name)
            if section == "methods" and not isinstance(value, dict):
                raise ConfigError(f"suite {path}: [methods.{name}] must be a table of hyperparameters, got {value!r}")
            if section == "methods":
                for form in ("deep", "shallow"):
                    if form in value and not isinstance(value[form], dict):
                        raise ConfigError(f"suite {path}: [methods.{name}.{form}] must be a table, got {value[form]!r}")
            if section == "skip" and not isinstance(value, str):
                raise ConfigError(f"suite {path}: [skip] {name} must be the reason, a string, got {value!r}")
            if section == "methods":
                _check_method_settings(path, raw, name, value)


def method_forms(table: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The deep and shallow settings of a ``[methods.NAME]`` table: its flat keys and its
    ``deep`` table for the deep form, its ``shallow`` table for the shallow one."""
    deep = {k: v for k, v in table.items() if k not in ("deep", "shallow")} | table.get("deep", {})
    return deep, dict(table.get("shallow", {}))


def _check_method_settings(path: Path, raw: dict[str, Any], name: str, table: dict[str, Any]) -> None:
    """Each form's settings are the form's hyperparameters, for a form the suite runs: a
    misspelt key, or settings for a form that never runs, would otherwise leave the method on
    its defaults without a word. A key set both flat and in the deep table is refused (the
    deep table's had won without a word)."""
    twice = sorted(set(table) & set(table.get("deep") or {}) - {"deep", "shallow"}) if isinstance(table.get("deep"), dict) else []
    if twice:
        raise ConfigError(f"suite {path}: [methods.{name}] sets {', '.join(twice)} both in the table and in "
                          f"[methods.{name}.deep]: set each once")
    from dalib.config import build_config

    cls = get_method(name)
    deep, shallow = method_forms(table)
    if deep and raw.get("deep") is None:
        hint = f"; the shallow form's settings go in [methods.{name}.shallow]" if cls.ShallowConfig is not None else ""
        raise ConfigError(f"suite {path}: [methods.{name}] sets {', '.join(deep)} for the deep form, but the suite "
                          f"runs no deep cells (no [deep] table){hint}")
    if shallow and cls.ShallowConfig is None:
        raise ConfigError(f"suite {path}: [methods.{name}.shallow]: {name} has no shallow form")
    if shallow and raw.get("shallow") is None:
        raise ConfigError(f"suite {path}: [methods.{name}.shallow] is set, but the suite runs no shallow cells "
                          "(no [shallow] table)")
    for form, settings, config_cls in (("", deep, cls.Config), (".shallow", shallow, cls.ShallowConfig)):
        if settings:
            with _naming(path, f"[methods.{name}{form}]"):
                build_config(config_cls, settings, owner=name + (" (shallow)" if form else ""))


def _once(path: Path, what: str, written: list[Any], meant: list[Any] | None = None) -> None:
    """A list of the suite file names each item once: ``meant[i]`` is what ``written[i]``
    names (a task's two spellings, "D->W" and "dslr->webcam", are one task; by default the
    item itself), and a second mention would be merged with the first without a word."""
    first: dict[Any, Any] = {}
    for word, item in zip(written, written if meant is None else meant):
        if item in first:
            spelt = f" (as {first[item]!r} and as {word!r})" if first[item] != word else ""
            raise ConfigError(f"suite {path}: {what} lists {word!r} twice{spelt}")
        first[item] = word


def _check_published(path: Path, raw: dict[str, Any], classifiers: list[str], tasks: list[tuple[str, str]]) -> None:
    """Each ``[published.KEY]`` table: ``source``, ``variant`` (a method's name, or a variant
    such as ``"kmm (shallow, linear)"``) and numbers, one per task of the suite (each once) and
    an optional ``mean``."""
    for key, table in raw.get("published", {}).items():
        if not isinstance(table, dict):
            raise ConfigError(f"suite {path}: [published.{key}] must be a table")
        for field in ("variant", "source"):
            if field in table and not isinstance(table[field], str):
                raise ConfigError(f"suite {path}: [published.{key}] {field} must be a string, got {table[field]!r}")
        variant = str(table.get("variant", key))
        method, _, form = variant.partition(" (")
        with _naming(path, f"[published.{key}] variant"):
            cls = get_method(method)
        if method in raw.get("skip", {}):
            raise ConfigError(f"suite {path}: [published.{key}] variant {variant!r} is a method the suite skips "
                              f"([skip] {method}), so its row is never shown")
        # a variant the suite makes, as its table names it; else the published row is never shown
        if form:
            made = [Variant(method, "shallow", c).name for c in classifiers] if cls.ShallowConfig is not None else []
        else:
            made = [method] if raw.get("deep") is not None else []
        if variant not in made:
            raise ConfigError(f"suite {path}: [published.{key}] variant {variant!r} is not a row of this suite's table"
                              + (f" (its rows of {method}: {', '.join(made)})" if made else
                                 f" (the suite runs no {'shallow' if form else 'deep'} form of {method})"))
        given: dict[tuple[str, str], str] = {}  # task -> its name in the table
        for name, value in table.items():
            if name in ("variant", "source"):
                continue
            if name != "mean":  # (a misspelt "source" is no task: named as a key, before its value)
                with _naming(path, f"[published.{key}] {name!r} (not variant, source or mean, so a task)"):
                    task = parse_task(name, raw["dataset"])
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"suite {path}: [published.{key}] {name} must be a number, got {value!r}")
            if name == "mean":
                continue
            if task not in tasks:  # its figure would show in no column of the table
                raise ConfigError(f"suite {path}: [published.{key}] {name}: not a task of this suite "
                                  f"({task_names(tasks)})")
            if task in given:  # two spellings of one task ("D->W", "dslr->webcam"): one would win unseen
                raise ConfigError(f"suite {path}: [published.{key}] gives the task {task_names([task])} twice, "
                                  f"as {given[task]!r} and as {name!r}")
            given[task] = name


def results_path(out_dir: Path, suite: Suite, steps: int | None) -> Path:
    """``bench-SUITE.json``; a run with ``--steps`` keeps its own file (its cells differ)."""
    return out_dir / (f"bench-{suite.name}.json" if steps is None else f"bench-{suite.name}-steps{steps}.json")


# --------------------------------------------------------------------------- state on disk
def _load_state(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"format": FORMAT, "cells": {}}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:  # unreadable here, not foreign: no advice to move it
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot resume from {path}: not a suite result file ({exc}); move it away") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or not isinstance(state.get("cells"), dict):
        raise ConfigError(f"cannot resume from {path}: not a suite result file of this dalib; move it away")
    for key, cell in state["cells"].items():
        if not _whole_cell(cell):
            raise ConfigError(f"cannot resume from {path}: its cell {key!r} is damaged; move the file away "
                              "(or delete that cell to run it again)")
    damaged = [key for key, kinds in _TOP_LEVEL.items() if key in state and not _of_kind(state[key], kinds)]
    for key, kinds in _ITEMS.items():
        value = state.get(key)
        items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        if key not in damaged and not all(_of_kind(x, kinds) for x in items):  # (named once)
            damaged.append(key)
    chosen = state.get("chosen")
    if isinstance(chosen, dict) and any(k not in _CHOSEN or not isinstance(v, list) or
                                        not all(_of_kind(x, (_CHOSEN[k],)) for x in v) for k, v in chosen.items()):
        damaged.append("chosen")
    if state["cells"] and "machine" not in state:  # written with every cell; the table names the machine
        damaged.append("machine")
    if damaged:
        raise ConfigError(f"cannot resume from {path}: its {', '.join(damaged)} {'is' if len(damaged) == 1 else 'are'} "
                          "damaged; move it away")
    return state


#: the values of a results file beside its cells, as :func:`run_suite` writes them, and their types
_TOP_LEVEL: dict[str, tuple[type, ...]] = {
    "suite": (str,), "title": (str,), "dataset": (str,), "suite_file": (str,), "suite_path": (str,),
    "protocol": (str,), "timing": (str,), "steps": (int, type(None)), "deep_options": (dict, type(None)),
    "machine": (dict,), "plugins": (list,), "wall_seconds": (int, float), "rerun_since": (int, float), "rerun_started": (dict,),
    "jobs": (int,), "jobs_used": (list,), "chosen": (dict,), "extra_seeds": (list,),
}
#: the lists and dicts among them, and the types of their items (values)
_ITEMS: dict[str, tuple[type, ...]] = {
    "plugins": (str,), "jobs_used": (int,), "extra_seeds": (int,), "rerun_started": (int, float),
}
#: the lists of ``chosen``, and the type of their items
_CHOSEN = {"methods": str, "tasks": str, "seeds": int}


def _of_kind(value: Any, kinds: tuple[type, ...]) -> bool:
    """``isinstance``, but JSON's true and false are no numbers."""
    return isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)


def _check_same_suite(state: dict[str, Any], suite: Suite, path: Path) -> None:
    """Refuse a results file that another suite file of the same name wrote: its cells would be
    re-run with this suite's settings and its table replaced. A suite file that has moved (the
    one named in the results no longer exists) takes its results along."""
    old, where = state.get("suite_file"), state.get("suite_path")
    if old is None:
        return
    if where is None and Path(old).is_absolute():  # written before suite_path was kept
        where = old
    if where is None:  # a built-in suite (or a file named by a relative path, before suite_path was kept)
        same = old == suite.file
    else:
        other = Path(where)
        same = not other.exists() or other.resolve() == suite.path.resolve()
    if not same and where is None and not old.startswith("benchmarks/suites/"):  # (how built-in suites are recorded)
        raise ConfigError(f"{path} was written by an older dalib, which recorded its suite file as {old} without the "
                          f"folder: whether that is {suite.path} cannot be told; give this one another --out (or "
                          "move that file away)")
    if not same:
        raise ConfigError(f"{path} holds the results of suite file {where or old}, not {suite.path}; "
                          "give this one another --out (or move that file away)")


def _whole_cell(cell: Any) -> bool:
    """A cell as :func:`run_suite` records it: its identity, and its accuracy when done."""
    if not isinstance(cell, dict) or not all(isinstance(cell.get(k), str) for k in ("variant", "method", "mode",
                                                                                     "src", "tgt", "status")):
        return False
    if not isinstance(cell.get("seed"), int) or not all(isinstance(cell.get(k, 0.0), (int, float)) for k in ("seconds", "finished")):
        return False
    if not isinstance(cell.get("run_options"), (dict, type(None))):
        return False
    if cell["status"] == "done":  # a suite scores its targets: a done cell holds a number (None is no score)
        acc = cell.get("target_accuracy")
        return isinstance(acc, (int, float)) and not isinstance(acc, bool)
    return True


def cell_fingerprint(config: Any) -> str:
    """A hash of what determines a cell's numbers: a finished cell whose method settings
    (the method's defaults included), run options or data changed since is run again; the
    others are kept."""
    from dalib.runner import comparable_config, resolved_method_config

    what = comparable_config(config) | {"method_config": resolved_method_config(config)}
    if config.data:  # an image folder named by the suite: another folder is other data (a run may move it)
        what["data"] = str(config.data)
    blob = json.dumps(what, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _upgrade_written_data(suite: Suite, state: dict[str, Any], configs: dict[str, Any], prints: dict[str, str]) -> int:
    """Finished cells of an older dalib, whose fingerprint holds the suite's ``data`` as written
    (``"imgs"``), not the folder's path: taken as cells of the folder it names from the working
    directory, as that dalib took them, and given today's fingerprint. Returns their count."""
    if suite.data_as_written is None:
        return 0
    taken = 0
    for key, config in configs.items():
        cell = state["cells"].get(key)
        if not cell or not prints[key] or cell.get("fingerprint") == prints[key]:
            continue
        if cell.get("fingerprint") == cell_fingerprint(dataclasses.replace(config, data=suite.data_as_written)):
            cell["fingerprint"] = prints[key]
            if isinstance(cell.get("run_options"), dict) and "data" in cell["run_options"]:
                cell["run_options"] = {**cell["run_options"], "data": (suite.deep or {}).get("data")}
            taken += 1
    return taken


def _outdated_unchosen(suite: Suite, state: dict[str, Any], chosen: dict[str, Any],
                       **options: Any) -> tuple[dict[str, int], set[int]]:
    """Per method, the finished cells of the suite that this run did not choose (another
    --methods, --tasks or --seeds) and whose settings the suite has changed since: they stay in
    the table, as cells of changed code do, and the run says so. With them, those cells' seeds
    that are not the suite's (a plain --methods does not run them)."""
    variants = {v.name: v for v in suite.variants()}  # (a method of a plugin not loaded now: not checked)
    found: dict[str, int] = {}
    foreign: set[int] = set()
    for key, cell in suite_cells(suite, state).items():
        v = variants.get(cell.get("variant"))
        if key in chosen or v is None or cell.get("status") != "done":
            continue
        try:
            now = cell_fingerprint(suite.run_config(Cell(v, (cell["src"], cell["tgt"]), cell["seed"]), **options))
        except (DalibError, KeyError):
            continue
        if cell.get("fingerprint") != now:
            found[v.method] = found.get(v.method, 0) + 1
            if cell["seed"] not in suite.seeds:
                foreign.add(cell["seed"])
    return found, foreign


# --------------------------------------------------------------------------- running cells
def _run_cell(config: Any) -> dict[str, Any]:
    """One cell, in this process or a worker: the run's accuracies or its one-line error."""
    from dalib.runner import run

    t0 = time.perf_counter()
    try:
        result = run(config, None, progress_bar=False)
    except DalibError as exc:
        return {"status": "failed", "error": first_line(exc), "seconds": time.perf_counter() - t0}
    except (Exception, SystemExit) as exc:  # a plugin's bug (or its sys.exit) fails its own cells, not the suite
        return {"status": "failed", "error": f"{type(exc).__name__}: {first_line(exc)}", "seconds": time.perf_counter() - t0}
    if result.target_accuracy is None:  # a target without labels: nothing for the table
        return {"status": "failed", "error": "the target has no labels to score", "seconds": time.perf_counter() - t0}
    import torch

    return {"status": "done", "source_accuracy": result.source_accuracy, "target_accuracy": result.target_accuracy,
            "steps": result.steps, "seconds": time.perf_counter() - t0, "diagnostics": result.diagnostics,
            "threads": torch.get_num_threads()}  # (the numbers depend on it: --jobs sets it, cores/jobs)


#: a worker's folder where it notes the cell it runs (set by :func:`_worker_init`)
_started_dir: Path | None = None


def worker_threads(jobs: int) -> int:
    """torch threads of a cell under ``--jobs``: the cores shared out (a cell's numbers depend on them)."""
    return max(1, (os.cpu_count() or 1) // jobs)


def _worker_init(threads: int, plugins: tuple[str, ...], parent: int, started: str) -> None:
    global _started_dir
    import threading

    import torch

    # a parent killed outright (SIGKILL: no clean-up of its own) would leave the workers running
    # their cells, each with its model in memory, for ever
    threading.Thread(target=_exit_with_parent, args=(parent,), name="dalib-bench-parent", daemon=True).start()
    _started_dir = Path(started)
    torch.set_num_threads(threads)
    from dalib.registry import load_plugin_module

    for module in plugins:
        load_plugin_module(module)


def _exit_with_parent(parent: int) -> None:
    """Exit once the process ``parent`` is gone (the worker is then another process's child)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _run_cell_in_worker(config: Any, key: str) -> dict[str, Any]:
    """:func:`_run_cell` in a worker, which first notes the cell it runs: a worker that dies
    (a plugin's ``os._exit``, the kernel's OOM killer, a crash) tells no one what it ran."""
    if _started_dir is not None:
        (_started_dir / str(os.getpid())).write_text(key, encoding="utf-8")
    return _run_cell(config)


def _exit_text(code: int | None) -> str:
    """A process's exit status in words: ``exit code 3``, ``killed by SIGKILL``."""
    if code is None:
        return "exit status unknown"
    if code >= 0:
        return f"exit code {code}"
    import signal

    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


def _run_in_workers(todo: list[Cell], configs: dict[str, Any], jobs: int, plugins: tuple[str, ...],
                    finished: Callable[[Cell, dict[str, Any]], None]) -> None:
    """Run the cells ``todo`` in ``jobs`` worker processes, handing each outcome to ``finished``.

    A worker that dies breaks the whole pool, which stops its other workers: the dead one's
    cell fails (saying how the process ended), and the cells that the others were running,
    with those not yet started, run in a new pool."""
    import multiprocessing
    import signal
    import tempfile
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    threads = worker_threads(jobs)
    ctx = multiprocessing.get_context("spawn")
    pending = {c.key: c for c in todo}
    while pending:
        with tempfile.TemporaryDirectory(prefix="dalib-bench-", ignore_cleanup_errors=True) as started:
            pool = ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init,
                                       initargs=(threads, plugins, os.getpid(), started))
            broken = False
            try:
                futures = {pool.submit(_run_cell_in_worker, configs[key], key): cell for key, cell in pending.items()}
                processes = dict(getattr(pool, "_processes", None) or {})  # (the pool forgets them when shut down)
                for fut in as_completed(futures):
                    try:
                        outcome = fut.result()
                    except BrokenProcessPool:  # every cell not finished when a worker died
                        broken = True
                        continue
                    cell = futures[fut]
                    del pending[cell.key]
                    finished(cell, outcome)
            except BaseException:  # Ctrl-C: stop the workers now (the finished cells are recorded)
                for proc in list((getattr(pool, "_processes", None) or {}).values()):
                    proc.terminate()
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            pool.shutdown()  # (a broken pool has stopped and joined its workers by now)
            if not broken:
                continue
            exits = {pid: proc.exitcode for pid, proc in processes.items()}
            running = {}  # pid -> (its unfinished cell, the time it began)
            for note in Path(started).iterdir():
                key = note.read_text(encoding="utf-8")
                if key in pending and int(note.name) in exits:
                    running[int(note.name)] = (pending[key], note.stat().st_mtime)
            if not running:  # died before any cell (loading a plugin, say): a new pool would, too
                raise DalibError("the --jobs worker processes died before running a cell "
                                 f"({', '.join(sorted({_exit_text(c) for c in exits.values()}))})")
            # the pool stops its other workers with SIGTERM; the ones that ended otherwise died
            # of their cell (when none did, say SIGTERM from outside, every running cell fails)
            dead = {pid for pid in running if exits[pid] != -signal.SIGTERM} or set(running)
            for pid in sorted(dead):
                cell, began = running[pid]
                del pending[cell.key]
                error = f"the worker process running it died ({_exit_text(exits[pid])})"
                finished(cell, {"status": "failed", "error": error, "seconds": max(0.0, time.time() - began)})


def run_suite(
    suite: Suite,
    out_dir: str | os.PathLike[str],
    *,
    methods: Iterable[str] | None = None,
    tasks: Iterable[str] | None = None,
    seeds: Iterable[int] | None = None,
    steps: int | None = None,
    data_root: str | None = None,
    device: str | None = None,
    jobs: int = 1,
    plugins: tuple[str, ...] = (),
    progress: bool | None = None,
    on_cell: Callable[[Cell, dict[str, Any]], None] | None = None,
    rerun: bool = False,
) -> Path:
    """Run every cell of ``suite`` not yet in its results file; write the JSON after each
    cell, then the markdown table and the chart. Returns the JSON path.

    ``methods``/``tasks``/``seeds``/``steps`` narrow the run; ``jobs`` > 1 runs cells in
    that many worker processes (each with ``cpu_count // jobs`` torch threads); ``rerun``
    runs the chosen cells again, finished or not; a killed re-run resumes (the cells it
    finished are kept until a re-run completes).
    """
    out = Path(out_dir)
    for given, what in ((methods, "methods"), (tasks, "tasks"), (seeds, "seeds")):
        if given is not None and not list(given):
            raise ConfigError(f"--{what} names none: leave it out for all the suite's {what}")
    if steps is not None and steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {steps}")
    if steps is not None and suite.deep is None:
        raise ConfigError(f"--steps sets the deep runs' steps, and suite {suite.name} has no [deep] table: "
                          "its cells are shallow fits, which take no steps")
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    variants = suite.variants(methods)
    chosen_tasks = suite.tasks if tasks is None else [parse_task(t, suite.dataset) for t in tasks]
    foreign = [t for t in chosen_tasks if t not in suite.tasks]
    if foreign:  # its cells would join the suite's table and its mean over tasks
        raise ConfigError(f"--tasks {task_names(foreign)}: not a task of suite {suite.name} ({task_names(suite.tasks)})")
    chosen_seeds = suite.seeds if seeds is None else list(seeds)
    # a name given twice (or an alias beside its name) is one cell, run once
    chosen_tasks, chosen_seeds = list(dict.fromkeys(chosen_tasks)), list(dict.fromkeys(chosen_seeds))
    cells = [Cell(v, t, s) for t in chosen_tasks for v in variants for s in chosen_seeds]
    if not cells:
        why = ("it has no [deep] table, so deep methods do not run, and " if suite.deep is None else "")
        raise ConfigError(f"suite {suite.name}: no cells to run: {why}none of the methods chosen has a form it runs")
    configs = {c.key: suite.run_config(c, steps=steps, data_root=data_root, device=device) for c in cells}
    # the devices and the data root, before any cell: with --rerun, a typo in either would
    # fail (and replace) every finished cell
    from dalib.data import load_domain
    from dalib.runner import resolve_device

    if device is not None:
        resolve_device(device)
    for name in sorted({c.device for c in configs.values() if c.mode == "deep"} - {device}):  # the suite's [deep] device
        try:
            resolve_device(name)
        except ConfigError as exc:
            raise ConfigError(f"suite {suite.name}: [deep] device: {exc}") from None
    load_domain(suite.dataset, chosen_tasks[0][0], data_root=data_root, data_dir=(suite.deep or {}).get("data"))

    make_folder(out, "the results folder")  # once the input is checked: a refused one leaves no empty folder behind
    ready_for_writing(out)  # now, not after the first cell's work
    path = results_path(out, suite, steps)
    # one writer per results file: two suites into the same --out would each write back its
    # own copy of the cells after every cell, and the last one would drop the other's
    lock = path.with_name(f".{path.name}.lock")
    claim_file(lock, f"{path} is being written by another dalib bench", "or give this one another --out")
    # its own files' alone, once claimed (another suite's may be written there)
    tidy_temporaries(out, {path.name, path.with_suffix(".md").name, path.with_suffix(".png").name})
    try:
        state = _load_state(path)
        _check_same_suite(state, suite, path)
        prints: dict[str, str] = {}
        invalid: dict[str, str] = {}  # cells whose settings cannot even be built fail without running
        for key, config in configs.items():
            try:
                prints[key] = cell_fingerprint(config)
            except DalibError as exc:
                prints[key], invalid[key] = "", first_line(exc)
        taken_as_here = _upgrade_written_data(suite, state, configs, prints)
        if taken_as_here:  # (once: from another directory, the same words are another folder)
            atomic_write_text(path, json.dumps(state, indent=1, sort_keys=True))
        # each method's code: a kept cell made by other code of its method is reported (re-run with rerun)
        codes = {method: method_code_hash(get_method(method)) for method in {v.method for v in variants}}
        # and a backbone of a plugin's that [deep] names (dalib's own are in its code hash, below): its
        # code joins the deep cells' (an edit of it had kept every cell without a word)
        from dalib.models.backbones import BACKBONES

        builder = BACKBONES.get(str((suite.deep or {}).get("arch")))
        arch_code = method_code_hash(builder) if builder is not None and not builder.__module__.startswith("dalib.") else ""

        def cell_code(cell: Cell) -> str:
            code = codes[cell.variant.method]
            return f"{code}+{arch_code}" if arch_code and cell.variant.mode == "deep" else code

        core = dalib_code_hash()
        # deep cells from before each kept its run options ran with the file's [deep] and --steps of
        # then: theirs before this run's replace them (the table had credited them with this run's)
        legacy = legacy_run_options(state)
        for old in state["cells"].values():
            if old.get("mode") == "deep" and "run_options" not in old:
                old["run_options"] = legacy
        state.update({"suite": suite.name, "title": suite.title, "dataset": suite.dataset, "steps": steps,
                      "suite_file": suite.file, "deep_options": suite.deep, "machine": machine_info()})
        # what the invocations chose, together: the Reproduce line names it, not only what finished
        # (after Ctrl-C it had narrowed --tasks to the finished ones, a command that never ends the suite)
        was = state.get("chosen", {})
        state["chosen"] = {"methods": sorted(set(was.get("methods", [])) | {v.method for v in variants}),
                           "tasks": sorted(set(was.get("tasks", [])) | {f"{s}->{t}" for s, t in chosen_tasks}),
                           "seeds": sorted(set(was.get("seeds", [])) | set(chosen_seeds))}
        # seeds that --seeds ran beside the suite's: their cells stay in the table, where those of a
        # seed taken out of the suite's list leave it (a file from before this list was kept: the
        # seeds of its cells outside the suite's, which it counted)
        extra = state.get("extra_seeds")
        if extra is None:
            extra = {c.get("seed") for c in state["cells"].values()} - set(suite.seeds)
        state["extra_seeds"] = sorted(set(extra) | (set(chosen_seeds) - set(suite.seeds)))
        # the table's text is the one of the suite file its cells ran under, not a later edit's:
        # a new file takes the suite's; a file whose cells all run again in one invocation, too
        texts = {"protocol": suite.protocol, "timing": suite.timing}
        if not state["cells"]:
            state.update(texts)
        run_began = time.time()
        if plugins:  # the Reproduce line names them (a file by its absolute path): without them no such method
            given = {str(Path(p).resolve()) if str(p).endswith(".py") and Path(p).is_file() else str(p) for p in plugins}
            state["plugins"] = sorted(set(state.get("plugins", [])) | given)
        if not _is_builtin_file(suite.path):
            state["suite_path"] = str(suite.path.resolve())
        # --rerun runs every chosen cell again; one that was killed resumes: the cells it finished
        # already (after the time the re-run of that cell started, kept in the file until a --rerun
        # of it completes) are kept. The time is each cell's own: a re-run of other cells, killed or
        # not, neither stands for it nor ends it (one time for the file had made a later --rerun
        # of other cells keep every cell finished since, and had ended the killed one's resume)
        state.pop("rerun_since", None)  # an older dalib's, for the whole file: those cells run again
        if rerun:
            started_at = state.setdefault("rerun_started", {})
            now = time.time()
            for cell in cells:
                started_at.setdefault(cell.key, now)

        def rerun_already(cell: Cell) -> bool:  # finished by this re-run, with today's code
            old, since = state["cells"][cell.key], state.get("rerun_started", {}).get(cell.key)
            return (since is not None and float(old.get("finished", 0.0)) >= float(since)
                    and old.get("code") == cell_code(cell) and old.get("dalib_code") == core)

        todo = [c for c in cells if not (state["cells"].get(c.key, {}).get("status") == "done"
                                         and state["cells"][c.key].get("fingerprint") == prints[c.key]
                                         and (not rerun or rerun_already(c)))]
        running = {c.key for c in todo}

        def code_changed(cell: Cell) -> bool:  # a kept cell run by other code of its method (unknown: no)
            old, now = state["cells"][cell.key].get("code"), cell_code(cell)
            return bool(old and now and old != now)

        changed = sorted({c.variant.method for c in cells if c.key not in running and code_changed(c)})
        outdated, foreign = _outdated_unchosen(suite, state, configs, steps=steps, data_root=data_root, device=device)
        # kept cells made by another version of dalib itself, and cells from a dalib that did not record its version
        kept_codes = [state["cells"][c.key].get("dalib_code") for c in cells if c.key not in running]
        core_changed = sum(1 for code in kept_codes if code not in (None, core))
        core_unknown = kept_codes.count(None)
        started, wall_before = time.perf_counter(), float(state.get("wall_seconds", 0.0))
        jobs_before, replaced = max(1, int(state.get("jobs", 1))), 0.0

        run_options = None if suite.deep is None else suite.deep | ({} if steps is None else {"steps": steps})

        def record(cell: Cell, outcome: dict[str, Any]) -> None:
            nonlocal replaced
            old = state["cells"].get(cell.key, {})
            if old.get("status") == "done":  # a stale cell: its time no longer stands behind the results
                replaced += float(old.get("seconds", 0.0)) / jobs_before
            state["cells"][cell.key] = {
                "variant": cell.variant.name, "method": cell.variant.method, "mode": cell.variant.mode,
                "classifier": cell.variant.classifier, "method_config": cell.variant.method_config,
                # the suite's [deep] run options it ran with, --steps's steps (the file's top level holds
                # the latest [deep] only)
                "run_options": run_options if cell.variant.mode == "deep" else None,
                "src": cell.task[0], "tgt": cell.task[1], "seed": cell.seed, "fingerprint": prints[cell.key],
                "code": cell_code(cell), "dalib_code": core, "finished": time.time(), **outcome,
            }
            # every invocation's wall time together, less the estimated share of cells since re-run
            state["wall_seconds"] = max(0.0, wall_before - replaced) + time.perf_counter() - started
            state["jobs_used"] = sorted(set(state.get("jobs_used", [state.get("jobs", jobs)])) | {jobs})
            state["jobs"] = jobs
            atomic_write_text(path, json.dumps(state, indent=1, sort_keys=True))
            if on_cell is not None:
                on_cell(cell, outcome)

        from tqdm.auto import tqdm

        bar = tqdm(total=len(cells), initial=len(cells) - len(todo), desc=f"bench {suite.name}", unit="cell",
                   file=sys.stderr, disable=None if progress is None else not progress, dynamic_ncols=True)

        # stderr no terminal (a batch job's log): the bar is off, and a line per finished cell says how far
        lines = progress is None and bool(bar.disable)
        began, ran = time.monotonic(), 0
        if lines and todo:
            progress_line(f"dalib: bench {suite.name}: {len(todo)} of {len(cells)} cell(s) to run"
                          f"{f' in {jobs} processes' if jobs > 1 else ''}, results in {path}")

        def finished(cell: Cell, outcome: dict[str, Any]) -> None:  # recorded, and counted on the bar
            nonlocal ran
            record(cell, outcome)
            bar.set_postfix_str(cell.key, refresh=False)
            bar.update(1)
            ran += 1
            if lines:
                spent, left = time.monotonic() - began, len(todo) - ran
                acc = outcome.get("target_accuracy")
                said = (f"{acc:.2f}%" if isinstance(acc, (int, float)) else "done") if outcome.get("status") == "done" \
                    else "failed"
                progress_line(f"dalib: bench {suite.name}: {len(cells) - left}/{len(cells)} cells, {cell.key}: {said}, "
                              f"{duration(spent)} so far{f', about {duration(spent / ran * left)} left' if left else ''}")

        try:
            with terminate_as_interrupt():
                for cell in [c for c in todo if c.key in invalid]:
                    finished(cell, {"status": "failed", "error": invalid[cell.key], "seconds": 0.0})
                todo = [c for c in todo if c.key not in invalid]
                if jobs == 1 or len(todo) <= 1:
                    import torch

                    own = torch.get_num_threads()
                    if jobs > 1:  # one cell left: here, with the threads a worker would have (--jobs sets them)
                        torch.set_num_threads(worker_threads(jobs))
                    try:
                        for cell in todo:
                            bar.set_postfix_str(cell.key, refresh=True)  # the cell that runs now
                            finished(cell, _run_cell(configs[cell.key]))
                    finally:
                        torch.set_num_threads(own)
                else:
                    _run_in_workers(todo, configs, jobs, plugins, finished)
        except BaseException:  # Ctrl-C (or SIGTERM): the table and the chart show the cells finished so far
            if path.exists():
                with contextlib.suppress(Exception):
                    write_report(suite, path)
            raise
        finally:
            bar.close()
        if rerun:  # done: the next --rerun runs these cells again
            for cell in cells:
                state["rerun_started"].pop(cell.key, None)
            if not state["rerun_started"]:
                del state["rerun_started"]
        stored = {k: state[k] for k in texts if k in state}  # (a file from before texts were kept has none)
        # (the cells of tasks or methods the suite no longer runs are in no table: they do not count)
        retext = stored != texts and all(float(c.get("finished", 0.0)) >= run_began
                                         for c in suite_cells(suite, state).values())
        if retext:
            state.update(texts)  # every cell of the file ran under the suite file's text now
        elif any(stored.get(k, v) != v for k, v in texts.items()):
            warnings.warn(f"the {' and '.join(k for k, v in texts.items() if stored.get(k, v) != v)} text of "
                          f"{suite.file} differs from the one the cells of {path.name} ran under: the table keeps "
                          "theirs (--rerun runs every cell again and takes the new text)", RuntimeWarning, stacklevel=2)
        if rerun or retext or not path.exists():  # (not written yet when every cell was current)
            atomic_write_text(path, json.dumps(state, indent=1, sort_keys=True))
        write_report(suite, path)
        if changed:
            of_arch = f" or of the backbone {suite.deep['arch']}" if arch_code else ""  # (suite.deep is set with it)
            warnings.warn(f"finished cells of {', '.join(changed)} were run by another version of the method's code"
                          f"{of_arch} (its code changed since; edits of docstrings and comments do not count) and are kept as "
                          f"they are: --rerun --methods {','.join(changed)} runs them again", RuntimeWarning, stacklevel=2)
        if outdated:
            # (a plain --methods runs the suite's seeds only)
            remedy = (f" --seeds {','.join(map(str, sorted(set(suite.seeds) | foreign)))} (with this run's "
                      "--tasks, or none)" if foreign else " (with this run's --tasks and --seeds, or none)")
            warnings.warn(f"{sum(outdated.values())} finished cell(s) of {', '.join(sorted(outdated))} that this run did not "
                          f"choose were run with other settings than {suite.file} gives them now, and stay in the table "
                          f"as they are: --methods {','.join(sorted(outdated))}{remedy} runs them again",
                          RuntimeWarning, stacklevel=2)
        if core_changed:
            warnings.warn(f"{core_changed} finished cell(s) were run by another version of dalib (its runner, models, "
                          "losses, kernels, data or estimators changed since) and are kept as they are: --rerun runs "
                          "them again", RuntimeWarning, stacklevel=2)
        if taken_as_here:
            warnings.warn(f"{taken_as_here} finished cell(s) from an older dalib name the image folder as the suite "
                          f"writes it, {suite.data_as_written!r}, not by where it is: they are kept as cells of "
                          f"{(suite.deep or {}).get('data')}, the folder it names from here (--rerun runs them again)",
                          RuntimeWarning, stacklevel=2)
        if core_unknown:
            warnings.warn(f"{core_unknown} finished cell(s) were run by a dalib that did not record the version of its "
                          "code (before the cells recorded it), so they may have run other code than this one's; they "
                          "are kept as they are: --rerun runs them again", RuntimeWarning, stacklevel=2)
    finally:
        release_file(lock)
    return path
