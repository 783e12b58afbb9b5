"""Forge ``modules/sd_samplers_cfg_denoiser.py``: ``CFGDenoiser`` whose forward hands CFG to
``backend.sampling.sampling_function.sampling_function`` (own minimal rewrite, same interface).

``forward(x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond)``, in Forge's order:
1. ``state.interrupted or state.skipped`` -> raise ``sd_samplers_common.InterruptedException``;
2. (``classic_ddim_eps_estimation``: timestep -> sigma; stand-in: only k-diffusion samplers, so False);
3. ``sd_samplers_common.apply_refiner(self, x)`` -> re-read cond/uncond from ``sampler_extra_args``;
4. ``cond_composition, cond = reconstruct_multicond_batch(cond, self.step)``;
   ``uncond = reconstruct_cond_batch(uncond, self.step) if uncond is not None else None`` (p.uc is None at cfg 1);
5. inpaint mask: ``x = x * nmask + predictor.noise_scaling(sigma, randn, init_latent) * mask``;
6. ``CFGDenoiserParams(x, image_cond, sigma, state.sampling_step, state.sampling_steps, cond, uncond, self)``
   + ``cfg_denoiser_callback`` (sampling_function reads the params object afterwards);
7. cond_scale: ``p.hr_cfg`` in the hires pass; 1.0 under skip_early_cond (``step/total_steps <=``) or NGMS
   (infotext "Skip Early CFG" / "NGMS");
8. ``denoised, cond_pred, uncond_pred = sampling_function(self, denoiser_params=..., cond_scale=...,
   cond_composition=...)``; ``last_noise_uncond`` if asked;
9. mask blend + ``scripts.on_mask_blend``; ``sampler.last_latent = denoised``; store_latent;
   ``cfg_after_cfg_callback`` (x read back); ``self.step += 1``. ``cfg_denoised_callback`` is NOT called.
The rest (``__init__`` fields, ``update_inner_model``, ``catenate_conds``...) is the A1111 stand-in's, via a
private copy (``modules._a1111_sd_samplers_cfg_denoiser``).
"""

import torch

import modules.shared as shared
from backend.sampling.sampling_function import sampling_function
from modules import _load_a1111, prompt_parser, sd_samplers_common
from modules.script_callbacks import (
    AfterCFGCallbackParams,
    CFGDenoiserParams,
    cfg_after_cfg_callback,
    cfg_denoiser_callback,
)
from modules.shared import state

_base = _load_a1111("sd_samplers_cfg_denoiser")

catenate_conds = _base.catenate_conds
subscript_cond = _base.subscript_cond


class CFGDenoiser(_base.CFGDenoiser):
    """The A1111 stand-in's ``__init__``, ``inner_model``, ``get_pred_x0``, ``update_inner_model``, with
    Forge's ``classic_ddim_eps_estimation`` flag and ``forward``."""

    def __init__(self, sampler):
        super().__init__(sampler)
        self.classic_ddim_eps_estimation = False

    def forward(self, x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond):
        if state.interrupted or state.skipped:
            raise sd_samplers_common.InterruptedException

        original_x_device, original_x_dtype = x.device, x.dtype

        if sd_samplers_common.apply_refiner(self, x):
            cond = self.sampler.sampler_extra_args['cond']
            uncond = self.sampler.sampler_extra_args['uncond']

        cond_composition, cond = prompt_parser.reconstruct_multicond_batch(cond, self.step)
        uncond = prompt_parser.reconstruct_cond_batch(uncond, self.step) if uncond is not None else None

        if self.mask is not None:
            predictor = self.inner_model.inner_model.forge_objects.unet.model.predictor
            noisy_initial_latent = predictor.noise_scaling(sigma[:, None, None, None], torch.randn_like(self.init_latent), self.init_latent,
                                                           max_denoise=False)
            x = x * self.nmask + noisy_initial_latent * self.mask

        denoiser_params = CFGDenoiserParams(x, image_cond, sigma, state.sampling_step, state.sampling_steps, cond, uncond, self)
        cfg_denoiser_callback(denoiser_params)

        if self.p.is_hr_pass:
            cond_scale = self.p.hr_cfg

        if shared.opts.skip_early_cond > 0 and self.step / self.total_steps <= shared.opts.skip_early_cond:
            cond_scale = 1.0
            self.p.extra_generation_params["Skip Early CFG"] = shared.opts.skip_early_cond
        elif (self.step % 2 or shared.opts.s_min_uncond_all) and s_min_uncond > 0 and sigma[0] < s_min_uncond:
            cond_scale = 1.0
            self.p.extra_generation_params["NGMS"] = s_min_uncond
            if shared.opts.s_min_uncond_all:
                self.p.extra_generation_params["NGMS all steps"] = shared.opts.s_min_uncond_all

        denoised, cond_pred, uncond_pred = sampling_function(self, denoiser_params=denoiser_params, cond_scale=cond_scale,
                                                             cond_composition=cond_composition)

        if self.need_last_noise_uncond:
            self.last_noise_uncond = (x - uncond_pred) / sigma[:, None, None, None]

        if self.mask is not None:
            blended_latent = denoised * self.nmask + self.init_latent * self.mask
            if self.p.scripts is not None:
                from modules import scripts
                mba = scripts.MaskBlendArgs(denoised, self.nmask, self.init_latent, self.mask, blended_latent, denoiser=self, sigma=sigma)
                self.p.scripts.on_mask_blend(self.p, mba)
                blended_latent = mba.blended_latent
            denoised = blended_latent

        preview = self.sampler.last_latent = denoised
        sd_samplers_common.store_latent(preview)

        after_cfg_callback_params = AfterCFGCallbackParams(denoised, state.sampling_step, state.sampling_steps)
        cfg_after_cfg_callback(after_cfg_callback_params)
        denoised = after_cfg_callback_params.x

        self.step += 1
        return denoised.to(device=original_x_device, dtype=original_x_dtype)
