"""The published peers as benchmark methods (composbench/peers) and the oracle regions (composbench/regions.py).

Each peer runs on small compositions at 4 steps through Bench.sample; its UNet rows per image are
what the method implies; each peer's core rule is checked by hand on tiny inputs. Nothing here says
which method wins.
"""

import numpy as np
import pytest
import torch

from composbench import world
from composbench.model import ARTIFACTS, lora_path

needs_artifacts = pytest.mark.skipif(
    not (ARTIFACTS / "base.safetensors").is_file() or not all(lora_path(c).is_file() for c in world.ALL_CONCEPTS),
    reason="composbench artifacts missing: run `python -m composbench.train`")

STEPS = 4
COMPS = (("zorbot", "tophat"), ("kittra", "pixelart", "starnight"))


@pytest.fixture(scope="module")
def bench():
    torch.set_num_threads(1)
    from composbench.sampling import Bench
    return Bench()


def _method(peer, **options):
    from composbench.sampling import Method
    return Method(peer, "peer", mode=peer, options=tuple(options.items()))


def _sample(bench, peer, comp, seeds=(111,), **options):
    imgs, info = bench.sample(_method(peer, **options), comp, list(seeds), steps=STEPS, strength=0.8)
    assert imgs.shape == (len(seeds), 3, world.SIZE, world.SIZE)
    assert bool(torch.isfinite(imgs).all()) and float(imgs.abs().max()) <= 1.0
    assert imgs.std() > 0.05  # not a flat image
    assert info["seconds_per_image"] > 0
    return imgs, info


# --- every peer end to end, and its cost ---------------------------------------------------------------
@needs_artifacts
@pytest.mark.parametrize("comp", COMPS)
def test_klora_runs_at_merges_cost(bench, comp):
    _, info = _sample(bench, "K-LoRA", comp, seeds=(111, 112))
    assert info["evals_per_image"] == 2 * STEPS
    shares = np.array(info["klora_layer_share"])
    assert shares.shape == (STEPS, len(comp)) and np.allclose(shares.sum(1), 1)
    if "pixelart" in comp:  # the style's time scale grows: it wins at least as many layers at the end
        s = comp.index("pixelart")
        assert shares[-1, s] >= shares[0, s]


@needs_artifacts
def test_cmlora_caches_non_dominant_loras(bench):
    _, info = _sample(bench, "CMLoRA", COMPS[0], seeds=(111, 112))
    # N = 2, 4 steps: the dominant role changes every step (10 % of 4 rounds to 0, at least 1); step 0 evaluates
    # both LoRAs; afterwards the other LoRA's prediction is never old enough (high set every 2, low every 3 steps,
    # and each LoRA is dominant every other step): 2 + 1 + 1 + 1 LoRA evaluations, two rows each
    assert info["cmlora_loras_evaluated"] == [2, 1, 1, 1]
    assert info["evals_per_image"] == 2 * 5
    assert sorted(info["cmlora_order"]) == sorted(COMPS[0]) and len(info["cmlora_high"]) == 1
    _, info = _sample(bench, "CMLoRA", COMPS[1])
    assert info["evals_per_image"] == 2 * sum(info["cmlora_loras_evaluated"])
    assert info["cmlora_loras_evaluated"][0] == 3 and 3 * 2 * STEPS > info["evals_per_image"] >= 2 * (3 + STEPS - 1)


@needs_artifacts
@pytest.mark.parametrize("comp", COMPS)
def test_multlfg_runs_at_composites_cost(bench, comp):
    _, info = _sample(bench, "MultLFG", comp)
    assert info["evals_per_image"] == 2 * len(comp) * STEPS


@needs_artifacts
def test_freefuse_pays_its_mask_stage(bench):
    from composbench.peers import freefuse
    _, info = _sample(bench, "FreeFuse", COMPS[1], seeds=(111, 112))
    assert info["evals_per_image"] == 2 * (freefuse.MASK_STEP + 1) + 2 * STEPS
    share = info["freefuse_mask_share"]
    assert share[1] == 1.0  # the style acts everywhere
    assert share[0] + share[2] == pytest.approx(1.0)  # the others share the image, each pixel to one
    _, info = _sample(bench, "FreeFuse", COMPS[0], mask_step=0)
    assert info["evals_per_image"] == 2 + 2 * STEPS


