"""``backend/patcher/unet.py``: ``UnetPatcher(ModelPatcher)``.

Mirrored: ``from_model(model, diffusers_scheduler, config, k_predictor=None)`` wraps the network in a
``KModel``; extra state ``controlnet_linked_list``, ``extra_preserved_memory_during_sampling``,
``extra_model_patchers_during_sampling``, ``extra_concat_condition``; ``clone()`` copies those and
deep-copies ``model_options``; ``append_model_option``, ``append_transformer_option``,
``set_transformer_option``, ``add_conditioning_modifier``, ``add_sampler_pre_cfg_function``,
``set_memory_peak_estimation_modifier``, ``add_alphas_cumprod_modifier``, ``add_block_modifier``,
``add_block_inner_modifier``, ``set_group_norm_wrapper``, ``set_controlnet_model_function_wrapper``,
``add_extra_preserved_memory_during_sampling``, ``add_extra_model_patcher_during_sampling``,
``add_extra_torch_module_during_sampling``, ``add_patched_controlnet``, ``list_controlnets``.
Left out: ``load_frozen_patcher``, ``set_model_replace_all``, alphas_cumprod modifiers being applied.
"""

import torch

from backend.modules.k_model import KModel
from backend.patcher.base import ModelPatcher


class UnetPatcher(ModelPatcher):
    @classmethod
    def from_model(cls, model, diffusers_scheduler=None, config=None, k_predictor=None):
        model = KModel(model=model, diffusers_scheduler=diffusers_scheduler, k_predictor=k_predictor, config=config)
        return UnetPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"),
                           current_device=torch.device("cpu"))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.controlnet_linked_list = None
        self.extra_preserved_memory_during_sampling = 0
        self.extra_model_patchers_during_sampling = []
        self.extra_concat_condition = None

    def clone(self):
        n = super().clone()
        n.controlnet_linked_list = self.controlnet_linked_list
        n.extra_preserved_memory_during_sampling = self.extra_preserved_memory_during_sampling
        n.extra_model_patchers_during_sampling = self.extra_model_patchers_during_sampling.copy()
        n.extra_concat_condition = self.extra_concat_condition
        return n

    def add_extra_preserved_memory_during_sampling(self, memory_in_bytes: int):
        self.extra_preserved_memory_during_sampling += memory_in_bytes

    def add_extra_model_patcher_during_sampling(self, model_patcher):
        self.extra_model_patchers_during_sampling.append(model_patcher)

    def add_extra_torch_module_during_sampling(self, m, cast_to_unet_dtype=True):
        patcher = ModelPatcher(model=m, load_device=self.load_device, offload_device=self.offload_device)
        self.add_extra_model_patcher_during_sampling(patcher)
        return patcher

    def add_patched_controlnet(self, cnet):
        cnet.set_previous_controlnet(self.controlnet_linked_list)
        self.controlnet_linked_list = cnet

    def list_controlnets(self):
        out, pointer = [], self.controlnet_linked_list
        while pointer is not None:
            out.append(pointer)
            pointer = pointer.previous_controlnet
        return out

    def append_model_option(self, k, v, ensure_uniqueness=False):
        values = self.model_options.setdefault(k, [])
        if not (ensure_uniqueness and v in values):
            values.append(v)

    def append_transformer_option(self, k, v, ensure_uniqueness=False):
        values = self.model_options.setdefault('transformer_options', {}).setdefault(k, [])
        if not (ensure_uniqueness and v in values):
            values.append(v)

    def set_transformer_option(self, k, v):
        self.model_options.setdefault('transformer_options', {})[k] = v

    def add_conditioning_modifier(self, modifier, ensure_uniqueness=False):
        self.append_model_option('conditioning_modifiers', modifier, ensure_uniqueness)

    def add_sampler_pre_cfg_function(self, modifier, ensure_uniqueness=False):
        self.append_model_option('sampler_pre_cfg_function', modifier, ensure_uniqueness)

    def set_memory_peak_estimation_modifier(self, modifier):
        self.model_options['memory_peak_estimation_modifier'] = modifier

    def add_alphas_cumprod_modifier(self, modifier, ensure_uniqueness=False):
        self.append_model_option('alphas_cumprod_modifiers', modifier, ensure_uniqueness)

    def add_block_modifier(self, modifier, ensure_uniqueness=False):
        self.append_transformer_option('block_modifiers', modifier, ensure_uniqueness)

    def add_block_inner_modifier(self, modifier, ensure_uniqueness=False):
        self.append_transformer_option('block_inner_modifiers', modifier, ensure_uniqueness)

    def add_controlnet_conditioning_modifier(self, modifier, ensure_uniqueness=False):
        self.append_transformer_option('controlnet_conditioning_modifiers', modifier, ensure_uniqueness)

    def set_group_norm_wrapper(self, wrapper):
        self.set_transformer_option('group_norm_wrapper', wrapper)

    def set_controlnet_model_function_wrapper(self, wrapper):
        self.set_transformer_option('controlnet_model_function_wrapper', wrapper)
