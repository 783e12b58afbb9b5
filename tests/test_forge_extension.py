"""What only Forge (dfdcbab) has, end to end in its stand-in: the model_function_wrapper hook on a UNet patcher clone
(little memory, CFG 1, other extensions' wrappers and ControlNet, Forge's own LoRAs), SDXL's CLIP-G, Flux, the
older Forge refused. What A1111 and Forge share: test_webui_extension.py."""

import copy
import os

import numpy as np
import pytest
import torch

from lib_loratorio.errors import LoratorioError
from tests.extension_helpers import close, merged_run, on, pixels
from tests.standins import ROOT


@pytest.fixture
def runner(forge):
    with forge.script_runner() as runner:
        yield runner


class WrapperSpy:
    """Another extension's model_function_wrapper, installed before LoRAtorio's (script order)."""

    def __init__(self):
        self.calls = []

    def script(self, scripts):
        spy = self

        def pbes(self, p, *args, **kwargs):
            unet = p.sd_model.forge_objects.unet.clone()

            def wrapper(apply_model, args):
                spy.calls.append((list(args["cond_or_uncond"]), args["input"].shape[0],
                                  dict(args["c"]["transformer_options"])))
                return apply_model(args["input"], args["timestep"], **args["c"])

            unet.set_model_unet_function_wrapper(wrapper)
            p.sd_model.forge_objects.unet = unet

        return type("Spy", (scripts.Script,), {"title": lambda self: "spy", "ui": lambda self, is_img2img: [],
                                               "show": lambda self, is_img2img: scripts.AlwaysVisible,
                                               "process_before_every_sampling": pbes})


def test_little_memory_still_gets_prompt_and_negative_rows_in_one_call(forge, runner):
    kw = dict(prompt="a cat AND a dog <loratorio:alice:0.8> <loratorio:hat:1>", batch_size=2)
    reference = forge.run(runner, on(), **kw)
    forge.memory_management.free_memory_bytes = 1   # Forge would send the negative prompt first, alone
    little = forge.run(runner, on(), **kw)
    for i in range(1, 3):
        assert np.array_equal(pixels(reference, i), pixels(little, i))
    forge.memory_management.free_memory_bytes = 0   # (the stand-in's knob: even 0 bytes must split)
    split = forge.run(runner, on(), **kw)             # the fallback then: weights from the uncond rows themselves
    assert np.isfinite(pixels(split, 1)).all() and not np.array_equal(pixels(reference, 1), pixels(split, 1))


def test_cfg_1_and_skip_early_cond_compose_conditional_rows_only(forge, runner):
    base = forge.run(runner, cfg_scale=1.0)
    composed = forge.run(runner, on(), cfg_scale=1.0)
    assert not np.array_equal(pixels(base), pixels(composed)) and np.isfinite(pixels(composed)).all()
    one = forge.run(runner, on(), prompt="a cat <loratorio:alice:0.8>", cfg_scale=1.0)  # no negative rows
    assert close(pixels(one), pixels(merged_run(forge, runner, {"alice": 0.8}, cfg_scale=1.0)))
    forge.shared.opts.skip_early_cond = 0.5
    assert np.isfinite(pixels(forge.run(runner, on(), steps=4))).all()


def test_text_encoder_parts_condition_their_own_branch(forge, runner, capsys):
    prompt = "a cat <loratorio:te_only:1> <loratorio:alice:0.8>"
    per_branch = forge.run(runner, on(), prompt=prompt)
    unet_only = forge.run(runner, on(text_encoder="UNet only"), prompt=prompt)
    assert not np.array_equal(pixels(per_branch), pixels(unet_only))
    # AND parts and a negative prompt longer than 75 tokens (Forge repeats the shorter conds to a common length)
    kw = dict(prompt=prompt + " AND a dog", batch_size=2, negative_prompt="word " * 80)
    and_prompt, and_unet_only = forge.run(runner, on(), **kw), forge.run(runner, on(text_encoder="UNet only"), **kw)
    assert not np.array_equal(pixels(and_prompt, 1), pixels(and_unet_only, 1))
    assert "base text conditioning" not in capsys.readouterr().out
    plain = forge.run(runner, prompt="a cat")  # Forge's cond cache never holds a branch's conds
    forge.processing.StableDiffusionProcessing.cached_c[:] = [None, None]
    forge.processing.StableDiffusionProcessing.cached_uc[:] = [None, None]
    assert np.array_equal(pixels(plain), pixels(forge.run(runner, prompt="a cat")))


