"""ResNet-18 for 32x32 images (CIFAR-10), with GroupNorm by default: a user's own model.

The CIFAR variant of He et al. (2016): a 3x3 stem without max-pooling (a 7x7 stride-2 stem
and a pool would shrink 32x32 images to 8x8 before the first block), four stages of two
BasicBlocks with 64, 128, 256, 512 channels (``width`` scales them), global average
pooling and one linear layer. Named in a config as
``examples.resnet18_cifar10.model:resnet18`` (run from the repository root).

Why GroupNorm: batch norm normalises by the statistics of each batch and keeps running
statistics for evaluation. A federated client trains on small batches of its own skewed
labels, so its batch statistics are noisy and differ from client to client, and the
averaged running statistics match no client's data nor the test set's (Hsieh et al.
2020, "The Non-IID Data Quagmire"). GroupNorm normalises each sample over groups of
channels: no batch statistics, no buffers, the same computation in training and
evaluation. Two groups, as Hsieh et al. and Reddi et al. (2021, "Adaptive Federated
Optimization") use. ``norm="batch"`` gives batch norm, whose running statistics then
follow ``model.buffers``.
"""

from __future__ import annotations

import torch
from torch import nn

STAGE_BLOCKS = (2, 2, 2, 2)  # ResNet-18: two BasicBlocks in each of four stages
STAGE_WIDTHS = (1, 2, 4, 8)  # channels of each stage, in multiples of ``width``
NORMS = ("group", "batch")


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut (a strided 1x1 convolution when the shape changes)."""

    def __init__(self, channels_in: int, channels_out: int, stride: int, norm):
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False)
        self.norm1 = norm(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False)
        self.norm2 = norm(channels_out)
        # Each residual branch starts at zero, so each block starts as the identity (Goyal et
        # al. 2017; torchvision's zero_init_residual): a freshly drawn ResNet-18 otherwise
        # sums eight branches' outputs into large activations, and its first SGD steps
        # overshoot.
        nn.init.zeros_(self.norm2.weight)
        self.shortcut = nn.Sequential()
        if stride != 1 or channels_in != channels_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(channels_in, channels_out, 1, stride, bias=False), norm(channels_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(self.norm2(self.conv2(h)) + self.shortcut(x))


class ResNet18(nn.Module):
    """(N, 3, H, W) images -> (N, num_classes) logits."""

    def __init__(self, num_classes: int, width: int, norm, in_channels: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), norm(width), nn.ReLU())
        stages, channels = [], width
        for index, (blocks, multiple) in enumerate(zip(STAGE_BLOCKS, STAGE_WIDTHS, strict=True)):
            stages.append(_stage(channels, width * multiple, blocks, 1 if index == 0 else 2, norm))
            channels = width * multiple
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = self.layer4(self.layer3(self.layer2(self.layer1(h))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))


def _stage(channels_in: int, channels_out: int, blocks: int, stride: int, norm) -> nn.Sequential:
    """``blocks`` BasicBlocks; the first changes the channels and strides (halves H and W)."""
    first = BasicBlock(channels_in, channels_out, stride, norm)
    return nn.Sequential(first, *(BasicBlock(channels_out, channels_out, 1, norm) for _ in range(blocks - 1)))


def resnet18(num_classes: int = 10, width: int = 64, norm: str = "group", groups: int = 2) -> nn.Module:
    """A CIFAR-style ResNet-18 (about 11.2M parameters at width 64).

    width: channels of the first stage (the others have 2x, 4x, 8x); norm: "group"
    (GroupNorm with ``groups`` groups; width must be a multiple of groups) or "batch".
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if norm == "group" and (groups < 1 or width % groups):
        raise ValueError(f"width {width} must be a positive multiple of groups {groups}")
    layer = (lambda c: nn.GroupNorm(groups, c)) if norm == "group" else nn.BatchNorm2d
    return ResNet18(num_classes, width, layer)
