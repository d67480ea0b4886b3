"""Fixtures of the kernel and loss tests: small tiles so that the blocked backend crosses
tile edges, no backend override from the environment, one thread. A folder's conftest.py
imports them with ``from tests._support.kernel_fixtures import *``."""

from __future__ import annotations

import pytest

import dalib.kernels.blocked as blocked

__all__ = ["_no_backend_env", "_one_thread", "small_tiles"]


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of 7 × 5 (and 7 × 7 for the symmetric paths): every edge case on tiny inputs."""
    monkeypatch.setattr(blocked, "TILE_ROWS", 7)
    monkeypatch.setattr(blocked, "TILE_COLS", 5)


@pytest.fixture(autouse=True)
def _no_backend_env(monkeypatch):
    monkeypatch.delenv("DALIB_KERNEL_BACKEND", raising=False)


@pytest.fixture(autouse=True)
def _one_thread():
    """These tests run on tiny tensors: one thread avoids OpenMP wake-ups (and is kind to
    a shared machine). Restored afterwards."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
