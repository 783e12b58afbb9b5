"""Stand-in for ``modules/sd_samplers_kdiffusion.py`` (A1111 v1.10.1) plus the small part of
``k_diffusion.external`` / ``k_diffusion.sampling`` it relies on [dep].

Mirrored: CompVisDenoiser / CompVisVDenoiser API (sigmas, log_sigmas, sigma_min/max, get_sigmas,
sigma_to_t, t_to_sigma, get_scalings, get_eps/get_v -> ``inner_model.apply_model(x*c_in, t, cond=...)``,
forward returns x0), CFGDenoiserKDiffusion (lazy ``inner_model`` property), KDiffusionSampler
(``model_wrap_cfg``, eager ``model_wrap``, ``sampler_extra_args``, ``sample`` / ``sample_img2img``).
Samplers: "Euler" (k-diffusion sample_euler, s_churn=0) and "Heun" (second order: 2 denoiser calls
per step except the last). Left out: schedulers other than the model's own discrete schedule, noise
samplers, ancestral/SDE samplers, ``create_denoiser`` (SD3).
"""

from __future__ import annotations

import torch

import modules.shared as shared
from modules import sd_samplers_cfg_denoiser, sd_samplers_common
from modules.shared import opts


def append_dims(x, target_dims):
    return x[(...,) + (None,) * (target_dims - x.ndim)]


def append_zero(x):
    return torch.cat([x, x.new_zeros([1])])


class DiscreteSchedule(torch.nn.Module):
    def __init__(self, sigmas, quantize):
        super().__init__()
        self.register_buffer("sigmas", sigmas)
        self.register_buffer("log_sigmas", sigmas.log())
        self.quantize = quantize

    @property
    def sigma_min(self):
        return self.sigmas[0]

    @property
    def sigma_max(self):
        return self.sigmas[-1]

    def get_sigmas(self, n=None):
        if n is None:
            return append_zero(self.sigmas.flip(0))
        t = torch.linspace(len(self.sigmas) - 1, 0, n, device=self.sigmas.device)
        return append_zero(self.t_to_sigma(t))

    def sigma_to_t(self, sigma, quantize=None):
        quantize = self.quantize if quantize is None else quantize
        log_sigma = sigma.log()
        dists = log_sigma - self.log_sigmas[:, None]
        if quantize:
            return dists.abs().argmin(dim=0).view(sigma.shape)
        low_idx = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=self.log_sigmas.shape[0] - 2)
        high_idx = low_idx + 1
        low, high = self.log_sigmas[low_idx], self.log_sigmas[high_idx]
        w = ((low - log_sigma) / (low - high)).clamp(0, 1)
        return ((1 - w) * low_idx + w * high_idx).view(sigma.shape)

    def t_to_sigma(self, t):
        t = t.float()
        low_idx, high_idx, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low_idx] + w * self.log_sigmas[high_idx]).exp()


class CompVisDenoiser(DiscreteSchedule):
    """k_diffusion.external.CompVisDenoiser: eps model -> returns the denoised x0."""

    def __init__(self, model, quantize=False):
        alphas_cumprod = model.alphas_cumprod
        super().__init__(((1 - alphas_cumprod) / alphas_cumprod) ** 0.5, quantize)
        self.inner_model = model
        self.sigma_data = 1.0

    def get_scalings(self, sigma):
        c_out = -sigma
        c_in = 1 / (sigma ** 2 + self.sigma_data ** 2) ** 0.5
        return c_out, c_in

    def get_eps(self, *args, **kwargs):
        return self.inner_model.apply_model(*args, **kwargs)

    def forward(self, input, sigma, **kwargs):
        c_out, c_in = [append_dims(s, input.ndim) for s in self.get_scalings(sigma)]
        eps = self.get_eps(input * c_in, self.sigma_to_t(sigma), **kwargs)
        return input + eps * c_out


