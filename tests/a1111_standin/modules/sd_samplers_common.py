"""Stand-in for ``modules/sd_samplers_common.py`` (A1111 v1.10.1).

Mirrored: InterruptedException(BaseException), SamplerData(name, constructor, aliases, options) with
``total_steps``, setup_img2img_steps, store_latent, ``apply_refiner`` (completed ratio from
``inner_model.sigmas`` or the DDIM timestep; switch -> reload model, ``p.setup_conds()``,
``cfg_denoiser.update_inner_model()``, return True), and the Sampler base (initialize,
callback_state, launch_sampling that returns ``last_latent`` on InterruptedException/RecursionError).
Stand-in difference: the refiner is given as a model object ``p.refiner_model`` (or a model in
``p.refiner_checkpoint_info``), to which ``shared.sd_model`` is swapped, or as a checkpoint of the
loaded model's architecture in ``p.refiner_checkpoint_info`` (``standin_models.checkpoint_file``), whose
weights are loaded into the same model object (see sd_models.reload_model_weights).
"""

from __future__ import annotations

from collections import namedtuple

import torch

from modules import devices, sd_models, shared
from modules.shared import opts, state

SamplerDataTuple = namedtuple("SamplerData", ["name", "constructor", "aliases", "options"])


class SamplerData(SamplerDataTuple):
    def total_steps(self, steps):
        if self.options.get("second_order", False):
            steps = steps * 2
        return steps


class InterruptedException(BaseException):
    pass


def setup_img2img_steps(p, steps=None):
    if opts.img2img_fix_steps or steps is not None:
        requested_steps = steps or p.steps
        steps = int(requested_steps / min(p.denoising_strength, 0.999)) if p.denoising_strength > 0 else 0
        t_enc = requested_steps - 1
    else:
        steps = p.steps
        t_enc = int(min(p.denoising_strength, 0.999) * steps)
    return steps, t_enc


def store_latent(decoded):
    state.current_latent = decoded


def _refiner_of(p):
    model = getattr(p, "refiner_model", None)
    if model is None:
        info = getattr(p, "refiner_checkpoint_info", None)
        model = info if hasattr(info, "sd_checkpoint_info") or hasattr(info, "weights") else None
    return model


def _refiner_to_switch_to(p, completed_ratio):
    """The checks of the real ``apply_refiner`` between the completed ratio and the switch (stand-in
    split, shared with Forge's): the refiner model, with the infotext written, or None to keep going."""
    refiner_switch_at = getattr(p, "refiner_switch_at", None)
    refiner = _refiner_of(p)

    if refiner_switch_at is not None and completed_ratio < refiner_switch_at:
        return None
    info = getattr(refiner, "sd_checkpoint_info", refiner)  # a model, or a checkpoint to load
    if refiner is None or shared.sd_model.sd_checkpoint_info == info:
        return None

    if getattr(p, "enable_hr", False):
        is_second_pass = p.is_hr_pass
        if opts.hires_fix_refiner_pass == "first pass" and is_second_pass:
            return None
        if opts.hires_fix_refiner_pass == "second pass" and not is_second_pass:
            return None
        if opts.hires_fix_refiner_pass != "second pass":
            p.extra_generation_params["Hires refiner"] = opts.hires_fix_refiner_pass

    p.extra_generation_params["Refiner"] = getattr(info, "short_title", str(info))
    p.extra_generation_params["Refiner switch at"] = refiner_switch_at
    return refiner


def apply_refiner(cfg_denoiser, sigma=None):
    p = cfg_denoiser.p
    if opts.refiner_switch_by_sample_steps or sigma is None:
        completed_ratio = cfg_denoiser.step / cfg_denoiser.total_steps
        p.extra_generation_params["Refiner switch by sampling steps"] = True
    else:
        try:
            timestep = torch.argmin(torch.abs(cfg_denoiser.inner_model.sigmas.to(sigma.device) - torch.max(sigma)))
        except AttributeError:  # timesteps samplers: sigma is the timestep
            timestep = torch.max(sigma).to(dtype=int)
        completed_ratio = (999 - timestep) / 1000

    refiner = _refiner_to_switch_to(p, completed_ratio)
    if refiner is None:
        return False

    with sd_models.SkipWritingToConfig():
        sd_models.reload_model_weights(info=refiner)

    devices.torch_gc()
    p.setup_conds()
    cfg_denoiser.update_inner_model()
    return True


class Sampler:
    def __init__(self, funcname):
        self.funcname = funcname
        self.func = funcname
        self.extra_params = []
        self.sampler_noises = None
        self.stop_at = None
        self.eta = None
        self.config: SamplerData = None  # set by sd_samplers.create_sampler
        self.last_latent = None
        self.s_min_uncond = None
        self.s_churn = 0.0
        self.s_tmin = 0.0
        self.s_tmax = float("inf")
        self.s_noise = 1.0
        self.eta_option_field = "eta_ancestral"
        self.eta_infotext_field = "Eta"
        self.eta_default = 1.0
        self.conditioning_key = getattr(getattr(shared.sd_model, "model", None), "conditioning_key", "crossattn")
        self.p = None
        self.model_wrap_cfg = None
        self.sampler_extra_args = None
        self.options = {}

    def callback_state(self, d):
        step = d["i"]
        if self.stop_at is not None and step > self.stop_at:
            raise InterruptedException
        state.sampling_step = step
        shared.total_tqdm.update()

    def launch_sampling(self, steps, func):
        self.model_wrap_cfg.steps = steps
        self.model_wrap_cfg.total_steps = self.config.total_steps(steps)
        state.sampling_steps = steps
        state.sampling_step = 0
        try:
            return func()
        except RecursionError:
            print("Encountered RecursionError during sampling, returning last latent.")
            return self.last_latent
        except InterruptedException:
            return self.last_latent

    def number_of_needed_noises(self, p):
        return p.steps

    def initialize(self, p) -> dict:
        self.p = p
        self.model_wrap_cfg.p = p
        self.model_wrap_cfg.mask = p.mask if hasattr(p, "mask") else None
        self.model_wrap_cfg.nmask = p.nmask if hasattr(p, "nmask") else None
        self.model_wrap_cfg.step = 0
        self.model_wrap_cfg.image_cfg_scale = getattr(p, "image_cfg_scale", None)
        self.eta = p.eta if getattr(p, "eta", None) is not None else getattr(opts, self.eta_option_field, 0.0)
        self.s_min_uncond = getattr(p, "s_min_uncond", 0.0)
        return {}

    def add_infotext(self, p):
        if self.model_wrap_cfg.padded_cond_uncond:
            p.extra_generation_params["Pad conds"] = True
        if self.model_wrap_cfg.padded_cond_uncond_v0:
            p.extra_generation_params["Pad conds v0"] = True

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        raise NotImplementedError()

    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        raise NotImplementedError()
