"""Our LRP against zennit 0.5.1 (test-only reference), conservation, gradient checks, determinism."""

from __future__ import annotations

import pytest
import torch

from addiagnosis.explain.lrp import FastLRP
from addiagnosis.models.card import METHODS

from conftest import random_model
from zennit_ref import zennit_relevance

LRP_METHODS = ["lrp-alpha1beta0", "lrp-epsilon", "lrp-composite"]


def _input(dtype, positive, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((1, 1, 80, 88, 80), generator=g, dtype=torch.float64)
    return (x.abs() if positive else x).to(dtype)


def _rel_l2(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("method", LRP_METHODS)
@pytest.mark.parametrize("positive", [True, False], ids=["nonneg-input", "signed-input"])
def test_matches_zennit_float64(method, positive):
    model = random_model().double()
    x = _input(torch.float64, positive)
    engine = FastLRP(model, dtype=torch.float64)
    ours = engine.relevance(engine.forward(x), 4, method)
    ref = zennit_relevance(model, x, 4, method)
    # zennit keeps the merged BatchNorm as x/sqrt(1+eps) (4 layers: ~2e-5); the rest is rounding
    assert _rel_l2(ours, ref) < 2e-4
    assert torch.nn.functional.cosine_similarity(ours.flatten(), ref.flatten(), dim=0) > 0.99999
    assert abs(float(ours.sum() - ref.sum())) < 1e-3 * float(ref.abs().sum())


@pytest.mark.parametrize("method", LRP_METHODS)
def test_matches_zennit_float32(method):
    model = random_model(seed=3)
    x = _input(torch.float32, True, seed=2)
    engine = FastLRP(model)
    ours = engine.relevance(engine.forward(x), 0, method)
    ref = zennit_relevance(model, x, 0, method)
    assert torch.nn.functional.cosine_similarity(ours.flatten(), ref.flatten(), dim=0) > 0.9999
    assert _rel_l2(ours, ref) < 1e-3


@pytest.mark.parametrize("method", ["lrp-alpha1beta0", "lrp-epsilon", "lrp-composite"])
def test_conservation_without_biases(method):
    """With all biases zero these rules conserve relevance: the map sums to the unit output relevance."""
    model = random_model(seed=5, zero_bias=True).double()
    x = _input(torch.float64, True, seed=4)
    engine = FastLRP(model, dtype=torch.float64, epsilon=1e-9, stabilizer=1e-12)
    rel = engine.relevance(engine.forward(x), 2, method)
    assert float(rel.sum()) == pytest.approx(1.0, abs=1e-6)


def test_alpha1beta0_is_nonnegative_for_nonnegative_input():
    model = random_model(seed=6)
    x = _input(torch.float32, True)
    engine = FastLRP(model)
    rel = engine.relevance(engine.forward(x), 1, "lrp-alpha1beta0")
    assert float(rel.min()) >= 0.0 and float(rel.max()) > 0.0


def test_gradient_methods_match_autograd():
    model = random_model(seed=7).double()
    x = _input(torch.float64, False)
    engine = FastLRP(model, dtype=torch.float64)
    cache = engine.forward(x)
    xg = x.clone().requires_grad_(True)
    model(xg)[0, 3].backward()
    gxi = engine.relevance(cache, 3, "gradient-x-input")
    assert _rel_l2(gxi, (xg.grad * x)[0, 0]) < 1e-10
    # logits of the folded network equal the module's (BatchNorm folded into the convolutions)
    with torch.no_grad():
        assert torch.allclose(cache.logits, model(x), rtol=1e-10, atol=1e-12)
    guided = engine.relevance(cache, 3, "guided-backprop")
    assert guided.shape == x.shape[2:] and float(guided.abs().sum()) > 0


def test_deterministic_bits():
    model = random_model(seed=8)
    x = _input(torch.float32, True)
    a = FastLRP(model)
    b = FastLRP(model)
    ca, cb = a.forward(x), b.forward(x)
    for engine in (a, b):  # after the forward passes: the cached planes must not be mixed up either
        engine.set_reference(_input(torch.float32, True, seed=3))
    assert torch.equal(ca.logits, cb.logits)
    for method in METHODS:
        assert torch.equal(a.relevance(ca, 4, method), b.relevance(cb, 4, method)), method


def test_float32_logits_close_to_module():
    model = random_model(seed=9)
    x = _input(torch.float32, True)
    with torch.no_grad():
        ref = model(x)
    got = FastLRP(model).forward(x).logits
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_bad_method_and_target():
    model = random_model(seed=10)
    engine = FastLRP(model)
    cache = engine.forward(_input(torch.float32, True))
    with pytest.raises(ValueError):
        engine.relevance(cache, 0, "lrp-nonsense")
    with pytest.raises(ValueError):
        engine.relevance(cache, 5, "lrp-epsilon")


@pytest.mark.parametrize("k", [2, 3])
def test_two_stage_pool_equals_max_pool3d_with_ties(k):
    from addiagnosis.explain.kernels import max_pool_planes

    g = torch.Generator().manual_seed(k)
    z = torch.randint(0, 4, (1, 3, 13, 17, 16), generator=g).float()  # many ties
    z[:, :, :4] = 0.0  # all-zero windows (ReLU output)
    want_v, want_i = torch.nn.functional.max_pool3d(z, k, return_indices=True)
    planes = z[0].permute(1, 0, 2, 3).contiguous(memory_format=torch.channels_last)
    got_v, got_i = max_pool_planes(planes, k)
    assert torch.equal(got_v, want_v)
    assert torch.equal(got_i, want_i)


def test_interleaved_forward_calls_do_not_mix_buffers():
    """The engine re-uses scratch buffers; a cache from an earlier forward() must still be explained right."""
    model = random_model(seed=11)
    x1, x2 = _input(torch.float32, True, seed=21), _input(torch.float32, False, seed=22)
    engine = FastLRP(model)
    c1 = engine.forward(x1)
    c2 = engine.forward(x2)
    for method in ("lrp-alpha1beta0", "lrp-epsilon"):
        got1, got2 = engine.relevance(c1, 2, method), engine.relevance(c2, 2, method)
        fresh = FastLRP(model)
        assert torch.equal(got1, fresh.relevance(fresh.forward(x1), 2, method)), method
        fresh = FastLRP(model)
        assert torch.equal(got2, fresh.relevance(fresh.forward(x2), 2, method)), method
