"""composbench's AttentionPerLoraRunner (the benchmark's --fast-attention-per-lora): cross-attention per LoRA."""

import torch

from composbench.attention_per_lora import AttentionPerLoraRunner
from lib_loratorio.branch_runner import MIXED
from lib_loratorio.lora_files import read_lora_file
from lib_loratorio.network_names import bind_lora
from tests.lora_writers import write_kohya
from tests.tiny_models import tiny_sd15_unet

TARGETS = ["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q",
           "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
           "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v"]
STRENGTHS = [0.8, -0.5]


def test_cross_attention_of_mixed_rows_is_computed_per_lora_and_blended(tmp_path):
    """Left half of the image tokens owned by LoRA 1, right half by LoRA 2: the attention output of the
    mixed row is LoRA 1's attention (its keys and values from the text) on the left, LoRA 2's on the right."""
    unet = tiny_sd15_unet()
    bound = []
    for i, fmt in enumerate(["lora", "locon_tucker"]):
        write_kohya(tmp_path / f"lora{i}.safetensors", unet, TARGETS, fmt=fmt, seed=i, alpha=4.0)
        bound.append(bind_lora(read_lora_file(tmp_path / f"lora{i}.safetensors"), {"unet": unet}))
    attention = unet.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0.attn2")
    g = torch.Generator().manual_seed(3)
    tokens = torch.randn(1, 16 * 16, 32, generator=g).expand(3, -1, -1)
    text = torch.randn(1, 7, 32, generator=g).expand(3, -1, -1)
    maps = torch.zeros(1, 2, 16, 16)
    maps[0, 0, :, :8], maps[0, 1, :, 8:] = 1.0, 1.0
    left = torch.zeros(16, 16, dtype=torch.bool)
    left[:, :8] = True
    left = left.flatten()
    with torch.no_grad(), AttentionPerLoraRunner(bound, STRENGTHS) as runner:
        with runner.rows(torch.tensor([1, 2, MIXED]), maps=maps):
            out = attention(tokens, encoder_hidden_states=text)
    torch.testing.assert_close(out[2, left], out[0, left], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out[2, ~left], out[1, ~left], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(out[0], out[1], atol=1e-4)
