"""The extension end to end on both WebUI stand-ins (A1111 1.10.1 and Forge dfdcbab): what LoRAtorio does the same
on both (UI, tags, composing, infotext, API, errors, cleanup). What only one host has: test_a1111_extension.py,
test_forge_extension.py. Every test runs once per host (the ``webui`` fixture) and leaves every model's weights
and hooks as they were (``WebUIHost.script_runner``)."""

import os
import re

import numpy as np
import pytest
import torch

from lib_loratorio.errors import LoratorioError
from lib_loratorio.params import LoratorioParams
from tests.extension_helpers import (
    SETTINGS,
    UNET_TARGETS,
    check_accordion_layout,
    close,
    merged_model,
    merged_run,
    on,
    pixels,
    unet_rows,
)

PAPER_NAMED = {"patch_size": 4, "mode": "LoRAtorio", "weight_norm": "sum"}  # what on() sets, by name


@pytest.fixture
def runner(webui):
    with webui.script_runner() as runner:
        yield runner


# --- UI ------------------------------------------------------------------------------------------------
def test_the_host_is_detected_and_the_accordion_holds_every_setting(webui, runner):
    from lib_loratorio.webui import host

    assert host.HOST == webui.name
    script = runner.alwayson_scripts[0]
    controls = runner.inputs[script.args_from:script.args_to]
    assert script.title() == "LoRAtorio" and len(controls) == len(SETTINGS)
    defaults = LoratorioParams()
    assert [c.value for c in controls[1:6]] == [defaults.mode, defaults.patch_size, defaults.temperature,
                                                defaults.recenter, defaults.top_k]
    assert controls[0].value is False                        # closed accordion = disabled
    assert set(script.paste_field_names) >= {"LoRAtorio", "LoRAtorio patch size", "LoRAtorio temperature"}
    check_accordion_layout(runner)


# --- off = untouched -----------------------------------------------------------------------------------
def test_disabled_is_bit_identical_to_the_webui_without_the_extension(webui, runner):
    with_ext = webui.run(runner)
    bare = webui.scripts.ScriptRunner()
    bare.initialize_scripts(False, [])
    bare.setup_ui()
    p = webui.txt2img(runner)
    p.scripts, p.script_args = bare, (0,)
    without = webui.processing.process_images(p)
    assert np.array_equal(pixels(with_ext), pixels(without)) and "LoRAtorio" not in with_ext.infotexts[0]


def test_enabled_without_tags_changes_nothing_and_says_so_once(webui, runner, capsys):
    base = webui.run(runner, prompt="a cat", n_iter=2)
    enabled = webui.run(runner, on(), prompt="a cat", n_iter=2)           # the same batch shape: bit for bit
    assert all(np.array_equal(pixels(base, i), pixels(enabled, i)) for i in range(len(base.images)))
    assert capsys.readouterr().out.count("LoRAtorio is on but the prompt has no <loratorio:NAME:STRENGTH> tag") == 1


def test_ignored_tags_are_noted_once_per_request(webui, runner, capsys):
    hires = {"enable_hr": True, "hr_scale": 1.5, "denoising_strength": 0.5, "hr_second_pass_steps": 1, "steps": 2}
    webui.run(runner, batch_size=2, n_iter=2, **hires)  # LoRAtorio off: activate runs 2 x (first pass + hires)
    assert capsys.readouterr().out.count("tags are ignored while LoRAtorio is off") == 1
    webui.run(runner, steps=1)
    assert capsys.readouterr().out.count("tags are ignored while LoRAtorio is off") == 1  # a new request, a new note


# --- composing ------------------------------------------------------------------------------------------
def test_two_tags_compose_and_write_infotext(webui, runner):
    composed = webui.run(runner, on())
    assert not np.array_equal(pixels(webui.run(runner)), pixels(composed))
    params = webui.infotext_utils.parse_generation_parameters(composed.infotexts[0])
    assert params["LoRAtorio"] == "True" and params["LoRAtorio patch size"] == "4"
    assert params["LoRAtorio hashes"].startswith("alice: ") and ", hat: " in params["LoRAtorio hashes"]
    assert "<loratorio:alice:0.8>" in params["Prompt"]
    # two tags of one LoRA: identical branches share every patch equally, which is that LoRA alone
    twice = webui.run(runner, on(), prompt="a cat <loratorio:alice:0.8> <loratorio:alice:0.8>")
    assert close(pixels(twice), pixels(webui.run(runner, on(), prompt="a cat <loratorio:alice:0.8>")))


