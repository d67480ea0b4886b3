"""finetune: the freezing policies, L2-SP and starting from a dalib checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

import dalib
from dalib.errors import CheckpointError, ConfigError
from dalib.config import build_config
from dalib.runner import RunConfig, load_checkpoint, run


@pytest.fixture(scope="module")
def source_model(tmp_path_factory, toy_dataset):
    """A source_only model on the toy data: the pre-trained starting point."""
    out = tmp_path_factory.mktemp("pre") / "source"
    run(RunConfig(method="source_only", dataset=toy_dataset, src="src", tgt="tgt", steps=30, batch_size=32,
                 mode="deep"), out,
        progress_bar=False)
    return out / "checkpoint.pt"


def _finetune(tmp_path, toy_dataset, name, **method_config):
    cfg = RunConfig(method="finetune", dataset=toy_dataset, src="src", tgt="tgt", steps=20, batch_size=32,
                    method_config=method_config)
    run(cfg, tmp_path / name, progress_bar=False)
    return load_checkpoint(tmp_path / name / "checkpoint.pt")["model"]


def test_policies_freeze_what_they_say(tmp_path, toy_dataset, source_model):
    start = load_checkpoint(source_model)["model"]
    backbone = [k for k in start if k.startswith("backbone.") and k.endswith("weight")]
    first, last = backbone[0], backbone[-1]  # first and last hidden layers of the MLP

    head = _finetune(tmp_path, toy_dataset, "head", policy="head", init=str(source_model))
    assert all(torch.equal(head[k], start[k]) for k in backbone)
    assert not torch.equal(head["head.weight"], start["head.weight"])

    partial = _finetune(tmp_path, toy_dataset, "partial", policy="partial:1", init=str(source_model))
    assert torch.equal(partial[first], start[first])
    assert not torch.equal(partial[last], start[last])

    full = _finetune(tmp_path, toy_dataset, "full", policy="full", init=str(source_model))
    assert not torch.equal(full[first], start[first])


def test_l2sp_keeps_the_backbone_near_its_start(tmp_path, toy_dataset, source_model):
    start = load_checkpoint(source_model)["model"]
    keys = [k for k in start if k.startswith("backbone.") and k.endswith("weight")]

    def drift(state):
        return sum(float(((state[k] - start[k]) ** 2).sum()) for k in keys)

    plain = _finetune(tmp_path, toy_dataset, "plain", init=str(source_model), backbone_lr_mult=1.0)
    l2sp = _finetune(tmp_path, toy_dataset, "l2sp", init=str(source_model), backbone_lr_mult=1.0, l2sp=10.0)
    assert drift(l2sp) < 0.5 * drift(plain)


def test_bad_policy_and_checkpoint(tmp_path, toy_dataset):
    cls = dalib.get_method("finetune")
    with pytest.raises(ConfigError, match="policy"):
        build_config(cls.Config, {"policy": "partial:x"})
    with pytest.raises(ConfigError, match="init must name"):
        build_config(cls.Config, {"init": ""})
    too_deep = RunConfig(method="finetune", dataset=toy_dataset, src="src", tgt="tgt", steps=2,
                         method_config={"policy": "partial:5"})  # the toy MLP has 2 stages
    with pytest.raises(ConfigError, match="2 stages; cannot freeze 5"):
        run(too_deep, None, progress_bar=False)
    cfg = RunConfig(method="finetune", dataset=toy_dataset, src="src", tgt="tgt", steps=2,
                    method_config={"init": str(tmp_path / "nothing.pt")})
    with pytest.raises(CheckpointError, match="no checkpoint"):
        run(cfg, None, progress_bar=False)
    wrong = tmp_path / "wrong"
    run(RunConfig(method="source_only", src="mnist", tgt="usps", steps=2, batch_size=8), wrong, progress_bar=False)
    cfg = RunConfig(method="finetune", dataset=toy_dataset, src="src", tgt="tgt", steps=2,
                    method_config={"init": str(wrong)})
    with pytest.raises(CheckpointError, match="does not fit"):
        run(cfg, None, progress_bar=False)


def _run_finetune(tmp_path, toy_dataset, name, steps=20, on_step=None, resume=False, **method_config):
    cfg = RunConfig(method="finetune", dataset=toy_dataset, src="src", tgt="tgt", steps=steps, batch_size=32,
                    checkpoint_every=5, method_config=method_config)
    return run(cfg, tmp_path / name, progress_bar=False, on_step=on_step, resume=resume)


def test_l2sp_anchors_every_weight_the_start_gave(tmp_path, toy_dataset, source_model):
    """With ``init`` of the same network and classes, every weight (bottleneck and head too)
    is pulled towards its start, none towards zero (Li et al.: S is what the start gave)."""
    start = load_checkpoint(source_model)["model"]
    _run_finetune(tmp_path, toy_dataset, "anchored", l2sp=0.1, init=str(source_model))
    anchors = load_checkpoint(tmp_path / "anchored" / "checkpoint.pt")["method"]["_extra_state"]["anchors"]
    params = {k for k in start if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    assert set(anchors) == params
    assert all(torch.equal(anchors[k], start[k]) for k in anchors)
    # the regulariser starts at 0 (w = w0 everywhere) and stays a small fraction of the loss
    first = json.loads((tmp_path / "anchored" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["loss/l2sp"] < 0.01 * first["loss/cls"]


def test_a_resumed_l2sp_run_needs_no_init_file_and_ends_as_the_uninterrupted_one(tmp_path, toy_dataset, source_model):
    import shutil

    init = tmp_path / "init.pt"
    shutil.copy(source_model, init)
    full = _run_finetune(tmp_path, toy_dataset, "full", l2sp=0.1, init=str(init))

    class _Stop(Exception):
        pass

    def stop(step, logs):
        if step == 12:
            raise _Stop

    with pytest.raises(_Stop):
        _run_finetune(tmp_path, toy_dataset, "cut", on_step=stop, l2sp=0.1, init=str(init))
    init.unlink()  # the checkpoint holds the weights and the anchors
    resumed = _run_finetune(tmp_path, toy_dataset, "cut", resume=True, l2sp=0.1, init=str(init))
    assert (resumed.source_accuracy, resumed.target_accuracy) == (full.source_accuracy, full.target_accuracy)


def test_a_start_from_another_network_or_other_classes(tmp_path, toy_dataset, source_model):
    from dalib.data import DatasetInfo, Domain, list_datasets, register_dataset
    from dalib.data.registry import _entry

    # a checkpoint whose backbone has tensors this model lacks is another network, not a fit
    cfg = RunConfig(method="finetune", dataset=toy_dataset, src="src", tgt="tgt", steps=2, arch="identity",
                    method_config={"init": str(source_model)})
    with pytest.raises(CheckpointError, match="4 it has and this model lacks; it was a mlp network"):
        run(cfg, None, progress_bar=False)

    # the same shapes, other class names: the classifier is not reused, and the run says why
    if "toy-shift-named" not in list_datasets():
        toy_loader = _entry(toy_dataset)[1]

        def named(request):
            d = toy_loader(request)
            return Domain.from_arrays(d.name, d.x, d.y, classes=["cat", "dog"], dataset_name="toy-shift-named")

        register_dataset(DatasetInfo(name="toy-shift-named", description="toy shift, named classes (tests)",
                                     domains=("src", "tgt"), kind="features", num_classes=2, needs="embedded"), named)
    start = load_checkpoint(source_model)["model"]
    cfg = RunConfig(method="finetune", dataset="toy-shift-named", src="src", tgt="tgt", steps=1, batch_size=32,
                    method_config={"init": str(source_model), "policy": "head", "l2sp": 0.1})
    with pytest.warns(RuntimeWarning, match=r"classes \(0, 1\) are not this data's \(cat, dog\)"):
        run(cfg, tmp_path / "named", progress_bar=False)
    ckpt = load_checkpoint(tmp_path / "named" / "checkpoint.pt")
    assert "head.weight" not in ckpt["method"]["_extra_state"]["anchors"]  # a new head: pulled to 0 (beta)
    assert torch.equal(ckpt["model"]["backbone.1.weight"], start["backbone.1.weight"])  # frozen, from the start


def test_finetune_without_a_starting_point_says_so(toy_dataset):
    cfg = RunConfig(method="finetune", dataset=toy_dataset, src="src", tgt="tgt", steps=1, batch_size=16)
    with pytest.warns(RuntimeWarning, match="no starting point"):
        run(cfg, None, progress_bar=False)
