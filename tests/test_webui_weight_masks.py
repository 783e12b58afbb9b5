"""The weight maps after a WebUI generation, on both stand-ins: grayscale masks in the results (the UI and the HTTP API)
on request, and the Python API other extensions read them through (lib_loratorio/webui/weight_map_api.py)."""

import json

import numpy as np
import pytest

from tests.extension_helpers import on


@pytest.fixture
def runner(webui):
    with webui.script_runner() as runner:
        yield runner


def test_masks_come_after_the_images_and_heatmaps_one_per_lora(webui, runner):
    from lib_loratorio.webui import weight_map_api

    result = webui.run(runner, on(show_weight_maps=True, weight_masks=True), batch_size=2, width=128, height=64)
    first = result.index_of_first_image
    masks = result.images[first + 2 + 2 * 2:]                    # after 2 images and their 2 x 2 heatmaps
    assert len(masks) == 4 and all(m.mode == "L" and m.size == (128, 64) for m in masks)
    assert [t.rsplit(", ", 1)[-1] for t in result.infotexts[first + 6:]] == ["LoRAtorio mask: alice",
                                                                             "LoRAtorio mask: hat"] * 2
    # the masks are the maps the Python API gives, and the two LoRAs' weights of a pixel sum to 1 (255)
    maps = weight_map_api.last_generation()
    assert [m.index for m in maps] == [0, 1] and maps[1].names == ("alice", "hat") and maps[1].size == (128, 64)
    expected = maps[1].masks()
    assert np.array_equal(np.asarray(masks[2]), np.round(expected["alice"] * 255).astype(np.uint8))
    total = np.asarray(masks[2]).astype(int) + np.asarray(masks[3]).astype(int)
    assert np.abs(total - 255).max() <= 1
    # without the setting: no masks, and the maps are there all the same
    plain = webui.run(runner, on(), batch_size=2, width=128, height=64)
    assert len(plain.images) == plain.index_of_first_image + 2 and len(weight_map_api.last_generation()) == 2


def test_the_http_api_returns_the_masks_on_request(webui, runner):
    request = {"prompt": "a cat <loratorio:alice:0.8> <loratorio:hat:1>", "steps": 2, "width": 64, "height": 64,
               "sampler_name": "Euler", "seed": 3,
               "alwayson_scripts": {"LoRAtorio": {"args": [{"weight_masks": True}]}}}
    status, body = webui.api.run_txt2img_api(request, runner)
    assert status == 200 and len(body["images"]) == 1 + 2
    infotexts = json.loads(body["info"])["infotexts"]
    assert infotexts[1].endswith("LoRAtorio mask: alice") and infotexts[2].endswith("LoRAtorio mask: hat")


def test_shares_and_owners_of_a_region_through_the_python_api(webui, runner):
    from lib_loratorio.webui import weight_map_api

    p = webui.txt2img(runner, on(), width=128, height=64)
    webui.processing.process_images(p)
    (maps,) = weight_map_api.of_generation(p)
    assert maps.names == weight_map_api.last_generation()[0].names
    whole = maps.shares()
    assert list(whole) == ["alice", "hat"] and sum(whole.values()) == pytest.approx(1.0)
    masks = maps.masks(threshold=0.5)
    alice = (masks["alice"] * 255).astype(np.uint8)           # an 8-bit region, as a detector's mask would come
    assert alice.any() and maps.shares(alice)["alice"] >= 0.5 and maps.owners(alice, min_ratio=1.0) == ["alice"]
    assert maps.owners(None, min_ratio=0.0) == ["alice", "hat"]
    small = maps.masks(32, 16)
    assert small["hat"].shape == (16, 32) and small["hat"].dtype == np.float32
