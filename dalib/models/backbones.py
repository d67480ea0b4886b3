"""Feature extractors: a small CNN for digits, an MLP for feature vectors, ResNets for images,
and ``identity`` for pre-extracted features that go straight into the bottleneck; and the
backbones users register (:func:`register_backbone`, or the ``dalib.backbones`` entry points).

Each builder returns ``(module, out_dim)``; the module maps a batch to (B, out_dim) features.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from dalib.data.registry import load_entry_point_group, note_origin, same_definition
from dalib.errors import CheckpointError, ConfigError, RegistryError, UnknownNameError, first_line, load_failure, load_tensors

__all__ = ["BACKBONES", "backbone_plugin_errors", "build_backbone", "describe_backbone", "list_backbones",
           "register_backbone"]

B = TypeVar("B", bound=Callable[..., Any])


class _PoolTo(nn.AdaptiveAvgPool2d):
    """Adaptive average pooling that passes a map already of its output size through: 16x16
    digits reach it at 4x4, where it averaged nothing and its backward pass cost about 5% of
    a training step. The same numbers, and the same module to a checkpoint (no state)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.output_size if isinstance(self.output_size, tuple) else (self.output_size, self.output_size)
        return x if tuple(x.shape[-2:]) == size else super().forward(x)


class LeNet(nn.Module):
    """LeNet-style CNN for grey digits of 16x16 or 28x28 (the DANN/ADDA digits net); its
    adaptive pooling takes any number of channels and any size from 4x4 up."""

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        self.stages = nn.Sequential(
            nn.Conv2d(in_channels, 32, 5, padding=2),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            _PoolTo(4),
            nn.Flatten(),  # (B, 64 * 4 * 4)
        )
        self.out_dim = 64 * 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)


def _lenet(input_shape: tuple[int, ...], pretrained: str | None) -> tuple[nn.Module, int]:
    if len(input_shape) != 3:
        raise ConfigError(f"lenet needs image inputs (C, H, W), got shape {input_shape}")
    if min(input_shape[1:]) < 4:  # two 2x2 poolings
        raise ConfigError(f"lenet needs images of at least 4x4 pixels, got {input_shape[1]}x{input_shape[2]}")
    net = LeNet(input_shape[0])
    return net, net.out_dim


def _flat_dim(input_shape: tuple[int, ...]) -> int:
    n = 1
    for s in input_shape:
        n *= s
    return n


def _mlp(input_shape: tuple[int, ...], pretrained: str | None) -> tuple[nn.Module, int]:
    in_dim = _flat_dim(input_shape)
    hidden = 256
    net = nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_dim, hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(0.2),
        nn.Linear(hidden, hidden),
        nn.ReLU(inplace=True),
    )
    return net, hidden


def _identity(input_shape: tuple[int, ...], pretrained: str | None) -> tuple[nn.Module, int]:
    """No backbone: the (flattened) inputs are the features. With the bottleneck and the head
    this is a network of one hidden layer (the DANN paper's network for the Amazon reviews), and
    the way to train on features extracted beforehand (e.g. by a frozen ResNet)."""
    return nn.Flatten(), _flat_dim(input_shape)


