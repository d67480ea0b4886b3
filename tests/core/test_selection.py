"""Model selection without target labels: the criteria against their formulas written out,
the held-out split, the runner's scores and ``dalib select``."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import dalib
from dalib.cli import cli, select_cmd
from dalib.data import Domain
from dalib.errors import CheckpointError, ConfigError, DataError, InputError
from dalib.registry import unregister_method
from dalib.runner import RunConfig, evaluate, run
from dalib.selection import (
    CRITERIA,
    dev_risk,
    effective_sample_fraction,
    importance_weighted_risk,
    importance_weights,
    prediction_entropy,
    score_outputs,
    soft_neighborhood_density,
)
from tests._support.interrupt import killed_at


def _probs(n, c, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, c)) * 3
    return np.exp(z) / np.exp(z).sum(1, keepdims=True)


# --------------------------------------------------------------------------- criteria
def test_prediction_entropy_is_the_mean_row_entropy():
    p = _probs(50, 4)
    p[0] = [1.0, 0.0, 0.0, 0.0]  # 0 log 0 counts as 0
    want = np.mean([-sum(q * math.log(q) for q in row if q > 0) for row in p])
    assert prediction_entropy(p) == pytest.approx(want, rel=1e-12)
    assert prediction_entropy(torch.tensor(p)) == pytest.approx(want, rel=1e-12)
    assert prediction_entropy(np.full((3, 4), 0.25)) == pytest.approx(math.log(4))


@pytest.mark.parametrize("block", [7, 1024])  # blocks that split the rows, and one that holds them all
def test_soft_neighborhood_density_against_the_formula_written_out(block):
    p = _probs(40, 5, seed=1)
    t = 0.05
    f = p / np.linalg.norm(p, axis=1, keepdims=True)
    want = 0.0
    for i in range(len(f)):
        s = np.array([f[i] @ f[j] / t for j in range(len(f)) if j != i])  # not its own neighbour
        q = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
        want += -np.sum(q * np.log(q))
    want /= len(f)
    assert soft_neighborhood_density(p, temperature=t, block=block) == pytest.approx(want, rel=1e-9)


def test_soft_neighborhood_density_is_higher_for_clustered_predictions():
    """Predictions in a few tight groups (each sample has many near neighbours) score higher
    than predictions spread out, as the criterion means."""
    rng = np.random.default_rng(0)
    clustered = np.eye(4)[rng.integers(0, 4, 60)] * 0.96 + 0.01
    spread = _probs(60, 4, seed=2)
    assert soft_neighborhood_density(clustered) > soft_neighborhood_density(spread)


def test_importance_weights_recover_a_known_density_ratio():
    """Source N(0, 1), target N(1, 1) in one dimension: the ratio p_t / p_s is exp(x - 1/2),
    whose log is linear, as logistic regression's log-odds are. With many samples the estimate
    is close to it, and its mean over source points is about 1."""
    rng = np.random.default_rng(0)
    xs, xt = rng.normal(0, 1, (4000, 1)), rng.normal(1, 1, (2000, 1))
    points = np.linspace(-1.5, 2.0, 8)[:, None]
    for c in (None, 1.0):
        w = importance_weights(xs, xt, points, c=c)
        np.testing.assert_allclose(w, np.exp(points[:, 0] - 0.5), rtol=0.15)
    held = rng.normal(0, 1, (3000, 1))
    assert importance_weights(xs, xt, held).mean() == pytest.approx(1.0, abs=0.1)
    # a target of one sample leaves no folds to choose c by: c = 1, as given
    np.testing.assert_array_equal(importance_weights(xs, xt[:1], points), importance_weights(xs, xt[:1], points, c=1.0))


def test_importance_weighted_and_dev_risks_are_their_formulas():
    rng = np.random.default_rng(3)
    loss = (rng.uniform(size=200) < 0.3).astype(float)
    w = rng.gamma(2.0, 0.5, size=200)
    assert importance_weighted_risk(loss, w) == pytest.approx(np.sum(w * loss) / np.sum(w), rel=1e-12)
    big_l = w * loss
    cov = np.sum((big_l - big_l.mean()) * (w - w.mean())) / (len(w) - 1)
    var = np.sum((w - w.mean()) ** 2) / (len(w) - 1)
    eta = -cov / var
    assert dev_risk(loss, w) == pytest.approx(big_l.mean() + eta * w.mean() - eta, rel=1e-12)
    # equal weights: nothing to control for, the plain mean (and the unweighted error)
    assert dev_risk(loss, np.ones(200)) == pytest.approx(loss.mean())
    assert importance_weighted_risk(loss, np.full(200, 3.0)) == pytest.approx(loss.mean())
    # weights as large as importance_weights gives (up to e^700): their variance had overflowed
    # to NaN; the estimate is the same as for the same weights at a scale whose squares fit
    huge = w * 1e300
    expected = big_l.mean() * 1e300 + eta * (w.mean() * 1e300 - 1)
    assert dev_risk(loss, huge) == pytest.approx(expected, rel=1e-9)
    assert np.isfinite(dev_risk([1.0, 0.0, 0.0], [1e155, 1.0, 1.0]))
    # the self-normalised risk of such weights: their sum had overflowed to inf, and inf / inf
    assert importance_weighted_risk(loss, np.full(200, 1e307)) == pytest.approx(loss.mean(), rel=1e-12)
    assert importance_weighted_risk(loss, huge) == pytest.approx(np.sum(w * loss) / np.sum(w), rel=1e-12)


def test_effective_sample_fraction_is_the_kish_size_over_n_at_any_scale():
    w = np.random.default_rng(4).gamma(2.0, 0.5, size=300)
    kish = np.sum(w) ** 2 / np.sum(w ** 2) / len(w)
    assert effective_sample_fraction(w) == pytest.approx(kish, rel=1e-12)
    assert effective_sample_fraction(w * 1e300) == pytest.approx(kish, rel=1e-12)  # (Σw)² had been inf / inf
    assert effective_sample_fraction(np.ones(7)) == pytest.approx(1.0)
    assert effective_sample_fraction([1e200, 0.0, 0.0, 0.0]) == pytest.approx(0.25)  # one weight holds it all


def test_score_outputs_of_domains_a_classifier_tells_apart_are_finite():
    # held-out samples far on the target's side get weights near e^700: the weights' summary
    # had been NaN there (and written into result.json as a bare NaN)
    rng = np.random.default_rng(5)
    fs, fh = rng.normal(size=(200, 4)), rng.normal(size=(50, 4))
    ft = rng.normal(size=(200, 4)) + np.array([6.0, 0, 0, 0])
    fh[:3, 0] = 200.0
    logits = rng.normal(size=(50, 3))
    scores = score_outputs(fs, fh, logits, rng.integers(0, 3, 50), ft, rng.normal(size=(200, 3)))
    assert all(math.isfinite(v) for v in scores.values()), scores
    w = importance_weights(fs, ft, fh)
    assert w.max() > 1e155  # (the case: weights whose squares are beyond a float)
    u = w / w.max()
    assert scores["weights_ess"] == pytest.approx(u.sum() ** 2 / (u @ u) / len(u), rel=1e-9)
    assert 0 < scores["weights_ess"] < 0.1  # a few far samples hold the mass


def test_the_criteria_refuse_what_they_cannot_score():
    with pytest.raises(InputError, match="softmax"):
        prediction_entropy(np.random.default_rng(0).normal(size=(5, 3)))  # logits, not probabilities
    with pytest.raises(InputError, match="two samples"):
        soft_neighborhood_density(np.full((1, 3), 1 / 3))
    with pytest.raises(InputError, match="temperature"):
        soft_neighborhood_density(_probs(5, 3), temperature=0)
    with pytest.raises(InputError, match="3 entries for 4 samples"):
        dev_risk(np.zeros(4), np.ones(3))
    with pytest.raises(InputError, match="non-negative"):
        importance_weighted_risk(np.zeros(2), np.array([1.0, -1.0]))
    with pytest.raises(InputError, match="NaN"):
        dev_risk(np.array([0.0, np.nan]), np.ones(2))
    with pytest.raises(InputError, match="same width"):
        importance_weights(np.zeros((4, 2)), np.ones((4, 2)), np.zeros((1, 3)))


# --------------------------------------------------------------------------- the split
def _domain(n_per_class=(10, 7, 3), seed=0):
    y = np.concatenate([np.full(n, c) for c, n in enumerate(n_per_class)])
    x = np.random.default_rng(seed).normal(size=(len(y), 4)).astype(np.float32)
    return Domain.from_arrays("d", x, y)


def test_split_holds_out_each_class_in_proportion_and_keeps_one_of_each():
    d = _domain()
    kept, held = d.split(0.3, seed=0)
    assert [int((held.y == c).sum()) for c in range(3)] == [3, 2, 1]  # round(0.3 n_c)
    assert len(kept) + len(held) == len(d)
    rows = {tuple(r) for r in d.x.tolist()}
    assert {tuple(r) for r in kept.x.tolist()} | {tuple(r) for r in held.x.tolist()} == rows
    assert not {tuple(r) for r in kept.x.tolist()} & {tuple(r) for r in held.x.tolist()}
    again, _ = d.split(0.3, seed=0)
    assert torch.equal(again.x, kept.x)
    other, _ = d.split(0.3, seed=1)
    assert not torch.equal(other.x, kept.x)
    _, most = d.split(0.99, seed=0)  # every class keeps a sample to train on
    assert [int((most.y == c).sum()) for c in range(3)] == [9, 6, 2]
    assert kept.classes == d.classes and kept.num_classes == 3
    with pytest.raises(DataError, match="no sample to hold out"):
        _domain((1, 1)).split(0.5, seed=0)


def test_split_of_an_image_folder_keeps_its_images_and_labels(tmp_path):
    from PIL import Image

    from dalib.data import load_domain

    for c in ("a", "b"):
        (tmp_path / "dom" / c).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (4, 4), (40 * i, 0, 0)).save(tmp_path / "dom" / c / f"{i}.png")
    d = load_domain("image-folder", "dom", data_dir=str(tmp_path), image_size=8)
    kept, held = d.split(0.4, seed=0)
    assert sorted(held.known_labels().tolist()) == [0, 0, 1, 1]
    paths = sorted(p for p, _ in kept.dataset.samples) + sorted(p for p, _ in held.dataset.samples)
    assert sorted(paths) == sorted(p for p, _ in d.dataset.samples) and len(set(paths)) == 10
    assert all(label == d.dataset.samples[[p for p, _ in d.dataset.samples].index(path)][1]
               for path, label in held.dataset.samples)
    x, y = held.dataset[0]
    assert x.shape == (3, 8, 8)


# --------------------------------------------------------------------------- the runner
def _config(toy_dataset, **kw):
    base = dict(method="dann", dataset=toy_dataset, src="src", tgt="tgt", steps=20, batch_size=16,
                holdout=0.2, arch="mlp", bottleneck_dim=16, method_config={"hidden": 16}, checkpoint_every=10)
    base.update(kw)
    return RunConfig(**base)


class _Recording(dalib.Method):
    """Source only, recording every source sample a step trains on."""

    uses_target = False
    seen: list = []

    @dataclasses.dataclass(frozen=True)
    class Config:
        pass

    def loss(self, batch, out, progress):
        type(self).seen.append(batch.x_s.detach().cpu())
        cls = self.source_loss(batch, out)
        return {"total": cls}


def test_held_out_source_samples_never_train_and_are_scored(toy_dataset, tmp_path):
    from dalib.data import load_domain

    src = load_domain(toy_dataset, "src")
    kept, held = src.split(0.2, seed=0)
    _Recording.seen = []
    dalib.register_method("recording_test")(_Recording)
    try:
        result = run(_config(toy_dataset, method="recording_test", method_config={}, steps=60, eval_every=30),
                     tmp_path / "r", progress_bar=False)
    finally:
        unregister_method("recording_test")
    trained = {tuple(r) for r in torch.cat(_Recording.seen).tolist()}
    assert trained == {tuple(r) for r in kept.x.tolist()}  # every kept sample, over 60 steps of 16 from 240
    assert not trained & {tuple(r) for r in held.x.tolist()}
    sel = result.selection
    assert sel["n_holdout"] == len(held) == 60
    assert sel["holdout_accuracy"] == pytest.approx(evaluate(result.model, held, torch.device("cpu")))
    assert set(sel) >= {c.key for c in CRITERIA.values()} | {"weights_mean", "weights_ess"}
    assert [h["holdout_acc"] for h in result.history if "target_acc" in h][-1] == sel["holdout_accuracy"]
    assert len([h for h in result.history if "holdout_acc" in h]) == 2  # steps 30 and 60
    saved = json.loads((tmp_path / "r" / "result.json").read_text())
    assert saved["selection"] == pytest.approx(sel)
    assert saved["run_config"]["holdout"] == 0.2


def test_a_resumed_run_scores_as_the_uninterrupted_one_and_keeps_its_holdout(toy_dataset, tmp_path):
    full = run(_config(toy_dataset), tmp_path / "full", progress_bar=False)
    killed_at(_config(toy_dataset), tmp_path / "cut", 15)
    with pytest.raises(CheckpointError, match="holdout"):
        run(_config(toy_dataset, holdout=0.3), tmp_path / "cut", resume=True, progress_bar=False)
    resumed = run(_config(toy_dataset), tmp_path / "cut", resume=True, progress_bar=False)
    assert resumed.selection == full.selection
    assert resumed.target_accuracy == full.target_accuracy


def test_without_holdout_a_run_is_as_before(toy_dataset, tmp_path):
    """No holdout: no selection scores, and a run's settings and checkpoint carry no holdout,
    so runs saved before the option existed resume and the benchmark cells keep their
    fingerprints."""
    from dalib.runner import comparable_config, load_checkpoint

    cfg = _config(toy_dataset, holdout=0.0)
    r = run(cfg, tmp_path / "r", progress_bar=False)
    assert r.selection == {}
    assert "selection" not in json.loads((tmp_path / "r" / "result.json").read_text())
    assert "holdout" not in comparable_config(cfg)
    assert "holdout" not in load_checkpoint(tmp_path / "r" / "checkpoint.pt")["config"]
    assert "holdout" in comparable_config(_config(toy_dataset, holdout=0.1))
    with pytest.raises(ConfigError, match="holdout must be in"):
        _config(toy_dataset, holdout=1.0)


# --------------------------------------------------------------------------- dalib select
def _fake_run(folder, method, scores, target=50.0, task=("toy-shift", "src", "tgt"), where=None, **method_config):
    """``where``: result.json's keys of where the run ran (world_size, device, threads)."""
    folder.mkdir(parents=True)
    sel = {"dev_risk": 0.2, "iw_risk": 0.2, "holdout_error": 0.2, "entropy": 0.5, "snd": 1.0,
           "holdout_accuracy": 80.0, "n_holdout": 10, "weights_mean": 1.0, "weights_ess": 0.8} | scores
    (folder / "result.json").write_text(json.dumps({
        "method": method, "dataset": task[0], "src": task[1], "tgt": task[2], "source_accuracy": 90.0,
        "target_accuracy": target, "mode": "deep", "method_config": method_config,
        "run_config": RunConfig(method=method, holdout=0.1, method_config=method_config).to_dict(),
        "selection": sel} | (where or {})))
    return str(folder)


