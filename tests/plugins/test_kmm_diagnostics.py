"""Deep KMM reports its weights in ``result.json``: their statistics and the source's class
proportions before and after weighting, kept across a resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import dalib
from dalib.data import DatasetInfo, Domain, list_datasets, load_domain, register_dataset
from dalib.models import build_model
from dalib.runner import RunConfig, load_checkpoint, run
from tests._support.interrupt import Killed as _Killed


def _class_shift_domain(request) -> Domain:
    """Source: classes 0 and 1 in equal numbers, far apart. Target: only points near class 0,
    so weights that match the target must move the source's mass onto class 0."""
    rng = np.random.default_rng(7)
    centres = np.array([[0.0, 0.0], [4.0, 0.0]])
    if request.domain == "src":
        y = np.arange(200) % 2
        x = centres[y] + rng.normal(0, 0.5, size=(200, 2))
    else:
        y = np.zeros(120, dtype=np.int64)
        x = centres[y] + rng.normal(0, 0.5, size=(120, 2))
    return Domain.from_arrays(request.domain, x.astype(np.float32), y, num_classes=2, dataset_name="class-shift")


@pytest.fixture(scope="module")
def class_shift() -> str:
    if "class-shift" not in list_datasets():
        register_dataset(DatasetInfo(name="class-shift", description="source classes, target near one (tests)",
                                     domains=("src", "tgt"), kind="features", num_classes=2, needs="embedded"),
                         _class_shift_domain)
    return "class-shift"


def test_deep_kmm_writes_its_weights_statistics_and_keeps_them_on_resume(class_shift, tmp_path):
    cfg = RunConfig(method="kmm", dataset=class_shift, src="src", tgt="tgt", steps=12, batch_size=32, seed=0,
                    mode="deep", checkpoint_every=5, method_config={"B": 4.0})
    run(cfg, tmp_path / "full", progress_bar=False)
    result = json.loads((tmp_path / "full" / "result.json").read_text())
    diag = result["diagnostics"]
    weights = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["source_weights"].double().numpy()
    y = np.arange(200) % 2
    assert diag["class_proportions"] == [0.5, 0.5]
    expected = np.bincount(y, weights=weights) / weights.sum()
    assert diag["weighted_class_proportions"] == pytest.approx(expected, abs=1e-4)
    assert diag["weighted_class_proportions"][0] > 0.7  # the weights follow the target onto class 0
    assert diag["effective_sample_size"] == pytest.approx(weights.sum() ** 2 / (weights**2).sum(), rel=1e-4)
    assert diag["weights_max"] <= 4.0 + 1e-6

    def kill_at_7(step, logs):
        if step == 7:  # after the checkpoint at step 5; prepare is not run again on resume
            raise _Killed

    with pytest.raises(_Killed):
        run(cfg, tmp_path / "cut", progress_bar=False, on_step=kill_at_7)
    run(cfg, tmp_path / "cut", resume=True, progress_bar=False)
    assert json.loads((tmp_path / "cut" / "result.json").read_text())["diagnostics"] == diag


def test_methods_without_diagnostics_write_an_empty_table(class_shift, tmp_path):
    cfg = RunConfig(method="source_only", dataset=class_shift, src="src", tgt="tgt", steps=3, batch_size=32,
                    mode="deep")
    run(cfg, tmp_path / "so", progress_bar=False)
    assert json.loads((tmp_path / "so" / "result.json").read_text())["diagnostics"] == {}


