"""``backend/args.py`` (subset): ``dynamic_args`` (``online_lora``) and the parsed ``args``."""

import types

dynamic_args = dict(embedding_dir='./embeddings', emphasis_name='original', online_lora=False)
args = types.SimpleNamespace(disable_gpu_warning=True, always_cpu=True)