def _heat(image) -> np.ndarray:
    """A weight-map picture's luminance below its caption band."""
    a = np.asarray(image.convert("L"), dtype=np.float32)
    return a[a.shape[0] // 4:]


def test_region_hints_keep_each_lora_in_its_region(webui, runner):
    # two LoRAs hinted to the two halves: each one's heatmap minus the other's (the picture under both cancels)
    # is bright on its own half and dark on the other; the hint strength is in the infotext
    hinted = webui.run(runner, on(show_weight_maps=True),
                       prompt="a cat <loratorio:alice:0.8:left> <loratorio:hat:1:0.5,0,1,1>")
    alice, hat = (_heat(im) for im in hinted.images[hinted.index_of_first_image + 1:])
    diff = alice - hat
    half = diff.shape[1] // 2
    assert diff[:, :half].mean() > 50 and diff[:, half:].mean() < -50
    params = webui.infotext_utils.parse_generation_parameters(hinted.infotexts[0])
    assert params["LoRAtorio region hint strength"] == "8.0" and "<loratorio:alice:0.8:left>" in params["Prompt"]
    # without hints the same LoRAs share the image: no such split
    plain = webui.run(runner, on(show_weight_maps=True))
    alice, hat = (_heat(im) for im in plain.images[plain.index_of_first_image + 1:])
    assert abs((alice - hat)[:, :half].mean() - (alice - hat)[:, half:].mean()) < 30
    # hint strength 0 turns the hints off: the image of the tags without regions
    off = webui.run(runner, on(hint_strength=0.0), prompt="a cat <loratorio:alice:0.8:left> <loratorio:hat:1:right>")
    assert np.array_equal(pixels(off), pixels(webui.run(runner, on())))


def test_stack_is_the_merged_loras_on_the_prompt_and_the_base_on_the_negative_prompt(webui, runner):
    seen, handle = unet_rows(webui)
    try:
        stack = webui.run(runner, on(mode="Stack"), steps=3)
    finally:
        handle.remove()
    assert seen == [2] * 3  # one prompt row and one negative-prompt row a step, as the plain WebUI
    # at CFG 1 only the prompt's prediction counts: every LoRA merged at its strength
    at_cfg_1 = webui.run(runner, on(mode="Stack"), steps=3, cfg_scale=1.0)
    both = {"alice": 0.8, "hat": 1.0}
    assert close(pixels(at_cfg_1), pixels(merged_run(webui, runner, both, steps=3, cfg_scale=1.0)))
    # at CFG 7 the negative prompt's prediction is the base model's, where a merge's is the merged model's
    merged = merged_run(webui, runner, both, steps=3)
    assert not close(pixels(stack), pixels(merged))
    params = webui.infotext_utils.parse_generation_parameters(stack.infotexts[0])
    assert params["LoRAtorio mode"] == "Stack"


def test_one_lora_without_recentring_equals_the_merged_model(webui, runner):
    composed = webui.run(runner, on(recenter=0.0), prompt="a cat <loratorio:alice:0.8>")
    assert close(pixels(composed), pixels(merged_run(webui, runner, {"alice": 0.8})))


def test_switch_and_composite_are_their_lora_branches(webui, runner):
    """Switch every >= the steps runs the first LoRA alone; Composite of one LoRA is that LoRA: the merged model."""
    alice = pixels(merged_run(webui, runner, {"alice": 0.8}))
    assert close(pixels(webui.run(runner, on(mode="Switch", switch_every=5))), alice)
    assert close(pixels(webui.run(runner, on(mode="Composite"), prompt="a cat <loratorio:alice:0.8>")), alice)
    rotating = webui.run(runner, on(mode="Switch", switch_every=1), steps=4)
    assert not np.array_equal(pixels(rotating), pixels(webui.run(runner, on(mode="Switch", switch_every=5), steps=4)))


def test_outside_the_step_range_the_loras_are_merged_or_left_out(webui, runner):
    never = {"step_start": 0.99, "step_end": 1.0}       # no step of 4 lies in the range
    off = webui.run(runner, on(outside_steps="off", **never), steps=4)
    assert np.array_equal(pixels(off), pixels(webui.run(runner, steps=4)))       # the base model on every step
    merge = webui.run(runner, on(outside_steps="merge", **never), steps=4)
    assert close(pixels(merge), pixels(merged_run(webui, runner, {"alice": 0.8, "hat": 1.0}, steps=4)))
    seen, handle = unet_rows(webui)
    try:
        webui.run(runner, on(step_end=0.5, outside_steps="off"), steps=4)
    finally:
        handle.remove()
    assert seen == [6, 6, 2, 2]                         # 3 branches x (prompt, negative), then the base model's 2 rows


def test_text_encoder_parts_condition_their_own_branch(webui, runner, capsys):
    prompt = "a cat <loratorio:te_only:1> <loratorio:alice:0.8>"
    per_branch = webui.run(runner, on(), prompt=prompt)
    unet_only = webui.run(runner, on(text_encoder="UNet only"), prompt=prompt)
    assert not np.array_equal(pixels(per_branch), pixels(unet_only))
    assert "base text conditioning" not in capsys.readouterr().out
    # the WebUI's cond cache never holds a branch's conds: a plain run afterwards is unchanged
    plain = webui.run(runner, prompt="a cat")
    webui.processing.StableDiffusionProcessing.cached_c[:] = [None, None]
    webui.processing.StableDiffusionProcessing.cached_uc[:] = [None, None]
    assert np.array_equal(pixels(plain), pixels(webui.run(runner, prompt="a cat")))


def test_stack_applies_every_loras_text_encoder_parts_to_the_prompt(webui, runner, capsys):
    # at CFG 1 Stack is the model with the LoRAs merged, text encoder included; without its parts it is not
    both = "a cat <loratorio:te_only:1> <loratorio:alice:0.8>"
    stack = webui.run(runner, on(mode="Stack"), prompt=both, steps=3, cfg_scale=1.0)
    merged = merged_run(webui, runner, {"te_only": 1.0, "alice": 0.8}, text_encoder=True, steps=3, cfg_scale=1.0)
    assert close(pixels(stack), pixels(merged))
    unet_only = webui.run(runner, on(mode="Stack", text_encoder="UNet only"), prompt=both, steps=3, cfg_scale=1.0)
    assert close(pixels(unet_only), pixels(merged_run(webui, runner, {"alice": 0.8}, steps=3, cfg_scale=1.0)))
    assert not close(pixels(stack), pixels(unet_only))
    assert "base text conditioning" not in capsys.readouterr().out


def test_prompt_lora_tags_as_branches_and_subfolder_names(webui, runner):
    as_lora = webui.run(runner, on(use_lora_tags=True), prompt="a cat <lora:alice:0.8> <lora:styles/ink:1>")
    as_loratorio = webui.run(runner, on(), prompt="a cat <loratorio:alice:0.8> <loratorio:ink:1>")
    assert np.array_equal(pixels(as_lora), pixels(as_loratorio))


def test_pool_with_top_k(webui, runner):
    result = webui.run(runner, on(pool=["alice", "hat", "styles"], top_k=2), prompt="a cat")
    assert "LoRAtorio hashes" in result.infotexts[0] and "ink: " in result.infotexts[0]


def test_hires_fix_batch_count_and_weight_maps(webui, runner):
    hires = dict(enable_hr=True, hr_scale=1.5, denoising_strength=0.5, hr_second_pass_steps=2,
                 **({"hr_cfg": 5.0} if webui.forge else {}))
    result = webui.run(runner, on(show_weight_maps=True), n_iter=2, batch_size=2, **hires)
    n_images, first = 4, result.index_of_first_image
    assert len(result.images) == first + n_images + n_images * 2     # + one heatmap per LoRA per image
    assert result.images[-1].size == result.images[first].size
    with_steps = webui.run(runner, on(show_weight_maps=True, weight_map_steps=[0.0, 0.5]), steps=4)
    assert len(with_steps.images) == with_steps.index_of_first_image + 1 + 3 * 2   # mean, steps 1 and 3: 2 LoRAs each


def test_img2img_with_batch_count(webui, runner):
    from PIL import Image

    def img2img(args, model=None, prompt="a cat <loratorio:alice:0.8> <loratorio:hat:1>"):
        webui.shared.sd_model = model or webui.sd15
        p = webui.processing.StableDiffusionProcessingImg2Img(
            init_images=[Image.new("RGB", (128, 128), (200, 80, 40))], denoising_strength=0.6, n_iter=2,
            prompt=prompt, steps=3, width=128, height=128, seed=3, sampler_name="Euler", batch_size=1)
        img2img_runner = webui.scripts.ScriptRunner()
        img2img_runner.initialize_scripts(True)
        img2img_runner.setup_ui()
        script = img2img_runner.alwayson_scripts[0]
        p.scripts, p.script_args = img2img_runner, tuple([0] * script.args_from + args)
        return webui.processing.process_images(p)

    base, composed = img2img(on(enabled=False)), img2img(on(show_weight_maps=True))
    assert len(composed.images) == len(base.images) + 2 * 2
    one = img2img(on(recenter=0.0), prompt="a cat <loratorio:alice:0.8>")
    merged = img2img(on(enabled=False), model=merged_model(webui, {"alice": 0.8}), prompt="a cat")
    assert all(close(pixels(one, i), pixels(merged, i)) for i in range(2))


# --- LoRAtorio Fast ------------------------------------------------------------------------------------------
def test_fast_mode_refreshes_on_schedule_and_runs_one_row_each_between(webui, runner):
    seen, handle = unet_rows(webui)
    try:
        fast = webui.run(runner, on(mode="LoRAtorio Fast", refresh_first=1, refresh_every=3), steps=6)
    finally:
        handle.remove()
    assert seen == [4, 2, 2, 4, 2, 2]        # refresh: 3 prompt branches + the base negative; between: 2 rows
    params = webui.infotext_utils.parse_generation_parameters(fast.infotexts[0])
    assert params["LoRAtorio mode"] == "LoRAtorio Fast"
    assert (params["LoRAtorio refresh first"], params["LoRAtorio refresh every"]) == ("1", "3")
    exact = webui.run(runner, on(recenter=1.0), steps=6)
    assert not np.array_equal(pixels(fast), pixels(exact))
    every_step = webui.run(runner, on(mode="LoRAtorio Fast", refresh_first=1, refresh_every=1), steps=6)
    assert np.array_equal(pixels(every_step), pixels(exact))   # refreshing every step is LoRAtorio at re-centring 1


def test_fast_mode_with_hires_batch_and_weight_maps(webui, runner):
    hires = dict(enable_hr=True, hr_scale=1.5, denoising_strength=0.5, hr_second_pass_steps=3,
                 **({"hr_cfg": 5.0} if webui.forge else {}))
    result = webui.run(runner, on(mode="LoRAtorio Fast", show_weight_maps=True), n_iter=2, batch_size=2, steps=4,
                       **hires)
    assert len(result.images) == result.index_of_first_image + 4 + 4 * 2


def test_the_defaults_are_stack_and_old_infotexts_keep_their_mode_and_weights(webui, runner):
    seen, handle = unet_rows(webui)
    try:
        default = webui.run(runner, [True] + [getattr(LoratorioParams(), n) for n in SETTINGS[1:]], steps=6)
    finally:
        handle.remove()
    assert seen == [2] * 6                                  # mode Stack: two rows a step, no refresh step
    params = webui.infotext_utils.parse_generation_parameters(default.infotexts[0])
    assert params["LoRAtorio mode"] == "Stack"
    script = runner.alwayson_scripts[0]
    fast = webui.run(runner, on(mode="LoRAtorio Fast", weight_norm="max"), steps=2).infotexts[0]
    old = fast.replace(", LoRAtorio weights: max", "")   # an image from before the Weights setting
    pasted = webui.infotext_utils.paste_values(script.infotext_fields, old)
    by_name = dict(zip(SETTINGS, pasted, strict=True))
    assert by_name["weight_norm"]["value"] == "sum" and by_name["mode"]["value"] == "LoRAtorio Fast"


# --- infotext -------------------------------------------------------------------------------------------
def test_infotext_pastes_back_into_the_accordion(webui, runner):
    wanted = dict(mode="Composite", patch_size=2, temperature=0.02, recenter=1.0, top_k=1, selection="global",
                  use_lora_tags=False, show_weight_maps=False, pool=["alice", "hat"], step_end=0.8)
    result = webui.run(runner, on(**wanted), steps=2)
    script = runner.alwayson_scripts[0]
    controls = runner.inputs[script.args_from:script.args_to]
    pasted = webui.infotext_utils.paste_values(script.infotext_fields, result.infotexts[0])
    values = [update.get("value", control.value) for update, control in zip(pasted, controls, strict=True)]
    assert LoratorioParams.from_args(values) == LoratorioParams.from_args(on(**wanted))
    without = webui.infotext_utils.paste_values(script.infotext_fields, webui.run(runner).infotexts[0])
    assert all("value" not in update for update in without)          # no LoRAtorio run: the accordion stays


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
    ("a cat <loratorio:xl_lora:1>", r"LoRA 'xl_lora' does not fit the loaded model.* \(in <loratorio:xl_lora:1>\)$"),
])
def test_bad_tags_raise_a_clear_error(webui, runner, prompt, message):
    with pytest.raises(LoratorioError, match=message):
        webui.run(runner, on(), prompt=prompt)


