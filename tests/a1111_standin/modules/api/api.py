"""Stand-in for the txt2img path of ``modules/api/api.py`` (A1111 v1.10.1), without FastAPI.

``run_txt2img_api(request, runner)`` returns ``(status, body)``. Mirrored: ``script_name_to_index``
(case-insensitive exact title, 422 "Script '<name>' not found"), the ``Api`` class's methods the route
calls (an extension may wrap them on the class): ``init_default_script_args`` (calls each script's
``ui()`` twice inside a ``gr.Blocks`` and takes every control's ``.value``), ``init_script_args``
(alwayson ``args`` overlay, ``min(len)`` rule, dict ``args`` -> ``KeyError: 0``, selectable script -> 422),
``p.is_api = True``, ``state.begin``/``end``, ``closing(p)``, and the exception handler body
``{"error", "detail", "body", "errors"}`` (HTTPException -> its status, else 500).
The response body is ``{"images": [PIL...], "parameters": request, "info": processed.js()}`` (images as
PIL instead of base64). Left out: infotext-in-request, selectable ``script_name``/``script_args`` are
supported minimally, queueing, sampler/scheduler name validation.
"""

from __future__ import annotations

import traceback
from contextlib import closing
from types import SimpleNamespace

import gradio as gr

from modules import processing, shared


class HTTPException(Exception):
    def __init__(self, status_code: int, detail=None):
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail

    def __str__(self):
        return f"{self.status_code}: {self.detail}"


def script_name_to_index(name, scripts):
    try:
        return [script.title().lower() for script in scripts].index(name.lower())
    except Exception as e:
        raise HTTPException(status_code=422, detail=f"Script '{name}' not found") from e


class Api:
    """The methods of ``modules.api.api.Api`` that the txt2img route uses, on the class as in the WebUI
    (extensions wrap them there). ``request`` has attribute access, as the WebUI's pydantic model."""

    def get_script(self, script_name, script_runner):
        if script_name is None or script_name == "":
            return None, None
        return script_runner.scripts[script_name_to_index(script_name, script_runner.scripts)]

    def get_selectable_script(self, script_name, script_runner):
        if script_name is None or script_name == "":
            return None, None
        idx = script_name_to_index(script_name, script_runner.selectable_scripts)
        return script_runner.selectable_scripts[idx], idx

    def init_default_script_args(self, script_runner):
        last_arg_index = 1
        for script in script_runner.scripts:
            if last_arg_index < script.args_to:
                last_arg_index = script.args_to
        script_args = [None] * last_arg_index
        script_args[0] = 0
        with gr.Blocks():
            for script in script_runner.scripts:
                if script.ui(script.is_img2img):
                    script_args[script.args_from:script.args_to] = [elem.value for elem in script.ui(script.is_img2img)]
        return script_args

    def init_script_args(self, request, default_script_args, selectable_scripts, selectable_idx, script_runner, *,
                         input_script_args=None):
        script_args = default_script_args.copy()
        if input_script_args is not None:
            for index, value in input_script_args.items():
                script_args[index] = value
        if selectable_scripts:
            script_args[selectable_scripts.args_from:selectable_scripts.args_to] = request.script_args
            script_args[0] = selectable_idx + 1
        if request.alwayson_scripts:
            for name in request.alwayson_scripts.keys():
                script = self.get_script(name, script_runner)
                if script is None:
                    raise HTTPException(status_code=422, detail=f"always on script {name} not found")
                if script.alwayson is False:
                    raise HTTPException(status_code=422, detail="Cannot have a selectable script in the always on scripts params")
                if "args" in request.alwayson_scripts[name]:
                    args = request.alwayson_scripts[name]["args"]
                    for idx in range(0, min(script.args_to - script.args_from, len(args))):
                        script_args[script.args_from + idx] = args[idx]
        return script_args


def handle_exception(e: Exception):
    """Body of api_middleware's exception handler."""
    d = vars(e)
    if not isinstance(e, HTTPException):
        traceback.print_exception(type(e), e, e.__traceback__)
    return d.get("status_code", 500), {"error": type(e).__name__, "detail": d.get("detail", ""), "body": d.get("body", ""), "errors": str(e)}


_API_ONLY_KEYS = ("script_name", "script_args", "alwayson_scripts", "infotext", "send_images", "save_images", "sampler_index")
_REQUEST_DEFAULTS = {"script_name": None, "script_args": [], "alwayson_scripts": {}}


def run_txt2img_api(request: dict, runner, default_script_args=None):
    """POST /sdapi/v1/txt2img. ``runner`` must have had ``setup_ui()`` (args_from/args_to assigned)."""
    try:
        return 200, _txt2img(dict(request), runner, default_script_args)
    except Exception as e:
        return handle_exception(e)


def _txt2img(req, runner, default_script_args):
    api = Api()
    request = SimpleNamespace(**{key: req.get(key, default) for key, default in _REQUEST_DEFAULTS.items()})
    selectable_script, selectable_idx = api.get_selectable_script(request.script_name, runner)
    if default_script_args is None:
        default_script_args = api.init_default_script_args(runner)
    script_args = api.init_script_args(request, default_script_args, selectable_script, selectable_idx, runner)

    send_images = req.get("send_images", True)
    fields = set(processing.StableDiffusionProcessingTxt2Img.__dataclass_fields__)
    args = {k: v for k, v in req.items() if k not in _API_ONLY_KEYS and k in fields}
    args.setdefault("sampler_name", "Euler")
    args.update(do_not_save_samples=not req.get("save_images", False), do_not_save_grid=not req.get("save_images", False))

    with closing(processing.StableDiffusionProcessingTxt2Img(sd_model=shared.sd_model, **args)) as p:
        p.is_api = True
        p.scripts = runner
        try:
            shared.state.begin(job="scripts_txt2img")
            if selectable_script is not None:
                p.script_args = script_args
                processed = runner.run(p, *p.script_args)
            else:
                p.script_args = tuple(script_args)
                processed = processing.process_images(p)
        finally:
            shared.state.end()
            shared.total_tqdm.clear()

    images = list(processed.images) if send_images else []
    return {"images": images, "parameters": req, "info": processed.js()}