def test_another_extensions_wrapper_is_chained(forge, runner):
    spy = WrapperSpy()
    both = forge.scripts.ScriptRunner()
    both.initialize_scripts(False, [spy.script(forge.scripts)] + [type(s) for s in runner.alwayson_scripts])
    both.setup_ui()
    p = forge.txt2img(both, steps=2)
    p.script_args = tuple([0] * both.alwayson_scripts[1].args_from + on())
    try:
        result = forge.processing.process_images(p)
    finally:
        forge.sd15.forge_objects = forge.sd15.forge_objects_original.shallow_copy()  # the spy leaves its clone
    assert np.isfinite(pixels(result)).all()
    # both steps' branch evaluations (base + 2 LoRAs, cond and uncond) went through it, a row per chunk
    assert [rows for _, rows, _ in spy.calls] == [6, 6]
    assert all(len(flags) == len(opts["cond_mark"]) == 6
               and opts["cond_indices"] == [j for j in range(6) if not flags[j]]
               for flags, _, opts in spy.calls)


def test_controlnet_outputs_follow_their_rows(forge, runner):
    """A linked ControlNet's per-row outputs reach each branch row from the row it was made for; a
    one-row output (T2I adapters) passes through."""
    class FakeControlNet:
        previous_controlnet = None

        def get_control(self, x, t, c, n_chunks):
            rows = torch.arange(x.shape[0], dtype=torch.float32)
            return {"output": [rows.view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()],
                    "middle": [torch.full((1, 1, 2, 2), 7.0)]}

    seen = []

    class Recorder(WrapperSpy):
        def script(self):
            def pbes(self, p, *args, **kwargs):
                unet = p.sd_model.forge_objects.unet.clone()
                unet.controlnet_linked_list = FakeControlNet()

                def wrapper(apply_model, args):
                    control = args["c"]["control"]
                    seen.append((args["input"].clone(), control["output"][0][:, 0, 0, 0].tolist(),
                                 control["middle"][0].shape[0]))
                    c = {k: v for k, v in args["c"].items() if k not in ("control", "control_model")}
                    return apply_model(args["input"], args["timestep"], **c)

                unet.set_model_unet_function_wrapper(wrapper)
                p.sd_model.forge_objects.unet = unet

            return type("Cn", (forge.scripts.Script,), {"title": lambda self: "cn", "ui": lambda self, is_img2img: [],
                                                    "show": lambda self, is_img2img: forge.scripts.AlwaysVisible,
                                                    "process_before_every_sampling": pbes})

    both = forge.scripts.ScriptRunner()
    both.initialize_scripts(False, [Recorder().script()] + [type(s) for s in runner.alwayson_scripts])
    both.setup_ui()
    p = forge.txt2img(both, steps=1, batch_size=2, prompt="a cat <loratorio:alice:0.8>")
    p.script_args = tuple([0] * both.alwayson_scripts[1].args_from + on())
    try:
        forge.processing.process_images(p)
    finally:
        forge.sd15.forge_objects = forge.sd15.forge_objects_original.shallow_copy()
    (x, control_rows, middle_rows), = seen
    # 4 host rows (uncond images 0, 1, cond images 0, 1) for the base, then the same 4 for the LoRA
    assert middle_rows == 1 and control_rows == [0.0, 1.0, 2.0, 3.0] * 2
    assert all(torch.equal(x[j], x[j % 4]) for j in range(8)) and not torch.equal(x[0], x[1])


