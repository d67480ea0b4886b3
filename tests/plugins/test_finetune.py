"""finetune: the freezing policies, L2-SP and starting from a dalib checkpoint."""

from __future__ import annotations

import dataclasses
import json
import warnings

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


def test_cut_drops_the_last_stages_and_learns_on_the_earlier_features(tmp_path, toy_dataset, source_model):
    from dalib.data import load_domain
    from dalib.runner import evaluate

    start = load_checkpoint(source_model)["model"]  # the toy MLP: backbone.1 (stage 1), backbone.4 (stage 2)
    cfg = RunConfig(method="finetune", dataset=toy_dataset, src="src", tgt="tgt", steps=20, batch_size=32,
                    method_config={"policy": "cut:1", "init": str(source_model), "l2sp": 0.1})
    result = run(cfg, tmp_path / "cut", progress_bar=False)
    ckpt = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    model = ckpt["model"]
    assert not any(k.startswith("backbone.4.") for k in model)  # the second hidden layer is gone
    assert torch.equal(model["backbone.1.weight"], start["backbone.1.weight"])  # the first stays frozen
    # the bottleneck now takes the first hidden layer's 256 features: a new layer, as is the head
    assert model["bottleneck.0.weight"].shape == start["bottleneck.0.weight"].shape
    assert ckpt["method"]["_extra_state"]["anchors"].keys() == {"backbone.1.weight", "backbone.1.bias"}
    assert ckpt["model_spec"]["cut"] == 1 and result.diagnostics["tensors_given"] == 2
    assert result.source_accuracy > 90  # the earlier features still separate the classes
    # the cut network comes back from its folder and scores what the run reported
    loaded = dalib.load_model(tmp_path / "cut")
    assert evaluate(loaded, load_domain(toy_dataset, "tgt"), torch.device("cpu")) == result.target_accuracy


@pytest.mark.parametrize("arch,shape,cut,features", [
    ("lenet", (1, 28, 28), 1, 32 * 16),  # the first conv block's 32 channels, pooled to 4 x 4
    ("resnet18", (3, 32, 32), 2, 128),  # stem, layer1, layer2: layer2's 128 channels, pooled
])
def test_cut_on_image_backbones(arch, shape, cut, features):
    from dalib.models import build_model

    model = build_model(arch, shape, 3, bottleneck_dim=16)
    kept = len(model.stages()) - cut
    model.cut_stages(cut)
    model.freeze_stages(None)
    assert len(model.stages()) == kept and model.bottleneck[0].in_features == features
    assert model(torch.randn(2, *shape)).logits.shape == (2, 3)
    learning = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert learning == {"bottleneck", "head"}
    with pytest.raises(ConfigError, match="already cut"):
        model.cut_stages(1)


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
    with pytest.raises(ConfigError, match="policy"):
        build_config(cls.Config, {"policy": "cut:0"})
    too_deep = RunConfig(method="finetune", dataset=toy_dataset, src="src", tgt="tgt", steps=2,
                         method_config={"policy": "cut:2"})  # a cut keeps one stage at least
    with pytest.raises(ConfigError, match="2 stages; cannot cut 2 .K of cut:K runs from 1 to 1"):
        run(too_deep, None, progress_bar=False)
    nothing = RunConfig(method="finetune", dataset=toy_dataset, src="src", tgt="tgt", steps=2, arch="identity",
                        method_config={"policy": "cut:1"})
    with pytest.raises(ConfigError, match="0 stages: nothing to cut"):
        run(nothing, None, progress_bar=False)
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


@pytest.mark.parametrize("policy", ["full", "cut:1"])
def test_a_resumed_l2sp_run_needs_no_init_file_and_ends_as_the_uninterrupted_one(tmp_path, toy_dataset, source_model,
                                                                                policy):
    import shutil

    init = tmp_path / "init.pt"
    shutil.copy(source_model, init)
    full = _run_finetune(tmp_path, toy_dataset, "full", l2sp=0.1, init=str(init), policy=policy)

    class _Stop(Exception):
        pass

    def stop(step, logs):
        if step == 12:
            raise _Stop

    with pytest.raises(_Stop):
        _run_finetune(tmp_path, toy_dataset, "stopped", on_step=stop, l2sp=0.1, init=str(init), policy=policy)
    init.unlink()  # the checkpoint holds the weights and the anchors
    resumed = _run_finetune(tmp_path, toy_dataset, "stopped", resume=True, l2sp=0.1, init=str(init), policy=policy)
    assert (resumed.source_accuracy, resumed.target_accuracy) == (full.source_accuracy, full.target_accuracy)


