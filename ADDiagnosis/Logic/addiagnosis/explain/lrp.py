"""Fast Layer-wise Relevance Propagation for the seed 3D CNN, without autograd.

Why our own implementation: zennit (the reference, used in the tests) runs the LRP rules through
autograd, and PyTorch's CPU backward of Conv3d is slow; here every rule is a forward convolution
with modified weights plus one ``conv_transpose`` on channels-last tensors, max-pool relevance is
routed with the pooling indices, and BatchNorm is folded into the preceding convolution (as zennit's
``SequentialMergeBatchNorm``). The numbers agree with zennit 0.5.1 on the same rules (see
Testing/test_lrp_zennit.py).

Rules (relevance R_k of layer outputs -> R_j of inputs, z = stabilised denominator):
- ``epsilon``: R_j = x_j * sum_k w_jk R_k / (z_k + eps*sign(z_k))
- ``alphabeta`` with alpha=1, beta=0: only positive contributions
  (x+ w+ and x- w-, positive part of the bias), as zennit's AlphaBeta(1, 0).
- ``reference`` (alpha=2, beta=1 on differences): every layer's input is replaced by its difference from
  the same layer's input for a reference scan x~ (for template-aligned models: the MNI template prepared
  like a scan, which such a model calls healthy), da = a - a~; contributions da_j w_jk are split into
  positive and negative parts, R_j = sum_k (2 (da_j w_jk)+ / z+_k - (da_j w_jk)- / z-_k) R_k. Biases
  cancel in the difference. This is the Deep Taylor / DeepLIFT idea of explaining a decision relative to
  a root point (Montavon et al. 2017; Shrikumar et al. 2017) with LRP's alpha-beta rule (Bach et al.
  2015). Plain LRP credits every bright voxel that feeds an active neuron, so its maps carry a halo of
  intact tissue around the evidence; relative to a healthy reference only what differs from it can
  carry relevance. On the bundled synthetic model this moves the median share of positive relevance in
  the true atrophy of AD subjects from 0.25 (alpha1-beta0) to about 0.6 (see the model card).
- ``reference-alpha1beta0``: the same on differences with alpha=1, beta=0: only positive contributions
  (da_j w_jk)+ pass relevance on, R_j = sum_k (da_j w_jk)+ / z+_k R_k, so the map is non-negative and sums
  to the output relevance. Alpha2-beta1 subtracts two large, nearly equal shares where a layer's
  differences are small, and the remainder follows noise: the same scan stored on another grid gave maps
  that correlate 0.86 (5th percentile 0.72) with it; with alpha1-beta0 0.97 (0.94), at a little less
  relevance in the true atrophy (docs/training.md, "Choosing the explanation method").
ReLU passes relevance unchanged; max-pooling routes it to the winning voxel. Each rule is one entry of
:data:`RULES` (its dense-layer and conv-block functions); :data:`METHODS` names a rule for each kind of layer.

Methods: ``lrp-reference-alpha1beta0`` and ``lrp-reference`` (need a reference input: see
:meth:`FastLRP.set_reference`),
``lrp-alpha1beta0`` (Boehle et al. 2019; the default where a model has no reference), ``lrp-epsilon``,
``lrp-composite`` (epsilon on dense layers, alpha1-beta0 on conv layers), ``gradient-x-input`` and
``guided-backprop`` (for comparison; the original web app offered guided backprop).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from addiagnosis.models.network import ClassificationModel3D

METHODS = {
    # method: (rule for conv layers, rule for dense layers): names in RULES
    "lrp-reference-alpha1beta0": ("reference-alpha1beta0", "reference-alpha1beta0"),
    "lrp-reference": ("reference", "reference"),
    "lrp-alpha1beta0": ("alphabeta", "alphabeta"),
    "lrp-epsilon": ("epsilon", "epsilon"),
    "lrp-composite": ("alphabeta", "epsilon"),
    "gradient-x-input": ("gradient", "gradient"),
    "guided-backprop": ("guided", "guided"),
}
DEFAULT_METHOD = "lrp-alpha1beta0"
REFERENCE_METHODS = ("lrp-reference", "lrp-reference-alpha1beta0")
REFERENCE_ALPHA = 2.0  # alpha-beta rule of lrp-reference (beta = alpha - 1); lrp-reference-alpha1beta0: 1
CL = torch.channels_last_3d
_HAS_MKLDNN = hasattr(torch, "mkldnn_convolution") and torch.backends.mkldnn.is_available()


def _ieee_fp32(method):
    """Run with TF32 off for cuDNN convolutions on CUDA (on by default on Ampere and later GPUs).

    TF32 keeps 10 mantissa bits: on an H100 it moved relevance maps by up to 11 % (relative L2) from the CPU
    result, logits by 4e-4 (scripts/gpu_check.py); explanations must not depend on the device.
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


