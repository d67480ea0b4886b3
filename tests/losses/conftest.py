"""Shared kernel fixtures (tiles, backend environment, one thread)."""

from tests._support.kernel_fixtures import _no_backend_env, _one_thread, small_tiles  # noqa: F401
