"""``backend/memory_management.py`` (subset), CPU-only.

``get_free_memory(device)`` returns the module-level knob ``free_memory_bytes`` (stand-in only; default
practically unlimited). ``calc_cond_uncond_batch`` compares ``KModel.memory_required([rows, C, H, W])``
with it to decide how many cond/uncond chunks go into one model call: tests set it low (e.g. 0) to force
one call per chunk. ``load_models_gpu`` / ``load_model_gpu`` only do what matters to extensions: the
patcher's ``refresh_loras()`` (weights are merged when a model is "loaded", as in
``LoadedModel.model_load``). ``signal_empty_cache`` / ``soft_empty_cache`` are no-ops.
"""

import torch

free_memory_bytes = float(1 << 50)
signal_empty_cache = False
current_loaded_models = []


def get_torch_device():
    return torch.device("cpu")


def get_free_memory(dev=None, torch_free_too=False):
    return (free_memory_bytes, free_memory_bytes) if torch_free_too else free_memory_bytes


def soft_empty_cache(force=False):
    pass


def dtype_size(dtype):
    return torch.tensor([], dtype=dtype).element_size()


def module_size(module, exclude_device=None, include_device=None, return_split=False):
    size = sum(p.numel() * p.element_size() for p in module.parameters())
    return (size, size, 0) if return_split else size


def load_models_gpu(models, memory_required=0, hard_memory_preservation=0):
    for m in models:
        refresh = getattr(m, "refresh_loras", None)
        if refresh is not None:
            refresh()
        if m not in current_loaded_models:
            current_loaded_models.append(m)


def load_model_gpu(model):
    return load_models_gpu([model])


def unload_all_models():
    current_loaded_models.clear()