def test_shallow_kmm_reports_the_class_proportions_too():
    from dalib.registry import get_method
    from dalib.shallow import KMMConfig

    rng = np.random.default_rng(0)
    ys = torch.as_tensor(np.arange(100) % 2)
    xs = torch.as_tensor(np.array([[0.0], [4.0]])[ys.numpy()] + rng.normal(0, 0.5, size=(100, 1)))
    xt = torch.as_tensor(rng.normal(0, 0.5, size=(80, 1)))
    info = get_method("kmm").adapt(KMMConfig(B=4.0), xs, ys, xt).info
    assert info["class_proportions"] == [0.5, 0.5]
    assert info["weighted_class_proportions"][0] > 0.7 and sum(info["weighted_class_proportions"]) == pytest.approx(1)
    # labels -1/+1: one proportion per class, in sorted label order
    again = get_method("kmm").adapt(KMMConfig(B=4.0), xs, ys * 2 - 1, xt).info
    assert again["weighted_class_proportions"] == info["weighted_class_proportions"]
    # class indices: entry k is class k, as in the deep form (the shallow form had listed the
    # classes present, so that a class the source lacks moved every later one down a place)
    for floats in (ys.double(), ys.bool()):  # (labels read from a .mat file are floats)
        assert get_method("kmm").adapt(KMMConfig(B=4.0), xs, floats, xt).info == info
    lacking = get_method("kmm").adapt(KMMConfig(B=4.0), xs, ys * 2, xt).info  # classes 0 and 2, none of 1
    assert lacking["class_proportions"] == [0.5, 0.0, 0.5]
    assert lacking["weighted_class_proportions"] == [info["weighted_class_proportions"][0], 0.0,
                                                     info["weighted_class_proportions"][1]]


@pytest.mark.parametrize("kind", ["tensors", "targets", "items", "mixed"])
def test_context_source_labels_from_every_kind_of_dataset(kind):
    from dalib.models import build_model
    from dalib.plugin import Context, Progress

    x, y = torch.randn(10, 3), torch.tensor([0, 1, 2, 1, 0, 2, 2, 1, 0, 1])

    class Items(torch.utils.data.Dataset):  # a user's dataset: items only
        def __len__(self):
            return 10

        def __getitem__(self, i):
            return x[i], int(y[i])

    class WithTargets(Items):  # an image folder: labels without decoding
        targets = y.tolist()

        def __getitem__(self, i):
            raise AssertionError("source_labels must not load the samples")

    class Mixed(Items):  # labels of every kind, a numpy integer first (torch's collate took its kind from it)
        def __getitem__(self, i):
            return x[i], (np.int64(y[i]), y[i], float(y[i]), int(y[i]))[i % 4]

    data = {"tensors": torch.utils.data.TensorDataset(x, y), "targets": WithTargets(), "items": Items(),
            "mixed": Mixed()}[kind]
    ctx = Context(build_model("mlp", (3,), 3, bottleneck_dim=8), data, data, torch.device("cpu"), 4, Progress(0, 1))
    state = torch.get_rng_state()
    labels = ctx.source_labels()
    assert labels.dtype == torch.int64 and torch.equal(labels, y)
    assert torch.equal(torch.get_rng_state(), state)  # (a DataLoader's seed had come from the global generator)


def test_a_class_the_source_lacks_keeps_its_place_in_the_proportions(tmp_path):
    def domain(request) -> Domain:
        rng = np.random.default_rng(3)
        y = np.array([0, 2, 3] * 40) if request.domain == "src" else np.arange(120) % 4
        x = y[:, None] + rng.normal(0, 0.3, size=(120, 2))
        return Domain.from_arrays(request.domain, x.astype(np.float32), y, num_classes=4, dataset_name="no-class-1")

    if "no-class-1" not in list_datasets():
        register_dataset(DatasetInfo(name="no-class-1", description="the source lacks class 1 (tests)",
                                     domains=("src", "tgt"), kind="features", num_classes=4, needs="embedded"), domain)
    run(RunConfig(method="kmm", dataset="no-class-1", src="src", tgt="tgt", steps=2, batch_size=16, mode="deep"),
        tmp_path / "run", progress_bar=False)
    diag = json.loads((tmp_path / "run" / "result.json").read_text())["diagnostics"]
    assert diag["class_proportions"] == pytest.approx([1 / 3, 0.0, 1 / 3, 1 / 3], abs=1e-4)
    assert len(diag["weighted_class_proportions"]) == 4 and diag["weighted_class_proportions"][1] == 0.0


