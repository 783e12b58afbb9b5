"""Flux-family models (Flux.1, Flux.2, Chroma; BFL naming): how LoRAtorio tells them apart."""

from __future__ import annotations

from torch import nn


def is_flux(diffusion_model: nn.Module) -> bool:
    """A Flux-family transformer (``double_blocks`` and ``single_blocks``)."""
    return hasattr(diffusion_model, "double_blocks") and hasattr(diffusion_model, "single_blocks")


def is_guidance_distilled(diffusion_model: nn.Module) -> bool:
    """Flux.1 and Flux.2: distilled to run at CFG 1, where the host computes no negative-prompt rows; with CFG
    above 1 LoRAtorio gives those rows the base model's prediction. Not Chroma (real CFG; its guidance
    approximator, ``distilled_guidance_layer``, replaces Flux's modulation)."""
    return is_flux(diffusion_model) and not hasattr(diffusion_model, "distilled_guidance_layer")
