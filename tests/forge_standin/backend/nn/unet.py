"""``backend/nn/unet.py`` stand-in: ``IntegratedUNet2DConditionModel``.

Forge's SD1/SD2/SDXL UNet uses the ldm/CompVis module names (``input_blocks.N.1.transformer_blocks.T.
attn2.to_k`` ...), so the stand-in is ``tests/tiny_models.ldm_view(tiny_*_unet())`` with its class
switched to this subclass (names unchanged) for Forge's call signature
``forward(x, timesteps=None, context=None, y=None, control=None, transformer_options={}, **kwargs)``.
Like the real forward it writes ``original_shape`` and ``transformer_index`` into the
``transformer_options`` dict it is given. ``config`` is the ldm-style dict (``model_channels``, ...).
Left out: ControlNet residuals (``control``) and every ``transformer_options`` patch.
"""

import os
import sys

_TESTS = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
if _TESTS not in sys.path:
    sys.path.append(_TESTS)

from tiny_models import LdmUNetView  # noqa: E402


class IntegratedUNet2DConditionModel(LdmUNetView):
    storage_dtype = None
    computation_dtype = None

    def forward(self, x, timesteps=None, context=None, y=None, control=None, transformer_options={}, **kwargs):
        transformer_options["original_shape"] = list(x.shape)
        transformer_options["transformer_index"] = 0
        return super().forward(x, timesteps, context, y)


def as_integrated_unet(view, config):
    """Stand-in only: re-class an ``ldm_view`` (same object, same names) as the Forge UNet."""
    view.__class__ = IntegratedUNet2DConditionModel
    view.config = config
    return view
