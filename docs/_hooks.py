"""Build-time pieces of the documentation site (``hooks:`` in mkdocs.yml).

* ``methods/index.md`` and one ``methods/<name>.md`` per method of ``dalib.list_methods()``:
  the class docstring (formula, paper), its forms, hyperparameter tables generated from its
  ``Config`` (and ``ShallowConfig``) and example commands. A new plugin gets its page, and its
  entry in the nav, with no edit here.
* ``benchmarks.md``: every ``benchmarks/results/*.md`` file, the accuracy suites
  (``bench-<suite>.md``) first, with the images they link to.
* :class:`RstDocstrings`, a griffe extension that mkdocstrings loads from this same file
  (``extensions:`` in mkdocs.yml): the docstrings' reStructuredText math and roles become
  Markdown that ``pymdownx.arithmatex`` renders. The method pages use the same conversion.

Nothing generated here is written into docs/: the pages exist only in the build.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path
from typing import Any

from griffe import Extension

from dalib._rst import rst_to_markdown

METHODS_NAV_TITLE = "Methods"
IMAGE_SUFFIXES = (".png", ".svg", ".jpg", ".jpeg", ".gif")

# -- reStructuredText in docstrings -> Markdown ------------------------------------------------


class RstDocstrings(Extension):
    """Griffe extension: every docstring through :func:`rst_to_markdown` before rendering."""

    def on_instance(self, *, obj: Any, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value).rstrip()


# -- helpers -------------------------------------------------------------------------------


def _repo_root(config: Any) -> Path:
    return Path(config.config_file_path).resolve().parent


def _cell(text: str) -> str:
    """Text for a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _code_cell(text: str) -> str:
    """Code for a Markdown table cell (a pipe inside a code span does not split the cell)."""
    return f"`{text}`"


def _registered_methods() -> list[tuple[str, type]]:
    import dalib

    return [(name, dalib.get_method(name)) for name in dalib.list_methods()]


def _summary(cls: Any) -> str:
    doc = cls.description()
    return doc.split("\n\n")[0].replace("\n", " ").strip()


# -- the nav -------------------------------------------------------------------------------


def on_config(config: Any) -> Any:
    """Expand the nav entry ``Methods: methods/index.md`` into the overview and one page per
    registered method."""
    entries = [{"Overview": "methods/index.md"}]
    entries += [{name: f"methods/{name}.md"} for name, _ in _registered_methods()]
    for item in config.nav or []:
        if isinstance(item, dict) and METHODS_NAV_TITLE in item:
            item[METHODS_NAV_TITLE] = entries
    return config


# -- method pages --------------------------------------------------------------------------


def _hyperparameter_table(config_cls: type) -> list[str]:
    from dalib.config import describe_config

    rows = describe_config(config_cls)
    if not rows:
        return ["None."]
    lines = ["| name | type | default | description |", "|---|---|---|---|"]
    for name, typ, default, help_text in rows:  # a Literal's type is its choices: `input|model`
        lines.append(f"| `{name}` | {_code_cell(typ)} | {_code_cell(default)} | {_cell(help_text)} |")
    return lines


def _cli_value(value: Any) -> str | None:
    """``value`` as ``--set`` takes it, or None when it is not a plain scalar."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float, str)):
        return str(value)
    return None


def _example_set(config_cls: type) -> str:
    """``--set NAME=DEFAULT`` for the first field with a scalar default, or ''."""
    for field in dataclasses.fields(config_cls):
        value = _cli_value(field.default)
        if value is not None and " " not in value:
            return f" --set {field.name}={value}"
    return ""


def _example_runs(name: str, config_cls: type) -> list[str]:
    """The example's run: a method that starts from a checkpoint (an ``init`` field) gets one
    to start from, a source-only run on MNIST, and trains on USPS's labels."""
    if "init" in {f.name for f in dataclasses.fields(config_cls)}:
        return ["dalib run source_only --src mnist --tgt usps --steps 300 --out runs/pre",
                f"dalib run {name} --src usps --tgt mnist --steps 200 --set init=runs/pre --out runs/{name}"]
    return [f"dalib run {name} --src mnist --tgt usps --steps 2000{_example_set(config_cls)} --out runs/{name}"]


