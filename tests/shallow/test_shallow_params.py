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


@pytest.mark.parametrize("make", [KMM, CORAL, OTMapping])
def test_scikit_learn_reads_whether_an_estimator_is_fitted_and_what_it_is(make):
    """check_is_fitted and is_classifier failed on scikit-learn >= 1.6 with an AttributeError
    about __sklearn_tags__; a transform before fit is sklearn's NotFittedError too."""
    from sklearn.base import is_classifier, is_regressor
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    from dalib.errors import InputError

    rng = np.random.default_rng(0)
    xs, xt = rng.normal(size=(30, 3)), rng.normal(size=(20, 3)) + 0.5
    estimator = make()
    assert not is_classifier(estimator) and not is_regressor(estimator)
    with pytest.raises(NotFittedError):
        check_is_fitted(estimator)
    if hasattr(estimator, "transform"):
        with pytest.raises(NotFittedError, match="is not fitted yet") as caught:
            estimator.transform(xs)
        assert isinstance(caught.value, InputError)  # and dalib's one-line input error
    check_is_fitted(estimator.fit(xs, xt))


def test_dataframes_of_mixed_or_nullable_number_columns_are_numbers():
    """numpy reads them as objects, which were refused ("must hold numbers, got dtype object")."""
    import pandas as pd

    from dalib.errors import InputError

    rng = np.random.default_rng(0)
    xs, xt = rng.normal(size=(30, 3)), rng.normal(size=(20, 3)) + 0.5
    plain = CORAL().fit(xs, xt).transform(xs)
    nullable = pd.DataFrame(xs).astype("Float64")
    np.testing.assert_allclose(CORAL().fit(nullable, xt).transform(xs), plain)
    mixed = pd.DataFrame(xs[:, :2]).assign(flag=xs[:, 2] > 0)  # float columns and a bool one
    np.testing.assert_allclose(CORAL().fit(mixed, xt).transform(mixed.to_numpy(dtype=float)),
                               CORAL().fit(mixed.to_numpy(dtype=float), xt).transform(mixed.to_numpy(dtype=float)))
    nullable.iloc[0, 0] = pd.NA
    with pytest.raises(InputError, match=r"Xs (has missing values \(pandas NA\)|holds NaN)"):  # (by pandas version)
        CORAL().fit(nullable, xt)
    with pytest.raises(InputError, match="must hold numbers, got dtype object"):  # text stays refused
        CORAL().fit(pd.DataFrame(xs).assign(name="a"), xt)


@pytest.mark.parametrize("make", [CORAL, OTMapping])
def test_a_pipeline_step_is_told_why_its_target_is_labels(make):
    """A Pipeline passes y as fit's second argument: the error had said only "Xt must be 2-D"."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from dalib.errors import InputError

    x, y = np.random.default_rng(0).normal(size=(30, 4)), np.arange(30) % 2
    with pytest.raises(InputError, match=r"^Xt must be a 2-D .* got shape \(30,\): fit\(Xs, Xt\) takes the target's "
                                         r"features, not labels, so these estimators are no steps of a scikit-learn "
                                         r"Pipeline"):
        make_pipeline(make(), LogisticRegression()).fit(x, y)
