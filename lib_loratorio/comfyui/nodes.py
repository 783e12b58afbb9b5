"""The LoRAtorio nodes (ComfyUI's classic node API: INPUT_TYPES, RETURN_TYPES, FUNCTION, CATEGORY).

- LoRAtorio LoRA: one LoRA of models/loras and its strength, appended to a LORATORIO_STACK (chain them).
- LoRAtorio Apply: MODEL + stack + the settings -> a MODEL that composes the stack when any sampler runs it.
- LoRAtorio Weight Maps: that MODEL and the images of its last run -> one labelled heatmap per LoRA and image, and a
  MASK per LoRA.
- LoRAtorio Text Encode: CLIP + text + stack -> a CONDITIONING that also carries each LoRA branch's own encoding
  (its text-encoder part applied; branch_text.py), where CLIPTextEncode gives every branch the base text.
Errors are raised as LoratorioError (a plain Exception) whose message names the problem and the fix, which
ComfyUI shows in its error panel.
"""

from __future__ import annotations

from typing import Any, Optional

import folder_paths

from ..errors import LoratorioError
from ..params import LoratorioParams
from ..region_hints import MaskHint
from .branch_text import encode_with_branches
from .composing import apply_loratorio, session_of
from .settings import params_from_inputs, setting_inputs
from .stack import STACK_TYPE, LoraStack, StackEntry, pushed
from .weight_maps import MASK_OUTPUTS, weight_map_images, weight_map_masks

CATEGORY = "loaders/LoRAtorio"
_STRENGTH = LoratorioParams.__dataclass_fields__["default_strength"]


class LoratorioLora:
    DESCRIPTION = ("One LoRA for LoRAtorio: it becomes a branch of its own, composed patch by patch with the base "
                   "model and the other LoRAs of the stack. Chain several into LoRAtorio Apply.")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "lora_name": (folder_paths.get_filename_list("loras"), {"tooltip": "A LoRA of models/loras."}),
                "strength": ("FLOAT", {"default": _STRENGTH.default, "min": _STRENGTH.metadata["min"],
                                       "max": _STRENGTH.metadata["max"], "step": 0.01,
                                       "tooltip": "Its strength on its own branch (0 leaves it out)."}),
            },
            "optional": {
                "stack": (STACK_TYPE, {"tooltip": "LoRAs of LoRAtorio LoRA nodes before this one."}),
                "region": ("MASK", {"tooltip": "Optional region hint: where this LoRA should act (white). It biases "
                                               "the weight maps by LoRAtorio Apply's hint_strength instead of "
                                               "replacing them; a LoRA without one competes everywhere."}),
            },
        }

    RETURN_TYPES = (STACK_TYPE,)
    RETURN_NAMES = ("stack",)
    FUNCTION = "add"
    CATEGORY = CATEGORY

    def add(self, lora_name: str, strength: float, stack: Optional[LoraStack] = None,
            region: Optional[Any] = None) -> tuple[LoraStack]:
        path = folder_paths.get_full_path("loras", lora_name)
        if path is None:
            raise LoratorioError(f"LoRA '{lora_name}' is not in ComfyUI's models/loras folders (any more): pick "
                                 "another in LoRAtorio LoRA, or press R to refresh the lists.")
        hint = None
        if region is not None:  # ComfyUI's MASK: [H, W] or [B, H, W]; the first mask of a batch
            hint = MaskHint(region[0] if region.dim() == 3 else region)
        return (pushed(stack, StackEntry(lora_name, path, float(strength), hint)),)


class LoratorioApply:
    DESCRIPTION = ("Composes the stack's LoRAs at sampling time (LoRAtorio): every step the base model and each "
                   "LoRA run as branches, each LoRA gets the patches where it departs most from the base, and "
                   "CFG is re-centred on the base. Connect the MODEL to any sampler; bypass the node to turn it off.")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {"model": ("MODEL", {"tooltip": "The base model (ComfyUI's own LoRA loaders before this "
                                                        "node are part of it)."}),
                         **setting_inputs()},
            "optional": {"stack": (STACK_TYPE, {"tooltip": "The LoRAs to compose, from LoRAtorio LoRA nodes."})},
        }

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "apply"
    CATEGORY = CATEGORY

    def apply(self, model: Any, stack: Optional[LoraStack] = None, **settings: Any) -> tuple[Any]:
        return (apply_loratorio(model, stack, params_from_inputs(settings)),)


