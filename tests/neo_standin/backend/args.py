"""``backend/args.py`` of Forge Neo 2.26 (subset): ``dynamic_args`` became a class of attributes, among them
``ref_latents`` (reference images of Flux.2/Qwen-Image edits, appended after the image tokens by the transformer)
and ``context_handler`` (PiD's context windows; None otherwise); the parsed ``args``."""

import types


class dynamic_args:
    embedding_dir = "./embeddings"
    emphasis_name = "original"
    online_lora = False
    ref_latents: list = []
    context_handler = None


args = types.SimpleNamespace(disable_gpu_warning=True, always_cpu=True)
