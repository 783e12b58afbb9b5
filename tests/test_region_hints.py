"""Region hints (lib_loratorio/region_hints.py): parsing, rasterising, and their bias on the SoftMin."""

import math
from types import SimpleNamespace

import pytest
import torch

from lib_loratorio.composer import BranchComposer
from lib_loratorio.composition import patch_means, patch_weights, softmin_weights
from lib_loratorio.errors import InvalidParameterError, LoratorioError
from lib_loratorio.params import LoratorioParams
from lib_loratorio.region_hints import NAMED_REGIONS, Box, MaskHint, hint_prior, parse_region
from lib_loratorio.webui.tags import read_tags


@pytest.mark.parametrize("text, box", [
    ("left", (0, 0, 0.5, 1)), ("Right", (0.5, 0, 1, 1)), ("top left", (0, 0, 0.5, 0.5)),
    ("bottom_right", (0.5, 0.5, 1, 1)), ("centre", (0.25, 0.25, 0.75, 0.75)), ("0,0.5,1,1", (0, 0.5, 1, 1)),
    (" 0.1, 0.2 ,0.3,0.4", (0.1, 0.2, 0.3, 0.4)),
])
def test_named_regions_and_boxes(text, box):
    assert parse_region(text) == Box(*box)


@pytest.mark.parametrize("text, message", [
    ("leftish", r"'leftish' is no region: write a named region \(left, right, "),
    ("0,0,0.5", "'0,0,0.5' is no region"),
    ("0.5,0,0.5,1", "is empty or leaves the image"),
    ("0,0,1.5,1", "is empty or leaves the image"),
])
def test_unreadable_regions_name_the_forms(text, message):
    with pytest.raises(InvalidParameterError, match=message):
        parse_region(text)


def test_a_box_covers_the_grid_cells_whose_centre_it_holds():
    assert Box(*NAMED_REGIONS["left"]).mask(2, 4).tolist() == [[1, 1, 0, 0], [1, 1, 0, 0]]
    assert Box(0, 0, 1 / 3, 1).mask(1, 3).tolist() == [[1, 0, 0]]
    assert Box(*NAMED_REGIONS["bottom"]).mask(3, 1).flatten().tolist() == [0, 1, 1]  # centre 0.5 is in the bottom


def test_a_mask_is_area_averaged_onto_the_latent_grid():
    mask = torch.zeros(8, 8)
    mask[:, :2] = 1  # the left quarter of an image-size mask
    assert MaskHint(mask).mask(2, 2).tolist() == [[0.5, 0.0], [0.5, 0.0]]


def test_the_prior_is_zero_inside_minus_strength_outside_and_zero_without_a_hint():
    prior = hint_prior([Box(0, 0, 0.5, 1), None], 6.0, 1, 2)
    assert prior.tolist() == [[[0.0, -6.0]], [[0.0, 0.0]]]
    assert hint_prior([None, None], 6.0, 1, 2) is None and hint_prior([Box(0, 0, 1, 1)], 0.0, 1, 2) is None


def test_the_prior_biases_the_softmin_logits():
    sim = torch.tensor([0.9, 0.8]).view(2, 1, 1, 1)  # LoRA 2 diverges more
    prior = torch.tensor([0.0, -3.0]).view(2, 1, 1)  # ... but is hinted elsewhere
    w = softmin_weights(sim, 0.1, prior=prior)
    expected = torch.tensor([-9.0, -8.0 - 3.0]).softmax(0)
    assert w.flatten().tolist() == pytest.approx(expected.tolist())


def test_patch_weights_average_the_prior_over_each_patch():
    values = torch.arange(9.0).view(1, 3, 3)
    assert patch_means(values, 2).tolist() == [[[2.0, 3.5], [6.5, 8.0]]]  # partial border patches: their own pixels
    base = torch.randn(1, 4, 2, 2)
    loras = base.unsqueeze(0).repeat(2, 1, 1, 1, 1)  # two LoRAs equal to the base: only the prior decides
    prior = torch.tensor([[[0.0, -2.0], [0.0, -2.0]], [[-2.0, 0.0], [-2.0, 0.0]]])
    w = patch_weights(loras, base, patch_size=1, temperature=0.05, prior=prior)
    ahead = 1 / (1 + math.exp(-2))
    assert w[0, 0, :, 0].tolist() == pytest.approx([ahead, ahead])
    assert w[1, 0, :, 1].tolist() == pytest.approx([ahead, ahead])


def test_a_composer_routes_each_hinted_lora_to_its_region():
    params = LoratorioParams(enabled=True, mode="LoRAtorio", patch_size=1, hint_strength=8.0)
    hints = [parse_region("left"), parse_region("right")]
    comp = BranchComposer(params, ["a", "b"], prediction="eps", keep_weight_maps=True, hints=hints)
    x = torch.randn(2, 4, 4, 8)
    same = torch.randn(1, 4, 4, 8)

    def evaluate(rows, branches):  # every branch predicts the same: without hints the maps are uniform
        return same.expand(len(rows), -1, -1, -1).clone()
    comp(x, [False, True], [0, 0], step=0, evaluate=evaluate)
    maps = comp.last_weight_maps[0]  # [2, 4, 8]
    assert maps[0, :, :4].min() > 0.99 and maps[0, :, 4:].max() < 0.01
    assert maps[1, :, 4:].min() > 0.99
    with pytest.raises(LoratorioError, match="1 region hints for 2 LoRAs"):
        BranchComposer(params, ["a", "b"], hints=hints[:1])


def _tag(*items):
    positional = [i for i in items if "=" not in str(i)]
    named = dict(str(i).split("=", 1) for i in items if "=" in str(i))
    return SimpleNamespace(items=list(items), positional=positional, named=named)


def test_tags_carry_their_region_hint():
    lora, plain, named = read_tags([_tag("alice", "0.8", "left"), _tag("hat", "1"), _tag("bob", "1", "region=right")],
                                   1.0)
    assert (lora.name, lora.strength, lora.region) == ("alice", 0.8, Box(0, 0, 0.5, 1))
    assert plain.region is None and named.region == Box(0.5, 0, 1, 1)
    with pytest.raises(LoratorioError, match=r'In the tag "<loratorio:alice:0.8:nowhere>" the region hint is not '
                                             r"readable: 'nowhere' is no region"):
        read_tags([_tag("alice", "0.8", "nowhere")], 1.0)
