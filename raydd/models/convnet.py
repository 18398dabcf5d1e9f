"""ConvNet-D{3,4,5}: the standard backbone of dataset distillation."""

from __future__ import annotations

from torch import Tensor, nn

from raydd.models.conv import Conv2d
from raydd.models.norm import InstanceNorm
from raydd.models.pool import AvgPool2x2
from raydd.models.relu import ReLU


def norm_layer(norm: str, channels: int) -> nn.Module:
    """'instance' is GroupNorm with one group per channel (affine), as the MTT code uses (with a closed-form
    second derivative: :class:`raydd.models.norm.InstanceNorm`)."""
    if norm == "instance":
        return InstanceNorm(channels)
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {norm!r}; choose instance, batch or none")


class ConvNet(nn.Module):
    """``depth`` × [conv3×3(width) → norm → act → pool2], then a linear classifier.

    Pooling stops once the feature map is 1×1, so any input size works.
    """

    def __init__(self, channels: int, num_classes: int, image_size: int, width: int = 128, depth: int = 3,
                 norm: str = "instance", act: str = "relu", pooling: str = "avg") -> None:
        super().__init__()
        acts = {"relu": ReLU, "leakyrelu": lambda: nn.LeakyReLU(0.01), "sigmoid": nn.Sigmoid}
        pools = {"avg": AvgPool2x2, "max": lambda: nn.MaxPool2d(2), "none": nn.Identity}
        if act not in acts:
            raise ValueError(f"unknown activation {act!r}; choose {', '.join(acts)}")
        if pooling not in pools:
            raise ValueError(f"unknown pooling {pooling!r}; choose {', '.join(pools)}")
        layers: list[nn.Module] = []
        size, in_ch = image_size, channels
        for _ in range(depth):
            layers += [Conv2d(in_ch, width, 3, padding=1), norm_layer(norm, width), acts[act]()]
            if pooling != "none" and size >= 2:
                layers.append(pools[pooling]())
                size //= 2
            in_ch = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * size * size, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))
