"""A notebook's ``torch.set_default_device(...)`` before dalib is called: the losses, the shallow
estimators, a run and ``load_model`` compute on their inputs' (or the run's) device, with the
numbers they give without it. The meta device, whose tensors hold no values, stands in for a
GPU here: a tensor dalib made without naming a device had landed on it (``Tensor.item() cannot
be called on meta tensors``, "Cannot copy out of meta tensor")."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import dalib
from dalib._arrays import default_device
from dalib.losses import coral, mmd, sinkhorn
from dalib.shallow import CORAL, KMM, OTMapping


@pytest.fixture
def default_meta():
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)
    assert default_device().type == "cpu"


_GEN = torch.Generator().manual_seed(0)
_X, _Y = torch.randn(64, 8, generator=_GEN), torch.randn(70, 8, generator=_GEN) + 0.5
_WIDE = torch.randn(1100, 3, generator=_GEN)  # above the median's sample of points: its random subset


def _values(toy_dataset, out):
    x, y = _X, _Y
    losses = [float(mmd(x, y)), float(mmd(x, y, bandwidths=[1.0, 2.0])), float(mmd(_WIDE, _WIDE + 1)),
              float(coral(x, y)), float(sinkhorn(x, y))]
    shallow = [KMM().fit(x.numpy(), y.numpy()).weights_, CORAL().fit_transform(x.numpy(), y.numpy()),
               OTMapping().fit_transform(x.numpy(), y.numpy())]
    deep = dalib.run(dalib.RunConfig(method="dann", dataset=toy_dataset, src="src", tgt="tgt", steps=3, batch_size=16,
                                     mode="deep"), out, progress_bar=False)
    flat = dalib.run(dalib.RunConfig(method="ot", dataset=toy_dataset, src="src", tgt="tgt", mode="shallow"), None,
                     progress_bar=False)
    loaded = dalib.load_model(out)
    return losses, shallow, (deep.target_accuracy, flat.target_accuracy), loaded


def test_a_default_device_set_by_the_caller_changes_nothing(toy_dataset, tmp_path, request):
    losses, shallow, runs, loaded = _values(toy_dataset, tmp_path / "plain")
    request.getfixturevalue("default_meta")
    losses_m, shallow_m, runs_m, loaded_m = _values(toy_dataset, tmp_path / "meta")
    assert losses_m == losses and runs_m == runs
    for a, b in zip(shallow_m, shallow):
        assert isinstance(a, np.ndarray) and np.array_equal(a, b)
    assert all(t.device.type == "cpu" for t in loaded_m.state_dict().values())
    assert loaded_m.state_dict().keys() == loaded.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(loaded_m.state_dict().values(), loaded.state_dict().values()))
    assert default_device().type == "meta"  # the caller's setting, given back


def test_a_device_block_of_the_callers_changes_nothing_and_neither_does_setting_the_default_back():
    """`with torch.device("meta"):` is a default device too, which torch.get_default_device() misses
    before torch 2.8 (KMM's weights then met the meta inputs' tensors); and on torch 2.4 it raised
    AttributeError once set_default_device(None) had set the default back, in every dalib call after."""
    x, y = _X.numpy(), _Y.numpy()
    plain = [KMM().fit(x, y).weights_, CORAL().fit_transform(x, y), float(mmd(_X, _Y))]
    with torch.device("meta"):
        assert default_device().type == "meta"
        inside = [KMM().fit(x, y).weights_, CORAL().fit_transform(x, y), float(mmd(_X, _Y))]
    torch.set_default_device("meta")
    torch.set_default_device(None)
    after = [KMM().fit(x, y).weights_, CORAL().fit_transform(x, y), float(mmd(_X, _Y))]
    for found in (inside, after):
        assert all(np.array_equal(a, b) for a, b in zip(found[:2], plain[:2])) and found[2] == plain[2]


def test_run_shallow_under_a_default_device_set_by_the_caller(request):
    """dalib.shallow.run_shallow, the shallow pipeline's public entry point, too."""
    from dalib.shallow import run_shallow

    gen = torch.Generator().manual_seed(1)
    ys, yt = torch.randint(0, 3, (64,), generator=gen).numpy(), torch.randint(0, 3, (70,), generator=gen).numpy()

    def predictions():
        return [run_shallow(m, _X.numpy(), ys, _Y.numpy(), yt) for m in ("kmm", "coral", "ot")]

    plain = predictions()
    request.getfixturevalue("default_meta")
    for found, expected in zip(predictions(), plain):
        assert np.array_equal(found.pred_t, expected.pred_t) and found.target_accuracy == expected.target_accuracy
