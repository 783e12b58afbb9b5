"""Random LoRA files of every common type for the benchmark UNet, written in the layouts trainers use.

kohya names (``lora_unet_<diffusers path>``); LoRA/LoCon as ``lora_down``/``lora_up``; LyCORIS factors for
LoHa and LoKr, conv factors flattened as LyCORIS stores them. Plain LoRA covers attention, feed-forward
and projection layers; the other types the resnet convolutions too. Used by ``composbench.speed`` and
``composbench.memory``, read back with the runtime's own loader.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

TYPES = ("lora", "locon", "loha", "lokr")
LINEAR_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2")
CONV_TARGETS = ("conv1", "conv2")


def _balanced_factor(n: int) -> int:
    """The divisor of n closest to sqrt(n) from below (LyCORIS' factorisation with factor=-1)."""
    return max(d for d in range(1, int(math.isqrt(n)) + 1) if n % d == 0)


def _factors(kind: str, w: Tensor, rank: int, g: torch.Generator) -> dict[str, Tensor]:
    out, inp, k = w.shape[0], w.shape[1], math.prod(w.shape[2:])

    def rand(*shape: int, scale: float) -> Tensor:
        return torch.randn(*shape, generator=g) * scale

    if kind in ("lora", "locon"):
        down = rand(rank, inp, *w.shape[2:], scale=(inp * k) ** -0.5)
        return {"lora_down.weight": down, "lora_up.weight": rand(out, rank, *([1, 1] if k > 1 else []), scale=0.02)}
    if kind == "loha":
        return {"hada_w1_a": rand(out, rank, scale=0.1), "hada_w1_b": rand(rank, inp * k, scale=(inp * k) ** -0.5),
                "hada_w2_a": rand(out, rank, scale=0.1), "hada_w2_b": rand(rank, inp * k, scale=(inp * k) ** -0.5)}
    a, b = _balanced_factor(out), _balanced_factor(inp)
    c, d = out // a, inp // b
    return {"lokr_w1": rand(a, b, scale=0.1), "lokr_w2_a": rand(c, rank, scale=0.1),
            "lokr_w2_b": rand(rank, d * k, scale=(d * k) ** -0.5)}


def write_lora_of_type(unet, path: Path, kind: str, rank: int, seed: int) -> None:
    """A kohya-named file of ``kind`` on the attention/feed-forward layers (and resnet convs but for plain LoRA)."""
    g = torch.Generator().manual_seed(seed)
    targets = LINEAR_TARGETS if kind == "lora" else LINEAR_TARGETS + CONV_TARGETS
    tensors = {}
    for name, module in unet.named_modules():
        if name.endswith(targets) and hasattr(module, "weight"):
            key = "lora_unet_" + name.replace(".", "_")
            for param, value in _factors(kind, module.weight, rank, g).items():
                tensors[f"{key}.{param}"] = value.contiguous()
            tensors[f"{key}.alpha"] = torch.tensor(float(rank))
    save_file(tensors, str(path))
