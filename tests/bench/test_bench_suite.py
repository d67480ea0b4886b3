"""`dalib bench`: suites from the registry, cells over seeds, resume, tables, chart, errors."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import re
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from dalib.cli import cli
from dalib_benchmarks.report import Summary, write_report
from dalib_benchmarks.suite import Cell, builtin_suites, load_suite, run_suite
from tests._support.toy_suite import toy_suite_text

TOY_SUITE = toy_suite_text("""
[deep]
steps = 15
batch_size = 16
[shallow]
classifiers = ["1nn"]
[methods.dann]
hidden = 32
[skip]
finetune = "not unsupervised"
[published.nn]
source = "a paper"
variant = "source_only (shallow, 1nn)"
"src->tgt" = 50.0
""", seeds="[0, 1]")


@pytest.fixture
def toy_suite(tmp_path, toy_dataset):
    path = tmp_path / "toy.toml"
    path.write_text(TOY_SUITE)
    return path


def _one_line_error(result, *fragments):
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_a_suite_file_with_a_byte_order_mark_loads(toy_suite, tmp_path):
    """As Windows editors save it: it was "Invalid statement (at line 1, column 1)"."""
    bom = tmp_path / "bom_suite.toml"
    bom.write_bytes(b"\xef\xbb\xbf" + toy_suite.read_bytes())
    plain = load_suite(str(toy_suite))
    assert [v.name for v in load_suite(str(bom)).variants()] == [v.name for v in plain.variants()]


def test_every_registered_method_joins_the_suite_in_each_of_its_forms(toy_suite):
    from dalib import list_methods, get_method

    suite = load_suite(str(toy_suite))
    names = {v.name for v in suite.variants()}
    for method in list_methods():
        if method == "finetune":
            assert not any(n.startswith("finetune") for n in names)  # skipped, with its reason
            continue
        assert method in names
        if get_method(method).ShallowConfig is not None:
            assert f"{method} (shallow, 1nn)" in names
    dann = next(v for v in suite.variants() if v.name == "dann")
    assert dann.method_config == {"hidden": 32}


def test_cells_keep_what_each_run_reported_of_itself(toy_suite, tmp_path):
    """KMM's weights (mean, effective sample size) are in its cells, as in a run's result.json."""
    import dalib

    path = run_suite(load_suite(str(toy_suite)), tmp_path, methods=["kmm"], seeds=[0], progress=False)
    cells = json.loads(path.read_text())["cells"]
    shallow = next(c for c in cells.values() if c["mode"] == "shallow")
    direct = dalib.run(dalib.RunConfig(method="kmm", dataset="toy-shift", src="src", tgt="tgt", mode="shallow"),
                       None, progress_bar=False)
    assert shallow["diagnostics"] == direct.diagnostics and direct.diagnostics["effective_sample_size"] > 0
    deep = next(c for c in cells.values() if c["mode"] == "deep")
    assert 0 < deep["diagnostics"]["effective_sample_size"] <= 200 and "weights_mean" in deep["diagnostics"]


def test_a_new_plugin_is_picked_up_without_touching_the_suite(toy_suite):
    from dalib import Method, register_method
    from dalib.registry import unregister_method

    @register_method("bench_probe_method")
    class Probe(Method):
        """Source-only under another name."""

        @dataclass(frozen=True)
        class Config:
            pass

        def loss(self, batch, out, progress):
            cls = self.source_loss(batch, out)
            return {"total": cls}

    try:
        assert "bench_probe_method" in {v.name for v in load_suite(str(toy_suite)).variants()}
    finally:
        unregister_method("bench_probe_method")


def test_suite_runs_every_cell_and_writes_json_table_and_chart(toy_suite, tmp_path):
    out = tmp_path / "results"
    seen = []
    path = run_suite(load_suite(str(toy_suite)), out, methods=["source_only", "dann", "coral"], progress=False,
                     on_cell=lambda cell, outcome: seen.append(cell.key))
    state = json.loads(path.read_text())
    # deep + shallow 1-NN for source_only and coral, deep only for dann; 2 seeds each
    assert len(state["cells"]) == len(seen) == 5 * 2
    for cell in state["cells"].values():
        assert cell["status"] == "done", cell
        assert 0.0 <= cell["target_accuracy"] <= 100.0
    assert state["machine"]["python"] and state["wall_seconds"] > 0 and state["jobs"] == 1
    md = path.with_suffix(".md").read_text()
    for row in ("`source_only`", "`dann`", "`coral`", "`coral (shallow, 1nn)`", "*published: a paper*"):
        assert row in md, row
    assert "last** step" in md and f"Reproduce: `dalib bench {toy_suite} " in md  # a suite file by its path
    png = path.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"]({png.name})" in md


def test_the_difference_to_source_only_is_over_the_seeds_both_finished(toy_suite, tmp_path):
    """source_only over seed 0, dann over seeds 0 and 1: Δ compared dann's mean over both seeds
    with source-only's over one, under a heading of both."""
    suite = load_suite(str(toy_suite))
    run_suite(suite, tmp_path, methods=["source_only", "dann"], seeds=[0], progress=False)
    path = run_suite(suite, tmp_path, methods=["dann"], seeds=[1], progress=False)
    state = json.loads(path.read_text())
    acc = {(c["variant"], c["seed"]): c["target_accuracy"] for c in state["cells"].values()}
    assert acc[("dann", 0)] != acc[("dann", 1)]
    md = path.with_suffix(".md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| `dann` |"))
    assert row.split(" | ")[-1].startswith(f"{acc[('dann', 0)] - acc[('source_only', 0)]:+.2f}")
    assert "Δ of `dann` over seed(s) 0: the seeds that both it and its source-only row finished" in md


