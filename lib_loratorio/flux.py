"""Flux-family models (Flux, Flux 2, Chroma; BFL naming): how LoRAtorio tells them apart, what it needs of them."""

from __future__ import annotations

from torch import nn

from .errors import LoratorioError


def is_flux(diffusion_model: nn.Module) -> bool:
    """A Flux-family transformer (``double_blocks`` and ``single_blocks``): 2x2-packed latent tokens."""
    return hasattr(diffusion_model, "double_blocks") and hasattr(diffusion_model, "single_blocks")


def check_patch_size(patch_size: int, flux: bool) -> None:
    """Raise when the patch size cannot work on the model: Flux packs 2x2 latent pixels into one token."""
    if flux and patch_size % 2:
        raise LoratorioError(
            f"LoRAtorio patch_size={patch_size} does not fit Flux, which packs 2x2 latent pixels into one token: "
            "use an even patch size (2, 4, 8...).")