def _stab(z: torch.Tensor, eps: float) -> torch.Tensor:
    """z + eps * sign(z), with sign(0) = +1 (zennit's Stabilizer)."""
    return z + torch.where(z >= 0, eps, -eps)


@dataclass
class _Layer:
    w: torch.Tensor
    b: torch.Tensor
    w_pos: torch.Tensor
    b_pos: torch.Tensor
    w_neg: torch.Tensor
    pool: int = 0


@dataclass
class ReferenceActivations:
    """Input of every layer for the reference scan (computed once per engine)."""

    conv_inputs: list
    dense_in: torch.Tensor
    hidden: torch.Tensor  # dense_1 output after ReLU


@dataclass
class ForwardCache:
    """What the backward pass needs from one forward pass (batch of 1)."""

    x: torch.Tensor  # network input (1,1,D,H,W)
    conv_inputs: list  # input of each conv layer
    pooled: list  # relu+pool output of each conv block
    indices: list  # pooling indices of each block
    pre_pool_shapes: list
    dense_in: torch.Tensor  # flattened features (1,F)
    hidden_pre: torch.Tensor  # dense_1 output before ReLU (1,128)
    logits: torch.Tensor  # (1,C)
    input_has_negative: bool = False  # decides whether alpha-beta needs the x- w- terms at layer 1
    generation: int = 0  # which forward() of the engine made this cache (scratch buffers are shared)


