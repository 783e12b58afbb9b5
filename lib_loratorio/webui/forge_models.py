"""The models of Forge and Forge Neo: which family an engine is, and the networks its LoRAs bind to.

Forge (dfdcbab) and Forge Neo (the ``neo`` branch of sd-webui-forge-classic, read at release 2.26) build an
engine (``backend.diffusion_engine.*``) from the class huggingface_guess matched to the checkpoint
(``sd_model.model_config``). That class names the family once, the same way on both: its ``unet_config``
class attribute holds ComfyUI's ``image_model`` ("flux", "flux2", "chroma", "lumina2"...); SD1.x and SDXL
have none (the engine's ``is_sd1``/``is_sdxl`` flags say which). Read from the class: huggingface_guess removes
``image_model`` from the instance's copy.

The text encoders are the entries of ``forge_objects.clip.cond_stage_model`` (a ModuleDict), keyed by the
engine (text_encoders.py): CLIPs, T5s and, on Neo, language models used as text encoders (Flux.2 Klein and
Z-Image ``qwen3``, Lumina 2 ``gemma2``, Qwen-Image ``qwen25_7b``), whose modules sit under ``model.``.
"""

from __future__ import annotations

from typing import Any, Optional

from torch import nn

from ..errors import LoratorioError
from ..text_encoders import text_encoder_components

#: the families LoRAtorio composes for (None: the UNet models, SD1.x/SD2.x/SDXL), by huggingface_guess's name
COMPOSED = {None: "SD1.x/SDXL", "flux": "Flux.1", "flux2": "Flux.2", "chroma": "Chroma",
            "lumina2": "Lumina 2 / Z-Image"}


def model_family(sd_model: Any) -> Optional[str]:
    """The engine's family as huggingface_guess names it ("flux", "flux2", "chroma", "lumina2", "qwen_image",
    "wan2.1"...), None for the UNet models."""
    config = getattr(sd_model, "model_config", None)
    return getattr(type(config), "unet_config", {}).get("image_model")


def check_family(sd_model: Any) -> None:
    """Raise for a model family LoRAtorio does not compose for (yet)."""
    family = model_family(sd_model)
    if family not in COMPOSED:
        raise LoratorioError(
            f"LoRAtorio does not compose LoRAs for this model ({type(sd_model).__name__}, '{family}' family) yet; "
            f"it composes for {', '.join(COMPOSED.values())}. Use plain <lora:...> tags with this model, or "
            "turn LoRAtorio off.")


def model_components(sd_model: Any, unet_only: bool) -> dict[str, nn.Module]:
    """The live networks: the UNet/DiT and the text encoders of the engine's current ``forge_objects``."""
    objects = sd_model.forge_objects
    components = {"unet": objects.unet.model.diffusion_model}
    if not unet_only:
        components.update(text_encoder_components(dict(objects.clip.cond_stage_model.named_children())))
    return components
