"""The tiny text-to-image model: word tokenizer, text encoder, diffusers UNet, cosine schedule.

Text encoder: token embedding + position embedding + LayerNorm (64 wide), trained with the base
model and then frozen. Trigger tokens are in the vocabulary from the start but never appear in the
base model's captions, so they get no gradient there; the embedding table is trained WITHOUT
weight decay so that they keep their random initialisation (same scale as every other token)
instead of being decayed toward zero, which would make all triggers look alike to the LoRAs.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import torch
from torch import nn

from . import world

ARTIFACTS = Path(os.environ.get("COMPOSBENCH_ARTIFACTS") or Path(__file__).resolve().parent / "artifacts")
MAX_TOKENS = 24
WIDTH = 64
SPECIALS = ("<pad>", "<unk>")
VOCAB: tuple[str, ...] = SPECIALS + tuple(world.GENERIC_WORDS) + tuple(world.ALL_CONCEPTS)


def vocabulary(generic_words, concepts) -> tuple[str, ...]:
    """A world's vocabulary: the specials, its generic words, then its trigger words."""
    return SPECIALS + tuple(generic_words) + tuple(concepts)


def tokenize(prompts: list[str], vocab: tuple[str, ...] = VOCAB, length: int = MAX_TOKENS) -> torch.Tensor:
    index = {w: i for i, w in enumerate(vocab)}
    ids = torch.zeros(len(prompts), length, dtype=torch.long)
    for i, p in enumerate(prompts):
        words = [w for w in re.split(r"[\s,]+", p.lower()) if w][:length]
        ids[i, :len(words)] = torch.tensor([index.get(w, 1) for w in words], dtype=torch.long)
    return ids


class TextEncoder(nn.Module):
    """Token + position embedding + LayerNorm over its own vocabulary and prompt length."""

    def __init__(self, vocab: tuple[str, ...] = VOCAB, width: int = WIDTH, length: int = MAX_TOKENS) -> None:
        super().__init__()
        self.vocab, self.length = tuple(vocab), length
        self.token = nn.Embedding(len(self.vocab), width)
        self.position = nn.Embedding(length, width)
        self.norm = nn.LayerNorm(width)
        nn.init.normal_(self.token.weight, std=1.0)
        nn.init.normal_(self.position.weight, std=0.1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        return self.norm(self.token(ids) + self.position(pos))

    def encode(self, prompts: list[str]) -> torch.Tensor:
        return self(tokenize(prompts, self.vocab, self.length))


UNET_CONFIG = dict(
    sample_size=world.SIZE, in_channels=3, out_channels=3,
    down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    block_out_channels=(16, 32, 64), layers_per_block=1, norm_num_groups=8,
    cross_attention_dim=WIDTH, attention_head_dim=8,
)


def make_unet():
    from diffusers import UNet2DConditionModel
    return UNet2DConditionModel(**UNET_CONFIG)


# --- cosine schedule (T = 1000, eps prediction) ------------------------------------------------
T = 1000


def alphas_cumprod() -> torch.Tensor:
    s = 0.008
    t = torch.linspace(0, T, T + 1, dtype=torch.float64)
    f = torch.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    ac = f / f[0]
    betas = (1 - ac[1:] / ac[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, 0).float()


ALPHAS_CUMPROD = alphas_cumprod()


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    a = ALPHAS_CUMPROD[t].view(-1, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


# --- loading the bundled artifacts ---------------------------------------------------------------
def save_base(unet, text_encoder: TextEncoder, path: Path = ARTIFACTS / "base.safetensors") -> None:
    from safetensors.torch import save_file
    tensors = {f"unet.{k}": v.detach().half().contiguous() for k, v in unet.state_dict().items()}
    tensors.update({f"text.{k}": v.detach().half().contiguous() for k, v in text_encoder.state_dict().items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"vocab": " ".join(text_encoder.vocab),
                                            "max_tokens": str(text_encoder.length)})


def load_base(path: Path = ARTIFACTS / "base.safetensors"):
    """The UNet and the text encoder of a base checkpoint (its vocabulary and length from its metadata)."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    sd = load_file(str(path))
    unet = make_unet()
    te = TextEncoder(tuple(meta["vocab"].split()) if "vocab" in meta else VOCAB,
                     length=int(meta.get("max_tokens", MAX_TOKENS)))
    unet.load_state_dict({k[5:]: v.float() for k, v in sd.items() if k.startswith("unet.")})
    te.load_state_dict({k[5:]: v.float() for k, v in sd.items() if k.startswith("text.")})
    unet.eval().requires_grad_(False)
    te.eval().requires_grad_(False)
    return unet, te


def lora_path(concept: str, root: Path = ARTIFACTS) -> Path:
    return root / "loras" / f"{concept}.safetensors"