@needs_artifacts
@pytest.mark.parametrize("comp", COMPS)
def test_oracle_masks_run_at_merges_cost(bench, comp):
    _, info = _sample(bench, "Oracle", comp)
    assert info["evals_per_image"] == 2 * STEPS


@needs_artifacts
def test_masked_runner_limits(bench):
    """All-ones masks with the folded attention rule are Merge (every LoRA's full change on every row);
    all-zero masks are the base model, whichever the unconditional rows' treatment."""
    from composbench.peers import make_context
    from composbench.peers.masked import sample_with_masks
    from composbench.sampling import Method
    comp = COMPS[0]

    def masked(value, **options):
        ctx = make_context(bench, comp, [111], steps=STEPS, cfg=4.0, strength=0.8, prompt=None,
                           options=tuple(options.items()))
        return sample_with_masks(bench, ctx, ctx.x, torch.full((1, len(comp), world.SIZE, world.SIZE), value))

    merged, _ = bench.sample(Method("Merge", "merge"), comp, [111], steps=STEPS, strength=0.8)
    # one UNet call agrees to ~5e-5; four DDIM steps with clamping grow that to ~1e-2 at a few pixels
    diff = (masked(1.0, attention_per_lora=False).clamp(-1, 1) - merged).abs()
    assert float(diff.max()) < 0.05 and float(diff.mean()) < 2e-3
    base, _ = bench.sample(Method("prompt only", "base"), comp, [111], steps=STEPS, strength=0.8)
    for uncond in ("masked", "base"):
        assert torch.allclose(masked(0.0, uncond=uncond).clamp(-1, 1), base, atol=1e-4)
    # with the LoRAs on, the base model's unconditional prediction changes the image
    assert not torch.allclose(masked(1.0, uncond="base"), masked(1.0), atol=1e-2)


def test_run_lists_the_peers_behind_a_flag():
    from composbench import run
    names = [m.name for m in run.peer_methods()]
    assert names == ["K-LoRA (as we implemented it)", "CMLoRA (as we implemented it)",
                     "MultLFG (as we implemented it)", "FreeFuse-style masks (as we implemented it)",
                     "Oracle region masks", "Oracle region masks (base uncond)"]
    st = run.method_settings(run.peer_methods()[0], 0.8)
    assert st == {"kind": "peer", "peer": "K-LoRA", "strength": 0.8}
    assert run.method_settings(run.peer_methods()[-1], 1.0) == {"kind": "peer", "peer": "Oracle", "strength": 1.0,
                                                                "uncond": "base"}
    assert not any(m.kind == "peer" for m in run.standard_methods())


# --- the core rule of each peer, by hand ------------------------------------------------------------------
def test_klora_layer_choice_by_hand():
    from composbench.peers import klora
    # layer 0: subject |3 0; 0 1|, style |2 2; 0 0|; layer 1: subject |1 0; 0 0|, style |0 4; 4 0|
    subject = [torch.tensor([[3.0, 0], [0, -1]]), torch.tensor([[1.0, 0], [0, 0]])]
    style = [torch.tensor([[2.0, -2], [0, 0]]), torch.tensor([[0.0, 4], [-4, 0]])]
    top = torch.tensor([[klora.top_k_sum(d, 1) for d in subject], [klora.top_k_sum(d, 1) for d in style]])
    assert top.tolist() == [[3.0, 1.0], [2.0, 4.0]]
    total = torch.tensor([[4.0, 1.0], [4.0, 8.0]])  # sum |dW|
    gammas = klora.balance_factors(total, ref=1)  # the style is the reference: gamma = mean(4/4, 1/8)
    assert gammas.tolist() == pytest.approx([(1 + 1 / 8) / 2, 1.0])
    is_style = [False, True]
    # step 0: time scale 0.5. Layer 0: 3 / 0.5625 = 5.33 vs 2 * 0.5 = 1 -> subject; layer 1: 1.78 vs 2 -> style
    assert klora.choose(top, gammas, is_style, 0.0).tolist() == [0, 1]
    # late: scale 1.5 * 0.9 + 0.5 = 1.85. Layer 0: 5.33 vs 3.7 -> subject still; with gamma 1 the style wins
    assert klora.choose(top, gammas, is_style, 0.9).tolist() == [0, 1]
    assert klora.choose(top, torch.ones(2), is_style, 0.9).tolist() == [1, 1]
    assert klora.choose(top, torch.ones(2), is_style, 0.0).tolist() == [0, 1]
    # N = 3, no style: the largest top-K sum over gamma wins each layer
    top3 = torch.tensor([[1.0, 5.0], [2.0, 1.0], [3.0, 1.0]])
    assert klora.choose(top3, torch.tensor([1.0, 1.0, 2.0]), [False] * 3, 0.5).tolist() == [1, 0]
    assert klora.reference_lora(("zorbot", "tophat", "pixelart")) == 2
    assert klora.reference_lora(("tophat", "kittra")) == 1


