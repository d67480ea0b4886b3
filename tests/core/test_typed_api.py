"""The Python API as type checkers and editors read it: the package says it is typed, and a
script over the documented API passes ``mypy --strict`` as written."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import dalib

REPO = Path(__file__).resolve().parents[2]


def test_the_wheel_carries_the_typed_marker(tmp_path):
    """Without dalib/py.typed, mypy reads an installed dalib as untyped: every dalib name was
    Any ("Cannot find implementation or library stub for module named 'dalib'")."""
    source = tmp_path / "src"  # a copy: a build/ folder left in the checkout would bring its own files
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".venv*", ".git", "build", "*.egg-info", "runs", "site",
                                                                "__pycache__", ".mypy_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(source)], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("dalib-*.whl")
    assert "dalib/py.typed" in zipfile.ZipFile(wheel).namelist()


def test_all_is_written_out_as_type_checkers_read_it():
    """``__all__ = sorted([...])`` is no list mypy can read: under --strict every documented
    ``from dalib import Method`` was 'Module "dalib" does not explicitly export attribute'."""
    tree = ast.parse((REPO / "dalib" / "__init__.py").read_text())
    (value,) = [node.value for node in tree.body if isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)]
    assert isinstance(value, ast.List) and all(isinstance(e, ast.Constant) for e in value.elts)
    names = [e.value for e in value.elts]
    assert names == sorted(names) == sorted(["__version__", *dalib._EXPORTS]) == dalib.__all__


def test_the_documented_api_passes_mypy_strict(tmp_path):
    """A method whose loss logs a plain number, RunConfig's method_config as the method's own
    Config and data_root as a Path, load_model's classes, set_params chained into fit, and
    from_arrays on lists: each had been a mypy error against dalib's annotations, though
    dalib accepts them at run time and the docs show them."""
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\nstrict = True\n"
                      "[mypy-dalib.*]\nignore_errors = True\n")  # dalib's own code is not what is checked here
    env = {**os.environ, "MYPYPATH": str(REPO)}  # (the editable install's import hook is invisible to mypy)
    script = REPO / "tests" / "fixtures" / "typed_user.py"
    done = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(config), "--cache-dir",
                           str(tmp_path / "cache"), "--no-error-summary", str(script)],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
