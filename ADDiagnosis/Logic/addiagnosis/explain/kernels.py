"""The convolutions, transposed convolutions and (un)pooling the LRP rules run, fast on the CPU.

Every rule is a forward convolution with modified weights plus one ``conv_transpose`` on channels-last
tensors; the tricks here make those calls fast on the CPU without changing a single number (each is compared
with PyTorch's plain operation in Testing/unit/test_lrp_zennit.py). The measurements behind them, on the
seed network's grids, are collected in docs/methods.md ("Kernels").

Scratch buffers: the large intermediate tensors (the depth-stacked input planes, the un-pooled relevance of
each block) are written into tensors kept between calls, keyed by role: re-faulting fresh pages for them on
every call cost more than the arithmetic. A buffer outlives the call that filled it, so whoever reads one
later must know it still holds what it expects: :attr:`Kernels.generation` counts forward passes, and
:attr:`Kernels.planes_owner` says which forward pass's input the ``planes`` buffer holds (-1: none, e.g. a
clamped input a rule stacked there).
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F

CL = torch.channels_last_3d
HAS_MKLDNN = hasattr(torch, "mkldnn_convolution") and torch.backends.mkldnn.is_available()


def ieee_fp32(method):
    """Run with TF32 off for cuDNN convolutions on CUDA (on by default on Ampere and later GPUs).

    TF32 keeps 10 mantissa bits: on an H100 it moved relevance maps by up to 11 % (relative L2) from the CPU
    result, logits by 4e-4 (scripts/experiments/gpu_check.py); explanations must not depend on the device.
    """

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if self.device.type != "cuda":
            return method(self, *args, **kwargs)
        old = _set_cudnn_tf32(False)
        try:
            return method(self, *args, **kwargs)
        finally:
            _set_cudnn_tf32(old)

    return wrapper


def _set_cudnn_tf32(value: bool) -> bool:
    """Set cuDNN's TF32 switch, return the previous value."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # newer PyTorch prefers fp32_precision; allow_tf32 still works
        old = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = value
    return old


class Kernels:
    """The engine's operations in one dtype on one device, with its scratch buffers (see the module doc)."""

    def __init__(self, dtype: torch.dtype, device: torch.device):
        self.dtype = dtype
        self.device = device
        # large scratch buffers kept between calls: re-faulting fresh pages cost more than the arithmetic
        self.buffers: dict[str, torch.Tensor] = {}
        self.generation = 0  # forward passes so far
        self.planes_owner = -1  # generation whose depth-stacked input is in the "planes" buffer

    def new_generation(self) -> int:
        """Start a forward pass: its number, which its cache keeps."""
        self.generation += 1
        return self.generation

    def planes_of(self, generation: int) -> torch.Tensor | None:
        """The depth-stacked input of forward pass ``generation`` if the buffer still holds it, else None."""
        return self.buffers["planes"] if self.planes_owner == generation else None

    def buffer(self, key: str, shape, memory_format=torch.contiguous_format) -> torch.Tensor:
        buf = self.buffers.get(key)
        if buf is None or tuple(buf.shape) != tuple(shape) or not buf.is_contiguous(memory_format=memory_format):
            buf = torch.empty(shape, dtype=self.dtype, device=self.device, memory_format=memory_format)
            self.buffers[key] = buf
        return buf

    def depth_stack(self, x, k):
        """(1,1,D,H,W) -> (D-k+1, k, H, W) channels-last: the k depth neighbours of each output plane."""
        vol = x[0, 0]
        d_out = vol.shape[0] - k + 1
        out = self.buffer("planes", (d_out, k, *vol.shape[1:]), torch.channels_last)
        for t in range(k):
            out[:, t].copy_(vol[t:t + d_out])
        return out

    def conv_relu_pool(self, a: torch.Tensor, layer, first: bool):
        """One block's forward pass: conv (BatchNorm folded in), ReLU, max-pool with indices.

        Returns the pooled output, the pooling indices and the shape before pooling. A single-channel first
        layer on the CPU runs as a batched 2D conv over depth, then a two-stage max-pool; its depth-stacked
        input stays in the ``planes`` buffer, owned by this generation (the alpha-beta rule re-uses it).
        """
        if first and planar(a):
            planes = self.depth_stack(a, layer.w.shape[2])
            self.planes_owner = self.generation
            z2d = conv_planes(planes, layer.w, layer.b).relu_()
            shape = (z2d.shape[0], *z2d.shape[2:])
            pooled, idx = max_pool_planes(z2d, layer.pool)
            del z2d
        else:
            z = self.conv(a, layer.w, layer.b).relu_()
            shape = tuple(z.shape[2:])
            pooled, idx = F.max_pool3d(z, layer.pool, return_indices=True)
            del z
        return pooled, idx, shape

    def unpool(self, values: torch.Tensor, idx: torch.Tensor, shape, key: str) -> torch.Tensor:
        """Scatter pooled values back to the winning voxels (zeros elsewhere), into a re-used buffer."""
        n, c = values.shape[:2]
        out = self.buffer(key, (n, c, *shape), CL).zero_()
        out.flatten(2).scatter_(2, idx.flatten(2), values.flatten(2))
        return out

    def conv(self, a, w, b, first=False, planes=None):
        """conv3d (no padding, stride 1); ``planes``: the depth-stacked input of a first layer, if at hand."""
        if first and planar(a):
            if planes is None:
                planes = self.depth_stack(a, w.shape[2])
                self.planes_owner = -1  # may hold a clamped input, not any cache's
            return conv_planes(planes, w, b).permute(1, 0, 2, 3).unsqueeze(0)
        a = a.contiguous(memory_format=CL)
        if a.device.type == "cpu" and a.dtype == torch.float32 and HAS_MKLDNN:
            # PyTorch's heuristic sends the small deep layers to its slow reference kernel (5-6x slower)
            return torch.mkldnn_convolution(a, w, b, [0, 0, 0], [1, 1, 1], [1, 1, 1], 1)
        return F.conv3d(a, w, b)

    def conv_t(self, s, w, like, first=False):
        """conv_transpose3d of ``s`` through ``w``; the result has ``like``'s shape (checked)."""
        if first and w.shape[1] == 1 and s.device.type == "cpu":
            out = conv_t_single_channel(s, w)
        else:
            out = F.conv_transpose3d(s.contiguous(memory_format=CL), w)
        if tuple(out.shape) != tuple(like.shape):
            raise RuntimeError("internal shape mismatch in LRP")
        return out


