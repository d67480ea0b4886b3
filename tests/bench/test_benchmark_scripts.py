"""What the standalone benchmark scripts share: their options' checks, where a narrowed run
writes, the command its results file gives, and the checks of a partial shallow run."""

from __future__ import annotations

import argparse
import pkgutil

import pytest

import dalib_benchmarks
from dalib_benchmarks._machine import at_least, command, output_stem


def _parser():
    ap = argparse.ArgumentParser(prog="bench.py")
    ap.add_argument("--steps", type=at_least(1), default=400)
    ap.add_argument("--grid", type=at_least(0, float, strict=True), nargs="+", default=[1.0, 3.0])
    ap.add_argument("--jobs", type=at_least(1), default=1)
    ap.add_argument("--out", default=None)
    return ap


def test_a_narrowed_run_writes_beside_the_published_results_not_over_them(tmp_path, capsys):
    """A run with the published options writes the published file; one with others (fewer
    steps, another grid) writes STEM-custom and says so (it replaced the table the docs quote);
    options that change no figure (--jobs) and an explicit --out are taken as they are."""
    ap, published = _parser(), tmp_path / "results" / "kmm_speed"
    assert output_stem(ap, ap.parse_args([]), published, None) == str(published)
    assert output_stem(ap, ap.parse_args(["--jobs", "2", "--steps", "400"]), published, None) == str(published)
    assert capsys.readouterr().out == ""
    assert output_stem(ap, ap.parse_args(["--steps", "20"]), published, None) == f"{published}-custom"
    assert "options other than the published run's (--steps)" in capsys.readouterr().out
    assert output_stem(ap, ap.parse_args(["--steps", "20"]), published, str(tmp_path / "mine")) == str(tmp_path / "mine")


@pytest.mark.parametrize("args,message", [(["--steps", "0"], "--steps: must be >= 1, got 0"),
                                          (["--jobs", "two"], "--jobs: expected an integer, got 'two'"),
                                          (["--grid", "0"], "--grid: must be > 0, got 0")])
def test_bad_option_values_are_argparse_one_line_errors(args, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        _parser().parse_args(args)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"bench.py: error: argument {message}"


def test_the_reproduce_line_is_the_command_that_ran():
    assert command("kmm_speed.py", ["--sizes", "1000", "--rounds", "1"]) == \
        "python benchmarks/kmm_speed.py --sizes 1000 --rounds 1"
    assert command("x.py", ["--data-root", "my data"]) == "python benchmarks/x.py --data-root 'my data'"


def test_shallow_checks_leave_out_the_comparisons_whose_baseline_was_skipped():
    """--skip 1nn (or linear, svm) left rows without a baseline: the checks raised KeyError at
    the end of the run, after all its work, and nothing was written."""
    from dalib_benchmarks.shallow_accuracy import checks

    summary = {"office-all": {"kmm_linear": {"label": "KMM + logistic", "mean": 46.0},
                              "ot_it": {"label": "OT-IT + 1-NN", "mean": 43.0},
                              "coral_svm": {"label": "CORAL + SVM", "mean": 45.0}}}
    lines = checks(summary)
    assert any(line.startswith("office-all OT-IT + 1-NN: 43.00 vs published 42.30") and "vs 1-NN" not in line
               for line in lines)
    assert not any("KMM" in line or "CORAL" in line for line in lines)


def test_every_module_of_the_installed_benchmarks_package_imports(tmp_path):
    # the wheel ships benchmarks/ as dalib_benchmarks: two of its scripts had imported their
    # helpers as they do when run from the folder, and failed to import from the package (in a
    # fresh process, from another folder: this one's imports put the folder on sys.path)
    import subprocess
    import sys

    names = sorted(m.name for m in pkgutil.iter_modules(dalib_benchmarks.__path__))
    script = ("import importlib, sys\n"
              "failed = []\n"
              f"for name in {names!r}:\n"
              "    try:\n"
              "        importlib.import_module('dalib_benchmarks.' + name)\n"
              "    except Exception as exc:\n"
              "        failed.append(f'{name}: {exc!r}')\n"
              "print(failed)")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert len(names) > 10 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_the_dann_digits_table_is_its_results_file_with_its_protocol():
    # README's headline DANN figures come from this table: it says how they were measured
    import json
    from pathlib import Path

    from dalib_benchmarks import dann_digits

    benchmarks = Path(__file__).resolve().parents[2] / "benchmarks"
    payload = json.loads((benchmarks / "results" / "dann_digits_mnist_usps.json").read_text())
    text = dann_digits.markdown(payload)
    assert text + "\n" == (benchmarks / "results" / "dann_digits_mnist_usps.md").read_text()  # (write_results ends it)
    assert "after the last step (no target-label model selection)" in text


def test_the_kernel_benchmark_on_cuda_n_counts_that_gpus_memory(monkeypatch):
    """--device cuda:1 put the points on GPU 1 but read the synchronisation and the memory
    counters of the current device, GPU 0: a peak of 0 MB where GPU 1 did the work. (No GPU
    here: torch.cuda's calls are recorded, and the points stay on the CPU.)"""
    import torch

    from dalib_benchmarks import kernels

    calls = []
    for name in ("set_device", "synchronize", "reset_peak_memory_stats", "memory_allocated", "max_memory_allocated"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, name=name: calls.append((name, *a)) or 0)
    data = kernels._data
    monkeypatch.setattr(kernels, "_data", lambda n, d, dtype, device: data(n, d, dtype, "cpu"))
    kernels.run_child({"loss": "mmd", "method": "dalib-dense", "n": 64, "d": 4, "device": "cuda:1"})
    assert calls[0] == ("set_device", torch.device("cuda:1"))
    assert {c[0] for c in calls[1:]} == {"synchronize", "reset_peak_memory_stats", "memory_allocated",
                                         "max_memory_allocated"}
    calls.clear()  # plain cuda (the default where a GPU is): the current device, none set
    kernels.run_child({"loss": "mmd", "method": "dalib-dense", "n": 64, "d": 4, "device": "cuda"})
    assert calls and "set_device" not in {c[0] for c in calls}


def test_results_that_cannot_be_written_leave_the_pair_as_it_was_in_one_line(tmp_path, monkeypatch, capsys):
    """write_results replaced the .json, then failed on the .md (a full disk): a traceback, and a
    new .json beside the old .md. Now the .md goes first, and a failed .json puts it back."""
    import errno
    import os

    from dalib_benchmarks import _machine

    stem = tmp_path / "x"
    assert _machine.write_results(stem, {"a": 1}, "| old |") == f"wrote {stem}.json and {stem}.md"
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    replace = os.replace

    def full_for_json(src, dst):
        if str(dst).endswith(".json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return replace(src, dst)

    monkeypatch.setattr(os, "replace", full_for_json)
    monkeypatch.setattr("sys.argv", ["mmd_loss.py"])
    for table in ("| new |", None):
        with pytest.raises(SystemExit) as info:
            _machine.write_results(stem, {"a": 2}, table)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(f"mmd_loss.py: error: cannot write {stem}.json (No space left on device") and err.endswith(
            "; the file as it was is kept\n") and err.count("\n") == 1, err
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    (tmp_path / "x.md").unlink()
    (tmp_path / "x.json").unlink()
    with pytest.raises(SystemExit):
        _machine.write_results(stem, {"a": 2}, "| new |")
    assert list(tmp_path.iterdir()) == []  # no table without its data
