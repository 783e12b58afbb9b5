"""The extension end to end in the A1111 1.10.1 stand-in: UI, tags, sampling hook, API, infotext, cleanup."""

import copy
import os
import re
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STANDIN = os.path.join(ROOT, "tests", "a1111_standin")
if STANDIN not in sys.path:
    sys.path.insert(0, STANDIN)

import standin_models  # noqa: E402
from modules import extra_networks, infotext_utils, processing, script_callbacks, scripts, shared  # noqa: E402
from modules.api import api  # noqa: E402

from lib_loratorio.errors import LoratorioError  # noqa: E402
from lib_loratorio.params import LoratorioParams  # noqa: E402
from tests.extension_helpers import SETTINGS, UNET_TARGETS, check_accordion_layout, hook_ids, make_txt2img, on, pixels  # noqa: E402
from tests.lora_writers import write_kohya  # noqa: E402


@pytest.fixture(scope="module")
def sd15(one_thread):
    return standin_models.make_sd15_model()


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory, sd15):
    folder = tmp_path_factory.mktemp("Lora")
    unet = sd15.model.diffusion_model.unet            # kohya SD1.5 files use diffusers names
    (folder / "styles").mkdir()
    for i, (name, fmt) in enumerate([("alice", "lora"), ("hat", "locon_tucker"), ("styles/ink", "loha")]):
        write_kohya(folder / f"{name}.safetensors", unet, UNET_TARGETS, fmt=fmt, seed=10 + i, alpha=8.0, rank=4)
    te = sd15.cond_stage_model.wrapped.transformer
    write_kohya(folder / "te_only.safetensors", te, ["encoder.layers.0.self_attn.q_proj", "encoder.layers.1.mlp.fc2"],
                component="te1", prefix="lora_te_text_model_", seed=5, alpha=8.0)
    xl = standin_models.make_sdxl_model()
    xl_targets = ["input_blocks.4.1.transformer_blocks.0.attn1.to_k", "middle_block.1.transformer_blocks.0.attn2.to_k"]
    write_kohya(folder / "xl_lora.safetensors", xl.model.diffusion_model, xl_targets, seed=7, alpha=8.0)
    (folder / "broken.safetensors").write_bytes((folder / "alice.safetensors").read_bytes()[:-64])  # truncated
    return folder


@pytest.fixture
def runner(sd15, lora_dir):
    shared.opts.reset()
    shared.state.begin()
    shared.sd_model = sd15
    shared.cmd_opts.lora_dir = str(lora_dir)
    processing.StableDiffusionProcessing.cached_c[:] = [None, None]
    processing.StableDiffusionProcessing.cached_uc[:] = [None, None]
    scripts.load_scripts([os.path.join(ROOT, "scripts", "loratorio.py")])
    extra_networks.initialize()
    script_callbacks.before_ui_callback()
    script_callbacks.app_started_callback(None, None)
    import networks
    networks.list_available_networks()
    runner = scripts.ScriptRunner()
    runner.initialize_scripts(False)
    runner.setup_ui()
    before = {k: v.clone() for k, v in sd15.state_dict().items()}
    hooks = hook_ids(sd15)
    yield runner
    after = sd15.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "model weights changed"
    assert hook_ids(sd15) == hooks, "hooks left installed"
    script_callbacks.clear_callbacks()
    shared.state.begin()


def txt2img(runner, args=None, **kw):
    return make_txt2img(processing, runner, args, **kw)


def run(runner, args=None, **kw):
    return processing.process_images(txt2img(runner, args, **kw))


# --- UI --------------------------------------------------------------------------------------------------
def test_accordion_holds_every_setting_with_its_default(runner):
    script = runner.alwayson_scripts[0]
    controls = runner.inputs[script.args_from:script.args_to]
    assert script.title() == "LoRAtorio" and len(controls) == len(SETTINGS)
    defaults = LoratorioParams()
    assert [c.value for c in controls[1:6]] == [defaults.mode, defaults.patch_size, defaults.temperature,
                                                defaults.recenter, defaults.top_k]
    assert controls[0].value is False                        # closed accordion = disabled
    assert set(script.paste_field_names) >= {"LoRAtorio", "LoRAtorio patch size", "LoRAtorio temperature"}


def test_the_accordion_is_compact_and_shows_the_settings_of_the_mode(runner):
    check_accordion_layout(runner)