def planar(a: torch.Tensor) -> bool:
    """A single-channel CPU tensor: its conv runs as 2D convs over depth-stacked planes."""
    return a.shape[1] == 1 and a.device.type == "cpu"


def conv_planes(planes: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """Single-input-channel conv3d as conv2d over depth-stacked planes (D', k, H, W) -> (D', C, H', W').

    The channels-last result is the memory of (1, C, D', H', W') in channels-last-3d; about 3x faster on
    CPU than conv3d with one input channel, same numbers.
    """
    return F.conv2d(planes, w[:, 0].contiguous(memory_format=torch.channels_last), b)


def max_pool_planes(z2d: torch.Tensor, k: int):
    """max_pool3d(kernel=stride=k, return_indices) of the (1,C,D,H,W) volume held as (D,C,H,W) planes.

    A 2D pool in-plane, then the max over each group of k planes; ties go to the earlier plane and the
    earlier in-plane voxel, as in PyTorch's max_pool3d, whose values and indices this reproduces exactly
    (Testing/unit/test_lrp_zennit.py). About 2x faster than max_pool3d on channels-last-3d input.
    """
    depth, _, height, width = z2d.shape
    plane = height * width
    v2, i2 = F.max_pool2d(z2d, k, return_indices=True)  # (D, C, H/k, W/k)
    d_out = depth // k
    best, flat = v2[0:d_out * k:k], i2[0:d_out * k:k]
    for t in range(1, k):
        cand, cand_i = v2[t:d_out * k:k], i2[t:d_out * k:k]
        take = cand > best  # strict: ties stay with the earlier plane
        best = torch.maximum(best, cand)
        flat = torch.where(take, cand_i + t * plane, flat)
    flat = flat + (torch.arange(d_out, device=z2d.device) * (k * plane)).view(d_out, 1, 1, 1)
    return best.permute(1, 0, 2, 3).unsqueeze(0), flat.permute(1, 0, 2, 3).unsqueeze(0)


def conv_t_single_channel(s, w):
    """conv_transpose3d to one output channel as a batched conv_transpose2d plus a shift-add over depth
    (about 2x faster on CPU than conv_transpose3d with a single output channel)."""
    k = w.shape[2]
    planes = s[0].permute(1, 0, 2, 3).contiguous(memory_format=torch.channels_last)  # (D', C, H', W')
    y = F.conv_transpose2d(planes, w[:, 0].contiguous(memory_format=torch.channels_last))  # (D', k, H, W)
    d_in = planes.shape[0] + k - 1
    out = torch.zeros((d_in, *y.shape[2:]), dtype=y.dtype, device=y.device)
    for t in range(k):
        out[t:t + planes.shape[0]] += y[:, t]
    return out[None, None]
