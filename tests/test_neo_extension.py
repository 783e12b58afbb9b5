"""What Forge Neo (2.26) changed, end to end in its stand-in (over the Forge one): the families Neo added (Flux.2 Klein,
Chroma, Z-Image; read from the matched huggingface_guess class), their text encoders per branch (Z-Image's and Klein's
Qwen3 language model), where their image tokens are, and the patch sizes they allow. SD1.5/SDXL/Flux.1 on Neo go
through the same code as on Forge (test_forge_extension.py)."""

import copy
import os

import numpy as np
import pytest
import torch

from lib_loratorio.errors import LoratorioError
from lib_loratorio.lora_files import read_lora_file
from lib_loratorio.network_names import bind_lora
from tests.extension_helpers import close, merged_run, on, pixels
from tests.webui_hosts import NEO_TARGETS

FAMILIES = ("flux2", "chroma", "zimage")


@pytest.fixture
def runner(neo):
    with neo.script_runner() as runner:
        yield runner


def family_run(neo, runner, family, args=None, **kw):
    settings = dict(prompt=f"a robot <loratorio:{family}_a:1> <loratorio:{family}_b:0.8>", width=64, height=64,
                    steps=2, scheduler="Simple", model=neo.neo[family], cfg_scale=1.0 if family == "flux2" else 4.0)
    settings.update(kw)
    return neo.run(runner, args, **settings)


def test_the_family_is_the_matched_model_class(neo):
    from lib_loratorio.webui.forge_models import model_family

    assert [model_family(m) for m in (neo.sd15, neo.sdxl, neo.flux)] == [None, None, "flux"]
    assert {k: model_family(m) for k, m in neo.neo.items()} == {"flux2": "flux2", "chroma": "chroma",
                                                                 "zimage": "lumina2"}
    assert neo.neo["zimage"].model_config.unet_config.get("image_model") is None    # not on the instance


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["LoRAtorio", "LoRAtorio Fast"])
def test_each_family_composes_two_loras_with_weight_maps(neo, runner, family, mode):
    base = family_run(neo, runner, family)
    composed = family_run(neo, runner, family, on(mode=mode, show_weight_maps=True, refresh_every=2), steps=3)
    assert np.isfinite(pixels(composed)).all() and not np.array_equal(pixels(base), pixels(composed))
    assert len(composed.images) == composed.index_of_first_image + 1 + 2      # the image, a heatmap per LoRA


@pytest.mark.parametrize("family", FAMILIES)
def test_one_lora_in_the_exact_mode_at_recentring_0_is_that_lora_merged(neo, runner, family):
    kw = dict(prompt=f"a robot <loratorio:{family}_a:1>", negative_prompt="blurry")
    one = family_run(neo, runner, family, on(recenter=0.0), **kw)
    merged = merged_run(neo, runner, {f"{family}_a": 1.0}, base=neo.neo[family], prompt="a robot",
                        negative_prompt="blurry", width=64, height=64, steps=2, scheduler="Simple",
                        cfg_scale=1.0 if family == "flux2" else 4.0)
    assert close(pixels(one), pixels(merged))


def _te_merged(neo, model, name, strength=1.0):
    """``model`` with LoRA ``name``'s text-encoder part merged into its Qwen3 (what Neo's own <lora> would do)."""
    model = copy.deepcopy(model)
    objects = model.forge_objects_original
    model.forge_objects = objects.shallow_copy()
    model.forge_objects_after_applying_lora = objects.shallow_copy()
    qwen3 = objects.clip.cond_stage_model.qwen3
    bound = bind_lora(read_lora_file(os.path.join(neo.lora_dir, f"{name}.safetensors")), {"te1": qwen3})
    assert bound.applied == 2 and not bound.not_applied()
    with torch.no_grad():
        for _, module, delta in bound.targets:
            module.weight += strength * delta.weight_delta(module)
    return model


