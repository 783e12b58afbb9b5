"""``backend/nn/llm/llama.py`` stand-in: a language model used as a text encoder (Neo's ``Qwen3_4B``,
``Gemma2_2B``, ``Qwen25_7BVLI`` classes): the decoder under ``model`` (``model.embed_tokens``,
``model.layers.N.self_attn.{q,k,v,o}_proj``, ``model.layers.N.mlp.{gate,up,down}_proj``, ``model.norm``), here a tiny
random transformers ``Qwen3Model``; ``hidden_states(ids)`` gives every layer's output, which the engines pick from
(Z-Image: the second to last; Flux.2 Klein: several, concatenated)."""

import torch
from torch import nn


class TinyQwen3(nn.Module):
    def __init__(self, hidden=32, layers=2, seed=0, vocab=1000):
        super().__init__()
        from transformers import Qwen3Config, Qwen3Model
        torch.manual_seed(seed)
        config = Qwen3Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                             num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4)
        self.model = Qwen3Model(config).eval()

    def hidden_states(self, ids):
        return self.model(input_ids=ids, output_hidden_states=True).hidden_states