def test_select_picks_the_best_run_by_each_criterion(tmp_path):
    a = _fake_run(tmp_path / "a", "dann", {"dev_risk": 0.30, "entropy": 0.1, "snd": 2.0}, trade_off=1.0)
    b = _fake_run(tmp_path / "b", "dann", {"dev_risk": 0.10, "entropy": 0.9, "snd": 1.0}, trade_off=0.3)
    c = _fake_run(tmp_path / "c", "mmd", {"dev_risk": 0.20, "entropy": 0.5, "snd": 3.0})
    runner = CliRunner()
    for by, chosen in (("dev", "b"), ("entropy", "a"), ("snd", "c")):
        res = runner.invoke(cli, ["select", a, b, c, "--by", by])
        assert res.exit_code == 0, res.output
        assert res.output.strip().splitlines()[-1].endswith(": " + str(tmp_path / chosen))
        lines = res.output.splitlines()
        assert lines[1].startswith("*") and f"{tmp_path / chosen} " in lines[1]  # best first, marked
    d = _fake_run(tmp_path / "d", "mmd", {"dev_risk": 0.9, "holdout_error": 0.05})
    res = runner.invoke(cli, ["select", a, b, c, d])  # the held-out error by default
    assert res.output.strip().endswith(": " + d)
    assert "trade_off=0.3" in res.output and "trade_off=1.0" in res.output  # what the runs differ in
    assert "50.00" not in res.output  # no target accuracy unless asked for
    assert "50.00" in runner.invoke(cli, ["select", a, b, "--show-target"]).output


