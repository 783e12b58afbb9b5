"""Forge ``modules/sd_samplers_kdiffusion.py`` (+ ``k_diffusion.external.ForgeScheduleLinker`` and the
"Simple" entry of ``modules/sd_schedulers.py``).

Mirrored: ``CFGDenoiserKDiffusion.inner_model`` = ``ForgeScheduleLinker(shared.sd_model.forge_objects.unet
.model.predictor)`` with ``.inner_model = shared.sd_model`` (so ``denoiser.inner_model.inner_model`` is the
engine); ``KDiffusionSampler.sample`` / ``sample_img2img``: ``sampling_prepare(forge_objects.unet, x)``
first (merges LoRA patches), ``x = predictor.noise_scaling(...)``, ``sampler_extra_args`` = cond,
image_cond, uncond, cond_scale (= p.cfg_scale), s_min_uncond; ``launch_sampling``; ``add_infotext``;
``sampling_cleanup(unet_patcher)`` NOT in a finally (an exception skips it). The unet patcher used for
prepare/cleanup is the one current when sampling starts; each denoiser call re-reads
``forge_objects.unet`` itself.
Schedulers: ``p.scheduler`` (``p.hr_scheduler`` in hires) "Automatic" -> ``ForgeScheduleLinker.get_sigmas``
(fine for SD's discrete schedule), "Simple" -> evenly spaced entries of ``predictor.sigmas`` (use it
for Flux). Samplers: "Euler", "Heun" (k-diffusion functions from the A1111 stand-in).
Left out: the other samplers and schedulers, noise samplers, extra_noise_callback.
Implementation: subclasses of a private copy of the A1111 stand-in file (``DiscreteSchedule``,
``CFGDenoiserKDiffusion``, ``KDiffusionSampler`` with its ``_launch`` tail), whose class globals are
rebound to the Forge classes.
"""

import torch

import modules.shared as shared
from backend.sampling.sampling_function import sampling_cleanup, sampling_prepare
from modules import _load_a1111, sd_samplers_common
from modules.shared import opts

_kd = _load_a1111("sd_samplers_kdiffusion")
sample_euler = _kd.sample_euler
sample_heun = _kd.sample_heun
append_zero = _kd.append_zero
append_dims = _kd.append_dims
samplers_k_diffusion = _kd.samplers_k_diffusion
samplers_data_k_diffusion = _kd.samplers_data_k_diffusion  # constructors call the KDiffusionSampler rebound below
k_diffusion_samplers_map = {x.name: x for x in samplers_data_k_diffusion}


class ForgeScheduleLinker(_kd.DiscreteSchedule):
    """``get_sigmas`` and ``sigma_min``/``sigma_max`` (first/last sigma) from the k-diffusion schedule;
    the sigmas and the sigma <-> t mapping are the predictor's."""

    def __init__(self, predictor):
        torch.nn.Module.__init__(self)
        self.predictor = predictor

    @property
    def sigmas(self):
        return self.predictor.sigmas

    @property
    def log_sigmas(self):
        return self.predictor.sigmas.log()

    def sigma_to_t(self, sigma, quantize=None):
        return self.predictor.timestep(sigma)

    def t_to_sigma(self, t):
        return self.predictor.sigma(t)


def simple_scheduler(n, sigma_min, sigma_max, inner_model, device):
    sigmas = inner_model.sigmas
    stride = len(sigmas) / n
    return torch.tensor([float(sigmas[-(1 + int(i * stride))]) for i in range(n)] + [0.0], device=device)


schedulers_map = {"Automatic": None, "Simple": simple_scheduler}


class CFGDenoiserKDiffusion(_kd.CFGDenoiserKDiffusion):
    @property
    def inner_model(self):
        if self.model_wrap is None:
            self.model_wrap = ForgeScheduleLinker(shared.sd_model.forge_objects.unet.model.predictor)
            self.model_wrap.inner_model = shared.sd_model
        return self.model_wrap


class KDiffusionSampler(_kd.KDiffusionSampler):
    def get_sigmas(self, p, steps):
        scheduler_name = (p.hr_scheduler if p.is_hr_pass else p.scheduler) or 'Automatic'
        if scheduler_name not in schedulers_map:
            raise NotImplementedError(f"stand-in: scheduler {scheduler_name!r} is left out")
        scheduler = schedulers_map[scheduler_name]
        if scheduler is None:
            sigmas = self.model_wrap.get_sigmas(steps)
        else:
            if not p.is_hr_pass:
                p.extra_generation_params["Schedule type"] = scheduler_name
            sigmas = scheduler(n=steps, sigma_min=float(self.model_wrap.sigmas[0]), sigma_max=float(self.model_wrap.sigmas[-1]),
                               inner_model=self.model_wrap, device=torch.device("cpu"))
        return sigmas.cpu()

    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        unet_patcher = self.model_wrap.inner_model.forge_objects.unet
        sampling_prepare(self.model_wrap.inner_model.forge_objects.unet, x=x)
        steps, t_enc = sd_samplers_common.setup_img2img_steps(p, steps)
        sigmas = self.get_sigmas(p, steps).to(x.device)
        sigma_sched = sigmas[steps - t_enc - 1:]
        x = x.to(noise)
        xi = self.model_wrap.predictor.noise_scaling(sigma_sched[0], noise, x, max_denoise=False)
        self.initialize(p)
        self.model_wrap_cfg.init_latent = x
        self.last_latent = x
        samples = self._launch(p, t_enc + 1, xi, sigma_sched, conditioning, unconditional_conditioning, image_conditioning)
        sampling_cleanup(unet_patcher)
        return samples

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        unet_patcher = self.model_wrap.inner_model.forge_objects.unet
        sampling_prepare(self.model_wrap.inner_model.forge_objects.unet, x=x)
        steps = steps or p.steps
        sigmas = self.get_sigmas(p, steps).to(x.device)
        if opts.sgm_noise_multiplier:
            p.extra_generation_params["SGM noise multiplier"] = True
        x = self.model_wrap.predictor.noise_scaling(sigmas[0], x, torch.zeros_like(x), max_denoise=opts.sgm_noise_multiplier)
        self.initialize(p)
        self.last_latent = x
        samples = self._launch(p, steps, x, sigmas, conditioning, unconditional_conditioning, image_conditioning)
        sampling_cleanup(unet_patcher)
        return samples


# the private copy's KDiffusionSampler.__init__ builds ``CFGDenoiserKDiffusion(self)`` and the
# samplers_data constructors build ``KDiffusionSampler(funcname, model)``: both resolve to the Forge classes
_kd.CFGDenoiserKDiffusion = CFGDenoiserKDiffusion
_kd.KDiffusionSampler = KDiffusionSampler
