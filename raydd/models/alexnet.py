"""The small-image AlexNet of the DC/DSA code (``norm="none"`` is their plain AlexNet)."""

from __future__ import annotations

from torch import Tensor, nn

from raydd.models.convnet import norm_layer

# (out channels, kernel size, max-pool after)
ALEXNET_CONFIG: tuple[tuple[int, int, bool], ...] = (
    (128, 5, True), (192, 5, True), (256, 3, False), (192, 3, False), (192, 3, True),
)


class AlexNet(nn.Module):
    """Five size-preserving convs (→ norm → ReLU), three 2×2 max-pools, a linear classifier."""

    def __init__(self, channels: int, num_classes: int, image_size: int, norm: str = "instance") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        size, in_ch = image_size, channels
        for out_ch, kernel, pool in ALEXNET_CONFIG:
            layers += [nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2), norm_layer(norm, out_ch), nn.ReLU()]
            if pool and size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_ch * size * size, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))
