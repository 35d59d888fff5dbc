"""zennit 0.5.1 as the test-only LRP reference (LGPL-3.0; never imported by the product).

zennit imports ``torchvision.models.resnet`` at import time for its ResNet canonizers, and PyPI's
torchvision cannot load beside the CPU torch 2.13 wheel. zennit is therefore installed with
``--no-deps`` and, where torchvision does not import, the two ResNet block classes zennit names are
registered as empty placeholders (we never use zennit's torchvision canonizers).
"""

from __future__ import annotations

import sys
import types

import torch
from torch import nn


def import_zennit():
    try:
        import torchvision.models.resnet  # noqa: F401
    except Exception:
        for name in ("torchvision", "torchvision.models", "torchvision.models.resnet"):
            sys.modules.pop(name, None)
        tv = types.ModuleType("torchvision")
        models = types.ModuleType("torchvision.models")
        resnet = types.ModuleType("torchvision.models.resnet")
        resnet.BasicBlock = type("BasicBlock", (nn.Module,), {})
        resnet.Bottleneck = type("Bottleneck", (nn.Module,), {})
        tv.models, models.resnet = models, resnet
        sys.modules.update({"torchvision": tv, "torchvision.models": models, "torchvision.models.resnet": resnet})
    import zennit.attribution
    import zennit.canonizers
    import zennit.composites
    import zennit.rules
    import zennit.types

    return zennit


def sequential_copy(model) -> nn.Sequential:
    """The seed model as a Sequential of distinct modules, in forward order (what zennit expects)."""
    layers = []
    for conv, bn, mp in model.blocks():
        layers += [conv, bn, nn.ReLU(), mp]
    layers += [nn.Flatten(), model.dense_1, nn.ReLU(), model.dense_2]
    import copy

    return copy.deepcopy(nn.Sequential(*layers)).eval()


def composite_for(method: str, epsilon: float = 1e-6):
    zennit = import_zennit()
    rules, types_ = zennit.rules, zennit.types
    conv_rule, dense_rule = {
        "lrp-alpha1beta0": (rules.AlphaBeta(alpha=1.0, beta=0.0), rules.AlphaBeta(alpha=1.0, beta=0.0)),
        "lrp-epsilon": (rules.Epsilon(epsilon), rules.Epsilon(epsilon)),
        "lrp-composite": (rules.AlphaBeta(alpha=1.0, beta=0.0), rules.Epsilon(epsilon)),
    }[method]
    return zennit.composites.LayerMapComposite(
        layer_map=[
            (types_.Activation, rules.Pass()),
            (types_.Convolution, conv_rule),
            (torch.nn.Linear, dense_rule),
        ],
        canonizers=[zennit.canonizers.SequentialMergeBatchNorm()],
    )


def zennit_relevance(model, x: torch.Tensor, target: int, method: str) -> torch.Tensor:
    """Relevance of ``target`` for input x (1,1,D,H,W) with zennit's Gradient attributor."""
    zennit = import_zennit()
    seq = sequential_copy(model).to(x.dtype)
    composite = composite_for(method)
    with zennit.attribution.Gradient(model=seq, composite=composite) as attributor:
        out, rel = attributor(x, torch.eye(int(seq[-1].out_features), dtype=x.dtype)[[target]])
    return rel[0, 0].detach()
