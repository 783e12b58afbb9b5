"""Stand-in for ``modules/shared.py`` (+ ``shared_state.py``, ``options.py``) of A1111 WebUI v1.10.1.

Only what LoRAtorio and the stand-in pipeline read. ``sd_model`` is a plain module attribute here
(the real one is a property that lazily loads a checkpoint): tests assign it.
"""

from __future__ import annotations

import os
import types


class OptionInfo:
    """``shared.OptionInfo`` (options.py): the builder methods return self, as in the WebUI."""

    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None,
                 section=None, refresh=None, comment_before="", comment_after="", infotext=None,
                 restrict_api=False, category_id=None):
        self.default = default
        self.label = label
        self.component = component
        self.component_args = component_args
        self.onchange = onchange
        self.section = section
        self.refresh = refresh
        self.infotext = infotext
        self.comment_before = comment_before
        self.comment_after = comment_after
        self.restrict_api = restrict_api
        self.category_id = category_id

    def link(self, label, url):
        return self

    def js(self, label, js_func):
        return self

    def info(self, info):
        return self

    def html(self, html):
        return self

    def needs_restart(self):
        return self

    def needs_reload_ui(self):
        return self


_DEFAULTS = {
    # sampling / CFG (sd_samplers_cfg_denoiser.py)
    "batch_cond_uncond": True,
    "skip_early_cond": 0.0,
    "s_min_uncond": 0.0,
    "s_min_uncond_all": False,
    "pad_cond_uncond": False,
    "pad_cond_uncond_v0": False,
    "live_preview_content": "Prompt",
    "enable_quantization": False,
    "always_discard_next_to_last_sigma": False,
    "sgm_noise_multiplier": False,
    "img2img_fix_steps": False,
    "img2img_extra_noise": 0.0,
    "eta_ddim": 0.0,
    "eta_ancestral": 1.0,
    # refiner / hires (sd_samplers_common.apply_refiner, processing.py)
    "refiner_switch_by_sample_steps": False,
    "hires_fix_refiner_pass": "second pass",
    "hires_fix_use_firstpass_conds": False,
    # cond cache key (processing.cached_params)
    "persistent_cond_cache": True,
    "use_old_scheduling": False,
    "CLIP_stop_at_last_layers": 1,
    "sdxl_crop_left": 0,
    "sdxl_crop_top": 0,
    "fp8_storage": "Disable",
    "cache_fp16_weight": False,
    "emphasis": "Original",
    # extra networks / Lora
    "extra_networks_default_multiplier": 1.0,
    "lora_preferred_name": "Alias from file",
    "lora_add_hashes_to_infotext": True,
    "lora_functional": False,
    "sd_lora": "None",
    # infotext / saving
    "infotext_skip_pasting": [],
    "add_model_hash_to_info": False,
    "add_model_name_to_info": False,
    "add_version_to_infotext": False,
    "enable_pnginfo": True,
    "samples_save": False,
    "save_incomplete_images": False,
    "override_settings_restore_afterwards": True,
    "sd_model_checkpoint": None,
    "return_grid": True,
    "grid_only_if_multiple": True,
}


class Options:
    """``shared.opts``: attribute access backed by ``.data``; unknown keys raise AttributeError."""

    def __init__(self):
        object.__setattr__(self, "data", dict(_DEFAULTS))
        object.__setattr__(self, "data_labels", {k: OptionInfo(v) for k, v in _DEFAULTS.items()})

    def __getattr__(self, item):
        data = object.__getattribute__(self, "data")
        if item in data:
            return data[item]
        labels = object.__getattribute__(self, "data_labels")
        if item in labels:
            return labels[item].default
        raise AttributeError(item)

    def __setattr__(self, key, value):
        self.data[key] = value

    def add_option(self, key, info: OptionInfo):
        self.data_labels[key] = info
        if key not in self.data:
            self.data[key] = info.default

    def get_default(self, key):
        info = self.data_labels.get(key)
        return None if info is None else info.default

    def set(self, key, value, is_api=False, run_callbacks=True):
        self.data[key] = value
        return True

    def reset(self):
        """Stand-in only: back to the defaults (tests call this between cases)."""
        self.data.clear()
        self.data.update({k: (list(v) if isinstance(v, list) else v) for k, v in _DEFAULTS.items()})


class State:
    """``shared_state.State``: the flags the sampler checks; ``begin`` clears them like the real one."""

    def __init__(self):
        self.interrupted = False
        self.skipped = False
        self.stopping_generation = False
        self.job = ""
        self.job_no = 0
        self.job_count = 0
        self.processing_has_refined_job_count = False
        self.sampling_step = 0
        self.sampling_steps = 0
        self.current_latent = None

    def interrupt(self):
        self.interrupted = True

    def skip(self):
        self.skipped = True

    def stop_generating(self):
        self.stopping_generation = True

    def nextjob(self):
        self.job_no += 1
        self.sampling_step = 0

    def begin(self, job="(unknown)"):
        self.sampling_step = 0
        self.job_count = -1
        self.processing_has_refined_job_count = False
        self.job_no = 0
        self.current_latent = None
        self.interrupted = False
        self.skipped = False
        self.stopping_generation = False
        self.job = job

    def end(self):
        self.job = ""
        self.job_count = 0


class _TotalTQDM:
    def update(self):
        pass

    def updateTotal(self, new_total):
        pass

    def clear(self):
        pass


opts = Options()
state = State()
total_tqdm = _TotalTQDM()
cmd_opts = types.SimpleNamespace(lora_dir=os.path.join("models", "Lora"), lyco_dir_backcompat=None,
                                 no_prompt_history=True, api=False, nowebui=False)
sd_model = None  # tests assign a stand-in model (standin_models.make_sd15_model / make_sdxl_model)
device = None  # filled in by modules.devices at import
prompt_styles = None


def walk_files(path, allowed_extensions=None):
    """``modules.util.walk_files`` (re-exported by shared): recursive, sorted, by extension."""
    if not path or not os.path.exists(path):
        return
    if allowed_extensions is not None:
        allowed_extensions = set(allowed_extensions)
    for root, _, files in sorted(os.walk(path, followlinks=True), key=lambda x: x[0]):
        for filename in sorted(files):
            if allowed_extensions is not None and os.path.splitext(filename)[1] not in allowed_extensions:
                continue
            yield os.path.join(root, filename)