def _hub_weights(url: str) -> dict[str, Any]:
    """The state dict torchvision publishes at ``url``, from torch.hub's cache (downloaded there
    if missing, without a progress bar). Read as tensors only (``weights_only=True``), where
    torchvision's own load unpickles whatever the file holds: the code of anyone who can write to
    a shared cache, run as the user. A cached file must also have the SHA-256 its name starts
    (``resnet18-f37072fd.pth``), which torch.hub checks only as it downloads. Raises ValueError
    for a file that has not."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if cached.is_file():
        _check_hash(cached)
    return torch.hub.load_state_dict_from_url(url, progress=False, check_hash=True, weights_only=True)


def _check_hash(path: Path) -> None:
    """Raises ValueError where ``path``'s SHA-256 does not start with the hexadecimal digits its
    name gives after its last ``-`` (torch.hub's convention; a name without them is not checked)."""
    import hashlib
    import re

    prefix = re.search(r"-([a-f0-9]+)\.", path.name)
    if prefix is None:
        return
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if not digest.hexdigest().startswith(prefix.group(1)):
        raise ValueError(f"its SHA-256 does not start with {prefix.group(1)}, as torchvision's file does")


def _resnet(depth: int) -> Callable[[tuple[int, ...], str | None], tuple[nn.Module, int]]:
    def build(input_shape: tuple[int, ...], pretrained: str | None) -> tuple[nn.Module, int]:
        import torchvision

        if len(input_shape) != 3 or input_shape[0] != 3:
            instead = "lenet" if len(input_shape) == 3 else "mlp or identity"
            raise ConfigError(f"resnet{depth} needs colour images (3, H, W), got inputs of shape {tuple(input_shape)}: "
                              f"use --arch {instead} for these")
        ctor = getattr(torchvision.models, f"resnet{depth}")
        weights = None
        if pretrained == "imagenet":
            # torchvision looks in its cache (TORCH_HOME) first: a user who has the weights
            # gets them; dalib never downloads during tests.
            weights = "IMAGENET1K_V1"
            from dalib.kernels.backends import NO_HOME, no_home

            if torch.hub.get_dir().startswith("~") and no_home():  # (TORCH_HOME, XDG_CACHE_HOME, set_dir() set none)
                # (torch.hub would make a folder named "~" in the working directory)
                raise CheckpointError(f"torchvision keeps the ImageNet weights under the home folder, and this "
                                      f"process has none ({NO_HOME}): set TORCH_HOME to the folder that holds "
                                      "hub/checkpoints, or pass a checkpoint file to --pretrained")
        said = io.StringIO()  # torch.hub's "Downloading: ..." line goes to stdout, a run's results
        try:
            with contextlib.redirect_stdout(said):
                net = ctor(weights=None)
                if weights:  # (torchvision's own load unpickles the file whole: see _hub_weights)
                    url = torchvision.models.get_model_weights(f"resnet{depth}")[weights].url
                    net.load_state_dict(_hub_weights(url))
        # no network (URLError is an OSError); a damaged cached file: torch.load's RuntimeError
        # (a cut zip), ValueError or UnpicklingError (a page saved in its place), EOFError
        except (OSError, RuntimeError, ValueError, pickle.UnpicklingError, EOFError) as exc:
            url = torchvision.models.get_model_weights(f"resnet{depth}")[weights].url if weights else ""
            cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
            advice = (f"the cached file {cached} is damaged: delete it, or put the right file there" if url and cached.is_file()
                      else "put them in torchvision's cache ($TORCH_HOME/hub/checkpoints) or pass a checkpoint file "
                           "to --pretrained")
            raise CheckpointError(f"cannot get the ImageNet weights of resnet{depth} ({first_line(exc)}): {advice}") from None
        sys.stderr.write(said.getvalue())  # a download that worked: said where the file went
        if pretrained not in (None, "imagenet"):
            _load_local_weights(net, pretrained)
        out_dim = net.fc.in_features
        net.fc = nn.Identity()  # (B, out_dim) pooled features
        return net, out_dim

    return build


#: torchvision's ResNets by their residual blocks per stage, and whether those are bottlenecks
_DEPTHS = {((2, 2, 2, 2), False): "resnet18", ((3, 4, 6, 3), False): "resnet34", ((3, 4, 6, 3), True): "resnet50",
           ((3, 4, 23, 3), True): "resnet101", ((3, 8, 36, 3), True): "resnet152"}


def _resnet_name(state: dict[str, Any]) -> str | None:
    """The torchvision ResNet whose tensor names ``state`` has ("resnet34"), or one of other blocks
    per stage ("ResNet of blocks 3, 4, 5, 3"); None for weights that are no ResNet's."""
    names = [str(k) for k in state]
    if "conv1.weight" not in names or not any(k.startswith("layer1.0.") for k in names):
        return None
    blocks = tuple(len({k.split(".")[1] for k in names if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    bottleneck = any(k.startswith("layer1.0.conv3.") for k in names)
    # the first block's widths: a ResNeXt's or Wide ResNet's have the names of a ResNet's
    shape = tuple(getattr(state.get("layer1.0.conv2.weight"), "shape", ())[:2])
    if shape and shape != (64, 64):
        return f"ResNet of other widths (a ResNeXt or a Wide ResNet?) with blocks {', '.join(map(str, blocks))}"
    return _DEPTHS.get((blocks, bottleneck), f"ResNet of blocks {', '.join(map(str, blocks))}")


def _load_local_weights(net: nn.Module, path: str) -> None:
    p = Path(path).expanduser()
    if p.is_dir() and (p / "checkpoint.pt").is_file():
        raise CheckpointError(
            f"{path} is a dalib run: start from it with `dalib run finetune --set init={path}` "
            "(--pretrained takes the weights of a torchvision ResNet, a state dict file)"
        )
    if not p.is_file():
        raise CheckpointError(f"pretrained weights not found: {path}")
    try:
        state = load_tensors(p)
    except Exception as exc:
        raise CheckpointError(f"cannot read pretrained weights {path} ({load_failure(exc)})") from None
    if isinstance(state, dict) and {"model", "step", "config"} <= set(state):
        raise CheckpointError(
            f"{path} is a dalib run's checkpoint: start from it with `dalib run finetune --set init={path}` "
            "(--pretrained takes the weights of a torchvision ResNet, a state dict)"
        )
    for wrapper in ("state_dict", "model"):  # a training script's {"state_dict": ...} or {"model": ..., "epoch": ...}
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise CheckpointError(f"pretrained weights {path} hold no state dict")
    state = {str(k).removeprefix("module."): v for k, v in state.items()}  # (a DataParallel-saved one)
    # a whole model's weights, with the ResNet under a name of its own (Transfer-Learning-Library's
    # `backbone.`, beside its bottleneck and head): the ResNet's are taken
    prefix = next((p for p in sorted({k[: -len("conv1.weight")] for k in state if k.endswith("conv1.weight")}, key=len)
                   if p.endswith(".") and f"{p}bn1.weight" in state and f"{p}layer1.0.conv1.weight" in state), "")
    if prefix and "conv1.weight" not in state:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # the classifier is not loaded
    bad = next((k for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
                and not bool(torch.isfinite(v).all())), None)
    if bad is not None:  # else the first step's loss is NaN, blamed on the learning rate
        raise CheckpointError(f"pretrained weights {path} hold NaN or infinite values (in {prefix}{bad})")
    own = net.state_dict()
    theirs, mine = _resnet_name(state), _resnet_name(own)
    if theirs is not None and theirs != mine:  # (blocks of other shapes, or blocks missing or unexpected)
        advice = f": give --arch {theirs}" if theirs in BACKBONES else " (dalib builds resnet18, resnet34 and resnet50)"
        raise CheckpointError(f"pretrained weights {path} are those of a {theirs}, and this network is a {mine}{advice}")
    wrong = [k for k, v in state.items() if k in own and getattr(v, "shape", None) != own[k].shape]
    if wrong:
        k = wrong[0]
        raise CheckpointError(
            f"pretrained weights {path} do not fit this network: {len(wrong)} tensor(s) of other shapes, e.g. {k} "
            f"{tuple(getattr(state[k], 'shape', ()))} there, {tuple(own[k].shape)} here (another ResNet or input?)")
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        e_g = ", ".join(f"{what} {keys[0]}" for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys)
        raise CheckpointError(
            f"pretrained weights {path} do not fit: {len(missing)} missing, {len(unexpected)} unexpected keys "
            f"(e.g. {e_g}): not the weights of a torchvision ResNet"
        )


BACKBONES: dict[str, Callable[[tuple[int, ...], str | None], tuple[nn.Module, int]]] = {
    "lenet": _lenet,
    "mlp": _mlp,
    "identity": _identity,
    "resnet18": _resnet(18),
    "resnet34": _resnet(34),
    "resnet50": _resnet(50),
}
_BUILT_IN = {
    "lenet": "small CNN for grey or small images (two conv blocks, the DANN digits net)",
    "mlp": "two hidden layers of 256 for feature vectors",
    "identity": "no backbone: the inputs are the features (features extracted beforehand)",
    **{f"resnet{d}": f"torchvision ResNet-{d} for colour images (--pretrained imagenet or a state dict)"
       for d in (18, 34, 50)},
}

#: entry-point group of installed packages that bring backbones: each entry point names a module
#: whose import registers them (:func:`register_backbone`)
BACKBONE_ENTRY_POINT_GROUP = "dalib.backbones"
_entry_points_loaded = False
_broken: dict[str, str] = {}


def register_backbone(name: str) -> Callable[[B], B]:
    """Decorator that registers a backbone builder under ``name``: ``--arch NAME`` at the
    command line, ``RunConfig(arch=NAME)`` in Python.

    The builder is called as ``builder(input_shape, pretrained)``: ``input_shape`` is one
    sample's shape, ``(C, H, W)`` for images or ``(D,)`` for feature vectors; ``pretrained`` is
    the run's ``--pretrained`` value (None when none is given), the builder's to read (load
    weights it names, say). It returns the module, which maps a batch ``(B, *input_shape)`` to
    features ``(B, D)``, or ``(module, D)``. dalib checks the module with one forward pass of a
    batch of zeros when it builds it. A run given ``--pretrained`` treats the backbone as
    pre-trained: it learns at 0.1x the learning rate, and ``finetune`` starts from it.

    ``finetune``'s ``partial:K`` and ``cut:K`` policies act on the backbone's stages: the
    modules a ``stages()`` method of the backbone returns (input first, each a sub-module of
    it or a list of them); else a torchvision ResNet's (its stem and ``layer1``..``layer4``); else, for an
    ``nn.Sequential``, its ``Linear`` layers, each with the layers after it (as the built-in
    ``mlp``); else the whole backbone, as one stage.

    A name that is already taken raises :class:`~dalib.errors.RegistryError`, unless the same
    builder is registered again (the same module and qualified name: a notebook cell run
    twice), which replaces it; the built-in names cannot be taken.
    """
    from dalib.registry import check_name

    check_name(name, "backbone")

    def decorate(builder: B) -> B:
        if not callable(builder):
            raise RegistryError(f"backbone {name!r}: register_backbone decorates a function "
                                f"builder(input_shape, pretrained), got {type(builder).__name__}")
        existing = BACKBONES.get(name)
        if name in _BUILT_IN:
            raise RegistryError(f"backbone {name!r} is built into dalib: register yours under another name")
        if existing is not None and not same_definition(existing, builder):
            raise RegistryError(f"backbone {name!r} is already registered (by {getattr(existing, '__module__', '?')}."
                                f"{getattr(existing, '__qualname__', type(existing).__name__)})")
        BACKBONES[name] = builder
        note_origin(BACKBONES, name)
        return builder

    return decorate


def _load_entry_points() -> None:
    """Import every ``dalib.backbones`` entry point once, in name order, each in isolation: one
    that fails registers nothing and is recorded (:func:`backbone_plugin_errors`, ``dalib
    list``), never fatal."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True  # first: a plugin that builds a backbone while it loads does not recurse
    load_entry_point_group(BACKBONE_ENTRY_POINT_GROUP, BACKBONES, _broken)


def backbone_plugin_errors() -> dict[str, str]:
    """``dalib.backbones`` entry points that failed to load: name -> one-line reason."""
    _load_entry_points()
    return dict(_broken)


def list_backbones() -> list[str]:
    """The backbone names ``arch`` takes: the built-in ones, then the registered ones."""
    _load_entry_points()
    return list(BACKBONES)


def describe_backbone(name: str) -> str:
    """One line on a backbone: the built-ins' own, a registered builder's docstring's first."""
    if name in _BUILT_IN:
        return _BUILT_IN[name]
    doc = (getattr(BACKBONES.get(name), "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


def registered_builder(arch: str | None) -> Callable[..., Any] | None:
    """The builder registered under ``arch``; None for a built-in backbone or an unknown name."""
    return None if arch is None or arch in _BUILT_IN else BACKBONES.get(arch)


def build_backbone(arch: str, input_shape: tuple[int, ...], pretrained: str | None = None) -> tuple[nn.Module, int]:
    """Build the backbone ``arch`` for inputs of ``input_shape`` (without the batch dim).

    ``pretrained``: None (random init), ``"imagenet"`` (torchvision weights, ResNets only)
    or the path of a local checkpoint holding a state dict; a registered backbone's builder
    is given it as it is.
    """
    if arch not in BACKBONES:
        _load_entry_points()
    if arch not in BACKBONES:
        raise UnknownNameError(f"unknown architecture {arch!r}; known: {', '.join(BACKBONES)} (a backbone of your "
                               "own: register it with dalib.models.register_backbone, and pass --plugin MODULE)")
    if pretrained is not None and arch in _BUILT_IN and not arch.startswith("resnet"):
        raise ConfigError(f"--pretrained applies to the resnet backbones and to registered ones, not {arch!r}")
    if arch in _BUILT_IN:
        return BACKBONES[arch](tuple(input_shape), pretrained)
    return _registered(arch, tuple(input_shape), pretrained)


def probe(net: nn.Module, input_shape: tuple[int, ...], *, like: torch.Tensor | None = None,
          owner: nn.Module | None = None) -> Any:
    """``net``'s output for a batch of two zero inputs of ``input_shape`` (of ``like``'s dtype and
    device, when given), in eval mode and without gradients: batch norm does not count it, and
    dropout draws nothing for it. ``owner`` (default ``net``), whose mode is put back after,
    is the model that keeps some of its parts in eval mode (frozen stages)."""
    owner = net if owner is None else owner
    was = owner.training
    net.eval()
    try:
        with torch.no_grad():
            kind = {} if like is None else {"dtype": like.dtype, "device": like.device}
            return net(torch.zeros(2, *input_shape, **kind))
    finally:
        owner.train(was)


def _registered(arch: str, input_shape: tuple[int, ...], pretrained: str | None) -> tuple[nn.Module, int]:
    """A registered builder's backbone and width, checked by one forward pass of zeros."""
    built = BACKBONES[arch](input_shape, pretrained)
    net, dim = built if isinstance(built, tuple) and len(built) == 2 else (built, None)
    if not isinstance(net, nn.Module) or not (dim is None or isinstance(dim, int) and not isinstance(dim, bool)):
        raise ConfigError(f"backbone {arch!r}: its builder must return an nn.Module or (module, width), "
                          f"got {type(built).__name__}")
    try:
        out = probe(net, input_shape)
    except Exception as exc:  # the user's network, on the run's inputs
        raise ConfigError(f"backbone {arch!r} cannot take inputs of shape {input_shape}: {first_line(exc)}") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 2:
        got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        raise ConfigError(f"backbone {arch!r} gives {got} for a batch of 2 inputs: a backbone gives one feature "
                          "vector per input, (B, D) (end it with nn.Flatten())")
    if dim is not None and out.shape[1] != dim:
        raise ConfigError(f"backbone {arch!r}: its builder says {dim} features, its module gives {out.shape[1]}")
    return net, int(out.shape[1])
