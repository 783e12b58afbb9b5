"""A stand-in of ADetailer's inpaint passes (tests only; own rewrite of what another extension's script sees).

Mirrors Bing-su/adetailer v25.3.0 (``scripts/!adetailer.py`` at commit 36189cb): an always-on script whose
``postprocess_image`` details each region of an image in a pass of its own, per ``_postprocess_image_inner`` and
``get_i2i_p``: an img2img ``p`` (``StableDiffusionProcessingImg2Img`` of the image, batch 1, the generation's seed,
sampler, steps, CFG and size, its ``extra_generation_params`` without the callables, ``do_not_save_samples``), whose
``scripts`` is a copy of the generation's runner with the always-on scripts filtered to the file names in
*Script names to apply to ADetailer* plus its built-in ones (``script_filter``), and whose ``script_args`` are
copies of the generation's; ``_ad_disabled`` and ``_ad_inner`` set; per region a copy of it with the region in
``image_mask``, the ADetailer prompt (blank: the generation's prompt of that image), then ``process_images``; the
next region starts from the last result, which replaces the image. Around the passes, as ADetailer does
(``need_call_postprocess``, ``need_call_process``): before them, for a batch's first image, the scripts' ``postprocess``
on a copy of ``p``; after them, for a batch's last image, the scripts' ``before_process`` and ``process`` on a copy.
Stand-in only: the regions are given (no detector), one ADetailer tab, no ControlNet, no [SEP]/[SKIP] prompts.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from copy import copy

# ADetailer's default "Script names to apply to ADetailer" (args.py SCRIPT_DEFAULT) and its built-in ones
SCRIPT_DEFAULT = "dynamic_prompting,dynamic_thresholding,lora_block_weight,negpip,wildcard_recursive,wildcards"
BUILTIN_SCRIPT = "hypertile_script,soft_inpainting"


def adetailer_script(scripts, processing, regions: Callable, *, script_names: str = SCRIPT_DEFAULT,
                     ad_prompt: str = "", denoising_strength: float = 0.4) -> type:
    """An always-on Script class detailing the regions ``regions(image)`` returns (PIL "L" masks of its size)."""

    class ADetailerStandin(scripts.Script):
        filename = os.path.join("extensions", "adetailer", "scripts", "!adetailer.py")

        def title(self):
            return "ADetailer"

        def show(self, is_img2img):
            return scripts.AlwaysVisible

        def ui(self, is_img2img):
            return []

        def script_filter(self, p):
            runner = copy(p.scripts)
            names = {n.strip() for n in (script_names + "," + BUILTIN_SCRIPT).split(",")}
            runner.alwayson_scripts = [s for s in runner.alwayson_scripts
                                       if os.path.splitext(os.path.basename(s.filename))[0] in names]
            return runner, type(p.script_args)(copy(a) for a in p.script_args)

        def postprocess_image(self, p, pp, *args):
            if getattr(p, "_ad_disabled", False):
                return
            i = p.iteration * p.batch_size + p.batch_index
            i2i = processing.StableDiffusionProcessingImg2Img(
                init_images=[pp.image], resize_mode=0, denoising_strength=denoising_strength, mask=None,
                inpaint_full_res=True, sd_model=p.sd_model, prompt="", negative_prompt="", seed=p.all_seeds[i],
                subseed=p.all_subseeds[i], sampler_name=p.sampler_name, batch_size=1, n_iter=1, steps=p.steps,
                cfg_scale=p.cfg_scale, width=p.width, height=p.height,
                extra_generation_params={k: v for k, v in p.extra_generation_params.items() if not callable(v)},
                do_not_save_samples=True, do_not_save_grid=True)
            i2i.scripts, i2i.script_args = self.script_filter(p)
            i2i._ad_disabled = True
            i2i._ad_inner = True
            if p.batch_index == 0:
                p.scripts.postprocess(copy(p), processing.Processed(p, [], p.seed, ""))
            processed = None
            p2 = copy(i2i)
            for mask in regions(pp.image):
                p2.image_mask = mask
                p2.prompt = ad_prompt or p.all_prompts[i]
                p2.negative_prompt = p.all_negative_prompts[i]
                processed = processing.process_images(p2)
                p2 = copy(i2i)
                p2.init_images = [processed.images[0]]
            if processed is not None:
                pp.image = processed.images[0]
            if p.batch_index == p.batch_size - 1:
                copy_p = copy(p)
                p.scripts.before_process(copy_p)
                p.scripts.process(copy_p)

    return ADetailerStandin
