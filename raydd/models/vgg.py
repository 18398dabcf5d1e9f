"""VGG-11 with a norm after every conv, adapted to small images."""

from __future__ import annotations

from torch import Tensor, nn

from raydd.models.convnet import norm_layer

VGG11_CONFIG: tuple[int | str, ...] = (1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M")  # conv widths in units of ``width``


class VGG11(nn.Module):
    """conv3×3 → norm → ReLU stacks with 2×2 max-pools (skipped once the map is 1×1), then a linear classifier;
    ``width`` × (1, 2, 4, 4, 8, 8, 8, 8) channels (64: the published VGG-11)."""

    def __init__(self, channels: int, num_classes: int, image_size: int, norm: str = "instance",
                 width: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        # As the DatasetCondensation code: the first conv of a grayscale (28 px) image pads by 3, so its maps are
        # 32 px and the last two convs see 2×2 (instance norm of a 1×1 map is zero: the net would output a constant).
        pad = 3 if channels == 1 else 1
        size, in_ch = image_size + 2 * (pad - 1), channels
        for item in VGG11_CONFIG:
            if item == "M":
                if size >= 2:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
            else:
                out = int(item) * width
                layers += [nn.Conv2d(in_ch, out, 3, padding=pad), norm_layer(norm, out), nn.ReLU()]
                in_ch, pad = out, 1
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_ch * size * size, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))
