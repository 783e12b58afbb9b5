"""LoRAtorio: the always-visible script (accordion, script args from UI or API, infotext). Thin.

The controls are generated from LoratorioParams, in its field order, so the positional API args,
the UI, the infotext and validation all come from one place.
"""

from __future__ import annotations

import dataclasses
import re

import gradio as gr

from modules import scripts
from modules.ui_components import InputAccordion

from lib_loratorio.errors import LoratorioError
from lib_loratorio.params import INFOTEXT_PREFIX, LoratorioParams
from lib_loratorio.script_args import SCRIPT_TITLE, parse_script_args
from lib_loratorio.webui import load_adapter
from lib_loratorio.webui.session import get_session
from lib_loratorio.webui.weight_map_images import weight_map_images
from lib_loratorio.webui.xyz_axes import xyz_overrides

ADAPTER = load_adapter()
ADAPTER.register_callbacks()

# UI ranges where they are narrower than what validation allows (the API may go further).
_SLIDERS = {
    "patch_size": (1, 32, 1), "recenter": (0.0, 1.0, 0.05), "top_k": (0, 16, 1), "switch_every": (1, 20, 1),
    "default_strength": (-2.0, 2.0, 0.05), "step_start": (0.0, 1.0, 0.05), "step_end": (0.0, 1.0, 0.05),
}


def _control(f: dataclasses.Field, elem_id: str):
    meta, default = f.metadata, f.default
    common = {"label": meta["label"], "info": meta["hint"], "elem_id": elem_id}
    if meta["choices"]:
        return gr.Radio(choices=list(meta["choices"]), value=default, **common)
    if isinstance(default, bool):
        return gr.Checkbox(value=default, **common)
    if f.name in _SLIDERS:
        lo, hi, step = _SLIDERS[f.name]
        return gr.Slider(minimum=lo, maximum=hi, step=step, value=default, **common)
    if isinstance(default, (int, float)):
        return gr.Number(value=default, precision=0 if isinstance(default, int) else None, **common)
    return gr.Textbox(value="", placeholder="comma-separated", **common)


def _boolean(key: str):
    """Infotext reader for a checkbox: the API's paste casts with bool(), which reads "False" as True."""
    return lambda params: None if key not in params else str(params[key]).strip() == "True"


class LoratorioScript(scripts.Script):
    def title(self):
        return SCRIPT_TITLE

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        settings = [f for f in dataclasses.fields(LoratorioParams) if f.name != "enabled"]
        controls = []
        with InputAccordion(False, label="LoRAtorio", elem_id=self.elem_id("enabled")) as enabled:
            gr.Markdown("Compose the `<loratorio:NAME:STRENGTH>` LoRAs of the prompt: each runs as its own branch "
                        "and owns the image patches where it diverges most from the base model.")
            for f in settings:
                controls.append(_control(f, self.elem_id(f.name)))
        keys = [INFOTEXT_PREFIX] + [LoratorioParams.infotext_key(f.name) for f in settings]
        kinds = [bool] + [type(f.default) for f in settings]
        self.infotext_fields = [(c, _boolean(key) if kind is bool else key)
                                for c, key, kind in zip([enabled, *controls], keys, kinds, strict=True)]
        self.paste_field_names = keys
        return [enabled, *controls]

    def process(self, p, *args):
        """Errors of the hooks are kept on the session and raised from p.sample (Session.capture_errors)."""
        try:
            params = parse_script_args(args, xyz_overrides(p))
        except LoratorioError as err:  # unusable settings: the generation fails with the message
            ADAPTER.start_session(p, LoratorioParams(enabled=True), err)
            return
        if not params.enabled:
            return
        if params.use_lora_tags:
            p.all_prompts = [re.sub(r"<lora:", "<loratorio:", prompt) for prompt in p.all_prompts]
        ADAPTER.start_session(p, params)
        p.extra_generation_params.update(params.to_infotext())

    def process_batch(self, p, *args, **kwargs):
        session = get_session(p)
        if session is not None:
            with session.capture_errors():
                session.prepare()

    def process_before_every_sampling(self, p, *args, **kwargs):
        session = get_session(p)
        if session is not None:
            with session.capture_errors():
                ADAPTER.before_every_sampling(session)

    def postprocess(self, p, processed, *args):
        session = get_session(p)
        if session is not None and session.params.show_weight_maps and session.weight_maps:
            images, infotexts = weight_map_images(session, processed)
            processed.images.extend(images)
            processed.infotexts.extend(infotexts)
