"""``backend/patcher/clip.py``: ``CLIP`` with ``cond_stage_model`` (``JointTextEncoder``, a ModuleDict:
``clip_l`` / ``clip_g`` / ``t5xxl``), ``tokenizer`` (an object namespace), ``patcher`` (ModelPatcher over
``cond_stage_model``; patch keys ``<key>.<name>.weight``), ``clone()``, ``add_patches()``."""

import torch

from backend.patcher.base import ModelPatcher


class JointTextEncoder(torch.nn.ModuleDict):
    pass


class CLIP:
    def __init__(self, model_dict={}, tokenizer_dict={}, no_init=False):
        if no_init:
            return
        self.cond_stage_model = JointTextEncoder(model_dict)
        self.tokenizer = type("ObjectDict", (), {})()
        for k, v in tokenizer_dict.items():
            setattr(self.tokenizer, k, v)
        self.patcher = ModelPatcher(self.cond_stage_model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))

    def clone(self):
        n = CLIP(no_init=True)
        n.patcher = self.patcher.clone()
        n.cond_stage_model = self.cond_stage_model
        n.tokenizer = self.tokenizer
        return n

    def add_patches(self, *args, **kwargs):
        return self.patcher.add_patches(*args, **kwargs)
