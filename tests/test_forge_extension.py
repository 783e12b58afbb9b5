"""The extension end to end in the Forge (dfdcbab) stand-in: the same script, tags, API and infotext as on
A1111, the model_function_wrapper hook on a UNet patcher clone, SD1.5, SDXL and Flux, and cleanup."""

import copy
import os
import types

import numpy as np
import pytest
import torch

from lib_loratorio.errors import LoratorioError
from tests import forge_standin
from tests.extension_helpers import SETTINGS, UNET_TARGETS, check_accordion_layout, hook_ids, make_txt2img, on, pixels
from tests.lora_writers import write_diffusers_flux, write_kohya

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLUX_TARGETS = ["double_blocks.0.img_attn.qkv", "double_blocks.0.img_attn.proj", "double_blocks.0.img_mlp.0",
                "double_blocks.0.txt_attn.qkv", "single_blocks.0.linear1", "single_blocks.0.linear2"]
W = types.SimpleNamespace()  # the stand-in's modules, imported inside the Forge environment


def networks_of(engine):
    objects = engine.forge_objects_original
    return [objects.unet.model, objects.clip.cond_stage_model]


def snapshot(engine):
    return [{k: v.clone() for k, v in net.state_dict().items()} for net in networks_of(engine)]


@pytest.fixture(scope="module", autouse=True)
def env(one_thread, tmp_path_factory):
    token = forge_standin.activate(extra_prefixes=("lib_loratorio.webui",))
    try:
        import standin_models
        from backend import memory_management
        from modules import extra_networks, infotext_utils, processing, script_callbacks, scripts, shared
        from modules.api import api

        W.__dict__.update(standin_models=standin_models, memory_management=memory_management,
                          extra_networks=extra_networks, infotext_utils=infotext_utils, processing=processing,
                          script_callbacks=script_callbacks, scripts=scripts, shared=shared, api=api)
        W.sd15, W.sdxl, W.flux = (standin_models.make_sd15_model(), standin_models.make_sdxl_model(),
                                  standin_models.make_flux_model())
        W.lora_dir = make_loras(tmp_path_factory.mktemp("Lora"))
        for model in (W.sd15, W.sdxl, W.flux):  # transformers adds its own hooks on a first forward
            shared.sd_model = model
            processing.process_images(processing.StableDiffusionProcessingTxt2Img(
                prompt="warm-up", steps=1, width=64, height=64, scheduler="Simple"))
        yield W
    finally:
        forge_standin.deactivate(token)