def test_forge_keeps_room_for_the_lora_deltas(forge, runner):
    """Forge's loader leaves extra_preserved_memory_during_sampling free on the GPU: LoRAtorio
    adds the bytes of the UNet deltas it will move there."""
    seen = []

    def record(self, p, *args, **kwargs):
        seen.append(p.sd_model.forge_objects.unet.extra_preserved_memory_during_sampling)

    after = type("After", (forge.scripts.Script,), {"title": lambda self: "after", "ui": lambda self, is_img2img: [],
                                                 "show": lambda self, is_img2img: forge.scripts.AlwaysVisible,
                                                 "process_before_every_sampling": record})
    both = forge.scripts.ScriptRunner()
    both.initialize_scripts(False, [type(s) for s in runner.alwayson_scripts] + [after])
    both.setup_ui()
    p = forge.txt2img(both, on(), steps=1)
    p.script_args = tuple([0] * both.alwayson_scripts[0].args_from + on())
    forge.processing.process_images(p)
    session = p._loratorio_session
    expected = sum(d.numel() for lora in session.loras for name, _, d in lora.targets if name.startswith("unet:")) * 4
    assert seen == [expected] and expected > 0                  # float32 on the CPU stand-in


def test_forge_lora_tags_stay_in_the_base_and_its_lora_state_is_untouched(forge, runner):
    patcher = forge.sd15.forge_objects_original.unet.clone()     # what Forge's Lora extension does for <lora:>
    key = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_k.weight"
    weight = dict(patcher.model.named_parameters())[key]
    up, down = torch.randn(weight.shape[0], 2) * 0.1, torch.randn(2, weight.shape[1]) * 0.1
    patcher.add_patches(filename="plain.safetensors", patches={key: ("lora", (up, down, 2.0, None, None))})
    try:
        forge.sd15.forge_objects_after_applying_lora.unet = patcher
        patches = copy.deepcopy(patcher.lora_patches)
        p = forge.txt2img(runner, on())
        p.sd_model.forge_objects_after_applying_lora.unet = patcher
        result = forge.processing.process_images(p)
        assert np.isfinite(pixels(result)).all() and str(patcher.lora_patches) == str(patches)
    finally:
        forge.sd15.forge_objects_after_applying_lora.unet = forge.sd15.forge_objects_original.unet
        loader = forge.sd15.forge_objects_original.unet.model.lora_loader
        loader.refresh(lora_patches={}, offload_device=torch.device("cpu"))


# --- model families ---------------------------------------------------------------------------------
def test_sdxl_with_clip_g_text_encoder_lora(forge, runner):
    base = forge.run(runner, prompt="a cat", model=forge.sdxl)
    composed = forge.run(runner, on(), prompt="a cat <loratorio:xl_lora:1> <loratorio:xl_te2:1>", model=forge.sdxl)
    unet_only = forge.run(runner, on(text_encoder="UNet only"),
                          prompt="a cat <loratorio:xl_lora:1> <loratorio:xl_te2:1>", model=forge.sdxl)
    assert not np.array_equal(pixels(base), pixels(composed))
    assert not np.array_equal(pixels(composed), pixels(unet_only))
    with pytest.raises(LoratorioError, match="LoRA 'xl_lora' does not fit the loaded model"):
        forge.run(runner, on(), prompt="a cat <loratorio:xl_lora:1>")     # an SDXL LoRA on the SD1.5 model


def flux_run(forge, runner, args=None, **kw):
    settings = dict(prompt="a robot <loratorio:flux_a:1> <loratorio:flux_b:1>", cfg_scale=1.0, distilled_cfg_scale=3.5,
                    width=64, height=64, steps=2, scheduler="Simple", model=forge.flux)
    settings.update(kw)
    return forge.run(runner, args, **settings)


def test_flux_composes_two_loras_conditionally_without_uncond_rows(forge, runner):
    spy_rows = []
    forge.script_callbacks.on_cfg_denoiser(lambda params: spy_rows.append(params.text_uncond))
    base = flux_run(forge, runner)
    composed = flux_run(forge, runner, on(show_weight_maps=True))
    assert all(u is None for u in spy_rows)                           # CFG 1: Forge computes no uncond
    assert not np.array_equal(pixels(base), pixels(composed)) and np.isfinite(pixels(composed)).all()
    first = composed.index_of_first_image
    assert len(composed.images) == first + 1 + 2                      # image + a heatmap per LoRA
    single = flux_run(forge, runner, on(recenter=0.0), prompt="a robot <loratorio:flux_a:1>")
    assert np.isfinite(pixels(single)).all()


