"""Fine-tuning a pre-trained model: frozen, partly frozen or full, with L2-SP."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from dalib import Batch, Method, Outputs, Progress, param, register_method
from dalib.errors import CheckpointError, warn_outside_dalib


def parse_policy(policy: str) -> tuple[int, int | None]:
    """``(stages to cut off the end, stages to freeze)``: ``"full"`` -> (0, 0), ``"head"`` ->
    (0, None: all), ``"partial:K"`` -> (0, K), ``"cut:K"`` -> (K, None: all that remain)."""
    if policy == "full":
        return 0, 0
    if policy == "head":
        return 0, None
    kind, _, k = policy.partition(":")
    if kind == "partial" and k.isdigit():
        return 0, int(k)
    if kind == "cut" and k.isdigit() and int(k) >= 1:
        return int(k), None
    raise ValueError(f"policy must be 'head', 'partial:K', 'cut:K' (K >= 1) or 'full', got {policy!r}")


@register_method("finetune")
class FineTune(Method):
    r"""Shared-parameter transfer: fine-tune a pre-trained model on the labelled domain.

    The starting weights come from ``init`` (a checkpoint written by a dalib run, e.g. a
    ``source_only`` model) or from ``--pretrained`` (ImageNet or a checkpoint, ResNets).
    ``policy`` picks what learns: ``head`` freezes the backbone (the bottleneck and the
    classifier learn), ``partial:K`` freezes the first K backbone stages, ``cut:K`` cuts the
    last K stages off and freezes the rest (a new bottleneck and the classifier learn on an
    earlier stage's features), ``full`` trains everything, the backbone at
    ``backbone_lr_mult`` times the learning rate.
    L2-SP (Li et al., ICML 2018) pulls the weights towards their starting point
    :math:`w^0` instead of towards zero:

    .. math:: \Omega(w) = \tfrac{\alpha}{2}\lVert w_S - w_S^0\rVert^2
              + \tfrac{\beta}{2}\lVert w_{\bar S}\rVert^2

    (S: every weight the starting point gave, the bottleneck and head included when ``init``
    has them for the same classes; :math:`\bar S`: the layers it did not give, such as a new
    head; weight decay is then off). It trains on the source alone (``uses_target = False``):
    the target batch is not forwarded.
    """

    uses_target = False

    @dataclass(frozen=True)
    class Config:
        policy: str = param("full", "head | partial:K | cut:K | full: which backbone stages learn (cut:K drops the last K)")
        backbone_lr_mult: float = param(0.1, "learning-rate multiplier of the trainable backbone")
        l2sp: float = param(0.0, "L2-SP weight alpha towards the starting weights (0: plain weight decay)")
        l2sp_beta: float = param(0.01, "L2-SP weight beta on the layers the start did not give (used when l2sp > 0)")
        init: str | None = param(None, "dalib checkpoint (checkpoint.pt of a run) to start from")

        def __post_init__(self) -> None:
            parse_policy(self.policy)
            if self.init is not None and not str(self.init).strip():
                raise ValueError("init must name a checkpoint file or a run folder, got ''")
            if self.backbone_lr_mult < 0 or self.l2sp < 0 or self.l2sp_beta < 0:
                raise ValueError("backbone_lr_mult, l2sp and l2sp_beta must be >= 0")

    def __init__(self, config: Config, model) -> None:
        super().__init__(config, model)
        cut, freeze = parse_policy(config.policy)
        if cut:
            model.cut_stages(cut)
        model.freeze_stages(freeze)
        #: L2-SP's starting weights w⁰, by parameter name: set in prepare (a fresh run) or
        #: restored from the checkpoint (a resumed one, which then needs no ``init`` file)
        self.anchors: dict[str, Tensor] = {}

    def prepare(self, context) -> None:
        model = context.model
        if self.config.init is not None:
            given = _load_init(model, self.config.init, context.classes)
        elif getattr(model, "pretrained", False):
            given = {f"backbone.{name}" for name, _ in model.backbone.named_parameters()}
        else:
            given = set()
            unlike = (["frozen layers"] if self.config.policy != "full" else []) + (
                [f"the backbone at {self.config.backbone_lr_mult:g}x the learning rate"]
                if self.config.backbone_lr_mult != 1 else [])
            warn_outside_dalib(f"{self.name} has no starting point (no init, no --pretrained): it trains from random "
                               f"weights, which is source_only{' with ' + ' and '.join(unlike) if unlike else ''}",
                               RuntimeWarning)
        self.diagnostics = {"started_from": self.config.init or ("pretrained" if given else "random"),
                            "tensors_given": len(given)}
        if self.config.l2sp > 0:
            self.anchors = {n: p.detach().clone() for n, p in model.named_parameters() if n in given}

    def get_extra_state(self) -> dict:
        return {"anchors": self.anchors}

    def set_extra_state(self, state: dict) -> None:
        device = next(self.model.parameters()).device
        self.anchors = {n: t.to(device) for n, t in state["anchors"].items()}

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
        pull = cls.new_zeros(())
        new = cls.new_zeros(())
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            w0 = self.anchors.get(name)
            if w0 is None:
                new = new + (p**2).sum()
            else:
                pull = pull + ((p - w0) ** 2).sum()
        reg = 0.5 * self.config.l2sp * pull + 0.5 * self.config.l2sp_beta * new
        return {"total": cls + reg, "cls": cls, "l2sp": reg}


def _misfit(model, spec: dict, new_bottleneck: bool, other_network: bool) -> str:
    """Why a dalib checkpoint's weights do not fit ``model``, from what its ``model_spec`` says;
    ``other_network``: its backbone has layers the model's lacks, or lacks some of the model's
    that a cut does not explain (another network, which other inputs would not explain)."""
    causes = []
    their_cut = int(spec.get("cut") or 0)
    if other_network and spec.get("arch"):
        causes.append(f"it was a {spec['arch']} network, and this model's backbone has other layers: "
                      f"give --arch {spec['arch']}")
    if their_cut > model.cut:
        causes.append(f"its network was cut (policy cut:{their_cut}) and has no weights for the stages after the cut: "
                      f"start with policy=cut:{their_cut} or a larger K, or from the checkpoint it was cut from")
    dim = spec.get("bottleneck_dim")
    if not new_bottleneck and dim is not None and int(dim) != model.features_dim:
        causes.append(f"its bottleneck is {dim} wide and this model's {model.features_dim}: pass --bottleneck-dim {dim}")
    shape = spec.get("input_shape")
    if shape is not None and model.input_shape is not None and tuple(shape) != tuple(model.input_shape):
        causes.append(f"it took inputs of shape {tuple(shape)} and this data's are {tuple(model.input_shape)}")
    return "; ".join(causes) or f"it was a {spec.get('arch', 'another')} network: use the same --arch and dataset"


def _layers(names: set[str]) -> set[str]:
    """The names of the backbone's tensors among ``names``."""
    return {k for k in names if k.startswith("backbone.")}


def _other_network(model, spec: dict, theirs: set[str], ours: set[str]) -> bool:
    """Whether a checkpoint whose backbone has the tensors ``theirs`` is of another network than
    ``model`` (``ours``; of the stages both keep): a layer the model lacks, or, where it was cut
    no further than the model (so it has every stage the model has), one it lacks."""
    return bool(theirs - ours) or (int(spec.get("cut") or 0) <= model.cut and theirs != ours)


def _load_init(model, path: str, classes: list[str] | None) -> set[str]:
    """Copy a dalib checkpoint's weights into ``model``; return the names of the tensors
    copied. The backbone must match exactly, except for the stages ``model`` cut off; the
    bottleneck only when the checkpoint's network was cut as this one (else it took other
    features), the head only with the bottleneck and for the same classes."""
    from dalib.runner import load_checkpoint, run_checkpoint

    p = run_checkpoint(path)
    ckpt = load_checkpoint(p)
    state, spec = ckpt["model"], ckpt.get("model_spec") or {}
    own = model.state_dict()

    def fits(k: str) -> bool:
        return k in state and state[k].shape == own[k].shape

    ours = {k for k in own if k.startswith("backbone.")}
    theirs = {k for k in state if k.startswith("backbone.") and not k.startswith(tuple(model.cut_prefixes))}
    bottleneck = [k for k in own if k.startswith("bottleneck.")]
    # after a cut the bottleneck takes an earlier stage's features: a new layer, whatever its shape
    new_bottleneck = model.cut != int(spec.get("cut") or 0)
    if not new_bottleneck:
        ours |= set(bottleneck)
        theirs |= {k for k in state if k.startswith("bottleneck.")}
    unfit = sorted(k for k in ours if not fits(k))
    if unfit or theirs - ours:
        raise CheckpointError(
            f"checkpoint {p} does not fit this model ({len(unfit)} tensors missing or of another shape, "
            f"{len(theirs - ours)} it has and this model lacks): "
            f"{_misfit(model, spec, new_bottleneck, _other_network(model, spec, _layers(theirs), _layers(ours)))}"
        )
    head = [k for k in own if k.startswith("head.")]
    same_head = not new_bottleneck and all(fits(k) for k in head)
    their_classes = spec.get("classes")
    rows = None  # the checkpoint's head rows in this data's class order
    if same_head and classes is not None and their_classes is not None and list(their_classes) != list(classes):
        theirs_named, ours_named = [str(c) for c in their_classes], [str(c) for c in classes]
        if sorted(theirs_named) == sorted(ours_named) and len(set(ours_named)) == len(ours_named):
            rows = [theirs_named.index(c) for c in ours_named]  # the same classes in another order
        else:
            same_head = False
            warn_outside_dalib(f"the starting model's classes ({', '.join(theirs_named)}) are not this data's "
                               f"({', '.join(ours_named)}): its classifier is not reused", RuntimeWarning)
    # (the head is one Linear layer: each of its tensors has a row per class)
    copied = {k: state[k] for k in ours} | ({k: state[k] if rows is None else state[k][rows] for k in head}
                                            if same_head else {})
    model.load_state_dict(copied, strict=False)
    return set(copied)
