"""Models by name: ``build_model(cfg, spec)``."""

from __future__ import annotations

from typing import Any

from torch import nn

from raydd.data.types import DatasetSpec

MODELS = ("convnet", "resnet18", "vgg11", "alexnet")


def build_model(cfg: dict[str, Any], spec: DatasetSpec) -> nn.Module:
    """Instantiate the configured network for the dataset's channels, classes and image size."""
    name = cfg["name"]
    norm = cfg.get("norm", "instance")
    if name == "convnet":
        from raydd.models.convnet import ConvNet

        return ConvNet(spec.channels, spec.num_classes, spec.image_size, width=cfg.get("width", 128),
                       depth=cfg.get("depth", 3), norm=norm, act=cfg.get("act", "relu"),
                       pooling=cfg.get("pooling", "avg"))
    if name == "resnet18":
        from raydd.models.resnet import ResNet18 as cls
    elif name == "vgg11":
        from raydd.models.vgg import VGG11 as cls
    elif name == "alexnet":
        from raydd.models.alexnet import AlexNet as cls
    else:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return cls(spec.channels, spec.num_classes, spec.image_size, norm=norm)