def test_invalid_setting_raises_a_clear_error(webui, runner):
    args = on()
    args[SETTINGS.index("patch_size")] = 0
    with pytest.raises(LoratorioError, match="patch_size=0 is invalid"):
        webui.run(runner, args)


def test_interrupt_leaves_the_model_clean(webui, runner):
    calls = []

    def interrupt_at_second_call(params):
        calls.append(1)
        if len(calls) == 2:
            webui.shared.state.interrupt()

    webui.script_callbacks.on_cfg_denoiser(interrupt_at_second_call)
    result = webui.run(runner, on(), steps=4)
    assert len(calls) == 2 and len(result.images) == 1    # sampling stopped, the image was still made


def test_nan_in_a_branch_is_named_and_the_model_stays_clean(webui, runner):
    from safetensors.torch import load_file, save_file

    import networks

    tensors = load_file(os.path.join(webui.lora_dir, "alice.safetensors"))
    key = next(k for k in tensors if k.endswith("lora_up.weight"))
    tensors[key] = torch.full_like(tensors[key], 3e38)  # finite in the file, inf in the branch's prediction
    save_file(tensors, os.path.join(webui.lora_dir, "nan_lora.safetensors"))
    networks.list_available_networks()
    with pytest.raises(LoratorioError, match="^LoRA 'nan_lora' \\(nan_lora.safetensors, <loratorio:nan_lora:1>\\) "
                                            "produced NaN or inf in its conditional prediction. Lower its strength"):
        webui.run(runner, on(), prompt="a cat <loratorio:alice:1> <loratorio:nan_lora:1>")


