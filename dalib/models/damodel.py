"""The model every method trains: backbone -> bottleneck -> classifier head."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from dalib._arrays import number_tensor
from dalib.errors import ConfigError, DataError, first_line
from dalib.models.backbones import LeNet, build_backbone, probe

__all__ = ["DAModel", "ModelOutput", "build_model", "default_arch"]


class ModelOutput(NamedTuple):
    features: Tensor  # (B, bottleneck_dim): what alignment losses act on
    logits: Tensor  # (B, num_classes)


class DAModel(nn.Module):
    """Backbone, bottleneck (Linear + BatchNorm + ReLU) and a linear head behind Dropout(0.5).

    ``forward(x)`` returns :class:`ModelOutput` ``(features, logits)``; ``features`` are
    the bottleneck's outputs, where DANN's discriminator and the MMD, CORAL and OT losses
    act. Dropout sits on the head's input only: the alignment losses see the features the
    classifier reads at test time, not a randomly masked copy of them.
    """

    #: on the network that :func:`dalib.run` and :func:`dalib.load_model` give back: the logits'
    #: class names, what rebuilds it (:func:`dalib.runner.model_spec`), the step it was saved at
    classes: list[str]
    spec: dict[str, Any]
    step: int

    def __init__(
        self,
        backbone: nn.Module,
        backbone_dim: int,
        num_classes: int,
        bottleneck_dim: int = 256,
        pretrained: bool = False,
        input_shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.bottleneck = nn.Sequential(
            nn.Linear(backbone_dim, bottleneck_dim),
            nn.BatchNorm1d(bottleneck_dim),
            nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout(0.5)
        self.head = nn.Linear(bottleneck_dim, num_classes)
        self.features_dim = bottleneck_dim
        self.num_classes = num_classes
        self.pretrained = pretrained
        self.input_shape = None if input_shape is None else tuple(input_shape)
        self.frozen_stages = 0  # set by freeze_stages()
        self.cut = 0  # backbone stages cut off the end, by cut_stages()
        self.cut_prefixes: list[str] = []  # the state-dict prefixes the cut removed
        self._unstaged: list[str] = []  # a ResNet subclass's parameters and batch norms outside its stages
        self._stages = self._find_stages()

    def forward(self, x: Tensor) -> ModelOutput:
        """``x`` (B, ...) of the training inputs' shape: a tensor, or a numpy array or DataFrame.
        Inputs of another precision (a float64 array from numpy, uint8 images as
        :meth:`~dalib.data.Domain.from_arrays` took them) are cast to the weights' dtype, as
        training cast them, and inputs on another device (a CPU batch for a network trained on
        the GPU) moved to the weights' device. Inputs of another shape that the network cannot
        take are one line (:class:`~dalib.errors.DataError`) naming the shape it was trained on."""
        weight = self.head.weight
        if not isinstance(x, Tensor):
            x = number_tensor(x, "the model's input", DataError)
        if x.device != weight.device:
            x = x.to(weight.device)
        if x.dtype != weight.dtype:
            x = x.to(weight.dtype)
        try:
            h = self.backbone(x)
            if not isinstance(h, Tensor):  # checked in eval mode when built; some networks return more in training
                raise ConfigError(f"the backbone gave a {type(h).__name__} in training mode, not a (B, D) tensor "
                                  "(torchvision's googlenet and inception_v3: build them with aux_logits=False)")
            # flattened: a backbone cut short (cut:K) may end on feature maps
            f = self.bottleneck(h.flatten(1))  # (B, bottleneck_dim)
            return ModelOutput(f, self.head(self.dropout(f)))  # logits (B, num_classes)
        except (RuntimeError, IndexError, ValueError) as exc:
            wrong = _wrong_shape(tuple(x.shape), self.input_shape)
            if isinstance(exc, DataError) or wrong is None:
                raise
            raise DataError(wrong) from exc

    def stages(self) -> list[nn.Module]:
        """The backbone's stages, input first (ResNet: stem, layer1..layer4; LeNet: its two
        conv blocks; MLP: its hidden layers, each a Linear with the activation after it, and
        dropout after the first; ``identity``: none; a registered backbone: what its
        ``stages()`` method returns, else itself), without those :meth:`cut_stages` removed. ``partial:K``
        fine-tuning freezes the first K; ``cut:K`` removes the last K."""
        return list(self._stages)

    def _find_stages(self) -> list[nn.Module]:
        b = self.backbone
        if next(b.parameters(), None) is None:  # identity: nothing to freeze
            return []
        if callable(getattr(b, "stages", None)) and not isinstance(b.stages, nn.Module):  # a registered backbone's
            inside = {id(m) for m in b.modules() if m is not b}
            stages = [nn.ModuleList(m) if isinstance(m, (list, tuple)) else m for m in b.stages()]
            parts = [p for m in stages for p in (m if isinstance(m, nn.ModuleList) else [m])]
            if not stages or not all(isinstance(p, nn.Module) and id(p) in inside for p in parts):
                raise ConfigError("the backbone's stages() must return its stages, input first, each a sub-module of "
                                  f"it or a list of them; got {[type(m).__name__ for m in stages]}")
            left = _outside(b, stages)
            if left:  # head and partial:K would train them while the user believes them frozen
                raise ConfigError(f"the backbone's stages() leave out {_listed(left)}: every parameter and every "
                                  "batch-norm layer belongs to a stage")
            return stages
        if all(hasattr(b, a) for a in ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")):  # a torchvision ResNet
            stem = nn.ModuleList([b.conv1, b.bn1])
            fc = getattr(b, "fc", None)  # a user's ResNet may keep a layer there: it goes with layer4
            last = nn.ModuleList([b.layer4, fc]) if isinstance(fc, nn.Module) and next(fc.parameters(), None) is not None \
                else b.layer4
            stages = [stem, b.layer1, b.layer2, b.layer3, last]
            # a subclass's layers of its own (an embedding after layer4) are in none of them, and where
            # they sit is its forward's secret: freezing stages refuses (freeze_stages); a cut freezes
            # nothing, and one the forward cannot run without is refused by its probe
            self._unstaged = _outside(b, stages)
            return stages
        if isinstance(b, LeNet):  # conv, bn, relu, pool per block
            layers = list(b.stages)
            return [nn.ModuleList(layers[0:4]), nn.ModuleList(layers[4:8])]
        layers = list(b.children()) if isinstance(b, nn.Sequential) else [b]
        groups: list[list[nn.Module]] = []
        lead: list[nn.Module] = []  # layers before the first Linear (a Flatten) join the first stage
        for layer in layers:
            if isinstance(layer, nn.Linear):
                groups.append(lead + [layer])
                lead = []
            elif groups:
                groups[-1].append(layer)
            else:
                lead.append(layer)
        return [nn.ModuleList(g) for g in groups] or [b]

    def cut_stages(self, k: int) -> None:
        """Cut the last ``k`` backbone stages off: the backbone ends at stage ``n - k`` (a
        ResNet still pools its output), and the bottleneck's first layer is rebuilt for the
        narrower features, so it starts from new random weights."""
        stages = self._stages
        if self.cut:
            raise ConfigError("this model's stages were already cut")
        if len(stages) < 2:
            raise ConfigError(f"the backbone has {len(stages)} stage{'s' * (len(stages) != 1)}: nothing to cut "
                              "(a cut keeps at least one stage)")
        if not 1 <= k < len(stages):
            raise ConfigError(f"the backbone has {len(stages)} stages; cannot cut {k} "
                              f"(K of cut:K runs from 1 to {len(stages) - 1})")
        if self.input_shape is None:
            raise ConfigError("cutting stages needs the model's input shape (build it with build_model)")
        where = {id(m): (parent, name) for parent in self.backbone.modules() for name, m in parent.named_children()}
        names = {id(m): name for name, m in self.named_modules()}
        removed = [(*where[id(m)], m) for stage in stages[len(stages) - k:]
                   for m in (stage if isinstance(stage, nn.ModuleList) else [stage])]
        for parent, name, _ in removed:
            setattr(parent, name, nn.Identity())
        old = self.bottleneck[0]
        try:
            dim = probe(self.backbone, self.input_shape, like=old.weight, owner=self).flatten(1).shape[1]
        except Exception as exc:  # a registered backbone whose forward needs the stages cut off
            for parent, name, m in removed:  # the model as it was: a caller that goes on with it has it whole
                setattr(parent, name, m)
            raise ConfigError(f"the backbone cannot run with its last {k} stage{'s' * (k != 1)} cut off "
                              f"({first_line(exc)}): choose another policy") from None
        self.cut_prefixes += [names[id(m)] + "." for _, _, m in removed]
        self._stages = stages[: len(stages) - k]
        self.cut = k
        self.bottleneck[0] = nn.Linear(dim, old.out_features, dtype=old.weight.dtype, device=old.weight.device)

    def freeze_stages(self, k: int | None) -> None:
        """Freeze the first ``k`` backbone stages (``None``: the whole backbone): their
        parameters stop learning and their BatchNorm/Dropout layers stay in eval mode."""
        stages = self.stages()
        if k is None:
            k = len(stages)
        if not 0 <= k <= len(stages):
            raise ConfigError(f"the backbone has {len(stages)} stages; cannot freeze {k} (K of partial:K runs from 0 to {len(stages)})")
        if k and self._unstaged:
            raise ConfigError(f"cannot freeze the stages of this ResNet: {_listed(self._unstaged)} are outside "
                              "conv1, bn1, layer1..layer4 and fc, so no stage holds them; give the backbone a "
                              "stages() method that returns its stages, input first, every layer in one")
        self.frozen_stages = k
        for stage in stages[:k]:
            for p in stage.parameters():
                p.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> DAModel:
        super().train(mode)
        for stage in self.stages()[: getattr(self, "frozen_stages", 0)]:
            stage.eval()
        return self

    def param_groups(self, backbone_lr_mult: float | None = None) -> list[dict[str, Any]]:
        """Optimizer groups: a pre-trained backbone learns at 0.1x (the usual DA setting)."""
        if backbone_lr_mult is None:
            backbone_lr_mult = 0.1 if self.pretrained else 1.0
        return [
            {"params": list(self.backbone.parameters()), "lr_mult": backbone_lr_mult},
            {"params": list(self.bottleneck.parameters()) + list(self.head.parameters()), "lr_mult": 1.0},
        ]


def _wrong_shape(shape: tuple[int, ...], trained: tuple[int, ...] | None) -> str | None:
    """Why inputs of ``shape`` do not fit a model trained on samples of shape ``trained``: another
    number of axes, features or channels. None when they are a batch of those, images of other
    sizes among them (a network that takes those may have failed for another reason: its own
    error stands), or when the training shape is unknown."""
    if trained is None or len(shape) == len(trained) + 1 and shape[1] == trained[0]:
        return None
    expected = f"(B, {', '.join(map(str, trained))})"
    hint = ""
    if shape == trained:
        hint = ": one sample? give a batch of it, x[None]"
    elif len(shape) == 4 and len(trained) == 3 and shape[1:] == (*trained[1:], trained[0]):
        hint = ": channels last? give x.permute(0, 3, 1, 2)"
    return f"the model takes inputs of shape {expected}, as it was trained on, got {shape}{hint}"


def _outside(backbone: nn.Module, stages: list[nn.Module]) -> list[str]:
    """What of ``backbone`` no stage holds and freezing would have to: its parameters, and the
    running statistics of a batch norm without any (affine=False), which training would move."""
    held = {id(t) for m in stages for t in m.parameters()}
    inside = {id(x) for m in stages for x in m.modules()}
    left = [n for n, t in backbone.named_parameters() if id(t) not in held]
    left += [f"{n}'s running statistics" for n, m in backbone.named_modules()
             if id(m) not in inside and getattr(m, "track_running_stats", False)
             and isinstance(getattr(m, "running_mean", None), Tensor) and next(m.parameters(), None) is None]
    return left


def _listed(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def default_arch(input_shape: tuple[int, ...]) -> str:
    """resnet50 for colour images larger than 32 pixels, lenet for the other images (small
    ones, and grey or multi-channel ones, which an ImageNet ResNet cannot take), mlp for
    feature vectors."""
    if len(input_shape) == 3:
        return "resnet50" if input_shape[0] == 3 and max(input_shape[1:]) > 32 else "lenet"
    return "mlp"


def build_model(
    arch: str | None,
    input_shape: tuple[int, ...],
    num_classes: int,
    bottleneck_dim: int = 256,
    pretrained: str | None = None,
) -> DAModel:
    """Build a :class:`DAModel`; ``arch=None`` picks :func:`default_arch`."""
    arch = arch or default_arch(input_shape)
    backbone, dim = build_backbone(arch, input_shape, pretrained)
    return DAModel(backbone, dim, num_classes, bottleneck_dim, pretrained=pretrained is not None,
                   input_shape=tuple(input_shape))
