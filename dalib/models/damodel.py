"""The model every method trains: backbone -> bottleneck -> classifier head."""

from __future__ import annotations

from typing import Any, NamedTuple

from torch import Tensor, nn

from dalib.errors import ConfigError
from dalib.models.backbones import build_backbone

__all__ = ["DAModel", "ModelOutput", "build_model", "default_arch"]


class ModelOutput(NamedTuple):
    features: Tensor  # (B, bottleneck_dim): what alignment losses act on
    logits: Tensor  # (B, num_classes)


class DAModel(nn.Module):
    """Backbone, bottleneck (Linear + BatchNorm + ReLU + Dropout) and a linear head.

    ``forward(x)`` returns :class:`ModelOutput` ``(features, logits)``; ``features`` are
    the bottleneck's outputs, where DANN's discriminator and MMD/CORAL losses act.
    """

    def __init__(
        self,
        backbone: nn.Module,
        backbone_dim: int,
        num_classes: int,
        bottleneck_dim: int = 256,
        pretrained: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.bottleneck = nn.Sequential(
            nn.Linear(backbone_dim, bottleneck_dim),
            nn.BatchNorm1d(bottleneck_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
        )
        self.head = nn.Linear(bottleneck_dim, num_classes)
        self.features_dim = bottleneck_dim
        self.num_classes = num_classes
        self.pretrained = pretrained
        self.frozen_stages = 0  # set by freeze_stages()

    def forward(self, x: Tensor) -> ModelOutput:
        f = self.bottleneck(self.backbone(x))  # (B, bottleneck_dim)
        return ModelOutput(f, self.head(f))  # logits (B, num_classes)

    def stages(self) -> list[nn.Module]:
        """The backbone's stages, input first (ResNet: stem, layer1..layer4; LeNet: its two
        conv blocks; MLP: its hidden layers; ``identity``: none). ``partial:K`` fine-tuning
        freezes the first K."""
        b = self.backbone
        if next(b.parameters(), None) is None:  # identity: nothing to freeze
            return []
        if hasattr(b, "layer4"):  # torchvision ResNet
            stem = nn.ModuleList([b.conv1, b.bn1])
            return [stem, b.layer1, b.layer2, b.layer3, b.layer4]
        if hasattr(b, "stages"):  # LeNet: conv, bn, relu, pool per block
            layers = list(b.stages)
            return [nn.ModuleList(layers[0:4]), nn.ModuleList(layers[4:8])]
        layers = list(b.children()) if isinstance(b, nn.Sequential) else [b]
        groups, current = [], []
        for layer in layers:
            current.append(layer)
            if isinstance(layer, nn.Linear):
                groups.append(nn.ModuleList(current))
                current = []
        if current and groups:
            groups[-1].extend(current)
        return groups or [b]

    def freeze_stages(self, k: int | None) -> None:
        """Freeze the first ``k`` backbone stages (``None``: the whole backbone): their
        parameters stop learning and their BatchNorm/Dropout layers stay in eval mode."""
        stages = self.stages()
        if k is None:
            k = len(stages)
        if not 0 <= k <= len(stages):
            raise ConfigError(f"the backbone has {len(stages)} stages; cannot freeze {k} (K of partial:K runs from 0 to {len(stages)})")
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


def default_arch(input_shape: tuple[int, ...]) -> str:
    """lenet for small grey images, resnet50 for colour images, mlp for feature vectors."""
    if len(input_shape) == 3:
        return "lenet" if input_shape[0] == 1 and max(input_shape[1:]) <= 32 else "resnet50"
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
    return DAModel(backbone, dim, num_classes, bottleneck_dim, pretrained=pretrained is not None)
