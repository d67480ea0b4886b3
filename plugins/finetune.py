"""Fine-tuning a pre-trained model: frozen, partly frozen or full, with L2-SP."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from dalib import Batch, Method, Outputs, Progress, param, register_method
from dalib.errors import CheckpointError


def parse_policy(policy: str) -> int | None:
    """Stages to freeze: ``"full"`` -> 0, ``"head"`` -> None (all), ``"partial:K"`` -> K."""
    if policy == "full":
        return 0
    if policy == "head":
        return None
    kind, _, k = policy.partition(":")
    if kind == "partial" and k.isdigit():
        return int(k)
    raise ValueError(f"policy must be 'head', 'partial:K' or 'full', got {policy!r}")


@register_method("finetune")
class FineTune(Method):
    r"""Shared-parameter transfer: fine-tune a pre-trained model on the labelled domain.

    The starting weights come from ``init`` (a checkpoint written by a dalib run, e.g. a
    ``source_only`` model) or from ``--pretrained`` (ImageNet or a checkpoint, ResNets).
    ``policy`` picks what learns: ``head`` freezes the backbone (the bottleneck and the
    classifier learn), ``partial:K`` freezes the first K backbone stages, ``full`` trains
    everything, the backbone at ``backbone_lr_mult`` times the learning rate.
    L2-SP (Li et al., ICML 2018) pulls the backbone towards its starting point
    :math:`w^0` instead of towards zero:

    .. math:: \Omega(w) = \tfrac{\alpha}{2}\lVert w_S - w_S^0\rVert^2
              + \tfrac{\beta}{2}\lVert w_{\bar S}\rVert^2

    (S: the pre-trained backbone, :math:`\bar S`: the new layers; weight decay is then off).
    """

    @dataclass(frozen=True)
    class Config:
        policy: str = param("full", "head | partial:K | full: which backbone stages learn")
        backbone_lr_mult: float = param(0.1, "learning-rate multiplier of the trainable backbone")
        l2sp: float = param(0.0, "L2-SP weight alpha towards the starting weights (0: plain weight decay)")
        l2sp_beta: float = param(0.01, "L2-SP weight beta on the new layers (used when l2sp > 0)")
        init: str | None = param(None, "dalib checkpoint (checkpoint.pt of a run) to start from")

        def __post_init__(self) -> None:
            parse_policy(self.policy)
            if self.init is not None and not str(self.init).strip():
                raise ValueError("init must name a checkpoint file or a run folder, got ''")
            if self.backbone_lr_mult < 0 or self.l2sp < 0 or self.l2sp_beta < 0:
                raise ValueError("backbone_lr_mult, l2sp and l2sp_beta must be >= 0")

    def __init__(self, config: Config, model) -> None:
        super().__init__(config, model)
        if config.init is not None:
            _load_init(model, config.init)
        model.freeze_stages(parse_policy(config.policy))
        if config.l2sp > 0:
            for i, p in enumerate(model.backbone.parameters()):
                self.register_buffer(f"w0_{i}", p.detach().clone())

    def param_groups(self, model) -> list[dict]:
        groups = model.param_groups(backbone_lr_mult=self.config.backbone_lr_mult)
        if self.config.l2sp > 0:  # L2-SP replaces weight decay
            for g in groups:
                g["weight_decay"] = 0.0
        return groups

    def loss(self, batch: Batch, out: Outputs, progress: Progress) -> dict[str, Tensor]:
        cls = self.source_loss(batch, out)
        if self.config.l2sp == 0:
            return {"total": cls, "cls": cls}
        pull = sum(
            ((p - getattr(self, f"w0_{i}")) ** 2).sum()
            for i, p in enumerate(self.model.backbone.parameters())
            if p.requires_grad
        )
        new = sum((p**2).sum() for m in (self.model.bottleneck, self.model.head) for p in m.parameters())
        reg = 0.5 * self.config.l2sp * torch.as_tensor(pull) + 0.5 * self.config.l2sp_beta * new
        return {"total": cls + reg, "cls": cls, "l2sp": reg}


def _load_init(model, path: str) -> None:
    from dalib.runner import load_checkpoint

    p = Path(path)
    if p.is_dir():
        p = p / "checkpoint.pt"
    state = load_checkpoint(p)["model"]
    own = model.state_dict()
    shared = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    backbone = [k for k in own if k.startswith(("backbone.", "bottleneck."))]
    missing = [k for k in backbone if k not in shared]
    if missing:
        raise CheckpointError(
            f"checkpoint {p} does not fit this model ({len(missing)} backbone tensors missing or "
            "of another shape): use the same --arch and dataset"
        )
    model.load_state_dict(shared, strict=False)
