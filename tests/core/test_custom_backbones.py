"""Backbones of the user's own: registered with a decorator, a --plugin file or an entry point,
checked when built, trained by the runner, fine-tuned by their stages and loaded back."""

from __future__ import annotations

import json
from importlib.metadata import EntryPoint

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import dalib
from dalib import RunConfig, registry
from dalib.cli import cli
from dalib.errors import ConfigError, RegistryError, UnknownNameError
from dalib.models import backbones, build_model, register_backbone


class TwoBlocks(nn.Module):
    """Two blocks that say which they are: ``stages()``."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.first = nn.Sequential(nn.Linear(in_dim, 12), nn.BatchNorm1d(12), nn.ReLU())
        self.second = nn.Sequential(nn.Linear(12, 6), nn.ReLU())

    def forward(self, x):
        return self.second(self.first(x))

    def stages(self):
        return [self.first, self.second]


def test_a_registered_backbone_is_built_and_its_width_read_from_one_forward_pass(fresh_backbones):
    @register_backbone("two-blocks")
    def build(input_shape, pretrained):
        return TwoBlocks(input_shape[0])

    model = build_model("two-blocks", (5,), 3, bottleneck_dim=4)
    assert model.bottleneck[0].in_features == 6  # the width no one stated
    assert [list(s.parameters()) for s in model.stages()] == [list(model.backbone.first.parameters()),
                                                              list(model.backbone.second.parameters())]
    # the probe neither trained batch norm nor left the module in eval mode
    assert model.backbone.first[1].num_batches_tracked.item() == 0 and model.backbone.training
    assert "two-blocks" in dalib.models.list_backbones()


@pytest.mark.parametrize(("built", "message"), [
    (lambda: nn.Conv2d(1, 2, 3), r"cannot take inputs of shape \(5,\)"),
    (lambda: nn.Unflatten(1, (5, 1)), r"gives shape \(2, 5, 1\) for a batch of 2 inputs: .*\(B, D\)"),
    (lambda: (nn.Linear(5, 7), 8), r"its builder says 8 features, its module gives 7"),
    (lambda: "a network", r"must return an nn.Module or \(module, width\), got str"),
], ids=["input", "not-flat", "width", "not-a-module"])
def test_a_backbone_that_does_not_fit_is_one_line_when_built(fresh_backbones, built, message):
    register_backbone("misfit")(lambda input_shape, pretrained: built())
    with pytest.raises(ConfigError, match=message) as info:
        build_model("misfit", (5,), 3)
    assert "\n" not in str(info.value)


def test_names_are_checked_and_taken_once(fresh_backbones):
    def mine(input_shape, pretrained):
        return nn.Flatten()

    register_backbone("mine")(mine)
    register_backbone("mine")(mine)  # the same definition again (a notebook cell run twice)
    with pytest.raises(RegistryError, match=r"backbone 'mine' is already registered \(by .*mine\)"):
        register_backbone("mine")(lambda input_shape, pretrained: nn.Flatten())
    with pytest.raises(RegistryError, match="'lenet' is built into dalib"):
        register_backbone("lenet")(mine)
    with pytest.raises(RegistryError, match="invalid backbone name '-x'"):
        register_backbone("-x")


def test_pretrained_reaches_the_builder_and_marks_the_backbone_pretrained(fresh_backbones):
    seen = []

    @register_backbone("weighted")
    def build(input_shape, pretrained):
        seen.append(pretrained)
        return nn.Linear(input_shape[0], 4), 4

    model = build_model("weighted", (5,), 3, pretrained="my-weights")
    assert seen == ["my-weights"] and model.pretrained
    assert [g["lr_mult"] for g in model.param_groups()] == [0.1, 1.0]
    with pytest.raises(ConfigError, match="--pretrained applies to the resnet backbones and to registered ones, not 'mlp'"):
        build_model("mlp", (5,), 3, pretrained="my-weights")


def test_stages_that_are_not_the_backbones_are_refused(fresh_backbones):
    class Foreign(TwoBlocks):
        def stages(self):
            return [self.first, nn.Linear(2, 2)]

    register_backbone("foreign")(lambda input_shape, pretrained: Foreign(input_shape[0]))
    with pytest.raises(ConfigError, match=r"stages\(\) must return its stages, input first, each a sub-module"):
        build_model("foreign", (5,), 3)


def test_finetune_freezes_and_cuts_a_registered_backbones_stages(fresh_backbones, toy_dataset):
    register_backbone("two-blocks")(lambda input_shape, pretrained: TwoBlocks(input_shape[0]))
    base = dict(dataset=toy_dataset, src="src", tgt="tgt", arch="two-blocks", steps=4, batch_size=8)
    with pytest.warns(RuntimeWarning, match="no starting point"):
        frozen = dalib.run(RunConfig(method="finetune", method_config={"policy": "partial:1"}, **base), None,
                           progress_bar=False)
    model = frozen.model
    assert not any(p.requires_grad for p in model.backbone.first.parameters())
    assert all(p.requires_grad for p in model.backbone.second.parameters())
    with pytest.warns(RuntimeWarning, match="no starting point"):
        cut = dalib.run(RunConfig(method="finetune", method_config={"policy": "cut:1"}, **base), None,
                        progress_bar=False)
    assert isinstance(cut.model.backbone.second, nn.Identity) and cut.model.bottleneck[0].in_features == 12


class Maps(nn.Module):
    """A convolutional backbone whose last stage pools and flattens: cut off, feature maps remain."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Unflatten(1, (2, 2, 2)), nn.Conv2d(2, 3, 1), nn.ReLU())
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.pool(self.conv(x))

    def stages(self):
        return [self.conv, self.pool]


