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


@pytest.mark.parametrize("make", [CORAL, OTMapping, KMM])
def test_a_pipeline_step_is_told_why_its_target_is_labels(make):
    """A Pipeline passes y as fit's second argument, or None without y: the errors had said only
    "Xt must be 2-D", "must hold numbers, got dtype object" and "different feature sizes"."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from dalib.errors import InputError

    x, y = np.random.default_rng(0).normal(size=(30, 4)), np.arange(30) % 2
    why = (r": fit\(Xs, Xt\) takes the target's features, not labels, so these estimators are no steps of a "
           r"scikit-learn Pipeline")
    step = make_pipeline(make(), LogisticRegression()) if hasattr(make, "transform") else make_pipeline(make())
    for given, what in ((y, r"Xt must be a 2-D .* got shape \(30,\)"), (None, r"Xt is missing \(None\)"),
                        (y.reshape(-1, 1), "Xs and Xt have different feature sizes: 4 and 1")):
        with pytest.raises(InputError, match="^" + what + why):
            step.fit(x, given)
    with pytest.raises(InputError, match="different feature sizes: 4 and 2$"):  # (no labels' shape: no word of them)
        make().fit(x, x[:, :2])


@pytest.mark.parametrize("make", [CORAL, OTMapping, KMM])
def test_dataframe_columns_are_matched_by_name_as_scikit_learn_does(make):
    """Columns are read by position: a target, or samples to transform, whose DataFrame has the
    fitted columns in another order had been mapped silently with its features mixed up
    (scikit-learn refuses them, from feature_names_in_)."""
    import pandas as pd

    from dalib.errors import InputError

    rng = np.random.default_rng(0)
    xs, xt = rng.normal(size=(30, 4)), rng.normal(size=(25, 4)) + 0.5
    source, target = pd.DataFrame(xs, columns=list("abcd")), pd.DataFrame(xt, columns=list("abcd"))
    shuffled = list("dcba")
    with pytest.raises(InputError, match=r"^Xt's columns are Xs's in another order.*: give Xt\[Xs.columns\]$"):
        make().fit(source, target[shuffled])
    with pytest.raises(InputError, match=r"^Xt's columns are not Xs's: missing \['d'\], unexpected \['e'\]$"):
        make().fit(source, target.rename(columns={"d": "e"}))
    fitted = make().fit(source, target)
    assert fitted.n_features_in_ == 4 and list(fitted.feature_names_in_) == list("abcd")
    assert "feature_names_in_" not in vars(make().fit(xs, xt)) and make().fit(xs, xt).n_features_in_ == 4
    numbered = make().fit(pd.DataFrame(xs), pd.DataFrame(xt)[[3, 2, 1, 0]])  # names that are not all strings: none,
    assert "feature_names_in_" not in vars(numbered)  # as scikit-learn keeps none (columns by position)
    assert "feature_names_in_" not in vars(fitted.fit(xs, target))  # a refit on arrays keeps no earlier names
    if not hasattr(make, "transform"):
        return
    fitted.fit(source, target)
    np.testing.assert_array_equal(fitted.transform(source[list("abcd")]), fitted.transform(xs))  # (a copy: same)
    with pytest.raises(InputError, match=rf"^X's columns are those {make.__name__} was fitted on in another order"):
        fitted.transform(source[shuffled])
    with pytest.raises(InputError, match=r"^Xs's columns are not those .*: missing \['a', 'b', 'c', 'd'\]"):
        fitted.transform(Xs=source.rename(columns=str.upper))
    np.testing.assert_array_equal(fitted.transform(xs[:5]), fitted.transform(source[:5]))  # (arrays have no names)


def test_run_shallow_and_repeated_column_names_are_held_to_the_same_rule():
    """run_shallow had read the target's columns by position whatever their names; a name given
    twice had been told to reorder (Xt[Xs.columns] then has more columns) or had named nothing
    missing nor unexpected."""
    import pandas as pd

    from dalib.errors import InputError
    from dalib.shallow import run_shallow

    rng = np.random.default_rng(0)
    source = pd.DataFrame(rng.normal(size=(30, 3)), columns=list("abc"))
    ys = np.arange(30) % 2
    for method in ("coral", "kmm", "ot"):
        with pytest.raises(InputError, match=r"^Xt's columns are Xs's in another order"):
            run_shallow(method, source, ys, source[list("cba")], ys)
    assert run_shallow("coral", source, ys, source, ys).target_accuracy is not None
    twice = source.set_axis(list("aab"), axis=1)
    for target, names in ((source.set_axis(list("aba"), axis=1), "a, b, a"), (source.set_axis(list("abb"), axis=1),
                                                                              "a, b, b")):
        with pytest.raises(InputError, match=rf"^Xt's columns \({names}\) are not Xs's \(a, a, b\), in that order$"):
            CORAL().fit(twice, target)
    CORAL().fit(twice, twice)  # (the same names, in the same order: read as given)


@pytest.mark.parametrize("make", [CORAL, OTMapping])
def test_transform_takes_pots_keyword(make):
    """POT's ot.da names transform's samples Xs, as fit's: transform(Xs=...) had been a TypeError."""
    from dalib.errors import InputError

    rng = np.random.default_rng(0)
    xs, xt = rng.normal(size=(30, 4)), rng.normal(size=(25, 4)) + 0.5
    fitted = make().fit(Xs=xs, Xt=xt)
    np.testing.assert_array_equal(fitted.transform(Xs=xs[3:9]), fitted.transform(xs[3:9]))
    for args, kwargs, what in (((), {}, "neither"), ((xs,), {"Xs": xs}, "both")):
        with pytest.raises(InputError, match=rf"transform takes the samples once: .*; got {what}$"):
            fitted.transform(*args, **kwargs)
