"""API tests against a running ComfyUI with this folder in custom_nodes/; skipped unless LORATORIO_COMFYUI_URL is set.

    LORATORIO_COMFYUI_URL=http://127.0.0.1:8188 pytest tests/test_live_comfyui.py

The example workflow (docs/comfyui/loratorio_two_loras.json) is sent to POST /prompt and /history is polled
until it is done. It uses the first checkpoint and the first two LoRAs ComfyUI lists (GET /object_info), or
LORATORIO_COMFYUI_CHECKPOINT="name.safetensors" and LORATORIO_COMFYUI_LORAS="a.safetensors,b.safetensors".
LORATORIO_COMFYUI_SETTINGS, a JSON object, is merged into LoRAtorio Apply's inputs (e.g. '{"patch_size": 8}'),
LORATORIO_COMFYUI_SAMPLER into the KSampler's (e.g. '{"cfg": 1.0, "scheduler": "simple"}' for Flux). Images are
64x64 with two steps so that a CPU manages. LORATORIO_COMFYUI_LOADERS, a JSON object, loads the model from separate
files instead of the checkpoint: '{"unet": "dit.safetensors", "clip": "clip_l.safetensors", "clip_type":
"stable_diffusion", "vae": "vae.safetensors"}' (UNETLoader, CLIPLoader, VAELoader). The comparisons with ComfyUI's
own loaders use the first LoRA (its text-encoder part, if any, in the LoraLoader test).
"""

import copy
import io
import json
import os
import time
import urllib.parse
import urllib.request
import uuid

import pytest

from tests import live_http

URL = os.environ.get("LORATORIO_COMFYUI_URL", "").rstrip("/")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOW = os.path.join(ROOT, "docs", "comfyui", "loratorio_two_loras.json")
pytestmark = pytest.mark.skipif(not URL, reason="set LORATORIO_COMFYUI_URL to test against a running ComfyUI")


def call(path, payload=None, timeout=60):
    return live_http.call(URL, path, payload, timeout)


def run(prompt, timeout=1800):
    """POST the prompt, poll /history until it has finished; returns (prompt_id, its history entry)."""
    status, queued = call("/prompt", {"prompt": prompt, "client_id": str(uuid.uuid4())})
    assert status == 200, queued
    prompt_id = queued["prompt_id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, history = call(f"/history/{prompt_id}")
        entry = history.get(prompt_id) if status == 200 else None
        if entry and entry.get("status", {}).get("completed") is not None and (
                entry["status"]["completed"] or entry["status"].get("status_str") == "error"):
            return prompt_id, entry
        time.sleep(0.5)
    pytest.fail(f"prompt {prompt_id} did not finish in {timeout} s")


@pytest.fixture(scope="module")
def info():
    status, body = call("/object_info")
    assert status == 200
    return body


@pytest.fixture(scope="module")
def workflow(info):
    for node in ("LoratorioLora", "LoratorioApply", "LoratorioWeightMaps"):
        assert node in info, f"{node} is not loaded: is this folder in ComfyUI's custom_nodes?"
    checkpoint = os.environ.get("LORATORIO_COMFYUI_CHECKPOINT") or \
        info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0][0]
    loras = [n for n in os.environ.get("LORATORIO_COMFYUI_LORAS", "").split(",") if n] or \
        info["LoratorioLora"]["input"]["required"]["lora_name"][0]
    if len(loras) < 2:
        pytest.skip("ComfyUI needs two LoRAs in models/loras")
    with open(WORKFLOW) as f:
        prompt = json.load(f)
    prompt["1"]["inputs"]["ckpt_name"] = checkpoint
    loaders = json.loads(os.environ.get("LORATORIO_COMFYUI_LOADERS", "") or "{}")
    if loaders:
        _separate_loaders(prompt, loaders)
    prompt["2"]["inputs"]["lora_name"], prompt["3"]["inputs"]["lora_name"] = loras[:2]
    prompt["4"]["inputs"].update(json.loads(os.environ.get("LORATORIO_COMFYUI_SETTINGS", "") or "{}"))
    prompt["7"]["inputs"].update(width=64, height=64)
    prompt["8"]["inputs"].update(steps=2, **json.loads(os.environ.get("LORATORIO_COMFYUI_SAMPLER", "") or "{}"))
    return prompt


