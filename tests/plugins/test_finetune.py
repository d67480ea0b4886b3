"""finetune: the freezing policies, L2-SP and starting from a dalib checkpoint."""

from __future__ import annotations

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