def test_select_tells_runs_apart_by_where_they_ran(tmp_path):
    # the same settings under torchrun (2 processes) and in one process, or with other CPU
    # threads, give other numbers: the rows had shown the same settings
    one = _fake_run(tmp_path / "one", "dann", {}, where={"world_size": 1, "device": "cpu", "threads": 2})
    two = _fake_run(tmp_path / "two", "dann", {"holdout_error": 0.1}, where={"world_size": 2, "device": "cpu",
                                                                             "threads": 1})
    res = CliRunner().invoke(cli, ["select", one, two])
    assert res.exit_code == 0, res.output
    rows = {run: next(line for line in res.output.splitlines() if f"{run} " in line) for run in (one, two)}
    assert "world_size=1" in rows[one] and "threads=2" in rows[one] and "device" not in res.output
    assert "world_size=2" in rows[two] and "threads=1" in rows[two]


def test_select_chooses_none_of_runs_that_tie(tmp_path):
    """Errors on a few held-out samples are fractions k/n, and tie: the first run given was
    'chosen', so the command line's order decided."""
    a = _fake_run(tmp_path / "a", "dann", {"holdout_error": 0.0, "dev_risk": 0.3})
    b = _fake_run(tmp_path / "b", "mmd", {"holdout_error": 0.0, "dev_risk": 0.1})
    c = _fake_run(tmp_path / "c", "coral", {"holdout_error": 0.1, "dev_risk": 0.1})
    runner = CliRunner()
    for runs in ([a, b, c], [c, b, a]):
        res = runner.invoke(cli, ["select", *runs])
        assert res.exit_code == 0, res.output
        assert res.output.strip().splitlines()[-1] == (
            f"tie by holdout (lower is better): 2 runs score 0.0000 ({', '.join(r for r in runs if r != c)}), and "
            "holdout chooses none of them: compare them by another criterion (--by), or hold out more samples (--holdout)")
        marked = [line.split()[1] for line in res.output.splitlines()[1:-1] if line.startswith("*")]
        assert sorted(marked) == [a, b]
    res = runner.invoke(cli, ["select", a, b, c, "--by", "dev"])
    assert f"tie by dev (lower is better): 2 runs score 0.1000 ({b}, {c})" in res.output
    assert runner.invoke(cli, ["select", a, c, "--by", "dev"]).output.strip().endswith("chosen by dev (lower is better): " + c)


