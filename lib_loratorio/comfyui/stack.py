"""The LoRAs a LoRAtorio LoRA node chain hands to LoRAtorio Apply (ComfyUI type ``LORATORIO_STACK``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..region_hints import MaskHint

STACK_TYPE = "LORATORIO_STACK"


@dataclass(frozen=True)
class StackEntry:
    name: str  # as ComfyUI lists it under models/loras (a subfolder path included)
    path: str
    strength: float
    region: Optional[MaskHint] = None  # a MASK as the LoRA's region hint


#: Immutable, so that ComfyUI's cache of node outputs can keep it.
LoraStack = tuple[StackEntry, ...]


def pushed(stack: Optional[LoraStack], entry: StackEntry) -> LoraStack:
    """``stack`` (None: empty) with ``entry`` after its LoRAs."""
    return (*(stack or ()), entry)
