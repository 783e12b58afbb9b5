"""Stand-in for ``modules/script_callbacks.py`` (A1111 v1.10.1).

Same registration functions, params classes and invokers. Every invoker wraps each callback in
``try/except Exception`` and prints the traceback (``report_exception``); BaseException
(``InterruptedException``, KeyboardInterrupt) passes through, as in the WebUI. Ordering is
registration order (the real per-extension ordering metadata is left out).
"""

from __future__ import annotations

import inspect
import os
from collections import namedtuple

from modules import errors


class CFGDenoiserParams:
    def __init__(self, x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond, denoiser=None):
        self.x = x
        self.image_cond = image_cond
        self.sigma = sigma
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.text_cond = text_cond
        self.text_uncond = text_uncond
        self.denoiser = denoiser


class CFGDenoisedParams:
    def __init__(self, x, sampling_step, total_sampling_steps, inner_model):
        self.x = x
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.inner_model = inner_model


class AfterCFGCallbackParams:
    def __init__(self, x, sampling_step, total_sampling_steps):
        self.x = x
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps


class ImageSaveParams:
    def __init__(self, image, p, filename, pnginfo):
        self.image = image
        self.p = p
        self.filename = filename
        self.pnginfo = pnginfo


ScriptCallback = namedtuple("ScriptCallback", ["script", "callback", "name"])

_CATEGORIES = ["app_started", "model_loaded", "ui_tabs", "ui_train_tabs", "ui_settings", "before_image_saved",
               "image_saved", "extra_noise", "cfg_denoiser", "cfg_denoised", "cfg_after_cfg", "before_component",
               "after_component", "image_grid", "infotext_pasted", "script_unloaded", "before_ui",
               "on_reload", "list_optimizers", "list_unets", "before_token_counter"]
callback_map = {f"callbacks_{c}": [] for c in _CATEGORIES}


def _caller_filename():
    for frame in inspect.stack()[1:]:
        if os.path.abspath(frame.filename) != os.path.abspath(__file__):
            return frame.filename
    return "unknown file"


def add_callback(callbacks, fun, *, name=None, category="unknown", filename=None):
    if filename is None:
        filename = _caller_filename()
    unique = f"{os.path.basename(filename)}/{category}" + (f"/{name}" if name else "")
    existing = {x.name for x in callbacks}
    base, n = unique, 1
    while unique in existing:
        unique = f"{base}-{n}"
        n += 1
    callbacks.append(ScriptCallback(filename, fun, unique))


def _add(category, callback, name):
    add_callback(callback_map[f"callbacks_{category}"], callback, name=name, category=category)


def clear_callbacks():
    for callback_list in callback_map.values():
        callback_list.clear()


def remove_current_script_callbacks():
    filename = _caller_filename()
    if filename == "unknown file":
        return
    for callback_list in callback_map.values():
        for cb in [cb for cb in callback_list if cb.script == filename]:
            callback_list.remove(cb)


def remove_callbacks_for_function(callback_func):
    for callback_list in callback_map.values():
        for cb in [cb for cb in callback_list if cb.callback == callback_func]:
            callback_list.remove(cb)


def report_exception(c, job):
    errors.report(f"Error executing callback {job} for {c.script}", exc_info=True)


def _invoke(category, job, *args, reverse=False):
    callbacks = list(callback_map[f"callbacks_{category}"])
    for c in (reversed(callbacks) if reverse else callbacks):
        try:
            c.callback(*args)
        except Exception:
            report_exception(c, job)


# ---- invokers ---------------------------------------------------------------------------------

def app_started_callback(demo, app):
    _invoke("app_started", "app_started_callback", demo, app)


def model_loaded_callback(sd_model):
    _invoke("model_loaded", "model_loaded_callback", sd_model)


def ui_settings_callback():
    _invoke("ui_settings", "ui_settings_callback")


def before_image_saved_callback(params: ImageSaveParams):
    _invoke("before_image_saved", "before_image_saved_callback", params)


def image_saved_callback(params: ImageSaveParams):
    _invoke("image_saved", "image_saved_callback", params)


def cfg_denoiser_callback(params: CFGDenoiserParams):
    _invoke("cfg_denoiser", "cfg_denoiser_callback", params)


def cfg_denoised_callback(params: CFGDenoisedParams):
    _invoke("cfg_denoised", "cfg_denoised_callback", params)


def cfg_after_cfg_callback(params: AfterCFGCallbackParams):
    _invoke("cfg_after_cfg", "cfg_after_cfg_callback", params)


def infotext_pasted_callback(infotext: str, params: dict):
    _invoke("infotext_pasted", "infotext_pasted", infotext, params)


def script_unloaded_callback():
    _invoke("script_unloaded", "script_unloaded", reverse=True)


def before_ui_callback():
    _invoke("before_ui", "before_ui", reverse=True)


# ---- registration -----------------------------------------------------------------------------

def on_app_started(callback, *, name=None):
    _add("app_started", callback, name)


def on_model_loaded(callback, *, name=None):
    _add("model_loaded", callback, name)


def on_ui_settings(callback, *, name=None):
    _add("ui_settings", callback, name)


def on_before_image_saved(callback, *, name=None):
    _add("before_image_saved", callback, name)


def on_image_saved(callback, *, name=None):
    _add("image_saved", callback, name)


def on_cfg_denoiser(callback, *, name=None):
    _add("cfg_denoiser", callback, name)


def on_cfg_denoised(callback, *, name=None):
    _add("cfg_denoised", callback, name)


def on_cfg_after_cfg(callback, *, name=None):
    _add("cfg_after_cfg", callback, name)


def on_infotext_pasted(callback, *, name=None):
    _add("infotext_pasted", callback, name)


def on_script_unloaded(callback, *, name=None):
    _add("script_unloaded", callback, name)


def on_before_ui(callback, *, name=None):
    _add("before_ui", callback, name)
