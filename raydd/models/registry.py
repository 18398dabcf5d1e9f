"""Models by name: ``build_model(cfg, spec)``."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from raydd.core.images import DatasetSpec
from raydd.specs import ModelSpec

MODELS = ("convnet", "resnet18", "vgg11", "alexnet")


def build_model(model: ModelSpec | dict[str, Any], spec: DatasetSpec) -> nn.Module:
    """Instantiate the configured network for the dataset's channels, classes and image size
    (``model``: a ``model`` config group as it crosses into Ray, or its spec)."""
    m = model if isinstance(model, ModelSpec) else ModelSpec.from_config(model)
    name, norm = m.name, m.norm
    if name == "convnet":
        from raydd.models.convnet import ConvNet

        shape = {k: v for k, v in dataclasses.asdict(m).items() if k in ("width", "depth", "act", "pooling") and v is not None}
        return ConvNet(spec.channels, spec.num_classes, spec.image_size, norm=norm, **shape)  # a ConvNet-3/128 unless told
    if name == "resnet18":
        from raydd.models.resnet import ResNet18 as cls
    elif name == "vgg11":
        from raydd.models.vgg import VGG11 as cls
    elif name == "alexnet":
        from raydd.models.alexnet import AlexNet as cls
    else:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    shape = {} if m.width is None else {"width": m.width}  # the published width unless told (raydd.specs checks it)
    return cls(spec.channels, spec.num_classes, spec.image_size, norm=norm, **shape)
