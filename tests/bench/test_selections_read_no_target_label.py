"""The selections behind the published shallow settings (importance-weighted CV of KMM's
bandwidth, 2-fold source CV of C, circular validation of the OT regularisation) read no
target label: with every target label changed, each gives the same score to the last bit."""

from __future__ import annotations

import numpy as np
import pytest

from dalib_benchmarks import kmm_bandwidth
from dalib_benchmarks import shallow_accuracy as sa


def _blind(monkeypatch, module, name, relabel):
    """Wrap ``module.name`` so that the target labels it hands out are wrong (``relabel``)."""
    real = getattr(module, name)

    def wrapped(*args, **kwargs):
        return relabel(real(*args, **kwargs), *args)

    monkeypatch.setattr(module, name, wrapped)


def _shift(y):
    """Other labels for the same samples: shuffled among them (a relabelling of the classes
    alone would leave a cross-validation error as it was)."""
    return np.random.default_rng(0).permutation(np.asarray(y))


@pytest.mark.parametrize("unit, job", [
    (sa._c_cv_unit, lambda root: (True, "linear", 0.001, "D→W", root)),
    (sa._circular_unit, lambda root: ("office-all", {"reg": 1.0}, "D→W", root)),
    (sa._circular_unit, lambda root: ("office-all", {"reg": 1.0, "reg_cl": 0.1}, "D→W", root)),
])
def test_source_only_selections_give_the_same_scores_without_the_target_labels(unit, job, data_root, monkeypatch):
    seen = unit(job(str(data_root)))
    _blind(monkeypatch, sa, "_pair", lambda out, *args: (*out[:3], _shift(out[3])))
    assert unit(job(str(data_root))) == seen


def test_kmm_bandwidth_selection_gives_the_same_error_without_the_target_labels(data_root, monkeypatch):
    args = ("office-caltech-surf", "dslr", "webcam", {"bandwidth": 10.0}, str(data_root), 1)
    seen = kmm_bandwidth._unit(*args)
    _blind(monkeypatch, kmm_bandwidth, "_features",
           lambda out, dataset, domain, root: (out[0], _shift(out[1])) if domain == "webcam" else out)
    again = kmm_bandwidth._unit(*args)
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in seen.items() if k != "seconds"}