def method_page(name: str, cls: type) -> str:
    forms = cls.forms()
    doc = cls.description()
    lines = [
        f"# {name}",
        "",
        f"`dalib run {name}` · class `{cls.__module__}.{cls.__qualname__}` · "
        f"forms: {', '.join(forms)}",
        "",
        rst_to_markdown(doc).rstrip(),
        "",
        "## Hyperparameters",
        "",
        "Set them with `--set NAME=VALUE` on the command line, in the `[method]` table of a "
        "`--config` file, or as `method_config={...}` of `dalib.RunConfig`; "
        f"`dalib show {name}` prints the same table.",
        "",
        *_hyperparameter_table(cls.Config),
    ]
    if cls.ShallowConfig is not None:
        lines += [
            "",
            "## Shallow-form hyperparameters",
            "",
            "Used by the shallow form on feature matrices (`--mode shallow`, the default on "
            "feature datasets); see [Shallow adaptation](../shallow.md).",
            "",
            *_hyperparameter_table(cls.ShallowConfig),
        ]
    lines += [
        "",
        "## Example",
        "",
        "```bash",
        f"dalib show {name}",
        *_example_runs(name, cls.Config),
    ]
    if "shallow" in forms:
        lines.append(f"dalib run {name} --dataset office-caltech-surf --src amazon --tgt webcam --classifier 1nn")
    lines += ["```", ""]
    return "\n".join(lines)


def methods_index(methods: list[tuple[str, type]]) -> str:
    lines = [
        "# Methods",
        "",
        "Every method registered with dalib, found through the registry when the site is built "
        "(the first-party plugins of `plugins/` and any installed plugin package). "
        "[Concepts](../concepts.md) says which family each belongs to and when to use it.",
        "",
        "| method | forms | summary |",
        "|---|---|---|",
    ]
    for name, cls in methods:
        lines.append(f"| [`{name}`]({name}.md) | {', '.join(cls.forms())} | {_cell(rst_to_markdown(_summary(cls)).strip())} |")
    return "\n".join(lines) + "\n"


