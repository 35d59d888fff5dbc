"""The relevance rules, registered by name, and the composites (methods) that pick a rule per kind of layer.

A rule says how relevance (or the gradient) goes back through each kind of layer: a dense function, a conv
block function (conv, ReLU and max-pool together), what happens at the ReLU between the dense layers and at
the input. A method (``models.card.METHODS`` names them) is a composite: one rule for the conv blocks, one for
the dense layers, as zennit's composites map layer types to rules. A new rule is a new :func:`register_rule`
entry, a new method a new :func:`register_composite` entry (and its name in ``models.card.METHODS``); the
driver (:mod:`addiagnosis.explain.lrp`) does not change. The rules' maths and what each is good for:
docs/methods.md.

Rule functions get the engine (:class:`addiagnosis.explain.lrp.FastLRP`) for what they read besides the
relevance: its folded ``layers`` and ``dense`` layers, its ``kernels``, its ``reference`` activations and its
``epsilon`` and ``stabilizer``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

REFERENCE_ALPHA = 2.0  # alpha-beta rule of lrp-reference (beta = alpha - 1); the other reference rules: 1, 1.25


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


def _keep(r, _):
    return r


@dataclass(frozen=True)
class Rule:
    """How relevance (or the gradient) goes back through each kind of layer under one rule."""

    dense: Callable  # (engine, r, a, a_ref, layer) -> relevance at the dense layer's input a
    conv: Callable  # (engine, r_pooled, i, cache) -> relevance at the input of conv block i
    through_relu: Callable = _keep  # (r, pre-activation) between the two dense layers
    at_input: Callable = _keep  # (r, network input) last step (gradient x input multiplies)
    needs_reference: bool = False


RULES: dict[str, Rule] = {}
COMPOSITES: dict[str, tuple[str, str]] = {}  # method -> (rule for conv blocks, rule for dense layers)
REFERENCE_METHODS: list[str] = []  # methods that need FastLRP.set_reference (kept by register_composite)


def register_rule(name: str, rule: Rule) -> Rule:
    """Make ``rule`` available to composites under ``name``."""
    if name in RULES:
        raise ValueError(f"rule {name!r} is registered already")
    RULES[name] = rule
    return rule


def register_composite(method: str, conv: str, dense: str) -> None:
    """The method ``method``: rule ``conv`` on the conv blocks, rule ``dense`` on the dense layers."""
    missing = [n for n in (conv, dense) if n not in RULES]
    if missing or method in COMPOSITES:
        raise ValueError(f"method {method!r}: registered already or unknown rule(s) {missing}")
    COMPOSITES[method] = (conv, dense)
    if RULES[conv].needs_reference or RULES[dense].needs_reference:
        REFERENCE_METHODS.append(method)


def rules_of(method: str) -> tuple[Rule, Rule]:
    """(conv rule, dense rule) of ``method``."""
    conv, dense = COMPOSITES[method]
    return RULES[conv], RULES[dense]


def stab(z: torch.Tensor, eps: float) -> torch.Tensor:
    """z + eps * sign(z), with sign(0) = +1 (zennit's Stabilizer)."""
    return z + torch.where(z >= 0, eps, -eps)


# ------------------------------------------------------------------------------------------ dense layers
# (engine, relevance at the layer's outputs, its input a, the reference scan's input a_ref or None) -> at a
def dense_epsilon(engine, r, a, a_ref, layer):
    z = F.linear(a, layer.w, layer.b)
    return a * ((r / stab(z, engine.epsilon)) @ layer.w)


def dense_alphabeta(engine, r, a, a_ref, layer):
    # inputs of both dense layers are post-ReLU (>= 0): only x+ w+ contributes
    z = F.linear(a, layer.w_pos, layer.b_pos)
    return a * ((r / stab(z, engine.stabilizer)) @ layer.w_pos)


def dense_gradient(engine, r, a, a_ref, layer):
    return r @ layer.w


def dense_reference(engine, r, a, a_ref, layer, alpha: float = REFERENCE_ALPHA):
    return reference_rule(engine, r, a - a_ref, layer, F.linear, lambda s, w: s @ w, alpha=alpha)


def reference_rule(engine, r, da, layer, z_of, spread, expand=None, alpha: float = REFERENCE_ALPHA):
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
        s = r / stab(z, engine.stabilizer)
        del z
        if expand is not None:
            s = expand(s)
        part = dp * spread(s, w_a)
        part += dn * spread(s, w_b)
        out = part.mul_(coef) if out is None else out.sub_(part.mul_(coef))
    return out


# ------------------------------------------------------------------------------------------ conv blocks
# (engine, relevance at the block's pooled outputs, block index, forward cache) -> at the block's input
def conv_reference(engine, r_pooled, i, cache: ForwardCache, alpha: float = REFERENCE_ALPHA):
    """Conv block of ``lrp-reference``: max-pool routes to x's winners, then alpha-beta on da = a - a_ref."""
    k = engine.kernels
    layer, a_in, first = engine.layers[i], cache.conv_inputs[i], i == 0
    idx, shape = cache.indices[i], cache.pre_pool_shapes[i]

    def z_of(x, w):
        return k.conv(x, w, None, first).flatten(2).gather(2, idx.flatten(2)).view_as(idx)

    return reference_rule(
        engine, r_pooled, a_in - engine.reference.conv_inputs[i], layer, z_of,
        spread=lambda s, w: k.conv_t(s, w, a_in, first),
        expand=lambda s: k.unpool(s, idx, shape, f"unpool{i}"), alpha=alpha)


def conv_epsilon(engine, r_pooled, i, cache: ForwardCache):
    layer, a_in, a_pooled = engine.layers[i], cache.conv_inputs[i], cache.pooled[i]
    # z at the winning voxels equals the pooled activation where it is > 0; elsewhere R = 0
    s = torch.where(a_pooled > 0, r_pooled / stab(a_pooled, engine.epsilon), 0.0)
    s_full = engine.kernels.unpool(s, cache.indices[i], cache.pre_pool_shapes[i], f"unpool{i}")
    return a_in * engine.kernels.conv_t(s_full, layer.w, a_in, i == 0)


def conv_alphabeta(engine, r_pooled, i, cache: ForwardCache):
    k = engine.kernels
    layer, a_in, idx, first = engine.layers[i], cache.conv_inputs[i], cache.indices[i], i == 0
    x_neg = None
    if first and cache.input_has_negative:
        x_pos, x_neg = a_in.clamp(min=0), a_in.clamp(max=0)
        z = k.conv(x_pos, layer.w_pos, layer.b_pos, first)
        z += k.conv(x_neg, layer.w_neg, None, first)
    else:
        x_pos = a_in
        # the forward pass left this input depth-stacked in the planes buffer, unless another one replaced it
        z = k.conv(a_in, layer.w_pos, layer.b_pos, first, planes=k.planes_of(cache.generation) if first else None)
    z_win = z.flatten(2).gather(2, idx.flatten(2)).view_as(idx)
    del z
    s_full = k.unpool(r_pooled / stab(z_win, engine.stabilizer), idx, cache.pre_pool_shapes[i], f"unpool{i}")
    out = x_pos * k.conv_t(s_full, layer.w_pos, a_in, first)
    if x_neg is not None:
        out += x_neg * k.conv_t(s_full, layer.w_neg, a_in, first)
    return out


def _backprop(engine, r_pooled, i, cache: ForwardCache, through_relu):
    """Gradient (or guided gradient) through pooling, ReLU (mask z > 0 == winning activation > 0), conv."""
    g = through_relu(r_pooled, cache.pooled[i])
    g = engine.kernels.unpool(g, cache.indices[i], cache.pre_pool_shapes[i], f"unpool{i}")
    return engine.kernels.conv_t(g, engine.layers[i].w, cache.conv_inputs[i], i == 0)


def relu_gradient(r, pre):
    """Gradient through a ReLU whose input (or, after max-pooling, winning output) is ``pre``."""
    return r * (pre > 0)


def relu_guided(r, pre):
    """Guided backprop: the ReLU's gradient, negative values dropped."""
    return relu_gradient(r, pre).clamp(min=0)


def conv_gradient(engine, r_pooled, i, cache: ForwardCache):
    return _backprop(engine, r_pooled, i, cache, relu_gradient)


def conv_guided(engine, r_pooled, i, cache: ForwardCache):
    return _backprop(engine, r_pooled, i, cache, relu_guided)


def times_input(r, x):
    return r * x


def reference_rule_with(alpha: float) -> Rule:
    """The reference rule with alpha-beta ``alpha``, beta = alpha - 1, on the conv blocks and the dense layers."""
    return Rule(functools.partial(dense_reference, alpha=alpha), functools.partial(conv_reference, alpha=alpha),
                needs_reference=True)


# ------------------------------------------------------------------------------------------ the registry
register_rule("epsilon", Rule(dense_epsilon, conv_epsilon))
register_rule("alphabeta", Rule(dense_alphabeta, conv_alphabeta))  # alpha=1, beta=0
register_rule("reference", Rule(dense_reference, conv_reference, needs_reference=True))
register_rule("reference-alpha1beta0", reference_rule_with(1.0))
register_rule("reference-alpha1.25beta0.25", reference_rule_with(1.25))  # the bundled model's default (issue 19)
register_rule("gradient", Rule(dense_gradient, conv_gradient, relu_gradient, times_input))
register_rule("guided", Rule(dense_gradient, conv_guided, relu_guided))

register_composite("lrp-reference-alpha1.25beta0.25", "reference-alpha1.25beta0.25", "reference-alpha1.25beta0.25")
register_composite("lrp-reference-alpha1beta0", "reference-alpha1beta0", "reference-alpha1beta0")
register_composite("lrp-reference", "reference", "reference")
register_composite("lrp-alpha1beta0", "alphabeta", "alphabeta")
register_composite("lrp-epsilon", "epsilon", "epsilon")
register_composite("lrp-composite", "alphabeta", "epsilon")  # epsilon on dense layers, alpha1-beta0 on convs
register_composite("gradient-x-input", "gradient", "gradient")
register_composite("guided-backprop", "guided", "guided")