# --- off = untouched -----------------------------------------------------------------------------------
def test_disabled_is_bit_identical_to_the_webui_without_the_extension(runner, sd15):
    with_ext = run(runner)
    bare = scripts.ScriptRunner()
    bare.initialize_scripts(False, [])
    bare.setup_ui()
    p = processing.StableDiffusionProcessingTxt2Img(prompt="a cat <loratorio:alice:0.8> <loratorio:hat:1>",
                                                    negative_prompt="blurry", steps=3, width=128, height=128,
                                                    batch_size=1, sampler_name="Euler", seed=3, cfg_scale=5.0)
    p.scripts, p.script_args = bare, (0,)
    without = processing.process_images(p)
    assert np.array_equal(pixels(with_ext), pixels(without))
    assert "LoRAtorio" not in with_ext.infotexts[0]


def test_enabled_without_tags_changes_nothing_and_says_so_once(runner, capsys):
    base = run(runner, prompt="a cat")
    enabled = run(runner, on(), prompt="a cat", batch_size=2, n_iter=2)
    assert np.array_equal(pixels(base), pixels(enabled))
    assert capsys.readouterr().out.count("LoRAtorio is on but the prompt has no <loratorio:NAME:STRENGTH> tag") == 1


def test_ignored_tags_are_noted_once_per_request(runner, capsys):
    hires = {"enable_hr": True, "hr_scale": 1.5, "denoising_strength": 0.5, "hr_second_pass_steps": 1, "steps": 2}
    run(runner, batch_size=2, n_iter=2, **hires)        # LoRAtorio off: activate runs 2 x (first pass + hires)
    assert capsys.readouterr().out.count("tags are ignored while LoRAtorio is off") == 1
    run(runner, steps=1)
    assert capsys.readouterr().out.count("tags are ignored while LoRAtorio is off") == 1   # a new request, a new note


# --- on -----------------------------------------------------------------------------------------------
def test_two_tags_compose_and_write_infotext(runner):
    base = run(runner)
    composed = run(runner, on())
    assert not np.array_equal(pixels(base), pixels(composed))
    params = infotext_utils.parse_generation_parameters(composed.infotexts[0])
    assert params["LoRAtorio"] == "True" and params["LoRAtorio patch size"] == "4"
    assert params["LoRAtorio hashes"].startswith("alice: ") and ", hat: " in params["LoRAtorio hashes"]
    assert "<loratorio:alice:0.8>" in params["Prompt"]


def test_infotext_pastes_back_into_the_accordion(runner):
    wanted = dict(mode="Composite", patch_size=2, temperature=0.02, recenter=1.0, top_k=1, selection="global",
                  use_lora_tags=False, show_weight_maps=False, pool=["alice", "hat"], step_end=0.8)
    result = run(runner, on(**wanted), steps=2)
    script = runner.alwayson_scripts[0]
    controls = runner.inputs[script.args_from:script.args_to]
    pasted = infotext_utils.paste_values(script.infotext_fields, result.infotexts[0])
    values = [update.get("value", control.value) for update, control in zip(pasted, controls, strict=True)]
    assert LoratorioParams.from_args(values) == LoratorioParams.from_args(on(**wanted))


def test_one_lora_without_recentring_equals_the_merged_model(runner, sd15):
    from lib_loratorio.lora_files import read_lora_file
    from lib_loratorio.network_names import bind_lora

    composed = run(runner, on(recenter=0.0), prompt="a cat <loratorio:alice:0.8>")
    merged_model = copy.deepcopy(sd15)
    unet = merged_model.model.diffusion_model
    bound = bind_lora(read_lora_file(os.path.join(shared.cmd_opts.lora_dir, "alice.safetensors")), {"unet": unet})
    with torch.no_grad():
        for _, module, delta in bound.targets:
            module.weight += 0.8 * delta.weight_delta(module)
    shared.sd_model = merged_model
    try:
        merged = run(runner, prompt="a cat")
    finally:
        shared.sd_model = sd15
    assert np.abs(pixels(composed) - pixels(merged)).max() <= 1.0  # 8-bit images: rounding only


@pytest.mark.parametrize("pattern", ["chunks", "separate uncond", "separate uncond chunked"])
def test_every_call_pattern_composes_the_same(runner, pattern):
    kw = dict(prompt="a cat AND a dog <loratorio:alice:0.8> <loratorio:hat:1>", batch_size=2)
    if pattern == "chunks":
        reference = run(runner, on(), **kw)
        shared.opts.batch_cond_uncond = False
        other = run(runner, on(), **kw)
    else:
        kw["negative_prompt"] = "word " * 80       # longer than 75 tokens: cond and uncond called apart
        reference = run(runner, on(), **kw)
        shared.opts.batch_cond_uncond = pattern == "separate uncond"
        other = run(runner, on(), **kw)
    for i in range(1, 3):
        assert np.abs(pixels(reference, i) - pixels(other, i)).max() <= 1.0


