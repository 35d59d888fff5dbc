"""lrp-reference(-alpha1beta0): LRP alpha2-beta1 (alpha1-beta0) on the differences from a reference input (the
template for template models).

Checked against a plain, slow implementation written here from the rule (float64, torch conv3d on the
unfolded modules), for properties that must hold (conservation, zero at the reference), through the engine
(the model card's recommended method, a clear error where a model has no reference), and on the bundled
model, where it must find the simulated atrophy far better than plain LRP.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from addiagnosis.errors import AddiagnosisError
from addiagnosis.explain.lrp import FastLRP
from addiagnosis.resources import BUNDLED_MODELS_DIR

from conftest import GRID, random_model

NEW = "lrp-reference-alpha1.25beta0.25"  # the bundled model's recommended method (issue 19 item 4)


def _inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((1, 1, *GRID), generator=g, dtype=torch.float64) * 1.5
    ref = (x + 0.3 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1.5)
    return x, ref


def _slow_reference_lrp(model, x, ref, target, alpha=2.0, eps=1e-12):
    """The rule, layer by layer, without any of FastLRP's machinery."""
    beta = alpha - 1.0

    def activations(inp):
        acts, a = [], inp
        for conv, bn, pool in model.blocks():
            acts.append(a)
            z = bn(conv(a)).relu()
            a = F.max_pool3d(z, pool.kernel_size)
        flat = a.reshape(1, -1)
        hidden = model.dense_1(flat).relu()
        return acts, a.shape, flat, hidden

    def split(da, w):
        return da.clamp(min=0), da.clamp(max=0), w.clamp(min=0), w.clamp(max=0)

    def stab(z):
        return z + torch.where(z >= 0, eps, -eps)

    with torch.no_grad():
        acts_x, pooled_shape, flat_x, hid_x = activations(x)
        acts_r, _, flat_r, hid_r = activations(ref)
        r = torch.zeros((1, model.dense_2.out_features), dtype=x.dtype)
        r[0, target] = 1.0
        for da, w in ((hid_x - hid_r, model.dense_2.weight), (flat_x - flat_r, model.dense_1.weight)):
            dp, dn, wp, wn = split(da, w)
            zp = dp @ wp.T + dn @ wn.T
            zn = dp @ wn.T + dn @ wp.T
            r = alpha * (dp * ((r / stab(zp)) @ wp) + dn * ((r / stab(zp)) @ wn)) \
                - beta * (dp * ((r / stab(zn)) @ wn) + dn * ((r / stab(zn)) @ wp))
        r = r.reshape(pooled_shape)
        blocks = list(model.blocks())
        for i in reversed(range(len(blocks))):
            conv, bn, pool = blocks[i]
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            w = conv.weight * scale[:, None, None, None, None]
            z_x = bn(conv(acts_x[i])).relu()
            _, idx = F.max_pool3d(z_x, pool.kernel_size, return_indices=True)
            da = acts_x[i] - acts_r[i]
            dp, dn, wp, wn = split(da, w)
            out = torch.zeros_like(da)
            for coef, wa, wb in ((alpha, wp, wn), (-beta, wn, wp)):
                z = F.conv3d(dp, wa) + F.conv3d(dn, wb)
                z_win = z.flatten(2).gather(2, idx.flatten(2)).view_as(idx)
                s = torch.zeros_like(z)
                s.flatten(2).scatter_(2, idx.flatten(2), (r / stab(z_win)).flatten(2))
                out += coef * (dp * F.conv_transpose3d(s, wa) + dn * F.conv_transpose3d(s, wb))
            r = out
    return r[0, 0]


@pytest.mark.parametrize("method,alpha", [("lrp-reference", 2.0), ("lrp-reference-alpha1beta0", 1.0),
                                          ("lrp-reference-alpha1.25beta0.25", 1.25)])
def test_matches_the_rule_float64(method, alpha):
    model = random_model(seed=2).double()
    x, ref = _inputs()
    engine = FastLRP(model, dtype=torch.float64, stabilizer=1e-12)
    engine.set_reference(ref)
    ours = engine.relevance(engine.forward(x), 4, method)
    slow = _slow_reference_lrp(model, x, ref, 4, alpha=alpha)
    assert ours.shape == x.shape[2:]
    assert float((ours - slow).norm() / slow.norm()) < 1e-9
    # alpha - beta = 1 and the biases cancel in the differences: the map sums to the unit output relevance
    assert float(ours.sum()) == pytest.approx(1.0, abs=1e-3)
    if alpha == 1.0:  # beta = 0: only positive contributions pass relevance on, so none of it is negative
        assert float(ours.min()) >= 0.0


