"""Forge ``modules/processing.py`` = the A1111 stand-in's processing with Forge's differences.

Mirrored from Forge's ``modules/processing.py``:
- ``distilled_cfg_scale`` (3.5) on every p; Txt2Img ``hr_cfg`` (1.0) and ``hr_distilled_cfg`` (3.5);
  Img2Img ``hr_distilled_cfg``; ``p.modified_noise`` (a script may set it to replace the noise);
- ``setup_conds``: ``SdConditioning(..., distilled_cfg_scale=...)``; **``p.uc = None`` when
  ``cfg_scale == 1``** ("Skipping unconditional conditioning when CFG = 1"); ``calculate_hr_conds``:
  ``hr_uc = None`` when ``hr_cfg == 1``; ``get_conds_with_caching`` calls ``sd_model.set_clip_skip`` and
  merges ``classic_engine.last_extra_generation_params``; ``cached_params`` includes the distilled scales;
- ``process_images_inner`` per batch: ``forge_model_reload()`` -> ``forge_objects = forge_objects_original
  .shallow_copy()`` -> RNG with ``forge_objects.vae.latent_channels`` -> before_process_batch ->
  parse_extra_network_prompts -> ``extra_networks.activate`` -> ``forge_objects =
  forge_objects_after_applying_lora.shallow_copy()`` -> process_batch -> setup_conds ->
  ``extra_generation_params.update(sd_model.extra_generation_params)`` -> ``p.sample(...)``;
- Txt2Img.sample / Img2Img.sample: ``forge_objects = forge_objects_after_applying_lora.shallow_copy()``,
  ``apply_token_merging``, then ``scripts.process_before_every_sampling(p, x=, noise=, c=, uc=)``
  (img2img: ``x=init_latent``), then ``modified_noise``, then the sampler;
- hires ``sample_hr_pass``: ``process_before_every_sampling`` TWICE (once before the forge_objects reset,
  whose patches are thrown away, once after), ``p.is_hr_pass`` True, CFGDenoiser uses ``p.hr_cfg``;
- infotext "Distilled CFG Scale" when ``sd_model.use_distilled_cfg_scale``; "Hires CFG Scale".
Everything else (dataclass surface, caches, Processed, create_infotext, hires latent upscale,
the toy decode) is the A1111 stand-in's, via a private copy (``modules._a1111_processing``) whose
``create_infotext`` and batch-loop hooks (``_reload_model_for_batch``, ``_latent_channels``,
``_after_extra_networks_activate``, ``_after_setup_conds``) are rebound to the Forge steps here.
The per-sampling Forge steps (forge_objects reset, token merging, process_before_every_sampling,
modified_noise; twice-called in hires) override the A1111 stand-in's ``_process_before_every_sampling``.
"""

from __future__ import annotations

from dataclasses import dataclass

import modules.shared as shared
from modules import _load_a1111, prompt_parser, sd_models, sd_samplers
from modules.shared import opts

_base = _load_a1111("processing")

opt_C = _base.opt_C
opt_f = _base.opt_f
get_fixed_seed = _base.get_fixed_seed
decode_latent_batch = _base.decode_latent_batch
image_grid = _base.image_grid
Processed = _base.Processed
latent_upscale_modes = _base.latent_upscale_modes
_AlreadyDecoded = _base._AlreadyDecoded
process_images = _base.process_images
_a1111_create_infotext = _base.create_infotext


def create_infotext(p, all_prompts, all_seeds, all_subseeds, comments=None, iteration=0, position_in_batch=0,
                    use_main_prompt=False, index=None, all_negative_prompts=None):
    firstpass_use_distilled_cfg_scale = getattr(p, 'firstpass_use_distilled_cfg_scale', getattr(p.sd_model, 'use_distilled_cfg_scale', False))
    if firstpass_use_distilled_cfg_scale:
        p.extra_generation_params.setdefault('Distilled CFG Scale', p.distilled_cfg_scale)
    return _a1111_create_infotext(p, all_prompts, all_seeds, all_subseeds, comments=comments, iteration=iteration,
                                  position_in_batch=position_in_batch, use_main_prompt=use_main_prompt, index=index,
                                  all_negative_prompts=all_negative_prompts)


