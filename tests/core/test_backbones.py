"""Backbones: what each accepts, and the errors for weights that cannot be had."""

from __future__ import annotations

import urllib.error

import pytest
import torch

from dalib.errors import CheckpointError, ConfigError
from dalib.models import build_model


def test_resnets_refuse_inputs_that_are_not_colour_images():
    with pytest.raises(ConfigError, match=r"resnet18 needs colour images \(3, H, W\), got inputs of shape \(1, 16, 16\)"):
        build_model("resnet18", (1, 16, 16), 10)
    with pytest.raises(ConfigError, match=r"shape \(800,\): use --arch mlp or identity"):
        build_model("resnet34", (800,), 10)
    model = build_model("resnet18", (3, 32, 32), 10, bottleneck_dim=16)
    assert model(torch.zeros(2, 3, 32, 32)).logits.shape == (2, 10)


def test_imagenet_weights_out_of_reach_are_one_clear_error(monkeypatch, capsys):
    import torchvision

    def offline(weights=None, progress=True):
        print('Downloading: "https://download.pytorch.org/models/resnet18.pth" to /cache')  # as torch.hub does
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torchvision.models, "resnet18", offline)
    with pytest.raises(CheckpointError, match=r"cannot get the ImageNet weights of resnet18 \(.*Name or service.*\): "
                                              r"put them in torchvision's cache"):
        build_model("resnet18", (3, 32, 32), 10, pretrained="imagenet")
    said = capsys.readouterr()
    assert said.out == "" and said.err == ""  # the one-line error alone, from the CLI


@pytest.mark.parametrize("content", [b"<html>a proxy's page</html>", b"garbage\n", b"PK\x03\x04cut"],
                         ids=["html", "text", "cut-zip"])