def test_skip_uncond_steps_and_ddim(runner):
    p = txt2img(runner, on(), s_min_uncond=100.0, steps=4)
    result = processing.process_images(p)
    assert np.isfinite(pixels(result)).all()
    ddim_base = run(runner, sampler_name="DDIM", steps=4)
    ddim = run(runner, on(), sampler_name="DDIM", steps=4)
    assert not np.array_equal(pixels(ddim_base), pixels(ddim))


def test_hires_fix_batch_count_and_weight_maps(runner):
    result = run(runner, on(show_weight_maps=True), n_iter=2, batch_size=2, enable_hr=True, hr_scale=1.5,
                 denoising_strength=0.5, hr_second_pass_steps=2)
    n_images = 4
    first = result.index_of_first_image
    assert len(result.images) == first + n_images + n_images * 2     # + one heatmap per LoRA per image
    assert result.images[-1].size == result.images[first].size
    with_steps = run(runner, on(show_weight_maps=True, weight_map_steps=[0.0, 0.5]), steps=4)
    first = with_steps.index_of_first_image
    assert len(with_steps.images) == first + 1 + 3 * 2                # mean, step 1 and step 3: 2 LoRAs each


def test_img2img_with_batch_count(runner):
    from PIL import Image

    def img2img(args):
        p = processing.StableDiffusionProcessingImg2Img(
            init_images=[Image.new("RGB", (128, 128), (200, 80, 40))], denoising_strength=0.6, n_iter=2,
            prompt="a cat <loratorio:alice:0.8> <loratorio:hat:1>", steps=3, width=128, height=128, seed=3,
            sampler_name="Euler", batch_size=1)
        img2img_runner = scripts.ScriptRunner()
        img2img_runner.initialize_scripts(True)
        img2img_runner.setup_ui()
        script = img2img_runner.alwayson_scripts[0]
        p.scripts, p.script_args = img2img_runner, tuple([0] * script.args_from + args)
        return processing.process_images(p)

    base, composed = img2img(on(enabled=False)), img2img(on(show_weight_maps=True))
    assert len(composed.images) == len(base.images) + 2 * 2
    assert not np.array_equal(pixels(base), pixels(composed))


def test_refiner_steps_run_the_refiner_alone(runner, sd15):
    refiner = standin_models.make_sd15_model("refiner", seed=1)
    hooks = hook_ids(refiner)
    p = txt2img(runner, on(), steps=4, refiner_switch_at=0.5, refiner_model=refiner)
    result = processing.process_images(p)
    assert np.isfinite(pixels(result)).all() and hook_ids(refiner) == hooks
    shared.sd_model = sd15


def test_text_encoder_parts_condition_their_own_branch(runner):
    per_branch = run(runner, on(), prompt="a cat <loratorio:te_only:1> <loratorio:alice:0.8>")
    unet_only = run(runner, on(text_encoder="UNet only"), prompt="a cat <loratorio:te_only:1> <loratorio:alice:0.8>")
    assert not np.array_equal(pixels(per_branch), pixels(unet_only))
    # the WebUI's cond cache never holds a branch's conds: a plain run afterwards is unchanged
    plain_1 = run(runner, prompt="a cat")
    processing.StableDiffusionProcessing.cached_c[:] = [None, None]
    processing.StableDiffusionProcessing.cached_uc[:] = [None, None]
    assert np.array_equal(pixels(plain_1), pixels(run(runner, prompt="a cat")))


def test_prompt_lora_tags_as_branches_and_subfolder_names(runner):
    as_lora = run(runner, on(use_lora_tags=True), prompt="a cat <lora:alice:0.8> <lora:styles/ink:1>")
    as_loratorio = run(runner, on(), prompt="a cat <loratorio:alice:0.8> <loratorio:ink:1>")
    assert np.array_equal(pixels(as_lora), pixels(as_loratorio))


def test_pool_with_top_k(runner):
    result = run(runner, on(pool=["alice", "hat", "styles"], top_k=2), prompt="a cat")
    assert "LoRAtorio hashes" in result.infotexts[0] and "ink: " in result.infotexts[0]


