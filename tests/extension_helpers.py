"""What the end-to-end tests of the WebUI script share, on the A1111 and the Forge stand-in alike (webui_hosts)."""

import copy
import dataclasses
import os

import numpy as np
import torch

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
    # the tests were written for the paper's method; the defaults (mode Stack) have tests of their own
    values = dataclasses.replace(LoratorioParams(enabled=True, patch_size=4, mode="LoRAtorio", weight_norm="sum"), **kw)
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


EVERYDAY = ("mode", "patch_size", "temperature", "recenter", "top_k", "show_weight_maps", "refresh_first",
            "refresh_every")
ONLY_IN_LORATORIO_MODES = {"patch_size", "temperature", "recenter", "top_k", "selection", "refresh_first",
                           "refresh_every", "weight_norm", "hint_strength"}  # hint_strength: also in Stack
FAST_ONLY = {"refresh_first", "refresh_every"}


def check_accordion_layout(runner):
    """The compact accordion: everyday settings in rows, the rest in a closed "Advanced" accordion, settings of
    one mode shown only in that mode, and the controls returned in LoratorioParams field order."""
    script = runner.alwayson_scripts[0]
    controls = runner.inputs[script.args_from:script.args_to]
    assert [c.label for c in controls[1:]] == [LoratorioParams.__dataclass_fields__[n].metadata["label"]
                                               for n in SETTINGS[1:]]
    assert [c.elem_id for c in controls[1:]] == [script.elem_id(n) for n in SETTINGS[1:]]
    by_name = dict(zip(SETTINGS, controls, strict=True))
    main = by_name["enabled"].accordion
    rows = {by_name[n].parent for n in EVERYDAY}
    assert 2 <= len(rows) <= 4 and all(type(r).__name__ == "Row" and r.parent is main for r in rows)
    advanced = {by_name[n].parent.parent for n in SETTINGS[1:] if n not in EVERYDAY}
    (accordion,) = advanced
    assert (type(accordion).__name__, accordion.label, accordion.open, accordion.parent) == ("Accordion", "Advanced",
                                                                                             False, main)
    assert all(type(by_name[n].parent).__name__ == "Row" for n in SETTINGS[1:])

    def hidden():
        return {n for n, c in by_name.items() if n != "enabled" and not c.visible}

    # the default mode, Stack: every LoRA everywhere (or in its hinted region), nothing of the routing to set
    assert hidden() == (ONLY_IN_LORATORIO_MODES - {"hint_strength"}) | {"switch_every", "weight_map_steps"}
    by_name["mode"].fire("change", "Switch")
    assert hidden() == ONLY_IN_LORATORIO_MODES | {"weight_map_steps"}
    by_name["mode"].fire("change", "Composite")
    assert hidden() == ONLY_IN_LORATORIO_MODES | {"switch_every", "weight_map_steps"}
    by_name["mode"].fire("change", "LoRAtorio Fast")        # the schedule instead of the re-centring
    assert hidden() == {"switch_every", "weight_map_steps", "recenter"}
    by_name["show_weight_maps"].fire("change", True)
    by_name["mode"].fire("change", "LoRAtorio")
    assert hidden() == {"switch_every"} | FAST_ONLY
    by_name["show_weight_maps"].fire("change", False)
    assert hidden() == {"switch_every", "weight_map_steps"} | FAST_ONLY


def merged_model(webui, loras, base=None, text_encoder=False):
    """A copy of ``base`` (SD1.5 by default) with the LoRAs ``{name: strength}`` merged into its UNet weights (what
    a plain <lora:> does), and into its text encoder with ``text_encoder``: the oracle of a LoRA branch."""
    from lib_loratorio.lora_files import read_lora_file
    from lib_loratorio.network_names import bind_lora

    model = copy.deepcopy(base or webui.sd15)
    if webui.forge:
        objects = model.forge_objects_original
        model.forge_objects = objects.shallow_copy()
        model.forge_objects_after_applying_lora = objects.shallow_copy()
    components = {"unet": webui.unet(model), **({"te1": webui.text_encoder(model)} if text_encoder else {})}
    with torch.no_grad():
        for name, strength in loras.items():
            bound = bind_lora(read_lora_file(os.path.join(webui.lora_dir, f"{name}.safetensors")), components)
            for _, module, delta in bound.targets:
                module.weight += strength * delta.weight_delta(module)
    return model


def merged_run(webui, runner, loras, base=None, text_encoder=False, **kw):
    """The image of ``base`` with ``loras`` merged, LoRAtorio off (the prompt without tags)."""
    if text_encoder:  # the WebUI's cond cache would hold the unmerged text encoder's conds of the same prompt
        webui.processing.StableDiffusionProcessing.cached_c[:] = [None, None]
        webui.processing.StableDiffusionProcessing.cached_uc[:] = [None, None]
    return webui.run(runner, model=merged_model(webui, loras, base, text_encoder), **{"prompt": "a cat", **kw})


def close(a, b):
    """8-bit images equal up to rounding (one level)."""
    return np.abs(a - b).max() <= 1.0


def unet_rows(webui):
    """Rows of every UNet forward while the handle is in place (a forward pre-hook on SD1.5's UNet)."""
    seen = []
    handle = webui.unet(webui.sd15).register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0]))
    return seen, handle
