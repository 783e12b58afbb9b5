"""Stand-in for ``modules/scripts.py`` (A1111 v1.10.1): Script base class, ScriptRunner, hook dispatch.

Mirrored: method names/signatures, ``AlwaysVisible`` sentinel, ``args_from``/``args_to`` bookkeeping of
``create_script_ui``, ``inputs = [dropdown] + controls``, ``infotext_fields``/``paste_field_names``
accumulation, ``title_map``, dispatch only to always-on scripts whose class overrides the hook, each
call wrapped in ``try/except Exception`` + ``errors.report`` (swallowed), args sliced from
``p.script_args[args_from:args_to]``. ``scripts_data`` holds ScriptClassData(script_class, path, basedir, module).
Left out: before/after_component callbacks ordering metadata, script sections other than None,
postprocessing (extras) scripts, the API ScriptInfo models.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
from collections import namedtuple

import gradio as gr

from modules import errors, script_callbacks

AlwaysVisible = object()


class MaskBlendArgs:
    def __init__(self, current_latent, nmask, init_latent, mask, blended_latent, denoiser=None, sigma=None):
        self.current_latent = current_latent
        self.nmask = nmask
        self.init_latent = init_latent
        self.mask = mask
        self.blended_latent = blended_latent
        self.denoiser = denoiser
        self.is_final_blend = denoiser is None
        self.sigma = sigma


class PostSampleArgs:
    def __init__(self, samples):
        self.samples = samples


class PostprocessImageArgs:
    def __init__(self, image):
        self.image = image


class PostProcessMaskOverlayArgs:
    def __init__(self, index, mask_for_overlay, overlay_image):
        self.index = index
        self.mask_for_overlay = mask_for_overlay
        self.overlay_image = overlay_image


class PostprocessBatchListArgs:
    def __init__(self, images):
        self.images = images


class Script:
    name = None
    section = None
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    tabname = None
    group = None
    create_group = True
    infotext_fields = None
    paste_field_names = None
    api_info = None
    on_before_component_elem_id = None
    on_after_component_elem_id = None
    setup_for_ui_only = False
    controls = None

    def title(self):
        raise NotImplementedError()

    def ui(self, is_img2img):
        pass

    def show(self, is_img2img):
        return True

    def run(self, p, *args):
        pass

    def setup(self, p, *args):
        pass

    def before_process(self, p, *args):
        pass

    def process(self, p, *args):
        pass

    def before_process_batch(self, p, *args, **kwargs):
        pass

    def after_extra_networks_activate(self, p, *args, **kwargs):
        pass

    def process_before_every_sampling(self, p, *args, **kwargs):
        pass

    def process_batch(self, p, *args, **kwargs):
        pass

    def postprocess_batch(self, p, *args, **kwargs):
        pass

    def postprocess_batch_list(self, p, pp: PostprocessBatchListArgs, *args, **kwargs):
        pass

    def on_mask_blend(self, p, mba: MaskBlendArgs, *args):
        pass

    def post_sample(self, p, ps: PostSampleArgs, *args):
        pass

    def postprocess_image(self, p, pp: PostprocessImageArgs, *args):
        pass

    def postprocess_maskoverlay(self, p, ppmo: PostProcessMaskOverlayArgs, *args):
        pass

    def postprocess_image_after_composite(self, p, pp: PostprocessImageArgs, *args):
        pass

    def postprocess(self, p, processed, *args):
        pass

    def before_component(self, component, **kwargs):
        pass

    def after_component(self, component, **kwargs):
        pass

    def on_before_component(self, callback, *, elem_id):
        if self.on_before_component_elem_id is None:
            self.on_before_component_elem_id = []
        self.on_before_component_elem_id.append((elem_id, callback))

    def on_after_component(self, callback, *, elem_id):
        if self.on_after_component_elem_id is None:
            self.on_after_component_elem_id = []
        self.on_after_component_elem_id.append((elem_id, callback))

    def describe(self):
        return ""

    def elem_id(self, item_id):
        need_tabname = self.show(True) == self.show(False)
        tabkind = "img2img" if self.is_img2img else "txt2img"
        tabname = f"{tabkind}_" if need_tabname else ""
        title = "".join(c for c in self.title().lower().replace(" ", "_") if c.isalnum() or c == "_")
        return f"script_{tabname}{title}_{item_id}"

    def before_hr(self, p, *args):
        pass


ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])

scripts_data: list[ScriptClassData] = []
scripts_txt2img: "ScriptRunner" = None
scripts_img2img: "ScriptRunner" = None


def load_module(path):
    """``script_loading.load_module``: the module is named after the file's basename ("x.py")."""
    spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _class_data(script_class, module=None):
    module = module if module is not None else inspect.getmodule(script_class)
    path = getattr(module, "__file__", None) or f"{script_class.__module__}.py"
    return ScriptClassData(script_class, path, os.path.dirname(os.path.dirname(os.path.abspath(path))), module)