def test_switch_and_composite_modes_and_step_range(runner):
    images = [pixels(run(runner, on(mode=mode))) for mode in ("LoRAtorio", "Composite", "Switch")]
    assert not np.array_equal(images[0], images[1]) and not np.array_equal(images[1], images[2])
    ranged = run(runner, on(step_start=0.0, step_end=0.5, outside_steps="off"))
    assert not np.array_equal(pixels(ranged), images[0])


def test_sdxl_model(runner, sd15):
    xl = standin_models.make_sdxl_model()
    hooks = hook_ids(xl)
    shared.sd_model = xl
    try:
        base = run(runner, prompt="a cat")
        composed = run(runner, on(), prompt="a cat <loratorio:xl_lora:1> <loratorio:xl_lora:-1>")
        assert not np.array_equal(pixels(base), pixels(composed))
    finally:
        shared.sd_model = sd15
    assert hook_ids(xl) == hooks
    with pytest.raises(LoratorioError,
                       match=r"LoRA 'xl_lora' does not fit the loaded model.* \(in <loratorio:xl_lora:1>\)$"):
        run(runner, on(), prompt="a cat <loratorio:xl_lora:1>")     # an SDXL LoRA on the SD1.5 model


# --- failures leave nothing behind -----------------------------------------------------------------------
RIGHT_FORM = re.escape("write <loratorio:NAME:STRENGTH>, e.g. <loratorio:alice:0.8>")


@pytest.mark.parametrize("prompt, message", [
    ("a cat <loratorio:nobody:1>", "Unknown LoRA 'nobody' in <loratorio:nobody:1>"),
    ("a cat <loratorio:broken:1>", r"'broken.safetensors' is not a readable .* \(in <loratorio:broken:1>\)$"),
    ("a cat <loratorio:alice:strong>",
     'In the tag "<loratorio:alice:strong>" the strength must be a number: ' + RIGHT_FORM),
    ("a cat <loratorio:alice:nan>", 'In the tag "<loratorio:alice:nan>" the strength must be a number'),
    ("a cat <loratorio::0.8>", 'The tag "<loratorio::0.8>" names no LoRA: ' + RIGHT_FORM),
    ("a cat <loratorio:w=0.8>", 'The tag "<loratorio:w=0.8>" names no LoRA'),
    # left in the prompt by the WebUI's parser, which needs a name and a closing '>'
    ("a cat <loratorio:>", 'LoRAtorio cannot read the tag "<loratorio:>" in the prompt: ' + RIGHT_FORM),
    ("a cat <loratorio:alice:0.8 in a hat", 'cannot read the tag "<loratorio:alice:0.8 in a hat"'),
    ("a cat <loratorio:alice:1> <loratorio:>", 'cannot read the tag "<loratorio:>"'),
])
def test_bad_tags_raise_a_clear_error(runner, prompt, message):
    with pytest.raises(LoratorioError, match=message):
        run(runner, on(), prompt=prompt)


def test_invalid_setting_raises_a_clear_error(runner):
    args = on()
    args[SETTINGS.index("patch_size")] = 0
    with pytest.raises(LoratorioError, match="patch_size=0 is invalid"):
        run(runner, args)


def test_interrupt_leaves_the_model_clean(runner):
    calls = []

    def interrupt_at_second_call(params):
        calls.append(1)
        if len(calls) == 2:
            shared.state.interrupt()

    script_callbacks.on_cfg_denoiser(interrupt_at_second_call)
    result = run(runner, on(), steps=4)
    assert len(calls) == 2 and len(result.images) == 1    # sampling stopped, the image was still made


def test_nan_in_a_branch_is_named_and_the_model_stays_clean(runner, lora_dir):
    from safetensors.torch import load_file, save_file

    import networks

    tensors = load_file(str(lora_dir / "alice.safetensors"))
    key = next(k for k in tensors if k.endswith("lora_up.weight"))
    tensors[key] = torch.full_like(tensors[key], 3e38)  # finite in the file, inf in the branch's prediction
    save_file(tensors, str(lora_dir / "nan_lora.safetensors"))
    networks.list_available_networks()
    with pytest.raises(LoratorioError, match="^LoRA 'nan_lora' \\(nan_lora.safetensors, <loratorio:nan_lora:1>\\) "
                                            "produced NaN or inf in its conditional prediction. Lower its strength"):
        run(runner, on(), prompt="a cat <loratorio:alice:1> <loratorio:nan_lora:1>")


# --- API ----------------------------------------------------------------------------------------------
PAPER_NAMED = {"patch_size": 4, "mode": "LoRAtorio", "weight_norm": "sum"}  # what on() sets, by name


