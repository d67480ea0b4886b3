"""A third-party plugin package, pip-installed, is found through its entry points."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "dalib_entmin"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """Install tests/fixtures/dalib_entmin into a private folder (never into the venv)."""
    work = tmp_path_factory.mktemp("entmin")
    src = work / "src"
    shutil.copytree(FIXTURE, src)  # pip writes build files next to the sources
    site = work / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(site), str(src)],
        check=True, capture_output=True, text=True,
    )
    assert list(site.glob("dalib_entmin-*.dist-info/entry_points.txt"))
    return site


def _dalib(site: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(site))
    return subprocess.run(
        [sys.executable, "-m", "dalib.cli", *args], env=env, capture_output=True, text=True, cwd=cwd, timeout=600
    )


def test_list_shows_installed_plugins_and_the_broken_one(plugin_site):
    res = _dalib(plugin_site, "list")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    methods = {line.split()[0] for line in lines[1 : lines.index("plugins that failed to load:")]}
    assert {"entmin", "minent_class", "dann", "source_only"} <= methods
    start = lines.index("plugins that failed to load:") + 1
    failed = {line.split()[0]: line for line in lines[start : lines.index("datasets:")]}
    assert set(failed) == {"broken_demo", "dann", "sneaky"}
    assert "ModuleNotFoundError" in failed["broken_demo"]
    # another package's entry point never replaces a built-in method, whatever the load order
    assert "'dann' is already registered by dalib_plugins.dann" in failed["dann"]
    assert "'mmd' is already registered by dalib_plugins.mmd" in failed["sneaky"]
    show = _dalib(plugin_site, "show", "mmd")
    assert show.returncode == 0 and "DAN" in show.stdout, show.stderr


def test_show_and_run_an_installed_plugin(plugin_site, tmp_path):
    res = _dalib(plugin_site, "show", "entmin")
    assert res.returncode == 0, res.stderr
    assert "trade_off" in res.stdout and "0.1" in res.stdout and "weight of the target entropy" in res.stdout

    out = tmp_path / "run"
    res = _dalib(plugin_site, "run", "minent_class", "--src", "mnist", "--tgt", "usps", "--steps", "20",
                 "--batch-size", "16", "--out", str(out), "--quiet", "--set", "trade_off=0.2")
    assert res.returncode == 0, res.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["method"] == "minent_class"
    assert result["method_config"] == {"trade_off": 0.2}
    # what produced the numbers: the plugin's class and its package's version
    assert result["method_class"].startswith("dalib_entmin") and result["versions"]["dalib-entmin"] == "0.1.0"
    assert 0.0 <= result["target_accuracy"] <= 100.0