@pytest.mark.parametrize("family", ["zimage", "flux2"])
def test_a_qwen3_text_encoder_part_conditions_its_own_branch(neo, runner, family):
    kw = dict(prompt="a robot <loratorio:qwen3_te:1>", negative_prompt="blurry")
    per_branch = family_run(neo, runner, family, on(recenter=0.0), **kw)
    unet_only = family_run(neo, runner, family, on(recenter=0.0, text_encoder="UNet only"), **kw)
    assert not np.array_equal(pixels(per_branch), pixels(unet_only))
    oracle = neo.run(runner, model=_te_merged(neo, neo.neo[family], "qwen3_te"), prompt="a robot",
                     negative_prompt="blurry", width=64, height=64, steps=2, scheduler="Simple",
                     cfg_scale=1.0 if family == "flux2" else 4.0)
    assert close(pixels(per_branch), pixels(oracle))


@pytest.mark.parametrize("family", ["zimage", "flux2"])
def test_stack_gives_the_prompt_its_loras_qwen3_text_encoder_part(neo, runner, family):
    """At CFG 1 (the prompt's rows only) Stack is its LoRAs merged, here a Qwen3 part merged into the text encoder."""
    kw = dict(prompt="a robot <loratorio:qwen3_te:1>", negative_prompt="blurry", cfg_scale=1.0)
    stack = family_run(neo, runner, family, on(mode="Stack"), **kw)
    oracle = neo.run(runner, model=_te_merged(neo, neo.neo[family], "qwen3_te"), prompt="a robot",
                     negative_prompt="blurry", width=64, height=64, steps=2, scheduler="Simple", cfg_scale=1.0)
    assert close(pixels(stack), pixels(oracle))


def test_the_patch_size_must_hold_whole_tokens(neo, runner):
    assert np.isfinite(pixels(family_run(neo, runner, "flux2", on(patch_size=3)))).all()   # a token per pixel
    for family in ("chroma", "zimage"):
        with pytest.raises(LoratorioError, match="patch_size=3 does not fit this model, which packs 2x2"):
            family_run(neo, runner, family, on(patch_size=3))


@pytest.mark.parametrize("family, joint", [("zimage", "layers"), ("flux2", "single_blocks"),
                                           ("chroma", "single_blocks")])
def test_the_fast_mode_finds_the_image_tokens_of_every_sequence(neo, runner, monkeypatch, family, joint):
    """Every layer that sees the image (image stream, joint sequence with the text before it, Z-Image's padding after
    it, Flux.2's reference image after it) gets a weight per image token."""
    from lib_loratorio.branch_runner import BranchRunner

    seen = {}
    original = BranchRunner._add_mixed

    def spy(self, module, x, out):
        name = next(n for n, m in neo.unet(neo.neo[family]).named_modules() if m is module)
        seen[name] = self._layer_maps.weights_for(out[self._mixed], self._text_side[module]).shape
        return original(self, module, x, out)

    monkeypatch.setattr(BranchRunner, "_add_mixed", spy)
    model = neo.neo[family]
    if family == "flux2":                          # an img2img reference Neo's Flux.2 appends after the image
        monkeypatch.setattr(model, "ref_latents", [torch.randn(1, 32, 4, 4)])
    fast = family_run(neo, runner, family, on(mode="LoRAtorio Fast", refresh_every=4), steps=3)
    assert np.isfinite(pixels(fast)).all()
    image = {"flux2": 8 * 8, "chroma": 4 * 4, "zimage": 4 * 4}[family]        # 64 px: an 8x8 latent
    spatial = {n for n in NEO_TARGETS[family] if not n.startswith(("double_blocks.0.txt", "context_refiner",
                                                                      "distilled_guidance_layer"))}
    assert spatial <= set(seen)
    for name in spatial:
        shape = seen[name]
        assert len(shape) == 4 and shape[2] >= image, (name, shape)    # [N, rows, tokens, 1]: a weight per token
    assert any(name.startswith(joint) and seen[name][2] > image for name in spatial)


def test_a_family_loratorio_does_not_compose_is_refused(neo, runner, monkeypatch):
    model = neo.neo["chroma"]
    pid = type("PiD", (type(model.model_config),), {"unet_config": {"image_model": "pid"}})
    monkeypatch.setattr(model.model_config, "__class__", pid)
    with pytest.raises(LoratorioError, match="does not compose LoRAs for this model .*'pid' family"):
        family_run(neo, runner, "chroma", on())