def test_api_positional_and_named_forms(runner):
    request = dict(prompt="a cat <loratorio:alice:0.8> <loratorio:hat:1>", negative_prompt="blurry", steps=2,
                   width=128, height=128, sampler_name="Euler", seed=3)
    status, positional = api.run_txt2img_api({**request, "alwayson_scripts": {"LoRAtorio": {"args": on()}}}, runner)
    assert status == 200
    status, named = api.run_txt2img_api(
        {**request, "alwayson_scripts": {"loratorio": {"args": [PAPER_NAMED]}}}, runner)
    assert status == 200 and named["images"][0] == positional["images"][0]
    status, body = api.run_txt2img_api(
        {**request, "alwayson_scripts": {"LoRAtorio": {"args": [{"patch": 4}]}}}, runner)
    assert status == 500 and "Unknown LoRAtorio setting(s): patch" in body["errors"]
    status, body = api.run_txt2img_api(
        {**request, "prompt": "x <loratorio:nobody:1>", "alwayson_scripts": {"LoRAtorio": {"args": on()}}}, runner)
    assert status == 500 and "Unknown LoRA 'nobody'" in body["errors"]
    status, body = api.run_txt2img_api(
        {**request, "prompt": "x <loratorio:>", "alwayson_scripts": {"LoRAtorio": {}}}, runner)
    assert status == 200                                                      # off: the text is the user's
    status, body = api.run_txt2img_api(
        {**request, "prompt": "x <loratorio:>", "alwayson_scripts": {"LoRAtorio": {"args": [{}]}}}, runner)
    assert status == 500 and 'cannot read the tag "<loratorio:>"' in body["errors"]


@pytest.mark.parametrize("args, got", [
    ("patch_size=4", 'got the string "patch_size=4".'),
    (4, "got the number 4."),
    ([[True, "LoRAtorio", 4]], "got a list inside the list: drop the outer brackets."),
    ([{"patch_size": 4}, True], "got a dict followed by 1 more element(s): put every named setting in the one dict."),
    ({"patch_size": 4}, 'got the dict {"patch_size": 4}: put it in a list.'),
])
def test_api_args_of_the_wrong_shape_name_both_forms(runner, args, got):
    request = {"prompt": "a cat <loratorio:alice:0.8>", "steps": 1, "width": 64, "height": 64, "sampler_name": "Euler",
               "alwayson_scripts": {"loratorio": {"args": args}}}
    status, body = api.run_txt2img_api(request, runner)
    assert status == 500 and body["errors"].startswith(
        "LoRAtorio's API args must be a list with one dict of named settings, e.g. [{\"patch_size\": 4}], or the "
        "positional list [true, \"LoRAtorio\", 4, ...]") and body["errors"].endswith(got)


# --- memory settings and modules left out ------------------------------------------------------------------
def test_memory_settings_are_in_the_settings_tab_and_bound_what_is_kept(runner, capsys):
    from lib_loratorio.webui import memory_settings
    from lib_loratorio.webui.session import LIBRARY

    script_callbacks.ui_settings_callback()
    script_callbacks.model_loaded_callback(shared.sd_model)          # the WebUI fires it on every model load
    assert not LIBRARY._bound
    for key in (memory_settings.FILE_CACHE, memory_settings.BUILD_CACHE):
        info = shared.opts.data_labels[key]
        assert info.section == ("loratorio", "LoRAtorio") and info.default > 0
    LIBRARY.clear()
    run(runner, on(), prompt="a cat <loratorio:alice:0.8> <loratorio:styles/ink:1>")   # a LoRA and a LoHa
    both = LIBRARY.bytes
    shared.opts.loratorio_file_cache_mb = 0                           # keep only the file read last
    shared.opts.loratorio_build_cache_mb = 0                          # build LoHa weights when needed, keep none
    kept = run(runner, on(), prompt="a cat <loratorio:alice:0.8> <loratorio:styles/ink:1>")
    assert 0 < LIBRARY.bytes < both and len(LIBRARY._files) == 1
    shared.opts.loratorio_file_cache_mb, shared.opts.loratorio_build_cache_mb = 2048, 1024
    again = run(runner, on(), prompt="a cat <loratorio:alice:0.8> <loratorio:styles/ink:1>")
    assert np.array_equal(pixels(kept), pixels(again))               # the budgets change memory, not the image


