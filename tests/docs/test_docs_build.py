"""The documentation site builds with ``mkdocs build --strict`` (a broken link, reference or
docstring fails it), and its generated pages hold real content."""

from __future__ import annotations

import html
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import dalib
from dalib.cli import cli
from dalib.losses import mmd

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    res = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(REPO / "mkdocs.yml"),
         "--site-dir", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, f"mkdocs build --strict failed:\n{res.stdout}\n{res.stderr}"
    assert "WARNING" not in res.stderr, res.stderr
    return out


def _page(site: Path, path: str) -> str:
    page = site / path / "index.html"
    assert page.is_file(), f"{path} was not built"
    text = page.read_text(encoding="utf-8")
    return text[text.index('<div role="main"') :]  # the content, without the nav


def test_every_registered_method_has_a_page_with_its_hyperparameters(site):
    index = _page(site, "methods")
    for name in dalib.list_methods():
        assert f'href="{name}/"' in index, name
        page = _page(site, f"methods/{name}")
        assert inspect.getdoc(dalib.get_method(name)).splitlines()[0][:40] in html.unescape(page), name
    dann = _page(site, "methods/dann")
    row = r"<td><code>trade_off</code></td>\s*<td><code>float</code></td>\s*<td><code>1.0</code></td>\s*<td>weight of the domain loss</td>"
    assert re.search(row, dann), "the dann page has no trade_off row with its default"
    assert '<div class="arithmatex">' in dann and ".. math::" not in dann
    assert "Shallow-form hyperparameters" in _page(site, "methods/kmm")
    # a method that starts from a checkpoint is shown starting from one, not from random weights
    assert "--set init=runs/pre --out runs/finetune" in _page(site, "methods/finetune")


def test_losses_reference_comes_from_the_docstrings(site):
    page = html.unescape(_page(site, "losses"))
    assert inspect.getdoc(mmd).splitlines()[0] in page
    for name in ("mmd", "coral", "sinkhorn", "sinkhorn_solve", "ot_plan", "grad_reverse", "domain_adversarial", "entropy"):
        assert re.search(rf'<h3 id="dalib\.losses\.\w+\.{name}"', page), name
    assert '<div class="arithmatex">' in page and ":math:" not in page and ".. math::" not in page


def test_run_options_say_which_defaults_the_cli_does_not_take(site):
    page = html.unescape(_page(site, "run-options"))
    assert "have their defaults (MNIST to USPS) in Python only" in page and "<code>steps</code>" in page


def test_cli_reference_comes_from_click(site):
    page = _page(site, "cli")
    assert "--src" in page and "--plugin" in page
    for command in cli.commands:
        assert f'id="dalib-{command}"' in page, command


def test_benchmark_tables_come_from_the_results_folder(site):
    page = _page(site, "benchmarks")
    assert ":func:" not in page and "<code>dalib.list_methods</code>" in page  # the suite format, from rst
    tables = sorted(RESULTS.glob("*.md"))
    assert tables
    for path in tables:
        stem_id = re.sub(r"[^a-z0-9_-]+", "-", path.stem.lower()).strip("-")
        assert f'id="{stem_id}"' in page, path.name
    positions = [page.index(f'id="{p.stem}"') for p in tables if p.name.startswith("bench-")]
    assert all(pos < page.index('id="speed-and-other-benchmarks"') for pos in positions)
    for image in RESULTS.glob("*.png"):
        assert (site / "benchmarks" / "results" / image.name).is_file(), image.name
