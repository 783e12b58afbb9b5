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
``process_images_inner`` / ``create_infotext`` globals are rebound to the Forge versions here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

import modules.shared as shared
from modules import _load_a1111, devices, extra_networks, prompt_parser, rng, scripts, sd_models, sd_samplers
from modules.shared import opts, state

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

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)

        x = self.rng.next()
        self.sd_model.forge_objects = self.sd_model.forge_objects_after_applying_lora.shallow_copy()
        sd_models.apply_token_merging(self.sd_model, self.get_token_merging_ratio())
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(self, x=x, noise=x, c=conditioning, uc=unconditional_conditioning)
        if self.modified_noise is not None:
            x = self.modified_noise
            self.modified_noise = None

        samples = self.sampler.sample(self, x, conditioning, unconditional_conditioning, image_conditioning=self.txt2img_image_conditioning(x))
        del x
        if not self.enable_hr:
            return samples

        with sd_models.SkipWritingToConfig():
            sd_models.reload_model_weights(info=self.hr_checkpoint_info)
        if self.sd_model.use_distilled_cfg_scale:
            self.extra_generation_params['Hires Distilled CFG Scale'] = self.hr_distilled_cfg
        return self.sample_hr_pass(samples, None, seeds, subseeds, subseed_strength, prompts)

    def sample_hr_pass(self, samples, decoded_samples, seeds, subseeds, subseed_strength, prompts):
        if shared.state.interrupted:
            return samples

        self.is_hr_pass = True
        self.sampler = sd_samplers.create_sampler(self.hr_sampler_name or self.sampler_name, self.sd_model)
        samples = torch.nn.functional.interpolate(samples, size=(self.hr_upscale_to_y // opt_f, self.hr_upscale_to_x // opt_f),
                                                  mode=self.latent_scale_mode["mode"], antialias=self.latent_scale_mode["antialias"])
        image_conditioning = self.txt2img_image_conditioning(samples)
        shared.state.nextjob()

        self.rng = rng.ImageRNG(samples.shape[1:], self.seeds, subseeds=self.subseeds, subseed_strength=self.subseed_strength)
        noise = self.rng.next()

        if not self.disable_extra_networks:
            with devices.autocast():
                extra_networks.activate(self, self.hr_extra_network_data)
        with devices.autocast():
            self.calculate_hr_conds()

        if self.scripts is not None:
            self.scripts.before_hr(self)
            self.scripts.process_before_every_sampling(p=self, x=samples, noise=noise, c=self.hr_c, uc=self.hr_uc)

        self.sd_model.forge_objects = self.sd_model.forge_objects_after_applying_lora.shallow_copy()
        sd_models.apply_token_merging(self.sd_model, self.get_token_merging_ratio(for_hr=True))

        if self.scripts is not None:
            self.scripts.process_before_every_sampling(self, x=samples, noise=noise, c=self.hr_c, uc=self.hr_uc)
        if self.modified_noise is not None:
            noise = self.modified_noise
            self.modified_noise = None

        samples = self.sampler.sample_img2img(self, samples, noise, self.hr_c, self.hr_uc, steps=self.hr_second_pass_steps or self.steps,
                                              image_conditioning=image_conditioning)
        self.sampler = None
        decoded_samples = decode_latent_batch(self.sd_model, samples, target_device=devices.cpu, check_for_nans=True)
        self.is_hr_pass = False
        return _AlreadyDecoded(decoded_samples)

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

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        x = self.rng.next()
        if self.initial_noise_multiplier != 1.0:
            self.extra_generation_params["Noise multiplier"] = self.initial_noise_multiplier
            x *= self.initial_noise_multiplier

        self.sd_model.forge_objects = self.sd_model.forge_objects_after_applying_lora.shallow_copy()
        sd_models.apply_token_merging(self.sd_model, self.get_token_merging_ratio())
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(self, x=self.init_latent, noise=x, c=conditioning, uc=unconditional_conditioning)
        if self.modified_noise is not None:
            x = self.modified_noise
            self.modified_noise = None

        samples = self.sampler.sample_img2img(self, self.init_latent, x, conditioning, unconditional_conditioning,
                                              image_conditioning=self.image_conditioning)
        del x
        return samples


def process_images_inner(p: StableDiffusionProcessing) -> Processed:
    if isinstance(p.prompt, list):
        assert len(p.prompt) > 0
    else:
        assert p.prompt is not None

    seed = get_fixed_seed(p.seed)
    subseed = get_fixed_seed(p.subseed)
    if p.restore_faces is None:
        p.restore_faces = False
    if p.tiling is None:
        p.tiling = False

    p.sd_model_name = shared.sd_model.sd_checkpoint_info.name_for_extra
    p.sd_model_hash = shared.sd_model.sd_model_hash
    p.setup_prompts()
    p.all_seeds = seed if isinstance(seed, list) else [int(seed) + (x if p.subseed_strength == 0 else 0) for x in range(len(p.all_prompts))]
    p.all_subseeds = subseed if isinstance(subseed, list) else [int(subseed) + x for x in range(len(p.all_prompts))]

    if p.scripts is not None:
        p.scripts.process(p)

    infotexts = []
    output_images = []
    with torch.no_grad():
        p.init(p.all_prompts, p.all_seeds, p.all_subseeds)
        if state.job_count == -1:
            state.job_count = p.n_iter

        for n in range(p.n_iter):
            p.iteration = n
            if state.skipped:
                state.skipped = False
            if state.interrupted or state.stopping_generation:
                break

            sd_models.forge_model_reload()  # back to the main model, e.g. after a refiner switch

            p.sd_model.forge_objects = p.sd_model.forge_objects_original.shallow_copy()

            p.prompts = p.all_prompts[n * p.batch_size:(n + 1) * p.batch_size]
            p.negative_prompts = p.all_negative_prompts[n * p.batch_size:(n + 1) * p.batch_size]
            p.seeds = p.all_seeds[n * p.batch_size:(n + 1) * p.batch_size]
            p.subseeds = p.all_subseeds[n * p.batch_size:(n + 1) * p.batch_size]

            latent_channels = shared.sd_model.forge_objects.vae.latent_channels
            p.rng = rng.ImageRNG((latent_channels, p.height // opt_f, p.width // opt_f), p.seeds, subseeds=p.subseeds,
                                 subseed_strength=p.subseed_strength)

            if p.scripts is not None:
                p.scripts.before_process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)

            if len(p.prompts) == 0:
                break

            p.parse_extra_network_prompts()

            if not p.disable_extra_networks:
                with devices.autocast():
                    extra_networks.activate(p, p.extra_network_data)

            p.sd_model.forge_objects = p.sd_model.forge_objects_after_applying_lora.shallow_copy()

            if p.scripts is not None:
                p.scripts.process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)

            p.setup_conds()

            p.extra_generation_params.update(p.sd_model.extra_generation_params)

            samples_ddim = p.sample(conditioning=p.c, unconditional_conditioning=p.uc, seeds=p.seeds, subseeds=p.subseeds,
                                    subseed_strength=p.subseed_strength, prompts=p.prompts)

            if p.scripts is not None:
                ps = scripts.PostSampleArgs(samples_ddim)
                p.scripts.post_sample(p, ps)
                samples_ddim = ps.samples

            if getattr(samples_ddim, "already_decoded", False):
                x_samples_ddim = samples_ddim
            else:
                x_samples_ddim = decode_latent_batch(p.sd_model, samples_ddim, target_device=devices.cpu, check_for_nans=True)

            x_samples_ddim = torch.stack(list(x_samples_ddim)).float()
            x_samples_ddim = torch.clamp((x_samples_ddim + 1.0) / 2.0, min=0.0, max=1.0)
            del samples_ddim
            state.nextjob()

            if p.scripts is not None:
                p.scripts.postprocess_batch(p, x_samples_ddim, batch_number=n)
                p.prompts = p.all_prompts[n * p.batch_size:(n + 1) * p.batch_size]
                p.negative_prompts = p.all_negative_prompts[n * p.batch_size:(n + 1) * p.batch_size]
                batch_params = scripts.PostprocessBatchListArgs(list(x_samples_ddim))
                p.scripts.postprocess_batch_list(p, batch_params, batch_number=n)
                x_samples_ddim = batch_params.images

            def infotext(index=0, use_main_prompt=False):
                return create_infotext(p, p.prompts, p.seeds, p.subseeds, use_main_prompt=use_main_prompt, index=index,
                                       all_negative_prompts=p.negative_prompts)

            for i, x_sample in enumerate(x_samples_ddim):
                p.batch_index = i
                x_sample = (255.0 * np.moveaxis(x_sample.cpu().numpy(), 0, 2)).astype(np.uint8)
                image = Image.fromarray(x_sample)
                if p.scripts is not None:
                    pp = scripts.PostprocessImageArgs(image)
                    p.scripts.postprocess_image(p, pp)
                    image = pp.image
                    ppmo = scripts.PostProcessMaskOverlayArgs(i, None, None)
                    p.scripts.postprocess_maskoverlay(p, ppmo)
                    pp = scripts.PostprocessImageArgs(image)
                    p.scripts.postprocess_image_after_composite(p, pp)
                    image = pp.image
                text = infotext(i)
                infotexts.append(text)
                if opts.enable_pnginfo:
                    image.info["parameters"] = text
                output_images.append(image)

        if not infotexts:
            infotexts.append(Processed(p, []).infotext(p, 0))

        p.color_corrections = None
        index_of_first_image = 0
        unwanted_grid = len(output_images) < 2 and opts.grid_only_if_multiple
        if opts.return_grid and not p.do_not_save_grid and not unwanted_grid:
            grid = image_grid(output_images, p.batch_size)
            text = create_infotext(p, p.all_prompts, p.all_seeds, p.all_subseeds, use_main_prompt=True)
            infotexts.insert(0, text)
            if opts.enable_pnginfo:
                grid.info["parameters"] = text
            output_images.insert(0, grid)
            index_of_first_image = 1

    if not p.disable_extra_networks and p.extra_network_data:
        extra_networks.deactivate(p, p.extra_network_data)

    res = Processed(p, images_list=output_images, seed=p.all_seeds[0], info=infotexts[0], subseed=p.all_subseeds[0],
                    index_of_first_image=index_of_first_image, infotexts=infotexts)

    if p.scripts is not None:
        p.scripts.postprocess(p, res)

    return res


_base.process_images_inner = process_images_inner
_base.create_infotext = create_infotext
