"""LoRAtorio's maps as masks and ADetailer per LoRA in a running WebUI (A1111 or Forge); skipped unless
LORATORIO_WEBUI_URL is set (LoRAs as tests/test_live_webui.py picks them).

    LORATORIO_WEBUI_URL=http://127.0.0.1:7860 pytest tests/test_live_webui_pairings.py

The ADetailer tests also need ADetailer installed in the WebUI with a detector model in its models/adetailer
(LORATORIO_ADETAILER_MODEL, the file's path; a random one will do: ``ultralytics.YOLO("yolov8n.yaml").save(path)``),
with ``loratorio`` added to its script names by the request, and, to find its regions again, a Python with
ultralytics (LORATORIO_ADETAILER_PYTHON, e.g. the WebUI's venv; LORATORIO_ADETAILER_LD_LIBRARY_PATH for it) and
ADetailer's folder (LORATORIO_ADETAILER_DIR): the regions ADetailer details are computed with ADetailer's own
functions on the image before its passes, and each region's owners from LoRAtorio's masks of the same request.
"""

import base64
import io
import json
import os
import subprocess
import tempfile

import numpy as np
import pytest
import torch

from lib_loratorio.weight_masks import owners, region_shares
from tests.test_live_webui import URL, call, decode, loras, request  # noqa: F401 - fixture

pytestmark = pytest.mark.skipif(not URL, reason="set LORATORIO_WEBUI_URL to test against a running WebUI")
AD_MODEL = os.environ.get("LORATORIO_ADETAILER_MODEL", "")
AD_PYTHON = os.environ.get("LORATORIO_ADETAILER_PYTHON", "")
AD_DIR = os.environ.get("LORATORIO_ADETAILER_DIR", "")
# ADetailer on the regions the random detector finds at all, the two largest of those under 30% of the image (a
# random detector's largest boxes cover most of it), without dilation
AD_ARGS = {"ad_model": os.path.basename(AD_MODEL), "ad_confidence": 0.0001, "ad_mask_k": 2, "ad_mask_max_ratio": 0.3,
           "ad_dilate_erode": 0}
WITH_LORATORIO = {"ad_script_names": "dynamic_prompting,dynamic_thresholding,lora_block_weight,negpip,"
                                     "wildcard_recursive,wildcards,loratorio"}


def generate(loras, loratorio, adetailer=None, size=128, **extra):  # noqa: F811
    scripts = {"LoRAtorio": {"args": [loratorio]}}
    if adetailer is not None:
        scripts["ADetailer"] = {"args": [True, False, adetailer]}
    status, body = call("/sdapi/v1/txt2img", request(loras, width=size, height=size, alwayson_scripts=scripts,
                                                     **extra))
    assert status == 200, body
    return body


def test_masks_come_back_over_the_api(loras):  # noqa: F811
    body = generate(loras, {"mode": "LoRAtorio", "weight_masks": True, "show_weight_maps": True})
    images = [decode(i) for i in body["images"]]
    assert len(images) == 1 + 2 + 2 and all(i.mode == "L" and i.size == (128, 128) for i in images[3:])
    total = np.asarray(images[3]).astype(int) + np.asarray(images[4]).astype(int)
    assert np.abs(total - 255).max() <= 1                       # the two LoRAs' weights of a pixel sum to 1
    infotexts = json.loads(body["info"])["infotexts"]
    assert [t.rsplit("LoRAtorio mask: ", 1)[-1] for t in infotexts[3:]] == list(loras)


def adetailer_regions(image):
    """The masks ADetailer details on ``image`` with AD_ARGS, by its own functions (in AD_PYTHON)."""
    code = f"""
import sys, numpy as np
from PIL import Image
sys.path.insert(0, {AD_DIR!r})
from adetailer.ultralytics import ultralytics_predict
from adetailer.mask import filter_by_ratio, filter_k_by, mask_preprocess
pred = ultralytics_predict(sys.argv[2], Image.open(sys.argv[1]), confidence={AD_ARGS['ad_confidence']}, device="cpu")
pred = filter_by_ratio(pred, low=0.0, high={AD_ARGS['ad_mask_max_ratio']})
pred = filter_k_by(pred, k={AD_ARGS['ad_mask_k']}, by="Area")
masks = mask_preprocess(pred.masks, kernel=0)
np.save(sys.argv[3], np.stack([np.asarray(m) for m in masks]))
"""
    with tempfile.TemporaryDirectory() as tmp:
        image.save(os.path.join(tmp, "image.png"))
        subprocess.run([AD_PYTHON, "-c", code, os.path.join(tmp, "image.png"), AD_MODEL, os.path.join(tmp, "m.npy")],
                       check=True, capture_output=True, env={**os.environ, "LD_LIBRARY_PATH": os.environ.get(
                           "LORATORIO_ADETAILER_LD_LIBRARY_PATH", ""), "YOLO_OFFLINE": "1"})
        return np.load(os.path.join(tmp, "m.npy")) / 255.0


