"""The LoRAtorio settings as ComfyUI node inputs, generated from LoratorioParams (names, ranges, defaults, hints).

Settings that belong to the WebUIs' prompt tags and accordion have no input here: the node itself is the
switch (bypass it to turn LoRAtorio off), the LoRAs and strengths come from the LoRA nodes, the text
encoders are composed per branch by LoRAtorio Text Encode nodes, where the prompts are encoded (Apply binds the
LoRAs' UNet parts only: "UNet only" here), and the masks are outputs of LoRAtorio Weight Maps (a detailer pass
per LoRA is a workflow of its own there: docs/comfyui).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..choices import TextEncoder
from ..params import LoratorioParams

#: Settings of the WebUIs' results and passes, which ComfyUI has as nodes and workflows instead: their defaults.
_WEBUI_ONLY = {name: LoratorioParams.__dataclass_fields__[name].default
               for name in ("weight_masks", "detailer", "detailer_share")}
#: LoratorioParams fields with no ComfyUI input, and the value the node uses for them.
FIXED: dict[str, Any] = {"enabled": True, "default_strength": 1.0, "use_lora_tags": False, "pool": [],
                         "text_encoder": TextEncoder.UNET_ONLY, "weight_map_steps": [], **_WEBUI_ONLY}
# Widget step of a float setting where 0.01 would not do (ComfyUI's frontend rounds to the step).
_FLOAT_STEPS = {"temperature": 0.001, "recenter": 0.05, "step_start": 0.05, "step_end": 0.05}


def setting_fields() -> list[dataclasses.Field]:
    """The settings with a ComfyUI input, in LoratorioParams order."""
    return [f for f in dataclasses.fields(LoratorioParams) if f.name not in FIXED]


def input_type(f: dataclasses.Field) -> tuple:
    """ComfyUI's ``(type, options)`` of one setting: a combo for choices, BOOLEAN, INT or FLOAT with its range."""
    meta = f.metadata
    options: dict[str, Any] = {"default": f.default, "tooltip": f"{meta['label']}: {meta['hint']}"}
    if meta["choices"]:
        return list(meta["choices"]), options
    if isinstance(f.default, bool):
        return "BOOLEAN", options
    options.update({k: v for k, v in (("min", meta["min"]), ("max", meta["max"])) if v is not None})
    if isinstance(f.default, int):
        return "INT", {**options, "step": 1}
    return "FLOAT", {**options, "step": _FLOAT_STEPS.get(f.name, 0.01)}


def setting_inputs() -> dict[str, tuple]:
    return {f.name: input_type(f) for f in setting_fields()}


def params_from_inputs(values: dict[str, Any]) -> LoratorioParams:
    """LoratorioParams from a node's setting inputs (unknown names and bad values raise, naming the setting)."""
    return LoratorioParams.from_dict({**FIXED, **values})
