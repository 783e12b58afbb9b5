"""The values of LoRAtorio's choice settings, as string enums.

The code compares members (``params.mode is Mode.FAST``); the strings are what the UI shows, the API takes
and the infotext holds, unchanged. Members are ``str`` too, so a plain string compares equal to its member.
"""

from __future__ import annotations

from enum import Enum


class Choice(str, Enum):
    """A choice setting's value; ``str()`` and f-strings give the string itself (as on Python 3.11's StrEnum)."""

    def __str__(self) -> str:
        return self.value

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(member.value for member in cls)


class Mode(Choice):
    LORATORIO = "LoRAtorio"
    """Patch-wise SoftMin routing, every branch evaluated on every step (the paper's method)."""
    FAST = "LoRAtorio Fast"
    """The same maps, refreshed on a schedule; in between one forward with every LoRA applied by its map."""
    COMPOSITE = "Composite"
    """Baseline: the plain average of the LoRA branches."""
    SWITCH = "Switch"
    """Baseline: one LoRA at a time, rotating every few steps."""
    STACK = "Stack"
    """Every LoRA at its strength on the prompt's prediction (inside its region hint if it has one), the base
    model alone on the negative prompt's: a plain <lora> stack's cost, with CFG re-centred on the base."""


#: Modes that route LoRAs by LoRAtorio's weight maps (and use its patch, temperature and top-k settings).
ROUTING_MODES: tuple[Mode, ...] = (Mode.LORATORIO, Mode.FAST)


class Selection(Choice):
    PATCH = "patch"
    """Top-k LoRAs ranked per patch."""
    GLOBAL = "global"
    """Top-k LoRAs ranked by their mean over the whole image."""


class TextEncoder(Choice):
    PER_BRANCH = "per branch"
    """Each LoRA's text-encoder part conditions its own branch."""
    UNET_ONLY = "UNet only"
    """Text-encoder parts are ignored."""


class OutsideSteps(Choice):
    MERGE = "merge"
    """Outside the step range every LoRA acts merged, as a plain <lora:> would."""
    OFF = "off"
    """Outside the step range the base model runs alone."""


class Evaluation(Choice):
    BATCHED = "batched"
    """Every branch in one model call."""
    PER_BRANCH = "per branch"
    """One model call per branch (least memory)."""


class WeightNorm(Choice):
    SUM = "sum"
    """The paper's weights, summing to 1 in each patch."""
    MAX = "max"
    """Divided by the patch's largest weight: the LoRA that owns a patch acts at full strength there."""