def test_deep_kmm_refits_on_the_model_features_after_each_pass_and_resumes_to_the_same_weights(class_shift, tmp_path):
    """features='model' with refit_every=1: the weights are fitted before training and again at
    every pass over the source (200 samples, 32 a step: passes end within steps 7, 13, 19 and 25
    of 25; none after the last step)."""
    def cfg(**method):
        return RunConfig(method="kmm", dataset=class_shift, src="src", tgt="tgt", steps=25, batch_size=32, seed=0,
                         mode="deep", checkpoint_every=7, method_config={"B": 4.0, "features": "model", **method})

    run(cfg(refit_every=1), tmp_path / "refit", progress_bar=False)
    run(cfg(), tmp_path / "once", progress_bar=False)
    diag = json.loads((tmp_path / "refit" / "result.json").read_text())["diagnostics"]
    assert (diag["fits"], diag["fitted_at_step"], diag["fitted_at_epoch"]) == (4, 19, 3)
    assert diag["weighted_class_proportions"][0] > 0.7  # each fit follows the target onto class 0
    once = json.loads((tmp_path / "once" / "result.json").read_text())["diagnostics"]
    assert "fits" not in once
    refit_w = load_checkpoint(tmp_path / "refit" / "checkpoint.pt")["source_weights"]
    once_w = load_checkpoint(tmp_path / "once" / "checkpoint.pt")["source_weights"]
    assert not torch.allclose(refit_w, once_w)  # the last fit saw a trained model, not the starting one

    def kill_at_9(step, logs):
        if step == 9:  # after the checkpoint at step 7, which the re-fit within step 7 preceded
            raise _Killed

    with pytest.raises(_Killed):
        run(cfg(refit_every=1), tmp_path / "cut", progress_bar=False, on_step=kill_at_9)
    ckpt = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert ckpt["step"] == 7 and ckpt["diagnostics"]["fits"] == 2
    run(cfg(refit_every=1), tmp_path / "cut", resume=True, progress_bar=False)
    assert json.loads((tmp_path / "cut" / "result.json").read_text())["diagnostics"] == diag
    assert torch.equal(load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["source_weights"], refit_w)


@pytest.mark.parametrize("batch_size, steps, every, expected", [
    (32, 25, 2, (2, 13, 2)),  # passes 2 and 4: the fit within step 13; pass 4 ends with the last step
    (64, 30, 3, (4, 29, 9)),  # passes end at steps 4, 7, 10, 13, 16, 19, 22, 25, 29: fits at 10, 19 and 29
])
def test_deep_kmm_refits_after_every_kth_pass(class_shift, batch_size, steps, every, expected):
    cfg = RunConfig(method="kmm", dataset=class_shift, src="src", tgt="tgt", steps=steps, batch_size=batch_size,
                    seed=0, mode="deep", method_config={"B": 4.0, "features": "model", "refit_every": every})
    diag = run(cfg, None, progress_bar=False).diagnostics
    assert (diag["fits"], diag["fitted_at_step"], diag["fitted_at_epoch"]) == expected


def test_deep_kmm_reads_the_source_labels_once_for_all_its_fits(class_shift, monkeypatch):
    from dalib.runner import _RunContext  # the runner's Context, whose labels are checked as training's

    reads = []
    original = _RunContext.source_labels
    monkeypatch.setattr(_RunContext, "source_labels", lambda self: reads.append(1) or original(self))
    cfg = RunConfig(method="kmm", dataset=class_shift, src="src", tgt="tgt", steps=20, batch_size=32, seed=0,
                    mode="deep", method_config={"B": 4.0, "features": "model", "refit_every": 1})
    assert run(cfg, None, progress_bar=False).diagnostics["fits"] == 4 and len(reads) == 1


def test_deep_kmm_warns_once_a_run_about_concentrated_weights_and_names_the_callers_line(class_shift, monkeypatch):
    """Once a run, at the fit in prepare or at a refit during training, and at the line of the
    user's dalib.run (it had named dalib's runner, as the other warnings of a bundled method did)."""
    import sys

    from dalib.registry import get_method

    module = sys.modules[get_method("kmm").__module__]  # the plugin's module (dalib_plugins.kmm)
    monkeypatch.setattr(module, "is_concentrated", lambda kmm: True)
    cfg = RunConfig(method="kmm", dataset=class_shift, src="src", tgt="tgt", steps=20, batch_size=32, seed=0,
                    mode="deep", method_config={"B": 4.0, "features": "model", "refit_every": 1})
    with pytest.warns(RuntimeWarning, match="KMM weights are concentrated") as record:
        assert run(cfg, None, progress_bar=False).diagnostics["fits"] == 4
    ours = [w for w in record if "KMM weights are concentrated" in str(w.message)]
    assert len(ours) == 1 and ours[0].filename == __file__


