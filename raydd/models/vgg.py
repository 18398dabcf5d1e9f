"""VGG-11 with a norm after every conv, adapted to small images."""

from __future__ import annotations

from torch import Tensor, nn

from raydd.models.convnet import norm_layer

VGG11_CONFIG: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG11(nn.Module):
    """conv3×3 → norm → ReLU stacks with 2×2 max-pools (skipped once the map is 1×1), then a linear classifier."""

    def __init__(self, channels: int, num_classes: int, image_size: int, norm: str = "instance") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        size, in_ch = image_size, channels
        for item in VGG11_CONFIG:
            if item == "M":
                if size >= 2:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
            else:
                layers += [nn.Conv2d(in_ch, item, 3, padding=1), norm_layer(norm, item), nn.ReLU()]
                in_ch = item
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_ch * size * size, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))
