"""What LoRAtorio adds for the next node, and the conditioning and model patches beside it, in a running ComfyUI
(skipped unless LORATORIO_COMFYUI_URL is set; checkpoint and LoRAs as tests/test_live_comfyui.py picks them):
the MASK outputs driving the inpaint example, the UI graphs against the real node definitions, NaN from a model
patch named, area conditioning, and model patches (FreeU, PAG, SAG) beside LoRAtorio.

    LORATORIO_COMFYUI_URL=http://127.0.0.1:8188 pytest tests/test_live_comfyui_pairings.py
"""

import copy
import json
import os

import numpy as np
import pytest

from tests.test_live_comfyui import ROOT, URL, info, pictures, run, succeeded, workflow  # noqa: F401 - fixtures

pytestmark = pytest.mark.skipif(not URL, reason="set LORATORIO_COMFYUI_URL to test against a running ComfyUI")
EXAMPLES = [os.path.join(ROOT, "docs", "comfyui", f"loratorio_{name}.json") for name in ("two_loras", "masks_inpaint")]


def failed(prompt):
    _, entry = run(prompt)
    assert entry["status"]["status_str"] == "error"
    return next(data for kind, data in entry["status"]["messages"] if kind == "execution_error")["exception_message"]


def masks_example(workflow, threshold=0.5, blur=0.0, size=128):  # noqa: F811 - the fixture's value
    """The masks example with the first example's checkpoint and LoRAs, small; previews of the first pass, the
    masks and each detail pass."""
    with open(EXAMPLES[1]) as f:
        prompt = json.load(f)
    prompt["1"]["inputs"]["ckpt_name"] = workflow["1"]["inputs"]["ckpt_name"]
    loras = workflow["2"]["inputs"]["lora_name"], workflow["3"]["inputs"]["lora_name"]
    prompt["2"]["inputs"]["lora_name"], prompt["3"]["inputs"]["lora_name"] = loras
    prompt["13"]["inputs"]["lora_name"], prompt["19"]["inputs"]["lora_name"] = loras
    prompt["7"]["inputs"].update(width=size, height=size)
    prompt["11"]["inputs"].update(threshold=threshold, blur=blur)
    for sampler in ("8", "16", "22"):
        prompt[sampler]["inputs"]["steps"] = 2
    prompt["90"] = {"class_type": "PreviewImage", "inputs": {"images": ["9", 0]}}
    for node_id, source in (("91", 1), ("92", 2)):
        prompt[f"m{node_id}"] = {"class_type": "MaskToImage", "inputs": {"mask": ["11", source]}}
        prompt[node_id] = {"class_type": "PreviewImage", "inputs": {"images": [f"m{node_id}", 0]}}
    for node_id, source in (("93", "17"), ("94", "23")):
        prompt[node_id] = {"class_type": "PreviewImage", "inputs": {"images": [source, 0]}}
    return prompt


def test_the_masks_example_details_each_loras_region_with_that_lora(workflow):  # noqa: F811
    entry = succeeded(masks_example(workflow))
    (first,), (final,) = pictures(entry, "90"), pictures(entry, "10")
    (mask_1,), (mask_2,) = pictures(entry, "91"), pictures(entry, "92")
    (detail_1,), (detail_2,) = pictures(entry, "93"), pictures(entry, "94")
    only_1, in_2 = (mask_1 > 0) & (mask_2 == 0), mask_2 > 0
    assert (mask_1 | mask_2).all()                          # two LoRAs at 0.5: every pixel has a leader
    # each pass changed its LoRA's region only (which LoRA leads where depends on the files: with the example's
    # strengths, 0.8 and 1.0, a stronger second file can lead everywhere)
    assert np.array_equal(final[only_1], detail_1[only_1]) and np.array_equal(final[in_2], detail_2[in_2])
    assert not np.array_equal(final, first)
    strict = succeeded(masks_example(workflow, threshold=0.6))
    neither = (pictures(strict, "91")[0] == 0) & (pictures(strict, "92")[0] == 0)
    assert np.array_equal(pictures(strict, "10")[0][neither], pictures(strict, "90")[0][neither])
    assert len(pictures(succeeded(masks_example(workflow, blur=4.0)), "10")) == 1   # the example as it is


