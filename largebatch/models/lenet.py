"""LeNet-5 style CNN (LeCun et al. 1998, "Gradient-based learning applied to document recognition").

conv 6@5x5 (padded, so 28x28 keeps its size as in the classic 32x32 setup) -> ReLU -> maxpool 2
-> conv 16@5x5 -> ReLU -> maxpool 2 -> fc 120 -> fc 84 -> head. On small inputs (8x8 digits) the second conv is
padded too, so the feature map never shrinks below 1x1; the flattened size is computed from input_shape.
"""
from __future__ import annotations

import torch
from torch import nn


class LeNet(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, *, dropout: float = 0.0):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"lenet needs image input (C, H, W), got input_shape={tuple(input_shape)}")
        c, h, w = input_shape
        if min(h, w) < 4:
            raise ValueError(f"lenet needs images of at least 4x4, got {h}x{w}")
        # Classic valid 5x5 conv when the pooled map is big enough (28x28 -> 14 -> 10), else keep its size.
        pad2 = 0 if min(h, w) // 2 >= 6 else 2
        self.features = nn.Sequential(
            nn.Conv2d(c, 6, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=pad2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, c, h, w)).shape[1]
        self.classifier = nn.Sequential(
            nn.Linear(flat, 120), nn.ReLU(inplace=True),
            nn.Linear(120, 84), nn.ReLU(inplace=True),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def create_lenet(input_shape: tuple[int, ...], num_classes: int, *, dropout: float = 0.0) -> nn.Module:
    return LeNet(input_shape, num_classes, dropout=dropout)
