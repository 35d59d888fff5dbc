"""The network as the LRP engine sees it: BatchNorm folded into the convolution before it, weights split by sign.

Folding (as zennit's ``SequentialMergeBatchNorm``): in evaluation mode ``bn(conv(x))`` is one convolution with
weights ``w * s`` and bias ``(b - mean) * s + beta``, where ``s = gamma / sqrt(var + eps)``; the rules then see
one linear layer per block. Each layer also keeps its positive and negative parts (the alpha-beta rules' w+
and w-), made once, in the engine's dtype, on its device and in the memory layout its kernels read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from addiagnosis.explain.kernels import CL
from addiagnosis.models.network import ClassificationModel3D


@dataclass
class Layer:
    """One folded convolution (5-D weights) or dense layer (2-D), with its sign-split copies."""

    w: torch.Tensor
    b: torch.Tensor
    w_pos: torch.Tensor
    b_pos: torch.Tensor
    w_neg: torch.Tensor
    pool: int = 0  # the max-pooling kernel (= stride) after a convolution; 0 for dense layers


def fold_batchnorm(conv: torch.nn.Conv3d, bn: torch.nn.BatchNorm3d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and bias of the convolution that computes ``bn(conv(x))`` (evaluation mode)."""
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        w = conv.weight * scale[:, None, None, None, None]
        b = (conv.bias - bn.running_mean) * scale + bn.bias
    return w, b


def make_layer(w: torch.Tensor, b: torch.Tensor, dtype: torch.dtype, device: torch.device, pool: int = 0) -> Layer:
    """A :class:`Layer` in ``dtype`` on ``device``; convolution weights channels-last, as the kernels read them."""
    w = w.detach().to(device, dtype)
    b = b.detach().to(device, dtype)
    fmt = CL if w.dim() == 5 else torch.contiguous_format
    return Layer(
        w=w.contiguous(memory_format=fmt), b=b.contiguous(),
        w_pos=w.clamp(min=0).contiguous(memory_format=fmt), b_pos=b.clamp(min=0).contiguous(),
        w_neg=w.clamp(max=0).contiguous(memory_format=fmt), pool=pool,
    )


def fold_model(model: ClassificationModel3D, dtype: torch.dtype,
               device: torch.device) -> tuple[list[Layer], list[Layer]]:
    """The convolution blocks (BatchNorm folded in) and the two dense layers of ``model``."""
    with torch.no_grad():
        convs = [make_layer(*fold_batchnorm(conv, bn), dtype, device, pool=_kernel(mp.kernel_size))
                 for conv, bn, mp in model.blocks()]
        dense = [make_layer(model.dense_1.weight, model.dense_1.bias, dtype, device),
                 make_layer(model.dense_2.weight, model.dense_2.bias, dtype, device)]
    return convs, dense


def _kernel(size) -> int:
    return int(size[0] if isinstance(size, (tuple, list)) else size)
