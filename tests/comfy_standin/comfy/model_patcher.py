"""``comfy/model_patcher.py``: ``ModelPatcher`` (own rewrite, same interface for what LoRAtorio and its tests use).

Mirrored: ``__init__(model, load_device, offload_device, size=0, weight_inplace_update=False)``; ``patches``
(weight key -> list of (strength_patch, patch, strength_model, offset, function)), ``backup``,
``model_options = {"transformer_options": {}}``, ``attachments``, ``callbacks``, ``wrappers``;
``clone()`` (shares the model and the backup, copies patches, **``copy.deepcopy(model_options)``** (a
closure is kept by reference, a bound method's instance is copied), attachments by reference, wrapper and
callback lists copied); ``add_patches`` (keys in the model's state dict kept); ``patch_model`` (each patched
weight: backup kept, the patched weight set as a **new Parameter**, module objects unchanged) /
``unpatch_model``; the model_options setters LoRAtorio and other nodes use (``set_model_unet_function_wrapper``,
pre/post-cfg functions); ``add_wrapper_with_key`` / ``get_all_wrappers``, ``add_callback_with_key`` /
``get_all_callbacks``, ``set_attachments`` / ``get_attachment``, ``get_model_object``, ``pre_run``
(ON_PRE_RUN), ``cleanup`` (ON_CLEANUP), ``memory_required``, ``model_dtype``.
Left out: lowvram / partial loading, hooks (``comfy.hooks``), injections, additional models, devices.
"""

import copy

import torch

from comfy.patcher_extension import CallbacksMP


def set_model_options_pre_cfg_function(model_options, pre_cfg_function, disable_cfg1_optimization=False):
    model_options["sampler_pre_cfg_function"] = model_options.get("sampler_pre_cfg_function", []) + [pre_cfg_function]
    if disable_cfg1_optimization:
        model_options["disable_cfg1_optimization"] = True
    return model_options


def create_model_options_clone(orig_model_options):
    from comfy.patcher_extension import copy_nested_dicts
    return copy_nested_dicts(orig_model_options)


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.model = model
        self.load_device, self.offload_device = load_device, offload_device
        self.size = size
        self.patches = {}
        self.backup = {}
        self.object_patches = {}
        self.model_options = {"transformer_options": {}}
        self.attachments = {}
        self.callbacks = {}
        self.wrappers = {}
        self.parent = None
        self.patches_uuid = object()

    def clone(self):
        n = self.__class__(self.model, self.load_device, self.offload_device, self.size)
        n.patches = {k: v[:] for k, v in self.patches.items()}
        n.patches_uuid = self.patches_uuid
        n.object_patches = self.object_patches.copy()
        n.model_options = copy.deepcopy(self.model_options)
        n.backup = self.backup
        n.parent = self
        n.attachments = {k: v.on_model_patcher_clone() if hasattr(v, "on_model_patcher_clone") else v
                         for k, v in self.attachments.items()}
        n.callbacks = {k: {k1: c1.copy() for k1, c1 in c.items()} for k, c in self.callbacks.items()}
        n.wrappers = {k: {k1: w1.copy() for k1, w1 in w.items()} for k, w in self.wrappers.items()}
        for callback in self.get_all_callbacks(CallbacksMP.ON_CLONE):
            callback(self, n)
        return n

    def is_clone(self, other):
        return hasattr(other, "model") and self.model is other.model

    def memory_required(self, input_shape):
        return self.model.memory_required(input_shape=input_shape)

    def model_dtype(self):
        return self.model.get_dtype()

    # --- model_options setters ---------------------------------------------------------------------
    def set_model_sampler_cfg_function(self, sampler_cfg_function, disable_cfg1_optimization=False):
        self.model_options["sampler_cfg_function"] = sampler_cfg_function
        if disable_cfg1_optimization:
            self.model_options["disable_cfg1_optimization"] = True

    def set_model_sampler_pre_cfg_function(self, pre_cfg_function, disable_cfg1_optimization=False):
        self.model_options = set_model_options_pre_cfg_function(self.model_options, pre_cfg_function,
                                                                disable_cfg1_optimization)

    def set_model_unet_function_wrapper(self, unet_wrapper_function):
        self.model_options["model_function_wrapper"] = unet_wrapper_function

    # --- extensions ----------------------------------------------------------------------------------
    def add_callback_with_key(self, call_type, key, callback):
        self.callbacks.setdefault(call_type, {}).setdefault(key, []).append(callback)

    def get_all_callbacks(self, call_type):
        return [c for cs in self.callbacks.get(call_type, {}).values() for c in cs]

    def add_wrapper_with_key(self, wrapper_type, key, wrapper):
        self.wrappers.setdefault(wrapper_type, {}).setdefault(key, []).append(wrapper)

    def remove_wrappers_with_key(self, wrapper_type, key):
        self.wrappers.get(wrapper_type, {}).pop(key, None)

    def get_all_wrappers(self, wrapper_type):
        return [w for ws in self.wrappers.get(wrapper_type, {}).values() for w in ws]

    def set_attachments(self, key, attachment):
        self.attachments[key] = attachment

    def get_attachment(self, key):
        return self.attachments.get(key, None)

    def get_model_object(self, name):
        if name in self.object_patches:
            return self.object_patches[name]
        obj = self.model
        for part in name.split("."):
            obj = getattr(obj, part)
        return obj

    # --- weights -------------------------------------------------------------------------------------
    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
        model_sd = self.model.state_dict()
        accepted = []
        for k, patch in patches.items():
            if k in model_sd:
                accepted.append(k)
                self.patches.setdefault(k, []).append((strength_patch, patch, strength_model, None, None))
        self.patches_uuid = object()
        return accepted

    def _set_weight(self, key, value):
        *path, name = key.split(".")
        module = self.model
        for part in path:
            module = getattr(module, part)
        setattr(module, name, torch.nn.Parameter(value, requires_grad=False))

    def patch_model(self, device_to=None, lowvram_model_memory=0, load_weights=True, force_patch_weights=False):
        if getattr(self.model, "current_weight_patches_uuid", None) is self.patches_uuid:
            return self.model
        self.unpatch_model()
        model_sd = self.model.state_dict()
        for key, patches in self.patches.items():
            weight = model_sd[key]
            self.backup[key] = weight.detach().clone()
            out = weight.detach().clone().float()
            for strength_patch, patch, strength_model, _, _ in patches:
                out = out * strength_model + strength_patch * patch.reshape(out.shape).to(out)
            self._set_weight(key, out.to(weight.dtype))
        self.model.current_weight_patches_uuid = self.patches_uuid
        return self.model

    def unpatch_model(self, device_to=None, unpatch_weights=True):
        for key, weight in list(self.backup.items()):
            self._set_weight(key, weight)
        self.backup.clear()
        self.model.current_weight_patches_uuid = None

    # --- a sampling run -----------------------------------------------------------------------------
    def pre_run(self):
        if hasattr(self.model, "current_patcher"):
            self.model.current_patcher = self
        for callback in self.get_all_callbacks(CallbacksMP.ON_PRE_RUN):
            callback(self)

    def prepare_state(self, timestep):
        for callback in self.get_all_callbacks(CallbacksMP.ON_PREPARE_STATE):
            callback(self, timestep)

    def cleanup(self):
        if hasattr(self.model, "current_patcher"):
            self.model.current_patcher = None
        for callback in self.get_all_callbacks(CallbacksMP.ON_CLEANUP):
            callback(self)