def test_a_backbone_cut_to_feature_maps_trains_on_them_flattened(fresh_backbones, toy_dataset):
    register_backbone("maps")(lambda input_shape, pretrained: Maps())
    with pytest.warns(RuntimeWarning, match="no starting point"):
        res = dalib.run(RunConfig(method="finetune", method_config={"policy": "cut:1"}, dataset=toy_dataset,
                                  src="src", tgt="tgt", arch="maps", steps=3, batch_size=8), None, progress_bar=False)
    assert res.model.bottleneck[0].in_features == 3 * 2 * 2
    assert res.model(torch.zeros(2, 8)).logits.shape == (2, 2)


PLUGIN = '''
import math

from torch import nn
from dalib.models import register_backbone


@register_backbone("plugin-net")
def build(input_shape, pretrained):
    """A hidden layer of 16."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), 16), nn.ReLU())
'''


def test_a_plugin_file_brings_a_backbone_to_run_list_and_eval(fresh_backbones, tmp_path):
    plugin = tmp_path / "net_plugin.py"
    plugin.write_text(PLUGIN)
    runner = CliRunner()
    listed = runner.invoke(cli, ["list", "--plugin", str(plugin)])
    assert listed.exit_code == 0 and "  plugin-net           A hidden layer of 16." in listed.stdout
    out = tmp_path / "run"
    args = ["run", "source_only", "--src", "mnist", "--tgt", "usps", "--arch", "plugin-net", "--steps", "3",
            "--batch-size", "8", "--out", str(out), "--quiet"]
    done = runner.invoke(cli, [*args, "--plugin", str(plugin)])
    assert done.exit_code == 0, done.output
    result = json.loads((out / "result.json").read_text())
    assert result["run_config"]["arch"] == "plugin-net"
    assert result["backbone_builder"] == f"build in {plugin}"  # the file that made the network
    del backbones.BACKBONES["plugin-net"]  # a new process, which has not imported the plugin
    lost = runner.invoke(cli, ["eval", str(out)])
    assert lost.exit_code == 2
    assert lost.stderr.strip() == ("dalib: error: unknown architecture 'plugin-net'; known: lenet, mlp, identity, "
                                   "resnet18, resnet34, resnet50 (a backbone of your own: register it with "
                                   "dalib.models.register_backbone, and pass --plugin MODULE)")
    found = runner.invoke(cli, ["eval", str(out), "--plugin", str(plugin)])
    assert found.exit_code == 0 and "the network of step 3" in found.stdout


