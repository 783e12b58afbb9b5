"""The routing variants under test in composbench/routing.py, against hand-computed cases."""

import math

import pytest
import torch

from composbench.routing import RoutedComposer, world_hints
from lib_loratorio.params import LoratorioParams


def _weights(composer, base, loras):
    return composer._weights(torch.zeros_like(base), base, loras)


def _two_loras():
    """Base [1,1,2,2] and two LoRA predictions whose cosines with the base are known per pixel (patch 1)."""
    base = torch.ones(1, 1, 2, 2)
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]]).view(1, 1, 2, 2)  # diverges (cos 0) at the top right
    b = torch.ones(1, 1, 2, 2) * 2  # same direction as the base everywhere (cos 1)
    b[..., 0, 0] = -1.0  # diverges (cos -1) at the top left
    return base, torch.stack([a, b])


def test_softmin_rule_is_the_papers():
    base, loras = _two_loras()
    c = RoutedComposer(LoratorioParams(patch_size=1, temperature=0.5), ["a", "b"], prediction="eps")
    w = _weights(c, base, loras)
    # top left: cos a = 1, cos b = -1 -> softmax(-1/0.5, 1/0.5) for (a, b)
    assert w[0, 0, 0, 0].item() == pytest.approx(1 / (1 + math.exp(4)))
    assert w[:, 0, 1, 1].tolist() == pytest.approx([0.5, 0.5])  # equal cosines: equal weights


def test_relative_rule_is_as_decisive_for_small_as_for_large_divergences():
    # two channels: base (1, 0) everywhere, a LoRA (1, eps * u) with u its layout: 1 - cos ~ (eps u)^2 / 2
    u = torch.tensor([[[0.0, 2.0], [0.0, 1.0]], [[2.0, 0.0], [0.0, 1.0]]])  # a: top right, b: top left

    def case(eps):
        base = torch.stack([torch.ones(2, 2), torch.zeros(2, 2)]).unsqueeze(0)
        loras = torch.stack([torch.stack([torch.ones(2, 2), eps * u[i]]).unsqueeze(0) for i in range(2)])
        return base, loras

    relative = RoutedComposer(LoratorioParams(patch_size=1, temperature=0.5), ["a", "b"], rule="relative",
                              prediction="eps")
    paper = RoutedComposer(LoratorioParams(patch_size=1, temperature=0.5), ["a", "b"], prediction="eps")
    w_large, w_small = _weights(relative, *case(0.05)), _weights(relative, *case(0.005))
    assert (_weights(paper, *case(0.005)) - 0.5).abs().max() < 0.01  # the paper's rule: uniform when close
    assert (w_large - w_small).abs().max() < 0.01  # this one: the same maps whatever the scale
    # hand-computed: divergences (eps u)^2 / 2 -> relative to their mean over LoRAs and pixels (eps^2 * 10 / 16)
    d = u.flatten(1) ** 2 / 2
    expected = (d / (d.mean() * 0.5)).softmax(dim=0).view(2, 2, 2)
    assert w_small[:, 0].flatten().tolist() == pytest.approx(expected.flatten().tolist(), abs=1e-3)
    assert w_small[0, 0, 0, 1] > 0.99 and w_small[1, 0, 0, 0] > 0.99


def test_world_hints_are_the_things_regions_and_none_for_backgrounds_and_styles():
    regions = torch.zeros(3, 2, 2)
    regions[0, :, 0] = 1
    hints = world_hints(("zorbot", "brickwall", "pixelart"), regions)
    assert hints[1] is None and hints[2] is None
    assert hints[0].mask(2, 2).tolist() == [[1.0, 0.0], [1.0, 0.0]]


def test_the_relative_rule_honours_region_hints():
    base = torch.stack([torch.ones(2, 2), torch.zeros(2, 2)]).unsqueeze(0)
    loras = torch.stack([base, base])  # no divergence anywhere: only the hints decide
    loras[0, 0, 1, 0, 0] = 0.01  # (a tiny one, so the relative rule has a mean to divide by)
    regions = torch.zeros(2, 2, 2)
    regions[0, :, 0], regions[1, :, 1] = 1, 1
    c = RoutedComposer(LoratorioParams(patch_size=1, temperature=0.5, hint_strength=6.0), ["a", "b"],
                       rule="relative", prediction="eps", hints=world_hints(("zorbot", "kittra"), regions))
    w = _weights(c, base, loras)
    assert w[0, 0, 1, 0] > 0.99 and w[1, 0, 1, 1] > 0.99
