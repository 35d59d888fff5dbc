"""The seed 3D CNN (Image_Recognition_WebGUI architecture) with the flat size derived from the input grid.

Layer names are those of the seed checkpoints (``Conv_1``, ``Conv_1_bn``, ... ``dense_2``) so the
original state_dicts load with ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from addiagnosis.models.architecture import CHANNELS, KERNEL, POOLS, flat_size


class ClassificationModel3D(nn.Module):
    """Four Conv3d+BatchNorm3d+ReLU+MaxPool3d blocks (8/16/32/64 ch, pools 2/3/2/3), two dense layers."""

    def __init__(self, input_shape: Sequence[int] = (160, 256, 256), n_classes: int = 5,
                 dropout: float = 0.4, dropout2: float = 0.4):
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        in_ch = 1
        for i, (ch, pool) in enumerate(zip(CHANNELS, POOLS), start=1):
            setattr(self, f"Conv_{i}", nn.Conv3d(in_ch, ch, KERNEL))
            setattr(self, f"Conv_{i}_bn", nn.BatchNorm3d(ch))
            setattr(self, f"Conv_{i}_mp", nn.MaxPool3d(pool))
            in_ch = ch
        self.dense_1 = nn.Linear(flat_size(self.input_shape), 128)
        self.dense_2 = nn.Linear(128, n_classes)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout2)

    def blocks(self):
        for i in range(1, len(CHANNELS) + 1):
            yield getattr(self, f"Conv_{i}"), getattr(self, f"Conv_{i}_bn"), getattr(self, f"Conv_{i}_mp")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, bn, mp in self.blocks():
            x = mp(self.relu(bn(conv(x))))
        x = x.reshape(x.size(0), -1)
        x = self.relu(self.dense_1(self.dropout(x)))
        return self.dense_2(self.dropout2(x))


def input_shape_from_state_dict(state: dict, candidates: Sequence[Sequence[int]]) -> tuple[int, int, int]:
    """Pick the first candidate grid whose flat size matches ``dense_1.weight``."""
    n = int(state["dense_1.weight"].shape[1])
    for shape in candidates:
        try:
            if flat_size(shape) == n:
                return tuple(int(s) for s in shape)
        except ValueError:
            continue
    raise ValueError(f"no known input grid gives a flat size of {n}")
