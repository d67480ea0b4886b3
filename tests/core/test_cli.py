"""The CLI through click's runner: list, show, run, and one line + exit 2 on bad input."""

from __future__ import annotations

import fcntl
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from click.testing import CliRunner

from dalib.cli import cli

FAST = ["--steps", "6", "--batch-size", "8", "--quiet"]


@pytest.fixture
def runner():
    return CliRunner()


def _one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_list_shows_methods_and_datasets(runner):
    res = runner.invoke(cli, ["list"])
    assert res.exit_code == 0, res.output
    assert "dann" in res.stdout and "source_only" in res.stdout
    for dataset in ("digits", "office-caltech-surf", "amazon-reviews", "image-folder"):
        assert dataset in res.stdout


def test_show_prints_hyperparameters_with_defaults_and_help(runner):
    res = runner.invoke(cli, ["show", "dann"])
    assert res.exit_code == 0, res.output
    line = next(l for l in res.stdout.splitlines() if l.strip().startswith("trade_off"))
    assert "float" in line and "1.0" in line and "weight of the domain loss" in line
    assert "Ganin" in res.stdout
    res = runner.invoke(cli, ["show", "source_only"])
    assert "hyperparameters: none" in res.stdout
    res = runner.invoke(cli, ["show", "kmm"])
    assert "shallow-form hyperparameters (--mode shallow; set with --set KEY=VALUE):" in res.stdout.splitlines()


def test_show_prints_the_docstring_as_plain_text(runner):
    """Formulas and roles of the reStructuredText docstring lose their markup on the terminal."""
    res = runner.invoke(cli, ["show", "kmm"])
    assert res.exit_code == 0, res.output
    assert ".. math::" not in res.stdout and ":math:" not in res.stdout and "``" not in res.stdout
    lines = res.stdout.splitlines()
    first = next(i for i, l in enumerate(lines) if "\\min_\\beta" in l)
    assert lines[first].startswith("    ") and lines[first - 1] == ""  # the formula indented, set apart
    assert "features=\"input\"" in res.stdout