HALF_DATASET = '''
from dalib.data import DatasetInfo, register_dataset

register_dataset(DatasetInfo(name="half-data", description="never whole", domains=("a", "b"), kind="features",
                             num_classes=2, needs="embedded"), lambda request: None)
'''


def test_a_plugin_that_fails_after_registering_a_backbone_leaves_none(fresh_backbones, tmp_path):
    """Nor a dataset: what a failed import registered is not offered (dalib run would build it)."""
    plugin = tmp_path / "half_net.py"
    plugin.write_text(PLUGIN + HALF_DATASET + "\nraise ImportError('fails after')\n")
    with pytest.raises(RegistryError, match="fails after"):
        registry.load_plugin_module(str(plugin))
    assert "plugin-net" not in backbones.BACKBONES
    assert "half-data" not in dalib.data.list_datasets()
    with pytest.raises(UnknownNameError, match="unknown architecture 'plugin-net'"):
        build_model("plugin-net", (5,), 3)


def test_backbone_entry_points_load_once_and_a_broken_one_is_reported(fresh_backbones, monkeypatch, tmp_path):
    (tmp_path / "ep_net.py").write_text(PLUGIN)
    (tmp_path / "ep_half.py").write_text(PLUGIN.replace("plugin-net", "half-net") + "\nraise ImportError('no')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    eps = [EntryPoint("nets", "ep_net", "dalib.backbones"), EntryPoint("half", "ep_half", "dalib.backbones")]
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [ep for ep in eps if ep.group == group])
    monkeypatch.setattr(backbones, "_entry_points_loaded", False)
    monkeypatch.setattr(backbones, "_broken", {})
    assert build_model("plugin-net", (5,), 3).bottleneck[0].in_features == 16  # found when first asked for
    assert "half-net" not in backbones.list_backbones()
    assert backbones.backbone_plugin_errors() == {"half": "ep_half: ImportError: no"}
    assert registry.plugin_errors()["half (backbones)"] == "ep_half: ImportError: no"


def test_a_torchvision_resnet_with_its_own_fc_freezes_and_cuts_it_with_layer4(fresh_backbones):
    """The usual way to adapt a torchvision model, fc replaced: head froze the backbone but trained
    fc, and cut:1 failed on fc's input."""
    import torchvision

    def build(input_shape, pretrained):
        net = torchvision.models.resnet18(weights=None)
        net.fc = nn.Linear(512, 32)
        return net

    register_backbone("r18fc")(build)
    model = build_model("r18fc", (3, 32, 32), 3, bottleneck_dim=8)
    model.freeze_stages(None)  # policy head
    assert not any(p.requires_grad for p in model.backbone.parameters())
    cut = build_model("r18fc", (3, 32, 32), 3, bottleneck_dim=8)
    cut.cut_stages(1)
    assert isinstance(cut.backbone.fc, nn.Identity) and cut.bottleneck[0].in_features == 256
    assert cut(torch.zeros(2, 3, 32, 32)).logits.shape == (2, 3)


def test_a_cut_the_backbone_cannot_run_with_is_one_line_and_leaves_the_model_whole(fresh_backbones):
    class SixWide(TwoBlocks):  # its forward needs the second block's 6 outputs
        def __init__(self, in_dim):
            super().__init__(in_dim)
            self.register_buffer("mix", torch.eye(6))

        def forward(self, x):
            return super().forward(x) @ self.mix

    register_backbone("six-wide")(lambda input_shape, pretrained: SixWide(input_shape[0]))
    model = build_model("six-wide", (5,), 3, bottleneck_dim=4)
    x = torch.randn(4, 5)
    model.eval()
    before = model(x).logits
    with pytest.raises(ConfigError, match=r"the backbone cannot run with its last 1 stage cut off \(.*\): choose "
                                          r"another policy"):
        model.cut_stages(1)
    # as it was: the stage is back, nothing recorded as cut, and the model still runs
    assert isinstance(model.backbone.second, nn.Sequential) and model.cut == 0 and model.cut_prefixes == []
    assert len(model.stages()) == 2 and torch.equal(model(x).logits, before)


