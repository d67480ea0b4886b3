"""Every registered method gets the same contract and smoke tests, found through the
registry: a new plugin is covered without new test code."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

import dalib
from dalib import Method, Outputs, Progress
from dalib.config import describe_config
from dalib.models import build_model
from dalib.runner import RunConfig, _check_losses, run
from tests._support.batches import random_batch

ALL = dalib.list_methods()
DEEP = ALL  # every method trains with the runner
SHALLOW = [name for name in ALL if dalib.get_method(name).ShallowConfig is not None]


def test_registry_is_not_empty():
    assert {"dann", "source_only"} <= set(DEEP)


@pytest.mark.parametrize("name", ALL)
def test_config_is_a_documented_frozen_dataclass(name):
    cls = dalib.get_method(name)
    assert issubclass(cls, Method) and cls.name == name
    assert cls.__doc__ and cls.__doc__.strip(), f"{name} has no docstring"
    assert dataclasses.is_dataclass(cls.Config)
    config = cls.Config()  # every hyperparameter has a default (the paper's)
    fields = dataclasses.fields(config)
    if fields:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(config, fields[0].name, getattr(config, fields[0].name))
    for config_cls in (cls.Config, cls.ShallowConfig):
        if config_cls is None:
            continue
        assert dataclasses.is_dataclass(config_cls)
        for field_name, _typ, default, help_text in describe_config(config_cls):
            assert default != "(required)", f"{name}.{field_name} has no default"
            assert help_text, f"{name}.{field_name} has no help text"


@pytest.mark.parametrize("name", DEEP)
def test_loss_contract(name):
    _loss_contract(dalib.get_method(name), name)


def _loss_contract(cls, name):
    torch.manual_seed(0)
    model = build_model("mlp", (16,), 4, bottleneck_dim=32)
    method = cls(cls.Config(), model)
    batch = random_batch(n_t=10 if cls.uses_target else 0)  # as the runner: no target batch for source-only learning
    feats, logits = model(torch.cat([batch.x_s, batch.x_t]))
    out = Outputs(feats[:12], feats[12:], logits[:12], logits[12:])
    for step in (0, 50, 100):
        losses = method.loss(batch, out, Progress(step, 100))
        _check_losses(losses, name)  # what the runner accepts: the docs' scalar tensors or plain numbers
        for key, value in losses.items():
            assert math.isfinite(float(value.detach()) if isinstance(value, torch.Tensor) else value), key
    losses["total"].backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads), "the loss does not reach the model"
    # a batch with source weights (KMM's, through Batch.w_s) goes through every method's loss;
    # that they count is checked term by term in test_loss_terms.py
    weighted = batch._replace(w_s=torch.rand(12, generator=torch.Generator().manual_seed(0)) + 0.5)
    value = method.loss(weighted, Outputs(*(t.detach() for t in out)), Progress(10, 100))["total"]
    assert torch.isfinite(value)


class _LogsPlainNumbers(Method):
    """Cross-entropy, logging a plain number and a one-element tensor, as the docs allow."""

    name = "logs_plain_numbers"

    @dataclasses.dataclass(frozen=True)
    class Config:
        pass

    def loss(self, batch, out, progress):
        ce = torch.nn.functional.cross_entropy(out.logits_s, batch.y_s)
        return {"total": ce, "phase": progress.step % 3, "share": torch.ones(1) * 0.5}


def test_the_loss_contract_takes_what_the_docs_allow():
    _loss_contract(_LogsPlainNumbers, "logs_plain_numbers")  # it failed on the plain number


class _SourceAlone(Method):
    """Learns from the source alone and relies on the documented empty target batch."""

    name = "source_alone"
    uses_target = False

    @dataclasses.dataclass(frozen=True)
    class Config:
        pass

    def loss(self, batch, out, progress):
        assert len(batch.x_t) == 0 and len(out.feat_t) == 0 and len(out.logits_t) == 0
        return {"total": self.source_loss(batch, out)}


def test_the_loss_contract_gives_a_source_alone_method_no_target_batch():
    _loss_contract(_SourceAlone, "source_alone")  # as the runner does (it got 10 target samples)


@pytest.mark.parametrize("name", DEEP)
def test_smoke_run_and_determinism(name, toy_dataset, tmp_path):
    cfg = RunConfig(method=name, dataset=toy_dataset, src="src", tgt="tgt", mode="deep", steps=8, batch_size=16,
                    log_every=4)
    a = run(cfg, tmp_path / "a", progress_bar=False)
    b = run(cfg, tmp_path / "b", progress_bar=False)
    assert 0.0 <= a.target_accuracy <= 100.0
    assert (a.source_accuracy, a.target_accuracy) == (b.source_accuracy, b.target_accuracy)
    assert (tmp_path / "a" / "metrics.jsonl").read_text() == (tmp_path / "b" / "metrics.jsonl").read_text()


@pytest.mark.parametrize("name", DEEP)
def test_training_never_reads_a_target_label(name, toy_dataset, unlabelled_dataset, tmp_path):
    """The target's labels dropped, every method trains the same network bit for bit: no
    code path of the plugin reaches a target label (they only score)."""
    kw = dict(method=name, src="src", tgt="tgt", mode="deep", steps=8, batch_size=16, log_every=4)
    labelled = run(RunConfig(dataset=toy_dataset, **kw), tmp_path / "labelled", progress_bar=False)
    blind = run(RunConfig(dataset=unlabelled_dataset, **kw), tmp_path / "blind", progress_bar=False)
    assert blind.target_accuracy is None and blind.source_accuracy == labelled.source_accuracy
    a, b = labelled.model.state_dict(), blind.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = [{k: v for k, v in h.items() if k.startswith("loss/")} for h in labelled.history]
    assert losses == [{k: v for k, v in h.items() if k.startswith("loss/")} for h in blind.history]


@pytest.mark.parametrize("name", SHALLOW)
def test_shallow_form_contract(name, toy_dataset, tmp_path):
    cls = dalib.get_method(name)
    g = torch.Generator().manual_seed(0)
    xs, xt = torch.randn(40, 6, generator=g, dtype=torch.float64), torch.randn(30, 6, generator=g, dtype=torch.float64) + 1
    ys = torch.arange(40) % 3
    adapted = cls.adapt(cls.ShallowConfig(), xs, ys, xt)
    assert isinstance(adapted, dalib.Adapted)
    assert adapted.xs.shape[0] == 40 and adapted.xt.shape[0] == 30 and adapted.xs.shape[1] == adapted.xt.shape[1]
    assert torch.isfinite(torch.as_tensor(adapted.xs)).all() and torch.isfinite(torch.as_tensor(adapted.xt)).all()
    if adapted.weights is not None:
        w = torch.as_tensor(adapted.weights)
        assert w.shape == (40,) and (w >= 0).all() and w.sum() > 0
    cfg = RunConfig(method=name, dataset=toy_dataset, src="src", tgt="tgt", mode="shallow", classifier="1nn")
    res = run(cfg, tmp_path / "run")
    assert res.steps == 0 and 0.0 <= res.target_accuracy <= 100.0
    written = json.loads((tmp_path / "run" / "result.json").read_text())
    assert written["mode"] == "shallow" and written["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