def test_cmlora_rules_by_hand():
    from composbench.peers import cmlora
    order, high = cmlora.plan([0.2, 0.9, -0.1, 0.5, 0.4])
    assert order == [1, 3, 4, 0, 2] and high == {1, 3, 4}
    dom, other = cmlora.dominant_weights(3, 0)  # c = 2.5: 2.5 / 4.5 and 1 / 4.5
    assert (dom, other) == pytest.approx((2.5 / 4.5, 1 / 4.5))
    for n in (2, 3, 5):
        for s in range(6):
            dom, other = cmlora.dominant_weights(n, s)
            assert dom + (n - 1) * other == pytest.approx(1.0) and dom >= other
        assert cmlora.dominant_weights(n, 30)[0] == pytest.approx(1 / n)  # decays to uniform
    # white noise has far more high-frequency amplitude than the same noise blurred
    noise = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    blurred = torch.nn.functional.avg_pool2d(noise, 5, stride=1, padding=2)
    assert bool((cmlora.high_band_log_amplitude(noise) > cmlora.high_band_log_amplitude(blurred) + 1).all())


def test_multlfg_wavelets_and_weights_by_hand():
    from composbench.peers import multlfg
    x = torch.randn(3, 2, 3, 32, 32)
    bands = multlfg.haar_dwt(x)
    assert [tuple(b.shape[-2:]) for b in bands] == [(8, 8)] * 4 + [(16, 16)] * 3
    assert torch.allclose(multlfg.haar_idwt(bands), x, atol=1e-5)
    assert sum(float((b ** 2).sum()) for b in bands) == pytest.approx(float((x ** 2).sum()), rel=1e-4)  # orthonormal
    # a constant image lives in LL only
    flat = multlfg.haar_dwt(torch.ones(1, 1, 32, 32))
    assert float(flat[0].abs().min()) == pytest.approx(4.0) and all(float(b.abs().max()) == 0 for b in flat[1:])
    # top-2 of three LoRAs, weights proportional to relevance
    w = multlfg.band_weights(torch.tensor([[3.0], [1.0], [2.0]]), k=2)
    assert w.flatten().tolist() == pytest.approx([0.6, 0.0, 0.4])
    assert multlfg.band_weights(torch.zeros(2, 1), k=2).flatten().tolist() == [0.5, 0.5]
    # uniform weights in every band: LoRA Composite (the mean of the predictions)
    uniform = [torch.full((3, 2), 1 / 3)] * 7
    assert torch.allclose(multlfg.merge(x, uniform), x.mean(0), atol=1e-5)
    # all weight on LoRA 1 in LL, on LoRA 0 elsewhere: LoRA 1's coarse part, LoRA 0's detail
    one_hot = [torch.tensor([[0.0, 0], [1, 1], [0, 0]])] + [torch.tensor([[1.0, 1], [0, 0], [0, 0]])] * 6
    merged_bands = multlfg.haar_dwt(multlfg.merge(x, one_hot))
    assert torch.allclose(merged_bands[0], bands[0][1], atol=1e-5)
    assert torch.allclose(merged_bands[5], bands[5][0], atol=1e-5)


