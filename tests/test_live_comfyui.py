"""API tests against a running ComfyUI with this folder in custom_nodes/; skipped unless LORATORIO_COMFYUI_URL is set.

    LORATORIO_COMFYUI_URL=http://127.0.0.1:8188 pytest tests/test_live_comfyui.py

The example workflow (docs/comfyui/loratorio_two_loras.json) is sent to POST /prompt and /history is polled
until it is done. It uses the first checkpoint and the first two LoRAs ComfyUI lists (GET /object_info), or
LORATORIO_COMFYUI_CHECKPOINT="name.safetensors" and LORATORIO_COMFYUI_LORAS="a.safetensors,b.safetensors".
LORATORIO_COMFYUI_SETTINGS, a JSON object, is merged into LoRAtorio Apply's inputs (e.g. '{"patch_size": 8}'),
LORATORIO_COMFYUI_SAMPLER into the KSampler's (e.g. '{"cfg": 1.0, "scheduler": "simple"}' for Flux). Images are
64x64 with two steps so that a CPU manages.
"""

import copy
import json
import os
import time
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
    prompt["2"]["inputs"]["lora_name"], prompt["3"]["inputs"]["lora_name"] = loras[:2]
    prompt["4"]["inputs"].update(json.loads(os.environ.get("LORATORIO_COMFYUI_SETTINGS", "") or "{}"))
    prompt["7"]["inputs"].update(width=64, height=64)
    prompt["8"]["inputs"].update(steps=2, **json.loads(os.environ.get("LORATORIO_COMFYUI_SAMPLER", "") or "{}"))
    return prompt


def test_object_info_has_the_settings_of_loratorio_params(info):
    from lib_loratorio.comfyui.settings import FIXED
    from lib_loratorio.params import LoratorioParams

    required = info["LoratorioApply"]["input"]["required"]
    assert set(required) == {"model"} | (set(LoratorioParams.names()) - set(FIXED))
    assert info["LoratorioApply"]["output"] == ["MODEL"] and info["LoratorioLora"]["output"] == ["LORATORIO_STACK"]


def test_the_example_workflow_runs_and_shows_weight_maps(workflow):
    _, entry = run(workflow)
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert len(entry["outputs"]["10"]["images"]) == 1                 # the image
    assert len(entry["outputs"]["12"]["images"]) == 2                 # one weight map per LoRA
    plain = copy.deepcopy(workflow)
    for node_id in ("2", "3", "4", "11", "12"):
        del plain[node_id]
    plain["8"]["inputs"]["model"] = ["1", 0]
    _, entry = run(plain)
    assert entry["status"]["status_str"] == "success"


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