# -- benchmark tables ----------------------------------------------------------------------

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)((?:\s+\"[^\"]*\")?\))")


def _rewrite_links(text: str, results: Path, prefix: str, linked: set[str]) -> str:
    """Relative links of a results file, made to work from ``benchmarks.md``: another results
    file becomes its section's anchor, any other file there is copied beside the page."""

    def fix(match: re.Match) -> str:
        target = match.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:|^[/#]", target):
            return match.group(0)
        path, _, anchor = target.partition("#")
        file = (results / path).resolve()
        if not (file.is_file() and file.is_relative_to(results.resolve())):
            return match.group(0)
        if path.endswith(".md"):
            return f"{match.group(1)}#{_anchor(Path(path).stem)}{match.group(3)}"
        linked.add(path)
        return f"{match.group(1)}{prefix}{path}{'#' + anchor if anchor else ''}{match.group(3)}"

    return _LINK.sub(fix, text)


def _anchor(stem: str) -> str:
    return re.sub(r"[^a-z0-9_-]+", "-", stem.lower()).strip("-")


def _include(path: Path, results: Path, prefix: str, linked: set[str]) -> list[str]:
    """A results file under its own level-3 heading (anchor: the file's stem), its headings
    moved two levels down, its relative links rewritten."""
    lines = path.read_text(encoding="utf-8").splitlines()
    title = path.name
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    heading = _HEADING.match(lines[first]) if first is not None else None
    if heading and len(heading.group(1)) == 1:
        title, lines = heading.group(2), lines[first + 1 :]
    body, in_fence = [], False
    for line in lines:
        if _FENCE.match(line):
            in_fence = not in_fence
        heading = None if in_fence else _HEADING.match(line)
        body.append(f"{'#' * min(6, len(heading.group(1)) + 2)} {heading.group(2)}" if heading else line)
    text = _rewrite_links("\n".join(body).strip(), results, prefix, linked)
    return [f"### {title} {{#{_anchor(path.stem)}}}", "", f"From `benchmarks/results/{path.name}`.", "", text, ""]


def _suite_times(suites: list[Path]) -> list[str]:
    """How long each suite took, from the JSON beside its table (wall time of every
    invocation together, and the time of its cells)."""
    import json

    rows = []
    for path in suites:
        data = path.with_suffix(".json")
        if not data.is_file():
            continue
        state = json.loads(data.read_text(encoding="utf-8"))
        cells = state.get("cells", {})
        cell_min = sum(float(c.get("seconds", 0.0)) for c in cells.values()) / 60
        wall = state.get("wall_seconds")
        wall_text = f"{wall / 60:.0f} min with `--jobs {state.get('jobs', 1)}`" if wall else "not recorded"
        machine = state.get("machine", {})
        where = f"{machine.get('cpu', '?')}, {machine.get('cpu_cores', '?')} cores"
        steps = f" --steps {state['steps']}" if state.get("steps") else ""
        rows.append(f"| `dalib bench {state.get('suite', path.stem)}{steps}` | {len(cells)} | {wall_text} | "
                    f"{cell_min:.0f} min | {where} |")
    if not rows:
        return []
    return ["How long each suite takes (from its results file):", "",
            "| command | cells | wall time | cell time | machine |", "|---|---|---|---|---|", *rows, ""]


def _own_suite() -> list[str]:
    """How to write a suite of one's own: the suite module's docstring, the one description
    of the format."""
    from dalib_benchmarks import suite

    text = inspect.cleandoc(suite.__doc__ or "")
    _, _, rest = text.partition("\n\n")  # past the module's one-line summary
    return ["## A suite of your own", "",
            "`dalib bench my_suite.toml --out my_results` runs a suite file of your own (a copy of a "
            "built-in one is a good start; it never writes into the built-in's results).", "",
            rst_to_markdown(rest.replace("::", ":")), ""]


def _results_file() -> list[str]:
    """What a suite's JSON holds, for a reader who joins its cells with runs' result.json."""
    return [
        "## The results file", "",
        "`bench-SUITE.json` holds the suite's `title`, `dataset`, `protocol` and `timing` (from its "
        "file), `deep_options` (its `[deep]` table), `steps` (a `--steps` that narrowed it, else "
        "`null`), the `machine` (CPU, cores, memory, GPU, Python and the packages' versions), "
        "`jobs_used` and `wall_seconds`, `extra_seeds` (seeds that `--seeds` ran beside the suite's: their cells count "
        "in the table, where those of a seed taken out of the suite's list do not), and `cells`, one per run, keyed `VARIANT | SRC->TGT | seed N`. "
        "A cell holds:", "",
        "| field | what |", "|---|---|",
        "| `method`, `variant`, `mode`, `classifier` | the method, its row in the table, `deep` or `shallow`, and a "
        "shallow form's classifier (`null` for deep) |",
        "| `src`, `tgt`, `seed` | the task, by the domains' names, and the seed |",
        "| `status` | `done`, or `failed` with its one-line `error` |",
        "| `source_accuracy`, `target_accuracy` | accuracy, % (0–100), at the last step |",
        "| `steps`, `seconds`, `threads` | the steps trained (0 for a shallow fit), the cell's wall time, its torch "
        "threads |",
        "| `diagnostics` | what the method reports of itself, as in `result.json` |",
        "| `method_config` | the suite's settings of the method only (its `[methods.NAME]` table): the other "
        "hyperparameters are the method's defaults of the dalib that ran it. `result.json`'s `method_config` "
        "holds every hyperparameter |",
        "| `run_options` | the `[deep]` options the cell ran with, `--steps` included (`null` for a shallow fit); "
        "the others are `dalib run`'s defaults |",
        "| `fingerprint`, `code`, `dalib_code` | hashes of the settings (defaults included), of the method's code "
        "and of dalib's: a cell whose fingerprint changed runs again; one kept from other code is warned about "
        "(`--rerun` runs it again) |",
        "| `finished` | when it ended (Unix time) |",
        "",
        "A cell made by a dalib older than a field lacks it (the cells of `bench-digits-steps4000.json`, made "
        "before `run_options` and `threads` were kept); `--rerun` runs it again with them.",
        "",
    ]


def benchmarks_page(results: Path, prefix: str, linked: set[str]) -> str:
    files = sorted(results.glob("*.md")) if results.is_dir() else []
    suites = [p for p in files if p.name.startswith("bench-")]
    others = [p for p in files if not p.name.startswith("bench-")]
    lines = [
        "# Benchmarks",
        "",
        "The tables below are the markdown files of `benchmarks/results/`, included as they are "
        "when the site is built; the JSON file beside each holds every number and the machine "
        "it ran on. See [Kernels and backends](kernels.md) and "
        "[Shallow adaptation](shallow.md) for what they mean.",
        "",
        "## Accuracy suites",
        "",
    ]
    if suites:
        lines += _suite_times(suites)
        for path in suites:
            lines += _include(path, results, prefix, linked)
    else:
        lines += [
            "!!! note",
            "",
            "    No accuracy-suite results (`benchmarks/results/bench-<suite>.md`) are in this "
            "checkout yet.",
            "",
        ]
    lines += _own_suite()
    lines += _results_file()
    lines += ["## Speed and other benchmarks", ""]
    if others:
        for path in others:
            lines += _include(path, results, prefix, linked)
    else:
        lines += ["No other benchmark results are in this checkout.", ""]
    without_table = sorted(
        p.name for p in (results.glob("*.json") if results.is_dir() else []) if not p.with_suffix(".md").is_file()
    )
    if without_table:
        lines += [
            "## Results without a table",
            "",
            "These results files have no markdown table beside them, so they appear here only by "
            "name: " + ", ".join(f"`benchmarks/results/{name}`" for name in without_table) + ".",
            "",
        ]
    return "\n".join(lines)


# -- the generated files -------------------------------------------------------------------


def run_options_page() -> str:
    """Every field of ``dalib.RunConfig``: what ``--config`` files and the Python API set."""
    from dalib.runner import RunConfig

    lines = [
        "# Run options",
        "",
        "Every option of a run, with its default: the fields of `dalib.RunConfig`, the keys of a",
        "`--config` TOML file (beside a `[method]` table), and, for the common ones, the flags of",
        "`dalib run` (`steps` is `--steps`, `batch_size` is `--batch-size`; `dalib run --help`",
        "lists them). The others (the optimiser's `momentum` and `weight_decay`, the learning-rate",
        "schedule's `lr_alpha` and `lr_beta`, `log_every`, `amp`, ...) are set in a `--config` file",
        "or from Python. Generated from the code.",
        "",
        "`src` and `tgt` have their defaults (MNIST to USPS) in Python only: `dalib run` needs them,",
        "as `--src`/`--tgt` or as keys of its `--config` file. `method` and `method_config` are",
        "Python's alone: on the command line the method is `dalib run`'s argument, and its",
        "hyperparameters are `--set KEY=VALUE` or the `--config` file's `[method]` table.",
        "",
        *_hyperparameter_table(RunConfig),
        "",
    ]
    return "\n".join(lines)


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    files.append(File.generated(config, "run-options.md", content=run_options_page()))

    methods = _registered_methods()
    files.append(File.generated(config, "methods/index.md", content=methods_index(methods)))
    for name, cls in methods:
        files.append(File.generated(config, f"methods/{name}.md", content=method_page(name, cls)))

    results = _repo_root(config) / "benchmarks" / "results"
    prefix = "benchmarks/results/"
    linked: set[str] = set()
    files.append(File.generated(config, "benchmarks.md", content=benchmarks_page(results, prefix, linked)))
    images = {p.name for p in results.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES} if results.is_dir() else set()
    for name in sorted(images | linked):
        files.append(File.generated(config, prefix + name, abs_src_path=str(results / name)))
    return files
