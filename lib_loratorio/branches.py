"""Which branch a row of a composed model call belongs to, by name.

Branches travel as integers in tensors (one per row, for the branch runner's hooks): the base model,
LoRA i of the composition, or MIXED (every LoRA, each scaled by its weight map: the fast mode).
"""

from __future__ import annotations

from typing import Optional

import torch

#: The base model, without any LoRAtorio LoRA.
BASE = 0
#: Every LoRA, each scaled by its weight map (LoRAtorio Fast, between refreshes).
MIXED = -1


def lora_branch(lora: int) -> int:
    """The branch of LoRA ``lora`` (counted from 0 in the composition's LoRA list)."""
    return lora + 1


def lora_of(branch: int) -> Optional[int]:
    """The LoRA (index in the composition's LoRA list) that branch ``branch`` runs alone; None for BASE and MIXED."""
    return branch - 1 if branch > BASE else None


def loras_of(branches: torch.Tensor) -> torch.Tensor:
    """``lora_of`` for a tensor of LoRA branches (no BASE or MIXED among them)."""
    return branches - lora_branch(0)