def test_the_table_numbers_are_the_mean_and_std_of_the_cells(toy_suite, tmp_path, monkeypatch):
    path = run_suite(load_suite(str(toy_suite)), tmp_path, methods=["source_only", "dann", "coral"], progress=False)
    state = json.loads(path.read_text())
    summary = Summary(state)
    accs = sorted(c["target_accuracy"] for c in state["cells"].values() if c["variant"] == "dann")
    mean, std, n = summary.task_stats("dann", "src->tgt")
    assert n == 2 and mean == pytest.approx(sum(accs) / 2)
    assert std == pytest.approx(abs(accs[0] - accs[1]) / math.sqrt(2))
    md = path.with_suffix(".md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| `dann` |"))
    assert f"{mean:.1f} ± {std:.1f}" in row
    base = summary.overall("source_only")[0]
    assert f"{mean - base:+.2f}" in row  # Δ vs source-only (one task: the task mean is the mean)
    # a shallow row against the same classifier without adaptation, not against the deep baseline
    shallow, shallow_base = (summary.overall(v)[0] for v in ("coral (shallow, 1nn)", "source_only (shallow, 1nn)"))
    assert shallow_base != base
    row = next(line for line in md.splitlines() if line.startswith("| `coral (shallow, 1nn)` |"))
    assert row.split(" | ")[-1].startswith(f"{shallow - shallow_base:+.2f}")

    # the chart draws the same numbers: dots at the means, whiskers of the stds
    import matplotlib.axes

    drawn = []
    real = matplotlib.axes.Axes.errorbar

    def spy(self, x, y, *args, **kwargs):
        drawn.append((x[0], kwargs.get("xerr")[0]))
        return real(self, x, y, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", spy)
    write_report(load_suite(str(toy_suite)), path)
    names = [v for v in summary.order if summary.overall(v) is not None]
    assert drawn == [summary.overall(v)[:2] for v in names]


def test_summary_mean_over_tasks_is_per_seed_then_over_seeds():
    cells = {}
    for task, seed, acc in [("a->b", 0, 10.0), ("a->b", 1, 20.0), ("b->a", 0, 30.0), ("b->a", 1, 60.0)]:
        cells[f"{task}{seed}"] = {"variant": "m", "mode": "deep", "src": task[0], "tgt": task[-1], "seed": seed,
                                  "status": "done", "target_accuracy": acc}
    summary = Summary({"cells": cells})
    mean, std, n = summary.overall("m")
    # per seed: (10 + 30) / 2 = 20 and (20 + 60) / 2 = 40
    assert (mean, n) == (30.0, 2) and std == pytest.approx(math.sqrt(200.0))
    del cells["b->a1"]
    assert summary.overall("m") is not None  # built before the deletion
    assert Summary({"cells": cells}).overall("m") == (20.0, 0.0, 1)  # only seed 0 finished both tasks


def test_a_killed_suite_resumes_without_rerunning_finished_cells(toy_suite, tmp_path):
    suite = load_suite(str(toy_suite))

    def die_after_three(cell, outcome, count=[0]):
        count[0] += 1
        if count[0] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_suite(suite, tmp_path, methods=["source_only", "dann"], progress=False, on_cell=die_after_three)
    path = tmp_path / "bench-toy.json"
    first = json.loads(path.read_text())["cells"]
    assert len(first) == 3
    assert "source_only" in path.with_suffix(".md").read_text()  # the table of the cells finished so far
    rerun = []
    run_suite(suite, tmp_path, methods=["source_only", "dann"], progress=False,
              on_cell=lambda cell, outcome: rerun.append(cell.key))
    final = json.loads(path.read_text())["cells"]
    assert len(rerun) == len(final) - 3 and not set(rerun) & set(first)
    for key, cell in first.items():  # finished cells are kept as they were
        assert final[key] == cell
    # an uninterrupted run gives the same numbers (seeded CPU runs are deterministic)
    fresh = run_suite(suite, tmp_path / "fresh", methods=["source_only", "dann"], progress=False)
    again = json.loads(fresh.read_text())["cells"]
    assert {k: c["target_accuracy"] for k, c in again.items()} == {k: c["target_accuracy"] for k, c in final.items()}


def test_cli_narrows_a_run_and_prints_where_the_results_are(toy_suite, tmp_path):
    toy_suite.write_text(toy_suite.read_text().replace('protocol = "the moons, rotated"',
                                                       'protocol = "the moons, rotated"\ntiming = "About 3 s a cell."'))
    res = CliRunner().invoke(cli, ["bench", str(toy_suite), "--methods", "source_only", "--seeds", "3",
                                   "--steps", "5", "--out", str(tmp_path), "--quiet"])
    assert res.exit_code == 0, res.output
    path = tmp_path / "bench-toy-steps5.json"  # another --steps keeps a file of its own
    assert f"results: {path}" in res.stdout
    cells = json.loads(path.read_text())["cells"]
    assert {c["seed"] for c in cells.values()} == {3}
    assert {c["variant"] for c in cells.values()} == {"source_only", "source_only (shallow, 1nn)"}
    assert all(c["steps"] == 5 for c in cells.values() if c["mode"] == "deep")
    # the options the cell ran with: --steps's, not the suite's 15
    assert cells["source_only | src->tgt | seed 3"]["run_options"] == {"steps": 5, "batch_size": 16}
    table = (tmp_path / "bench-toy-steps5.md").read_text()
    assert "Deep runs: batch_size = 16, steps = 5." in table  # the steps the runs used, not the suite's 15
    assert "(the suite's own: 15)" in table
    # the suite's timing note speaks of its own steps, and says so
    assert 'The suite\'s note, written for its own 15 steps: "About 3 s a cell."' in table
    assert f"chart: {tmp_path / 'bench-toy-steps5.png'}" in res.stdout


def test_the_table_keeps_the_protocol_its_cells_ran_under(toy_suite, tmp_path):
    from dalib_benchmarks.report import write_report

    path = run_suite(load_suite(str(toy_suite)), tmp_path, methods=["source_only"], seeds=[0], progress=False)
    toy_suite.write_text(toy_suite.read_text().replace("the moons, rotated", "the moons, sheared"))
    md, _ = write_report(load_suite(str(toy_suite)), path)  # the suite file edited since: the table keeps its text
    assert "the moons, rotated" in md.read_text() and "sheared" not in md.read_text()
    # a run that adds cells under the edited file keeps the text of the cells it kept, and says so
    with pytest.warns(RuntimeWarning, match="protocol text of .* differs from the one the cells of bench-toy.json"):
        run_suite(load_suite(str(toy_suite)), tmp_path, methods=["source_only"], seeds=[1], progress=False)
    assert "the moons, rotated" in md.read_text() and "sheared" not in md.read_text()
    # once every cell has run again under the edited file, its text is the table's
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_suite(load_suite(str(toy_suite)), tmp_path, methods=["source_only"], seeds=[0, 1], rerun=True,
                  progress=False)
    assert "the moons, sheared" in md.read_text() and "rotated" not in md.read_text()


def test_a_full_rerun_takes_the_new_text_though_the_file_keeps_cells_of_a_task_no_longer_run(toy_suite, tmp_path):
    both = toy_suite.read_text().replace('tasks = ["src->tgt"]', 'tasks = ["src->tgt", "tgt->src"]')
    toy_suite.write_text(both)
    path = run_suite(load_suite(str(toy_suite)), tmp_path, methods=["source_only"], seeds=[0], progress=False)
    toy_suite.write_text(both.replace('tasks = ["src->tgt", "tgt->src"]', 'tasks = ["src->tgt"]')
                         .replace("the moons, rotated", "the moons, sheared"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (it had warned that the text differs from the one its cells ran under)
        run_suite(load_suite(str(toy_suite)), tmp_path, methods=["source_only"], seeds=[0], rerun=True, progress=False)
    state = json.loads(path.read_text())
    assert any(c["src"] == "tgt" for c in state["cells"].values())  # kept in the JSON, out of the table
    assert state["protocol"] == "the moons, sheared"
    assert "the moons, sheared" in path.with_suffix(".md").read_text()


def test_cli_says_when_no_chart_is_drawn(toy_suite, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails, as where it is not installed
    res = CliRunner().invoke(cli, ["bench", str(toy_suite), "--methods", "source_only", "--seeds", "3",
                                   "--steps", "5", "--out", str(tmp_path), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "chart: not drawn, matplotlib is not installed (pip install matplotlib" in res.stderr
    assert not (tmp_path / "bench-toy-steps5.png").exists()


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["nosuch"], ("unknown suite 'nosuch'", "digits")),
        (["{suite}", "--methods", "nosuch"], ("nosuch", "dann")),
        (["{suite}", "--methods", "finetune"], ("skipped", "not unsupervised")),
        (["{suite}", "--tasks", "src-tgt"], ("SRC->TGT",)),
        (["{suite}", "--tasks", "src->nowhere"], ("unknown domain 'nowhere'",)),
        (["{suite}", "--seeds", "x"], ("--seeds",)),
        (["{suite}", "--steps", "0"], ("--steps",)),
    ],
)
def test_bad_input_is_one_line_and_exit_2(toy_suite, tmp_path, args, fragments):
    args = [a.replace("{suite}", str(toy_suite)) for a in args]
    res = CliRunner().invoke(cli, ["bench", *args, "--out", str(tmp_path), "--quiet"])
    _one_line_error(res, *fragments)


@pytest.mark.parametrize(
    ("old", "new", "fragments"),
    [
        ('tasks = ["src->tgt"]', 'tasks = "src->tgt"', ("tasks must be a non-empty list",)),
        ('tasks = ["src->tgt"]', "tasks = []", ("tasks must be a non-empty list",)),
        ("[methods.dann]", "[methods.dnan]", ("[methods.dnan]", "unknown method 'dnan'")),
        ("finetune = ", "finetuen = ", ("[skip.finetuen]", "unknown method")),
        ('"src->tgt" = 50.0', '"src->tgt" = "high"', ("[published.nn] src->tgt must be a number", "'high'")),
        ('variant = "source_only (shallow, 1nn)"', 'variant = "sourceonly"', ("[published.nn] variant", "sourceonly")),
        ('variant = "source_only (shallow, 1nn)"', 'variant = "source_only (shallow 1nn)"',
         ("[published.nn] variant 'source_only (shallow 1nn)' is not a row", "source_only (shallow, 1nn)")),
        ('variant = "source_only (shallow, 1nn)"', 'variant = "dann (shallow, 1nn)"',
         ("[published.nn] variant 'dann (shallow, 1nn)' is not a row", "no shallow form of dann")),
        ("hidden = 32", "hiden = 32", ("[methods.dann]", "unknown hyperparameter 'hiden' of dann")),
        ("hidden = 32", "hidden = 0", ("[methods.dann]", "hidden must be >= 1")),
        ("[methods.dann]", "[methods.coral.shallow]\nbogus = 1\n[methods.dann]",
         ("[methods.coral.shallow]", "unknown hyperparameter 'bogus' of coral (shallow)")),
        ("[methods.dann]", "[methods.dann.shallow]\nreg = 1\n[methods.dann]", ("[methods.dann.shallow]", "no shallow form")),
        ("[deep]\nsteps = 15\nbatch_size = 16\n", "",
         ("[methods.dann] sets hidden for the deep form", "no [deep] table)")),
        ("[deep]\nsteps = 15\nbatch_size = 16\n", "[methods.coral]\ntrade_off = 2.0\n",
         ("[methods.coral] sets trade_off for the deep form", "shallow form's settings go in [methods.coral.shallow]")),
        ('[shallow]\nclassifiers = ["1nn"]\n', '[methods.coral.shallow]\nreg = 2.0\n',
         ("[methods.coral.shallow] is set", "no [shallow] table")),
        # a published figure of a task the suite does not run (a blank row), or of one task twice (one won unseen)
        ('"src->tgt" = 50.0', '"tgt->src" = 50.0', ("[published.nn] tgt->src: not a task of this suite (src->tgt)",)),
        ('"src->tgt" = 50.0', '"src->tgt" = 50.0\n"src:tgt" = 60.0',
         ("[published.nn] gives the task src->tgt twice, as 'src->tgt' and as 'src:tgt'",)),
        # the file and the place are named: a misspelt key of a published table had read as a bad task,
        # an unknown domain or dataset named neither
        ('source = "a paper"', 'sorce = "a paper"',
         ("bad.toml: [published.nn] 'sorce' (not variant, source or mean, so a task)", "a task is SRC->TGT")),
        ('tasks = ["src->tgt"]', 'tasks = ["src->nowhere"]', ("bad.toml: tasks: unknown domain 'nowhere'",)),
        ('dataset = "toy-shift"', 'dataset = "toy-shfit"', ("bad.toml: dataset: unknown dataset 'toy-shfit'",)),
        # a task, seed or classifier listed twice had been merged without a word (a task's second
        # spelling too); a published row of a skipped method, never shown, and a source not a string
        ('tasks = ["src->tgt"]', 'tasks = ["src->tgt", "tgt->src", "src->tgt"]', ("bad.toml: tasks lists 'src->tgt' twice",)),
        ('tasks = ["src->tgt"]', 'tasks = ["src->tgt", "src:tgt"]',
         ("tasks lists 'src:tgt' twice (as 'src->tgt' and as 'src:tgt')",)),
        ("seeds = [0, 1]", "seeds = [0, 1, 0]", ("bad.toml: seeds lists 0 twice",)),
        ('classifiers = ["1nn"]', 'classifiers = ["1nn", "1nn"]', ("bad.toml: [shallow] classifiers lists '1nn' twice",)),
        ('variant = "source_only (shallow, 1nn)"', 'variant = "finetune"',
         ("[published.nn] variant 'finetune' is a method the suite skips ([skip] finetune)",)),
        ('source = "a paper"', "source = 5", ("[published.nn] source must be a string, got 5",)),
        # the data root is where this machine keeps the data, for the shallow cells as well: --data-root's
        ("[deep]\nsteps = 15", '[deep]\ndata_root = "/elsewhere"\nsteps = 15', ("[deep] data_root", "give --data-root")),
    ],
)
def test_mistakes_in_a_suite_file_are_one_line_before_any_cell_runs(toy_suite, tmp_path, old, new, fragments):
    bad = tmp_path / "bad.toml"
    assert old in TOY_SUITE
    bad.write_text(TOY_SUITE.replace(old, new, 1))
    res = CliRunner().invoke(cli, ["bench", str(bad), "--out", str(tmp_path / "out"), "--quiet"])
    _one_line_error(res, *fragments)
    assert not (tmp_path / "out" / "bench-bad.json").exists()


def test_deep_settings_without_deep_cells_point_to_the_shallow_table_only_where_there_is_one(toy_suite, tmp_path):
    from dalib.errors import ConfigError

    path = tmp_path / "nodeep.toml"
    path.write_text(TOY_SUITE.replace("[deep]\nsteps = 15\nbatch_size = 16\n", ""))
    with pytest.raises(ConfigError) as dann:  # dann has no shallow form: no table to point to
        load_suite(str(path))
    assert str(dann.value).endswith("runs no deep cells (no [deep] table)")


def test_a_suite_with_nothing_to_run_says_why(toy_suite, tmp_path):
    no_deep = tmp_path / "nodeep.toml"
    no_deep.write_text(TOY_SUITE.replace("[deep]\nsteps = 15\nbatch_size = 16\n", "").replace("[methods.dann]\nhidden = 32\n", ""))
    res = CliRunner().invoke(cli, ["bench", str(no_deep), "--methods", "dann", "--out", str(tmp_path), "--quiet"])
    _one_line_error(res, "no cells to run", "no [deep] table")


def test_a_bench_logs_a_line_per_cell_where_stderr_is_no_terminal(toy_suite, tmp_path):
    """A batch job's log (stderr a file) had held nothing until the end: the bar turns itself
    off there, and nothing stood in for it. Now a line at the start and one per finished cell;
    --quiet leaves them out."""
    res = CliRunner().invoke(cli, ["bench", str(toy_suite), "--methods", "source_only", "--seeds", "0,1",
                                   "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    lines = res.stderr.strip().splitlines()
    assert lines[0] == f"dalib: bench toy: 4 of 4 cell(s) to run, results in {tmp_path / 'bench-toy.json'}"
    cells = json.loads((tmp_path / "bench-toy.json").read_text())["cells"]
    assert len(lines) == 5
    for n, line in enumerate(lines[1:], start=1):
        done = re.fullmatch(r"dalib: bench toy: (\d)/4 cells, (.+): ([0-9.]+)%, \d+ s so far(, about \d+ s left)?", line)
        assert done and int(done.group(1)) == n and bool(done.group(4)) == (n < 4), line
        assert float(done.group(3)) == pytest.approx(cells[done.group(2)]["target_accuracy"], abs=0.006)
    quiet = CliRunner().invoke(cli, ["bench", str(toy_suite), "--methods", "source_only", "--seeds", "2",
                                     "--out", str(tmp_path), "--quiet"])
    assert quiet.exit_code == 0 and quiet.stderr == "", quiet.output


def test_failed_cells_are_reported_and_the_exit_status_says_so(toy_suite, tmp_path):
    """A cell that fails (bad data, bad settings) is kept in the results and the table, and the
    command ends with one error line and exit status 1 (the work failed; 2 is bad input), not a
    silent success."""
    bad = tmp_path / "failing.toml"
    bad.write_text(TOY_SUITE.replace("hidden = 32", "hidden = 32\ntrade_off = 1e30"))  # DANN's loss overflows
    res = CliRunner().invoke(cli, ["bench", str(bad), "--methods", "dann,source_only", "--seeds", "0",
                                   "--out", str(tmp_path), "--quiet"])
    assert res.exit_code == 1, res.output
    assert "results:" in res.stdout and "table:" in res.stdout
    error = res.stderr.strip().splitlines()[-1]
    assert error.startswith("dalib: error: 1 cell(s) failed") and "dann | src->tgt | seed 0" in error
    cells = json.loads((tmp_path / "bench-failing.json").read_text())["cells"]
    assert cells["dann | src->tgt | seed 0"]["status"] == "failed"
    assert cells["source_only | src->tgt | seed 0"]["status"] == "done"


def test_a_corrupt_or_foreign_results_file_is_refused_and_left_alone(toy_suite, tmp_path):
    path = tmp_path / "bench-toy.json"
    path.write_text("{not json")
    res = CliRunner().invoke(cli, ["bench", str(toy_suite), "--methods", "source_only", "--out", str(tmp_path)])
    _one_line_error(res, "cannot resume", str(path))
    assert path.read_text() == "{not json"
    bad_suite = tmp_path / "bad.toml"
    bad_suite.write_text(TOY_SUITE.replace("[deep]", "typo = 1\n[deep]"))
    _one_line_error(CliRunner().invoke(cli, ["bench", str(bad_suite), "--out", str(tmp_path)]), "unknown key", "typo")


def test_a_changed_setting_reruns_only_the_cells_it_changes(toy_suite, tmp_path):
    suite = load_suite(str(toy_suite))
    run_suite(suite, tmp_path, methods=["source_only", "dann"], seeds=[0], progress=False)
    before = json.loads((tmp_path / "bench-toy.json").read_text())["cells"]
    toy_suite.write_text(TOY_SUITE.replace("hidden = 32", "hidden = 16"))  # dann's setting changes
    rerun = []
    run_suite(load_suite(str(toy_suite)), tmp_path, methods=["source_only", "dann"], seeds=[0], progress=False,
              on_cell=lambda cell, outcome: rerun.append(cell.key))
    assert rerun == ["dann | src->tgt | seed 0"]
    after = json.loads((tmp_path / "bench-toy.json").read_text())["cells"]
    assert after["dann | src->tgt | seed 0"]["method_config"] == {"hidden": 16}
    for key in before:
        if not key.startswith("dann"):
            assert after[key] == before[key]
    # a run setting of the [deep] table (the steps) re-runs every deep cell, and no shallow one
    toy_suite.write_text(TOY_SUITE.replace("hidden = 32", "hidden = 16").replace("steps = 15", "steps = 12"))
    rerun.clear()
    run_suite(load_suite(str(toy_suite)), tmp_path, methods=["source_only", "dann"], seeds=[0], progress=False,
              on_cell=lambda cell, outcome: rerun.append(cell.key))
    assert sorted(rerun) == ["dann | src->tgt | seed 0", "source_only | src->tgt | seed 0"]


def test_a_changed_method_default_reruns_that_methods_cells(toy_suite, tmp_path, monkeypatch):
    import dataclasses

    from dalib.registry import get_method

    suite = load_suite(str(toy_suite))
    run_suite(suite, tmp_path, methods=["source_only", "coral"], seeds=[0], progress=False)
    state = json.loads((tmp_path / "bench-toy.json").read_text())
    coral_seconds = sum(c["seconds"] for k, c in state["cells"].items() if k.startswith("coral |"))
    wall_before = state["wall_seconds"]
    coral = get_method("coral")
    changed = dataclasses.make_dataclass("Config", [("trade_off", float, dataclasses.field(default=2.5))],
                                         bases=(coral.Config,), frozen=True)
    monkeypatch.setattr(coral, "Config", changed)  # a new default, the suite file untouched
    rerun, started = [], time.perf_counter()
    run_suite(suite, tmp_path, methods=["source_only", "coral"], seeds=[0], progress=False,
              on_cell=lambda cell, outcome: rerun.append(cell.key))
    elapsed = time.perf_counter() - started
    assert rerun == ["coral | src->tgt | seed 0"]  # the deep form; the shallow CORAL has its own config
    # the wall time stands for the results kept: the replaced cell's time is taken out
    wall_after = json.loads((tmp_path / "bench-toy.json").read_text())["wall_seconds"]
    assert wall_after <= wall_before - coral_seconds + elapsed + 1e-6


@pytest.mark.parametrize("name", ["digits", "office-caltech-surf", "amazon-reviews"])
def test_builtin_suites_load_and_their_published_rows_name_real_variants(name):
    assert name in builtin_suites()
    suite = load_suite(name)
    names = {v.name for v in suite.variants()}
    assert "source_only" in names and "dann" in names
    assert len(suite.tasks) == (2 if name == "digits" else 12) and suite.seeds == [0, 1, 2]
    for key, table in suite.published.items():
        assert table.get("variant", key) in names, (key, table)


def test_worker_processes_give_the_same_numbers_as_one_process(tmp_path, data_root):
    suite = load_suite("office-caltech-surf")
    kw = {"methods": ["source_only", "coral"], "tasks": ["D->W"], "seeds": [0], "steps": 20,
          "data_root": str(data_root), "progress": False}
    one_path = run_suite(suite, tmp_path / "one", **kw)
    one = json.loads(one_path.read_text())["cells"]
    shallow = {k: c for k, c in one.items() if c["mode"] == "shallow"}
    two_path = run_suite(suite, tmp_path / "two", jobs=2, **{**kw, "methods": ["coral"]})
    two = json.loads(two_path.read_text())["cells"]
    assert len(shallow) == 4
    for key, cell in two.items():
        assert cell["status"] == "done"
        if cell["mode"] == "shallow":
            assert cell["target_accuracy"] == one[key]["target_accuracy"]
    # each worker runs with cores/jobs torch threads, and a deep run's numbers depend on them: the
    # cells record them, the table says them, and its Reproduce line gives the --jobs that set them
    workers = max(1, (os.cpu_count() or 1) // 2)
    assert {c["threads"] for c in two.values()} == {workers}
    assert {c["threads"] for c in one.values()} == {torch.get_num_threads()}
    md = two_path.with_suffix(".md").read_text()
    assert f"Each cell ran with {workers} torch thread" in md
    assert "--jobs 2" in md.split("Reproduce: `", 1)[1].split("`", 1)[0]
    one_md = one_path.with_suffix(".md").read_text()
    assert "--jobs" not in one_md.split("Reproduce: `", 1)[1].split("`", 1)[0]


def test_a_narrowed_run_says_so_and_its_reproduce_line_narrows_too(toy_suite, tmp_path):
    two = tmp_path / "two.toml"
    two.write_text(TOY_SUITE.replace('tasks = ["src->tgt"]', 'tasks = ["src->tgt", "tgt->src"]')
                   .replace('"src->tgt" = 50.0', '"src->tgt" = 50.0\n"tgt->src" = 70.0\nmean = 60.0'))
    res = CliRunner().invoke(cli, ["bench", str(two), "--methods", "source_only", "--tasks", "src->tgt",
                                   "--seeds", "0", "--out", str(tmp_path), "--quiet"])
    assert res.exit_code == 0, res.output
    table = (tmp_path / "bench-two.md").read_text()
    assert "This file holds 1 of the suite's 2 tasks; means are over those." in table
    published = next(line for line in table.splitlines() if line.startswith("| *published: a paper*"))
    assert published.split("|")[-3].strip() == "50.0"  # the paper's value on the task run, not its 2-task mean
    assert (f'Reproduce: `dalib bench {two} --methods source_only --tasks "src->tgt" --seeds 0 --out {tmp_path}`'
            in table)  # not into benchmarks/results
    assert "Target accuracy (%), seed 0 alone (no spread)." in table and "(2 cells)" in table


def test_a_stopped_run_reproduces_with_the_command_that_was_run_not_the_tasks_it_finished(toy_suite, tmp_path):
    two = tmp_path / "two.toml"
    two.write_text(TOY_SUITE.replace('tasks = ["src->tgt"]', 'tasks = ["src->tgt", "tgt->src"]'))

    def stop(cell, outcome):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # stopped after its first cell, of the task src->tgt
        run_suite(load_suite(str(two)), tmp_path, methods=["source_only"], seeds=[0], progress=False, on_cell=stop)
    table = (tmp_path / "bench-two.md").read_text()
    # it had said --tasks "src->tgt": a command that never runs tgt->src
    assert f"Reproduce: `dalib bench {two} --methods source_only --seeds 0 --out {tmp_path}`" in table
    assert "the file holds 1 of its 4 cells (its runs chose fewer, or stopped early)" in table
    # a later run of one task adds to what the runs chose, not replaces it: tgt->src stays chosen
    run_suite(load_suite(str(two)), tmp_path, methods=["source_only"], seeds=[0], tasks=["src->tgt"], progress=False)
    table = (tmp_path / "bench-two.md").read_text()
    assert f"Reproduce: `dalib bench {two} --methods source_only --seeds 0 --out {tmp_path}`" in table
    assert "the file holds 2 of its 4 cells" in table


def test_each_row_names_the_deep_run_options_its_cells_ran_with(toy_suite, tmp_path):
    run_suite(load_suite(str(toy_suite)), tmp_path, methods=["source_only"], seeds=[0], progress=False)
    toy_suite.write_text(toy_suite.read_text().replace("batch_size = 16", "batch_size = 8"))
    with pytest.warns(RuntimeWarning, match="other settings than"):  # source_only's cells are not chosen: kept
        path = run_suite(load_suite(str(toy_suite)), tmp_path, methods=["dann"], seeds=[0], progress=False)
    cells = json.loads(path.read_text())["cells"]
    assert cells["source_only | src->tgt | seed 0"]["run_options"] == {"steps": 15, "batch_size": 16}
    assert cells["dann | src->tgt | seed 0"]["run_options"] == {"steps": 15, "batch_size": 8}
    assert cells["source_only (shallow, 1nn) | src->tgt | seed 0"]["run_options"] is None
    # it had said "Deep runs: batch_size = 8, steps = 15." of every row, source_only's too
    assert ("Deep runs, with the run options each ran with ([deep] changed between runs that chose some of the "
            "cells): batch_size = 16, steps = 15 for `source_only`; batch_size = 8, steps = 15 for `dann`."
            in path.with_suffix(".md").read_text())


def test_cells_of_older_results_files_are_named_with_the_run_options_they_ran_with(toy_suite, tmp_path):
    """Cells from before each kept its run options ran with the file's [deep] of then: the table
    had credited them with a later run's; and some versions recorded the suite's steps, not
    --steps's: the table takes the steps the cell ran."""
    path = run_suite(load_suite(str(toy_suite)), tmp_path, methods=["source_only"], seeds=[0], progress=False,
                     steps=5)
    state = json.loads(path.read_text())
    for cell in state["cells"].values():
        del cell["run_options"]  # as an older dalib wrote them, with the file's [deep] at the top
    path.write_text(json.dumps(state))
    toy_suite.write_text(toy_suite.read_text().replace("batch_size = 16", "batch_size = 8"))
    with pytest.warns(RuntimeWarning, match="other settings than"):
        run_suite(load_suite(str(toy_suite)), tmp_path, methods=["dann"], seeds=[0], progress=False, steps=5)
    table = path.with_suffix(".md").read_text()
    assert ("Deep runs, with the run options each ran with ([deep] changed between runs that chose some of the "
            "cells): batch_size = 16, steps = 5 for `source_only`; batch_size = 8, steps = 5 for `dann`." in table)
    state = json.loads(path.read_text())
    cell = state["cells"]["dann | src->tgt | seed 0"]
    cell["run_options"] = cell["run_options"] | {"steps": 15}  # the suite's steps, recorded under --steps 5
    path.write_text(json.dumps(state))
    write_report(load_suite(str(toy_suite)), path)
    assert "batch_size = 8, steps = 5 for `dann`." in path.with_suffix(".md").read_text()


def _plugin_file(path, name: str, body: str, config: str = "pass") -> str:
    path.write_text(
        "from dataclasses import dataclass\n"
        "import dalib\n"
        f"@dalib.register_method('{name}')\n"
        "class P(dalib.Method):\n"
        "    '''A test plugin.'''\n"
        "    @dataclass(frozen=True)\n"
        "    class Config:\n"
        f"        {config}\n"
        "    def loss(self, batch, out, progress):\n"
        f"        {body}\n"
    )
    return str(path)


def test_a_buggy_plugin_fails_its_own_cells_and_the_others_run(toy_suite, tmp_path):
    """Plugins join suites by themselves: one with a bug (a KeyError in its loss) or one that
    refuses the data (a DataError) must not stop the others' cells."""
    from dalib.registry import unregister_method

    buggy = _plugin_file(tmp_path / "buggy.py", "bench_buggy", "return {}['total']")
    needy = _plugin_file(tmp_path / "needy.py", "bench_needy",
                         "import dalib.errors; raise dalib.errors.DataError('this method needs a weight for each sample')")
    try:
        res = CliRunner().invoke(cli, ["bench", str(toy_suite), "--plugin", buggy, "--plugin", needy, "--methods",
                                       "bench_buggy,bench_needy,source_only", "--seeds", "0", "--out",
                                       str(tmp_path), "--quiet"])
    finally:
        unregister_method("bench_buggy")
        unregister_method("bench_needy")
    assert res.exit_code == 1, res.output
    assert res.stderr.strip().splitlines()[-1].startswith("dalib: error: 2 cell(s) failed")
    cells = json.loads((tmp_path / "bench-toy.json").read_text())["cells"]
    assert cells["bench_buggy | src->tgt | seed 0"]["status"] == "failed"
    assert cells["bench_buggy | src->tgt | seed 0"]["error"].startswith("KeyError")
    assert cells["bench_needy | src->tgt | seed 0"]["status"] == "failed"
    assert cells["bench_needy | src->tgt | seed 0"]["error"] == "this method needs a weight for each sample"
    assert cells["source_only | src->tgt | seed 0"]["status"] == "done"


def test_the_code_hash_reads_code_not_documentation():
    from dalib.registry import code_digest

    base = 'class M:\n    """Old words."""\n    def loss(self, x):\n        return 2 * x\n'
    for same in ('"""A module docstring."""\n' + base,
                 base.replace("Old words.", "New words, a formula: L = 2x."),
                 base.replace("return 2 * x", "return 2 * x  # twice"),
                 base.replace('    """Old words."""\n', "")):
        assert code_digest(same) == code_digest(base), same
    for other in (base.replace("2 * x", "3 * x"), base.replace('"""Old words."""', 'x = "Old words."')):
        assert code_digest(other) != code_digest(base), other
    assert code_digest(b"def broken(:\n") == b"def broken(:\n"  # unparsable: its bytes


def test_changed_method_code_is_reported_and_rerun_runs_the_cells_again(toy_suite, tmp_path):
    from dalib.registry import load_plugin_module, unregister_method

    plugin = tmp_path / "iterate.py"
    suite = load_suite(str(toy_suite))
    try:
        load_plugin_module(_plugin_file(plugin, "bench_iterate", "return {'total': self.source_loss(batch, out)}"))
        run_suite(suite, tmp_path, methods=["bench_iterate"], seeds=[0], progress=False)
        first = json.loads((tmp_path / "bench-toy.json").read_text())["cells"]["bench_iterate | src->tgt | seed 0"]
        assert first["status"] == "done" and first["code"]
        # the author changes the loss: the finished cell is kept, with a warning that says how to re-run it
        load_plugin_module(_plugin_file(plugin, "bench_iterate", "return {'total': 2 * self.source_loss(batch, out)}"))
        ran = []
        with pytest.warns(RuntimeWarning, match="bench_iterate were run by another version.*--rerun"):
            run_suite(suite, tmp_path, methods=["bench_iterate"], seeds=[0], progress=False,
                      on_cell=lambda cell, outcome: ran.append(cell.key))
        assert ran == []
        run_suite(suite, tmp_path, methods=["bench_iterate"], seeds=[0], progress=False, rerun=True,
                  on_cell=lambda cell, outcome: ran.append(cell.key))
        assert ran == ["bench_iterate | src->tgt | seed 0"]
        second = json.loads((tmp_path / "bench-toy.json").read_text())["cells"]["bench_iterate | src->tgt | seed 0"]
        assert second["code"] != first["code"]
    finally:
        unregister_method("bench_iterate")


def test_changed_code_of_the_suites_own_backbone_is_reported_for_the_deep_cells(toy_suite, tmp_path, fresh_backbones):
    """A backbone of a plugin's, named by [deep] arch: an edit of it had kept every cell
    without a word (dalib's own backbones are in dalib's code hash)."""
    from dalib.registry import load_plugin_module

    plugin = tmp_path / "net.py"
    source = ("import torch.nn as nn\nfrom dalib.models import register_backbone\n"
              "@register_backbone('bench_net')\ndef build(input_shape, pretrained):\n"
              "    return nn.Sequential(nn.Linear(input_shape[0], 16), nn.ReLU())\n")
    plugin.write_text(source)
    load_plugin_module(str(plugin))
    toy_suite.write_text(toy_suite.read_text().replace("[deep]\n", '[deep]\narch = "bench_net"\n'))
    suite = load_suite(str(toy_suite))
    path = run_suite(suite, tmp_path, methods=["source_only"], seeds=[0], progress=False)
    codes = {k: c["code"] for k, c in json.loads(path.read_text())["cells"].items()}
    plugin.write_text(source.replace("16", "24"))
    load_plugin_module(str(plugin))
    with pytest.warns(RuntimeWarning, match=r"cells of source_only were run by another version of the method's code "
                                            r"or of the backbone bench_net .*--rerun --methods source_only"):
        run_suite(suite, tmp_path, methods=["source_only"], seeds=[0], progress=False)
    ran = []
    run_suite(suite, tmp_path, methods=["source_only"], seeds=[0], progress=False, rerun=True,
              on_cell=lambda cell, outcome: ran.append(cell.key))
    assert "source_only | src->tgt | seed 0" in ran
    now = {k: c["code"] for k, c in json.loads(path.read_text())["cells"].items()}
    assert now["source_only | src->tgt | seed 0"] != codes["source_only | src->tgt | seed 0"]
    # the shallow cells use no backbone: their code is the method's alone
    assert now["source_only (shallow, 1nn) | src->tgt | seed 0"] == codes["source_only (shallow, 1nn) | src->tgt | seed 0"]


def test_cells_made_by_another_version_of_dalib_are_reported(toy_suite, tmp_path, monkeypatch):
    from dalib_benchmarks import suite as suite_module

    suite = load_suite(str(toy_suite))
    run_suite(suite, tmp_path, methods=["source_only"], seeds=[0], progress=False)
    cells = json.loads((tmp_path / "bench-toy.json").read_text())["cells"]
    assert len(cells) == 2  # source_only's deep and shallow forms
    assert {c["dalib_code"] for c in cells.values()} == {suite_module.dalib_code_hash()}  # the package's source
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same dalib: nothing to report
        run_suite(suite, tmp_path, methods=["source_only"], seeds=[0], progress=False)
    # dalib's runner changes under the kept cells: they stay, with a warning that says how to re-run them
    monkeypatch.setattr(suite_module, "dalib_code_hash", lambda: "another-version")
    ran = []
    with pytest.warns(RuntimeWarning, match=r"2 finished cell\(s\) were run by another version of dalib .*--rerun"):
        run_suite(suite, tmp_path, methods=["source_only"], seeds=[0], progress=False,
                  on_cell=lambda cell, outcome: ran.append(cell.key))
    assert ran == []
    # a file from before the cells recorded dalib's version: said so too, not counted as this dalib's
    state = json.loads((tmp_path / "bench-toy.json").read_text())
    for cell in state["cells"].values():
        del cell["dalib_code"]
    (tmp_path / "bench-toy.json").write_text(json.dumps(state))
    with pytest.warns(RuntimeWarning, match=r"2 finished cell\(s\) were run by a dalib that did not record the version "
                                            r"of its code .*--rerun runs them again") as said:
        run_suite(suite, tmp_path, methods=["source_only"], seeds=[0], progress=False,
                  on_cell=lambda cell, outcome: ran.append(cell.key))
    assert ran == []
    assert not [w for w in said if "another version of dalib" in str(w.message)]  # (not both of one cell)

    def killed_after_one(cell, outcome):
        ran.append(cell.key)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # a re-run killed after its first cell ...
        run_suite(suite, tmp_path, methods=["source_only"], seeds=[0], progress=False, rerun=True,
                  on_cell=killed_after_one)
    run_suite(suite, tmp_path, methods=["source_only"], seeds=[0], progress=False, rerun=True,
              on_cell=lambda cell, outcome: ran.append(cell.key))
    assert sorted(ran) == sorted(cells)  # ... resumes: each cell re-ran once
    cells = json.loads((tmp_path / "bench-toy.json").read_text())["cells"]
    assert {c["dalib_code"] for c in cells.values()} == {"another-version"}
    again = []  # a re-run that completed is over: the next --rerun runs every cell again (current ones too)
    run_suite(suite, tmp_path, methods=["source_only"], seeds=[0], progress=False, rerun=True,
              on_cell=lambda cell, outcome: again.append(cell.key))
    assert sorted(again) == sorted(cells)


def test_a_rerun_of_other_cells_neither_skips_its_own_nor_ends_a_killed_one(toy_suite, tmp_path):
    """A killed --rerun of source_only's cells, then a --rerun of dann's: the file kept one start
    time for any re-run, so dann's cells finished since counted as re-run already and ran no
    more, and the second re-run's end took away the first one's resume point."""
    suite = load_suite(str(toy_suite))
    run_suite(suite, tmp_path, methods=["source_only"], seeds=[0], progress=False)
    ran = []

    def killed_after_one(cell, outcome):
        ran.append(cell.key)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_suite(suite, tmp_path, methods=["source_only"], seeds=[0], progress=False, rerun=True,
                  on_cell=killed_after_one)
    run_suite(suite, tmp_path, methods=["dann"], seeds=[0], progress=False)  # dann's cells finish after it
    dann = []
    run_suite(suite, tmp_path, methods=["dann"], seeds=[0], progress=False, rerun=True,
              on_cell=lambda cell, outcome: dann.append(cell.key))
    assert dann == ["dann | src->tgt | seed 0"]  # re-run, not kept as re-run already
    run_suite(suite, tmp_path, methods=["source_only"], seeds=[0], progress=False, rerun=True,
              on_cell=lambda cell, outcome: ran.append(cell.key))
    cells = [k for k in json.loads((tmp_path / "bench-toy.json").read_text())["cells"] if k.startswith("source_only")]
    assert len(cells) == 2 and sorted(ran) == sorted(cells)  # the killed re-run resumed: each cell once
    assert "rerun_started" not in json.loads((tmp_path / "bench-toy.json").read_text())


@pytest.mark.parametrize("text,fragment", [
    ('deep = 5', "[deep] must be a table"),
    ('shallow = 3', "[shallow] must be a table"),
    ('dataset = 5', "dataset must be a string"),
    ('[methods]\ndann = 3', "[methods.dann] must be a table of hyperparameters"),
    ('[shallow]\nclassifiers = "1nn"', "classifiers must be a list"),
    ('[deep]\nbogus = 1', "unknown [deep] option(s) bogus"),
    # a misspelt [shallow] key had run 1-NN alone; a key set twice had kept the deep table's
    ('[shallow]\nclassifier = ["linear"]', "unknown [shallow] option(s) classifier; valid: classifiers"),
    ('[deep]\n[methods.coral]\ntrade_off = 3.0\n[methods.coral.deep]\ntrade_off = 2.0',
     "[methods.coral] sets trade_off both in the table and in [methods.coral.deep]: set each once"),
])
def test_a_suite_file_of_wrong_types_is_one_line(tmp_path, toy_dataset, text, fragment):
    base = 'dataset = "toy-shift"\ntasks = ["src->tgt"]\n'
    if text.startswith("dataset"):
        base = 'tasks = ["src->tgt"]\n'
    path = tmp_path / "bad.toml"
    path.write_text(base + text + "\n")
    _one_line_error(CliRunner().invoke(cli, ["bench", str(path), "--out", str(tmp_path / "o")]), fragment)


def test_a_bad_device_or_data_root_fails_before_any_cell(toy_suite, tmp_path):
    out = tmp_path / "o"
    _one_line_error(CliRunner().invoke(cli, ["bench", "digits", "--device", "tpu", "--out", str(out)]), "tpu")
    _one_line_error(CliRunner().invoke(cli, ["bench", "office-caltech-surf", "--data-root", str(tmp_path / "nowhere"),
                                             "--out", str(out)]), "nowhere")
    assert not out.exists()  # nor an empty folder
    for args in (["--methods", "danm"], ["--tasks", "X->Y"], ["--jobs", "0"], ["--steps", "0"]):
        assert CliRunner().invoke(cli, ["bench", "digits", *args, "--out", str(out)]).exit_code == 2
        assert not out.exists(), args


def test_a_damaged_cell_in_a_results_file_is_one_line(toy_suite, tmp_path):
    out = tmp_path / "o"
    path = run_suite(load_suite(str(toy_suite)), out, methods=["source_only"], seeds=[0], progress=False)
    state = json.loads(path.read_text())
    key = next(iter(state["cells"]))
    state["cells"][key]["target_accuracy"] = "high"
    path.write_text(json.dumps(state))
    _one_line_error(CliRunner().invoke(cli, ["bench", str(toy_suite), "--methods", "source_only", "--seeds", "0",
                                             "--out", str(out)]), f"its cell {key!r} is damaged")


def test_a_second_bench_into_the_same_results_file_is_refused_while_the_first_writes(toy_suite, tmp_path):
    """Each bench writes its whole copy of the cells after every cell: two at once into one
    results file would drop each other's cells, so the second is a one-line error."""
    import subprocess
    import sys

    suite = load_suite(str(toy_suite))
    run_suite(suite, tmp_path, methods=["source_only"], seeds=[0], progress=False)
    path = tmp_path / "bench-toy.json"
    before = path.read_text()
    lock = tmp_path / ".bench-toy.json.lock"
    writer = subprocess.Popen(  # a live bench's claim: its id, under its flock
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
                               "fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR)\n"
                               "fcntl.flock(fd, fcntl.LOCK_EX)\n"
                               "os.write(fd, str(os.getpid()).encode())\n"
                               "print('held', flush=True)\n"
                               "time.sleep(60)\n", str(lock)], stdout=subprocess.PIPE, text=True)
    others = tmp_path / f".bench-toy-steps3.json.dalib-tmp{writer.pid + 10**6}"  # another suite's, being written
    try:
        assert writer.stdout.readline() == "held\n"
        others.write_text("half")
        res = CliRunner().invoke(cli, ["bench", str(toy_suite), "--methods", "coral", "--seeds", "0",
                                       "--out", str(tmp_path), "--quiet"])
        assert res.exit_code == 2, res.output
        assert f"bench-toy.json is being written by another dalib bench (process {writer.pid}): wait" in res.stderr
        assert path.read_text() == before and others.read_text() == "half"
        # another --out, or the same suite with --steps (a results file of its own), is free
        run_suite(suite, tmp_path, methods=["source_only"], seeds=[0], steps=3, progress=False)
    finally:
        writer.kill()
        writer.wait()
        writer.stdout.close()
    # a claim whose process is gone is taken over, and given back at the end
    run_suite(suite, tmp_path, methods=["coral"], seeds=[0], progress=False)
    assert not lock.exists() and "coral | src->tgt | seed 0" in json.loads(path.read_text())["cells"]


def test_tasks_outside_the_suite_are_refused_and_a_copy_of_a_builtin_suite_keeps_off_its_results(toy_suite, tmp_path):
    res = CliRunner().invoke(cli, ["bench", str(toy_suite), "--tasks", "src->src", "--out", str(tmp_path), "--quiet"])
    assert res.exit_code == 2 and "--tasks src->src: not a task of suite toy (src->tgt)" in res.stderr
    res = CliRunner().invoke(cli, ["bench", str(tmp_path / "none.toml"), "--out", str(tmp_path), "--quiet"])
    assert res.exit_code == 2 and "suite file not found:" in res.stderr
    assert not list(tmp_path.glob("bench-*")) and not list(tmp_path.glob(".bench-*"))  # nothing written
    # a copy of a built-in suite (the way to start one's own) runs into an --out of its own, but never
    # into a folder that holds the built-in's results
    copy = tmp_path / "suites" / "digits.toml"
    copy.parent.mkdir()
    copy.write_text(toy_suite.read_text())
    args = ["--methods", "source_only", "--seeds", "0", "--quiet"]
    res = CliRunner().invoke(cli, ["bench", str(copy), *args, "--out", str(tmp_path / "mine")])
    assert res.exit_code == 0, res.output
    theirs = tmp_path / "theirs" / "bench-digits.json"
    theirs.parent.mkdir()
    theirs.write_text(json.dumps({"format": 1, "cells": {}, "suite_file": "benchmarks/suites/digits.toml"}))
    _one_line_error(CliRunner().invoke(cli, ["bench", str(copy), *args, "--out", str(theirs.parent)]),
                    "holds the results of suite file benchmarks/suites/digits.toml")
    # an older dalib recorded a suite file by the name it was given, without its folder: which file
    # that was cannot be told, and "another suite file" sent the user looking for one that is not there
    theirs.write_text(json.dumps({"format": 1, "cells": {}, "suite_file": "digits.toml"}))
    _one_line_error(CliRunner().invoke(cli, ["bench", str(copy), *args, "--out", str(theirs.parent)]),
                    f"{theirs} was written by an older dalib, which recorded its suite file as digits.toml without the "
                    f"folder: whether that is {copy} cannot be told; give this one another --out")


def test_another_suite_file_of_the_same_name_does_not_take_over_its_results(toy_suite, tmp_path, monkeypatch):
    out = tmp_path / "results"
    args = ["--methods", "source_only", "--seeds", "0", "--out", str(out), "--quiet"]
    monkeypatch.chdir(tmp_path)
    assert CliRunner().invoke(cli, ["bench", "toy.toml", *args]).exit_code == 0  # a relative path
    before = (out / "bench-toy.json").read_text()
    other = tmp_path / "elsewhere" / "toy.toml"  # same name, other settings: its cells would replace these
    other.parent.mkdir()
    other.write_text(TOY_SUITE.replace("steps = 15", "steps = 5"))
    monkeypatch.chdir(other.parent)
    _one_line_error(CliRunner().invoke(cli, ["bench", "toy.toml", *args]),
                    f"{out / 'bench-toy.json'} holds the results of suite file {toy_suite.resolve()}, not toy.toml",
                    "another --out")
    assert (out / "bench-toy.json").read_text() == before
    # the same file resumes from another working directory, by its absolute path or through a link
    link = tmp_path / "link.toml"
    link.symlink_to(toy_suite)
    for name in (str(toy_suite.resolve()), str(link)):
        assert CliRunner().invoke(cli, ["bench", name, *args]).exit_code == 0
        assert json.loads((out / "bench-toy.json").read_text())["cells"] == json.loads(before)["cells"]
    # the other one runs into its own --out; a suite file that moved takes its results along
    assert CliRunner().invoke(cli, ["bench", "toy.toml", *args[:-3], "--out", str(tmp_path / "other"),
                                    "--quiet"]).exit_code == 0
    moved = tmp_path / "moved" / "toy.toml"
    moved.parent.mkdir()
    toy_suite.rename(moved)
    assert CliRunner().invoke(cli, ["bench", str(moved), *args]).exit_code == 0
    assert json.loads((out / "bench-toy.json").read_text())["cells"] == json.loads(before)["cells"]


def test_a_done_cell_without_a_number_is_damaged_not_a_traceback(toy_suite, tmp_path):
    res = CliRunner().invoke(cli, ["bench", str(toy_suite), "--methods", "source_only", "--seeds", "0", "--out",
                                   str(tmp_path), "--quiet"])
    assert res.exit_code == 0, res.output
    path = tmp_path / "bench-toy.json"
    for edit in (lambda c: c.update(target_accuracy=None), lambda c: c.pop("target_accuracy")):
        state = json.loads(path.read_text())
        edit(state["cells"]["source_only | src->tgt | seed 0"])
        path.write_text(json.dumps(state))
        _one_line_error(CliRunner().invoke(cli, ["bench", str(toy_suite), "--methods", "source_only", "--seeds", "0",
                                                 "--out", str(tmp_path), "--quiet"]),
                        "its cell 'source_only | src->tgt | seed 0' is damaged")


def test_the_reproduce_line_names_files_by_absolute_paths(toy_suite, tmp_path, monkeypatch):
    """A suite, an output folder and a plugin given by relative paths: the table's command
    works from any folder, not only the one it was run in."""
    from dalib.registry import unregister_method

    work = tmp_path / "work"
    work.mkdir()
    (work / "mine.toml").write_text(toy_suite.read_text())
    _plugin_file(work / "extra.py", "bench_relative", "return {'total': self.source_loss(batch, out)}")
    monkeypatch.chdir(work)
    try:
        res = CliRunner().invoke(cli, ["bench", "mine.toml", "--plugin", "extra.py", "--methods", "bench_relative",
                                       "--seeds", "0", "--out", "out", "--quiet"])
    finally:
        unregister_method("bench_relative")
    assert res.exit_code == 0, res.output
    md = (work / "out" / "bench-mine.md").read_text()
    assert (f"Reproduce: `dalib bench {work / 'mine.toml'} --methods bench_relative --seeds 0 --out {work / 'out'} "
            f"--plugin {work / 'extra.py'}`") in md


def test_a_narrowed_run_names_each_cell_once_and_answers_for_its_own_cells(toy_suite, tmp_path):
    """A task or seed given twice is one cell; a failed cell of another method, kept in the file,
    is no failure of this run (the table still lists it)."""
    from dalib.registry import unregister_method

    buggy = _plugin_file(tmp_path / "buggy.py", "bench_buggy_kept", "return {}['total']")
    try:
        res = CliRunner().invoke(cli, ["bench", str(toy_suite), "--plugin", buggy, "--methods", "bench_buggy_kept",
                                       "--seeds", "0", "--out", str(tmp_path), "--quiet"])
        assert res.exit_code == 1 and "1 cell(s) failed" in res.stderr
        ran = []
        run_suite(load_suite(str(toy_suite)), tmp_path, methods=["source_only"], tasks=["src->tgt", "src:tgt"],
                  seeds=[0, 0], progress=False, on_cell=lambda cell, outcome: ran.append(cell.key))
        assert sorted(ran) == ["source_only (shallow, 1nn) | src->tgt | seed 0", "source_only | src->tgt | seed 0"]
        res = CliRunner().invoke(cli, ["bench", str(toy_suite), "--methods", "source_only", "--seeds", "0",
                                       "--out", str(tmp_path), "--quiet"])
        assert res.exit_code == 0, res.output
        md = (tmp_path / "bench-toy.md").read_text()
        assert "`bench_buggy_kept` on src→tgt: KeyError" in md
        assert f"--plugin {buggy}" in md  # the Reproduce line knows the method only with it
    finally:
        unregister_method("bench_buggy_kept")


def test_steps_for_a_suite_without_deep_runs_are_refused(tmp_path, toy_dataset):
    path = tmp_path / "shallow.toml"
    path.write_text(toy_suite_text('[shallow]\nclassifiers = ["1nn"]\n'))
    _one_line_error(CliRunner().invoke(cli, ["bench", str(path), "--methods", "source_only", "--steps", "20",
                                             "--out", str(tmp_path), "--quiet"]),
                    "--steps sets the deep runs' steps, and suite shallow has no [deep] table")


def test_a_suite_of_ones_own_images(tmp_path):
    """A suite over an image folder names it in [deep]: data = "..."."""
    from PIL import Image

    for domain, shade in (("real", 60), ("sketch", 120)):
        for cls, extra in (("cat", 0), ("dog", 100)):
            for i in range(4):
                path = tmp_path / "imgs" / domain / cls / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (8, 8), (shade + extra + i, 0, 0)).save(path)
    suite = tmp_path / "mine.toml"
    suite.write_text(f"""
title = "my images"
dataset = "image-folder"
tasks = ["real->sketch"]
seeds = [0]
[deep]
data = "{tmp_path / 'imgs'}"
arch = "lenet"
image_size = 16
steps = 3
batch_size = 4
""")
    res = CliRunner().invoke(cli, ["bench", str(suite), "--methods", "source_only", "--out", str(tmp_path / "r"),
                                   "--quiet"])
    assert res.exit_code == 0, res.output
    cell = json.loads((tmp_path / "r" / "bench-mine.json").read_text())["cells"]["source_only | real->sketch | seed 0"]
    assert cell["status"] == "done" and 0 <= cell["target_accuracy"] <= 100


def test_the_table_says_when_its_cells_do_not_fill_a_rectangle(toy_suite, tmp_path):
    """Uneven seeds: the mean over tasks is over the seeds that finished every task, and a row
    without a mean is not in the chart; the Reproduce command is then a superset."""
    from dalib_benchmarks.report import markdown

    suite = load_suite(str(toy_suite))

    def cell(v, src, tgt, seed):
        return {"variant": v, "method": v, "mode": "deep", "src": src, "tgt": tgt, "seed": seed, "status": "done",
                "target_accuracy": 50.0 + seed, "seconds": 1.0}

    cells = {f"{v} | {a}->{b} | seed {k}": cell(v, a, b, k)
             for v, a, b, k in (("source_only", "src", "tgt", 0), ("source_only", "src", "tgt", 1),
                                ("source_only", "tgt", "src", 0), ("coral", "src", "tgt", 0))}
    state = {"cells": cells, "machine": {}, "jobs_used": [1, 2], "wall_seconds": 120.0}
    text = markdown(suite, state, Summary(state), "chart.png")
    assert "The mean over tasks of `source_only` is over the seeds that finished every task" in text
    assert "Not in the chart (no seed finished every task): `coral`." in text
    assert "2.0 min of wall time with `--jobs 1` and `--jobs 2`" in text
    # the command runs the shallow rows of both methods too (the suite has [shallow])
    assert "the file holds 4 of its 16 cells (its runs chose fewer, or stopped early), so the command runs the others" in text
    for v, a, b, k in (("source_only", "tgt", "src", 1), ("coral", "src", "tgt", 1), ("coral", "tgt", "src", 0),
                       ("coral", "tgt", "src", 1)):
        cells[f"{v} | {a}->{b} | seed {k}"] = cell(v, a, b, k)
    text = markdown(suite, state, Summary(state), "chart.png")
    assert "the file holds 8 of its 16 cells" in text
    assert "Not in the chart" not in text and "seeds that finished" not in text
    for key, deep in list(cells.items()):
        v = f"{deep['method']} (shallow, 1nn)"
        cells[key.replace(deep["variant"], v)] = deep | {"variant": v, "mode": "shallow", "classifier": "1nn"}
    assert "the file holds" not in markdown(suite, state, Summary(state), "chart.png")


def test_a_row_whose_cells_ran_with_different_hyperparameters_names_each_setting(toy_suite):
    """The suite file changed between runs that chose some of a method's cells: the Settings
    table had named the last cell's hyperparameters as the row's, for all tasks."""
    from dalib_benchmarks.report import markdown

    suite = load_suite(str(toy_suite))

    def cell(src, tgt, trade_off):
        return {"variant": "coral", "method": "coral", "mode": "deep", "src": src, "tgt": tgt, "seed": 0,
                "status": "done", "target_accuracy": 50.0, "seconds": 1.0, "method_config": {"trade_off": trade_off}}

    state = {"cells": {"a": cell("src", "tgt", 5.0), "b": cell("tgt", "src", 7.0)}, "machine": {}}
    text = markdown(suite, state, Summary(state), None)
    row = next(line for line in text.splitlines() if line.startswith("| `coral` |") and "trade_off" in line)
    assert "trade_off = 5.0 (src->tgt); trade_off = 7.0 (tgt->src)" in row.replace("→", "->")
    assert "The cells of `coral` ran with different hyperparameters" in text and "`--methods coral`" in text
    state["cells"]["b"]["method_config"] = {"trade_off": 5.0}  # one setting: the row names it, no note
    text = markdown(suite, state, Summary(state), None)
    assert "| `coral` | trade_off = 5.0 |" in text and "different hyperparameters" not in text


def test_cells_the_suite_no_longer_runs_stay_in_the_json_but_leave_the_table(toy_suite, tmp_path):
    """A suite edited to skip a method (or to drop a task, a form, a classifier): its old cells had
    stayed in the table, and the Reproduce line asked for a method the suite now refuses."""
    run_suite(load_suite(str(toy_suite)), tmp_path, methods=["source_only", "dann"], seeds=[0], progress=False)
    fewer = tmp_path / "toy.toml"
    fewer.write_text(TOY_SUITE.replace('finetune = "not unsupervised"', 'finetune = "not unsupervised"\ndann = "dropped"'))
    run_suite(load_suite(str(fewer)), tmp_path, methods=["source_only"], seeds=[0], progress=False)
    assert len(json.loads((tmp_path / "bench-toy.json").read_text())["cells"]) == 3  # dann's cell stays
    md = (tmp_path / "bench-toy.md").read_text()
    assert "| dann |" not in md and "--methods source_only --seeds 0 " in md  # dann (skipped) not asked for
    assert "1 finished cell(s) of bench-toy.json belong to tasks, methods, forms or seeds" in md


def test_an_image_folder_named_by_the_suite_is_part_of_a_cells_settings(tmp_path):
    from dalib.runner import RunConfig
    from dalib_benchmarks.suite import cell_fingerprint

    a, b = (RunConfig(method="source_only", dataset="image-folder", data=str(tmp_path / d), src="x", tgt="y")
            for d in ("imgA", "imgB"))
    assert cell_fingerprint(a) != cell_fingerprint(b)
    digits = RunConfig(method="source_only", dataset="digits", src="mnist", tgt="usps")
    assert cell_fingerprint(digits) == cell_fingerprint(dataclasses.replace(digits, data_root=str(tmp_path)))


def test_a_suites_relative_image_folder_is_the_folder_it_names_from_where_it_runs(tmp_path, monkeypatch):
    """data = "imgs" from two working directories is two folders: the cells of the first had
    been kept, beside the second's, in one table, and both recorded as "imgs"."""
    from dalib_benchmarks.suite import cell_fingerprint

    suite = tmp_path / "mine.toml"
    suite.write_text('dataset = "image-folder"\ntasks = ["real->sketch"]\nseeds = [0]\n[deep]\ndata = "imgs"\n'
                     'steps = 3\n')
    fingerprints = []
    for here in ("a", "b"):
        (tmp_path / here).mkdir()
        monkeypatch.chdir(tmp_path / here)
        loaded = load_suite(str(suite))
        assert loaded.deep["data"] == str(tmp_path / here / "imgs")
        cell = Cell(loaded.variants(["source_only"])[0], ("real", "sketch"), 0)
        fingerprints.append(cell_fingerprint(loaded.run_config(cell, steps=None, data_root=None, device=None)))
    assert fingerprints[0] != fingerprints[1]


def test_cells_of_an_older_dalib_that_named_the_folder_as_written_are_kept(tmp_path, monkeypatch):
    """Results files from before a suite's relative image folder was recorded by where it is:
    their cells, fingerprinted with data = "imgs", are kept (as that dalib kept them from the
    working directory), with a word, not run again in silence."""
    from PIL import Image

    from dalib_benchmarks.suite import cell_fingerprint

    for domain in ("real", "sketch"):
        for c in ("cat", "dog"):
            for i in range(3):
                path = tmp_path / "imgs" / domain / c / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (8, 8), (40 * i + (100 if c == "dog" else 0), 0, 0)).save(path)
    suite = tmp_path / "mine.toml"
    suite.write_text('dataset = "image-folder"\ntasks = ["real->sketch"]\nseeds = [0]\n[deep]\ndata = "imgs"\n'
                     'arch = "lenet"\nimage_size = 8\nsteps = 2\nbatch_size = 3\n')
    monkeypatch.chdir(tmp_path)
    loaded = load_suite(str(suite))
    run_suite(loaded, tmp_path / "r", methods=["source_only"], progress=False)
    results = tmp_path / "r" / "bench-mine.json"
    state = json.loads(results.read_text())
    cell = state["cells"]["source_only | real->sketch | seed 0"]
    config = loaded.run_config(Cell(loaded.variants(["source_only"])[0], ("real", "sketch"), 0), steps=None,
                               data_root=None, device=None)
    cell["fingerprint"] = cell_fingerprint(dataclasses.replace(config, data="imgs"))  # as an older dalib wrote it
    cell["run_options"]["data"] = "imgs"
    results.write_text(json.dumps(state))
    ran = []
    with pytest.warns(RuntimeWarning, match=r"^1 finished cell\(s\) from an older dalib name the image folder as the "
                                           r"suite writes it, 'imgs', not by where it is: they are kept"):
        run_suite(loaded, tmp_path / "r", methods=["source_only"], progress=False,
                  on_cell=lambda cell, outcome: ran.append(cell.key))
    assert ran == []
    # from another directory, the same words are another folder: the cell runs again there
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "imgs").symlink_to(tmp_path / "imgs")
    monkeypatch.chdir(tmp_path / "elsewhere")
    run_suite(load_suite(str(suite)), tmp_path / "r", methods=["source_only"], progress=False,
              on_cell=lambda cell, outcome: ran.append(cell.key))
    assert ran == ["source_only | real->sketch | seed 0"]


def test_a_rerun_resumed_after_the_code_changed_runs_the_cells_of_the_old_code_again(toy_suite, tmp_path, monkeypatch):
    """A killed --rerun keeps the cells it finished; those made by code that has changed since
    were kept too (and a warning then told to --rerun, which had just been given)."""
    from dalib.registry import load_plugin_module, unregister_method

    plugin = tmp_path / "iterate.py"
    suite = load_suite(str(toy_suite))
    try:
        load_plugin_module(_plugin_file(plugin, "bench_rerun", "return {'total': self.source_loss(batch, out)}"))
        run_suite(suite, tmp_path, methods=["bench_rerun"], progress=False)
        path = tmp_path / "bench-toy.json"
        state = json.loads(path.read_text())
        since = min(c["finished"] for c in state["cells"].values()) - 1  # a --rerun killed after them
        state["rerun_started"] = dict.fromkeys(state["cells"], since)
        path.write_text(json.dumps(state))
        load_plugin_module(_plugin_file(plugin, "bench_rerun", "return {'total': 2 * self.source_loss(batch, out)}"))
        ran = []
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no warning that the code changed: every such cell runs again
            run_suite(suite, tmp_path, methods=["bench_rerun"], progress=False, rerun=True,
                      on_cell=lambda cell, outcome: ran.append(cell.key))
        assert sorted(ran) == sorted(state["cells"])
        # so are those made by another version of dalib's own code (its runner, losses, data)
        from dalib_benchmarks import suite as suite_module

        state = json.loads(path.read_text())
        since = min(c["finished"] for c in state["cells"].values()) - 1
        state["rerun_started"] = dict.fromkeys(state["cells"], since)
        path.write_text(json.dumps(state))
        monkeypatch.setattr(suite_module, "dalib_code_hash", lambda: "a-later-dalib")
        ran = []
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            run_suite(suite, tmp_path, methods=["bench_rerun"], progress=False, rerun=True,
                      on_cell=lambda cell, outcome: ran.append(cell.key))
        assert sorted(ran) == sorted(state["cells"])
    finally:
        unregister_method("bench_rerun")


def test_a_cell_that_failed_runs_again_on_the_next_run(toy_suite, tmp_path, monkeypatch):
    """A failure may pass (out of memory, a worker killed, a plugin's bug since mended): the next
    run of the suite, a resume or the same command, runs the failed cells again, not the others."""
    import dalib.runner
    from dalib.errors import DataError

    real = dalib.runner.run

    def out_of_memory(config, *args, **kwargs):
        if config.method == "dann":
            raise DataError("out of memory (as a run says it)")
        return real(config, *args, **kwargs)

    suite = load_suite(str(toy_suite))
    monkeypatch.setattr(dalib.runner, "run", out_of_memory)
    run_suite(suite, tmp_path, methods=["source_only", "dann"], seeds=[0], progress=False)
    cells = json.loads((tmp_path / "bench-toy.json").read_text())["cells"]
    failed = sorted(k for k, c in cells.items() if c["status"] == "failed")
    assert failed and all(k.startswith("dann") for k in failed)
    monkeypatch.setattr(dalib.runner, "run", real)
    ran = []
    run_suite(suite, tmp_path, methods=["source_only", "dann"], seeds=[0], progress=False,
              on_cell=lambda cell, outcome: ran.append((cell.key, outcome["status"])))
    assert sorted(ran) == [(k, "done") for k in failed]


def test_cells_this_run_did_not_choose_whose_settings_changed_are_reported(toy_suite, tmp_path):
    """A narrowed run leaves the other methods' cells as they are: where the suite changed their
    settings since, they had stayed in the table without a word."""
    run_suite(load_suite(str(toy_suite)), tmp_path, methods=["source_only", "dann"], seeds=[0], progress=False)
    toy_suite.write_text(TOY_SUITE.replace("hidden = 32", "hidden = 16"))
    ran = []
    with pytest.warns(RuntimeWarning, match=r"1 finished cell\(s\) of dann that this run did not choose were run with "
                                            r"other settings.*--methods dann"):
        run_suite(load_suite(str(toy_suite)), tmp_path, methods=["source_only"], seeds=[0], progress=False,
                  on_cell=lambda cell, outcome: ran.append(cell.key))
    assert ran == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same settings: nothing to report
        run_suite(load_suite(str(toy_suite)), tmp_path, methods=["dann"], seeds=[0], progress=False)
        run_suite(load_suite(str(toy_suite)), tmp_path, methods=["source_only"], seeds=[0], progress=False)


def test_a_seed_taken_out_of_the_suite_leaves_the_table_and_one_that_seeds_added_stays(toy_suite, tmp_path):
    """Cells of a seed the suite no longer lists had stayed in the table (its mean mixed in a seed,
    and settings, outside the suite); where their settings had changed, the warning's remedy,
    a plain --methods, never ran them. A seed run by --seeds beside the suite's still counts."""
    suite = load_suite(str(toy_suite))
    path = run_suite(suite, tmp_path, methods=["source_only", "dann"], seeds=[0, 1], progress=False)
    run_suite(suite, tmp_path, methods=["source_only", "dann"], seeds=[3], progress=False)  # beside the suite's
    table = path.with_suffix(".md")
    assert "over seeds 0, 1, 3" in table.read_text()
    toy_suite.write_text(TOY_SUITE.replace("seeds = [0, 1]", "seeds = [1, 2]"))
    suite = load_suite(str(toy_suite))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_suite(suite, tmp_path, methods=["source_only", "dann"], progress=False)
    state = json.loads(path.read_text())
    assert {c["seed"] for c in state["cells"].values()} == {0, 1, 2, 3}  # kept in the JSON
    text = table.read_text()
    assert "over seeds 1, 2, 3" in text
    assert "belong to tasks, methods, forms or seeds that" in text
    accs = [c["target_accuracy"] for c in state["cells"].values() if c["variant"] == "source_only" and c["seed"] != 0]
    mean, std = statistics.mean(accs), statistics.stdev(accs)
    row = next(line for line in text.splitlines() if line.startswith("| `source_only` |"))
    assert row.startswith(f"| `source_only` | {mean:.1f} ± {std:.{2 if std < 0.05 else 1}f} |"), row
    # dann's settings changed: its cell of the added seed, not chosen, is stale; the remedy names
    # the seeds that run it (seed 0's cell, out of the table, is not reported)
    toy_suite.write_text(TOY_SUITE.replace("seeds = [0, 1]", "seeds = [1, 2]").replace("hidden = 32", "hidden = 16"))
    with pytest.warns(RuntimeWarning, match=r"^1 finished cell\(s\) of dann .* --methods dann --seeds 1,2,3 \(with "
                                            r"this run's --tasks, or none\) runs them again"):
        run_suite(load_suite(str(toy_suite)), tmp_path, methods=["dann"], progress=False)


def test_a_bad_device_in_the_suite_file_fails_before_any_cell(toy_suite, tmp_path):
    """The [deep] device is checked as --device is: with --rerun, a typo had failed (and replaced)
    every finished cell."""
    path = run_suite(load_suite(str(toy_suite)), tmp_path, methods=["source_only"], seeds=[0], progress=False)
    before = path.read_text()
    toy_suite.write_text(TOY_SUITE.replace("[deep]\n", '[deep]\ndevice = "gpu"\n'))
    _one_line_error(CliRunner().invoke(cli, ["bench", str(toy_suite), "--methods", "source_only", "--seeds", "0",
                                             "--rerun", "--out", str(tmp_path), "--quiet"]),
                    "suite toy: [deep] device: bad device 'gpu'")
    assert path.read_text() == before
    # --device stands for the suite's device, as --steps for its steps
    res = CliRunner().invoke(cli, ["bench", str(toy_suite), "--methods", "source_only", "--seeds", "0",
                                   "--device", "cpu", "--out", str(tmp_path), "--quiet"])
    assert res.exit_code == 0, res.output


def test_the_chart_shows_a_published_mean_below_ours(toy_suite, tmp_path, monkeypatch):
    import matplotlib.figure

    from dalib_benchmarks.report import write_report

    toy_suite.write_text(TOY_SUITE.replace('"src->tgt" = 50.0', '"src->tgt" = 5.0'))
    cell = {"variant": "source_only (shallow, 1nn)", "method": "source_only", "mode": "shallow", "classifier": "1nn",
            "src": "src", "tgt": "tgt", "seed": 0, "status": "done", "target_accuracy": 60.0, "seconds": 1.0}
    path = tmp_path / "bench-toy.json"
    path.write_text(json.dumps({"format": 1, "cells": {"c": cell}, "machine": {}}))
    limits = []  # the x-axis of the chart as saved
    real = matplotlib.figure.Figure.savefig

    def spy(self, *args, **kwargs):
        limits.append(self.axes[0].get_xlim())
        return real(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    write_report(load_suite(str(toy_suite)), path)
    (lo, hi), = limits
    assert lo < 5.0 < 60.0 < hi <= 100 and path.with_suffix(".png").is_file()


def test_a_plugin_that_exits_fails_its_own_cells_and_ctrl_c_still_stops_the_suite(toy_suite, tmp_path):
    """sys.exit in a plugin's loss had ended the whole suite, with no word and no other method run."""
    from dalib.registry import load_plugin_module, unregister_method

    exits = _plugin_file(tmp_path / "exits.py", "bench_exits", "raise SystemExit(3)")
    interrupted = _plugin_file(tmp_path / "interrupted.py", "bench_interrupted", "raise KeyboardInterrupt")
    try:
        res = CliRunner().invoke(cli, ["bench", str(toy_suite), "--plugin", exits, "--methods", "bench_exits,source_only",
                                       "--seeds", "0", "--out", str(tmp_path), "--quiet"])
        assert res.exit_code == 1, res.output
        assert res.stderr.strip().splitlines()[-1].startswith("dalib: error: 1 cell(s) failed")
        cells = json.loads((tmp_path / "bench-toy.json").read_text())["cells"]
        assert cells["bench_exits | src->tgt | seed 0"]["error"] == "SystemExit: 3"
        assert cells["source_only | src->tgt | seed 0"]["status"] == "done"
        load_plugin_module(interrupted)
        with pytest.raises(KeyboardInterrupt):
            run_suite(load_suite(str(toy_suite)), tmp_path, methods=["bench_interrupted"], seeds=[0], progress=False)
    finally:
        unregister_method("bench_exits")
        unregister_method("bench_interrupted")


@pytest.mark.parametrize("edit,key", [
    (lambda s: s.pop("machine"), "machine"),
    (lambda s: s.update(protocol=5), "protocol"),
    (lambda s: s.update(deep_options=[1]), "deep_options"),
    (lambda s: s.update(chosen={"seeds": ["0"]}), "chosen"),
    (lambda s: s.update(steps="x", plugins=[3]), "steps, plugins are"),
    # a traceback (unhashable type, not iterable, a float of "abc") where these were damaged
    (lambda s: s.update(extra_seeds=[[1]]), "extra_seeds"),
    (lambda s: s.update(extra_seeds=5), "extra_seeds"),
    (lambda s: s.update(rerun_started={"source_only | src->tgt | seed 0": "abc"}), "rerun_started"),
    # not of its kind and nor are its items: named once ("its plugins, plugins are")
    (lambda s: s.update(rerun_started=["abc"]), "rerun_started is"),
    (lambda s: s.update(plugins={"a": 3}), "plugins is"),
])
def test_a_damaged_top_level_of_a_results_file_is_one_line(toy_suite, tmp_path, edit, key):
    path = run_suite(load_suite(str(toy_suite)), tmp_path, methods=["source_only"], seeds=[0], progress=False)
    state = json.loads(path.read_text())
    edit(state)
    path.write_text(json.dumps(state))
    damaged = path.read_text()
    _one_line_error(CliRunner().invoke(cli, ["bench", str(toy_suite), "--methods", "source_only", "--seeds", "0",
                                             "--out", str(tmp_path), "--quiet"]),
                    f"cannot resume from {path}: its {key}", "damaged; move it away")
    assert path.read_text() == damaged


def test_a_worker_that_dies_fails_its_own_cell_and_the_others_run(tmp_path, data_root):
    """A plugin's os._exit (or the OOM killer) in a --jobs worker breaks the pool: that had been a
    traceback with no cell recorded, not even the other methods'."""
    from dalib.registry import load_plugin_module, unregister_method

    dies = _plugin_file(tmp_path / "dies.py", "bench_dies", "import os; os._exit(3)")
    load_plugin_module(dies)
    try:
        path = run_suite(load_suite("office-caltech-surf"), tmp_path, methods=["bench_dies", "source_only"],
                         tasks=["D->W"], seeds=[0], steps=5, data_root=str(data_root), jobs=2, plugins=(dies,),
                         progress=False)
    finally:
        unregister_method("bench_dies")
    cells = json.loads(path.read_text())["cells"]
    assert len(cells) == 4  # bench_dies deep; source_only deep, shallow 1nn and linear
    died = cells["bench_dies | dslr->webcam | seed 0"]
    assert died["status"] == "failed" and died["error"] == "the worker process running it died (exit code 3)"
    # the cell the other worker was running when the pool stopped it ran again, in a new pool
    assert all(c["status"] == "done" for k, c in cells.items() if k.startswith("source_only")), cells


def _bench_process(tmp_path, data_root, plugin: str, jobs: int):
    """``dalib bench`` in a process of its own, its output in tmp_path/bench.log (its workers
    inherit the file, where a pipe would keep a reader waiting on them): source_only, then a
    plugin method whose loss notes its process in tmp_path/pids and sleeps."""
    import os
    import subprocess

    temp = tmp_path / "tmp"  # its temporary folders: one killed outright leaves them, here and not in /tmp
    temp.mkdir()
    with open(tmp_path / "bench.log", "w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "dalib", "bench", "office-caltech-surf", "--plugin", plugin, "--methods",
             "source_only,zz_bench_sleeps", "--tasks", "D->W", "--seeds", "0", "--steps", "5", "--jobs", str(jobs),
             "--data-root", str(data_root), "--out", str(tmp_path / "out"), "--quiet"],
            stdout=subprocess.DEVNULL, stderr=log, env=dict(os.environ, TMPDIR=str(temp)))


def _sleeping_plugin(tmp_path) -> str:
    (tmp_path / "pids").mkdir()
    return _plugin_file(tmp_path / "sleeps.py", "zz_bench_sleeps",
                        f"import os, time; open(os.path.join({str(tmp_path / 'pids')!r}, str(os.getpid())), 'w').close(); "
                        "time.sleep(120)")


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie that no one reaped has ended)."""
    try:
        status = (Path("/proc") / str(pid) / "status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rpartition(")")[2].split()[1])  # (the name in parentheses may hold spaces)
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            found.append(int(stat.parent.name))
    return found


def _wait_for(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _wait_for_the_sleeper(bench, tmp_path) -> None:
    """Until the sleeping method's cell has begun."""
    pids = tmp_path / "pids"
    if not _wait_for(lambda: any(pids.iterdir()) or bench.poll() is not None, 120) or not any(pids.iterdir()):
        bench.kill()
        pytest.fail(f"the sleeping cell never began: {(tmp_path / 'bench.log').read_text()}")


def test_workers_exit_when_the_bench_is_killed(tmp_path, data_root):
    """A bench killed outright (SIGKILL) had left its --jobs workers running its cells for ever."""
    import os
    import signal

    bench = _bench_process(tmp_path, data_root, _sleeping_plugin(tmp_path), jobs=2)
    children: list[int] = []
    try:
        _wait_for_the_sleeper(bench, tmp_path)
        children = _children(bench.pid)  # the workers (and multiprocessing's resource tracker)
        assert {int(p.name) for p in (tmp_path / "pids").iterdir()} <= set(children)
        bench.send_signal(signal.SIGKILL)
        bench.wait()
        assert _wait_for(lambda: not any(_alive(pid) for pid in children), 10)
    finally:
        bench.kill()
        bench.wait()
        for pid in children:  # (left running without the fix)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_sigterm_writes_the_table_of_the_finished_cells_as_ctrl_c_does_and_exits_143(tmp_path, data_root):
    import signal

    bench = _bench_process(tmp_path, data_root, _sleeping_plugin(tmp_path), jobs=1)
    try:
        _wait_for_the_sleeper(bench, tmp_path)
        bench.send_signal(signal.SIGTERM)
        bench.wait(timeout=60)
    finally:
        bench.kill()
        bench.wait()
    stderr = (tmp_path / "bench.log").read_text()
    assert bench.returncode == 143 and stderr.strip().splitlines()[-1] == "dalib: terminated", stderr
    table = (tmp_path / "out" / "bench-office-caltech-surf-steps5.md").read_text()
    assert "| `source_only` |" in table  # the cells finished before the signal


def test_the_table_says_how_many_threads_the_cells_ran_with():
    from dalib_benchmarks.report import _threads_text

    cells = lambda *counts: {"cells": {str(i): ({} if t is None else {"threads": t}) for i, t in enumerate(counts)}}  # noqa: E731
    assert _threads_text(cells(1, 1)) == " Each cell ran with 1 torch thread."
    assert _threads_text(cells(2, 1)) == " Each cell ran with 1 or 2 torch threads (runs with other `--jobs`)."
    # cells of files from before the count was recorded are not claimed
    assert _threads_text(cells(2, None, 2)) == " The 2 cells that recorded it ran with 2 torch threads."
    assert _threads_text(cells(None)) == ""
    assert _threads_text(cells(1, None)) == " The cell that recorded it ran with 1 torch thread."
    failed = cells(1, None)
    failed["cells"]["1"]["status"] = "failed"  # a failed cell records no thread count, and claims none
    assert _threads_text(failed) == " Each cell ran with 1 torch thread."


def test_a_last_cell_run_in_process_under_jobs_has_a_workers_threads(toy_suite, tmp_path):
    """With --jobs 2 and one cell to run, the cell runs in the main process: with the threads a
    worker would have, so that the Reproduce line's --jobs says what the numbers were made with."""
    path = run_suite(load_suite(str(toy_suite)), tmp_path, methods=["dann"], seeds=[0], jobs=2, progress=False)
    (cell,) = json.loads(path.read_text())["cells"].values()
    assert cell["status"] == "done" and cell["threads"] == max(1, (os.cpu_count() or 1) // 2)
    assert "--jobs 2" in path.with_suffix(".md").read_text()


def test_a_results_file_this_user_cannot_read_is_named_so(toy_suite, tmp_path, monkeypatch):
    """It had been "not a suite result file ...; move it away" (as root, chmod would not stop us)."""
    import pathlib

    path = run_suite(load_suite(str(toy_suite)), tmp_path, methods=["source_only"], seeds=[0], progress=False)
    real = pathlib.Path.read_text

    def read(self, *args, **kwargs):
        if self.name == path.name:
            raise PermissionError(13, "Permission denied")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "read_text", read)
    _one_line_error(CliRunner().invoke(cli, ["bench", str(toy_suite), "--methods", "source_only", "--seeds", "0",
                                             "--out", str(tmp_path), "--quiet"]), f"cannot read {path}: Permission denied")


@pytest.mark.parametrize("name", sorted(p.name for p in (Path(__file__).resolve().parents[2] / "benchmarks" / "results")
                                        .glob("bench-*.json")))
def test_the_committed_tables_are_what_their_results_files_give(tmp_path, name):
    # the tables in benchmarks/results (and the docs that include them) are the report of their
    # JSON as the code stands: a stale one had named a command without the --jobs its cells ran with
    from dalib_benchmarks.report import write_report

    committed = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / name
    copy = tmp_path / name
    copy.write_bytes(committed.read_bytes())
    state = json.loads(copy.read_text())
    md, _ = write_report(load_suite(state["suite"]), copy)
    expected = committed.with_suffix(".md").read_text()
    assert md.read_text().replace(f" --out {tmp_path.resolve()}", "") == expected