class LoratorioWeightMaps:
    DESCRIPTION = ("The weight maps of the last sampling run of a LoRAtorio model (turn on show_weight_maps): one "
                   "heatmap per LoRA and image, averaged over the steps, over the decoded images of that run; and one "
                   f"MASK per LoRA (the first {MASK_OUTPUTS} of the stack, in its order) at the images' size, for any "
                   "inpaint, detailer or compositing node.")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "model": ("MODEL", {"tooltip": "The MODEL of LoRAtorio Apply that the sampler ran."}),
            "images": ("IMAGE", {"tooltip": "The decoded images of that run (this also runs the node after it)."}),
        }, "optional": {
            "threshold": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": (
                "Masks: 0 gives each LoRA's weight as it is (a soft mask); above 0, 1 where the LoRA's weight is "
                "at least this and 0 elsewhere (0.5 with two LoRAs: where it leads).")}),
            "blur": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 256.0, "step": 0.5, "tooltip": (
                "Masks: feathers their edges by a Gaussian of this many pixels (0: the patches' hard edges).")}),
        }}

    RETURN_TYPES = ("IMAGE", *("MASK",) * MASK_OUTPUTS)
    RETURN_NAMES = ("weight_maps", *(f"mask_{i + 1}" for i in range(MASK_OUTPUTS)))
    OUTPUT_TOOLTIPS = ("One heatmap per LoRA and image.",
                       *(f"Where LoRA {i + 1} of the stack acts, per image (empty if the stack has fewer LoRAs)."
                         for i in range(MASK_OUTPUTS)))
    FUNCTION = "render"
    CATEGORY = CATEGORY

    def render(self, model: Any, images: Any, threshold: float = 0.0, blur: float = 0.0) -> tuple[Any, ...]:
        session = session_of(model)
        if session is None:
            raise LoratorioError("This MODEL does not come from LoRAtorio Apply (or its stack was empty): connect the "
                                 "MODEL output of LoRAtorio Apply.")
        return (weight_map_images(session, images), *weight_map_masks(session, images, threshold, blur))


class LoratorioTextEncode:
    DESCRIPTION = ("Encodes the prompt as CLIP Text Encode does, and once more for each LoRA of the stack that has a "
                   "text-encoder part, with that part applied: LoRAtorio Apply then conditions each LoRA's branch on "
                   "its own encoding. Use it for the positive and the negative prompt; CLIP Text Encode instead "
                   "ignores the LoRAs' text-encoder parts (cheaper). Without LoRAtorio Apply the image is the "
                   "prompt's alone (the extra encodings weigh nothing, but cost an evaluation each).")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {"text": ("STRING", {"multiline": True, "dynamicPrompts": True,
                                             "tooltip": "The text to be encoded."}),
                         "clip": ("CLIP", {"tooltip": "The CLIP model used for encoding the text."})},
            "optional": {"stack": (STACK_TYPE, {"tooltip": "The LoRAs of LoRAtorio Apply (the same stack)."})},
        }

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = CATEGORY

    def encode(self, clip: Any, text: str, stack: Optional[LoraStack] = None) -> tuple[list]:
        return (encode_with_branches(clip, text, stack),)


NODE_CLASS_MAPPINGS = {
    "LoratorioLora": LoratorioLora,
    "LoratorioApply": LoratorioApply,
    "LoratorioWeightMaps": LoratorioWeightMaps,
    "LoratorioTextEncode": LoratorioTextEncode,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "LoratorioLora": "LoRAtorio LoRA",
    "LoratorioApply": "LoRAtorio Apply",
    "LoratorioWeightMaps": "LoRAtorio Weight Maps",
    "LoratorioTextEncode": "LoRAtorio Text Encode",
}
