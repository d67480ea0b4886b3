"""The one-line errors the documentation prints are the ones the CLI prints: every ```text
block of docs/quickstart.md made of a ``$ dalib ...`` command and a ``dalib: error:`` line is
run as written."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from dalib.cli import cli

PAGE = Path(__file__).resolve().parents[2] / "docs" / "quickstart.md"
EXAMPLE = re.compile(r"^```text\n\$ (dalib [^\n]+)\n(dalib: error: [^\n]+)\n```", re.M)


def _examples() -> list[tuple[str, str]]:
    return EXAMPLE.findall(PAGE.read_text(encoding="utf-8"))


def test_the_page_has_error_examples():
    assert _examples(), f"no error example found in {PAGE}"


@pytest.mark.parametrize("command, error", _examples())
def test_error_example_as_printed(command, error, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli, shlex.split(command)[1:])
    assert res.exit_code == 2
    assert res.stderr.strip().splitlines()[-1] == error