def _separate_loaders(prompt, loaders):
    """Node "1" (the checkpoint) replaced by a UNETLoader ("1"), a CLIPLoader ("1c") and a VAELoader ("1v")."""
    prompt["1"] = {"class_type": "UNETLoader", "inputs": {"unet_name": loaders["unet"], "weight_dtype": "default"}}
    prompt["1c"] = {"class_type": "CLIPLoader", "inputs": {"clip_name": loaders["clip"],
                                                           "type": loaders.get("clip_type", "stable_diffusion")}}
    prompt["1v"] = {"class_type": "VAELoader", "inputs": {"vae_name": loaders["vae"]}}
    for node in prompt.values():
        for key, value in node["inputs"].items():
            if value == ["1", 1]:
                node["inputs"][key] = ["1c", 0]
            elif value == ["1", 2]:
                node["inputs"][key] = ["1v", 0]


def _plain(prompt):
    """The prompt without LoRAtorio (its nodes removed, the sampler on the loaded model)."""
    plain = copy.deepcopy(prompt)
    for node_id in ("2", "3", "4", "11", "12"):
        plain.pop(node_id, None)
    plain["8"]["inputs"]["model"] = ["1", 0]
    for node in ("5", "6"):
        plain[node]["inputs"].pop("stack", None)
        plain[node]["class_type"] = "CLIPTextEncode"
    return plain


