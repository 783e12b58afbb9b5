"""A host's text encoders, by the names the hosts give them, as the components LoRA files name (te1, te2, te3).

Forge (Neo) keeps its text encoders in a ModuleDict and ComfyUI as attributes of its ``cond_stage_model``, under
the same names: CLIPs (``clip_l``, ``clip_h``, ``clip_g``), T5s (``t5xxl``, Wan's ``umt5xxl``) and language models
used as text encoders (Lumina 2 ``gemma2``/``gemma2_2b``, Z-Image and Flux.2 Klein ``qwen3``/``qwen3_4b``,
Qwen-Image ``qwen25_7b``...). Each holds its network in ``transformer`` (CLIP, T5, ComfyUI's wrappers) or is it.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

CLIPS = ("clip_l", "clip_h", "clip_g")
T5S = ("t5xxl", "umt5xxl")


def text_encoder_components(encoders: Mapping[str, nn.Module]) -> dict[str, nn.Module]:
    """te1, te2, te3 -> the networks of ``encoders`` (by their hosts' names).

    LoRA files count text encoders te1, te2, te3: the CLIPs come first (SDXL's CLIP-G is te2); a T5 is te3 (kohya
    sd-scripts, ComfyUI's ``text_encoders.t5xxl.``) and also te2 (OneTrainer, diffusers' ``text_encoder_2``) beside
    CLIP-L, and te1 where it is the only encoder (Chroma, Wan), as in ComfyUI's own loader; a language model used as
    the text encoder is te1 (kohya's ``lora_te_``, diffusers' ``text_encoder.``).
    """
    def network(encoder: nn.Module) -> nn.Module:
        return getattr(encoder, "transformer", encoder)

    components = dict(zip(("te1", "te2"), (network(encoders[k]) for k in CLIPS if k in encoders), strict=False))
    t5 = next((network(encoders[k]) for k in T5S if k in encoders), None)
    if t5 is not None:
        components["te3"] = t5
        components.setdefault("te2", t5)
        components.setdefault("te1", t5)
    for key, encoder in encoders.items():
        if key not in CLIPS and key not in T5S:
            components.setdefault("te1", network(encoder))
    return components
