"""Fast Layer-wise Relevance Propagation for the seed 3D CNN, without autograd: the driver.

Why our own implementation: zennit (the reference, used in the tests) runs the LRP rules through autograd,
and PyTorch's CPU backward of Conv3d is slow. Here the network is folded once (:mod:`.fold`: BatchNorm into
the convolutions, weights split by sign), the forward pass keeps what the rules need, and the backward pass
walks the layers from the output to the input, asking the method's rules (:mod:`.rules`) for each step; the
rules run on the CPU-tuned operations of :mod:`.kernels`. The numbers agree with zennit 0.5.1 on the same
rules (Testing/unit/test_lrp_zennit.py). The methods, their rules and the measurements behind the choices:
docs/methods.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from addiagnosis.explain.fold import fold_model
from addiagnosis.explain.kernels import Kernels, ieee_fp32
from addiagnosis.explain.rules import COMPOSITES, ForwardCache, ReferenceActivations, rules_of
from addiagnosis.models.card import DEFAULT_METHOD
from addiagnosis.models.network import ClassificationModel3D


class FastLRP:
    """Folded copy of a :class:`ClassificationModel3D` that computes logits and relevance maps."""

    def __init__(self, model: ClassificationModel3D, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", epsilon: float = 1e-6, stabilizer: float = 1e-6):
        self.dtype = dtype
        self.device = torch.device(device)
        self.epsilon = float(epsilon)
        self.stabilizer = float(stabilizer)
        self.input_shape = tuple(model.input_shape)
        self.kernels = Kernels(dtype, self.device)
        self.reference: ReferenceActivations | None = None
        self.layers, self.dense = fold_model(model, dtype, self.device)

    @ieee_fp32
    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> ForwardCache:
        """x: (1,1,D,H,W). Returns logits and the activations the backward pass needs."""
        if x.dim() != 5 or x.shape[0] != 1 or x.shape[1] != 1:
            raise ValueError(f"expected a (1,1,D,H,W) tensor, got {tuple(x.shape)}")
        x = x.to(self.device, self.dtype)
        a = x
        conv_inputs, pooled, indices, shapes = [], [], [], []
        generation = self.kernels.new_generation()
        for i, layer in enumerate(self.layers):
            conv_inputs.append(a)
            a, idx, shape = self.kernels.conv_relu_pool(a, layer, first=i == 0)
            shapes.append(shape)
            pooled.append(a)
            indices.append(idx)
        flat = a.reshape(1, -1)
        d1, d2 = self.dense
        hidden = F.linear(flat, d1.w, d1.b)
        logits = F.linear(hidden.relu(), d2.w, d2.b)
        return ForwardCache(x, conv_inputs, pooled, indices, shapes, flat, hidden, logits,
                            input_has_negative=bool(x.min() < 0), generation=generation)

    def set_reference(self, x_ref: torch.Tensor | None) -> None:
        """Set (or clear, with None) the reference input of the ``lrp-reference`` methods: (1,1,D,H,W)."""
        if x_ref is None:
            self.reference = None
            return
        c = self.forward(x_ref)
        self.reference = ReferenceActivations([a.clone() for a in c.conv_inputs], c.dense_in.clone(),
                                              c.hidden_pre.relu())

    @property
    def reference_input(self) -> torch.Tensor | None:
        """The reference network input (1,1,D,H,W), or None (it is the first layer's reference input)."""
        return None if self.reference is None else self.reference.conv_inputs[0]

    @ieee_fp32
    @torch.inference_mode()
    def relevance(self, cache: ForwardCache, target: int, method: str = DEFAULT_METHOD) -> torch.Tensor:
        """Relevance of output ``target`` for the input, shape (D,H,W), same dtype as the engine."""
        if method not in COMPOSITES:
            raise ValueError(f"unknown method {method!r}; choose from {', '.join(COMPOSITES)}")
        conv_rule, dense_rule = rules_of(method)
        ref = self.reference
        if (conv_rule.needs_reference or dense_rule.needs_reference) and ref is None:
            raise ValueError(f"{method} needs a reference input (FastLRP.set_reference); this model has none")
        n_out = cache.logits.shape[1]
        if not 0 <= target < n_out:
            raise ValueError(f"target index {target} outside 0..{n_out - 1}")
        # relevance (or gradient) at the output: one-hot on the target class
        r = torch.zeros_like(cache.logits)
        r[0, target] = 1.0
        d1, d2 = self.dense
        ref_hidden, ref_in = (None, None) if ref is None else (ref.hidden, ref.dense_in)
        r = dense_rule.dense(self, r, cache.hidden_pre.relu(), ref_hidden, d2)
        r = dense_rule.through_relu(r, cache.hidden_pre)
        r = dense_rule.dense(self, r, cache.dense_in, ref_in, d1)
        r = r.reshape(cache.pooled[-1].shape)
        for i in reversed(range(len(self.layers))):
            r = conv_rule.conv(self, r, i, cache)
        return conv_rule.at_input(r, cache.x)[0, 0]
