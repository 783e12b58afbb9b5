"""LoRAtorio: the always-visible script (accordion, script args from UI or API, infotext). Thin.

The controls are generated from LoratorioParams, in its field order, so the positional API args,
the UI, the infotext and validation all come from one place.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import gradio as gr

from modules import scripts
from modules.ui_components import InputAccordion

from lib_loratorio.choices import ROUTING_MODES, Mode
from lib_loratorio.errors import LoratorioError
from lib_loratorio.params import INFOTEXT_PREFIX, LoratorioParams
from lib_loratorio.webui.host import load_adapter
from lib_loratorio.webui.script_args import SCRIPT_TITLE, parse_script_args
from lib_loratorio.webui.session import get_session
from lib_loratorio.webui.weight_map_images import weight_map_images
from lib_loratorio.webui.xyz_axes import xyz_overrides

ADAPTER = load_adapter()
ADAPTER.register_callbacks()

# UI ranges where they are narrower than what validation allows (the API may go further).
_SLIDERS = {
    "patch_size": (1, 32, 1), "recenter": (0.0, 1.0, 0.05), "top_k": (0, 16, 1), "switch_every": (1, 20, 1),
    "default_strength": (-2.0, 2.0, 0.05), "step_start": (0.0, 1.0, 0.05), "step_end": (0.0, 1.0, 0.05),
    "refresh_first": (1, 10, 1), "refresh_every": (1, 20, 1), "hint_strength": (0.0, 20.0, 0.5),
}
# The accordion's layout, row by row: the everyday settings, then the rest under "Advanced" (closed).
_EVERYDAY_ROWS = (("mode", "show_weight_maps"), ("patch_size", "temperature"), ("recenter", "top_k"),
                  ("refresh_first", "refresh_every"))
_ADVANCED_ROWS = (("weight_norm", "selection", "switch_every"), ("hint_strength", "evaluation", "max_batch"),
                  ("default_strength", "use_lora_tags"), ("pool", "text_encoder"),
                  ("step_start", "step_end", "outside_steps"), ("weight_map_steps",))
# Settings that matter only for some values of another setting, and are shown only then.
_SHOWN_ONLY_WHEN = {
    **{name: ("mode", ROUTING_MODES) for name in ("patch_size", "temperature", "top_k", "selection", "weight_norm")},
    "hint_strength": ("mode", (*ROUTING_MODES, Mode.STACK)),  # the region hints act in these modes
    "recenter": ("mode", (Mode.LORATORIO,)),  # LoRAtorio Fast always uses the base model's negative prediction
    **{name: ("mode", (Mode.FAST,)) for name in ("refresh_first", "refresh_every")},
    "switch_every": ("mode", (Mode.SWITCH,)),
    "weight_map_steps": ("show_weight_maps", (True,)),
}
_FIELDS = {f.name: f for f in dataclasses.fields(LoratorioParams)}


def _control(f: dataclasses.Field, elem_id: str):
    meta, default = f.metadata, f.default
    common = {"label": meta["label"], "info": meta["hint"], "elem_id": elem_id}
    if f.name in _SHOWN_ONLY_WHEN:
        controller, values = _SHOWN_ONLY_WHEN[f.name]
        common["visible"] = _FIELDS[controller].default in values
    if meta["choices"]:
        return gr.Radio(choices=list(meta["choices"]), value=str(default), **common)
    if isinstance(default, bool):
        return gr.Checkbox(value=default, **common)
    if f.name in _SLIDERS:
        lo, hi, step = _SLIDERS[f.name]
        return gr.Slider(minimum=lo, maximum=hi, step=step, value=default, **common)
    if isinstance(default, (int, float)):
        return gr.Number(value=default, precision=0 if isinstance(default, int) else None, **common)
    return gr.Textbox(value="", placeholder="comma-separated", **common)


def _rows(names: tuple[tuple[str, ...], ...], make: Callable[[str], Any]) -> dict[str, Any]:
    """The controls of ``names`` (a tuple per row), made by ``make`` inside one gr.Row per row."""
    controls = {}
    for row in names:
        with gr.Row():
            for name in row:
                controls[name] = make(name)
    return controls


def _show_dependents(controls: dict[str, Any]) -> None:
    """Show or hide each setting of _SHOWN_ONLY_WHEN as the setting it depends on changes (also on paste)."""
    for controller in dict.fromkeys(c for c, _ in _SHOWN_ONLY_WHEN.values()):
        dependents = [(name, values) for name, (c, values) in _SHOWN_ONLY_WHEN.items() if c == controller]

        def show(current, wanted=tuple(values for _, values in dependents)):
            updates = [gr.update(visible=current in values) for values in wanted]
            return updates[0] if len(updates) == 1 else updates  # gradio takes one output's value bare

        controls[controller].change(fn=show, inputs=[controls[controller]],
                                    outputs=[controls[name] for name, _ in dependents])


def _reader(name: str) -> Callable[[dict], Any]:
    """The paste reader of one control: its setting as LoratorioParams.from_infotext reads the infotext (settings
    newer than it get the value the image was made with); None, which leaves the control as it is, when the
    infotext has no LoRAtorio run or a value LoRAtorio cannot read."""
    def read(fields: dict) -> Any:
        try:
            params = LoratorioParams.from_infotext(fields)
        except LoratorioError:
            return None
        if params is None:
            return None
        value = getattr(params, name)
        if isinstance(value, list):  # the textbox's text, as the infotext writes it
            return ";".join(map(str, value))
        return str(value) if _FIELDS[name].metadata["choices"] else value

    return read


class LoratorioScript(scripts.Script):
    def title(self):
        return SCRIPT_TITLE

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        """The accordion; its controls are returned in LoratorioParams field order (the positional API args)."""
        def make(name: str):
            return _control(_FIELDS[name], self.elem_id(name))

        with InputAccordion(False, label=SCRIPT_TITLE, elem_id=self.elem_id("enabled")) as enabled:
            gr.Markdown("Compose the `<loratorio:NAME:STRENGTH>` LoRAs of the prompt: each runs as its own branch "
                        "and owns the image patches where it diverges most from the base model.")
            controls = _rows(_EVERYDAY_ROWS, make)
            with gr.Accordion("Advanced", open=False, elem_id=self.elem_id("advanced")):
                controls.update(_rows(_ADVANCED_ROWS, make))
        _show_dependents(controls)
        settings = [name for name in _FIELDS if name != "enabled"]
        ordered = [enabled, *(controls[name] for name in settings)]
        keys = [INFOTEXT_PREFIX] + [LoratorioParams.infotext_key(name) for name in settings]
        self.infotext_fields = list(zip(ordered, [_reader(name) for name in _FIELDS], strict=True))
        self.paste_field_names = keys
        return ordered

    def process(self, p, *args):
        """Errors of the hooks are kept on the session and raised from p.sample (Session.capture_errors)."""
        try:
            params = parse_script_args(args, xyz_overrides(p))
        except LoratorioError as err:  # unusable settings: the generation fails with the message
            ADAPTER.start_session(p, LoratorioParams(), err)
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