@pytest.mark.parametrize("settings, message", [({"refit_every": 1}, "needs features='model'"),
                                               ({"features": "model", "refit_every": -1}, "must be >= 0")])
def test_deep_kmm_refuses_a_refit_it_cannot_do(settings, message):
    from dalib.registry import get_method

    with pytest.raises(ValueError, match=message):
        get_method("kmm").Config(**settings)


def _fit_on_rank(rank: int, world: int, init: str, out: str) -> None:
    """One rank of a gloo group: a KMM method whose model differs by rank fits its weights."""
    import sys

    import torch.distributed as dist

    from dalib.models import build_model
    from dalib.plugin import Context, Progress
    from dalib.registry import get_method

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        torch.manual_seed(rank)  # each rank's own model, as BatchNorm statistics make them after a while
        model = build_model("mlp", (2,), 2, bottleneck_dim=8)
        gen = torch.Generator().manual_seed(0)  # the same data on every rank
        xs, xt = torch.randn(60, 2, generator=gen), torch.randn(40, 2, generator=gen) + 1.0
        data_s = torch.utils.data.TensorDataset(xs, torch.arange(60) % 2)
        data_t = torch.utils.data.TensorDataset(xt, torch.zeros(40, dtype=torch.long))
        cls = get_method("kmm")
        method = cls(cls.Config(B=4.0, features="model", refit_every=1), model)
        method.prepare(Context(model, data_s, data_t, torch.device("cpu"), 16, Progress(0, 10), classes=["a", "b"]))
        mine = method.source_weights
        gathered = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(gathered, mine)
        if rank == 0:
            torch.save(gathered, out)
    finally:
        dist.destroy_process_group()
        sys.stdout.flush()


def test_under_data_parallelism_every_rank_trains_with_rank_0s_weights(tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "weights.pt"
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_fit_on_rank, args=(2, init, str(out)), nprocs=2, join=True)
    w0, w1 = torch.load(out, weights_only=True)
    assert torch.equal(w0, w1)
    assert not torch.allclose(w0, torch.ones_like(w0))  # real weights, not the uniform ones


def test_deep_kmm_fits_on_the_bottleneck_with_its_documented_bound(class_shift, monkeypatch):
    """features='model' maps both domains through the network's bottleneck (not its logits),
    in eval mode, and the default bound is B = 4 (the README's and the method page's)."""
    import dalib_plugins.kmm as kmm_plugin

    from dalib.plugin import Context, Progress

    seen = []
    real = kmm_plugin.fit_weights

    def spy(config, xs, xt, *args, **kwargs):
        fitted = real(config, xs, xt, *args, **kwargs)
        seen.append((config, xs, xt, fitted))
        return fitted

    monkeypatch.setattr(kmm_plugin, "fit_weights", spy)
    cls = dalib.get_method("kmm")
    assert cls.Config().B == 4.0
    torch.manual_seed(0)
    model = build_model("mlp", (2,), 2, bottleneck_dim=16)
    method = cls(cls.Config(features="model"), model)
    src, tgt = (load_domain(class_shift, d) for d in ("src", "tgt"))
    source = torch.utils.data.TensorDataset(src.x, src.y)
    target = torch.utils.data.TensorDataset(tgt.x, torch.full_like(tgt.y, -1))
    context = Context(model, source, target, torch.device("cpu"), 32, Progress(0, 10))
    model.train()
    method.prepare(context)
    assert model.training  # embed gives the model back in the mode it found it, training ...
    model.eval()
    context.embed("source", lambda x: context.model(x).features)
    assert not model.training  # ... or not
    (config, xs, xt, fitted), = seen
    assert config.B == 4.0
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(xs, model(src.x).features)
        torch.testing.assert_close(xt, model(tgt.x).features)
    assert xs.shape == (200, 16)
    # the batches are weighted by KMM's own weights, as fitted (their mean is 1 only within ε)
    torch.testing.assert_close(method.source_weights, torch.as_tensor(fitted.weights_, dtype=torch.float32))
    assert float(method.source_weights.max()) <= 4.0 + 1e-6