def test_select_escapes_control_characters_of_the_settings_it_shows(tmp_path):
    """Hyperparameters read from result.json files others may have written reached the terminal
    as they were: a clear-screen or window-title sequence ran there (dalib list escapes them)."""
    a = _fake_run(tmp_path / "a", "dann", {}, trade_off="x\x1b[2J\x1b]0;TITLE\x07")
    b = _fake_run(tmp_path / "b", "dann", {"holdout_error": 0.1}, trade_off="1")
    res = CliRunner().invoke(cli, ["select", a, b])
    assert res.exit_code == 0, res.output
    assert "\x1b" not in res.output and "\x07" not in res.output
    assert "trade_off=x\\x1b[2J\\x1b]0;TITLE\\x07" in res.output


def test_select_knows_every_criterion():
    by = next(p for p in select_cmd.params if p.name == "by")
    assert list(by.type.choices) == list(CRITERIA)


def test_select_refuses_in_one_line(tmp_path):
    a = _fake_run(tmp_path / "a", "dann", {})
    other = _fake_run(tmp_path / "o", "dann", {}, task=("toy-shift", "tgt", "src"))
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "result.json").write_text(json.dumps(
        {"method": "dann", "mode": "deep", "run_config": RunConfig().to_dict()}))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "result.json").write_text("{not json")
    runner = CliRunner()
    for args, says in (([a, other], "2 tasks"), ([a, str(tmp_path / "plain")], "--holdout"),
                       ([a, str(tmp_path / "missing")], "no result.json"), ([a, str(tmp_path / "bad")], "cannot read")):
        res = runner.invoke(cli, ["select", *args])
        assert res.exit_code == 2, res.output
        assert says in res.output and len(res.output.strip().splitlines()) == 1
        assert "Traceback" not in res.output


