"""Fixtures for dalib.data tests: the real benchmark files and small synthetic ones."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
REAL_DATA_ROOT = Path(os.environ.get("DALIB_DATA_ROOT") or REPO_ROOT.parent / "shared" / "data")


@pytest.fixture
def real_root() -> Path:
    """The shared benchmark data (../shared/data from the repository root); skip without it."""
    if not (REAL_DATA_ROOT / "office_caltech10_surf").is_dir():
        pytest.skip(f"benchmark data not found under {REAL_DATA_ROOT}")
    return REAL_DATA_ROOT


@pytest.fixture
def isolated_registry(monkeypatch):
    """Registrations made in a test vanish after it."""
    from dalib.data import registry

    monkeypatch.setattr(registry, "_DATASETS", dict(registry._DATASETS))
    return registry
