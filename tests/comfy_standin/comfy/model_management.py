"""``comfy/model_management.py``: free memory, loading patchers for sampling, interrupts.

Mirrored: ``get_free_memory(dev)``; ``load_models_gpu(models, ...)`` (each patcher's ``patch_model``: its
weight patches merged into the model, replacing the previous patcher's); ``unload_all_models``;
``InterruptProcessingException``, ``interrupt_current_processing``, ``processing_interrupted``,
``throw_exception_if_processing_interrupted`` (clears the flag and raises).
Stand-in only: ``free_memory_bytes`` (set it low to make the sampler split its batch); no devices, no offload.
"""

import torch

free_memory_bytes = float(1 << 50)
current_loaded_models: list = []
interrupt_processing = False


class InterruptProcessingException(Exception):
    pass


def get_torch_device():
    return torch.device("cpu")


def get_free_memory(dev=None, torch_free_too=False):
    return free_memory_bytes


def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                    force_full_load=False):
    for m in models:
        m.patch_model()
        if m not in current_loaded_models:
            current_loaded_models.insert(0, m)


def unload_all_models():
    while current_loaded_models:
        current_loaded_models.pop().unpatch_model()


def interrupt_current_processing(value=True):
    global interrupt_processing
    interrupt_processing = value


def processing_interrupted():
    return interrupt_processing


def throw_exception_if_processing_interrupted():
    global interrupt_processing
    if interrupt_processing:
        interrupt_processing = False
        raise InterruptProcessingException()
