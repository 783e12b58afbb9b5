"""What the end-to-end tests of the WebUI script share, on the A1111 and the Forge stand-in alike."""

import dataclasses

import numpy as np

from lib_loratorio.params import LoratorioParams

SETTINGS = LoratorioParams.names()
# diffusers names (kohya SD1.5 files use them) of the tiny SD1.5 UNet's modules the test LoRAs touch
UNET_TARGETS = [
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v",
    "down_blocks.0.resnets.0.conv1",
    "down_blocks.1.attentions.0.proj_out",
    "up_blocks.1.resnets.0.conv2",
    "mid_block.attentions.0.transformer_blocks.0.ff.net.2",
]


def on(**kw):
    """Positional script args as the UI sends them: the accordion's bool, then every setting."""
    values = dataclasses.replace(LoratorioParams(enabled=True, patch_size=4), **kw)
    return [getattr(values, name) for name in SETTINGS]


def hook_ids(model):
    """Forward (pre-)hooks of every module; transformers installs some of its own, so compare sets."""
    return {(id(m), kind, key) for m in model.modules()
            for kind, table in (("post", m._forward_hooks), ("pre", m._forward_pre_hooks)) for key in table}


def make_txt2img(processing, runner, args=None, **kw):
    """A txt2img ``p`` with LoRAtorio's script args (off unless ``args``), two tags and small sizes."""
    settings = dict(prompt="a cat <loratorio:alice:0.8> <loratorio:hat:1>", negative_prompt="blurry", steps=3,
                    width=128, height=128, batch_size=1, sampler_name="Euler", seed=3, cfg_scale=5.0)
    settings.update(kw)
    p = processing.StableDiffusionProcessingTxt2Img(**settings)
    p.scripts = runner
    script = runner.alwayson_scripts[-1]
    script_args = [0] * script.args_to
    script_args[script.args_from:script.args_to] = on(enabled=False) if args is None else args
    p.script_args = tuple(script_args)
    return p


def pixels(result, index=None):
    index = result.index_of_first_image if index is None else index
    return np.asarray(result.images[index]).astype(np.float32)
