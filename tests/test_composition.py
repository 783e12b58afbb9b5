"""The method math (docs/METHOD.md, steps 3-7) against hand-computed cases and an independent reference."""

import math

import pytest
import torch

from lib_loratorio.composition import (
    blend,
    compose,
    composite,
    patch_similarity,
    patch_weights,
    recentred_uncond,
    softmin_weights,
    switch_branch,
)
from lib_loratorio.errors import InvalidParameterError, NonFiniteError


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_similarity_hand_computed_one_patch():
    base = t([[[[1, 0], [0, 0]]]])                          # [B=1, C=1, 2, 2]
    loras = torch.stack([t([[[[2, 0], [0, 0]]]]), t([[[[0, 1], [0, 0]]]]), t([[[[1, 1], [0, 0]]]])])
    sim = patch_similarity(loras, base, patch_size=2)
    assert sim.shape == (3, 1, 1, 1)
    assert sim.flatten().tolist() == pytest.approx([1.0, 0.0, 1 / math.sqrt(2)])


def test_similarity_spans_all_channels():
    base = t([[[[1]], [[0]]]])                              # C=2, one pixel
    lora = t([[[[1]], [[1]]]]).unsqueeze(0)
    assert patch_similarity(lora, base, 1).item() == pytest.approx(1 / math.sqrt(2))


def test_partial_border_patch_uses_only_existing_pixels():
    # W=6, d=4: the second patch holds columns 4 and 5 only. Replicate padding would count
    # column 5 three times (cos 0.5); the method compares the two real pixels (cos 1/sqrt 2).
    base = t([[[[0, 0, 0, 1, 1, 0]]]])
    lora = t([[[[0, 0, 0, 1, 1, 1]]]]).unsqueeze(0)
    sim = patch_similarity(lora, base, patch_size=4)
    assert sim.shape == (1, 1, 1, 2)
    assert sim[0, 0, 0, 0].item() == pytest.approx(1.0)
    assert sim[0, 0, 0, 1].item() == pytest.approx(1 / math.sqrt(2))


def test_zero_patch_is_finite():
    sim = patch_similarity(torch.zeros(2, 1, 4, 3, 3), torch.zeros(1, 4, 3, 3), 2)
    assert torch.isfinite(sim).all() and (sim == 0).all()


def test_softmin_hand_computed():
    sim = t([1.0, 0.0]).view(2, 1, 1, 1)
    w = softmin_weights(sim, temperature=1.0).flatten()
    e = math.exp(-1)
    assert w.tolist() == pytest.approx([e / (1 + e), 1 / (1 + e)])


def test_single_lora_gets_weight_exactly_one():
    base, lora = torch.randn(2, 4, 9, 7), torch.randn(1, 2, 4, 9, 7)
    w = patch_weights(lora, base, patch_size=4, temperature=0.01)
    assert (w == 1).all()