def test_select_says_why_a_run_has_no_score_of_the_criterion(tmp_path):
    a = _fake_run(tmp_path / "a", "dann", {})
    one = _fake_run(tmp_path / "one", "dann", {"snd": None})  # a target of one sample: no neighbours
    blank = _fake_run(tmp_path / "blank", "dann", {"dev_risk": None})
    older = _fake_run(tmp_path / "older", "dann", {})
    saved = json.loads((tmp_path / "older" / "result.json").read_text())
    del saved["selection"]["entropy"]
    (tmp_path / "older" / "result.json").write_text(json.dumps(saved))
    for run_, by, says in ((one, "snd", "its target is one sample"), (blank, "dev", "the result.json is damaged"),
                           (older, "entropy", "an older dalib, or a damaged one")):
        res = CliRunner().invoke(cli, ["select", a, run_, "--by", by])
        assert res.exit_code == 2, res.output
        assert says in res.output and "no " in res.output and len(res.output.strip().splitlines()) == 1
        assert "one sample" not in res.output or by == "snd"


def test_run_then_select_from_the_cli(toy_dataset, tmp_path):
    runner = CliRunner()
    outs = []
    for method in ("source_only", "dann"):
        out = str(tmp_path / method)
        res = runner.invoke(cli, ["run", method, "--dataset", toy_dataset, "--src", "src", "--tgt", "tgt",
                                  "--mode", "deep", "--steps", "10", "--batch-size", "16", "--holdout", "0.1",
                                  "--quiet", "--out", out])
        assert res.exit_code == 0, res.output
        assert "held-out source accuracy" in res.output and "(270 + 30 held out)" in res.output
        outs.append(out)
    res = runner.invoke(cli, ["select", *outs, "--by", "holdout"])
    assert res.exit_code == 0, res.output
    saved = [json.loads((tmp_path / m / "result.json").read_text())["selection"]["holdout_error"]
             for m in ("source_only", "dann")]
    if saved[0] == saved[1]:  # (30 held-out samples: errors of k/30)
        assert res.output.strip().splitlines()[-1].startswith("tie by holdout")
    else:
        assert res.output.strip().endswith(": " + outs[0 if saved[0] < saved[1] else 1])


