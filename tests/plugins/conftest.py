"""Method runs here train small MLPs on a few hundred samples: one thread is fastest."""

from tests._support.kernel_fixtures import _one_thread  # noqa: F401
