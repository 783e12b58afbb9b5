"""API tests against a running WebUI with LoRAtorio installed; skipped unless LORATORIO_WEBUI_URL is set.

    LORATORIO_WEBUI_URL=http://127.0.0.1:7860 pytest tests/test_live_webui.py

The WebUI (A1111 or Forge) must run with --api and have at least two LoRAs (it picks the first two of
/sdapi/v1/loras, or the names in LORATORIO_TEST_LORAS="a,b"). Small images and two steps keep it usable
on a CPU. LORATORIO_TEST_REQUEST, a JSON object, is merged into every request, e.g. for a Flux checkpoint
on Forge: '{"override_settings": {"sd_model_checkpoint": "flux1-dev"}, "cfg_scale": 1,
"scheduler": "Simple"}'.
"""

import base64
import io
import json
import os

import pytest

from lib_loratorio.params import LoratorioParams
from tests import live_http

URL = os.environ.get("LORATORIO_WEBUI_URL", "").rstrip("/")
EXTRA = json.loads(os.environ.get("LORATORIO_TEST_REQUEST", "") or "{}")
pytestmark = pytest.mark.skipif(not URL, reason="set LORATORIO_WEBUI_URL to test against a running WebUI")


def call(path, payload=None, timeout=1800):
    return live_http.call(URL, path, payload, timeout)


@pytest.fixture(scope="module")
def loras():
    names = [n for n in os.environ.get("LORATORIO_TEST_LORAS", "").split(",") if n]
    if not names:
        status, listed = call("/sdapi/v1/loras")
        assert status == 200
        names = [entry["alias"] or entry["name"] for entry in listed]
    if len(names) < 2:
        pytest.skip("the WebUI needs two LoRAs in its Lora folder")
    return names[:2]


def request(loras, **extra):
    a, b = loras
    return {"prompt": f"a cat <loratorio:{a}:0.8> <loratorio:{b}:1>", "negative_prompt": "blurry", "width": 64,
            "height": 64, "steps": 2, "sampler_name": "Euler", "seed": 1, "cfg_scale": 5, **EXTRA, **extra}


def decode(image):
    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(image)))


def test_two_loratorio_tags_with_and_without_weight_maps(loras):
    status, plain = call("/sdapi/v1/txt2img", request(loras))
    assert status == 200 and len(plain["images"]) == 1
    args = {"LoRAtorio": {"args": [{"patch_size": 4, "show_weight_maps": True}]}}
    status, composed = call("/sdapi/v1/txt2img", request(loras, alwayson_scripts=args))
    assert status == 200 and len(composed["images"]) == 1 + 2      # the image, then one heatmap per LoRA
    assert list(decode(composed["images"][0]).tobytes()) != list(decode(plain["images"][0]).tobytes())
    assert decode(composed["images"][1]).size == decode(composed["images"][0]).size
    info = json.loads(composed["info"])["infotexts"][0]
    assert "LoRAtorio: True" in info and "LoRAtorio patch size: 4" in info
    args = {"LoRAtorio": {"args": [True, LoratorioParams().mode, 4]}}         # the positional form, the default mode
    status, positional = call("/sdapi/v1/txt2img", request(loras, alwayson_scripts=args))
    assert status == 200 and len(positional["images"]) == 1
    # same pixels (the PNGs differ in their embedded infotext: weight maps on/off)
    assert list(decode(positional["images"][0]).tobytes()) == list(decode(composed["images"][0]).tobytes())


def test_one_loratorio_lora_in_the_exact_mode_equals_the_webuis_own_lora(loras):
    """One LoRA (its text-encoder part included) as a LoRAtorio branch in the exact mode at re-centring 0 is that LoRA
    merged: the WebUI's own <lora:...> tag, within one level of the decoded pixels."""
    import numpy as np

    name = loras[0]
    status, own = call("/sdapi/v1/txt2img", request(loras, prompt=f"a cat <lora:{name}:0.8>"))
    assert status == 200
    args = {"LoRAtorio": {"args": [{"mode": "LoRAtorio", "recenter": 0.0}]}}
    status, ours = call("/sdapi/v1/txt2img", request(loras, prompt=f"a cat <loratorio:{name}:0.8>",
                                                     alwayson_scripts=args))
    assert status == 200
    own_pixels, our_pixels = (np.asarray(decode(r["images"][0]).convert("RGB"), dtype=np.int16) for r in (own, ours))
    status, plain = call("/sdapi/v1/txt2img", request(loras, prompt="a cat"))
    plain_pixels = np.asarray(decode(plain["images"][0]).convert("RGB"), dtype=np.int16)
    print(f"<lora> vs plain: mean {np.abs(own_pixels - plain_pixels).mean():.2f}; <loratorio> vs <lora>: max "
          f"{np.abs(own_pixels - our_pixels).max()}, mean {np.abs(own_pixels - our_pixels).mean():.3f}")
    assert np.abs(own_pixels - plain_pixels).max() > 1          # the LoRA changes the image...
    assert np.abs(own_pixels - our_pixels).max() <= 1           # ...and LoRAtorio's branch the same way


@pytest.mark.parametrize("prompt, args, message", [
    ("a cat <loratorio:no-such-lora-here:1>", [{"patch_size": 4}], "Unknown LoRA 'no-such-lora-here'"),
    (None, [{"patch_size": 0}], "patch_size=0 is invalid"),
    (None, [{"tau": 1}], "Unknown LoRAtorio setting(s): tau"),
    (None, "patch_size=4", "LoRAtorio's API args must be a list with one dict of named settings"),
    ("a cat <loratorio:>", [{}], 'LoRAtorio cannot read the tag "<loratorio:>"'),
])
def test_bad_input_is_a_clear_api_error(loras, prompt, args, message):
    payload = request(loras, alwayson_scripts={"LoRAtorio": {"args": args}})
    if prompt:
        payload["prompt"] = prompt
    status, body = call("/sdapi/v1/txt2img", payload)
    # A1111 puts the message under "errors", Forge under "message"
    assert status == 500 and message in (body.get("errors") or body.get("message"))