def load_scripts(script_files=(), script_classes=()):
    """Stand-in for ``scripts.load_scripts``: clears callbacks (as the real one does on every (re)load),
    loads each script file as a module named by its basename and registers its Script subclasses,
    registers any given classes, then creates ``scripts_txt2img`` / ``scripts_img2img``."""
    global scripts_txt2img, scripts_img2img
    scripts_data.clear()
    script_callbacks.clear_callbacks()
    for path in script_files:
        module = load_module(path)
        for obj in module.__dict__.values():
            if inspect.isclass(obj) and issubclass(obj, Script) and obj is not Script and obj.__module__ == module.__name__:
                scripts_data.append(ScriptClassData(obj, path, os.path.dirname(os.path.dirname(path)), module))
    for cls in script_classes:
        scripts_data.append(_class_data(cls))
    scripts_txt2img = ScriptRunner()
    scripts_img2img = ScriptRunner()
    return scripts_data


def wrap_call(func, filename, funcname, *args, default=None, **kwargs):
    try:
        return func(*args, **kwargs)
    except Exception:
        errors.report(f"Error calling: {filename}/{funcname}", exc_info=True)
    return default


class ScriptRunner:
    def __init__(self):
        self.scripts = []
        self.selectable_scripts = []
        self.alwayson_scripts = []
        self.titles = []
        self.title_map = {}
        self.infotext_fields = []
        self.paste_field_names = []
        self.inputs = [None]
        self.callback_map = {}
        self.is_img2img = False

    def initialize_scripts(self, is_img2img, script_classes=None):
        """Instantiates every class of ``scripts_data`` (or of ``script_classes``, stand-in extension)."""
        self.scripts.clear()
        self.alwayson_scripts.clear()
        self.selectable_scripts.clear()
        self.is_img2img = is_img2img
        data = scripts_data if script_classes is None else [_class_data(c) for c in script_classes]
        for script_data in data:
            try:
                script = script_data.script_class()
            except Exception:
                errors.report(f"Error # failed to initialize Script {script_data.module}: ", exc_info=True)
                continue
            script.filename = script_data.path
            script.is_txt2img = not is_img2img
            script.is_img2img = is_img2img
            script.tabname = "img2img" if is_img2img else "txt2img"
            visibility = script.show(script.is_img2img)
            if visibility == AlwaysVisible:
                self.scripts.append(script)
                self.alwayson_scripts.append(script)
                script.alwayson = True
            elif visibility:
                self.scripts.append(script)
                self.selectable_scripts.append(script)
        self.callback_map.clear()

    # ---- UI -----------------------------------------------------------------------------------
    def create_script_ui(self, script):
        script.args_from = len(self.inputs)
        script.args_to = len(self.inputs)
        try:
            self.create_script_ui_inner(script)
        except Exception:
            errors.report(f"Error creating UI for {script.name}: ", exc_info=True)

    def create_script_ui_inner(self, script):
        controls = wrap_call(script.ui, script.filename, "ui", script.is_img2img)
        script.controls = controls
        if controls is None:
            return
        script.name = wrap_call(script.title, script.filename, "title", default=script.filename).lower()
        for control in controls:
            control.custom_script_source = os.path.basename(script.filename)
        if script.infotext_fields is not None:
            self.infotext_fields += script.infotext_fields
        if script.paste_field_names is not None:
            self.paste_field_names += script.paste_field_names
        self.inputs += controls
        script.args_to = len(self.inputs)

    def setup_ui_for_section(self, section, scriptlist=None):
        if scriptlist is None:
            scriptlist = self.alwayson_scripts
        for script in scriptlist:
            if script.alwayson and script.section != section:
                continue
            if script.create_group:
                with gr.Group(visible=script.alwayson) as group:
                    self.create_script_ui(script)
                script.group = group
            else:
                self.create_script_ui(script)

    def prepare_ui(self):
        self.inputs = [None]

    def setup_ui(self):
        """Builds the scripts' UI inside a stand-in ``gr.Blocks`` (the real one runs inside the tab's
        Blocks) and returns ``self.inputs``."""
        self.prepare_ui()
        all_titles = [wrap_call(s.title, s.filename, "title") or s.filename for s in self.scripts]
        self.title_map = {title.lower(): s for title, s in zip(all_titles, self.scripts)}
        self.titles = [wrap_call(s.title, s.filename, "title") or f"{s.filename} [error]" for s in self.selectable_scripts]
        parent = gr._context_stack[-1] if gr._context_stack else None
        blocks = gr.Blocks() if parent is None else None
        if blocks is not None:
            blocks.__enter__()
        try:
            self.setup_ui_for_section(None)
            dropdown = gr.Dropdown(label="Script", elem_id="script_list", choices=["None"] + self.titles, value="None", type="index")
            self.inputs[0] = dropdown
            self.setup_ui_for_section(None, self.selectable_scripts)
        finally:
            if blocks is not None:
                blocks.__exit__(None, None, None)
        self.infotext_fields.append((dropdown, lambda x: gr.update(value=x.get("Script", "None"))))
        self.blocks = blocks
        return self.inputs

    def run(self, p, *args):
        script_index = args[0]
        if script_index == 0 or script_index is None:
            return None
        script = self.selectable_scripts[script_index - 1]
        if script is None:
            return None
        return script.run(p, *args[script.args_from:script.args_to])

    def script(self, title):
        return self.title_map.get(title.lower())

    # ---- dispatch -----------------------------------------------------------------------------
    def list_scripts_for_method(self, method_name):
        if method_name in ("before_component", "after_component"):
            return self.scripts
        return self.alwayson_scripts

    def ordered_scripts(self, method_name):
        return [s for s in self.list_scripts_for_method(method_name)
                if getattr(s.__class__, method_name, None) != getattr(Script, method_name, None)]

    def _dispatch(self, method_name, p, *lead, **kwargs):
        for script in self.ordered_scripts(method_name):
            try:
                script_args = p.script_args[script.args_from:script.args_to]
                getattr(script, method_name)(p, *lead, *script_args, **kwargs)
            except Exception:
                errors.report(f"Error running {method_name}: {script.filename}", exc_info=True)

    def setup_scrips(self, p, *, is_ui=True):
        for script in self.ordered_scripts("setup"):
            if not is_ui and script.setup_for_ui_only:
                continue
            try:
                script.setup(p, *p.script_args[script.args_from:script.args_to])
            except Exception:
                errors.report(f"Error running setup: {script.filename}", exc_info=True)

    def before_process(self, p):
        self._dispatch("before_process", p)

    def process(self, p):
        self._dispatch("process", p)

    def process_before_every_sampling(self, p, **kwargs):
        self._dispatch("process_before_every_sampling", p, **kwargs)

    def before_process_batch(self, p, **kwargs):
        self._dispatch("before_process_batch", p, **kwargs)

    def after_extra_networks_activate(self, p, **kwargs):
        self._dispatch("after_extra_networks_activate", p, **kwargs)

    def process_batch(self, p, **kwargs):
        self._dispatch("process_batch", p, **kwargs)

    def postprocess(self, p, processed):
        self._dispatch("postprocess", p, processed)

    def postprocess_batch(self, p, images, **kwargs):
        self._dispatch("postprocess_batch", p, images=images, **kwargs)

    def postprocess_batch_list(self, p, pp: PostprocessBatchListArgs, **kwargs):
        self._dispatch("postprocess_batch_list", p, pp, **kwargs)

    def post_sample(self, p, ps: PostSampleArgs):
        self._dispatch("post_sample", p, ps)

    def on_mask_blend(self, p, mba: MaskBlendArgs):
        self._dispatch("on_mask_blend", p, mba)

    def postprocess_image(self, p, pp: PostprocessImageArgs):
        self._dispatch("postprocess_image", p, pp)

    def postprocess_maskoverlay(self, p, ppmo: PostProcessMaskOverlayArgs):
        self._dispatch("postprocess_maskoverlay", p, ppmo)

    def postprocess_image_after_composite(self, p, pp: PostprocessImageArgs):
        self._dispatch("postprocess_image_after_composite", p, pp)

    def before_hr(self, p):
        self._dispatch("before_hr", p)