def test_a_damaged_cached_imagenet_file_is_one_line_that_names_it(tmp_path, monkeypatch, content):
    """torchvision reads its cache first (no network): a page saved in place of the weights was
    a traceback (UnpicklingError, ValueError), a cut zip a line that advised to put the file there."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(content)
    with pytest.raises(CheckpointError, match=rf"cannot get the ImageNet weights of resnet18 \(.*\): the cached file "
                                              rf"{cached} is damaged: delete it, or put the right file there$"):
        build_model("resnet18", (3, 32, 32), 10, pretrained="imagenet")


def test_a_download_that_works_says_so_on_stderr_not_stdout(tmp_path, monkeypatch, capsys):
    import torchvision

    state = torchvision.models.resnet18().state_dict()

    def downloading(url, **kwargs):
        assert kwargs["weights_only"] and url.endswith("/resnet18-f37072fd.pth")
        print(f'Downloading: "{url}" to /cache')
        return state

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", downloading)
    model = build_model("resnet18", (3, 32, 32), 10, pretrained="imagenet")
    torch.testing.assert_close(model.backbone.conv1.weight, state["conv1.weight"])
    said = capsys.readouterr()
    assert said.out == "" and said.err.startswith("Downloading: ")


def test_a_cached_imagenet_file_runs_no_code_and_must_be_torchvisions(tmp_path, monkeypatch):
    """torchvision loads its cached weights with weights_only=False, and torch.hub checks the
    hash only as it downloads: a pickle put in a shared TORCH_HOME ran its code as whoever
    passed --pretrained imagenet. The file must have the SHA-256 its name starts, and is read
    as tensors only."""
    import hashlib
    import os

    from dalib.models.backbones import _hub_weights

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save({"conv1.weight": Payload()}, checkpoints / "resnet18-f37072fd.pth")
    with pytest.raises(CheckpointError, match=r"\(its SHA-256 does not start with f37072fd, as torchvision's file "
                                              r"does\): the cached file .* is damaged"):
        build_model("resnet18", (3, 32, 32), 10, pretrained="imagenet")
    evil = (checkpoints / "resnet18-f37072fd.pth").read_bytes()  # under a name its hash matches: not unpickled
    named = checkpoints / f"weights-{hashlib.sha256(evil).hexdigest()[:8]}.pth"
    named.write_bytes(evil)
    with pytest.raises(Exception, match="Weights only load failed"):
        _hub_weights(f"https://download.invalid/{named.name}")
    assert not marker.exists()


def test_an_empty_weights_file_says_what_is_wrong(tmp_path):
    empty = tmp_path / "weights.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError) as info:
        build_model("resnet18", (3, 32, 32), 10, pretrained=str(empty))
    assert str(info.value) == f"cannot read pretrained weights {empty} (EOFError: the file is empty or cut short)"
    text = tmp_path / "notes.txt"
    text.write_text("hello")  # torch.load's KeyError: 104 said only "104"
    with pytest.raises(CheckpointError) as info:
        build_model("resnet18", (3, 32, 32), 10, pretrained=str(text))
    assert str(info.value) == (f"cannot read pretrained weights {text} (KeyError: not a file that torch.save wrote "
                               "(its first bytes are no pickle))")
    import zipfile

    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:  # a zip archive of something else
        archive.writestr("notes.txt", "hello")
    with pytest.raises(CheckpointError) as info:
        build_model("resnet18", (3, 32, 32), 10, pretrained=str(tmp_path / "other.zip"))
    assert "(RuntimeError: a zip archive that torch.save did not write, or one cut short (" in str(info.value)
    assert "enforce" not in str(info.value)


def test_weights_saved_with_the_whole_model_load_the_resnets_and_nan_weights_are_refused(tmp_path):
    """Transfer-Learning-Library saves its classifier's state dict (the ResNet under
    ``backbone.``, beside its bottleneck and head), torchvision's reference scripts
    ``{"model": ..., "epoch": ...}``: both were "do not fit: 0 missing, N unexpected keys".
    NaN weights trained, and the first step's NaN loss blamed the learning rate."""
    import torchvision

    net = torchvision.models.resnet18()
    resnet = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    tll = {**{f"backbone.{k}": v for k, v in resnet.items()},
           "bottleneck.0.weight": torch.zeros(256, 512), "head.weight": torch.zeros(31, 256)}
    torch.save(tll, tmp_path / "tll.pth")
    torch.save({"model": net.state_dict(), "epoch": 9}, tmp_path / "reference.pth")
    for name in ("tll.pth", "reference.pth"):
        model = build_model("resnet18", (3, 32, 32), 10, pretrained=str(tmp_path / name))
        assert torch.equal(model.backbone.layer4[1].bn2.running_var, net.layer4[1].bn2.running_var), name
    torch.save({"encoder.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"other.pth do not fit: 100 missing, 1 unexpected keys \(e\.g\. missing "
                                              r"conv1\.weight, unexpected encoder\.weight\): not the weights of a "
                                              r"torchvision ResNet$"):
        build_model("resnet18", (3, 32, 32), 10, pretrained=str(tmp_path / "other.pth"))
    tll["backbone.layer2.0.conv1.weight"] = torch.full_like(tll["backbone.layer2.0.conv1.weight"], float("nan"))
    torch.save(tll, tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match=r"nan.pth hold NaN or infinite values \(in backbone\.layer2\.0\.conv1\.weight\)$"):
        build_model("resnet18", (3, 32, 32), 10, pretrained=str(tmp_path / "nan.pth"))


def test_weights_of_a_resnet_of_another_depth_name_it(tmp_path):
    """ResNet-34 weights into a resnet18 had been "96 unexpected keys: not the weights of a
    torchvision ResNet"; ResNet-18 weights into a resnet50 "another ResNet or input?"."""
    import torchvision

    for given, arch in (("resnet34", "resnet18"), ("resnet18", "resnet50"), ("resnet50", "resnet34")):
        torch.save(getattr(torchvision.models, given)().state_dict(), tmp_path / f"{given}.pt")
        with pytest.raises(CheckpointError, match=rf"^pretrained weights \S+{given}\.pt are those of a {given}, and this "
                                                  rf"network is a {arch}: give --arch {given}$"):
            build_model(arch, (3, 32, 32), 10, pretrained=str(tmp_path / f"{given}.pt"))
    # one dalib does not build: said so; one of blocks no torchvision ResNet has: its blocks
    deeper = torchvision.models.resnet101().state_dict()
    torch.save(deeper, tmp_path / "r101.pt")
    with pytest.raises(CheckpointError, match=r"are those of a resnet101, and this network is a resnet50 \(dalib builds "):
        build_model("resnet50", (3, 32, 32), 10, pretrained=str(tmp_path / "r101.pt"))
    # a ResNeXt's tensors have a ResNet-50's names, other widths: not named a resnet50 (whose advice then failed)
    torch.save(torchvision.models.resnext50_32x4d().state_dict(), tmp_path / "rx50.pt")
    for arch in ("resnet18", "resnet50"):
        with pytest.raises(CheckpointError, match=rf"rx50\.pt are those of a ResNet of other widths \(a ResNeXt or a Wide "
                                                  rf"ResNet\?\) with blocks 3, 4, 6, 3, and this network is a {arch} \(dalib "):
            build_model(arch, (3, 32, 32), 10, pretrained=str(tmp_path / "rx50.pt"))
    torch.save({k: v for k, v in deeper.items() if not k.startswith(("layer3.22.", "layer3.21."))}, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match=r"are those of a ResNet of blocks 3, 4, 21, 3, and this network is a resnet50"):
        build_model("resnet50", (3, 32, 32), 10, pretrained=str(tmp_path / "odd.pt"))


def test_a_dalib_checkpoint_given_as_pretrained_weights_points_to_finetune(tmp_path):
    from dalib.runner import RunConfig, run

    run(RunConfig(method="source_only", src="mnist", tgt="usps", steps=1, batch_size=8), tmp_path / "r",
        progress_bar=False)
    with pytest.raises(CheckpointError, match=r"is a dalib run's checkpoint: start from it with `dalib run finetune "
                                              rf"--set init={tmp_path / 'r' / 'checkpoint.pt'}`"):  # (it had said RUN)
        build_model("resnet18", (3, 32, 32), 10, pretrained=str(tmp_path / "r" / "checkpoint.pt"))


def test_a_run_folder_given_as_pretrained_weights_points_to_finetune(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "checkpoint.pt").write_bytes(b"")  # what marks a run's folder
    with pytest.raises(CheckpointError, match=r"r is a dalib run: start from it with `dalib run finetune --set init="):
        build_model("resnet18", (3, 32, 32), 10, pretrained=str(tmp_path / "r"))


def test_pretrained_weights_of_other_shapes_are_one_line_and_a_home_path_is_expanded(tmp_path, monkeypatch):
    """A DataParallel-saved 7-class classifier ('module.fc.*': its prefix was removed after the
    classifier was left out) and a grey first convolution reached load_state_dict's RuntimeError."""
    import torchvision

    net = torchvision.models.resnet18(num_classes=7)
    torch.save({"module." + k: v for k, v in net.state_dict().items()}, tmp_path / "dp.pt")
    model = build_model("resnet18", (3, 32, 32), 10, pretrained=str(tmp_path / "dp.pt"))  # fc is never loaded
    assert torch.equal(model.backbone.conv1.weight, net.conv1.weight)
    net.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    torch.save(net.state_dict(), tmp_path / "grey.pt")
    with pytest.raises(CheckpointError, match=r"^pretrained weights ~/grey.pt do not fit this network: 1 tensor\(s\) of "
                                              r"other shapes, e\.g\. conv1\.weight \(64, 1, 7, 7\) there, \(64, 3, 7, 7\) here"):
        build_model("resnet18", (3, 32, 32), 10, pretrained="~/grey.pt")


@pytest.mark.parametrize("shape, arch", [
    ((1, 16, 16), "lenet"), ((1, 64, 64), "lenet"), ((2, 16, 16), "lenet"), ((3, 8, 8), "lenet"),
    ((1, 12, 20), "lenet"), ((3, 64, 64), "resnet50"), ((10,), "mlp"), ((2, 5), "mlp"),
    ((3, 32, 32), "lenet"), ((3, 32, 33), "resnet50"),  # colour images larger than 32 pixels
])
def test_the_default_backbone_takes_the_inputs(shape, arch):
    from dalib.models import build_model
    from dalib.models.damodel import default_arch

    assert default_arch(shape) == arch
    if arch == "lenet":  # grey, two-channel, small and non-square images all go through
        out = build_model(None, shape, 3)(torch.randn(2, *shape))
        assert out.logits.shape == (2, 3)


def test_images_too_small_for_lenet_are_one_clear_error():
    from dalib.models import build_model

    with pytest.raises(ConfigError, match="at least 4x4"):
        build_model(None, (1, 2, 2), 3)


def test_a_model_on_another_device_takes_inputs_from_the_cpu_and_can_be_cut_there():
    # the meta device stands for a GPU: a network trained on the GPU predicts a CPU batch,
    # and cutting stages of a model already on its device keeps the new layer there
    model = build_model("lenet", (1, 16, 16), 10).to("meta")
    out = model(torch.zeros(2, 1, 16, 16, dtype=torch.float64))
    assert out.logits.device.type == "meta" and out.logits.shape == (2, 10)
    model.cut_stages(1)
    assert model.bottleneck[0].weight.device.type == "meta"
    assert model(torch.zeros(2, 1, 16, 16)).features.shape == (2, 256)


def test_a_model_takes_what_training_took_and_names_the_shape_it_needs():
    """Integer images as from_arrays took them, numpy arrays and DataFrames predict; a batch of
    another shape is one line, where it was torch's error from inside the network."""
    import numpy as np
    import pandas as pd

    from dalib.errors import DataError

    images = build_model("lenet", (3, 16, 16), 4).eval()
    pixels = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    assert torch.equal(images(pixels).logits, images(pixels.float()).logits)
    assert images(torch.zeros(2, 3, 28, 28)).logits.shape == (2, 4)  # other sizes a network takes still pass
    for x, why in ((pixels.float().permute(0, 2, 3, 1), r"got \(2, 16, 16, 3\): channels last\? give "
                                                          r"x.permute\(0, 3, 1, 2\)$"),
                   (pixels[0].float(), r"got \(3, 16, 16\): one sample\? give a batch of it, x\[None\]$")):
        with pytest.raises(DataError, match=r"^the model takes inputs of shape \(B, 3, 16, 16\), as it was trained on, "
                                            + why) as info:
            images(x)
        assert isinstance(info.value.__cause__, (RuntimeError, ValueError))  # torch's own words, for a traceback
    with pytest.raises(RuntimeError, match="Output size is too small") as info:  # images of another size: the
        images(torch.zeros(2, 3, 2, 2))                                         # network's own error stands
    assert not isinstance(info.value, DataError)
    table = build_model("mlp", (8,), 3, bottleneck_dim=4).eval()
    x = np.random.default_rng(0).normal(size=(5, 8))
    expected = table(torch.from_numpy(x).float()).logits
    assert torch.equal(table(x).logits, expected) and torch.equal(table(pd.DataFrame(x)).logits, expected)
    with pytest.raises(DataError, match=r"^the model takes inputs of shape \(B, 8\), as it was trained on, got \(5, 5\)$"):
        table(x[:, :5])
    with pytest.raises(DataError, match=r"^the model's input must hold numbers, got dtype <U1$"):
        table(np.full((2, 8), "a"))


def test_a_pretrained_backbone_learns_at_a_tenth_of_the_rate_by_default():
    model = build_model("mlp", (8,), 2, bottleneck_dim=4)
    groups = model.param_groups()
    assert [g["lr_mult"] for g in groups] == [1.0, 1.0]  # trained from scratch: one rate
    n_backbone = len(list(model.backbone.parameters()))
    assert len(groups[0]["params"]) == n_backbone
    model.pretrained = True  # what --pretrained and a torchvision start set
    assert [g["lr_mult"] for g in model.param_groups()] == [0.1, 1.0]
    assert [g["lr_mult"] for g in model.param_groups(backbone_lr_mult=0.5)] == [0.5, 1.0]



def test_cutting_stages_leaves_the_kept_stages_batch_norm_statistics_alone():
    """The probe that measures the cut network's width runs in eval mode: the kept stages'
    running statistics stay the ones trained (they are frozen in eval mode afterwards)."""
    model = build_model("lenet", (1, 16, 16), 10)
    model.train()
    model(torch.randn(32, 1, 16, 16) * 3 + 1)  # statistics away from their start
    before = {k: v.clone() for k, v in model.backbone.state_dict().items() if "running" in k}
    assert before
    model.cut_stages(1)
    after = model.backbone.state_dict()
    for key, value in before.items():
        if key in after:
            assert torch.equal(after[key], value), key
    assert model.training  # and the model goes back to the mode it was in


def test_a_cut_after_a_freeze_or_on_a_float64_model_keeps_them():
    """The cut probes the shortened backbone with the model's own dtype and device, and puts back
    the model's modes as they were: its frozen stages stay in eval mode (in train mode their
    BatchNorm would update its running statistics)."""
    model = build_model("lenet", (1, 16, 16), 10)
    model.freeze_stages(1)
    model.train()
    model.cut_stages(1)
    first = model.stages()[0]
    assert model.training and not any(m.training for m in first.modules())
    assert all(m.training for m in model.bottleneck.modules())
    wide = build_model("lenet", (1, 16, 16), 10).double()
    wide.cut_stages(1)
    assert wide.bottleneck[0].weight.dtype == torch.float64
    feats, logits = wide(torch.zeros(3, 1, 16, 16, dtype=torch.float64))
    assert logits.shape == (3, 10) and logits.dtype == torch.float64