def pictures(entry, node_id):
    """The images an output node of a finished prompt saved, as uint8 arrays (GET /view)."""
    import numpy as np
    from PIL import Image

    out = []
    for image in entry["outputs"][node_id]["images"]:
        query = urllib.parse.urlencode({k: image[k] for k in ("filename", "subfolder", "type")})
        with urllib.request.urlopen(f"{URL}/view?{query}", timeout=60) as response:
            out.append(np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB")))
    return out


def _pixels(entry, node="10"):
    """The first saved image of ``node`` as an int array."""
    return pictures(entry, node)[0].astype("int16")


def _one_lora(workflow, **settings):
    """The workflow with its second LoRA left out (strength 0) and a new seed (ComfyUI caches node outputs)."""
    prompt = copy.deepcopy(workflow)
    prompt["3"]["inputs"]["strength"] = 0.0
    prompt["4"]["inputs"].update(mode="LoRAtorio", recenter=0.0, **settings)
    prompt["8"]["inputs"]["seed"] = 4
    return prompt


def succeeded(prompt):
    _, entry = run(prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    return entry


def test_object_info_has_the_settings_of_loratorio_params(info):
    from lib_loratorio.comfyui.settings import FIXED
    from lib_loratorio.params import LoratorioParams

    required = info["LoratorioApply"]["input"]["required"]
    assert set(required) == {"model"} | (set(LoratorioParams.names()) - set(FIXED))
    assert info["LoratorioApply"]["output"] == ["MODEL"] and info["LoratorioLora"]["output"] == ["LORATORIO_STACK"]


@pytest.mark.parametrize("mode", ["LoRAtorio Fast", "LoRAtorio"])
def test_the_example_workflow_runs_and_shows_weight_maps(workflow, mode):
    prompt = copy.deepcopy(workflow)
    prompt["4"]["inputs"]["mode"] = mode
    entry = succeeded(prompt)
    assert len(entry["outputs"]["10"]["images"]) == 1                 # the image
    assert len(entry["outputs"]["12"]["images"]) == 2                 # one weight map per LoRA
    composed, plain = _pixels(entry), _pixels(succeeded(_plain(prompt)))
    print(f"{mode}, two LoRAs vs no LoRA: mean {abs(composed - plain).mean():.2f}")
    assert (composed != plain).any()


def test_one_lora_at_recentring_0_equals_lora_loader_model_only(workflow):
    """Within one level of the decoded pixels (1/255)."""
    prompt = _one_lora(workflow)
    merged = _plain(prompt)
    merged["13"] = {"class_type": "LoraLoaderModelOnly", "inputs": {
        "model": ["1", 0], "lora_name": prompt["2"]["inputs"]["lora_name"],
        "strength_model": prompt["2"]["inputs"]["strength"]}}
    merged["8"]["inputs"]["model"] = ["13", 0]
    ours, theirs, plain = _pixels(succeeded(prompt)), _pixels(succeeded(merged)), _pixels(succeeded(_plain(prompt)))
    print(f"LoraLoaderModelOnly vs plain: max {abs(theirs - plain).max()}, mean {abs(theirs - plain).mean():.2f}; "
          f"LoRAtorio vs LoraLoaderModelOnly: max {abs(ours - theirs).max()}, mean {abs(ours - theirs).mean():.3f}")
    assert (theirs != plain).any()                                   # the LoRA changes the image...
    assert abs(ours - theirs).max() <= 1                             # ...and its LoRAtorio branch alike


def test_text_encode_with_one_lora_equals_lora_loader_with_its_clip_part(info, workflow):
    """LoRAtorio Text Encode (each branch's own text) + one LoRA at re-centring 0 against ComfyUI's LoraLoader on the
    model and the CLIP, within one level."""
    assert "LoratorioTextEncode" in info
    prompt = _one_lora(workflow)
    for node in ("5", "6"):
        prompt[node] = {"class_type": "LoratorioTextEncode", "inputs": {**prompt[node]["inputs"], "stack": ["3", 0]}}
    lora, strength = prompt["2"]["inputs"]["lora_name"], prompt["2"]["inputs"]["strength"]
    merged = _plain(prompt)
    clip = merged["5"]["inputs"]["clip"]
    merged["13"] = {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": clip, "lora_name": lora,
                                                            "strength_model": strength, "strength_clip": strength}}
    merged["8"]["inputs"]["model"] = ["13", 0]
    for node in ("5", "6"):
        merged[node]["inputs"]["clip"] = ["13", 1]
    model_only = copy.deepcopy(merged)
    model_only["13"]["inputs"]["strength_clip"] = 0.0
    ours, theirs, unet_only = _pixels(succeeded(prompt)), _pixels(succeeded(merged)), _pixels(succeeded(model_only))
    print(f"LoRAtorio Text Encode + Apply vs LoraLoader (model and clip): max {abs(ours - theirs).max()}, "
          f"mean {abs(ours - theirs).mean():.3f}; the LoRA's text-encoder part (LoraLoader with and without it): "
          f"max {abs(theirs - unet_only).max()}")
    assert abs(ours - theirs).max() <= 1


def test_stack_with_text_encode_at_cfg_1_equals_lora_loaders_of_both(workflow):
    """Stack with LoRAtorio Text Encode at CFG 1 (ComfyUI then computes the prompt's rows only) against both LoRAs
    merged into the model and the CLIP by two chained LoraLoaders, within one level."""
    prompt = copy.deepcopy(workflow)
    prompt["4"]["inputs"]["mode"] = "Stack"
    prompt["8"]["inputs"].update(cfg=1.0, seed=5)
    for node in ("5", "6"):
        prompt[node] = {"class_type": "LoratorioTextEncode", "inputs": {**prompt[node]["inputs"], "stack": ["3", 0]}}
    merged = _plain(prompt)
    model, clip = ["1", 0], merged["5"]["inputs"]["clip"]
    for node, loader in (("2", "13"), ("3", "14")):
        lora, strength = prompt[node]["inputs"]["lora_name"], prompt[node]["inputs"]["strength"]
        merged[loader] = {"class_type": "LoraLoader", "inputs": {"model": model, "clip": clip, "lora_name": lora,
                                                                 "strength_model": strength, "strength_clip": strength}}
        model, clip = [loader, 0], [loader, 1]
    merged["8"]["inputs"]["model"] = model
    for node in ("5", "6"):
        merged[node]["inputs"]["clip"] = clip
    ours, theirs = _pixels(succeeded(prompt)), _pixels(succeeded(merged))
    print(f"Stack + LoRAtorio Text Encode vs two LoraLoaders (model and clip), CFG 1: max {abs(ours - theirs).max()}, "
          f"mean {abs(ours - theirs).mean():.3f}")
    assert abs(ours - theirs).max() <= 1


@pytest.mark.parametrize("settings, message", [
    ({"step_start": 0.8, "step_end": 0.5}, "'Start at' must be smaller than 'End at'"),
    ({"show_weight_maps": False}, "turn on 'show_weight_maps'"),
])
def test_bad_input_is_a_clear_error_in_the_history(workflow, settings, message):
    prompt = copy.deepcopy(workflow)
    prompt["4"]["inputs"].update(settings)
    _, entry = run(prompt)
    assert entry["status"]["status_str"] == "error"
    errors = [data for kind, data in entry["status"]["messages"] if kind == "execution_error"]
    assert errors and message in errors[0]["exception_message"]
