"""``comfy/model_base.py``: ``BaseModel`` and the model classes LoRAtorio supports (own rewrite, same interface).

Mirrored: ``BaseModel.apply_model(x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={},
**kwargs)`` through the ``APPLY_MODEL`` wrappers of ``transformer_options``, then ``_apply_model``:
``model_sampling.calculate_input``, c_concat on dim 1, ``model_sampling.timestep``, extra conds cast, ``diffusion_model(
xc, t, context=..., control=..., transformer_options=..., **extra)``, ``calculate_denoised`` -> **x0 in float32**;
``extra_conds(**kwargs)`` -> {"c_crossattn": CONDCrossAttn, "y": CONDRegular (SDXL's adm), "guidance" (Flux)};
``memory_required(input_shape, cond_shapes={})`` (area * 0.15 * factor MiB, the non-flash formula);
``current_patcher``; ``process_latent_in/out``; ``get_dtype``. Model sampling: eps (``ModelSamplingDiscrete``,
scaled-linear betas) and Flux's flow (``ModelSamplingFlux``, shift 1.15, ``timestep(sigma) = sigma``).
Classes: ``BaseModel`` (SD1.5), ``SDXL`` (adm = pooled text + size features), ``Flux`` (guidance default 3.5),
``Flux2(Flux)`` (the text left-padded to 512 tokens), ``Chroma(Flux)`` (guidance default 0), ``Lumina2`` (Lumina 2
and Z-Image: ``c_crossattn``, ``num_tokens`` as a CONDConstant, ``attention_mask`` when some tokens are masked),
``SD3`` (``y`` = the pooled text), ``QwenImage`` and ``WAN21`` (5-D latents [B, C, T, H, W]: ``latent_dimensions``
3, ComfyUI's latent formats Wan21 for both).
"""

import math

import torch

import comfy.conds
import comfy.patcher_extension


class ModelSamplingDiscrete(torch.nn.Module):
    def __init__(self):
        super().__init__()
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.register_buffer("sigmas", (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).float())
        self.register_buffer("log_sigmas", self.sigmas.log())

    @property
    def sigma_max(self):
        return self.sigmas[-1]

    @property
    def sigma_min(self):
        return self.sigmas[0]

    def timestep(self, sigma):
        dists = sigma.log().to(self.log_sigmas.device) - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape).to(sigma.device)

    def sigma(self, timestep):
        t = torch.clamp(timestep.float(), 0, len(self.sigmas) - 1)
        low, high = t.floor().long(), t.ceil().long()
        w = t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def calculate_input(self, sigma, noise):
        sigma = sigma.view(sigma.shape[:1] + (1,) * (noise.ndim - 1))
        return noise / (sigma ** 2 + 1.0) ** 0.5

    def calculate_denoised(self, sigma, model_output, model_input):
        sigma = sigma.view(sigma.shape[:1] + (1,) * (model_output.ndim - 1))
        return model_input - model_output * sigma

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        return latent_image + noise * sigma


class ModelSamplingFlux(ModelSamplingDiscrete):
    def __init__(self, shift=1.15):
        torch.nn.Module.__init__(self)
        self.shift = shift
        ts = torch.arange(1, 1001, dtype=torch.float32) / 1000
        self.register_buffer("sigmas", self.sigma(ts))
        self.register_buffer("log_sigmas", self.sigmas.log())

    def sigma(self, timestep):
        return math.exp(self.shift) / (math.exp(self.shift) + (1 / timestep - 1))

    def timestep(self, sigma):
        return sigma

    def calculate_input(self, sigma, noise):
        return noise

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        return sigma * noise + (1.0 - sigma) * latent_image