# --------------------------------------------------------------------------- review fixes
def test_a_resume_without_the_runs_holdout_is_refused(toy_dataset, tmp_path):
    """Resuming a --holdout run without --holdout would train on the samples it held out."""
    killed_at(_config(toy_dataset), tmp_path / "cut", 15)
    with pytest.raises(CheckpointError, match="holdout: 0.2 there, 0.0 now"):
        run(_config(toy_dataset, holdout=0.0), tmp_path / "cut", resume=True, progress_bar=False)
    # ... and the other way round: a run without holdout resumed with one
    killed_at(_config(toy_dataset, holdout=0.0), tmp_path / "plain", 15)
    with pytest.raises(CheckpointError, match="holdout: 0.0 there, 0.2 now"):
        run(_config(toy_dataset), tmp_path / "plain", resume=True, progress_bar=False)


#: the size of the source of the ``toy-growing`` dataset, which a test changes between a kill and a resume
_GROWING = {"n": 100}


def _growing_domain(request):
    rng = np.random.default_rng(0 if request.domain == "src" else 1)
    n = _GROWING["n"] if request.domain == "src" else 80
    y = np.arange(n) % 2
    x = rng.normal(size=(n, 4)).astype(np.float32) + y[:, None]
    return Domain.from_arrays(request.domain, x, y, num_classes=2, dataset_name="toy-growing")


