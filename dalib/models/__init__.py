"""Models: a backbone, a bottleneck and a classifier head, with named outputs."""

from dalib.models.backbones import BACKBONES, build_backbone, list_backbones, register_backbone
from dalib.models.damodel import DAModel, ModelOutput, build_model, default_arch

__all__ = ["BACKBONES", "DAModel", "ModelOutput", "build_backbone", "build_model", "default_arch", "list_backbones",
           "register_backbone"]
