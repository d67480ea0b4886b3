"""The worked example of docs/plugins.md, run as printed: the plugin file, ``dalib run`` and
``dalib show`` on it, and its one-line error."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import dalib
from dalib import registry
from dalib.cli import cli

PAGE = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"


def _block_after(marker: str, lang: str) -> str:
    """The first fenced ``lang`` block after the HTML comment that contains ``marker``."""
    text = PAGE.read_text(encoding="utf-8")
    at = text.find(marker)
    assert at >= 0, f"marker {marker!r} not found in {PAGE}"
    block = re.compile(rf"^```{lang}\n(.*?)^```", re.S | re.M).search(text, at)
    assert block is not None, f"no ```{lang} block after {marker!r}"
    return block.group(1)


@pytest.fixture
def example(tmp_path) -> tuple[str, Path]:
    code = _block_after("ci: plugin example", "python")
    name = re.search(r'@register_method\("([\w-]+)"\)', code).group(1)
    path = tmp_path / "mmd_entmin.py"
    path.write_text(code, encoding="utf-8")
    return name, path


@pytest.fixture
def fresh_registry(monkeypatch):
    """Call it before each command: the registry goes back to its state before the test (the
    example registers its method again on every load), and is restored after it."""
    dalib.list_methods()  # entry points loaded first, into the registry that is kept
    snapshot = dict(registry._methods)

    def reset() -> None:
        monkeypatch.setattr(registry, "_methods", dict(snapshot))

    return reset


def test_example_name_is_not_taken(example):
    name, _ = example
    assert name not in dalib.list_methods()


def test_run_the_example(example, fresh_registry, tmp_path):
    name, path = example
    out = tmp_path / "run"
    fresh_registry()
    res = CliRunner().invoke(cli, ["run", name, "--plugin", str(path), "--src", "mnist", "--tgt", "usps",
                                   "--steps", "30", "--batch-size", "32", "--out", str(out), "--quiet"])
    assert res.exit_code == 0, (res.output, res.stderr)
    result = json.loads((out / "result.json").read_text())
    assert result["method"] == name and 0.0 <= result["target_accuracy"] <= 100.0
    assert result["method_class"].endswith(f" in {path.resolve()}")  # the plugin file that produced it
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"loss/total", "loss/mmd", "loss/entropy"} <= set(last)


def test_show_prints_what_the_page_says(example, fresh_registry):
    name, path = example
    fresh_registry()
    res = CliRunner().invoke(cli, ["show", name, "--plugin", str(path)])
    assert res.exit_code == 0, (res.output, res.stderr)
    printed = [line.rstrip() for line in res.stdout.splitlines()]
    expected = [line.rstrip() for line in _block_after("ci: dalib show output", "text").splitlines()]
    for line in expected:
        assert line in printed, f"docs/plugins.md shows {line!r}; dalib show printed:\n{res.stdout}"
    assert "trade_off" in res.stdout and "Grandvalet" in res.stdout


def test_bad_value_gives_the_documented_error(example, fresh_registry):
    name, path = example
    text = PAGE.read_text(encoding="utf-8")
    command, error = re.search(rf"^\$ dalib (run {name} .*)\n(dalib: error: .*)$", text, re.M).groups()
    args = [str(path) if arg.endswith(".py") else arg for arg in shlex.split(command)]
    fresh_registry()
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2, (res.output, res.stderr)
    assert res.stderr.strip() == error


def test_the_backbone_example_runs_as_printed(fresh_backbones, fresh_registry, tmp_path, monkeypatch):
    """The page's own network: listed, trained by DANN, evaluated, then fine-tuned from with two of
    its three stages frozen; the commands as printed, with fewer steps."""
    code = _block_after("ci: backbone example", "python")
    (tmp_path / "small_cnn.py").write_text(code, encoding="utf-8")
    commands = [line for line in _block_after("ci: backbone example", "bash").splitlines() if line.strip()]
    assert len(commands) == 4
    monkeypatch.chdir(tmp_path)  # the page's relative paths: small_cnn.py, runs/
    outputs = []
    for command in commands:
        args = shlex.split(command)
        assert args[0] == "dalib"
        args = [("20" if prev == "--steps" else arg) for prev, arg in zip(["", *args[:-1]], args)][1:]
        fresh_registry()
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 0, (command, res.output, res.stderr)
        outputs.append(res.stdout)
    assert "  small_cnn            Three conv blocks (16, 32, 64 filters), globally pooled." in outputs[0]
    trained = json.loads((tmp_path / "runs" / "cnn" / "result.json").read_text())
    assert trained["run_config"]["arch"] == "small_cnn" and trained["steps"] == 20
    assert trained["backbone_builder"] == f"small_cnn in {tmp_path / 'small_cnn.py'}"
    assert "the network of step 20" in outputs[2]
    tuned = json.loads((tmp_path / "runs" / "cnn-usps" / "result.json").read_text())
    assert tuned["diagnostics"]["started_from"] == "runs/cnn"
    assert len(dalib.load_model(tmp_path / "runs" / "cnn-usps").stages()) == 3
    ckpt = torch.load(tmp_path / "runs" / "cnn-usps" / "checkpoint.pt", weights_only=False)
    start = torch.load(tmp_path / "runs" / "cnn" / "checkpoint.pt", weights_only=False)
    for key in ("backbone.block1.0.weight", "backbone.block2.0.weight"):  # frozen: as the MNIST run left them
        assert torch.equal(ckpt["model"][key], start["model"][key])
    assert not torch.equal(ckpt["model"]["backbone.block3.0.weight"], start["model"]["backbone.block3.0.weight"])


def test_the_backbone_example_refuses_a_pretrained_file_it_cannot_read(fresh_backbones, tmp_path, monkeypatch):
    (tmp_path / "small_cnn.py").write_text(_block_after("ci: backbone example", "python"), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli, ["run", "dann", "--plugin", "small_cnn.py", "--arch", "small_cnn", "--src", "mnist",
                                   "--tgt", "usps", "--steps", "2", "--pretrained", "missing.pt", "--out", "runs/x"])
    assert res.exit_code == 2
    assert res.stderr.strip() == "dalib: error: --pretrained missing.pt is no state dict of small_cnn (FileNotFoundError)"
