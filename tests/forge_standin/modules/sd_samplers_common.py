"""Forge ``modules/sd_samplers_common.py`` = the A1111 stand-in's (InterruptedException, SamplerData,
setup_img2img_steps, store_latent, Sampler.callback_state/launch_sampling/initialize) with Forge's
differences: ``Sampler.__init__`` sets ``conditioning_key = 'crossattn'`` (Forge engines have no
``.model``), and ``apply_refiner(cfg_denoiser, x)``: completed ratio = ``step / total_steps``; on a
switch it runs ``sampling_cleanup`` on the old unet, reloads (stand-in: the refiner is the model object
``p.refiner_model`` or a model passed as ``p.refiner_checkpoint_info``), re-runs
``extra_networks.activate``, ``p.setup_conds()``, ``update_inner_model()`` and ``sampling_prepare`` on
the NEW model's ``forge_objects.unet`` (which comes from its own ``forge_objects_after_applying_lora``:
options a script put on the old model's unet are gone).
"""

from modules import _load_a1111, extra_networks, sd_models, shared
from modules.shared import opts

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
    refiner_switch_at = p.refiner_switch_at
    refiner = _base._refiner_of(p)

    if refiner_switch_at is not None and completed_ratio < refiner_switch_at:
        return False
    if refiner is None or shared.sd_model.sd_checkpoint_info == refiner.sd_checkpoint_info:
        return False

    if getattr(p, "enable_hr", False):
        is_second_pass = p.is_hr_pass
        if opts.hires_fix_refiner_pass == "first pass" and is_second_pass:
            return False
        if opts.hires_fix_refiner_pass == "second pass" and not is_second_pass:
            return False
        if opts.hires_fix_refiner_pass != "second pass":
            p.extra_generation_params['Hires refiner'] = opts.hires_fix_refiner_pass

    p.extra_generation_params['Refiner'] = refiner.sd_checkpoint_info.short_title
    p.extra_generation_params['Refiner switch at'] = refiner_switch_at

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
        self.funcname = funcname
        self.func = funcname
        self.extra_params = []
        self.sampler_noises = None
        self.stop_at = None
        self.eta = None
        self.config = None
        self.last_latent = None
        self.s_min_uncond = None
        self.s_churn = 0.0
        self.s_tmin = 0.0
        self.s_tmax = float('inf')
        self.s_noise = 1.0
        self.eta_option_field = 'eta_ancestral'
        self.eta_infotext_field = 'Eta'
        self.eta_default = 1.0
        self.conditioning_key = 'crossattn'
        self.p = None
        self.model_wrap_cfg = None
        self.sampler_extra_args = None
        self.options = {}