def test_modules_a_lora_leaves_out_are_logged_once_and_counted_in_the_infotext(runner, lora_dir, capsys):
    from safetensors.torch import load_file, save_file

    import networks

    tensors = load_file(str(lora_dir / "alice.safetensors"))
    tensors["lora_unet_no_such_block_proj.lora_down.weight"] = torch.randn(2, 8)
    tensors["lora_unet_no_such_block_proj.lora_up.weight"] = torch.randn(8, 2)
    tensors["lora_unet_mid_block_attentions_0_norm.w_norm"] = torch.randn(8)   # a key of no LoRA layout
    save_file(tensors, str(lora_dir / "partial.safetensors"))
    networks.list_available_networks()
    first = run(runner, on(), prompt="a cat <loratorio:partial:1>")
    params = infotext_utils.parse_generation_parameters(first.infotexts[0])
    applied = len(UNET_TARGETS)
    assert params["LoRAtorio modules not applied"] == f"partial: 2 of {applied + 2}"
    run(runner, on(), prompt="a cat <loratorio:partial:1>")
    logged = [line for line in capsys.readouterr().out.splitlines() if "not every module" in line]
    assert len(logged) == 1
    assert "1: no module of that name in the model (e.g. unet:no_such_block_proj)" in logged[0]
    assert "1: key of no known LoRA layout (e.g. lora_unet_mid_block_attentions_0_norm.w_norm)" in logged[0]


# --- LoRAtorio Fast ------------------------------------------------------------------------------------------
def _unet_batches(sd15):
    """Rows of every UNet forward while the block runs (a forward pre-hook on the stand-in's UNet)."""
    seen = []
    handle = sd15.model.diffusion_model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0]))
    return seen, handle


def test_fast_mode_refreshes_on_schedule_and_runs_one_row_each_between(runner, sd15):
    seen, handle = _unet_batches(sd15)
    try:
        fast = run(runner, on(mode="LoRAtorio Fast", refresh_first=1, refresh_every=3), steps=6)
    finally:
        handle.remove()
    assert seen == [4, 2, 2, 4, 2, 2]        # refresh: 3 prompt branches + the base negative; between: 2 rows
    params = infotext_utils.parse_generation_parameters(fast.infotexts[0])
    assert params["LoRAtorio mode"] == "LoRAtorio Fast"
    assert (params["LoRAtorio refresh first"], params["LoRAtorio refresh every"]) == ("1", "3")
    base, exact = run(runner, steps=6), run(runner, on(recenter=1.0), steps=6)
    assert not np.array_equal(pixels(fast), pixels(base)) and not np.array_equal(pixels(fast), pixels(exact))
    every_step = run(runner, on(mode="LoRAtorio Fast", refresh_first=1, refresh_every=1), steps=6)
    assert np.array_equal(pixels(every_step), pixels(exact))   # refreshing every step is LoRAtorio at re-centring 1


def test_fast_mode_with_hires_batch_and_weight_maps(runner, sd15):
    weights = {k: v.clone() for k, v in sd15.state_dict().items()}
    result = run(runner, on(mode="LoRAtorio Fast", show_weight_maps=True), n_iter=2, batch_size=2, enable_hr=True,
                 hr_scale=1.5, denoising_strength=0.5, hr_second_pass_steps=3, steps=4)
    first = result.index_of_first_image
    assert len(result.images) == first + 4 + 4 * 2
    assert all(torch.equal(v, weights[k]) for k, v in sd15.state_dict().items())


def test_the_defaults_are_loratorio_fast_with_owner_weights_and_old_infotexts_keep_their_weights(runner, sd15):
    seen, handle = _unet_batches(sd15)
    try:
        default = run(runner, [True] + [getattr(LoratorioParams(), n) for n in SETTINGS[1:]], steps=6)
    finally:
        handle.remove()
    assert seen == [4, 2, 2, 2, 2, 2]                       # refresh first 1, every 10: step 1 of 6
    params = infotext_utils.parse_generation_parameters(default.infotexts[0])
    assert (params["LoRAtorio mode"], params["LoRAtorio weights"]) == ("LoRAtorio Fast", "max")
    script = runner.alwayson_scripts[0]
    old = default.infotexts[0].replace(", LoRAtorio weights: max", "")   # an image from before the setting
    pasted = infotext_utils.paste_values(script.infotext_fields, old)
    by_name = dict(zip(SETTINGS, pasted, strict=True))
    assert by_name["weight_norm"]["value"] == "sum" and by_name["mode"]["value"] == "LoRAtorio Fast"