# --- API ----------------------------------------------------------------------------------------------
def test_api_positional_and_named_forms(webui, runner):
    request = dict(prompt="a cat <loratorio:alice:0.8> <loratorio:hat:1>", negative_prompt="blurry", steps=2,
                   width=128, height=128, sampler_name="Euler", seed=3)
    api = webui.api.run_txt2img_api
    status, positional = api({**request, "alwayson_scripts": {"LoRAtorio": {"args": on()}}}, runner)
    assert status == 200
    status, named = api({**request, "alwayson_scripts": {"loratorio": {"args": [PAPER_NAMED]}}}, runner)
    assert status == 200 and named["images"][0] == positional["images"][0]
    status, body = api({**request, "alwayson_scripts": {"LoRAtorio": {"args": [{"patch": 4}]}}}, runner)
    assert status == 500 and "Unknown LoRAtorio setting(s): patch" in body["errors"]
    status, body = api(
        {**request, "prompt": "x <loratorio:nobody:1>", "alwayson_scripts": {"LoRAtorio": {"args": on()}}}, runner)
    assert status == 500 and "Unknown LoRA 'nobody'" in body["errors"]
    status, body = api({**request, "prompt": "x <loratorio:>", "alwayson_scripts": {"LoRAtorio": {}}}, runner)
    assert status == 200                                                      # off: the text is the user's
    status, body = api(
        {**request, "prompt": "x <loratorio:>", "alwayson_scripts": {"LoRAtorio": {"args": [{}]}}}, runner)
    assert status == 500 and 'cannot read the tag "<loratorio:>"' in body["errors"]