needs_adetailer = pytest.mark.skipif(not (AD_MODEL and AD_PYTHON and AD_DIR),
                                     reason="set LORATORIO_ADETAILER_MODEL, _PYTHON and _DIR")


def hinted(loras):  # noqa: F811
    a, b = loras
    return f"two figures <loratorio:{a}:0.8:left> <loratorio:{b}:1:right>"


def owners_of_regions(loras, image, mask_images, share):  # noqa: F811
    """ADetailer's regions of ``image`` and each one's owners by LoRAtorio's masks of the same request."""
    regions = adetailer_regions(image)
    weights = torch.tensor(np.stack([np.asarray(m) / 255.0 for m in mask_images]))
    return regions, [[loras[i] for i in owners(region_shares(weights, torch.tensor(r)), share)] for r in regions]


@needs_adetailer
def test_each_adetailer_pass_applies_the_lora_hinted_at_its_region(loras):  # noqa: F811
    """Stack (the default) with region hints left/right: the first seed whose two detected regions lie in different
    halves; each region's pass applies its owner only (infotext), the passes keep to their regions."""
    settings = {"detailer": True, "weight_masks": True}
    for seed in range(1, 7):
        before = generate(loras, settings, prompt=hinted(loras), seed=seed)   # the same image, without ADetailer
        first, *masks = [decode(i) for i in before["images"]]
        regions, expected = owners_of_regions(loras, first, masks, 0.5)
        if sorted(expected) == [[loras[0]], [loras[1]]]:
            break
    else:
        pytest.fail(f"no seed of 1-6 gave two regions owned by different LoRAs: {expected}")
    body = generate(loras, settings, AD_ARGS, override_settings=WITH_LORATORIO, prompt=hinted(loras), seed=seed)
    info = json.loads(body["info"])["infotexts"][0]
    want = "; ".join(f"region {n}: {'+'.join(names)}" for n, names in enumerate(expected, 1))
    assert f'LoRAtorio ADetailer: "{want}"' in info or f"LoRAtorio ADetailer: {want}" in info, (info, expected)
    change = np.abs(pixels(body) - np.asarray(first).astype(int)).mean(axis=-1)
    near = torch.nn.functional.max_pool2d(torch.tensor(regions.sum(axis=0) > 0).float()[None], 17, 1, 8)[0].numpy()
    assert change[near == 0].mean() < 0.5 < change[regions.sum(axis=0) > 0].mean()  # regions only (+ 8 px of blur)
    print(f"\nmean change: inside the regions {change[regions.sum(axis=0) > 0].mean():.2f}, more than 8 px away "
          f"{change[near == 0].mean():.2f}")
    print(f"\nseed {seed}: regions' owners {expected}; infotext: {want}")


@needs_adetailer
def test_without_hints_or_with_the_feature_off_the_passes_are_as_before(loras):  # noqa: F811
    """Stack without hints: uniform maps, every LoRA owns every region, so the passes (and the image) are the same
    with the feature on as off; off, no infotext of it."""
    on_ = generate(loras, {"detailer": True}, AD_ARGS, override_settings=WITH_LORATORIO, seed=3)
    off = generate(loras, {"detailer": False}, AD_ARGS, override_settings=WITH_LORATORIO, seed=3)
    info_on, info_off = (json.loads(b["info"])["infotexts"][0] for b in (on_, off))
    assert "LoRAtorio ADetailer:" not in info_off and "LoRAtorio ADetailer:" in info_on
    assert f"region 1: {'+'.join(loras)}" in info_on
    assert np.array_equal(pixels(on_), pixels(off))
    hinted_off = generate(loras, {"detailer": False}, AD_ARGS, override_settings=WITH_LORATORIO, seed=3,
                          prompt=hinted(loras))
    assert "LoRAtorio ADetailer:" not in json.loads(hinted_off["info"])["infotexts"][0]


def scripts_listed():
    status, body = call("/sdapi/v1/scripts")
    assert status == 200
    return {name.lower() for name in body["txt2img"]}


def pixels(body):
    return np.asarray(decode(body["images"][0])).astype(int)


