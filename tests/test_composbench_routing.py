"""The routing variants under test in composbench/routing.py, against hand-computed cases."""

import math

import pytest
import torch

from composbench.routing import RoutedComposer, hint_prior
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


def test_a_hint_biases_the_softmin_without_replacing_it():
    base, loras = _two_loras()
    regions = torch.zeros(2, 2, 2)
    regions[0, :, 1] = 1  # a: right column; b: left column
    regions[1, :, 0] = 1
    prior = hint_prior(("zorbot", "kittra"), regions, strength=3.0)
    assert prior[0].tolist() == [[-3.0, 0.0], [-3.0, 0.0]]
    c = RoutedComposer(LoratorioParams(patch_size=1, temperature=0.5), ["a", "b"], prior=prior, prediction="eps")
    w = _weights(c, base, loras)
    # bottom right: equal cosines, the hint decides: a ahead by e^3
    assert w[0, 0, 1, 1].item() == pytest.approx(1 / (1 + math.exp(-3)))
    # top right: a diverges (cos 0 vs 1: logit 2 ahead) and is hinted (3 ahead): both add
    assert w[0, 0, 0, 1].item() == pytest.approx(1 / (1 + math.exp(-5)))
    # backgrounds and styles get no hint, whatever their region
    assert hint_prior(("zorbot", "brickwall"), regions, 3.0)[1].abs().max() == 0