def make_loras(folder):
    unet = W.sd15.forge_objects.unet.model.diffusion_model.unet         # kohya SD1.5 files use diffusers names
    (folder / "styles").mkdir()
    for i, (name, fmt) in enumerate([("alice", "lora"), ("hat", "locon_tucker"), ("styles/ink", "loha")]):
        write_kohya(folder / f"{name}.safetensors", unet, UNET_TARGETS, fmt=fmt, seed=10 + i, alpha=8.0, rank=4)
    te = W.sd15.forge_objects.clip.cond_stage_model.clip_l.transformer
    write_kohya(folder / "te_only.safetensors", te, ["encoder.layers.0.self_attn.q_proj", "encoder.layers.1.mlp.fc2"],
                component="te1", prefix="lora_te_text_model_", seed=5, alpha=8.0)
    xl = W.sdxl.forge_objects.unet.model.diffusion_model
    write_kohya(folder / "xl_lora.safetensors", xl, ["input_blocks.4.1.transformer_blocks.0.attn1.to_k",
                                                     "middle_block.1.transformer_blocks.0.attn2.to_k"],
                seed=7, alpha=8.0)
    clip_g = W.sdxl.forge_objects.clip.cond_stage_model.clip_g.transformer
    write_kohya(folder / "xl_te2.safetensors", clip_g,
                ["encoder.layers.0.self_attn.v_proj", "encoder.layers.1.mlp.fc1"], component="te2",
                prefix="lora_te2_text_model_", seed=8, alpha=8.0)
    dit = W.flux.forge_objects.unet.model.diffusion_model
    for i, name in enumerate(("flux_a", "flux_b")):
        write_kohya(folder / f"{name}.safetensors", dit, FLUX_TARGETS, seed=20 + i, alpha=8.0)
    # the stand-in Flux's sizes in diffusers terms (packed 2x2 latent: 64 input channels)
    write_diffusers_flux(folder / "flux_diffusers.safetensors", seed=22, targets=[
        "to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "proj_mlp", "proj_out"],
        dims=dict(in_channels=64, num_attention_heads=4, attention_head_dim=8, joint_attention_dim=32,
                  pooled_projection_dim=32, axes_dims_rope=(2, 2, 4)))
    return folder


@pytest.fixture
def runner(env):
    W.shared.opts.reset()
    W.shared.state.begin()
    W.shared.sd_model = W.sd15
    W.shared.cmd_opts.lora_dir = str(W.lora_dir)
    W.memory_management.free_memory_bytes = float(1 << 50)
    W.processing.StableDiffusionProcessing.cached_c[:] = [None, None]
    W.processing.StableDiffusionProcessing.cached_uc[:] = [None, None]
    for m in (W.sd15, W.sdxl, W.flux):
        m.forge_objects = m.forge_objects_original.shallow_copy()
        m.forge_objects_after_applying_lora = m.forge_objects_original.shallow_copy()
    W.scripts.load_scripts([os.path.join(ROOT, "scripts", "loratorio.py")])
    W.extra_networks.initialize()
    W.script_callbacks.before_ui_callback()
    W.script_callbacks.app_started_callback(None, None)
    import networks
    networks.list_available_networks()
    runner = W.scripts.ScriptRunner()
    runner.initialize_scripts(False)
    runner.setup_ui()
    before = {id(m): (snapshot(m), {hook for net in networks_of(m) for hook in hook_ids(net)})
              for m in (W.sd15, W.sdxl, W.flux)}
    yield runner
    for m in (W.sd15, W.sdxl, W.flux):
        weights, hooks = before[id(m)]
        assert all(torch.equal(a[k], b[k]) for a, b in zip(weights, snapshot(m), strict=True) for k in a), \
            "model weights changed"
        assert {hook for net in networks_of(m) for hook in hook_ids(net)} == hooks, "hooks left installed"
        assert "model_function_wrapper" not in m.forge_objects.unet.model_options, "wrapper left installed"
        assert "model_function_wrapper" not in m.forge_objects_after_applying_lora.unet.model_options
    W.script_callbacks.clear_callbacks()
    W.shared.state.begin()


def txt2img(runner, args=None, model=None, **kw):
    W.shared.sd_model = model or W.sd15
    return make_txt2img(W.processing, runner, args, **kw)


def run(runner, args=None, model=None, **kw):
    return W.processing.process_images(txt2img(runner, args, model, **kw))


class WrapperSpy:
    """Another extension's model_function_wrapper, installed before LoRAtorio's (script order)."""

    def __init__(self):
        self.calls = []

    def script(self):
        spy = self

        def pbes(self, p, *args, **kwargs):
            unet = p.sd_model.forge_objects.unet.clone()

            def wrapper(apply_model, args):
                spy.calls.append((list(args["cond_or_uncond"]), args["input"].shape[0],
                                  dict(args["c"]["transformer_options"])))
                return apply_model(args["input"], args["timestep"], **args["c"])

            unet.set_model_unet_function_wrapper(wrapper)
            p.sd_model.forge_objects.unet = unet

        return type("Spy", (W.scripts.Script,), {"title": lambda self: "spy", "ui": lambda self, is_img2img: [],
                                                 "show": lambda self, is_img2img: W.scripts.AlwaysVisible,
                                                 "process_before_every_sampling": pbes})


# --- UI and detection ------------------------------------------------------------------------------------
def test_forge_is_detected_and_the_accordion_is_the_same(runner):
    from lib_loratorio.webui import host

    assert host.HOST == "forge"
    script = runner.alwayson_scripts[0]
    controls = runner.inputs[script.args_from:script.args_to]
    assert script.title() == "LoRAtorio" and len(controls) == len(SETTINGS) and controls[0].value is False
    assert set(script.paste_field_names) >= {"LoRAtorio", "LoRAtorio patch size", "LoRAtorio temperature"}
    check_accordion_layout(runner)


# --- off = untouched -----------------------------------------------------------------------------------
def test_disabled_and_tagless_runs_are_bit_identical_to_forge_without_the_extension(runner):
    with_ext = run(runner)
    bare = W.scripts.ScriptRunner()
    bare.initialize_scripts(False, [])
    bare.setup_ui()
    p = txt2img(runner)
    p.scripts, p.script_args = bare, (0,)
    without = W.processing.process_images(p)
    assert np.array_equal(pixels(with_ext), pixels(without)) and "LoRAtorio" not in with_ext.infotexts[0]
    assert np.array_equal(pixels(run(runner, prompt="a cat")), pixels(run(runner, on(), prompt="a cat")))


# --- on -----------------------------------------------------------------------------------------------
def test_two_tags_compose_and_write_infotext(runner):
    base = run(runner)
    composed = run(runner, on())
    assert not np.array_equal(pixels(base), pixels(composed))
    params = W.infotext_utils.parse_generation_parameters(composed.infotexts[0])
    assert params["LoRAtorio"] == "True" and params["LoRAtorio patch size"] == "4"
    assert params["LoRAtorio hashes"].startswith("alice: ") and ", hat: " in params["LoRAtorio hashes"]


def test_one_lora_without_recentring_equals_the_merged_model(runner):
    from lib_loratorio.lora_files import read_lora_file
    from lib_loratorio.network_names import bind_lora

    composed = run(runner, on(recenter=0.0), prompt="a cat <loratorio:alice:0.8>")
    merged_model = copy.deepcopy(W.sd15)
    objects = merged_model.forge_objects_original
    bound = bind_lora(read_lora_file(W.lora_dir / "alice.safetensors"), {"unet": objects.unet.model.diffusion_model})
    with torch.no_grad():
        for _, module, delta in bound.targets:
            module.weight += 0.8 * delta.weight_delta(module)
    merged_model.forge_objects = objects.shallow_copy()
    merged_model.forge_objects_after_applying_lora = objects.shallow_copy()
    merged = run(runner, prompt="a cat", model=merged_model)
    assert np.abs(pixels(composed) - pixels(merged)).max() <= 1.0  # 8-bit images: rounding only


def test_little_memory_still_gets_prompt_and_negative_rows_in_one_call(runner):
    kw = dict(prompt="a cat AND a dog <loratorio:alice:0.8> <loratorio:hat:1>", batch_size=2)
    reference = run(runner, on(), **kw)
    W.memory_management.free_memory_bytes = 1   # Forge would send the negative prompt first, alone
    little = run(runner, on(), **kw)
    for i in range(1, 3):
        assert np.array_equal(pixels(reference, i), pixels(little, i))
    W.memory_management.free_memory_bytes = 0   # (the stand-in's knob: even 0 bytes must split)
    split = run(runner, on(), **kw)             # the fallback then: weights from the uncond rows themselves
    assert np.isfinite(pixels(split, 1)).all() and not np.array_equal(pixels(reference, 1), pixels(split, 1))


def test_cfg_1_and_skip_early_cond_compose_conditional_rows_only(runner):
    base = run(runner, cfg_scale=1.0)
    composed = run(runner, on(), cfg_scale=1.0)
    assert not np.array_equal(pixels(base), pixels(composed)) and np.isfinite(pixels(composed)).all()
    W.shared.opts.skip_early_cond = 0.5
    assert np.isfinite(pixels(run(runner, on(), steps=4))).all()


def test_step_range_with_the_loras_merged_or_left_out_outside_it(runner):
    full = pixels(run(runner, on(), steps=4))
    merged = pixels(run(runner, on(step_end=0.5, outside_steps="merge"), steps=4))
    left_out = pixels(run(runner, on(step_end=0.5, outside_steps="off"), steps=4))
    assert not np.array_equal(full, merged) and not np.array_equal(merged, left_out)


def test_hires_fix_batch_count_and_weight_maps(runner):
    result = run(runner, on(show_weight_maps=True), n_iter=2, batch_size=2, enable_hr=True, hr_scale=1.5,
                 denoising_strength=0.5, hr_second_pass_steps=2, hr_cfg=5.0)
    n_images, first = 4, result.index_of_first_image
    assert len(result.images) == first + n_images + n_images * 2     # + one heatmap per LoRA per image
    assert result.images[-1].size == result.images[first].size


def test_img2img(runner):
    from PIL import Image

    def img2img(args):
        p = W.processing.StableDiffusionProcessingImg2Img(
            init_images=[Image.new("RGB", (128, 128), (200, 80, 40))], denoising_strength=0.6,
            prompt="a cat <loratorio:alice:0.8> <loratorio:hat:1>", steps=3, width=128, height=128, seed=3,
            sampler_name="Euler", batch_size=1)
        img2img_runner = W.scripts.ScriptRunner()
        img2img_runner.initialize_scripts(True)
        img2img_runner.setup_ui()
        script = img2img_runner.alwayson_scripts[0]
        p.scripts, p.script_args = img2img_runner, tuple([0] * script.args_from + args)
        return W.processing.process_images(p)

    assert not np.array_equal(pixels(img2img(on(enabled=False))), pixels(img2img(on())))


def test_text_encoder_parts_condition_their_own_branch(runner, capsys):
    prompt = "a cat <loratorio:te_only:1> <loratorio:alice:0.8>"
    per_branch = run(runner, on(), prompt=prompt)
    unet_only = run(runner, on(text_encoder="UNet only"), prompt=prompt)
    assert not np.array_equal(pixels(per_branch), pixels(unet_only))
    # AND parts and a negative prompt longer than 75 tokens (Forge repeats the shorter conds to a common length)
    kw = dict(prompt=prompt + " AND a dog", batch_size=2, negative_prompt="word " * 80)
    and_prompt, and_unet_only = run(runner, on(), **kw), run(runner, on(text_encoder="UNet only"), **kw)
    assert not np.array_equal(pixels(and_prompt, 1), pixels(and_unet_only, 1))
    assert "base text conditioning" not in capsys.readouterr().out
    plain = run(runner, prompt="a cat")  # Forge's cond cache never holds a branch's conds
    W.processing.StableDiffusionProcessing.cached_c[:] = [None, None]
    W.processing.StableDiffusionProcessing.cached_uc[:] = [None, None]
    assert np.array_equal(pixels(plain), pixels(run(runner, prompt="a cat")))


def test_another_extensions_wrapper_is_chained(runner):
    spy = WrapperSpy()
    both = W.scripts.ScriptRunner()
    both.initialize_scripts(False, [spy.script()] + [type(s) for s in runner.alwayson_scripts])
    both.setup_ui()
    p = txt2img(both, steps=2)
    p.script_args = tuple([0] * both.alwayson_scripts[1].args_from + on())
    try:
        result = W.processing.process_images(p)
    finally:
        W.sd15.forge_objects = W.sd15.forge_objects_original.shallow_copy()  # the spy leaves its clone
    assert np.isfinite(pixels(result)).all()
    # both steps' branch evaluations (base + 2 LoRAs, cond and uncond) went through it, a row per chunk
    assert [rows for _, rows, _ in spy.calls] == [6, 6]
    assert all(len(flags) == len(opts["cond_mark"]) == 6
               and opts["cond_indices"] == [j for j in range(6) if not flags[j]]
               for flags, _, opts in spy.calls)


def test_controlnet_outputs_follow_their_rows(runner):
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

            return type("Cn", (W.scripts.Script,), {"title": lambda self: "cn", "ui": lambda self, is_img2img: [],
                                                    "show": lambda self, is_img2img: W.scripts.AlwaysVisible,
                                                    "process_before_every_sampling": pbes})

    both = W.scripts.ScriptRunner()
    both.initialize_scripts(False, [Recorder().script()] + [type(s) for s in runner.alwayson_scripts])
    both.setup_ui()
    p = txt2img(both, steps=1, batch_size=2, prompt="a cat <loratorio:alice:0.8>")
    p.script_args = tuple([0] * both.alwayson_scripts[1].args_from + on())
    try:
        W.processing.process_images(p)
    finally:
        W.sd15.forge_objects = W.sd15.forge_objects_original.shallow_copy()
    (x, control_rows, middle_rows), = seen
    # 4 host rows (uncond images 0, 1, cond images 0, 1) for the base, then the same 4 for the LoRA
    assert middle_rows == 1 and control_rows == [0.0, 1.0, 2.0, 3.0] * 2
    assert all(torch.equal(x[j], x[j % 4]) for j in range(8)) and not torch.equal(x[0], x[1])


def test_forge_keeps_room_for_the_lora_deltas(runner):
    """Forge's loader leaves extra_preserved_memory_during_sampling free on the GPU: LoRAtorio
    adds the bytes of the UNet deltas it will move there."""
    seen = []

    def record(self, p, *args, **kwargs):
        seen.append(p.sd_model.forge_objects.unet.extra_preserved_memory_during_sampling)

    after = type("After", (W.scripts.Script,), {"title": lambda self: "after", "ui": lambda self, is_img2img: [],
                                                 "show": lambda self, is_img2img: W.scripts.AlwaysVisible,
                                                 "process_before_every_sampling": record})
    both = W.scripts.ScriptRunner()
    both.initialize_scripts(False, [type(s) for s in runner.alwayson_scripts] + [after])
    both.setup_ui()
    p = txt2img(both, on(), steps=1)
    p.script_args = tuple([0] * both.alwayson_scripts[0].args_from + on())
    W.processing.process_images(p)
    session = p._loratorio_session
    expected = sum(d.numel() for lora in session.loras for name, _, d in lora.targets if name.startswith("unet:")) * 4
    assert seen == [expected] and expected > 0                  # float32 on the CPU stand-in


def test_forge_lora_tags_stay_in_the_base_and_its_lora_state_is_untouched(runner):
    patcher = W.sd15.forge_objects_original.unet.clone()     # what Forge's Lora extension does for <lora:>
    key = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_k.weight"
    weight = dict(patcher.model.named_parameters())[key]
    up, down = torch.randn(weight.shape[0], 2) * 0.1, torch.randn(2, weight.shape[1]) * 0.1
    patcher.add_patches(filename="plain.safetensors", patches={key: ("lora", (up, down, 2.0, None, None))})
    try:
        W.sd15.forge_objects_after_applying_lora.unet = patcher
        patches = copy.deepcopy(patcher.lora_patches)
        p = txt2img(runner, on())
        p.sd_model.forge_objects_after_applying_lora.unet = patcher
        result = W.processing.process_images(p)
        assert np.isfinite(pixels(result)).all() and str(patcher.lora_patches) == str(patches)
    finally:
        W.sd15.forge_objects_after_applying_lora.unet = W.sd15.forge_objects_original.unet
        loader = W.sd15.forge_objects_original.unet.model.lora_loader
        loader.refresh(lora_patches={}, offload_device=torch.device("cpu"))


# --- model families ---------------------------------------------------------------------------------
def test_sdxl_with_clip_g_text_encoder_lora(runner):
    base = run(runner, prompt="a cat", model=W.sdxl)
    composed = run(runner, on(), prompt="a cat <loratorio:xl_lora:1> <loratorio:xl_te2:1>", model=W.sdxl)
    unet_only = run(runner, on(text_encoder="UNet only"), prompt="a cat <loratorio:xl_lora:1> <loratorio:xl_te2:1>",
                    model=W.sdxl)
    assert not np.array_equal(pixels(base), pixels(composed))
    assert not np.array_equal(pixels(composed), pixels(unet_only))
    with pytest.raises(LoratorioError, match="LoRA 'xl_lora' does not fit the loaded model"):
        run(runner, on(), prompt="a cat <loratorio:xl_lora:1>")     # an SDXL LoRA on the SD1.5 model


def flux_run(runner, args=None, **kw):
    settings = dict(prompt="a robot <loratorio:flux_a:1> <loratorio:flux_b:1>", cfg_scale=1.0, distilled_cfg_scale=3.5,
                    width=64, height=64, steps=2, scheduler="Simple", model=W.flux)
    settings.update(kw)
    return run(runner, args, **settings)


def test_flux_composes_two_loras_conditionally_without_uncond_rows(runner):
    spy_rows = []
    W.script_callbacks.on_cfg_denoiser(lambda params: spy_rows.append(params.text_uncond))
    base = flux_run(runner)
    composed = flux_run(runner, on(show_weight_maps=True))
    assert all(u is None for u in spy_rows)                           # CFG 1: Forge computes no uncond
    assert not np.array_equal(pixels(base), pixels(composed)) and np.isfinite(pixels(composed)).all()
    first = composed.index_of_first_image
    assert len(composed.images) == first + 1 + 2                      # image + a heatmap per LoRA
    single = flux_run(runner, on(recenter=0.0), prompt="a robot <loratorio:flux_a:1>")
    assert np.isfinite(pixels(single)).all()


def test_flux_diffusers_format_lora_binds_to_the_fused_layers(runner):
    from lib_loratorio.webui import session

    composed = flux_run(runner, on(), prompt="a robot <loratorio:flux_a:1> <loratorio:flux_diffusers:1>")
    assert np.isfinite(pixels(composed)).all()
    bound = session.LIBRARY.bind(str(W.lora_dir / "flux_diffusers.safetensors"),
                                 {"unet": W.flux.forge_objects.unet.model.diffusion_model})
    assert not bound.unmatched and {name for name, _, _ in bound.targets} >= {
        "unet:double_blocks.0.img_attn.qkv", "unet:double_blocks.0.txt_attn.qkv", "unet:single_blocks.0.linear1"}


def test_flux_with_real_cfg_keeps_the_base_uncond(runner):
    kw = dict(cfg_scale=3.0, negative_prompt="blurry")
    base = flux_run(runner, **kw)
    no_recentring, full_recentring = flux_run(runner, on(recenter=0.0), **kw), flux_run(runner, on(recenter=1.0), **kw)
    assert np.array_equal(pixels(no_recentring), pixels(full_recentring))      # uncond rows: the base model's
    assert not np.array_equal(pixels(base), pixels(no_recentring))


def test_flux_needs_an_even_patch_size(runner):
    with pytest.raises(LoratorioError, match="patch_size=3 does not fit Flux"):
        flux_run(runner, on(patch_size=3))


# --- failures leave nothing behind -----------------------------------------------------------------------
@pytest.mark.parametrize("prompt, message", [
    ("a cat <loratorio:nobody:1>", "Unknown LoRA 'nobody'"),
    ("a cat <loratorio:alice:strong>", "strength must be a number"),
    ("a cat <loratorio:flux_a:1>", "matches none of the loaded model's modules .* looks like a Flux LoRA"),
])
def test_bad_tags_raise_a_clear_error(runner, prompt, message):
    with pytest.raises(LoratorioError, match=message):
        run(runner, on(), prompt=prompt)


def test_an_sd_lora_on_flux_is_named_as_such(runner):
    with pytest.raises(LoratorioError,
                       match="looks like a LoRA for a UNet model \\(SD1.x/SDXL\\) but the model is Flux"):
        flux_run(runner, on(), prompt="a robot <loratorio:alice:1>")


def test_interrupt_leaves_the_model_clean(runner):
    calls = []

    def interrupt_at_second_call(params):
        calls.append(1)
        if len(calls) == 2:
            W.shared.state.interrupt()

    W.script_callbacks.on_cfg_denoiser(interrupt_at_second_call)
    result = run(runner, on(), steps=4)
    assert len(calls) == 2 and len(result.images) == 1


def test_nan_in_a_branch_is_named(runner):
    from safetensors.torch import load_file, save_file

    import networks

    tensors = load_file(str(W.lora_dir / "alice.safetensors"))
    key = next(k for k in tensors if k.endswith("lora_up.weight"))
    tensors[key] = torch.full_like(tensors[key], 3e38)  # finite in the file, inf in the branch's prediction
    save_file(tensors, str(W.lora_dir / "nan_lora.safetensors"))
    networks.list_available_networks()
    with pytest.raises(LoratorioError, match="^LoRA 'nan_lora' \\(nan_lora.safetensors, <loratorio:nan_lora:1>\\) "
                                            "produced NaN or inf in its conditional prediction. Lower its strength"):
        run(runner, on(), prompt="a cat <loratorio:alice:1> <loratorio:nan_lora:1>")


# --- API ----------------------------------------------------------------------------------------------
PAPER_NAMED = {"patch_size": 4, "mode": "LoRAtorio", "weight_norm": "sum"}  # what on() sets, by name


def test_api_positional_and_named_forms(runner):
    request = dict(prompt="a cat <loratorio:alice:0.8> <loratorio:hat:1>", negative_prompt="blurry", steps=2,
                   width=128, height=128, sampler_name="Euler", seed=3)
    status, positional = W.api.run_txt2img_api({**request, "alwayson_scripts": {"LoRAtorio": {"args": on()}}}, runner)
    assert status == 200
    status, named = W.api.run_txt2img_api(
        {**request, "alwayson_scripts": {"loratorio": {"args": [PAPER_NAMED]}}}, runner)
    assert status == 200 and named["images"][0] == positional["images"][0]
    status, body = W.api.run_txt2img_api(
        {**request, "prompt": "x <loratorio:nobody:1>", "alwayson_scripts": {"LoRAtorio": {"args": on()}}}, runner)
    assert status == 500 and "Unknown LoRA 'nobody'" in body["errors"]
    status, body = W.api.run_txt2img_api(
        {**request, "alwayson_scripts": {"LoRAtorio": {"args": "patch_size=4"}}}, runner)
    assert status == 500 and body["errors"].startswith("LoRAtorio's API args must be a list with one dict")
    status, body = W.api.run_txt2img_api(
        {**request, "prompt": "x <loratorio:>", "alwayson_scripts": {"LoRAtorio": {"args": [{}]}}}, runner)
    assert status == 500 and 'cannot read the tag "<loratorio:>"' in body["errors"]


def test_the_older_forge_is_refused_with_a_message(runner, monkeypatch):
    import importlib
    import importlib.util

    from lib_loratorio.webui import host

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "ldm_patched" else real(name, *a))
    try:
        importlib.reload(host)
        assert host.HOST == "forge-legacy"
        W.scripts.load_scripts([os.path.join(ROOT, "scripts", "loratorio.py")])
        old = W.scripts.ScriptRunner()
        old.initialize_scripts(False)
        old.setup_ui()
        assert np.isfinite(pixels(run(old))).all()                       # off: generation untouched
        with pytest.raises(LoratorioError, match="older Forge"):
            run(old, on())
    finally:
        monkeypatch.undo()
        importlib.reload(host)
        W.scripts.load_scripts([os.path.join(ROOT, "scripts", "loratorio.py")])
    assert host.HOST == "forge"


