"""``backend/nn/flux.py`` of Forge Neo 2.26: ``IntegratedFluxTransformer2DModel`` runs Flux.1 (the Forge stand-in's
class) and, built with ``global_modulation``, Flux.2 (here ``tests/tiny_dits.TinyFlux2``: the same module names and
token layout, ComfyUI's port). Flux.2 takes its reference latents from the call or, as Neo does, from
``dynamic_args.ref_latents``."""

from neo_overlay import forge_module

from backend.args import dynamic_args
from tiny_dits import TinyFlux2

IntegratedFluxTransformer2DModel = forge_module("backend/nn/flux.py").IntegratedFluxTransformer2DModel


class IntegratedFlux2Transformer(TinyFlux2):
    def forward(self, x, timestep, context, y=None, guidance=None, ref_latents=None, control=None,
                transformer_options={}, **kwargs):
        return super().forward(x, timestep, context, y, guidance, ref_latents or dynamic_args.ref_latents, control,
                               transformer_options, **kwargs)
