"""Where a transformer's image tokens sit in the sequences its layers see: one rule for every DiT family.

LoRAtorio's weight maps live on the latent grid; the fast mode scales each LoRA's change of every layer by its
map at that layer's layout (layer_maps.py). A UNet's layers see the latent at several scales; a diffusion
transformer (Flux.1, Flux.2, Chroma, Lumina 2 and Z-Image, Qwen-Image, SD3, Wan) cuts the latent once into
tokens and every layer that sees the image sees the same tokens, laid out as

    [ text | image | after ]

* image: ``ceil(d / p)`` tokens along each latent axis d with the model's token patch p (``patch_size``: 2x2
  latent pixels for Flux.1, Chroma, Lumina, Qwen-Image, SD3; 1 for Flux.2, whose latent is packed already;
  1x2x2 for Wan's frames), flattened row-major (frame, row, column), as every one of these models does
  (each pads the latent to whole patches first);
* text: the prompt's tokens, present only in joint text+image sequences (Flux-family single blocks, Lumina's
  main layers) and then *before* the image: the conditioning's token count, rounded up to the model's
  ``pad_tokens_multiple`` (Z-Image pads its caption with learned tokens);
* after: reference images' tokens (Flux Kontext and Flux.2 edits, Qwen-Image edits; ``ref_latents``), and the
  image's own padding to ``pad_tokens_multiple`` (Z-Image).

So a layer output of L tokens is an image-stream layer when L = image + after, a joint layer when L = text +
image + after, and neither (the text stream, modulation vectors, Chroma's guidance approximator...) otherwise;
layers that act on text alone are also named so (layer_maps.is_text_side), since token counts can coincide.
Not covered: layouts with images *before* the target (Z-Image Omni, Wan's reference frames), pixel-space models.

Everything is read from the model and the call: ``patch_size`` (SD3: ``x_embedder.patch_size``), the Flux
family's fixed 2 where the model has no such attribute (the original Forge), ``pad_tokens_multiple``, the
latent's shape, the conditioning's length and the reference latents.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from .errors import LoratorioError
from .flux import is_flux


@dataclass(frozen=True)
class TokenLayout:
    """A transformer's token layout in one model call (see the module docstring)."""

    #: latent pixels per token along each latent axis, the last ones the image's rows and columns
    patch: tuple[int, ...]
    #: tokens before the image in joint text+image sequences
    text: int = 0
    #: tokens after the image (references, padding)
    after: int = 0

    def grid(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """The token grid of a latent of ``spatial`` size (its trailing axes; a missing patch axis is 1)."""
        patch = (1,) * (len(spatial) - len(self.patch)) + self.patch[-len(spatial):]
        return tuple(-(-int(d) // p) for d, p in zip(spatial, patch, strict=True))

    def image_start(self, length: int, image_tokens: int) -> Optional[int]:
        """Where the image tokens start in a sequence of ``length`` tokens, None if it holds no image.

        The layouts with everything after the image come first; the bare image (a patch embedding, before the
        references and the padding are appended) last."""
        for start, tail in ((0, self.after), (self.text, self.after), (0, 0), (self.text, 0)):
            if (start == 0 or self.text) and length == start + image_tokens + tail:
                return start
        return None


def token_patch(diffusion_model: nn.Module) -> Optional[tuple[int, ...]]:
    """Latent pixels per image token, read from the model; None for a UNet (it has no tokens of its own)."""
    patch: Any = getattr(diffusion_model, "patch_size", None)
    if patch is None:
        patch = getattr(getattr(diffusion_model, "x_embedder", None), "patch_size", None)  # SD3's PatchEmbed
    if patch is None and is_flux(diffusion_model):
        patch = 2  # the original Forge's Flux keeps its 2x2 packing implicit
    if patch is None:
        return None
    return tuple(int(p) for p in patch) if isinstance(patch, (tuple, list)) else (int(patch), int(patch))


def _padded(count: int, multiple: Optional[int]) -> int:
    return count if not multiple else -(-count // multiple) * multiple


def token_layout(diffusion_model: nn.Module, x: torch.Tensor, c: dict,
                 references: Sequence[torch.Tensor] = ()) -> Optional[TokenLayout]:
    """The token layout of one model call: latent ``x`` [B, C, (T,) H, W], the call's conditioning ``c``
    (``c_crossattn``: the text; ``ref_latents``: reference images) and any ``references`` the host keeps
    elsewhere. None for a UNet."""
    patch = token_patch(diffusion_model)
    if patch is None:
        return None
    multiple = getattr(diffusion_model, "pad_tokens_multiple", None)
    text = c.get("c_crossattn")
    text_tokens = _padded(int(text.shape[1]), multiple) if isinstance(text, torch.Tensor) and text.dim() == 3 else 0
    layout = TokenLayout(patch, text_tokens)
    image = math.prod(layout.grid(x.shape[2:]))
    refs = [*(c.get("ref_latents") or ()), *references]
    after = sum(math.prod(layout.grid(ref.shape[2:])) for ref in refs)
    return TokenLayout(patch, text_tokens, after + _padded(image, multiple) - image)


def check_patch_size(patch_size: int, diffusion_model: nn.Module) -> None:
    """Raise when the patch size cannot work on the model: a patch must hold whole tokens."""
    patch = token_patch(diffusion_model)
    step = max(patch[-2:]) if patch else 1
    if patch_size % step:
        raise LoratorioError(
            f"LoRAtorio patch_size={patch_size} does not fit this model, which packs {step}x{step} latent pixels "
            f"into one token: use a multiple of {step} ({step}, {2 * step}, {4 * step}...).")
