"""ResNet-18 for small images, as in the DatasetCondensation code."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from raydd.models.convnet import norm_layer


def _conv3x3(in_ch: int, out_ch: int, stride: int, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=bias)


class BasicBlock(nn.Module):
    """Two 3×3 convs with a residual; a 1×1 projection when shape changes."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: str) -> None:
        super().__init__()
        bias = norm == "none"
        self.conv1 = _conv3x3(in_ch, out_ch, stride, bias)
        self.norm1 = norm_layer(norm, out_ch)
        self.conv2 = _conv3x3(out_ch, out_ch, 1, bias)
        self.norm2 = norm_layer(norm, out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=bias),
                                          norm_layer(norm, out_ch))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """3×3 stem (stride 2 from 64 px up, else 1, no max-pool), 4 stages of 2 blocks of ``width`` × (1, 2, 4, 8)
    channels (64: the published ResNet-18), global avg pool, fc."""

    def __init__(self, channels: int, num_classes: int, image_size: int, norm: str = "instance",
                 width: int = 64) -> None:
        super().__init__()
        bias = norm == "none"
        self.stem = nn.Sequential(_conv3x3(channels, width, 2 if image_size >= 64 else 1, bias),
                                  norm_layer(norm, width), nn.ReLU())
        blocks: list[nn.Module] = []
        in_ch = width
        for stage, out_ch in enumerate((width, 2 * width, 4 * width, 8 * width)):
            stride = 1 if stage == 0 else 2
            blocks += [BasicBlock(in_ch, out_ch, stride, norm), BasicBlock(out_ch, out_ch, 1, norm)]
            in_ch = out_ch
        self.layers = nn.Sequential(*blocks)
        self.classifier = nn.Linear(in_ch, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        features = F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1)
        return self.classifier(features.flatten(1))