@pytest.mark.parametrize("path", EXAMPLES)
def test_the_ui_graphs_match_the_node_definitions(info, path):  # noqa: F811
    """Each node of the UI file has the real node's inputs: its sockets, then its widgets, in the definition's order
    (what the browser UI writes), and outputs of the real types."""
    with open(path.replace(".json", ".workflow.json")) as f:
        graph = json.load(f)
    for node in graph["nodes"]:
        definition = info[node["type"]]
        declared = {**definition["input"]["required"], **definition["input"].get("optional", {})}
        order = definition["input_order"]["required"] + definition["input_order"].get("optional", [])

        widget = {name: isinstance(spec[0], list) or spec[0] in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
                  for name, spec in declared.items()}
        expected = [n for n in order if not widget[n]] + [n for n in order if widget[n]]
        assert [i["name"] for i in node["inputs"]] == expected, node["type"]
        assert [o["type"] for o in node["outputs"]] == definition["output"], node["type"]


def test_nan_from_freeu_before_loratorio_names_it(workflow):  # noqa: F811
    prompt = copy.deepcopy(workflow)
    prompt["20"] = {"class_type": "FreeU_V2", "inputs": {"model": ["1", 0], "b1": 1.3, "b2": 1.4, "s1": 0.9,
                                                         "s2": 0.2}}
    prompt["4"]["inputs"]["model"] = ["20", 0]
    message = failed(prompt)
    assert message.startswith("The base model produced NaN or inf") and "FreeU_V2 (output_block_patch)" in message


AREA_NODES = {  # a second prompt restricted to the top-right quarter of a 128x128 image, three ways
    "ConditioningSetArea": {"30": {"class_type": "ConditioningSetArea", "inputs": {
        "conditioning": ["31", 0], "width": 64, "height": 64, "x": 64, "y": 0, "strength": 1.0}}},
    "ConditioningSetAreaPercentage": {"30": {"class_type": "ConditioningSetAreaPercentage", "inputs": {
        "conditioning": ["31", 0], "width": 0.5, "height": 0.5, "x": 0.5, "y": 0.0, "strength": 1.0}}},
    "ConditioningSetMask": {
        "33": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 128, "height": 128}},
        "34": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 64}},
        "35": {"class_type": "MaskComposite", "inputs": {"destination": ["33", 0], "source": ["34", 0], "x": 64,
                                                         "y": 0, "operation": "add"}},
        "30": {"class_type": "ConditioningSetMask", "inputs": {"conditioning": ["31", 0], "mask": ["35", 0],
                                                               "strength": 1.0, "set_cond_area": "mask bounds"}}},
}


def with_area(workflow, kind, loratorio=True):  # noqa: F811
    prompt = copy.deepcopy(workflow)
    prompt["7"]["inputs"].update(width=128, height=128)
    prompt["31"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a red sun", "clip": ["1", 1]}}
    prompt.update(copy.deepcopy(AREA_NODES[kind]))
    prompt["32"] = {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["5", 0],
                                                                    "conditioning_2": ["30", 0]}}
    prompt["8"]["inputs"]["positive"] = ["32", 0]
    if not loratorio:
        for node_id in ("2", "3", "4", "11", "12"):
            del prompt[node_id]
        prompt["8"]["inputs"]["model"] = ["1", 0]
    return prompt


@pytest.mark.parametrize("kind", list(AREA_NODES))
def test_area_conditioning_is_composed(workflow, kind):  # noqa: F811
    entry = succeeded(with_area(workflow, kind))
    assert len(entry["outputs"]["12"]["images"]) == 2
    (composed,), (plain,) = pictures(entry, "10"), pictures(succeeded(with_area(workflow, kind, False)), "10")
    assert np.abs(composed.astype(int) - plain).mean() > 1