def test_a_start_from_another_network_or_other_classes(tmp_path, toy_dataset, source_model):
    from dalib.data import DatasetInfo, Domain, list_datasets, register_dataset
    from dalib.data.registry import _entry

    # a checkpoint whose backbone has tensors this model lacks is another network, not a fit
    cfg = RunConfig(method="finetune", dataset=toy_dataset, src="src", tgt="tgt", steps=2, arch="identity",
                    method_config={"init": str(source_model)})
    with pytest.raises(CheckpointError, match=r"4 it has and this model lacks\): it was a mlp network, and this "
                                              r"model's backbone has other layers: give --arch mlp$"):
        run(cfg, None, progress_bar=False)
    # other inputs as well: the other network is named first (other inputs alone would not explain
    # other layers; the message had named only the inputs, and following it failed again)
    toy = _entry(toy_dataset)[1]
    if "toy-shift-wide" not in list_datasets():

        def wide(request):
            d = toy(request)
            return Domain.from_arrays(d.name, torch.cat([d.x, d.x[:, :3]], 1), d.y, dataset_name="toy-shift-wide")

        register_dataset(DatasetInfo(name="toy-shift-wide", description="toy shift, 3 features more (tests)",
                                     domains=("src", "tgt"), kind="features", num_classes=2, needs="embedded"), wide)
    cfg = dataclasses.replace(cfg, dataset="toy-shift-wide")
    with pytest.raises(CheckpointError, match=r"lacks\): it was a mlp network, .*: give --arch mlp; it took inputs of "
                                              r"shape \(\d+,\) and this data's are \(\d+,\)$"):
        run(cfg, None, progress_bar=False)

    # the same shapes, other class names: the classifier is not reused, and the run says why
    if "toy-shift-named" not in list_datasets():

        def named(request):
            d = toy(request)
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

    # the same classes in another order: the classifier is reused, its rows in this data's order
    # (it had been dropped, with a warning that the classes were not this data's)
    if "toy-shift-swapped" not in list_datasets():

        def swapped(request):
            d = toy(request)
            return Domain.from_arrays(d.name, d.x, 1 - d.y, classes=["1", "0"], dataset_name="toy-shift-swapped")

        register_dataset(DatasetInfo(name="toy-shift-swapped", description="toy shift, classes listed 1, 0 (tests)",
                                     domains=("src", "tgt"), kind="features", num_classes=2, needs="embedded"), swapped)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = run(dataclasses.replace(cfg, dataset="toy-shift-swapped"), tmp_path / "swapped", progress_bar=False)
    anchors = load_checkpoint(tmp_path / "swapped" / "checkpoint.pt")["method"]["_extra_state"]["anchors"]
    for k in ("head.weight", "head.bias"):
        assert torch.equal(anchors[k], start[k][[1, 0]])
    assert result.target_accuracy > 60  # the reused head, in the right order, on a shift it was trained for