class FastLRP:
    """Folded copy of a :class:`ClassificationModel3D` that computes logits and relevance maps."""

    def __init__(self, model: ClassificationModel3D, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", epsilon: float = 1e-6, stabilizer: float = 1e-6):
        self.dtype = dtype
        self.device = torch.device(device)
        self.epsilon = float(epsilon)
        self.stabilizer = float(stabilizer)
        self.input_shape = tuple(model.input_shape)
        # large scratch buffers kept between calls: re-faulting fresh pages cost more than the arithmetic
        self._buffers: dict[str, torch.Tensor] = {}
        self._generation = 0
        self._planes_owner = -1  # generation whose depth-stacked input is in the "planes" buffer
        self.reference: ReferenceActivations | None = None
        self.layers: list[_Layer] = []
        with torch.no_grad():
            for conv, bn, mp in model.blocks():
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                w = conv.weight * scale[:, None, None, None, None]
                b = (conv.bias - bn.running_mean) * scale + bn.bias
                self.layers.append(self._make_layer(w, b, pool=int(_k(mp.kernel_size))))
            self.dense = [
                self._make_layer(model.dense_1.weight, model.dense_1.bias),
                self._make_layer(model.dense_2.weight, model.dense_2.bias),
            ]

    def _make_layer(self, w, b, pool=0) -> _Layer:
        w = w.detach().to(self.device, self.dtype)
        b = b.detach().to(self.device, self.dtype)
        fmt = CL if w.dim() == 5 else torch.contiguous_format
        return _Layer(
            w=w.contiguous(memory_format=fmt), b=b.contiguous(),
            w_pos=w.clamp(min=0).contiguous(memory_format=fmt), b_pos=b.clamp(min=0).contiguous(),
            w_neg=w.clamp(max=0).contiguous(memory_format=fmt), pool=pool,
        )

    # ------------------------------------------------------------------ forward
    @_ieee_fp32
    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> ForwardCache:
        """x: (1,1,D,H,W). Returns logits and the activations the backward pass needs."""
        if x.dim() != 5 or x.shape[0] != 1 or x.shape[1] != 1:
            raise ValueError(f"expected a (1,1,D,H,W) tensor, got {tuple(x.shape)}")
        x = x.to(self.device, self.dtype)
        a = x
        conv_inputs, pooled, indices, shapes = [], [], [], []
        self._generation += 1
        for i, layer in enumerate(self.layers):
            conv_inputs.append(a)
            if i == 0 and _planar(a):
                # single-channel first layer: batched 2D conv over depth, then a two-stage max-pool
                planes = self._depth_stack(a, layer.w.shape[2])
                self._planes_owner = self._generation
                z2d = _conv_planes(planes, layer.w, layer.b).relu_()
                shapes.append((z2d.shape[0], *z2d.shape[2:]))
                a, idx = _max_pool_planes(z2d, layer.pool)
                del z2d
            else:
                z = self._conv(a, layer.w, layer.b).relu_()
                shapes.append(tuple(z.shape[2:]))
                a, idx = F.max_pool3d(z, layer.pool, return_indices=True)
                del z
            pooled.append(a)
            indices.append(idx)
        flat = a.reshape(1, -1)
        d1, d2 = self.dense
        hidden = F.linear(flat, d1.w, d1.b)
        logits = F.linear(hidden.relu(), d2.w, d2.b)
        return ForwardCache(x, conv_inputs, pooled, indices, shapes, flat, hidden, logits,
                            input_has_negative=bool(x.min() < 0), generation=self._generation)

    def set_reference(self, x_ref: torch.Tensor | None) -> None:
        """Set (or clear, with None) the reference input of the ``lrp-reference`` method: (1,1,D,H,W)."""
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

    def _buffer(self, key: str, shape, memory_format=torch.contiguous_format) -> torch.Tensor:
        buf = self._buffers.get(key)
        if buf is None or tuple(buf.shape) != tuple(shape) or not buf.is_contiguous(memory_format=memory_format):
            buf = torch.empty(shape, dtype=self.dtype, device=self.device, memory_format=memory_format)
            self._buffers[key] = buf
        return buf

    def _depth_stack(self, x, k):
        """(1,1,D,H,W) -> (D-k+1, k, H, W) channels-last: the k depth neighbours of each output plane."""
        vol = x[0, 0]
        d_out = vol.shape[0] - k + 1
        out = self._buffer("planes", (d_out, k, *vol.shape[1:]), torch.channels_last)
        for t in range(k):
            out[:, t].copy_(vol[t:t + d_out])
        return out

    def _unpool(self, values: torch.Tensor, idx: torch.Tensor, shape, key: str) -> torch.Tensor:
        """Scatter pooled values back to the winning voxels (zeros elsewhere), into a re-used buffer."""
        n, c = values.shape[:2]
        out = self._buffer(key, (n, c, *shape), CL).zero_()
        out.flatten(2).scatter_(2, idx.flatten(2), values.flatten(2))
        return out

    def _conv(self, a, w, b, first=False, planes=None):
        if first and _planar(a):
            if planes is None:
                planes = self._depth_stack(a, w.shape[2])
                self._planes_owner = -1  # may hold a clamped input, not any cache's
            return _conv_planes(planes, w, b).permute(1, 0, 2, 3).unsqueeze(0)
        a = a.contiguous(memory_format=CL)
        if a.device.type == "cpu" and a.dtype == torch.float32 and _HAS_MKLDNN:
            # PyTorch's heuristic sends the small deep layers to its slow reference kernel (5-6x slower)
            return torch.mkldnn_convolution(a, w, b, [0, 0, 0], [1, 1, 1], [1, 1, 1], 1)
        return F.conv3d(a, w, b)

    # ----------------------------------------------------------------- backward
    @_ieee_fp32
    @torch.inference_mode()
    def relevance(self, cache: ForwardCache, target: int, method: str = DEFAULT_METHOD) -> torch.Tensor:
        """Relevance of output ``target`` for the input, shape (D,H,W), same dtype as the engine."""
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        conv_rule, dense_rule = (RULES[name] for name in METHODS[method])
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

    # ---------------------------------------------------------- dense rules
    # (relevance at the layer's outputs, its input a, the reference scan's input a_ref or None) -> at a
    def _dense_epsilon(self, r, a, a_ref, layer: _Layer):
        z = F.linear(a, layer.w, layer.b)
        return a * ((r / _stab(z, self.epsilon)) @ layer.w)

    def _dense_alphabeta(self, r, a, a_ref, layer: _Layer):
        # inputs of both dense layers are post-ReLU (>= 0): only x+ w+ contributes
        z = F.linear(a, layer.w_pos, layer.b_pos)
        return a * ((r / _stab(z, self.stabilizer)) @ layer.w_pos)

    def _dense_gradient(self, r, a, a_ref, layer: _Layer):
        return r @ layer.w

    def _dense_reference(self, r, a, a_ref, layer: _Layer, alpha: float = REFERENCE_ALPHA):
        return self._reference_rule(r, a - a_ref, layer, F.linear, lambda s, w: s @ w, alpha=alpha)

    def _reference_rule(self, r, da, layer: _Layer, z_of, spread, expand=None, alpha: float = REFERENCE_ALPHA):
        """Alpha-beta on the contributions of da = a - a_ref, for dense and conv layers alike.

        ``z_of(x, w)``: x's contributions summed at the outputs that receive relevance; ``expand(s)``: those
        outputs' ratios onto the full output grid (un-pooling; identity for dense layers); ``spread(s, w)``:
        the ratios back onto the inputs through w.
        """
        beta = alpha - 1.0
        dp, dn = da.clamp(min=0), da.clamp(max=0)
        out = None
        # alpha: positive contributions (da+ w+ and da- w-); beta: negative ones (da+ w- and da- w+)
        for coef, w_a, w_b in ((alpha, layer.w_pos, layer.w_neg), (beta, layer.w_neg, layer.w_pos)):
            if not coef:
                continue
            z = z_of(dp, w_a)
            z += z_of(dn, w_b)
            s = r / _stab(z, self.stabilizer)
            del z
            if expand is not None:
                s = expand(s)
            part = dp * spread(s, w_a)
            part += dn * spread(s, w_b)
            out = part.mul_(coef) if out is None else out.sub_(part.mul_(coef))
        return out

    # ---------------------------------------------------------- conv rules
    # (relevance at the block's pooled outputs, block index, forward cache) -> at the block's input
    def _conv_reference(self, r_pooled, i, cache: ForwardCache, alpha: float = REFERENCE_ALPHA):
        """Conv block of ``lrp-reference``: max-pool routes to x's winners, then alpha-beta on da = a - a_ref."""
        layer, a_in, first = self.layers[i], cache.conv_inputs[i], i == 0
        idx, shape = cache.indices[i], cache.pre_pool_shapes[i]

        def z_of(x, w):
            return self._conv(x, w, None, first).flatten(2).gather(2, idx.flatten(2)).view_as(idx)

        return self._reference_rule(
            r_pooled, a_in - self.reference.conv_inputs[i], layer, z_of,
            spread=lambda s, w: self._conv_t(s, w, a_in, first),
            expand=lambda s: self._unpool(s, idx, shape, f"unpool{i}"), alpha=alpha)

    def _conv_epsilon(self, r_pooled, i, cache: ForwardCache):
        layer, a_in, a_pooled = self.layers[i], cache.conv_inputs[i], cache.pooled[i]
        # z at the winning voxels equals the pooled activation where it is > 0; elsewhere R = 0
        s = torch.where(a_pooled > 0, r_pooled / _stab(a_pooled, self.epsilon), 0.0)
        s_full = self._unpool(s, cache.indices[i], cache.pre_pool_shapes[i], f"unpool{i}")
        return a_in * self._conv_t(s_full, layer.w, a_in, i == 0)

    def _conv_alphabeta(self, r_pooled, i, cache: ForwardCache):
        layer, a_in, idx, first = self.layers[i], cache.conv_inputs[i], cache.indices[i], i == 0
        x_neg = None
        if first and cache.input_has_negative:
            x_pos, x_neg = a_in.clamp(min=0), a_in.clamp(max=0)
            z = self._conv(x_pos, layer.w_pos, layer.b_pos, first)
            z += self._conv(x_neg, layer.w_neg, None, first)
        else:
            x_pos = a_in
            reuse = first and self._planes_owner == cache.generation
            z = self._conv(a_in, layer.w_pos, layer.b_pos, first, planes=self._buffers["planes"] if reuse else None)
        z_win = z.flatten(2).gather(2, idx.flatten(2)).view_as(idx)
        del z
        s_full = self._unpool(r_pooled / _stab(z_win, self.stabilizer), idx, cache.pre_pool_shapes[i], f"unpool{i}")
        out = x_pos * self._conv_t(s_full, layer.w_pos, a_in, first)
        if x_neg is not None:
            out += x_neg * self._conv_t(s_full, layer.w_neg, a_in, first)
        return out

    def _backprop(self, r_pooled, i, cache: ForwardCache, through_relu):
        """Gradient (or guided gradient) through pooling, ReLU (mask z > 0 == winning activation > 0), conv."""
        g = through_relu(r_pooled, cache.pooled[i])
        g = self._unpool(g, cache.indices[i], cache.pre_pool_shapes[i], f"unpool{i}")
        return self._conv_t(g, self.layers[i].w, cache.conv_inputs[i], i == 0)

    def _conv_gradient(self, r_pooled, i, cache: ForwardCache):
        return self._backprop(r_pooled, i, cache, _relu_gradient)

    def _conv_guided(self, r_pooled, i, cache: ForwardCache):
        return self._backprop(r_pooled, i, cache, _relu_guided)

    def _conv_t(self, s, w, like, first=False):
        if first and w.shape[1] == 1 and s.device.type == "cpu":
            out = _conv_t_single_channel(s, w)
        else:
            out = F.conv_transpose3d(s.contiguous(memory_format=CL), w)
        if tuple(out.shape) != tuple(like.shape):
            raise RuntimeError("internal shape mismatch in LRP")
        return out


def _keep(r, _):
    return r


def _relu_gradient(r, pre):
    """Gradient through a ReLU whose input (or, after max-pooling, winning output) is ``pre``."""
    return r * (pre > 0)


def _relu_guided(r, pre):
    """Guided backprop: the ReLU's gradient, negative values dropped."""
    return _relu_gradient(r, pre).clamp(min=0)


def _times_input(r, x):
    return r * x


@dataclass(frozen=True)
class Rule:
    """How relevance (or the gradient) goes back through each kind of layer under one rule."""

    dense: Callable  # (engine, r, a, a_ref, layer) -> relevance at the dense layer's input a
    conv: Callable  # (engine, r_pooled, i, cache) -> relevance at the input of conv block i
    through_relu: Callable = _keep  # (r, pre-activation) between the two dense layers
    at_input: Callable = _keep  # (r, network input) last step (gradient x input multiplies)
    needs_reference: bool = False


RULES = {
    "epsilon": Rule(FastLRP._dense_epsilon, FastLRP._conv_epsilon),
    "alphabeta": Rule(FastLRP._dense_alphabeta, FastLRP._conv_alphabeta),
    "reference": Rule(FastLRP._dense_reference, FastLRP._conv_reference, needs_reference=True),
    "reference-alpha1beta0": Rule(functools.partial(FastLRP._dense_reference, alpha=1.0),
                                  functools.partial(FastLRP._conv_reference, alpha=1.0), needs_reference=True),
    "gradient": Rule(FastLRP._dense_gradient, FastLRP._conv_gradient, _relu_gradient, _times_input),
    "guided": Rule(FastLRP._dense_gradient, FastLRP._conv_guided, _relu_guided),
}


def _k(size) -> int:
    return size[0] if isinstance(size, (tuple, list)) else size


def _planar(a: torch.Tensor) -> bool:
    return a.shape[1] == 1 and a.device.type == "cpu"


def _conv_planes(planes: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """Single-input-channel conv3d as conv2d over depth-stacked planes (D', k, H, W) -> (D', C, H', W').

    The channels-last result is the memory of (1, C, D', H', W') in channels-last-3d; about 3x faster on
    CPU than conv3d with one input channel, same numbers.
    """
    return F.conv2d(planes, w[:, 0].contiguous(memory_format=torch.channels_last), b)


def _max_pool_planes(z2d: torch.Tensor, k: int):
    """max_pool3d(kernel=stride=k, return_indices) of the (1,C,D,H,W) volume held as (D,C,H,W) planes.

    A 2D pool in-plane, then the max over each group of k planes; ties go to the earlier plane and the
    earlier in-plane voxel, as in PyTorch's max_pool3d, whose values and indices this reproduces exactly
    (Testing/test_lrp_zennit.py). About 2x faster than max_pool3d on channels-last-3d input.
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


def _conv_t_single_channel(s, w):
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
