"""The seed network's shape arithmetic, torch-free: which input grids it can take (discovery checks a card's
grid with it before any weights are read) and the size of its flattened features. :mod:`.network` builds the
layers from the same constants."""

from __future__ import annotations

from collections.abc import Sequence

CHANNELS = (8, 16, 32, 64)
POOLS = (2, 3, 2, 3)
KERNEL = 3


def min_grid() -> int:
    """The fewest voxels along an axis that leave at least one feature voxel after the four blocks."""
    d = 1
    for pool in reversed(POOLS):
        d = d * pool + (KERNEL - 1)
    return d


def feature_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    """Spatial shape after the four conv (valid, k=3) + max-pool blocks."""
    dims = [int(s) for s in input_shape]
    for pool in POOLS:
        dims = [(d - (KERNEL - 1)) // pool for d in dims]
    if min(dims) < 1:
        raise ValueError(f"input grid {'x'.join(str(int(s)) for s in input_shape)} is too small for the network "
                         f"(it needs at least {min_grid()} voxels along each axis)")
    return tuple(dims)


def flat_size(input_shape: Sequence[int]) -> int:
    d, h, w = feature_shape(input_shape)
    return CHANNELS[-1] * d * h * w