class BaseModel(torch.nn.Module):
    memory_usage_factor = 1.0

    def __init__(self, diffusion_model, model_sampling=None):
        super().__init__()
        self.diffusion_model = diffusion_model
        self.model_sampling = model_sampling or ModelSamplingDiscrete()
        self.current_patcher = None
        self.device = torch.device("cpu")

    def apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None, **kwargs):
        transformer_options = {} if transformer_options is None else transformer_options
        wrappers = comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.APPLY_MODEL,
                                                            transformer_options)
        return comfy.patcher_extension.WrapperExecutor.new_class_executor(self._apply_model, self, wrappers).execute(
            x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)

    def _apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None, **kwargs):
        sigma = t
        xc = self.model_sampling.calculate_input(sigma, x)
        if c_concat is not None:
            xc = torch.cat([xc, c_concat.to(xc)], dim=1)
        dtype = self.get_dtype()
        xc = xc.to(dtype)
        t = self.model_sampling.timestep(t).float()
        context = None if c_crossattn is None else c_crossattn.to(dtype)
        extra = {k: v.to(dtype) if hasattr(v, "dtype") and v.is_floating_point() else v for k, v in kwargs.items()}
        out = self.diffusion_model(xc, t, context=context, control=control, transformer_options=transformer_options,
                                   **extra)
        return self.model_sampling.calculate_denoised(sigma, out.float(), x)

    def get_dtype(self):
        return next(self.diffusion_model.parameters()).dtype

    def process_latent_in(self, latent):
        return latent

    def process_latent_out(self, latent):
        return latent

    def encode_adm(self, **kwargs):
        return None

    def extra_conds(self, **kwargs):
        out = {}
        adm = self.encode_adm(**kwargs)
        if adm is not None:
            out["y"] = comfy.conds.CONDRegular(adm)
        if kwargs.get("cross_attn") is not None:
            out["c_crossattn"] = comfy.conds.CONDCrossAttn(kwargs["cross_attn"])
        return out

    def memory_required(self, input_shape, cond_shapes=None):
        area = input_shape[0] * math.prod(input_shape[2:])
        return (area * 0.15 * self.memory_usage_factor) * (1024 * 1024)


class SDXL(BaseModel):
    def encode_adm(self, **kwargs):
        pooled = kwargs["pooled_output"]
        sizes = torch.tensor([kwargs.get("height", 64), kwargs.get("width", 64)] * 3, dtype=torch.float32)
        freqs = torch.arange(4, dtype=torch.float32)
        size_features = torch.cat([torch.sin(sizes[:, None] / 10 ** freqs), torch.cos(sizes[:, None] / 10 ** freqs)], 1)
        return torch.cat([pooled, size_features.flatten()[None].repeat(pooled.shape[0], 1)], dim=1)


class Flux(BaseModel):
    def encode_adm(self, **kwargs):
        return kwargs["pooled_output"]

    def extra_conds(self, **kwargs):
        out = super().extra_conds(**kwargs)
        if kwargs.get("cross_attn") is not None:
            out["c_crossattn"] = comfy.conds.CONDRegular(kwargs["cross_attn"])
        guidance = kwargs.get("guidance", 3.5)
        if guidance is not None:
            out["guidance"] = comfy.conds.CONDRegular(torch.FloatTensor([guidance]))
        return out


class Flux2(Flux):
    def extra_conds(self, **kwargs):
        out = super().extra_conds(**kwargs)
        cross_attn = kwargs.get("cross_attn")
        if cross_attn is not None:
            out["c_crossattn"] = comfy.conds.CONDRegular(
                torch.nn.functional.pad(cross_attn, (0, 0, max(0, 512 - cross_attn.shape[1]), 0)))
        return out


class Chroma(Flux):
    def extra_conds(self, **kwargs):
        return super().extra_conds(**{"guidance": 0.0, **kwargs})


class Lumina2(BaseModel):
    def extra_conds(self, **kwargs):
        out = super().extra_conds(**kwargs)
        attention_mask = kwargs.get("attention_mask")
        if attention_mask is not None:
            if torch.numel(attention_mask) != attention_mask.sum():
                out["attention_mask"] = comfy.conds.CONDRegular(attention_mask)
            out["num_tokens"] = comfy.conds.CONDConstant(max(1, int(torch.sum(attention_mask).item())))
        cross_attn = kwargs.get("cross_attn")
        if cross_attn is not None:
            out["c_crossattn"] = comfy.conds.CONDRegular(cross_attn)
            out.setdefault("num_tokens", comfy.conds.CONDConstant(cross_attn.shape[1]))
        return out


class SD3(BaseModel):
    def encode_adm(self, **kwargs):
        return kwargs["pooled_output"]


class QwenImage(BaseModel):
    latent_dimensions = 3


class WAN21(BaseModel):
    latent_dimensions = 3
