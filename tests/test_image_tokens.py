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


def test_video_frames_stack_into_one_image_without_patches_across_frames():
    from lib_loratorio.frames import StackedFrames

    x = torch.randn(2, 4, 3, 5, 6)                      # 3 frames of 5 x 6 latent pixels
    frames = StackedFrames(x, patch_size=4)             # each frame padded to 8 rows: whole 4-pixel patches
    image = frames.stack(x)
    assert image.shape == (2, 4, 3 * 8, 6) and torch.equal(image[:, :, 8:13], x[:, :, 1])
    assert torch.equal(image[:, :, 13:16], torch.zeros(2, 4, 3, 6))
    assert torch.equal(frames.unstack(image), x)
    maps = torch.rand(2, 24, 6)                          # one image's maps, N = 2
    assert torch.equal(frames.frame_maps(maps, frame=5, of=9), maps[:, 8:13])   # decoded frame 5 of 9: latent 1
    assert frames.maps(torch.rand(1, 2, 24, 6)).shape == (1, 2, 3, 5, 6)        # as the layers see the latent
    one = StackedFrames(torch.randn(1, 4, 1, 5, 6), patch_size=4)                # Qwen-Image: one frame, no padding
    assert one.stack(torch.randn(1, 4, 1, 5, 6)).shape == (1, 4, 5, 6)
    assert one.maps(torch.rand(1, 2, 5, 6)).shape == (1, 2, 5, 6)
