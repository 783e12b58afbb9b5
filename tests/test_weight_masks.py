"""Weight maps as masks and shares (lib_loratorio/weight_masks.py): upsampling, threshold, feathering, a region's
shares and owners."""

import math

import pytest
import torch

from lib_loratorio.heatmaps import overlay
from lib_loratorio.weight_masks import gaussian_blur, owners, region_shares, unique_names, upsampled, weight_masks


def two_loras(height=8, width=8):
    """Maps [2, h, w] of two LoRAs: the first owns the left half (0.9), the second the right half (0.8)."""
    first = torch.full((height, width), 0.2)
    first[:, : width // 2] = 0.9
    return torch.stack([first, 1 - first])


def test_masks_are_the_maps_at_image_size_pixel_for_pixel():
    maps = two_loras()
    masks = weight_masks(maps, 64, 64)
    assert masks.shape == (2, 64, 64)
    assert torch.equal(masks[:, :, :32], maps[:, :1, :1].expand(2, 64, 32))   # each latent pixel covers 8x8
    assert torch.allclose(masks.sum(dim=0), torch.ones(64, 64))               # the shares of a pixel sum to 1
    # the heatmaps show the same upsampling
    picture = torch.zeros(64, 64, 3, dtype=torch.uint8)
    assert torch.equal(overlay(maps[0], picture), overlay(upsampled(maps[0], 64, 64), picture))


def test_a_threshold_makes_binary_masks_and_a_blur_feathers_their_edge():
    maps = two_loras()
    binary = weight_masks(maps, 64, 64, threshold=0.5)
    assert set(binary.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(binary[0, :, :32], torch.ones(64, 32)) and torch.equal(binary[0, :, 32:], torch.zeros(64, 32))
    soft = weight_masks(maps, 64, 64, threshold=0.5, blur=4.0)
    row = soft[0, 10]
    assert row[0] == pytest.approx(1.0) and row[-1] == pytest.approx(0.0, abs=1e-6)   # far from the edge: unchanged
    assert 0.4 < float(row[31]) < 0.6 and bool((row[1:] <= row[:-1] + 1e-6).all())   # a ramp across it
    assert torch.allclose(gaussian_blur(torch.full((1, 16, 16), 0.3), 2.0), torch.full((1, 16, 16), 0.3))


def test_a_regions_shares_sum_to_one_and_name_its_owners():
    maps = two_loras()
    left = torch.zeros(64, 64)
    left[8:40, 0:24] = 1.0                                  # inside the first LoRA's half
    shares = region_shares(maps, left)
    assert shares.tolist() == pytest.approx([0.9, 0.1])
    straddling = torch.zeros(64, 64)
    straddling[:, 16:48] = 1.0                              # half on each side: (0.9 + 0.2) / 2, (0.1 + 0.8) / 2
    assert region_shares(maps, straddling).tolist() == pytest.approx([0.55, 0.45])
    # an owner has at least min_ratio times the largest share
    assert owners(shares, 0.5) == [0] and owners(region_shares(maps, straddling), 0.5) == [0, 1]
    assert owners(region_shares(maps, straddling), 0.9) == [0]
    assert owners(torch.tensor([0.4, 0.35, 0.25]), 0.5) == [0, 1, 2]
    assert owners(torch.tensor([0.4, 0.35, 0.25]), 0.7) == [0, 1]
    assert owners(torch.tensor([0.4, 0.35, 0.25]), 1.0) == [0]          # the largest share always owns
    assert owners(region_shares(maps, torch.zeros(64, 64)), 0.5) == []  # an empty region has no owner


def test_stacks_maps_give_shares_too():
    """Stack's maps are factors, not shares: 1 everywhere without hints (every LoRA owns every region at any
    ratio), 1 inside a hint's region and e^-strength outside (the hinted LoRA owns its region)."""
    left = torch.zeros(64, 64)
    left[8:40, 0:24] = 1.0
    uniform = torch.ones(3, 8, 8)
    assert region_shares(uniform, left).tolist() == pytest.approx([1 / 3] * 3)
    assert owners(region_shares(uniform, left), 1.0) == [0, 1, 2]
    hinted = torch.ones(3, 8, 8)
    hinted[0, :, 4:] = hinted[1, :, :4] = math.exp(-2.0)   # alice left, bob right (hint strength 2), a style: none
    shares = region_shares(hinted, left)
    assert shares.tolist() == pytest.approx([1 / (2 + math.exp(-2)), math.exp(-2) / (2 + math.exp(-2)),
                                             1 / (2 + math.exp(-2))])
    assert owners(shares, 0.5) == [0, 2]                    # alice and the style; bob is left to his region
    assert region_shares(torch.zeros(2, 8, 8), left).tolist() == [0.0, 0.0]


def test_repeated_names_are_numbered():
    assert unique_names(["alice", "hat", "alice", "alice"]) == ["alice", "hat", "alice (2)", "alice (3)"]