# --- LoRAtorio Fast ------------------------------------------------------------------------------------------
def test_fast_mode_on_sd15(runner):
    fast = run(runner, on(mode="LoRAtorio Fast", refresh_first=1, refresh_every=3, show_weight_maps=True), steps=5)
    params = W.infotext_utils.parse_generation_parameters(fast.infotexts[0])
    assert params["LoRAtorio mode"] == "LoRAtorio Fast"
    assert len(fast.images) == fast.index_of_first_image + 1 + 2
    base, exact = run(runner, steps=5), run(runner, on(recenter=1.0), steps=5)
    assert not np.array_equal(pixels(fast), pixels(base)) and not np.array_equal(pixels(fast), pixels(exact))
    every_step = run(runner, on(mode="LoRAtorio Fast", refresh_first=1, refresh_every=1), steps=5)
    assert np.array_equal(pixels(every_step), pixels(exact))


def test_fast_mode_on_flux_routes_the_image_tokens_of_joint_sequences(runner, monkeypatch):
    from lib_loratorio.layer_maps import LayerMaps

    counts = []
    original = LayerMaps._token_weights

    def spy(self, count):
        found = original(self, count)
        counts.append((count, self.prefix_tokens, found is not None))
        return found

    monkeypatch.setattr(LayerMaps, "_token_weights", spy)
    fast = flux_run(runner, on(mode="LoRAtorio Fast", refresh_first=1, refresh_every=4), steps=3)
    assert np.isfinite(pixels(fast)).all() and not np.array_equal(pixels(fast), pixels(flux_run(runner)))
    image_tokens = (64 // 8 // 2) ** 2                      # 64 px -> 8x8 latent -> 4x4 packed tokens
    assert any(found and prefix > 0 and count == prefix + image_tokens for count, prefix, found in counts)
    assert all(found for count, _, found in counts if count == image_tokens)