class CompVisVDenoiser(CompVisDenoiser):
    """k_diffusion.external.CompVisVDenoiser: v model -> returns the denoised x0 (same schedule)."""

    def get_scalings(self, sigma):
        c_skip = self.sigma_data ** 2 / (sigma ** 2 + self.sigma_data ** 2)
        c_out = -sigma * self.sigma_data / (sigma ** 2 + self.sigma_data ** 2) ** 0.5
        c_in = 1 / (sigma ** 2 + self.sigma_data ** 2) ** 0.5
        return c_skip, c_out, c_in

    def get_v(self, x, t, cond, **kwargs):
        return self.inner_model.apply_model(x, t, cond)

    def forward(self, input, sigma, **kwargs):
        c_skip, c_out, c_in = [append_dims(s, input.ndim) for s in self.get_scalings(sigma)]
        return self.get_v(input * c_in, self.sigma_to_t(sigma), **kwargs) * c_out + input * c_skip


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None):
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        d = (x - denoised) / append_dims(sigmas[i], x.ndim)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x


@torch.no_grad()
def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None):
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        d = (x - denoised) / append_dims(sigmas[i], x.ndim)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = model(x_2, sigmas[i + 1] * s_in, **extra_args)
            d_2 = (x_2 - denoised_2) / append_dims(sigmas[i + 1], x.ndim)
            x = x + (d + d_2) / 2 * dt
    return x


samplers_k_diffusion = [
    ("Euler", "sample_euler", ["k_euler"], {}),
    ("Heun", "sample_heun", ["k_heun"], {"second_order": True}),
]
_funcs = {"sample_euler": sample_euler, "sample_heun": sample_heun}

samplers_data_k_diffusion = [
    sd_samplers_common.SamplerData(label, lambda model, funcname=funcname: KDiffusionSampler(funcname, model), aliases, options)
    for label, funcname, aliases, options in samplers_k_diffusion
]


class CFGDenoiserKDiffusion(sd_samplers_cfg_denoiser.CFGDenoiser):
    @property
    def inner_model(self):
        if self.model_wrap is None:
            denoiser = CompVisVDenoiser if shared.sd_model.parameterization == "v" else CompVisDenoiser
            self.model_wrap = denoiser(shared.sd_model, quantize=opts.enable_quantization)
        return self.model_wrap


class KDiffusionSampler(sd_samplers_common.Sampler):
    def __init__(self, funcname, sd_model, options=None):
        super().__init__(funcname)
        self.options = options or {}
        self.func = funcname if callable(funcname) else _funcs[funcname]
        self.model_wrap_cfg = CFGDenoiserKDiffusion(self)
        self.model_wrap = self.model_wrap_cfg.inner_model

    def get_sigmas(self, p, steps):
        return self.model_wrap.get_sigmas(steps).cpu()

    def _extra_args(self, p, conditioning, unconditional_conditioning, image_conditioning):
        return {"cond": conditioning, "image_cond": image_conditioning, "uncond": unconditional_conditioning,
                "cond_scale": p.cfg_scale, "s_min_uncond": self.s_min_uncond}

    def _launch(self, p, steps, x, sigmas, conditioning, unconditional_conditioning, image_conditioning):
        """Stand-in split of the common tail of ``sample`` / ``sample_img2img`` (also Forge's):
        ``sampler_extra_args`` -> ``launch_sampling(steps, self.func(...))`` -> ``add_infotext``."""
        self.sampler_extra_args = self._extra_args(p, conditioning, unconditional_conditioning, image_conditioning)
        samples = self.launch_sampling(steps, lambda: self.func(self.model_wrap_cfg, x, sigmas, extra_args=self.sampler_extra_args,
                                                                disable=False, callback=self.callback_state))
        self.add_infotext(p)
        return samples

    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        steps, t_enc = sd_samplers_common.setup_img2img_steps(p, steps)
        sigmas = self.get_sigmas(p, steps)
        sigma_sched = sigmas[steps - t_enc - 1:]
        xi = x + noise * sigma_sched[0]
        self.initialize(p)
        self.model_wrap_cfg.init_latent = x
        self.last_latent = x
        return self._launch(p, t_enc + 1, xi, sigma_sched, conditioning, unconditional_conditioning, image_conditioning)

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        steps = steps or p.steps
        sigmas = self.get_sigmas(p, steps)
        x = x * sigmas[0]
        self.initialize(p)
        self.last_latent = x
        return self._launch(p, steps, x, sigmas, conditioning, unconditional_conditioning, image_conditioning)