def test_stages_that_leave_out_parameters_are_refused(fresh_backbones):
    class Partial(TwoBlocks):
        def stages(self):
            return [self.first]

    register_backbone("partial")(lambda input_shape, pretrained: Partial(input_shape[0]))
    with pytest.raises(ConfigError, match=r"stages\(\) leave out second.0.weight, second.0.bias: every parameter "
                                          r"and every batch-norm layer belongs to a stage"):
        build_model("partial", (5,), 3)


def test_stages_that_leave_out_a_batch_norm_without_parameters_are_refused(fresh_backbones):
    """Its running statistics would follow the target's batches under head, the backbone's weights
    frozen: its outputs drift all the same."""
    class Normed(nn.Module):
        def __init__(self, in_dim: int) -> None:
            super().__init__()
            self.first = nn.Linear(in_dim, 6)
            self.norm = nn.BatchNorm1d(6, affine=False)
            self.second = nn.Linear(6, 4)

        def forward(self, x):
            return self.second(self.norm(self.first(x)))

        def stages(self):
            return [self.first, self.second]

    register_backbone("normed")(lambda input_shape, pretrained: Normed(input_shape[0]))
    with pytest.raises(ConfigError, match=r"stages\(\) leave out norm's running statistics: every parameter and "
                                          r"every batch-norm layer belongs to a stage"):
        build_model("normed", (5,), 3)
    Normed.stages = lambda self: [self.first, nn.ModuleList([self.norm, self.second])]  # placed: accepted
    model = build_model("normed", (5,), 3)
    model.freeze_stages(None)
    model.train()
    model(torch.randn(4, 5))
    assert model.backbone.norm.num_batches_tracked.item() == 0  # frozen with its stage: eval mode


def test_a_resnet_subclass_with_layers_of_its_own_trains_but_refuses_to_freeze_stages(fresh_backbones):
    """conv1, bn1, layer1..4 and fc make the stages of a torchvision ResNet; a layer beside them
    is in none, so head would have trained it while the user believed the backbone frozen."""
    import torchvision

    class Embedded(torchvision.models.ResNet):
        def __init__(self) -> None:
            super().__init__(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1])
            self.fc = nn.Identity()
            self.embed = nn.Linear(512, 16)

        def forward(self, x):
            return self.embed(super().forward(x))

    register_backbone("embedded")(lambda input_shape, pretrained: Embedded())
    model = build_model("embedded", (3, 32, 32), 3, bottleneck_dim=8)
    assert model(torch.zeros(2, 3, 32, 32)).logits.shape == (2, 3)  # the other methods train it whole
    model.freeze_stages(0)  # policy full: nothing frozen, nothing to place
    for k in (None, 1):  # head, partial:1
        with pytest.raises(ConfigError, match=r"cannot freeze the stages of this ResNet: embed.weight, embed.bias are "
                                              r"outside conv1, bn1, layer1..layer4 and fc, .*give the backbone a "
                                              r"stages\(\) method"):
            model.freeze_stages(k)
    assert all(p.requires_grad for p in model.parameters())
    # a cut freezes nothing: cut:1 is refused by the forward it leaves (embed takes layer4's width), no more
    with pytest.raises(ConfigError, match=r"cannot run with its last 1 stage cut off"):
        model.cut_stages(1)
    assert model.cut == 0


