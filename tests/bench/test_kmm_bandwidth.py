"""benchmarks/kmm_bandwidth.py: KMM's bandwidth by importance-weighted cross-validation on the
source, without target labels."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score

from dalib_benchmarks.kmm_bandwidth import choose, iwcv_error, main
from tests._support.toy_suite import toy_suite_text

TOY_SUITE = toy_suite_text("""
[shallow]
classifiers = ["linear"]
[methods.kmm.shallow]
B = 10.0
""")


def _blobs(n=90, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = np.c_[y * 3.0, np.zeros(n)] + rng.normal(0, 1.0, size=(n, 2))
    flip = rng.random(n) < noise
    return x, np.where(flip, 1 - y, y), flip


def test_uniform_weights_give_the_plain_cross_validation_error():
    x, y, _ = _blobs(noise=0.2)
    folds = StratifiedKFold(3, shuffle=True, random_state=0)
    plain = 1.0 - cross_val_score(LogisticRegression(C=1.0, max_iter=1000), x, y, cv=folds).mean()  # dalib's linear
    assert iwcv_error(x, y, np.ones(len(y))) == pytest.approx(plain, abs=1e-12)
    assert plain > 0.1  # the flipped labels cost something


def test_zero_weights_leave_samples_out_of_the_score():
    x, y, flip = _blobs(noise=0.2)
    weights = np.where(flip, 0.0, 1.0)  # the flipped samples neither train nor count
    assert iwcv_error(x, y, weights) < 0.5 * iwcv_error(x, y, np.ones(len(y)))


def test_the_error_is_sugiyamas_weighted_train_and_weighted_score():
    """Each fold's classifier is trained with the other folds' weights, and its held-out
    errors weighted: written out here with scikit-learn."""
    x, y, _ = _blobs(noise=0.2)
    w = np.random.default_rng(3).uniform(0.1, 3.0, len(y))
    want = 0.0
    for train, held in StratifiedKFold(3, shuffle=True, random_state=0).split(x, y):
        clf = LogisticRegression(C=1.0, max_iter=1000).fit(x[train], y[train], sample_weight=w[train])
        want += np.sum(w[held] * (clf.predict(x[held]) != y[held])) / np.sum(w[held]) / 3
    assert iwcv_error(x, y, w) == pytest.approx(want, abs=1e-12)


def test_choose_takes_the_bandwidth_of_smallest_mean_error():
    rows = [{"bandwidth": 1.0, "error": 0.3}, {"bandwidth": 1.0, "error": 0.1}, {"bandwidth": 2.0, "error": 0.15}]
    assert choose(rows) == 2.0  # mean errors 0.2 and 0.15


def test_the_script_scores_each_bandwidth_on_each_task_without_target_labels(tmp_path, toy_dataset):
    suite = tmp_path / "toy.toml"
    suite.write_text(TOY_SUITE)
    out = tmp_path / "results"
    assert main(["--suite", str(suite), "--grid", "0.5", "2", "--out", str(out)]) == 0
    payload = json.loads((out / "kmm_bandwidth_toy.json").read_text())
    assert [(r["bandwidth"], r["task"]) for r in payload["rows"]] == [(0.5, "src->tgt"), (2.0, "src->tgt")]
    assert payload["settings"] == {"B": 10.0}  # the suite's other KMM settings are kept
    for r in payload["rows"]:
        assert 0.0 <= r["error"] <= 1.0 and 0 < r["effective_sample_size"] <= r["n_source"]
    assert payload["chosen"] == min(payload["rows"], key=lambda r: (r["error"], r["bandwidth"]))["bandwidth"]
    # each row is KMM's fit of the source to the target at its σ, recomputed here
    from dalib.data import load_domain
    from dalib.shallow import KMM

    src, tgt = (load_domain(toy_dataset, d) for d in ("src", "tgt"))
    xs, xt = (d.x.flatten(1).double().numpy() for d in (src, tgt))
    for r in payload["rows"]:
        kmm = KMM(B=10.0, bandwidth=r["bandwidth"]).fit(xs, xt)
        w = np.asarray(kmm.weights_, dtype=np.float64)
        assert r["effective_sample_size"] == pytest.approx(kmm.effective_sample_size_, rel=1e-3)
        assert r["effective_sample_size"] < 0.9 * len(w)  # (to the source itself, the weights would all be near 1)
        assert r["zero_fraction"] == pytest.approx(np.mean(w == 0), abs=0.02)
        assert r["error"] == pytest.approx(iwcv_error(xs, src.y.numpy(), w), abs=0.02)
        assert payload["mean_error"][str(r["bandwidth"])] == r["error"]  # (one task: its mean is its error)
    assert "accuracy" not in json.dumps(payload)  # no target score is computed
    md = (out / "kmm_bandwidth_toy.md").read_text()
    assert f"σ = {payload['chosen']:g}" in md and f"--suite {suite} --grid 0.5 2 " in md


def test_a_default_run_writes_the_suites_file_with_a_reproduce_line_of_no_machines_paths(tmp_path, monkeypatch,
                                                                                       toy_dataset):
    """--out had a default, results/, which every Reproduce line then named as an absolute path
    of the machine that ran it."""
    from dalib_benchmarks import kmm_bandwidth

    suite = tmp_path / "toy.toml"
    suite.write_text(TOY_SUITE)
    monkeypatch.setattr(kmm_bandwidth, "HERE", tmp_path)
    assert main(["--suite", str(suite), "--grid", "0.5"]) == 0
    md = (tmp_path / "results" / "kmm_bandwidth_toy.md").read_text()
    assert f"Reproduce: `python benchmarks/kmm_bandwidth.py --suite {suite} --grid 0.5 --jobs 1` (" in md
