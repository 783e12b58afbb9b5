"""``backend/sampling/sampling_function.py`` of Forge Neo 2.26 over the Forge stand-in's.

What Neo changed there: ``sampling_function(self, denoiser_params, cond_scale, cond_composition,
extra_model_options=None)`` joins the UNet patcher's ``model_options`` with the sampler's extra ones
(``utils.join_dicts``: the extra options' keys win) before the same inner function; ``sampling_prepare`` estimates
memory for a latent of any rank (``unet.memory_required([2 * B, *rest])``). The rest is the Forge stand-in's file.
"""

from neo_overlay import forge_module

_forge = forge_module("backend/sampling/sampling_function.py")
calc_cond_uncond_batch = _forge.calc_cond_uncond_batch
sampling_function_inner = _forge.sampling_function_inner
sampling_cleanup = _forge.sampling_cleanup


def join_dicts(base, extra):
    """``backend/utils.py`` ``join_dicts``: a copy of ``base`` updated with ``extra`` (None: nothing)."""
    out = dict(base)
    out.update(extra or {})
    return out


def sampling_function(self, denoiser_params, cond_scale, cond_composition, extra_model_options=None):
    unet_patcher = self.inner_model.inner_model.forge_objects.unet
    saved = unet_patcher.model_options
    unet_patcher.model_options = join_dicts(saved, extra_model_options)
    try:
        return _forge.sampling_function(self, denoiser_params, cond_scale, cond_composition)
    finally:
        unet_patcher.model_options = saved


def sampling_prepare(unet, x):
    shape = list(x.shape)
    _forge.memory_management.load_models_gpu(models=[unet] + list(unet.extra_model_patchers_during_sampling),
                                             memory_required=unet.memory_required([2 * shape[0], *shape[1:]]),
                                             hard_memory_preservation=unet.extra_preserved_memory_during_sampling)