def test_a_start_that_does_not_fit_says_why(tmp_path, toy_dataset, source_model):
    """Same --arch and dataset, yet no fit: the message names the real cause."""
    cut = tmp_path / "cut"
    done = run(RunConfig(method="finetune", dataset=toy_dataset, src="src", tgt="tgt", steps=2, batch_size=32,
                         method_config={"init": str(source_model), "policy": "cut:1"}), cut, progress_bar=False)
    # the cut network is the one load_model (and dalib eval) gives back: it scores what the run did
    from dalib.data import load_domain
    from dalib.runner import evaluate

    loaded = dalib.load_model(cut)
    assert evaluate(loaded, load_domain(toy_dataset, "tgt"), torch.device("cpu")) == done.target_accuracy
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in done.model.parameters())
    whole = RunConfig(method="finetune", dataset=toy_dataset, src="src", tgt="tgt", steps=2, batch_size=32,
                      method_config={"init": str(cut), "policy": "full"})
    with pytest.raises(CheckpointError, match=r"lacks\): its network was cut \(policy cut:1\) .*start with policy=cut:1"):
        run(whole, None, progress_bar=False)
    # a cut checkpoint of another network: the network is named (the cut alone had been, and a
    # start with its policy then failed on the network)
    with pytest.raises(CheckpointError, match=r"lacks\): it was a mlp network, and this model's backbone has other "
                                              r"layers: give --arch mlp; its network was cut \(policy cut:1\)"):
        run(dataclasses.replace(whole, arch="identity"), None, progress_bar=False)
    narrow = RunConfig(method="finetune", dataset=toy_dataset, src="src", tgt="tgt", steps=2, batch_size=32,
                       bottleneck_dim=128, method_config={"init": str(source_model)})
    with pytest.raises(CheckpointError, match=r"its bottleneck is 256 wide and this model's 128: pass --bottleneck-dim 256"):
        run(narrow, None, progress_bar=False)


def test_finetune_without_a_starting_point_says_so(toy_dataset):
    cfg = RunConfig(method="finetune", dataset=toy_dataset, src="src", tgt="tgt", steps=1, batch_size=16)
    for settings, unlike in [({}, "which is source_only with the backbone at 0.1x the learning rate$"),
                             ({"policy": "head"}, "which is source_only with frozen layers and the backbone at 0.1x"),
                             ({"backbone_lr_mult": 1.0}, "which is source_only$")]:
        with pytest.warns(RuntimeWarning, match=f"no starting point .*{unlike}"):
            run(dataclasses.replace(cfg, method_config=settings), None, progress_bar=False)


def test_l2sp_from_pretrained_weights_anchors_the_backbone_at_them(tmp_path):
    """With --pretrained (a torchvision weights file here, ImageNet's in use), the backbone is
    what the start gave: L2-SP pulls it towards those weights, not towards zero."""
    import torchvision

    from dalib.models import build_model
    from dalib.plugin import Context, Progress

    weights = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    model = build_model("resnet18", (3, 32, 32), 2, pretrained=str(weights))
    cls = dalib.get_method("finetune")
    method = cls(cls.Config(l2sp=0.01), model)
    empty = torch.utils.data.TensorDataset(torch.zeros(2, 3, 32, 32), torch.zeros(2, dtype=torch.long))
    method.prepare(Context(model, empty, empty, torch.device("cpu"), 2, Progress(0, 10)))
    backbone = {f"backbone.{n}" for n, _ in model.backbone.named_parameters()}
    assert method.diagnostics["started_from"] == "pretrained" and set(method.anchors) == backbone
    for name, p in model.named_parameters():
        if name in backbone:
            assert torch.equal(method.anchors[name], p.detach())


def test_init_may_start_with_the_home_folder(tmp_path, toy_dataset, source_model, monkeypatch):
    """As --data and the data root do: a TOML file or --set=init=~/... passes the ~ unexpanded."""
    monkeypatch.setenv("HOME", str(source_model.parent.parent))
    head = _finetune(tmp_path, toy_dataset, "home", policy="head", init=f"~/{source_model.parent.name}")
    start = load_checkpoint(source_model)["model"]
    assert all(torch.equal(head[k], start[k]) for k in start if k.startswith("backbone."))


def test_init_naming_a_shallow_run_says_it_holds_no_network(tmp_path, toy_dataset):
    """A source_only run on features fits the shallow form by default: its folder has a result
    and no checkpoint, which init reported as 'no checkpoint at ...' without saying why."""
    shallow = tmp_path / "shallow"
    run(RunConfig(method="source_only", dataset=toy_dataset, src="src", tgt="tgt"), shallow, progress_bar=False)
    with pytest.raises(CheckpointError, match=r"holds no network: a shallow run keeps only its result \(--mode deep"):
        _finetune(tmp_path, toy_dataset, "from_shallow", policy="head", init=str(shallow))
