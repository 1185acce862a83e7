"""Multi-layer perceptron: flatten, then Linear + ReLU (+ dropout) per hidden size, then a Linear head."""
from __future__ import annotations

import math
from typing import Sequence

from torch import nn


def create_mlp(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    hidden_sizes: Sequence[int] = (256, 128),
    dropout: float = 0.0,
) -> nn.Module:
    """An MLP over the flattened input; `hidden_sizes` may be empty (then it is logistic regression)."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for h in hidden_sizes:
        layers += [nn.Linear(width, int(h)), nn.ReLU(inplace=True)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = int(h)
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)
