"""CIFAR-style ResNet (He, Zhang, Ren & Sun 2015, arXiv 1512.03385, section 4.2).

depth = 6n + 2: a 3x3 conv stem, three stages of n basic blocks with widths (w, 2w, 4w) and strides (1, 2, 2),
global average pooling and a linear head. Shortcuts that change shape are option A from the paper (parameter-free:
stride-2 subsampling and zero-padded channels), so depth 20 has the paper's 0.27M parameters at w=16.
Global average pooling makes it work on any HxW (8x8 digits, 28x28 Fashion-MNIST, 32x32 CIFAR).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

VALID_DEPTHS = (20, 32, 44, 56, 110)  # the paper's; any 6n + 2 >= 8 is accepted


class _PadShortcut(nn.Module):
    """Option A: subsample by `stride` and zero-pad the extra channels."""

    def __init__(self, stride: int, extra_channels: int):
        super().__init__()
        self.stride, self.extra = stride, extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        same = stride == 1 and in_ch == out_ch
        self.shortcut: nn.Module = nn.Identity() if same else _PadShortcut(stride, out_ch - in_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x), inplace=True)


class CifarResNet(nn.Module):
    def __init__(
        self, input_shape: tuple[int, ...], num_classes: int, *, depth: int = 20, width: int = 16,
        dropout: float = 0.0, zero_init_residual: bool = False,
    ):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(
                f"resnet depth must be 6n+2 (e.g. {', '.join(map(str, VALID_DEPTHS))}), got {depth}")
        if len(input_shape) != 3:
            raise ValueError(f"resnet needs image input (C, H, W), got input_shape={tuple(input_shape)}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(
            nn.Conv2d(input_shape[0], width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        blocks: list[nn.Module] = []
        in_ch = width
        for stage, out_ch in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                blocks.append(BasicBlock(in_ch, out_ch, stride=2 if stage > 0 and i == 0 else 1))
                in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")  # He et al. 2015b
        if zero_init_residual:
            # Goyal et al. 2017 (arXiv 1706.02677): gamma=0 in each block's last BN, so blocks start as identity.
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.blocks(self.stem(x))).flatten(1)
        return self.head(self.dropout(x))


def create_resnet(
    input_shape: tuple[int, ...], num_classes: int, *, depth: int = 20, width: int = 16, dropout: float = 0.0,
    zero_init_residual: bool = False,
) -> nn.Module:
    return CifarResNet(
        input_shape, num_classes, depth=depth, width=width, dropout=dropout, zero_init_residual=zero_init_residual)
