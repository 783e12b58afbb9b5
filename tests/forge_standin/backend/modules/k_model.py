"""``backend/modules/k_model.py``: ``KModel`` = the network + its predictor.

Mirrored: attributes ``diffusion_model``, ``predictor``, ``config``, ``storage_dtype``,
``computation_dtype``; ``apply_model(x, t, c_concat=None, c_crossattn=None, control=None,
transformer_options={}, **kwargs)``: x -> ``predictor.calculate_input``, cat ``c_concat`` on dim 1, cast,
``t = predictor.timestep(t)``, other kwargs (``y``, ``guidance``...) passed to the network, then
``diffusion_model(xc, t, context=c_crossattn, control=control, transformer_options=..., **extra)`` and
``predictor.calculate_denoised`` -> x0 in float32. ``memory_required(shape)`` =
1.28 * B*H*W * dtype_size * 16384 bytes (the pytorch-attention formula).
"""

import torch

from backend import memory_management


class KModel(torch.nn.Module):
    def __init__(self, model, diffusers_scheduler=None, k_predictor=None, config=None):
        super().__init__()
        self.config = config
        self.storage_dtype = getattr(model, "storage_dtype", torch.float32)
        self.computation_dtype = getattr(model, "computation_dtype", torch.float32)
        self.diffusion_model = model
        self.predictor = k_predictor

    def apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        sigma = t
        xc = self.predictor.calculate_input(sigma, x)
        if c_concat is not None:
            xc = torch.cat([xc, c_concat], dim=1)
        dtype = self.computation_dtype
        xc = xc.to(dtype)
        t = self.predictor.timestep(t).float()
        context = c_crossattn.to(dtype)
        extra_conds = {}
        for key, value in kwargs.items():
            if hasattr(value, "dtype") and value.dtype not in (torch.int, torch.long):
                value = value.to(dtype)
            extra_conds[key] = value
        model_output = self.diffusion_model(xc, t, context=context, control=control, transformer_options=transformer_options,
                                            **extra_conds).float()
        return self.predictor.calculate_denoised(sigma, model_output, x)

    def memory_required(self, input_shape):
        area = input_shape[0] * input_shape[2] * input_shape[3]
        return 1.28 * area * memory_management.dtype_size(self.computation_dtype) * 16384
