"""The shallow estimators' parameters, as scikit-learn sees them."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone

from dalib.errors import ConfigError
from dalib.shallow import CORAL, KMM, OTMapping


@pytest.mark.parametrize(
    "estimator, changed",
    [(KMM(bandwidth=2.0, B=5.0), {"bandwidth": 2.0, "B": 5.0}), (CORAL(reg=0.5), {"reg": 0.5}),
     (OTMapping(reg=0.1, reg_cl=1.0), {"reg": 0.1, "reg_cl": 1.0})],
)
def test_clone_keeps_the_parameters_and_drops_the_fit(estimator, changed):
    rng = np.random.default_rng(0)
    xs, xt, ys = rng.normal(size=(40, 3)), rng.normal(size=(30, 3)) + 0.5, np.arange(40) % 2
    estimator.fit(xs, xt, ys)
    copy = clone(estimator)
    assert copy.get_params() == estimator.get_params()
    assert {k: v for k, v in copy.get_params().items() if k in changed} == changed
    assert not any(name.endswith("_") and not name.startswith("_") for name in vars(copy))  # unfitted
    assert repr(copy) == f"{type(estimator).__name__}({', '.join(f'{k}={v!r}' for k, v in changed.items())})"


def test_set_params_changes_a_parameter_and_refuses_an_unknown_one():
    kmm = KMM().set_params(B=3.0)
    assert kmm.B == 3.0
    with pytest.raises(ConfigError, match="unknown parameter.*sigma of KMM; valid: kernel, bandwidth, B"):
        kmm.set_params(sigma=1.0)
