"""Area conditioning under LoRAtorio in the ComfyUI (3cd7b32) stand-in: an area's rows are composed on its crop, as a
routing region of their own (lib_loratorio/comfyui/areas.py), and its weight maps return to their place."""

import pytest
import torch

from lib_loratorio.model_call import RowLayout
from lib_loratorio.params import LoratorioParams
from tests.test_comfyui_nodes import C, env, untouched  # noqa: F401 - fixtures

AREA = (4, 4, 0, 4)  # (height, width, y, x) in latent pixels: the top-right quarter of an 8x8 latent


def conditioning(clip, text, area=None):
    cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
    extra = {"pooled_output": pooled} if area is None else {"pooled_output": pooled, "area": area, "strength": 1.0}
    return [cond, extra]


def sample_with_area(model, steps=2, cfg=5.0):
    """A whole-image prompt and a second one restricted to AREA (as ConditioningSetArea + Conditioning Combine)."""
    clip = C.models.load_checkpoint("standin-sd15")[1]
    positive = [conditioning(clip, "a field"), conditioning(clip, "a red sun", AREA)]
    negative = [conditioning(clip, "blurry")]
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    return C.nodes.common_ksampler(model, 1, steps, cfg, "euler", "simple", positive, negative, latent)[0]["samples"]


def composed(names, **params):
    from lib_loratorio.comfyui.composing import apply_loratorio
    from lib_loratorio.comfyui.stack import StackEntry

    stack = tuple(StackEntry(n, C.folder_paths.get_full_path("loras", n), 0.8) for n in names)
    return apply_loratorio(C.models.load_checkpoint("standin-sd15")[0], stack,
                           LoratorioParams(text_encoder="UNet only", show_weight_maps=True, **params))


def test_one_lora_with_an_area_equals_comfyuis_own_lora_loader():
    """Every row, the area's too, is the LoRA's own prediction at re-centring 0: the merged model's image."""
    lora = "sub/comfy_style.safetensors"
    ours = sample_with_area(composed([lora], mode="LoRAtorio", recenter=0.0))
    merged = C.nodes.LoraLoaderModelOnly().load_lora_model_only(C.models.load_checkpoint("standin-sd15")[0], lora, 0.8)
    assert torch.allclose(ours, sample_with_area(merged[0]), atol=1e-4)


@pytest.mark.parametrize("mode", ["LoRAtorio", "LoRAtorio Fast"])
def test_two_loras_compose_the_area_rows_and_their_maps_return_to_their_place(mode, monkeypatch):
    from lib_loratorio.comfyui.areas import AreaRegions

    keys, per_image = [], AreaRegions.per_image
    monkeypatch.setattr(AreaRegions, "per_image", lambda self, maps, size: keys.append(sorted(maps)) or per_image(
        self, maps, size))
    model = composed(["alice.safetensors", "hat.safetensors"], mode=mode)
    out = sample_with_area(model, steps=3)
    assert keys == [[-1, 0]]              # the area's rows were routed as a region of their own
    assert torch.isfinite(out).all()
    plain = sample_with_area(C.models.load_checkpoint("standin-sd15")[0], steps=3)
    assert not torch.allclose(out, plain, atol=1e-3)
    (maps,) = model.get_attachment("loratorio").last_run_maps.values()
    mean = maps[0][1]
    assert mean.shape == (2, 8, 8) and torch.allclose(mean.sum(dim=0), torch.ones(8, 8), atol=1e-5)


def test_regions_key_area_rows_apart_and_put_their_maps_back():
    from lib_loratorio.comfyui.areas import AreaRegions, areas_of

    latent = torch.zeros(2, 4, 8, 8)
    areas = areas_of([[{"uuid": "a", "area": (6, 6, 4, 4)}, {"uuid": "b"}], None], latent)
    assert areas == {"a": (4, 4, 4, 4)}                                   # clipped to the latent, as ComfyUI crops
    regions = AreaRegions()
    regions.areas = areas
    # a call of two chunks of 2 images: the area's prompt rows, then whole-image negative rows
    layout = regions.layout(RowLayout([False, False, True, True], [0, 1, 0, 1], 2), ["a", "b"])
    assert layout.image_of_row == [-1, -2, 0, 1] and layout.is_uncond == [False, False, True, True]
    assert regions.covers(["a"], (4, 4)) and not regions.covers(["a", "b"], (4, 4))
    whole, area = torch.full((2, 8, 8), 0.5), torch.tensor([1.0, 0.0])[:, None, None].expand(2, 4, 4)
    merged = regions.per_image({0: whole, -1: area}, (8, 8))
    assert torch.equal(merged[0][:, :4], whole[:, :4])                     # outside the area: the image's own
    assert torch.allclose(merged[0][0, 4:, 4:], torch.full((4, 4), 0.75))  # inside: the mean of both
    only_area = regions.per_image({-2: area}, (8, 8))[1]                   # image 1 had no whole-image prompt rows
    assert torch.equal(only_area[0, 4:, 4:], torch.ones(4, 4)) and torch.equal(only_area[:, :4], torch.full(
        (2, 4, 8), 0.5))


def test_a_crop_of_no_known_area_is_refused_with_a_message():
    from lib_loratorio.errors import LoratorioError

    session = composed(["alice.safetensors"]).get_attachment("loratorio")
    session.latent_size, session.regions.areas = (8, 8), {"y": (8, 8, 0, 0)}
    with pytest.raises(LoratorioError, match="belong to no conditioning area it knows"):
        session.check_call({"input": torch.zeros(2, 4, 4, 4), "c": {"transformer_options": {"uuids": ["x", "y"]}}})
    session.check_call({"input": torch.zeros(2, 4, 8, 8), "c": {"transformer_options": {"uuids": ["x", "y"]}}})