def test_run_writes_metrics_and_result(runner, tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(cli, ["run", "dann", "--src", "mnist", "--tgt", "usps", *FAST, "--out", str(out),
                              "--set", "trade_off=0.5", "--set", "hidden=32"])
    assert res.exit_code == 0, res.output
    assert "source accuracy:" in res.stdout and "target accuracy:" in res.stdout
    result = json.loads((out / "result.json").read_text())
    assert result["method_config"] == {"trade_off": 0.5, "hidden": 32, "hidden_layers": 2, "gamma": 10.0}
    assert result["src"] == "mnist" and result["tgt"] == "usps" and result["steps"] == 6
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 6 and "loss/domain" in lines[-1]


def test_config_file_and_flags(runner, tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('src = "usps"\ntgt = "mnist"\nsteps = 4\nbatch_size = 8\n[method]\ntrade_off = 0.25\n')
    out = tmp_path / "run"
    res = runner.invoke(cli, ["run", "dann", "--config", str(cfg), "--steps", "3", "--quiet", "--out", str(out)])
    assert res.exit_code == 0, res.output
    result = json.loads((out / "result.json").read_text())
    assert result["src"] == "usps" and result["steps"] == 3  # the flag beats the file
    assert result["method_config"]["trade_off"] == 0.25
    # --set adds to the file's [method] table, and beats it on the keys both give (with spaces
    # about the key, as a shell user may quote it)
    res = runner.invoke(cli, ["run", "dann", "--config", str(cfg), "--steps", "2", "--set", " hidden =16",
                              "--set", "trade_off=1", "--quiet", "--out", str(tmp_path / "both")])
    assert res.exit_code == 0, res.output
    both = json.loads((tmp_path / "both" / "result.json").read_text())["method_config"]
    assert (both["trade_off"], both["hidden"]) == (1.0, 16) and type(both["trade_off"]) is float
    res = runner.invoke(cli, ["run", "dann", "--config", str(cfg), "--steps", "2", "--set", "hidden=16", "--quiet",
                              "--out", str(tmp_path / "added")])
    assert res.exit_code == 0, res.output
    added = json.loads((tmp_path / "added" / "result.json").read_text())["method_config"]
    assert (added["trade_off"], added["hidden"]) == (0.25, 16)
    # a UTF-8 byte-order mark (Notepad's) was "Invalid statement (at line 1, column 1)"
    cfg.write_bytes(b"\xef\xbb\xbf" + 'src = "usps"\ntgt = "mnist"\nsteps = 2\n# é\n'.encode())
    res = runner.invoke(cli, ["run", "dann", "--config", str(cfg), "--quiet", "--out", str(tmp_path / "bom")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "bom" / "result.json").read_text())["steps"] == 2


def test_default_out_never_overwrites(runner, chdir_tmp):
    for _ in range(2):
        res = runner.invoke(cli, ["run", "source_only", "--src", "M", "--tgt", "U", *FAST])
        assert res.exit_code == 0, res.output
    runs = sorted(p.name for p in (chdir_tmp / "runs").iterdir())
    assert runs == ["source_only-mnist-usps-seed0", "source_only-mnist-usps-seed0-2"]  # the domains' own names
    # the metric lines of a run stopped before its first checkpoint are no run: the next one starts there
    early = chdir_tmp / "runs" / "source_only-mnist-usps-seed1"
    early.mkdir()
    (early / "metrics.jsonl").write_text('{"step": 2}\n')
    res = runner.invoke(cli, ["run", "source_only", "--src", "M", "--tgt", "U", *FAST, "--seed", "1"])
    assert res.exit_code == 0, res.output
    assert (early / "result.json").is_file() and not (chdir_tmp / "runs" / "source_only-mnist-usps-seed1-2").exists()
    # a metrics file no run wrote is kept: an --out that holds one is refused, a default --out skips it
    own = chdir_tmp / "mine"
    own.mkdir()
    (own / "metrics.jsonl").write_text("epoch,loss\n1,0.5\n")
    res = runner.invoke(cli, ["run", "source_only", "--src", "M", "--tgt", "U", *FAST, "--out", str(own)])
    assert res.exit_code == 2 and f"{own} holds a metrics.jsonl that no dalib run wrote" in res.stderr, res.output
    assert (own / "metrics.jsonl").read_text() == "epoch,loss\n1,0.5\n" and sorted(own.iterdir()) == [own / "metrics.jsonl"]
    taken = chdir_tmp / "runs" / "source_only-mnist-usps-seed3"
    taken.mkdir()
    (taken / "metrics.jsonl").write_text("[1, 2]\n")
    res = runner.invoke(cli, ["run", "source_only", "--src", "M", "--tgt", "U", *FAST, "--seed", "3"])
    assert res.exit_code == 0, res.output
    assert (taken / "metrics.jsonl").read_text() == "[1, 2]\n"
    assert (chdir_tmp / "runs" / "source_only-mnist-usps-seed3-2" / "result.json").is_file()
    # a folder a live run has claimed is skipped, checkpoint or not
    claimed = chdir_tmp / "runs" / "source_only-mnist-usps-seed2"
    claimed.mkdir()
    (claimed / ".dalib-run.lock").write_text(str(os.getppid()))
    with open(claimed / ".dalib-run.lock") as held:  # (its flock, which tells a live claim)
        fcntl.flock(held, fcntl.LOCK_EX)
        res = runner.invoke(cli, ["run", "source_only", "--src", "M", "--tgt", "U", *FAST, "--seed", "2"])
    assert res.exit_code == 0, res.output
    assert (chdir_tmp / "runs" / "source_only-mnist-usps-seed2-2" / "result.json").is_file()



def test_a_default_out_claimed_at_the_same_moment_moves_on_to_the_next_number(runner, chdir_tmp, monkeypatch):
    """Two runs started together without --out (students in one folder, a shell loop) both saw
    runs/...-seed0 free; the one that claimed it second was refused ("choose another --out",
    which it never gave), where the default moves on to -2. An --out given is still refused."""
    import dalib.runner

    claimed = chdir_tmp / "runs" / "source_only-mnist-usps-seed0"
    claimed.mkdir(parents=True)
    (claimed / ".dalib-run.lock").write_text(str(os.getppid()))  # a live process's claim, made...
    held = open(claimed / ".dalib-run.lock")
    fcntl.flock(held, fcntl.LOCK_EX)
    holds_run = dalib.runner.holds_run
    monkeypatch.setattr(dalib.runner, "holds_run", lambda out: False)  # ...after this run chose the folder
    res = runner.invoke(cli, ["run", "source_only", "--src", "M", "--tgt", "U", *FAST])
    assert res.exit_code == 0, res.output
    assert (chdir_tmp / "runs" / "source_only-mnist-usps-seed0-2" / "result.json").is_file()
    assert sorted(p.name for p in claimed.iterdir()) == [".dalib-run.lock"]
    res = runner.invoke(cli, ["run", "source_only", "--src", "M", "--tgt", "U", *FAST, "--out", str(claimed)])
    held.close()
    assert res.exit_code == 2 and "is being written by another dalib run" in res.stderr, res.output
    monkeypatch.setattr(dalib.runner, "holds_run", holds_run)
    # a run that claimed seed1, finished and gave it up between this run's check and its claim:
    # its result was overwritten; and a folder whose metrics.jsonl is a link is not free either
    claim = dalib.runner.claim_out_dir

    def finished_meanwhile(out):
        claim(out)
        if out.name == "source_only-mnist-usps-seed1" and not (out / "result.json").exists():
            (out / "result.json").write_text("{}")

    monkeypatch.setattr(dalib.runner, "claim_out_dir", finished_meanwhile)
    res = runner.invoke(cli, ["run", "source_only", "--src", "M", "--tgt", "U", *FAST, "--seed", "1"])
    assert res.exit_code == 0, res.output
    first = chdir_tmp / "runs" / "source_only-mnist-usps-seed1"
    assert (first / "result.json").read_text() == "{}" and not (first / ".dalib-run.lock").exists()
    assert (chdir_tmp / "runs" / "source_only-mnist-usps-seed1-2" / "result.json").is_file()
    linked = chdir_tmp / "runs" / "source_only-mnist-usps-seed2"
    linked.mkdir()
    (linked / "metrics.jsonl").symlink_to(chdir_tmp / "nowhere")
    res = runner.invoke(cli, ["run", "source_only", "--src", "M", "--tgt", "U", *FAST, "--seed", "2"])
    assert res.exit_code == 0, res.output
    assert (chdir_tmp / "runs" / "source_only-mnist-usps-seed2-2" / "result.json").is_file()


def test_an_empty_out_is_refused_not_taken_as_the_default(runner, chdir_tmp):
    for extra in ([], ["--resume"]):
        res = runner.invoke(cli, ["run", "source_only", "--src", "M", "--tgt", "U", *FAST, "--out", "", *extra])
        assert res.exit_code == 2 and "--out is empty" in res.stderr, res.output
    assert not (chdir_tmp / "runs").exists()


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["run", "nosuch", "--src", "mnist", "--tgt", "usps"], ["unknown method 'nosuch'", "dann", "source_only"]),
        (["show", "nosuch"], ["unknown method 'nosuch'", "dann"]),
        (["run", "dann", "--src", "mnist", "--tgt", "usps", "--dataset", "nosuch"], ["nosuch", "digits"]),
        (["run", "dann", "--src", "mars", "--tgt", "usps"], ["mars"]),
        (["run", "dann", "--src", "mnist", "--tgt", "venus", "--dataset", "digits"], ["venus", "usps"]),
        (["run", "dann", "--src", "mnist", "--tgt", "usps", "--set", "trade_of=1"], ["trade_of", "trade_off", "hidden"]),
        (["run", "dann", "--src", "mnist", "--tgt", "usps", "--set", "trade_off=abc"], ["abc", "trade_off", "number"]),
        (["run", "dann", "--src", "mnist", "--tgt", "usps", "--set", "hidden=1.5"], ["hidden", "integer"]),
        (["run", "dann", "--src", "mnist", "--tgt", "usps", "--set", "trade_off=-1"], ["trade_off must be >= 0"]),
        # a negative γ makes the reversal coefficient negative: the features would help the discriminator
        (["run", "dann", "--src", "mnist", "--tgt", "usps", "--set", "gamma=-10"], ["gamma must be >= 0"]),
        (["run", "dann", "--src", "mnist", "--tgt", "usps", "--set", "novalue"], ["key=value"]),
        (["run", "dann", "--src", "mnist", "--tgt", "usps", "--steps", "abc"], ["abc"]),
        (["run", "dann", "--src", "mnist", "--tgt", "usps", "--steps", "0"], ["steps must be at least 1"]),
        (["run", "dann", "--tgt", "usps"], ["missing --src", 'or src = "..." in the --config file']),
        (["run", "dann", "--src", "mnist", "--tgt", "usps", "--device", "tpu"], ["tpu"]),
        (["run", "dann", "--src", "mnist", "--tgt", "usps", "--device", "cuda:99"], ["device 'cuda:99' asked for"]),
        (["run", "dann", "--src", "mnist", "--tgt", "usps", "--device", "mps"], ["bad device 'mps'"]),
        # the shallow form checks the device too, before it reads any data
        (["run", "coral", "--dataset", "office-caltech-surf", "--src", "A", "--tgt", "W", "--device", "cuda:99"],
         ["device 'cuda:99' asked for"]),
        (["run", "dann", "--src", "mnist", "--tgt", "usps", "--plugin", "dalib_no_such_plugin"], ["dalib_no_such_plugin"]),
        (["run", "dann", "--src", "mnist", "--tgt", "usps", "--arch", "vgg99"], ["vgg99", "lenet"]),
        (["run", "dann", "--src", "mnist", "--tgt", "usps", "--arch", "resnet18"], ["resnet18 needs colour images",
                                                                                    "(1, 16, 16)", "lenet"]),
        (["run", "dann", "--src", "mnist", "--tgt", "usps", "--config", "/nonexistent.toml"], ["config file not found"]),
        (["run", "dann", "--src", "mnist", "--tgt", "usps", "--resume"], ["--resume needs --out"]),
        (["nosuchcommand"], ["nosuchcommand"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(runner, chdir_tmp, args, fragments):
    if args[0] == "run":  # FAST first: a later --steps in args wins
        args = [*args[:2], *FAST, *args[2:]]
    res = runner.invoke(cli, args)
    _one_line_error(res, *fragments)


def test_bad_config_files(runner, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = = 3\n")
    _one_line_error(runner.invoke(cli, ["run", "dann", "--src", "M", "--tgt", "U", "--config", str(bad)]), "cannot parse")
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("stepz = 3\n")
    _one_line_error(runner.invoke(cli, ["run", "dann", "--src", "M", "--tgt", "U", "--config", str(unknown)]), "stepz")
    # TOML refuses a key given twice; two spellings of one option had the last one win, unsaid
    twice = tmp_path / "twice.toml"
    twice.write_text("batch-size = 8\nbatch_size = 16\n")
    _one_line_error(runner.invoke(cli, ["run", "dann", "--src", "M", "--tgt", "U", "--config", str(twice)]),
                    f"{twice} gives 'batch-size' and 'batch_size', the same option: keep one")


@pytest.mark.parametrize(
    "line, fragment",
    [
        ("steps = 5.5", "steps must be an integer, got 5.5"),
        ('steps = "five"', "steps must be an integer, got 'five'"),
        ("steps = true", "steps must be an integer, got True"),
        ('lr = "0.1"', "lr must be a number, got '0.1'"),
        ("lr = inf", "lr must be a finite number"),
        ("momentum = -1", "momentum must be in [0, 1)"),
        ("weight_decay = nan", "weight_decay must be a finite number"),
        ("amp = 1", "amp must be true or false"),
        ("arch = 3", "arch must be a string"),
    ],
)
def test_config_file_values_of_the_wrong_type_or_range(runner, tmp_path, line, fragment):
    path = tmp_path / "run.toml"
    path.write_text(line + "\n")
    res = runner.invoke(cli, ["run", "dann", "--src", "M", "--tgt", "U", "--config", str(path), "--out", str(tmp_path / "o")])
    _one_line_error(res, "invalid run options", fragment)
    assert not (tmp_path / "o").exists()


def test_missing_data_files(runner, tmp_path):
    res = runner.invoke(cli, ["run", "source_only", "--dataset", "office-caltech-surf", "--src", "amazon",
                              "--tgt", "webcam", "--data-root", str(tmp_path), *FAST])
    _one_line_error(res, "not found", "amazon")


def _office_root(root, counts_by_domain):
    folder = root / "office_caltech10_surf"
    folder.mkdir(parents=True)
    files = {"amazon": "amazon_SURF_L10.mat", "webcam": "webcam_SURF_L10.mat"}
    for domain, fts in counts_by_domain.items():
        labels = (np.arange(len(fts)) % 10 + 1).reshape(-1, 1)
        scipy.io.savemat(folder / files[domain], {"fts": fts, "labels": labels})
    return root


def test_nan_features(runner, tmp_path):
    fts = np.random.default_rng(0).integers(1, 5, size=(30, 800)).astype(float)
    bad = fts.copy()
    bad[3, 7] = np.nan
    root = _office_root(tmp_path, {"amazon": fts, "webcam": bad})
    res = runner.invoke(cli, ["run", "source_only", "--dataset", "office-caltech-surf", "--src", "A", "--tgt", "W",
                              "--data-root", str(root), *FAST])
    _one_line_error(res, "webcam")
    assert "nan" in res.stderr.lower() or "finite" in res.stderr.lower()


def test_empty_domain(runner, tmp_path):
    from PIL import Image

    data = tmp_path / "imgs"
    for cls in ("cat", "dog"):
        (data / "real" / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8), (10, 20, 30)).save(data / "real" / cls / "a.png")
    (data / "sketch").mkdir()
    res = runner.invoke(cli, ["run", "source_only", "--data", str(data), "--src", "real", "--tgt", "sketch",
                              "--arch", "resnet18", "--image-size", "32", *FAST])
    _one_line_error(res, "sketch")


def test_corrupt_checkpoint_is_reported_and_left_alone(runner, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    garbage = b"this is not a checkpoint"
    (out / "checkpoint.pt").write_bytes(garbage)
    res = runner.invoke(cli, ["run", "dann", "--src", "mnist", "--tgt", "usps", *FAST, "--out", str(out), "--resume"])
    _one_line_error(res, "corrupt checkpoint")
    assert (out / "checkpoint.pt").read_bytes() == garbage


def test_existing_run_is_not_overwritten(runner, tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(cli, ["run", "source_only", "--src", "mnist", "--tgt", "usps", *FAST, "--out", str(out)])
    assert res.exit_code == 0, res.output
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    res = runner.invoke(cli, ["run", "source_only", "--src", "mnist", "--tgt", "usps", *FAST, "--out", str(out)])
    _one_line_error(res, "already holds a run", "--resume")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # resuming a run with other settings is refused, and nothing changes either
    res = runner.invoke(cli, ["run", "source_only", "--src", "mnist", "--tgt", "usps", "--steps", "6",
                              "--batch-size", "16", "--quiet", "--out", str(out), "--resume"])
    _one_line_error(res, "other settings", "batch_size")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # resuming a finished run reports it and writes nothing: the same files to the byte, also
    # when the domains are given by their aliases and the dataset it was inferred to be
    res = runner.invoke(cli, ["run", "source_only", "--src", "M", "--tgt", "U", "--dataset", "digits", *FAST,
                              "--out", str(out), "--resume"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "result.json").read_text())["target_accuracy"] == pytest.approx(
        float(res.stdout.split("target accuracy: ")[1].split("%")[0]), abs=0.005)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_batch_larger_than_a_domain_is_refused_before_anything_is_written(runner, tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(cli, ["run", "dann", "--src", "mnist", "--tgt", "usps", "--steps", "1", "--batch-size",
                              "100000", "--quiet", "--out", str(out)])
    _one_line_error(res, "batch_size 100000 is larger than the source domain 'mnist' (2000 samples)")
    assert not out.exists()
    res = runner.invoke(cli, ["run", "dann", "--src", "mnist", "--tgt", "usps", "--steps", "1", "--batch-size",
                              "1900", "--quiet", "--out", str(out)])
    _one_line_error(res, "larger than the target domain 'usps' (1800 samples)")
    # the samples a holdout took are said to be its: the domain holds more (and a smaller one is a fix)
    res = runner.invoke(cli, ["run", "dann", "--src", "mnist", "--tgt", "usps", "--steps", "1", "--batch-size",
                              "1000", "--holdout", "0.6", "--quiet", "--out", str(out)])
    _one_line_error(res, "batch_size 1000 is larger than the source domain 'mnist' (799 samples of its 2000 once "
                         "holdout 0.6 held 1201 out): use batch_size <= 799 or a smaller holdout")  # (per class)


def test_a_run_that_failed_before_its_first_checkpoint_can_be_run_again(runner, tmp_path):
    out = tmp_path / "run"
    out.mkdir()  # the user's folder: the failed run leaves its (empty) metrics file there
    args = ["run", "dann", "--src", "mnist", "--tgt", "usps", "--steps", "6", "--batch-size", "8", "--quiet",
            "--set", "hidden=16", "--out", str(out)]
    res = runner.invoke(cli, [*args, "--lr", "1e9"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    header, error = res.stderr.strip().splitlines()  # the run's header, then one line: no torch warning
    assert header.startswith("dalib: dann on digits") and error.startswith("dalib: error: the loss became")
    assert not (out / "checkpoint.pt").exists() and not (out / "result.json").exists()
    res = runner.invoke(cli, [*args, "--resume"])
    _one_line_error(res, "nothing to resume", "run it again without --resume")
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [6]  # the failed run's lines are gone
    assert json.loads((out / "result.json").read_text())["run_config"]["lr"] == 0.01


def test_help_and_version(runner):
    res = runner.invoke(cli, ["--help"])
    assert res.exit_code == 0 and "run" in res.stdout and "list" in res.stdout
    res = runner.invoke(cli, ["run", "--help"])
    assert res.exit_code == 0 and "--set" in res.stdout and "--resume" in res.stdout
    res = runner.invoke(cli, ["--version"])
    assert res.exit_code == 0 and "0.1.0" in res.stdout


def test_the_console_script_prints_a_warning_as_one_line():
    import subprocess
    import sys

    code = ("import warnings, dalib.cli as c; "
            "c.cli = lambda prog_name: warnings.warn('first line\\nsecond line', RuntimeWarning); c.main()")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stderr == "dalib: warning: first line\n"


def test_python_dash_m_dalib_is_the_command():
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "dalib", "run", "nosuch", "--src", "mnist", "--tgt", "usps"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "nosuch" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = subprocess.run([sys.executable, "-m", "dalib", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "Usage: dalib" in res.stdout


def test_data_folder_with_a_dataset_that_reads_none_and_a_forgotten_data_folder(runner, tmp_path):
    res = runner.invoke(cli, ["run", "source_only", "--dataset", "digits", "--data", str(tmp_path), "--src", "mnist",
                              "--tgt", "usps", *FAST])
    _one_line_error(res, "dataset digits reads no data folder, but one was given", "leave out --dataset")
    res = runner.invoke(cli, ["run", "source_only", "--src", "catalogue", "--tgt", "phone", *FAST])
    _one_line_error(res, "no dataset has both domains 'catalogue' and 'phone'", "or --data PATH for a folder of images")


def test_a_size_that_cannot_be_allocated_is_one_line(runner, tmp_path):
    res = runner.invoke(cli, ["run", "dann", "--src", "mnist", "--tgt", "usps", "--set", "hidden=1000000000000", *FAST,
                              "--out", str(tmp_path / "r")])
    _one_line_error(res, "out of memory (tried to allocate 1024000000000000 bytes): lower the sizes involved")
    assert not (tmp_path / "r").exists()  # the folder the run made is gone with it


@pytest.mark.parametrize("option", [["--set", "hidden=99999999999999999999"],  # past int64: a TypeError
                                    ["--bottleneck-dim", "4611686018427387904"]])  # 2**62: the size overflows
def test_a_size_past_what_torch_can_index_is_one_line(runner, tmp_path, option):
    res = runner.invoke(cli, ["run", "dann", "--src", "mnist", "--tgt", "usps", *option, *FAST,
                              "--out", str(tmp_path / "r")])
    _one_line_error(res, "a tensor size overflows: lower the sizes involved")
    assert not (tmp_path / "r").exists()


def test_a_run_that_fails_before_writing_a_line_leaves_no_folder(runner, tmp_path):
    out = tmp_path / "r"
    res = runner.invoke(cli, ["run", "source_only", "--src", "mnist", "--tgt", "usps", "--lr", "1e30", *FAST,
                              "--out", str(out)])
    assert res.exit_code == 2 and res.stderr.strip().splitlines()[-1].startswith("dalib: error: the loss became")
    assert not out.exists()  # its metrics file was opened, and was empty: the next default --out is this one


@pytest.mark.parametrize("method", ["coral", "mmd", "ot"])
def test_a_network_that_diverges_under_an_alignment_loss_is_said_to_diverge(runner, tmp_path, method):
    """The loss refused the NaN features it was given: the user read "x holds NaN or infinite
    values", which sends one to check the data, not the learning rate."""
    res = runner.invoke(cli, ["run", method, "--src", "mnist", "--tgt", "usps", "--lr", "1e8", *FAST,
                              "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert re.fullmatch(r"dalib: error: the network's outputs became NaN or infinite at step \d+: lower --lr or the "
                        r"method's trade-off", res.stderr.strip().splitlines()[-1])


def test_a_network_whose_outputs_grow_too_large_for_the_loss_is_said_to_diverge(runner, tmp_path):
    """Finite outputs, too large for float32 squared distances: the user had read the kernel's
    "scale the features, or use float64", which no command-line option does."""
    res = runner.invoke(cli, ["run", "mmd", "--src", "mnist", "--tgt", "usps", "--lr", "100", "--steps", "30",
                              "--quiet", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "Traceback" not in res.output
    refused = (r"dalib: error: the network's outputs reached \S+ at step \d+, and mmd's loss refused them \(x holds "
               r"values up to .*, too large for float32 squared distances \(.*\)\): training diverged: lower --lr or "
               r"the method's trade-off")
    # a chaotic trajectory: with the pinned torch it passes through outputs finite but too large (1e24); another
    # release draws other dropout masks from the same seed, and torch 2.4's went from 2.5e10 to inf in one step
    pinned = next(line.split("==")[1] for line in (Path(__file__).parents[2] / "constraints.txt").read_text().splitlines()
                  if line.startswith("torch=="))
    if torch.__version__.split("+")[0] != pinned:
        refused += r"|dalib: error: the network's outputs became NaN or infinite at step \d+.*"
    assert re.fullmatch(refused, res.stderr.strip().splitlines()[-1]), res.stderr


def test_a_losss_refusal_after_the_first_step_that_is_not_about_size_is_its_own_not_divergence(runner, own_registry,
                                                                                                 tmp_path):
    """A plugin's call that a warm-up first makes at a later step had been reported as "training
    diverged: lower --lr" (outputs of about 4), its own message cut short."""
    (tmp_path / "warm.py").write_text(
        "import dalib\nfrom dalib.losses import mmd\n@dalib.register_method('warm_test')\nclass Warm(dalib.Method):\n"
        "    'MMD after a warm-up of two steps, with an estimator misspelt.'\n"
        "    def loss(self, batch, out, progress):\n        cls = self.source_loss(batch, out)\n"
        "        if progress.step < 2:\n            return {'total': cls}\n"
        "        return {'total': cls + mmd(out.feat_s, out.feat_t, estimator='unbaised')}\n")
    res = runner.invoke(cli, ["run", "warm_test", "--plugin", str(tmp_path / "warm.py"), "--src", "mnist", "--tgt",
                              "usps", "--steps", "5", "--quiet", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert res.stderr.strip().splitlines()[-1] == ("dalib: error: unknown estimator 'unbaised'; known: biased, "
                                                   "unbiased, linear")


def test_deepjdots_cost_that_overflows_on_grown_outputs_is_said_to_diverge(runner, own_registry, tmp_path):
    """ot builds its own cost for ot_plan; outputs of 1e20 overflow it (inf − inf: NaN), which
    ot_plan refused as bad input, and the user read of a cost they never gave, not of divergence."""
    (tmp_path / "blow.py").write_text(
        "import dalib\nfrom dalib.registry import get_method\n@dalib.register_method('ot_blow_test')\n"
        "class Blow(get_method('ot')):\n    'DeepJDOT whose features grow to 1e20 after the first step.'\n"
        "    def loss(self, batch, out, progress):\n        if progress.step == 0:\n"
        "            self.model.bottleneck.register_forward_hook(lambda m, i, o: o * 1e20)\n"
        "        return super().loss(batch, out, progress)\n")
    res = runner.invoke(cli, ["run", "ot_blow_test", "--plugin", str(tmp_path / "blow.py"), "--src", "mnist",
                              "--tgt", "usps", "--steps", "5", "--quiet", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert re.fullmatch(r"dalib: error: the network's outputs reached \S+ at step \d+, and ot_blow_test's loss refused "
                        r"them \(cost holds NaN or infinite values\): training diverged: lower --lr or the method's "
                        r"trade-off", res.stderr.strip().splitlines()[-1])


@pytest.fixture
def own_registry(monkeypatch):
    """The registry as it was, after a test that loads plugin files through the CLI."""
    import sys

    from dalib import registry

    registry.list_methods()
    monkeypatch.setattr(registry, "_methods", dict(registry._methods))
    monkeypatch.setattr(registry, "_loaded_modules", {})
    monkeypatch.setattr(sys, "path", list(sys.path))


def test_a_plugin_without_a_docstring_shows_none_not_the_base_classs(runner, own_registry, tmp_path):
    (tmp_path / "nodoc.py").write_text(
        "import dalib\n@dalib.register_method('nodoc_test')\nclass NoDoc(dalib.Method):\n"
        "    def loss(self, batch, out, progress):\n        return {'total': self.source_loss(batch, out)}\n")
    res = runner.invoke(cli, ["list", "--plugin", str(tmp_path / "nodoc.py")])
    line = next(line for line in res.stdout.splitlines() if "nodoc_test" in line)
    assert line.split() == ["nodoc_test", "deep"]
    res = runner.invoke(cli, ["show", "nodoc_test", "--plugin", str(tmp_path / "nodoc.py")])
    assert res.exit_code == 0 and "Base class" not in res.stdout and "Subclasses define" not in res.stdout


def test_a_plugins_own_runtime_error_that_mentions_memory_keeps_its_traceback(runner, own_registry, tmp_path):
    """Only torch's allocators running out are 'out of memory'; a plugin's bug is not."""
    (tmp_path / "alloc.py").write_text(
        "import dalib\n@dalib.register_method('alloc_test')\nclass Alloc(dalib.Method):\n    'Fails in prepare.'\n"
        "    def loss(self, batch, out, progress):\n        return {'total': self.source_loss(batch, out)}\n"
        "    def prepare(self, context):\n        raise RuntimeError('could not allocate the pseudo-label buffer')\n")
    res = runner.invoke(cli, ["run", "alloc_test", "--plugin", str(tmp_path / "alloc.py"), "--src", "mnist",
                              "--tgt", "usps", "--steps", "2", "--out", str(tmp_path / "r")])
    assert res.exit_code == 1 and isinstance(res.exception, RuntimeError)
    assert "pseudo-label buffer" in str(res.exception) and "out of memory" not in res.stderr


@pytest.mark.parametrize("text", ["CUDA error: out of memory", "XPU out of memory. Tried to allocate 2.00 GiB",
                                  "CUDA out of memory. Tried to allocate 20.00 MiB"])
def test_every_accelerators_out_of_memory_is_one_line(text):
    from dalib.cli import _out_of_memory

    assert _out_of_memory(RuntimeError(text)) and not _out_of_memory(RuntimeError("could not allocate the buffer"))


_CONTAINERS = '''
from dataclasses import dataclass
import dalib
from dalib import param

@dalib.register_method("containers_test")
class Containers(dalib.Method):
    "Source-only, with hyperparameters that are lists and dicts."
    uses_target = False

    @dataclass(frozen=True)
    class Config:
        weights: dict[str, float] = param(help="typed dict", default_factory=lambda: {"a": 1.0})
        table: dict = param(help="bare dict", default_factory=dict)
        sizes: list = param(help="bare list", default_factory=lambda: [256])
        widths: list[int] = param(help="typed list", default_factory=lambda: [1])

    def loss(self, batch, out, progress):
        cls = self.source_loss(batch, out)
        return {"total": cls, "cls": cls}
'''


def test_list_and_dict_hyperparameters_can_be_set_every_way(runner, own_registry, tmp_path):
    """--set (JSON or TOML text), a config file's [method] table and RunConfig(method_config=Config(...))
    all set a list or dict field; the dict and bare-list fields could be declared but never set."""
    import dalib

    (tmp_path / "containers.py").write_text(_CONTAINERS)
    base = ["run", "containers_test", "--plugin", str(tmp_path / "containers.py"), "--src", "mnist", "--tgt", "usps",
            *FAST]
    res = runner.invoke(cli, [*base, "--out", str(tmp_path / "a"), "--set", 'weights={"a": 2, "b": 0.5}',
                              "--set", "table={k = '42', n = 3}", "--set", "sizes=[128, x]", "--set", "widths=3,4"])
    assert res.exit_code == 0, res.output
    # quoted text stays a string (k = '42'); an unquoted item of a bare list reads as a number where it is one
    want = {"weights": {"a": 2.0, "b": 0.5}, "table": {"k": "42", "n": 3}, "sizes": [128, "x"], "widths": [3, 4]}
    assert json.loads((tmp_path / "a" / "result.json").read_text())["method_config"] == want
    (tmp_path / "c.toml").write_text("[method]\nweights = {a = 2, b = 0.5}\ntable = {k = '42', n = 3}\n"
                                     "sizes = [128, 'x']\nwidths = [3, 4]\n")
    res = runner.invoke(cli, [*base, "--out", str(tmp_path / "b"), "--config", str(tmp_path / "c.toml")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "b" / "result.json").read_text())["method_config"] == want
    cls = dalib.get_method("containers_test")
    cfg = dalib.RunConfig(method="containers_test", steps=2, batch_size=8, device="cpu",
                          method_config=cls.Config(weights={"a": 3.0}, table={"id": "42", "on": "true"}, sizes=[1, "1.0"]))
    assert dalib.runner.build_method_config(cfg, cls, "deep") == cls.Config(
        weights={"a": 3.0}, table={"id": "42", "on": "true"}, sizes=[1, "1.0"])
    _one_line_error(runner.invoke(cli, [*base, "--out", str(tmp_path / "e"), "--set", "weights={not json"]),
                    "bad value", "for weights", "expected a dict")
    _one_line_error(runner.invoke(cli, [*base, "--out", str(tmp_path / "e"), "--set", 'weights={"a": "x"}']),
                    "for weights.a", "expected a number")
    # show names the items' types (it said list and dict for both kinds)
    shown = runner.invoke(cli, ["show", "containers_test", "--plugin", str(tmp_path / "containers.py")]).stdout
    rows = {line.split()[0]: line.split(None, 1)[1] for line in shown.splitlines()
            if line.startswith("  ") and line.split()[0] in want}
    for name, typ in {"weights": "dict[str, float] ", "table": "dict ", "sizes": "list ", "widths": "list[int] "}.items():
        assert rows[name].startswith(typ), (name, rows[name])


def test_a_run_logged_to_a_file_reports_its_progress_in_plain_lines(tmp_path):
    # stderr no terminal (a batch job's log): the bar is off, and a whole run had logged its
    # first line alone; now a line at every tenth of the steps (none with --quiet), and a resumed
    # run's lines start after its checkpoint
    import re

    out = tmp_path / "r"
    res = CliRunner().invoke(cli, ["run", "source_only", "--src", "M", "--tgt", "U", "--steps", "20", "--batch-size",
                                   "8", "--checkpoint-every", "10", "--out", str(out)])
    assert res.exit_code == 0, res.output
    steps = re.findall(r"^dalib: step (\d+)/20 \((\d+)%\), loss [0-9.e+-]+, \d+ s so far(, about \d+ s left)?$",
                       res.stderr, re.MULTILINE)
    assert [(int(s), int(p), bool(left)) for s, p, left in steps] == [(2 * k, 10 * k, k < 10) for k in range(1, 11)]
    from dalib.runner import RunConfig
    from tests._support.interrupt import killed_at

    cut = tmp_path / "cut"
    killed_at(RunConfig(method="source_only", src="M", tgt="U", steps=20, batch_size=8, checkpoint_every=10), cut, 13)
    resumed = CliRunner().invoke(cli, ["run", "source_only", "--src", "M", "--tgt", "U", "--steps", "20",
                                       "--batch-size", "8", "--checkpoint-every", "10", "--out", str(cut), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert re.findall(r"^dalib: step (\d+)/20", resumed.stderr, re.MULTILINE) == ["12", "14", "16", "18", "20"]
    quiet = CliRunner().invoke(cli, ["run", "source_only", "--src", "M", "--tgt", "U", "--steps", "20",
                                     "--batch-size", "8", "--out", str(tmp_path / "q"), "--quiet"])
    assert quiet.exit_code == 0 and "dalib: step" not in quiet.stderr