def test_freefuse_masks_by_hand():
    from composbench.peers import freefuse
    assert freefuse.trigger_positions("zorbot, tophat, sunorb", ("sunorb", "zorbot")) == [2, 0]
    # a 4x4 grid; text tokens: 0 = LoRA A's trigger, 1 = LoRA B's, 2 = a style's, 3 = padding
    side, text = 4, 4
    left = (torch.arange(side * side) % side) < 2
    probs = torch.full((2, side * side, text), 0.1)
    probs[:, left, 0] = 0.6  # left tokens attend to A, right ones to B
    probs[:, ~left, 1] = 0.6
    features = torch.stack([left.float(), (~left).float(), torch.zeros(side * side)], dim=1)
    for similarity in (True, False):
        masks = freefuse.masks_from_attention(probs, features, [0, 1, 2], [True, True, False],
                                              top_k_ratio=0.25, similarity=similarity)
        assert masks.shape == (3, side, side)
        assert torch.equal(masks[0].flatten() > 0, left) and torch.equal(masks[1].flatten() > 0, ~left)
        assert bool((masks[2] == 1).all())  # the style everywhere
    # sink handling drops the top values that sit on the border
    probs2 = probs.clone()
    probs2[:, 0, 1] = 0.9  # a corner token attends to B's trigger most of all: a sink
    m = freefuse.masks_from_attention(probs2, features, [0, 1], [True, True], top_k_ratio=1 / 16,
                                      similarity=False, sink=True)
    assert m[0].flatten()[0] == 1  # the corner stays A's: its B value was dropped


# --- oracle regions -------------------------------------------------------------------------------------
def test_region_masks_cover_what_each_concept_paints():
    from composbench.regions import region_masks
    rng = np.random.default_rng(3)
    comps = [("zorbot", "tophat", "pixelart", "brickwall", "sunorb"), ("kittra", "stripescarf", "starnight"),
             ("glimmy", "pinetree", "scanlines"), ("kittra", "tophat", "sunorb"), ("glimmy", "stripescarf", "pinetree")]
    for comp in comps:
        masks = region_masks(comp)
        assert masks.shape == (len(comp), world.SIZE, world.SIZE) and masks.dtype == np.float32
        assert set(np.unique(masks)) <= {0.0, 1.0}
        for _ in range(6):
            scene = world.random_generic(rng, {world.CATEGORY_OF[c]: c for c in comp}, p_figure=0.0, p_thing=0.0)
            scene.figure, scene.thing = None, None
            scene.concepts.pop("style", None)  # the style transforms everything; check regions without it
            full = world.render(scene)
            for i, c in enumerate(comp):
                cat = world.CATEGORY_OF[c]
                if cat == "style":
                    assert masks[i].all()
                    continue
                without = world.Scene(**{**scene.__dict__, "concepts": {k: v for k, v in scene.concepts.items()
                                                                        if v != c}})
                changed = np.abs(world.render(without) - full).sum(-1) > 1e-6
                if cat == "background":
                    # the background mask never covers another requested concept's pixels
                    painted_by_others = np.zeros_like(changed)
                    for j, o in enumerate(comp):
                        if j != i and world.CATEGORY_OF[o] in ("character", "clothing", "object"):
                            painted_by_others |= masks[j] > 0
                    assert not (masks[i] > 0)[painted_by_others].any()
                    assert (masks[i] > 0)[~painted_by_others].all()
                else:  # every pixel the concept changes is inside its region
                    assert (masks[i] > 0)[changed].all(), (comp, c)
                    assert changed.sum() > 0.5 * masks[i].sum() / 3  # and the region is not much larger


def test_region_masks_are_a_pure_function_of_the_composition():
    from composbench.regions import painted_region, region_masks
    a = region_masks(("zorbot", "sunorb"))
    b = region_masks(("sunorb", "zorbot"))
    assert np.array_equal(a, b[::-1])
    # the layout keeps them apart (the sun's left ray may touch the head's corner when both jitter inward)
    assert (painted_region("zorbot") & painted_region("sunorb")).sum() <= 4
    with pytest.raises(ValueError):
        painted_region("pixelart")
