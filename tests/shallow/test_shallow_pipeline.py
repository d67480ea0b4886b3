"""Classifiers and the run_shallow pipeline: behaviour, configs, errors, real data."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest
import torch

from dalib.config import build_config
from dalib.errors import ConfigError, InputError, UnknownNameError
from dalib.shallow import (
    CLASSIFIERS,
    CORAL,
    KMM,
    CoralConfig,
    KMMConfig,
    OTConfig,
    OTMapping,
    make_classifier,
    run_shallow,
    shallow_methods,
)


def _blobs(seed: int, shift: float, n_per_class: int = 30):
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    x = np.concatenate([c + rng.normal(size=(n_per_class, 2)) for c in centers]) + shift
    y = np.repeat(np.arange(3), n_per_class)
    return x, y


def test_one_nn_is_exact():
    rng = np.random.default_rng(0)
    ref, labels = rng.normal(size=(50, 4)), rng.integers(0, 5, 50)
    query = rng.normal(size=(33, 4))
    clf = make_classifier("1nn")
    clf.block_rows = 8  # several query blocks
    pred = clf.fit(ref, labels).predict(query)
    brute = labels[np.argmin(((query[:, None] - ref[None]) ** 2).sum(-1), axis=1)]
    np.testing.assert_array_equal(pred, brute)
    # zero weights leave samples out of the reference set
    w = np.ones(50)
    w[labels == labels[0]] = 0.0
    pred_w = make_classifier("1nn").fit(ref, labels, sample_weight=w).predict(query)
    assert labels[0] not in set(pred_w)


@pytest.mark.parametrize("name", ["linear", "svm", "svc"])
def test_weighted_linear_classifiers_use_the_weights(name):
    x, y = _blobs(1, 0.0, n_per_class=20)
    x = np.concatenate([x, [[2.0, 2.0]]])
    y = np.concatenate([y, [1]])
    w = np.ones(len(y))
    w[-1] = 2.0
    dup_x, dup_y = np.concatenate([x, x[-1:]]), np.concatenate([y, y[-1:]])
    weighted = make_classifier(name).fit(x, y, sample_weight=w)
    duplicated = make_classifier(name).fit(dup_x, dup_y)
    # an integer weight is the same as repeating the sample (same objective)
    np.testing.assert_allclose(weighted.estimator.coef_, duplicated.estimator.coef_, rtol=1e-2, atol=1e-3)
    grid = np.random.default_rng(2).normal(size=(200, 2)) * 3 + 2
    assert np.mean(weighted.predict(grid) == duplicated.predict(grid)) > 0.98


@pytest.mark.parametrize("name", ["svm", "svc"])
def test_the_svms_leave_the_callers_random_numbers_alone(name):
    # scikit-learn's SVMs without a seed of their own draw one from numpy's global generator:
    # the caller's next numbers moved, and an unconverged liblinear fit followed the caller's seed
    import warnings

    rng = np.random.RandomState(42)
    if name == "svm":  # duplicated points, random labels: liblinear stops at its cap, by its order of coordinates
        xs = np.repeat(rng.randn(30, 20) * 50, 4, axis=0) + rng.randn(120, 20) * 0.01
        ys, xt = rng.randint(0, 4, 120), rng.randn(200, 20) * 50
    else:  # (libsvm would take minutes on those)
        xs = rng.randn(60, 2)
        ys, xt = (xs[:, 0] > 0).astype(int), rng.randn(50, 2)
    predictions = []
    for seed in (0, 1):
        np.random.seed(seed)
        expected = np.random.random_sample()
        np.random.seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (liblinear's ConvergenceWarning, on purpose)
            predictions.append(make_classifier(name).fit(xs, ys).predict(xt))
        assert np.random.random_sample() == expected
    np.testing.assert_array_equal(predictions[0], predictions[1])


def test_classifier_errors():
    x, y = _blobs(3, 0.0)
    with pytest.raises(UnknownNameError, match="known: 1nn, linear, svm, svc"):
        make_classifier("rf")
    with pytest.raises(InputError, match="sample_weight"):
        make_classifier("linear").fit(x, y, sample_weight=-np.ones(len(y)))
    n = len(y)
    with pytest.raises(InputError, match=rf"sample_weight has shape \({n}, 2\) for {n} samples: give \({n},\)"):
        make_classifier("linear").fit(x, y, sample_weight=np.ones((n, 2)))  # not read as 2n entries
    # one number weighs every sample alike, as scikit-learn takes it; a column is a vector
    plain = make_classifier("linear").fit(x, y).estimator.coef_
    np.testing.assert_allclose(make_classifier("linear").fit(x, y, sample_weight=1.0).estimator.coef_, plain)
    np.testing.assert_allclose(make_classifier("linear").fit(x, y, sample_weight=np.ones((n, 1))).estimator.coef_, plain)
    with pytest.raises(InputError, match="labels for"):
        make_classifier("1nn").fit(x, y[:3])
    with pytest.raises(InputError, match="not fitted"):
        make_classifier("1nn").predict(x)
    with pytest.raises(InputError, match="features"):
        make_classifier("linear").fit(x, y).predict(x[:, :1])


@pytest.mark.parametrize(("config_cls", "est_cls"), [(KMMConfig, KMM), (CoralConfig, CORAL), (OTConfig, OTMapping)])
def test_configs_mirror_the_estimators(config_cls, est_cls):
    fields = {f.name: f.default for f in dataclasses.fields(config_cls)}
    sig = inspect.signature(est_cls.__init__).parameters
    assert fields == {k: p.default for k, p in sig.items() if k != "self"}
    assert all(f.metadata.get("help") for f in dataclasses.fields(config_cls))
    assert isinstance(config_cls().build(), est_cls)


def test_the_builtin_shallow_forms_are_registered():
    import dalib

    assert {"source_only", "kmm", "coral", "ot"} <= set(shallow_methods())
    assert "dann" not in shallow_methods()
    assert dalib.get_method("coral").ShallowConfig is CoralConfig
    assert dalib.get_method("ot").ShallowConfig is OTConfig
    assert issubclass(dalib.get_method("kmm").Config, KMMConfig)


@pytest.mark.parametrize("method", ["source_only", "kmm", "coral", "ot"])
def test_every_method_runs_and_scores(method):
    xs, ys = _blobs(4, 0.0)
    xt, yt = _blobs(5, 1.5)
    res = run_shallow(method, xs, ys, torch.tensor(xt), yt, classifier="1nn")
    assert res.method == method and res.pred_t.shape == (90,)
    assert 0.0 <= res.target_accuracy <= 1.0
    assert res.target_accuracy == pytest.approx(np.mean(res.pred_t == yt))
    assert run_shallow(method, xs, ys, xt, classifier="linear").target_accuracy is None


def test_adaptation_helps_on_a_shifted_problem():
    xs, ys = _blobs(6, 0.0)
    xt, yt = _blobs(7, 2.0)  # every class shifted by (2, 2): half-way to its neighbours
    base = run_shallow("source_only", xs, ys, xt, yt, classifier="1nn").target_accuracy
    ot_acc = run_shallow("ot", xs, ys, xt, yt, classifier="1nn", params={"reg": 0.1, "norm": "max"}).target_accuracy
    assert ot_acc > base + 0.15
    assert ot_acc > 0.9


def test_params_parse_strings_and_reject_unknown_keys():
    xs, ys = _blobs(8, 0.0)
    xt, _ = _blobs(9, 1.0)
    res = run_shallow("ot", xs, ys, xt, params={"reg": "0.5", "norm": "median", "reg_cl": "None"})
    assert res.config["reg"] == 0.5 and res.config["reg_cl"] is None
    with pytest.raises(ConfigError, match="unknown hyperparameter 'lambda' of coral; valid: reg"):
        run_shallow("coral", xs, ys, xt, params={"lambda": 1.0})
    with pytest.raises(ConfigError, match="bad value"):
        run_shallow("kmm", xs, ys, xt, params={"B": "lots"})
    with pytest.raises(ConfigError):
        run_shallow("kmm", xs, ys, xt, params={"B": -1})
    with pytest.raises(UnknownNameError, match="known methods: coral, dann"):
        run_shallow("tca", xs, ys, xt)
    with pytest.raises(ConfigError, match="dann.* has no shallow form; methods with one: coral, kmm, ot"):
        run_shallow("dann", xs, ys, xt)
    with pytest.raises(UnknownNameError, match="classifier"):
        run_shallow("coral", xs, ys, xt, classifier="knn")
    with pytest.raises(InputError, match="feature sizes"):
        run_shallow("coral", xs, ys, xt[:, :1])
    assert build_config(CoralConfig, {"reg": "2"}).build().reg == 2.0


def test_office_caltech_one_nn_baseline_reproduces_the_jda_table(data_root):
    from dalib.data import load_domain

    src = load_domain("office-caltech-surf", "caltech", data_root=data_root)
    tgt = load_domain("office-caltech-surf", "amazon", data_root=data_root)
    res = run_shallow("source_only", src.x, src.y, tgt.x, tgt.y, classifier="1nn")
    assert round(100 * res.target_accuracy, 2) == 23.70  # JDA paper, Table 2, C→A


def test_the_documented_classifiers_train_on_the_adapted_weighted_source():
    """``linear`` is logistic regression with C = 1 and ``svm`` a linear SVM with C = 1 (the
    module's documentation), fitted on the adapted source with the method's sample weights."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    import dalib
    from dalib.shallow.pipeline import fit_shallow

    xs, ys = _blobs(8, 0.0)
    xt, _ = _blobs(9, 1.0)
    xs_t, xt_t = torch.tensor(xs), torch.tensor(xt)
    refs = {"linear": LogisticRegression(C=1.0, max_iter=1000), "svm": LinearSVC(C=1.0, dual=True, max_iter=20000)}
    for method, config in [("kmm", KMMConfig()), ("coral", CoralConfig())]:
        cls = dalib.get_method(method)
        for name, ref in refs.items():
            clf, adapted = fit_shallow(cls, config, xs_t, ys, xt_t, name)
            w = None if adapted.weights is None else np.asarray(adapted.weights, dtype=np.float64)
            want = ref.fit(np.asarray(adapted.xs), ys, sample_weight=w).coef_
            np.testing.assert_allclose(clf.estimator.coef_, want, rtol=1e-3, atol=1e-4)  # solvers to tolerance
            if method == "kmm":  # the weights are not uniform here, so ignoring them would show
                assert np.ptp(w) > 0.5
                plain = ref.fit(np.asarray(adapted.xs), ys).coef_
                assert np.abs(plain - want).max() > 1e-3
            else:  # CORAL moves the source: the classifier is not the one of the raw features
                assert not np.allclose(np.asarray(adapted.xs), xs)


def test_a_shallow_runs_source_accuracy_is_on_the_adapted_source(tmp_path, toy_dataset):
    """``dalib run``'s source accuracy scores the classifier where it was trained: on the
    adapted source (CORAL re-colours it), not on the raw features."""
    import dalib
    from dalib.data import load_domain
    from dalib.runner import RunConfig, run
    from dalib.shallow.pipeline import fit_shallow

    src, tgt = load_domain(toy_dataset, "src"), load_domain(toy_dataset, "tgt")
    xs, xt = src.x.flatten(1).double(), tgt.x.flatten(1).double()
    clf, adapted = fit_shallow(dalib.get_method("coral"), CoralConfig(), xs, src.y.numpy(), xt, "linear")
    on_adapted = 100 * np.mean(clf.predict(np.asarray(adapted.xs)) == src.y.numpy())
    on_raw = 100 * np.mean(clf.predict(xs.numpy()) == src.y.numpy())
    assert on_adapted != on_raw  # the two readings differ on these data
    res = run(RunConfig(method="coral", dataset=toy_dataset, src="src", tgt="tgt", mode="shallow",
                        classifier="linear"), None)
    assert res.source_accuracy == pytest.approx(on_adapted)
    assert res.target_accuracy == pytest.approx(100 * np.mean(clf.predict(np.asarray(adapted.xt)) == tgt.y.numpy()))