def four_ways(loras, other, prompt=None, size=128, skip=()):  # noqa: F811
    """The image without anything, with LoRAtorio, with the other extension (``other``: alwayson_scripts entries),
    and with both (but those named in ``skip``); each request must succeed."""
    images = {}
    for name, loratorio, scripts in (("plain", False, {}), ("loratorio", True, {}), ("other", False, other),
                                     ("both", True, other)):
        if name in skip:
            continue
        extra = {"prompt": prompt} if prompt else {}
        status, body = call("/sdapi/v1/txt2img", request(loras, width=size, height=size, alwayson_scripts={
            "LoRAtorio": {"args": [{"enabled": loratorio}]}, **scripts}, **extra))
        assert status == 200, (name, body)
        images[name] = pixels(body)
    return images


def acts(images, a, b, least=0.5):
    return np.abs(images[a] - images[b]).mean() > least


def regional_prompter(calcmode):
    return {"Regional Prompter": {"args": [True, False, "Matrix", "Columns", "Mask", "Prompt", "1,1", "0.2", False,
                                           False, False, calcmode, [], "0", "0", "0.4", None, 0, 0, False]}}


@pytest.mark.parametrize("calcmode", ["Latent", "Attention"])
def test_regional_prompter_beside_loratorio(loras, calcmode):  # noqa: F811
    """Its Latent mode, and its Attention mode beside the default mode, which runs the host's rows as they are (one per
    row)."""
    if "regional prompter" not in scripts_listed():
        pytest.skip("Regional Prompter is not installed")
    a, b = loras
    images = four_ways(loras, regional_prompter(calcmode),
                       prompt=f"a cat BREAK a dog <loratorio:{a}:0.8> <loratorio:{b}:1>")
    assert acts(images, "other", "plain") and acts(images, "both", "other") and acts(images, "both", "loratorio")


def test_regional_prompter_in_attention_mode_with_a_routing_mode_is_refused_with_a_message(loras):  # noqa: F811
    if "regional prompter" not in scripts_listed():
        pytest.skip("Regional Prompter is not installed")
    a, b = loras
    status, body = call("/sdapi/v1/txt2img", request(loras, width=128, height=128, prompt=(
        f"a cat BREAK a dog <loratorio:{a}:0.8> <loratorio:{b}:1>"), alwayson_scripts={
        "LoRAtorio": {"args": [{"mode": "LoRAtorio Fast"}]}, **regional_prompter("Attention")}))
    message = body.get("errors") or body.get("message") or ""
    assert status == 500 and "Regional Prompter in its Attention mode (with LoRAtorio's routing modes: use its Latent" \
        in message


def test_forge_couple_beside_loratorio_is_refused_with_a_message(loras):  # noqa: F811
    """sd-forge-couple runs the attention layers on parts of the batch, which LoRAtorio's branches cannot share."""
    if "forge couple" not in scripts_listed():
        pytest.skip("sd-forge-couple is not installed")
    a, b = loras
    couple = {"Forge Couple": {"args": [True, False, "Basic", "\n", "Horizontal", "None", 0.5, []]}}
    images = four_ways(loras, couple, prompt=f"a cat <loratorio:{a}:0.8> <loratorio:{b}:1>\na dog", skip=("both",))
    assert acts(images, "other", "plain")                          # forge-couple acts on its own
    status, body = call("/sdapi/v1/txt2img", request(loras, width=128, height=128, prompt=(
        f"a cat <loratorio:{a}:0.8> <loratorio:{b}:1>\na dog"), alwayson_scripts={"LoRAtorio": {"args": [{}]},
                                                                                   **couple}))
    message = body.get("errors") or body.get("message") or ""
    assert status == 500 and "sd-forge-couple (use LoRAtorio's region hints instead" in message


def control_unit(model, module="None"):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((np.indices((128, 128)).sum(axis=0) % 32 * 8).astype(np.uint8)).convert("RGB").save(buffer, "PNG")
    return {"enabled": True, "module": module, "model": model, "weight": 1.0,
            "image": base64.b64encode(buffer.getvalue()).decode()}


@pytest.mark.parametrize("kind", ["controlnet", "ipadapter"])
def test_forge_controlnet_and_ip_adapter_beside_loratorio(loras, kind):  # noqa: F811
    model = os.environ.get({"controlnet": "LORATORIO_CONTROLNET_MODEL", "ipadapter": "LORATORIO_IPADAPTER_MODEL"}[kind])
    if not model:
        pytest.skip(f"set LORATORIO_{kind.upper()}_MODEL to a model of models/ControlNet as Forge lists it "
                    "(/controlnet/model_list, e.g. 'name [hash]')")
    module = "None" if kind == "controlnet" else "CLIP-ViT-H (IPAdapter)"
    images = four_ways(loras, {"ControlNet": {"args": [control_unit(model, module)]}})
    assert acts(images, "other", "plain") and acts(images, "both", "other") and acts(images, "both", "loratorio")
