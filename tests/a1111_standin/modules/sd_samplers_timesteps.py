"""Stand-in for ``modules/sd_samplers_timesteps.py`` + ``sd_samplers_timesteps_impl.ddim`` (A1111 v1.10.1).

Mirrored: CompVisTimestepsDenoiser / CompVisTimestepsVDenoiser (``forward(input, timesteps, **kw)`` ->
``inner_model.apply_model``; returns eps; input not scaled), CFGDenoiserTimesteps (``alphas``,
``mask_before_denoising = True``, eps->x0 ``get_pred_x0``, lazy ``inner_model``), CompVisSampler with
``get_timesteps`` (``range(0, 1000, 1000 // steps) + 1``), ``sample`` / ``sample_img2img``, and the DDIM
loop, which reads ``model.inner_model.inner_model.alphas_cumprod`` and makes ``len(timesteps) - 1``
denoiser calls like the real one. Left out: PLMS, UniPC, DDIM CFG++.
"""

from __future__ import annotations

import torch

import modules.shared as shared
from modules import sd_samplers_common
from modules.sd_samplers_cfg_denoiser import CFGDenoiser


@torch.no_grad()
def ddim(model, x, timesteps, extra_args=None, callback=None, disable=None, eta=0.0):
    alphas_cumprod = model.inner_model.inner_model.alphas_cumprod
    alphas = alphas_cumprod[timesteps]
    alphas_prev = alphas_cumprod[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))].to(torch.float64)
    sigmas = eta * torch.sqrt((1 - alphas_prev) / (1 - alphas) * (1 - alphas / alphas_prev))
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones((x.shape[0],))
    s_x = x.new_ones((x.shape[0], 1, 1, 1))
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = model(x, timesteps[index].item() * s_in, **extra_args)
        a_t = alphas[index].item() * s_x
        a_prev = alphas_prev[index].item() * s_x
        sigma_t = sigmas[index].item() * s_x
        sqrt_one_minus_at = (1 - alphas[index]).sqrt().item() * s_x
        pred_x0 = (x - sqrt_one_minus_at * e_t) / a_t.sqrt()
        dir_xt = (1.0 - a_prev - sigma_t ** 2).sqrt() * e_t
        x = a_prev.sqrt() * pred_x0 + dir_xt + sigma_t * torch.randn_like(x)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": 0, "sigma_hat": 0, "denoised": pred_x0})
    return x


samplers_timesteps = [("DDIM", ddim, ["ddim"], {})]

samplers_data_timesteps = [
    sd_samplers_common.SamplerData(label, lambda model, funcname=funcname: CompVisSampler(funcname, model), aliases, options)
    for label, funcname, aliases, options in samplers_timesteps
]


class CompVisTimestepsDenoiser(torch.nn.Module):
    def __init__(self, model, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.inner_model = model

    def forward(self, input, timesteps, **kwargs):
        return self.inner_model.apply_model(input, timesteps, **kwargs)


class CompVisTimestepsVDenoiser(torch.nn.Module):
    def __init__(self, model, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.inner_model = model

    def predict_eps_from_z_and_v(self, x_t, t, v):
        ac = self.inner_model.alphas_cumprod
        idx = t.to(torch.int)
        return torch.sqrt(ac)[idx, None, None, None] * v + torch.sqrt(1 - ac)[idx, None, None, None] * x_t

    def forward(self, input, timesteps, **kwargs):
        return self.predict_eps_from_z_and_v(input, timesteps, self.inner_model.apply_model(input, timesteps, **kwargs))


class CFGDenoiserTimesteps(CFGDenoiser):
    def __init__(self, sampler):
        super().__init__(sampler)
        self.alphas = shared.sd_model.alphas_cumprod
        self.mask_before_denoising = True

    def get_pred_x0(self, x_in, x_out, sigma):
        a_t = self.alphas[sigma.to(dtype=int)][:, None, None, None]
        return (x_in - (1 - a_t).sqrt() * x_out) / a_t.sqrt()

    @property
    def inner_model(self):
        if self.model_wrap is None:
            denoiser = CompVisTimestepsVDenoiser if shared.sd_model.parameterization == "v" else CompVisTimestepsDenoiser
            self.model_wrap = denoiser(shared.sd_model)
        return self.model_wrap


class CompVisSampler(sd_samplers_common.Sampler):
    def __init__(self, funcname, sd_model):
        super().__init__(funcname)
        self.eta_option_field = "eta_ddim"
        self.eta_infotext_field = "Eta DDIM"
        self.eta_default = 0.0
        self.model_wrap_cfg = CFGDenoiserTimesteps(self)
        self.model_wrap = self.model_wrap_cfg.inner_model

    def get_timesteps(self, p, steps):
        return torch.clip(torch.asarray(list(range(0, 1000, 1000 // steps))) + 1, 0, 999)

    def _extra_args(self, p, conditioning, unconditional_conditioning, image_conditioning):
        return {"cond": conditioning, "image_cond": image_conditioning, "uncond": unconditional_conditioning,
                "cond_scale": p.cfg_scale, "s_min_uncond": self.s_min_uncond}

    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        steps, t_enc = sd_samplers_common.setup_img2img_steps(p, steps)
        timesteps = self.get_timesteps(p, steps)
        timesteps_sched = timesteps[:t_enc]
        alphas_cumprod = shared.sd_model.alphas_cumprod
        xi = x * torch.sqrt(alphas_cumprod[timesteps[t_enc]]) + noise * torch.sqrt(1 - alphas_cumprod[timesteps[t_enc]])
        extra = self.initialize(p)
        self.model_wrap_cfg.init_latent = x
        self.last_latent = x
        self.sampler_extra_args = self._extra_args(p, conditioning, unconditional_conditioning, image_conditioning)
        samples = self.launch_sampling(t_enc + 1, lambda: self.func(self.model_wrap_cfg, xi, timesteps=timesteps_sched, extra_args=self.sampler_extra_args,
                                                                    disable=False, callback=self.callback_state, eta=self.eta, **extra))
        self.add_infotext(p)
        return samples

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        steps = steps or p.steps
        timesteps = self.get_timesteps(p, steps)
        extra = self.initialize(p)
        self.last_latent = x
        self.sampler_extra_args = self._extra_args(p, conditioning, unconditional_conditioning, image_conditioning)
        samples = self.launch_sampling(steps, lambda: self.func(self.model_wrap_cfg, x, timesteps=timesteps, extra_args=self.sampler_extra_args,
                                                                disable=False, callback=self.callback_state, eta=self.eta, **extra))
        self.add_infotext(p)
        return samples