def test_flux_diffusers_format_lora_binds_to_the_fused_layers(forge, runner):
    from lib_loratorio.composing_session import LIBRARY

    composed = flux_run(forge, runner, on(), prompt="a robot <loratorio:flux_a:1> <loratorio:flux_diffusers:1>")
    assert np.isfinite(pixels(composed)).all()
    bound = LIBRARY.bind(os.path.join(forge.lora_dir, "flux_diffusers.safetensors"),
                                 {"unet": forge.flux.forge_objects.unet.model.diffusion_model})
    assert not bound.unmatched and {name for name, _, _ in bound.targets} >= {
        "unet:double_blocks.0.img_attn.qkv", "unet:double_blocks.0.txt_attn.qkv", "unet:single_blocks.0.linear1"}


def test_flux_with_real_cfg_keeps_the_base_uncond(forge, runner):
    kw = dict(cfg_scale=3.0, negative_prompt="blurry")
    base = flux_run(forge, runner, **kw)
    no_recentring = flux_run(forge, runner, on(recenter=0.0), **kw)
    full_recentring = flux_run(forge, runner, on(recenter=1.0), **kw)
    assert np.array_equal(pixels(no_recentring), pixels(full_recentring))      # uncond rows: the base model's
    assert not np.array_equal(pixels(base), pixels(no_recentring))


def test_flux_needs_an_even_patch_size(forge, runner):
    with pytest.raises(LoratorioError, match="patch_size=3 does not fit this model, which packs 2x2"):
        flux_run(forge, runner, on(patch_size=3))


# --- failures leave nothing behind -----------------------------------------------------------------------
@pytest.mark.parametrize("prompt, message", [
    ("a cat <loratorio:nobody:1>", "Unknown LoRA 'nobody'"),
    ("a cat <loratorio:alice:strong>", "strength must be a number"),
    ("a cat <loratorio:flux_a:1>", "matches none of the loaded model's modules .* looks like a Flux LoRA"),
])
def test_bad_tags_raise_a_clear_error(forge, runner, prompt, message):
    with pytest.raises(LoratorioError, match=message):
        forge.run(runner, on(), prompt=prompt)


def test_an_sd_lora_on_flux_is_named_as_such(forge, runner):
    with pytest.raises(LoratorioError,
                       match="looks like a LoRA for a UNet model \\(SD1.x/SDXL\\) but the model is Flux"):
        flux_run(forge, runner, on(), prompt="a robot <loratorio:alice:1>")


# --- API ----------------------------------------------------------------------------------------------
PAPER_NAMED = {"patch_size": 4, "mode": "LoRAtorio", "weight_norm": "sum"}  # what on() sets, by name


def test_the_older_forge_is_refused_with_a_message(forge, runner, monkeypatch):
    import importlib
    import importlib.util

    from lib_loratorio.webui import host

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "ldm_patched" else real(name, *a))
    try:
        importlib.reload(host)
        assert host.HOST == "forge-legacy"
        forge.scripts.load_scripts([os.path.join(ROOT, "scripts", "loratorio.py")])
        old = forge.scripts.ScriptRunner()
        old.initialize_scripts(False)
        old.setup_ui()
        assert np.isfinite(pixels(forge.run(old))).all()                       # off: generation untouched
        with pytest.raises(LoratorioError, match="older Forge"):
            forge.run(old, on())
    finally:
        monkeypatch.undo()
        importlib.reload(host)
        forge.scripts.load_scripts([os.path.join(ROOT, "scripts", "loratorio.py")])
    assert host.HOST == "forge"


def test_fast_mode_on_flux_routes_the_image_tokens_of_joint_sequences(forge, runner, monkeypatch):
    from lib_loratorio.layer_maps import LayerMaps

    counts = []
    original = LayerMaps._token_weights

    def spy(self, count):
        found = original(self, count)
        counts.append((count, self.tokens.text, found is not None))
        return found

    monkeypatch.setattr(LayerMaps, "_token_weights", spy)
    fast = flux_run(forge, runner, on(mode="LoRAtorio Fast", refresh_first=1, refresh_every=4), steps=3)
    assert np.isfinite(pixels(fast)).all() and not np.array_equal(pixels(fast), pixels(flux_run(forge, runner)))
    image_tokens = (64 // 8 // 2) ** 2                      # 64 px -> 8x8 latent -> 4x4 packed tokens
    assert any(found and prefix > 0 and count == prefix + image_tokens for count, prefix, found in counts)
    assert all(found for count, _, found in counts if count == image_tokens)
