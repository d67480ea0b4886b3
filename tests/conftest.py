"""Shared fixtures: the real data beside the checkout, small run configurations."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()

# Tests are small: two threads keep them fast on the 2-core CI machine and stable elsewhere.
torch.set_num_threads(min(2, os.cpu_count() or 1))

# The tests of Ctrl-C send SIGINT to this process and expect Python's KeyboardInterrupt. A test
# run started in the background by a shell without job control (`cmd &` in a script, nohup)
# begins with SIGINT ignored, which Python keeps (and dalib rightly keeps too): those tests then
# saw no interrupt at all. The session takes Python's own handler, whatever started it.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"the shared data folder is missing: {SHARED_DATA} (CI places ../shared beside the clone)")
    return SHARED_DATA


@pytest.fixture
def chdir_tmp(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _toy_shift_domain(request):
    """Inter-twinning moons (Ganin et al., JMLR 2016, section 5.1): the target is the source
    rotated by 40 degrees, so a source-only classifier loses accuracy that alignment wins
    back. Embedded in 8 dimensions (the moons in the first two, small noise elsewhere)."""
    import numpy as np

    from dalib.data import Domain

    rng = np.random.default_rng(0 if request.domain == "src" else 1)
    n = 300
    y = np.arange(n) % 2
    t = rng.uniform(0, np.pi, size=n)
    x2 = np.where(y[:, None] == 0, np.c_[np.cos(t), np.sin(t)], np.c_[1 - np.cos(t), 0.5 - np.sin(t)])
    x2 = x2 + rng.normal(0, 0.1, size=(n, 2)) - [0.5, 0.25]
    if request.domain == "tgt":
        a = np.deg2rad(40)
        x2 = x2 @ np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]).T
    x = np.c_[x2, rng.normal(0, 0.05, size=(n, 6))]
    return Domain.from_arrays(request.domain, x.astype(np.float32), y, num_classes=2, dataset_name="toy-shift")


@pytest.fixture(scope="session")
def toy_dataset() -> str:
    """A small synthetic feature dataset ``toy-shift`` with domains ``src`` and ``tgt``."""
    from dalib.data import DatasetInfo, list_datasets, register_dataset

    if "toy-shift" not in list_datasets():
        register_dataset(
            DatasetInfo(name="toy-shift", description="synthetic shifted Gaussian clusters (tests)",
                        domains=("src", "tgt"), kind="features", num_classes=2, needs="embedded"),
            _toy_shift_domain,
        )
    return "toy-shift"


@pytest.fixture(scope="session")
def unlabelled_dataset(toy_dataset) -> str:
    """The toy shift with the target's labels dropped."""
    from dalib.data import DatasetInfo, Domain, list_datasets, register_dataset
    from dalib.data.registry import _entry

    if "toy-unlabelled" not in list_datasets():
        toy = _entry(toy_dataset)[1]

        def load(request):
            d = toy(request)
            if request.domain == "src":
                return d
            return Domain.from_arrays(request.domain, d.x, None, num_classes=2, dataset_name="toy-unlabelled")

        register_dataset(DatasetInfo(name="toy-unlabelled", description="toy shift, unlabelled target (tests)",
                                     domains=("src", "tgt"), kind="features", num_classes=2, needs="embedded"), load)
    return "toy-unlabelled"


@pytest.fixture
def fresh_backbones():
    """The backbone registry as it was before the test, after it (tests register their own)."""
    from dalib.models import backbones

    saved = dict(backbones.BACKBONES)
    yield
    backbones.BACKBONES.clear()
    backbones.BACKBONES.update(saved)