def test_a_resume_on_a_source_that_changed_is_refused(tmp_path):
    """The held-out samples are drawn from the source as it is: one sample more redraws them,
    and the resumed run would train on samples it had held out."""
    from dalib.data import DatasetInfo, list_datasets, register_dataset

    if "toy-growing" not in list_datasets():
        register_dataset(DatasetInfo(name="toy-growing", description="a source that grows (tests)",
                                     domains=("src", "tgt"), kind="features", num_classes=2, needs="embedded"),
                         _growing_domain)

    cfg = _config("toy-growing")
    _GROWING["n"] = 100
    try:
        killed_at(cfg, tmp_path / "cut", 15)
        _GROWING["n"] = 101
        with pytest.raises(CheckpointError, match="source has changed"):
            run(cfg, tmp_path / "cut", resume=True, progress_bar=False)
    finally:
        _GROWING["n"] = 100
    assert run(cfg, tmp_path / "cut", resume=True, progress_bar=False).selection  # as it was: it resumes


def test_select_refuses_runs_on_other_data_the_same_run_twice_and_damaged_results(tmp_path):
    a = _fake_run(tmp_path / "a", "dann", {})
    b = _fake_run(tmp_path / "b", "dann", {})
    for name, folder in (("a", "/data/one"), ("b", "/data/two")):  # image folders under the same domain names
        r = json.loads((tmp_path / name / "result.json").read_text())
        (tmp_path / name / "result.json").write_text(json.dumps(r | {"dataset": "image-folder", "data": folder}))
    runner = CliRunner()
    res = runner.invoke(cli, ["select", a, b])
    assert res.exit_code == 2 and "2 tasks" in res.output and "/data/two" in res.output
    c = _fake_run(tmp_path / "c", "dann", {})
    res = runner.invoke(cli, ["select", c, str(tmp_path / "c" / "result.json")])
    assert res.exit_code == 2 and "same run" in res.output
    damage = {"weights_mean": {"selection": {"weights_mean": None, "holdout_error": "x"}},
              "nan score": {"selection": {"holdout_error": float("nan")}},
              "bool score": {"selection": {"holdout_error": True}},
              "target": {"target_accuracy": "high"},
              "method_config": {"method_config": [1]},
              "src": {"src": ["a"]}}
    for i, (what, change) in enumerate(damage.items()):
        folder = tmp_path / f"d{i}"
        _fake_run(folder, "dann", {})
        r = json.loads((folder / "result.json").read_text())
        for k, v in change.items():
            r[k] = r[k] | v if isinstance(r.get(k), dict) and isinstance(v, dict) else v
        (folder / "result.json").write_text(json.dumps(r))
        res = runner.invoke(cli, ["select", c, str(folder), "--show-target"])
        assert res.exit_code == 2, (what, res.output)
        assert "is damaged" in res.output and len(res.output.strip().splitlines()) == 1, (what, res.output)


def test_select_notes_runs_that_hold_out_other_samples_and_weights_that_tell_the_domains_apart(tmp_path):
    a = _fake_run(tmp_path / "a", "dann", {"weights_mean": 0.0})
    b = _fake_run(tmp_path / "b", "dann", {})
    r = json.loads((tmp_path / "b" / "result.json").read_text())
    r["run_config"]["seed"] = 1
    (tmp_path / "b" / "result.json").write_text(json.dumps(r))
    res = CliRunner().invoke(cli, ["select", a, b, "--by", "dev"])
    assert res.exit_code == 0, res.output
    assert "hold out different source samples (seed and fraction: 0/0.1, 1/0.1)" in res.output
    assert "1 of the 2 runs average below 0.5" in res.output  # a mean of exactly 0 counts
    assert "different source samples" not in CliRunner().invoke(cli, ["select", a, b, "--by", "entropy"]).output