def test_one_lora_with_an_area_equals_comfyuis_own_lora_loader(workflow):  # noqa: F811
    prompt = with_area(workflow, "ConditioningSetArea")
    prompt["4"]["inputs"].update(mode="LoRAtorio", recenter=0.0)
    prompt["3"]["inputs"]["strength"] = 0.0                     # the first LoRA alone
    merged = with_area(workflow, "ConditioningSetArea", loratorio=False)
    merged["40"] = {"class_type": "LoraLoaderModelOnly", "inputs": {
        "model": ["1", 0], "lora_name": prompt["2"]["inputs"]["lora_name"], "strength_model": 0.8}}
    merged["8"]["inputs"]["model"] = ["40", 0]
    (ours,), (theirs,) = pictures(succeeded(prompt), "10"), pictures(succeeded(merged), "10")
    assert np.abs(ours.astype(int) - theirs).max() <= 2


def image_beside(example, nodes, model_node, loratorio):
    """The example at 128x128 without its weight maps, with ``nodes`` added and the MODEL of ``model_node`` sampled:
    through LoRAtorio Apply, or directly (``loratorio`` False, the LoRA nodes left out)."""
    prompt = copy.deepcopy(example)
    prompt["7"]["inputs"].update(width=128, height=128)
    del prompt["11"], prompt["12"]
    prompt.update(nodes)
    if loratorio:
        prompt["4"]["inputs"]["model"] = [model_node, 0]
    else:
        del prompt["2"], prompt["3"], prompt["4"]
        prompt["8"]["inputs"]["model"] = [model_node, 0]
    return pictures(succeeded(prompt), "10")[0].astype(int)


PATCHES = {"FreeU": {"b1": 1.3, "b2": 1.4, "s1": 0.9, "s2": 0.2}, "FreeU_V2": {"b1": 1.3, "b2": 1.4, "s1": 0.9,
                                                                              "s2": 0.2},
           "SelfAttentionGuidance": {"scale": 0.5, "blur_sigma": 2.0}, "PerturbedAttentionGuidance": {"scale": 3.0}}


@pytest.mark.parametrize("patch", list(PATCHES))
def test_model_patches_before_loratorio_act_with_it(workflow, patch):  # noqa: F811
    """At 128x128, where each acts on the random model (at 64x64 FreeU_V2 gives NaN, SAG fails by itself and PAG's
    middle block attends over one token): the patch changes the plain image and the composed one alike."""
    def image(with_patch, loratorio):
        nodes = {"20": {"class_type": patch, "inputs": {"model": ["1", 0], **PATCHES[patch]}}} if with_patch else {}
        return image_beside(workflow, nodes, "20" if with_patch else "1", loratorio)

    assert np.abs(image(True, False) - image(False, False)).mean() > 0.05   # it acts here
    assert np.abs(image(True, True) - image(False, True)).mean() > 0.02     # and with LoRAtorio


def test_ip_adapter_plus_beside_loratorio(info, workflow):  # noqa: F811
    """ComfyUI_IPAdapter_plus's IPAdapterAdvanced (attention replacements on the model) before LoRAtorio Apply, with the
    first IP-Adapter and CLIP vision model ComfyUI lists."""
    if "IPAdapterAdvanced" not in info:
        pytest.skip("ComfyUI_IPAdapter_plus is not installed")
    ipadapter = info["IPAdapterModelLoader"]["input"]["required"]["ipadapter_file"][0][0]
    clip_vision = info["CLIPVisionLoader"]["input"]["required"]["clip_name"][0][0]

    def image(with_ipadapter, loratorio):
        nodes = {
            "50": {"class_type": "IPAdapterModelLoader", "inputs": {"ipadapter_file": ipadapter}},
            "51": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": clip_vision}},
            "52": {"class_type": "EmptyImage", "inputs": {"width": 224, "height": 224, "batch_size": 1,
                                                         "color": 0xC04020}},
            "53": {"class_type": "IPAdapterAdvanced", "inputs": {
                "model": ["1", 0], "ipadapter": ["50", 0], "image": ["52", 0], "clip_vision": ["51", 0],
                "weight": 1.0, "weight_type": "linear", "combine_embeds": "concat", "start_at": 0.0,
                "end_at": 1.0, "embeds_scaling": "V only"}}} if with_ipadapter else {}
        return image_beside(workflow, nodes, "53" if with_ipadapter else "1", loratorio)

    assert np.abs(image(True, False) - image(False, False)).mean() > 0.5     # it acts
    assert np.abs(image(True, True) - image(False, True)).mean() > 0.5       # and with LoRAtorio