def test_alpha_sets_how_much_negative_relevance_passes():
    """The three reference rules on one scan: all conserve the output relevance; the negative share grows with
    beta = alpha - 1 (none at alpha 1, a little at 1.25, as much as the positive surplus at 2), and alpha 1.25's
    map lies between the other two, nearer alpha 1's."""
    model = random_model(seed=5).double()
    x, ref = _inputs(seed=5)
    engine = FastLRP(model, dtype=torch.float64, stabilizer=1e-12)
    engine.set_reference(ref)
    cache = engine.forward(x)
    maps = {a: engine.relevance(cache, 2, m) for a, m in ((1.0, "lrp-reference-alpha1beta0"),
                                                        (1.25, "lrp-reference-alpha1.25beta0.25"),
                                                        (2.0, "lrp-reference"))}
    neg = {a: float(-r.clamp(max=0).sum()) for a, r in maps.items()}
    for r in maps.values():
        assert float(r.sum()) == pytest.approx(1.0, abs=1e-6)
    assert neg[1.0] == 0.0 and 0.005 < neg[1.25] < 0.1 and neg[2.0] > 0.5, neg  # measured 0, 0.028, 1.04

    def cos(a, b):
        return float(F.cosine_similarity(maps[a].flatten(), maps[b].flatten(), dim=0))

    assert cos(1.25, 1.0) < 0.9999 and cos(1.25, 2.0) < 0.9999  # a map of its own
    assert cos(1.25, 1.0) > cos(1.25, 2.0) > cos(1.0, 2.0)  # measured 0.97, 0.68, 0.55


def test_float32_engine_agrees_and_reference_itself_gets_nothing():
    model = random_model(seed=4)
    x, ref = (t.float() for t in _inputs(seed=3))
    engine = FastLRP(model)
    engine.set_reference(ref)
    ours = engine.relevance(engine.forward(x), 1, "lrp-reference").double()
    slow = _slow_reference_lrp(model.double(), x.double(), ref.double(), 1)
    assert F.cosine_similarity(ours.flatten(), slow.flatten(), dim=0) > 0.9999
    at_ref = engine.relevance(engine.forward(ref), 1, "lrp-reference")
    assert torch.isfinite(at_ref).all() and float(at_ref.abs().max()) == 0.0
    # only voxels that differ from the reference can carry relevance
    x2 = ref.clone()
    x2[..., 30:50, 30:50, 30:50] += 0.5
    rel = engine.relevance(engine.forward(x2), 1, "lrp-reference")
    outside = torch.ones_like(rel, dtype=torch.bool)
    outside[30:50, 30:50, 30:50] = False
    assert float(rel[outside].abs().max()) == 0.0 and float(rel.abs().sum()) > 0


def test_needs_a_reference():
    engine = FastLRP(random_model(seed=1))
    cache = engine.forward(torch.rand((1, 1, *GRID)))
    with pytest.raises(ValueError, match="reference"):
        engine.relevance(cache, 0, "lrp-reference")


def test_engine_method_choice(tiny_package):
    from addiagnosis.engine import Diagnoser

    d = Diagnoser(str(tiny_package))  # kind "physical": no reference defined
    assert d.resolve_method("auto") == "lrp-alpha1beta0" and d.resolve_method(None) == "lrp-alpha1beta0"
    with pytest.raises(AddiagnosisError, match="reference scan.*choose another method") as err:
        d.resolve_method("lrp-reference")
    assert "\n" not in str(err.value)
    with pytest.raises(AddiagnosisError, match="unknown method"):
        d.resolve_method("lrp-magic")


@pytest.mark.skipif(not BUNDLED_MODELS_DIR.exists(), reason="bundled demo model not present")
@pytest.mark.parametrize("atrophy", ["default", "erode"])
def test_bundled_default_method_finds_the_atrophy_and_is_stable(atrophy):
    """One fresh AD subject of each atrophy model (a seed never used for the bundled cohorts): the recommended
    method puts far more of its positive relevance in the true atrophy than plain LRP, and gives nearly the same
    map for the same scan stored on another grid (resampled twin) and under 1 % input noise."""
    from addiagnosis.engine import Diagnoser
    from addiagnosis.metrics import relevance_mass_accuracy
    from addiagnosis.research import stability, synth

    params = {**synth.subject_params(77, 3, "AD", {"atrophy": atrophy, **synth.WIDE_VARIETY}),
              "participant_id": "check"}
    scan, mask, _ = synth.make_subject(params)
    d = Diagnoser()
    assert d.recommended_method == NEW
    res = d.run(scan, None, "AD")
    assert res.method == NEW
    assert res.relevance.array.shape == scan.shape and np.array_equal(res.relevance.ijk_to_ras, scan.ijk_to_ras)
    rel = res.relevance.array
    assert -rel[rel < 0].sum() < 0.05 * rel[rel > 0].sum()  # beta 0.25: a little negative relevance (measured 1 %)
    share = relevance_mass_accuracy(res.relevance.array, mask.array > 0)
    plain = relevance_mass_accuracy(d.run(scan, "lrp-alpha1beta0", "AD").relevance.array, mask.array > 0)
    assert share > 0.4 and share > plain + 0.05, (share, plain)  # measured: 0.62 vs 0.48 (A), 0.54 vs 0.26 (B)
    assert res.summary["positive_fraction_in_brain"] > 0.95
    st = stability.subject_stability(d, scan, [NEW], "AD")[NEW]
    assert st["flip"] > 0.95 and st["resample"] > 0.9 and st["noise_1pct"] > 0.95, st  # measured 0.97, 0.94, 0.98 (A)