@pytest.mark.parametrize("args, got", [
    ("patch_size=4", 'got the string "patch_size=4".'),
    (4, "got the number 4."),
    ([[True, "LoRAtorio", 4]], "got a list inside the list: drop the outer brackets."),
    ([{"patch_size": 4}, True], "got a dict followed by 1 more element(s): put every named setting in the one dict."),
    ({"patch_size": 4}, 'got the dict {"patch_size": 4}: put it in a list.'),
])
def test_api_args_of_the_wrong_shape_name_both_forms(webui, runner, args, got):
    request = {"prompt": "a cat <loratorio:alice:0.8>", "steps": 1, "width": 64, "height": 64, "sampler_name": "Euler",
               "alwayson_scripts": {"loratorio": {"args": args}}}
    status, body = webui.api.run_txt2img_api(request, runner)
    assert status == 500 and body["errors"].startswith(
        "LoRAtorio's API args must be a list with one dict of named settings, e.g. [{\"patch_size\": 4}], or the "
        "positional list [true, \"LoRAtorio\", 4, ...]") and body["errors"].endswith(got)


# --- memory settings and modules left out ------------------------------------------------------------------
def test_memory_settings_are_in_the_settings_tab_and_bound_what_is_kept(webui, runner):
    from lib_loratorio.composing_session import LIBRARY
    from lib_loratorio.webui import memory_settings

    webui.script_callbacks.ui_settings_callback()
    webui.script_callbacks.model_loaded_callback(webui.shared.sd_model)   # the WebUI fires it on every model load
    assert not LIBRARY._bound
    for key in (memory_settings.FILE_CACHE, memory_settings.BUILD_CACHE):
        info = webui.shared.opts.data_labels[key]
        assert info.section == ("loratorio", "LoRAtorio") and info.default > 0
    LIBRARY.clear()
    prompt = "a cat <loratorio:alice:0.8> <loratorio:styles/ink:1>"          # a LoRA and a LoHa
    webui.run(runner, on(), prompt=prompt)
    both = LIBRARY.bytes
    webui.shared.opts.loratorio_file_cache_mb = 0                         # keep only the file read last
    webui.shared.opts.loratorio_build_cache_mb = 0                        # build LoHa weights when needed, keep none
    kept = webui.run(runner, on(), prompt=prompt)
    assert 0 < LIBRARY.bytes < both and len(LIBRARY._files) == 1
    webui.shared.opts.loratorio_file_cache_mb, webui.shared.opts.loratorio_build_cache_mb = 2048, 1024
    again = webui.run(runner, on(), prompt=prompt)
    assert np.array_equal(pixels(kept), pixels(again))               # the budgets change memory, not the image