class ViewFlat(nn.Module):
    """Flattens its feature maps with ``.view``, which needs them in the default layout."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Unflatten(1, (2, 2, 2)), nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3), nn.ReLU())

    def forward(self, x):
        h = self.conv(x)
        return h.view(h.size(0), -1)


def test_a_backbone_that_flattens_with_view_trains_in_the_default_layout_on_the_cpu(fresh_backbones, toy_dataset):
    """The runner lays a CPU network's weights out channels_last: this one's feature maps then
    could not be viewed flat, and its first step failed with torch's traceback."""
    register_backbone("view-flat")(lambda input_shape, pretrained: ViewFlat())
    config = RunConfig(method="dann", dataset=toy_dataset, src="src", tgt="tgt", arch="view-flat", steps=3,
                       batch_size=8)
    with pytest.warns(UserWarning, match=r"backbone 'view-flat' cannot run in the channels_last layout \(view size "
                                         r".*\): it trains in the default layout, more slowly on the CPU \(flatten "
                                         r"with .flatten\(1\) or .reshape"):
        res = dalib.run(config, None, progress_bar=False)
    conv = res.model.backbone.conv[1].weight
    assert conv.is_contiguous() and res.steps == 3 and 0 <= res.target_accuracy <= 100


def test_a_backbone_that_returns_more_in_training_is_one_line_at_the_first_step(fresh_backbones, toy_dataset):
    class AuxInTraining(nn.Module):  # as torchvision's googlenet with aux_logits
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            h = self.fc(x)
            return (h, h) if self.training else h

    register_backbone("aux")(lambda input_shape, pretrained: AuxInTraining())
    with pytest.raises(ConfigError, match=r"the backbone gave a tuple in training mode, not a \(B, D\) tensor"):
        dalib.run(RunConfig(method="dann", dataset=toy_dataset, src="src", tgt="tgt", arch="aux", steps=2,
                            batch_size=8), None, progress_bar=False)


def test_what_a_failed_plugin_registered_from_a_helper_module_goes_with_it(fresh_backbones, tmp_path):
    """A builder or a loader defined in a module that imported whole, registered by the plugin
    that then failed: it stayed registered (and dalib run trained it)."""
    (tmp_path / "net_helpers.py").write_text(PLUGIN.replace('@register_backbone("plugin-net")\n', "")
                                             + "\ndef load(request):\n    return None\n")
    plugin = tmp_path / "uses_helpers.py"
    plugin.write_text("import net_helpers\nfrom dalib.data import DatasetInfo, register_dataset\n"
                      "from dalib.models import register_backbone\n\n"
                      'register_backbone("helper-net")(net_helpers.build)\n'
                      'register_dataset(DatasetInfo(name="helper-data", description="d", domains=("a", "b"), '
                      'kind="features", num_classes=2, needs="embedded"), net_helpers.load)\n'
                      "raise ImportError('fails after')\n")
    with pytest.raises(RegistryError, match="fails after"):
        registry.load_plugin_module(str(plugin))
    assert "helper-net" not in backbones.BACKBONES and "helper-data" not in dalib.data.list_datasets()


def test_a_backbone_built_from_another_runs_network_loads_in_a_thread(fresh_backbones, tmp_path):
    """A builder that starts from an earlier run's network calls load_model inside load_model
    (loading the run that used it): the inner load waited for the lock its own thread held,
    for ever. It builds there, as a run's callback does, and the generators are given back."""
    import threading

    from dalib.runner import load_model, run

    run(RunConfig(method="source_only", src="mnist", tgt="usps", steps=2, batch_size=8), tmp_path / "teacher",
        progress_bar=False)
    register_backbone("from-teacher")(lambda input_shape, pretrained: load_model(tmp_path / "teacher").backbone)
    run(RunConfig(method="source_only", src="mnist", tgt="usps", steps=2, batch_size=8, arch="from-teacher"),
        tmp_path / "student", progress_bar=False)
    loaded, state = [], torch.random.get_rng_state()
    worker = threading.Thread(target=lambda: loaded.append(load_model(tmp_path / "student")), daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive() and loaded[0].step == 2
    assert torch.equal(torch.random.get_rng_state(), state)
