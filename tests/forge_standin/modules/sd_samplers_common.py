"""Forge ``modules/sd_samplers_common.py`` = the A1111 stand-in's (InterruptedException, SamplerData,
setup_img2img_steps, store_latent, Sampler.callback_state/launch_sampling/initialize) with Forge's
differences: ``Sampler.__init__`` sets ``conditioning_key = 'crossattn'`` (Forge engines have no
``.model``), and ``apply_refiner(cfg_denoiser, x)``: completed ratio = ``step / total_steps``; on a
switch it runs ``sampling_cleanup`` on the old unet, reloads (stand-in: the refiner is the model object
``p.refiner_model`` or a model passed as ``p.refiner_checkpoint_info``), re-runs
``extra_networks.activate``, ``p.setup_conds()``, ``update_inner_model()`` and ``sampling_prepare`` on
the NEW model's ``forge_objects.unet`` (which comes from its own ``forge_objects_after_applying_lora``:
options a script put on the old model's unet are gone).
The checks before the switch (switch-at ratio, same model, hires refiner pass, infotext) are the A1111
stand-in's ``_refiner_to_switch_to``.
"""

from modules import _load_a1111, extra_networks, sd_models, shared

_base = _load_a1111("sd_samplers_common")

SamplerDataTuple = _base.SamplerDataTuple
SamplerData = _base.SamplerData
InterruptedException = _base.InterruptedException
setup_img2img_steps = _base.setup_img2img_steps
store_latent = _base.store_latent


def apply_refiner(cfg_denoiser, x):
    from backend.sampling.sampling_function import sampling_cleanup, sampling_prepare

    p = cfg_denoiser.p
    completed_ratio = cfg_denoiser.step / cfg_denoiser.total_steps
    refiner = _base._refiner_to_switch_to(p, completed_ratio)
    if refiner is None:
        return False

    sampling_cleanup(shared.sd_model.forge_objects.unet)
    with sd_models.SkipWritingToConfig():
        sd_models.reload_model_weights(info=refiner)

    if not p.disable_extra_networks:
        extra_networks.activate(p, p.extra_network_data)
    p.setup_conds()
    cfg_denoiser.update_inner_model()
    sampling_prepare(shared.sd_model.forge_objects.unet, x=x)
    return True


class Sampler(_base.Sampler):
    def __init__(self, funcname):
        super().__init__(funcname)
        self.conditioning_key = 'crossattn'