def test_top_k_per_patch_and_global_hand_computed():
    # three LoRAs, two patches (h=1, w=2)
    sim = t([[[[0.10, 0.90]]], [[[0.60, 0.60]]], [[[0.95, 0.20]]]])
    tau = 0.1
    per_patch = softmin_weights(sim, tau, top_k=2, selection="patch")
    # patch 0 keeps LoRAs 1 and 2 (0.10, 0.60); patch 1 keeps LoRAs 3 and 2 (0.20, 0.60)
    def pair(gap):  # softmax of two logits gap/tau apart: (larger, smaller)
        return 1 / (1 + math.exp(-gap / tau)), math.exp(-gap / tau) / (1 + math.exp(-gap / tau))

    assert per_patch[:, 0, 0, 0].tolist() == pytest.approx([*pair(0.5), 0.0])
    assert per_patch[:, 0, 0, 1].tolist() == pytest.approx([0.0, pair(0.4)[1], pair(0.4)[0]])
    # global means: 0.5, 0.6, 0.575 -> k=1 keeps LoRA 1 everywhere, k=2 keeps LoRAs 1 and 3
    glob1 = softmin_weights(sim, tau, top_k=1, selection="global")
    assert glob1[:, 0, 0].tolist() == [[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]
    glob2 = softmin_weights(sim, tau, top_k=2, selection="global")
    assert glob2[:, 0, 0, 0].tolist() == pytest.approx([pair(0.85)[0], 0.0, pair(0.85)[1]])
    assert glob2[:, 0, 0, 1].tolist() == pytest.approx([pair(0.7)[1], 0.0, pair(0.7)[0]])
    # per-patch k=1 is the hard argmin
    hard = softmin_weights(sim, tau, top_k=1, selection="patch")
    assert hard[:, 0, 0].tolist() == [[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]


def test_top_k_not_smaller_than_n_is_no_mask():
    sim = torch.rand(3, 2, 4, 4)
    assert torch.equal(softmin_weights(sim, 0.05, top_k=3), softmin_weights(sim, 0.05))


def test_recentring_hand_computed():
    weights = t([0.25, 0.75]).view(2, 1, 1, 1)
    base_u = torch.full((1, 1, 1, 1), 2.0)
    lora_u = torch.stack([torch.full((1, 1, 1, 1), 4.0), torch.zeros(1, 1, 1, 1)])
    assert recentred_uncond(weights, base_u, lora_u, 0.5).item() == pytest.approx(1.5)
    assert recentred_uncond(weights, base_u, lora_u, 0.0).item() == pytest.approx(1.0)
    assert recentred_uncond(weights, base_u, None, 1.0) is base_u
    with pytest.raises(InvalidParameterError, match="lora_uncond"):
        recentred_uncond(weights, base_u, None, 0.5)


def test_compose_without_uncond_for_distilled_models():
    res = compose(torch.randn(1, 16, 8, 8), None, torch.randn(2, 1, 16, 8, 8), None, patch_size=2, temperature=0.1)
    assert res.uncond is None and res.cond.shape == (1, 16, 8, 8)


def reference_compose(base_c, base_u, lora_c, lora_u, d, tau, recenter):
    """Independent reference: patch ids by index arithmetic and scatter sums, no padding or reshapes."""
    n, b, c, h, w = lora_c.shape
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pw = -(-w // d)
    pid = ((ys // d) * pw + xs // d).flatten()
    n_p = int(pid.max()) + 1

    def patch_sum(v):  # [..., C, H, W] -> [..., P]
        flat = v.double().sum(-3).flatten(-2)
        return torch.zeros(*flat.shape[:-1], n_p, dtype=torch.float64).index_add_(-1, pid, flat)

    base = base_c.double()
    dot = patch_sum(lora_c.double() * base)
    na = patch_sum(lora_c.double() ** 2).sqrt()
    nb = patch_sum(base ** 2).sqrt()
    sim = dot / (na * nb)
    weights = torch.softmax(-sim / tau, dim=0)[..., pid].view(n, b, 1, h, w)
    cond = (weights * lora_c.double()).sum(0)
    uncond = recenter * base_u.double() + (1 - recenter) * (weights * lora_u.double()).sum(0)
    return cond, uncond, weights.squeeze(2)


@pytest.mark.parametrize("shape", [(4, 64, 64), (4, 128, 128), (4, 128, 96), (16, 32, 40)])
@pytest.mark.parametrize("d", [1, 2, 4, 8, 16, 7])
def test_compose_matches_reference_on_latent_shapes(shape, d):
    g = torch.Generator().manual_seed(hash((shape, d)) % 2**31)
    n, b = 3, 2
    base_c, base_u = torch.randn(b, *shape, generator=g), torch.randn(b, *shape, generator=g)
    lora_c = base_c + 0.3 * torch.randn(n, b, *shape, generator=g)
    lora_u = base_u + 0.3 * torch.randn(n, b, *shape, generator=g)
    res = compose(base_c, base_u, lora_c, lora_u, patch_size=d, temperature=0.05, recenter=0.5)
    cond, uncond, weights = reference_compose(base_c, base_u, lora_c, lora_u, d, 0.05, 0.5)
    assert torch.allclose(res.weights.double(), weights, atol=1e-4)
    assert torch.allclose(res.cond.double(), cond, atol=1e-4)
    assert torch.allclose(res.uncond.double(), uncond, atol=1e-4)


def test_weights_sum_to_one_and_keep_dtype():
    base = torch.randn(2, 4, 30, 22).half()
    loras = (base.float() + torch.randn(5, 2, 4, 30, 22)).half()
    res = compose(base, base, loras, loras, patch_size=8, temperature=0.05)
    assert res.weights.shape == (5, 2, 30, 22)
    assert torch.allclose(res.weights.sum(0), torch.ones(2, 30, 22), atol=1e-6)
    assert res.cond.dtype == torch.float16 and res.uncond.dtype == torch.float16


def test_large_temperature_is_the_uniform_average():
    base, loras = torch.randn(1, 4, 16, 16), torch.randn(4, 1, 4, 16, 16)
    res = compose(base, base, loras, loras, patch_size=4, temperature=1e6, recenter=0.0)
    assert torch.allclose(res.cond, loras.mean(0), atol=1e-5)
    assert torch.allclose(res.cond, composite(loras).cond, atol=1e-5)


def test_copies_of_the_base_compose_to_the_base():
    base_c, base_u = torch.randn(2, 4, 24, 24), torch.randn(2, 4, 24, 24)
    res = compose(base_c, base_u, base_c.expand(3, -1, -1, -1, -1), base_u.expand(3, -1, -1, -1, -1),
                  patch_size=8, temperature=0.05)
    assert torch.allclose(res.cond, base_c, atol=1e-6) and torch.allclose(res.uncond, base_u, atol=1e-6)


def test_composing_x0_equals_composing_eps():
    x, sigma = torch.randn(1, 4, 16, 16) * 3, 2.5
    eps_0, eps_i = torch.randn(1, 4, 16, 16), torch.randn(3, 1, 4, 16, 16)
    eps_res = compose(eps_0, eps_0, eps_i, eps_i, patch_size=4, temperature=0.05)
    # x0 = x - sigma * eps; the weights come from x - x0 (proportional to eps), the blend acts on x0
    w = patch_weights(x - (x - sigma * eps_i), x - (x - sigma * eps_0), patch_size=4, temperature=0.05)
    x0 = blend(w, x - sigma * eps_i)
    assert torch.allclose(w, eps_res.weights, atol=1e-5)
    assert torch.allclose(x0, x - sigma * eps_res.cond, atol=1e-5)


def test_nan_names_the_branch():
    base, loras = torch.randn(1, 4, 8, 8), torch.randn(3, 1, 4, 8, 8)
    loras[1, 0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="LoRA branch 2 produced NaN or inf in its conditional prediction"):
        compose(base, base, loras, loras.clone().nan_to_num(), patch_size=4, temperature=0.1)
    bad_u = torch.randn(3, 1, 4, 8, 8)
    bad_u[2] = float("inf")
    with pytest.raises(NonFiniteError, match="LoRA branch 3 produced NaN or inf in its unconditional prediction"):
        compose(base, base, loras.nan_to_num(), bad_u, patch_size=4, temperature=0.1)


def test_bad_arguments_are_named():
    base, loras = torch.randn(1, 4, 8, 8), torch.randn(2, 1, 4, 8, 8)
    with pytest.raises(InvalidParameterError, match="temperature"):
        compose(base, None, loras, None, patch_size=4, temperature=0)
    with pytest.raises(InvalidParameterError, match="patch_size"):
        compose(base, None, loras, None, patch_size=0, temperature=0.1)
    with pytest.raises(InvalidParameterError, match="lora_cond"):
        compose(base, None, loras[:, :, :2], None, patch_size=4, temperature=0.1)


def test_switch_rotates_every_k_steps():
    assert [switch_branch(s, 3, 5) for s in range(0, 35, 5)] == [0, 1, 2, 0, 1, 2, 0]
    assert [switch_branch(s, 2, 5) for s in range(6)] == [0, 0, 0, 0, 0, 1]
    with pytest.raises(InvalidParameterError):
        switch_branch(0, 2, 0)


def test_owner_weights_give_the_owner_full_strength_and_blend_adds_changes():
    from lib_loratorio.composition import blend, owner_weights

    w = torch.tensor([0.6, 0.3, 0.1]).reshape(3, 1, 1, 1)
    torch.testing.assert_close(owner_weights(w).flatten(), torch.tensor([1.0, 0.5, 1 / 6]))
    uniform = torch.full((4, 1, 1, 1), 0.25)
    torch.testing.assert_close(owner_weights(uniform).flatten(), torch.ones(4))     # undecided: every LoRA fully
    base = torch.tensor([1.0]).reshape(1, 1, 1, 1)
    branches = torch.tensor([3.0, 0.0, 2.0]).reshape(3, 1, 1, 1, 1)
    # base + 1*(3-1) + 0.5*(0-1) + 1/6*(2-1) = 1 + 2 - 0.5 + 1/6
    assert blend(owner_weights(w), branches, base).item() == pytest.approx(1 + 2 - 0.5 + 1 / 6)
    # with weights summing to 1 the relative blend is the paper's blend
    torch.testing.assert_close(blend(w, branches, base), blend(w, branches))