@dataclass(repr=False)
class StableDiffusionProcessing(_base.StableDiffusionProcessing):
    distilled_cfg_scale: float = 3.5

    def __post_init__(self):
        super().__post_init__()
        self.modified_noise = None

    def cached_params(self, required_prompts, steps, extra_network_data, hires_steps=None, use_old_scheduling=False):
        return super().cached_params(required_prompts, steps, extra_network_data, hires_steps, use_old_scheduling) + (
            self.distilled_cfg_scale, getattr(self, 'hr_distilled_cfg', None))

    def get_conds_with_caching(self, function, required_prompts, steps, caches, extra_network_data, hires_steps=None):
        import backend.text_processing.classic_engine as classic_engine

        shared.sd_model.set_clip_skip(int(opts.CLIP_stop_at_last_layers))
        result = super().get_conds_with_caching(function, required_prompts, steps, caches, extra_network_data, hires_steps)
        shared.sd_model.extra_generation_params.update(classic_engine.last_extra_generation_params)
        classic_engine.last_extra_generation_params = {}
        return result

    def _process_before_every_sampling(self, x, noise, c, uc, for_hr=False):
        if for_hr and self.scripts is not None:  # hires: once more BEFORE the reset (its patches are thrown away)
            self.scripts.process_before_every_sampling(p=self, x=x, noise=noise, c=c, uc=uc)
        self.sd_model.forge_objects = self.sd_model.forge_objects_after_applying_lora.shallow_copy()
        sd_models.apply_token_merging(self.sd_model, self.get_token_merging_ratio(for_hr=for_hr))
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(self, x=x, noise=noise, c=c, uc=uc)
        if self.modified_noise is not None:
            noise = self.modified_noise
            self.modified_noise = None
        return noise

    def setup_conds(self):
        prompts = prompt_parser.SdConditioning(self.prompts, width=self.width, height=self.height, distilled_cfg_scale=self.distilled_cfg_scale)
        negative_prompts = prompt_parser.SdConditioning(self.negative_prompts, width=self.width, height=self.height, is_negative_prompt=True,
                                                        distilled_cfg_scale=self.distilled_cfg_scale)
        sampler_config = sd_samplers.find_sampler_config(self.sampler_name)
        total_steps = sampler_config.total_steps(self.steps) if sampler_config else self.steps
        self.step_multiplier = total_steps // self.steps
        self.firstpass_steps = total_steps

        if self.cfg_scale == 1:
            self.uc = None
            print('Skipping unconditional conditioning when CFG = 1. Negative Prompts are ignored.')
        else:
            self.uc = self.get_conds_with_caching(prompt_parser.get_learned_conditioning, negative_prompts, total_steps, [self.cached_uc],
                                                  self.extra_network_data)
        self.c = self.get_conds_with_caching(prompt_parser.get_multicond_learned_conditioning, prompts, total_steps, [self.cached_c],
                                             self.extra_network_data)


@dataclass(repr=False)
class StableDiffusionProcessingTxt2Img(_base.StableDiffusionProcessingTxt2Img, StableDiffusionProcessing):
    hr_cfg: float = 1.0
    hr_distilled_cfg: float = 3.5

    def init(self, all_prompts, all_seeds, all_subseeds):
        super().init(all_prompts, all_seeds, all_subseeds)
        if self.enable_hr:
            self.extra_generation_params["Hires CFG Scale"] = self.hr_cfg

    def sample_hr_pass(self, samples, decoded_samples, seeds, subseeds, subseed_strength, prompts):
        # Forge's sample() writes this right before calling sample_hr_pass (after the hires checkpoint reload)
        if self.sd_model.use_distilled_cfg_scale:
            self.extra_generation_params['Hires Distilled CFG Scale'] = self.hr_distilled_cfg
        return super().sample_hr_pass(samples, decoded_samples, seeds, subseeds, subseed_strength, prompts)

    def calculate_hr_conds(self):
        if self.hr_c is not None:
            return
        hr_prompts = prompt_parser.SdConditioning(self.hr_prompts, width=self.hr_upscale_to_x, height=self.hr_upscale_to_y,
                                                  distilled_cfg_scale=self.hr_distilled_cfg)
        hr_negative_prompts = prompt_parser.SdConditioning(self.hr_negative_prompts, width=self.hr_upscale_to_x, height=self.hr_upscale_to_y,
                                                           is_negative_prompt=True, distilled_cfg_scale=self.hr_distilled_cfg)
        sampler_config = sd_samplers.find_sampler_config(self.hr_sampler_name or self.sampler_name)
        steps = self.hr_second_pass_steps or self.steps
        total_steps = sampler_config.total_steps(steps) if sampler_config else steps
        if self.hr_cfg == 1:
            self.hr_uc = None
            print('Skipping unconditional conditioning (HR pass) when CFG = 1. Negative Prompts are ignored.')
        else:
            self.hr_uc = self.get_conds_with_caching(prompt_parser.get_learned_conditioning, hr_negative_prompts, self.firstpass_steps,
                                                     [self.cached_hr_uc, self.cached_uc], self.hr_extra_network_data, total_steps)
        self.hr_c = self.get_conds_with_caching(prompt_parser.get_multicond_learned_conditioning, hr_prompts, self.firstpass_steps,
                                                [self.cached_hr_c, self.cached_c], self.hr_extra_network_data, total_steps)


@dataclass(repr=False)
class StableDiffusionProcessingImg2Img(_base.StableDiffusionProcessingImg2Img, StableDiffusionProcessing):
    hr_distilled_cfg: float = 3.5


def _reload_model_for_batch(p):
    sd_models.forge_model_reload()  # back to the main model, e.g. after a refiner switch
    p.sd_model.forge_objects = p.sd_model.forge_objects_original.shallow_copy()


def _latent_channels():
    return shared.sd_model.forge_objects.vae.latent_channels


def _after_extra_networks_activate(p):
    p.sd_model.forge_objects = p.sd_model.forge_objects_after_applying_lora.shallow_copy()


def _after_setup_conds(p):
    p.extra_generation_params.update(p.sd_model.extra_generation_params)


_base._reload_model_for_batch = _reload_model_for_batch
_base._latent_channels = _latent_channels
_base._after_extra_networks_activate = _after_extra_networks_activate
_base._after_setup_conds = _after_setup_conds
_base.create_infotext = create_infotext
process_images_inner = _base.process_images_inner
