"""The one image-token rule: token layouts read from a transformer and its call (image_tokens.py)."""

import pytest
import torch
from torch import nn

from lib_loratorio.errors import LoratorioError
from lib_loratorio.image_tokens import TokenLayout, check_patch_size, token_layout, token_patch


def _model(**attrs):
    model = nn.Module()
    for name, value in attrs.items():
        setattr(model, name, value)
    return model


def test_the_token_patch_comes_from_the_model():
    assert token_patch(_model(patch_size=2)) == (2, 2)                        # Flux.2: 1, Lumina, Qwen, Chroma: 2
    assert token_patch(_model(patch_size=(1, 2, 2))) == (1, 2, 2)             # Wan
    assert token_patch(_model(x_embedder=_model(patch_size=(2, 2)))) == (2, 2)  # SD3's PatchEmbed
    assert token_patch(_model(double_blocks=nn.ModuleList(), single_blocks=nn.ModuleList())) == (2, 2)  # old Forge
    assert token_patch(_model(input_blocks=nn.ModuleList())) is None          # a UNet


def test_a_call_lays_out_text_image_references_and_padding():
    flux = _model(patch_size=2)
    x, text = torch.zeros(2, 16, 9, 12), torch.zeros(2, 7, 4)
    assert token_layout(flux, x, {"c_crossattn": text}) == TokenLayout((2, 2), text=7)
    kontext = token_layout(flux, x, {"c_crossattn": text, "ref_latents": [torch.zeros(1, 16, 4, 6)]})
    assert kontext == TokenLayout((2, 2), text=7, after=2 * 3)
    z_image = _model(patch_size=2, pad_tokens_multiple=32)                     # caption and image padded to 32
    assert token_layout(z_image, x, {"c_crossattn": text}) == TokenLayout((2, 2), text=32, after=32 - 5 * 6)
    qwen = token_layout(flux, torch.zeros(1, 16, 1, 8, 8), {"c_crossattn": text})   # a one-frame 5-D latent
    assert qwen.grid((1, 8, 8)) == (1, 4, 4)
    assert token_layout(_model(input_blocks=nn.ModuleList()), x, {"c_crossattn": text}) is None


def test_the_patch_size_must_hold_whole_tokens():
    check_patch_size(4, _model(patch_size=2))
    check_patch_size(3, _model(patch_size=1))
    check_patch_size(3, _model(input_blocks=nn.ModuleList()))
    with pytest.raises(LoratorioError, match="patch_size=3 does not fit this model, which packs 2x2"):
        check_patch_size(3, _model(patch_size=(1, 2, 2)))