def test_modules_a_lora_leaves_out_are_logged_once_and_counted_in_the_infotext(webui, runner, capsys):
    from safetensors.torch import load_file, save_file

    import networks

    tensors = load_file(os.path.join(webui.lora_dir, "alice.safetensors"))
    tensors["lora_unet_no_such_block_proj.lora_down.weight"] = torch.randn(2, 8)
    tensors["lora_unet_no_such_block_proj.lora_up.weight"] = torch.randn(8, 2)
    tensors["lora_unet_mid_block_attentions_0_norm.w_norm"] = torch.randn(8)   # a key of no LoRA layout
    save_file(tensors, os.path.join(webui.lora_dir, "partial.safetensors"))
    networks.list_available_networks()
    first = webui.run(runner, on(), prompt="a cat <loratorio:partial:1>")
    params = webui.infotext_utils.parse_generation_parameters(first.infotexts[0])
    assert params["LoRAtorio modules not applied"] == f"partial: 2 of {len(UNET_TARGETS) + 2}"
    webui.run(runner, on(), prompt="a cat <loratorio:partial:1>")
    logged = [line for line in capsys.readouterr().out.splitlines() if "not every module" in line]
    assert len(logged) == 1
    assert "1: no module of that name in the model (e.g. unet:no_such_block_proj)" in logged[0]
    assert "1: key of no known LoRA layout (e.g. lora_unet_mid_block_attentions_0_norm.w_norm)" in logged[0]
