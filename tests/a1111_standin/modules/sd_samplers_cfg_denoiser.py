"""Stand-in for ``modules/sd_samplers_cfg_denoiser.py`` (A1111 v1.10.1): the CFG wrapper.

Follows the real ``CFGDenoiser.forward`` step by step: interrupt check -> apply_refiner -> per-step
conds (reconstruct_*) -> row layout (each image's AND sub-prompt rows, image by image, then B uncond
rows) -> CFGDenoiserParams + cfg_denoiser_callback with read-back -> skip_uncond (skip_early_cond /
NGMS; trims x_in and sigma_in, NOT image_cond_in) -> optional padding -> one of the three call
patterns, always ``self.inner_model(x_in[a:b], sigma_in[a:b], cond=make_condition_dict(...))`` ->
fake uncond -> cfg_denoised_callback -> combine_denoised -> last_latent/preview ->
cfg_after_cfg_callback (x read back) -> ``self.step += 1``.
Left out: InstructPix2Pix edit models (``is_edit_model`` is computed but only AND-asserted),
unCLIP's ``crossattn-adm`` condition dict is kept, inpaint masks are blended but untested.
"""

from __future__ import annotations

import torch

import modules.shared as shared
from modules import prompt_parser, sd_samplers_common
from modules.script_callbacks import (
    AfterCFGCallbackParams,
    CFGDenoisedParams,
    CFGDenoiserParams,
    cfg_after_cfg_callback,
    cfg_denoised_callback,
    cfg_denoiser_callback,
)
from modules.shared import opts, state


def catenate_conds(conds):
    if isinstance(conds[0], dict):
        return {key: torch.cat([c[key] for c in conds]) for key in conds[0]}
    return torch.cat(conds)


def subscript_cond(cond, a, b):
    if isinstance(cond, dict):
        return {key: value[a:b] for key, value in cond.items()}
    return cond[a:b]


def pad_cond(tensor, repeats, empty):
    if isinstance(tensor, dict):
        tensor["crossattn"] = pad_cond(tensor["crossattn"], repeats, empty)
        return tensor
    return torch.cat([tensor, empty.repeat((tensor.shape[0], repeats, 1))], dim=1)


class CFGDenoiser(torch.nn.Module):
    def __init__(self, sampler):
        super().__init__()
        self.model_wrap = None
        self.mask = None
        self.nmask = None
        self.init_latent = None
        self.steps = None
        self.total_steps = None  # config.total_steps(steps): denoiser calls expected
        self.step = 0
        self.image_cfg_scale = None
        self.padded_cond_uncond = False
        self.padded_cond_uncond_v0 = False
        self.sampler = sampler
        self.model_wrap = None
        self.p = None
        self.cond_scale_miltiplier = 1.0  # sic
        self.need_last_noise_uncond = False
        self.last_noise_uncond = None
        self.mask_before_denoising = False

    @property
    def inner_model(self):
        raise NotImplementedError()

    def combine_denoised(self, x_out, conds_list, uncond, cond_scale):
        denoised_uncond = x_out[-uncond.shape[0]:]
        denoised = torch.clone(denoised_uncond)
        for i, conds in enumerate(conds_list):
            for cond_index, weight in conds:
                denoised[i] += (x_out[cond_index] - denoised_uncond[i]) * (weight * cond_scale)
        return denoised

    def combine_denoised_for_edit_model(self, x_out, cond_scale):
        out_cond, out_img_cond, out_uncond = x_out.chunk(3)
        return out_uncond + cond_scale * (out_cond - out_img_cond) + self.image_cfg_scale * (out_img_cond - out_uncond)

    def get_pred_x0(self, x_in, x_out, sigma):
        return x_out

    def update_inner_model(self):
        self.model_wrap = None
        c, uc = self.p.get_conds()
        self.sampler.sampler_extra_args["cond"] = c
        self.sampler.sampler_extra_args["uncond"] = uc

    def pad_cond_uncond(self, cond, uncond):
        empty = shared.sd_model.cond_stage_model_empty_prompt
        num_repeats = (cond.shape[1] - uncond.shape[1]) // empty.shape[1]
        if num_repeats < 0:
            cond = pad_cond(cond, -num_repeats, empty)
            self.padded_cond_uncond = True
        elif num_repeats > 0:
            uncond = pad_cond(uncond, num_repeats, empty)
            self.padded_cond_uncond = True
        return cond, uncond

    def pad_cond_uncond_v0(self, cond, uncond):
        is_dict = isinstance(uncond, dict)
        vec = uncond["crossattn"] if is_dict else uncond
        target = cond.shape[1]
        if vec.shape[1] < target:
            vec = torch.cat([vec, vec[:, -1:].repeat(1, target - vec.shape[1], 1)], dim=1)
            self.padded_cond_uncond_v0 = True
        elif vec.shape[1] > target:
            vec = vec[:, :target]
            self.padded_cond_uncond_v0 = True
        if is_dict:
            uncond["crossattn"] = vec
        else:
            uncond = vec
        return cond, uncond

    def forward(self, x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond):
        if state.interrupted or state.skipped:
            raise sd_samplers_common.InterruptedException

        if sd_samplers_common.apply_refiner(self, sigma):
            cond = self.sampler.sampler_extra_args["cond"]
            uncond = self.sampler.sampler_extra_args["uncond"]

        is_edit_model = shared.sd_model.cond_stage_key == "edit" and self.image_cfg_scale is not None and self.image_cfg_scale != 1.0
        if is_edit_model:
            raise NotImplementedError("stand-in: InstructPix2Pix edit models are left out")

        conds_list, tensor = prompt_parser.reconstruct_multicond_batch(cond, self.step)
        uncond = prompt_parser.reconstruct_cond_batch(uncond, self.step)

        def apply_blend(current_latent):
            blended = current_latent * self.nmask + self.init_latent * self.mask
            if self.p.scripts is not None:
                from modules import scripts
                mba = scripts.MaskBlendArgs(current_latent, self.nmask, self.init_latent, self.mask, blended, denoiser=self, sigma=sigma)
                self.p.scripts.on_mask_blend(self.p, mba)
                blended = mba.blended_latent
            return blended

        if self.mask_before_denoising and self.mask is not None:
            x = apply_blend(x)

        batch_size = len(conds_list)
        repeats = [len(rows) for rows in conds_list]

        if shared.sd_model.model.conditioning_key == "crossattn-adm":
            image_uncond = torch.zeros_like(image_cond)

            def make_condition_dict(c_crossattn, c_adm):
                return {"c_crossattn": [c_crossattn], "c_adm": c_adm}
        else:
            image_uncond = image_cond
            if isinstance(uncond, dict):
                def make_condition_dict(c_crossattn, c_concat):
                    return {**c_crossattn, "c_concat": [c_concat]}
            else:
                def make_condition_dict(c_crossattn, c_concat):
                    return {"c_crossattn": [c_crossattn], "c_concat": [c_concat]}

        def per_cond_rows(t):
            return [t[i:i + 1].expand(n, *t.shape[1:]) for i, n in enumerate(repeats)]

        x_in = torch.cat(per_cond_rows(x) + [x])
        sigma_in = torch.cat(per_cond_rows(sigma) + [sigma])
        image_cond_in = torch.cat(per_cond_rows(image_cond) + [image_uncond])

        params = CFGDenoiserParams(x_in, image_cond_in, sigma_in, state.sampling_step, state.sampling_steps, tensor, uncond, self)
        cfg_denoiser_callback(params)
        x_in = params.x
        image_cond_in = params.image_cond
        sigma_in = params.sigma
        tensor = params.text_cond
        uncond = params.text_uncond

        skip_uncond = False
        if opts.skip_early_cond != 0.0 and self.step / self.total_steps <= opts.skip_early_cond:
            skip_uncond = True
            self.p.extra_generation_params["Skip Early CFG"] = opts.skip_early_cond
        elif (self.step % 2 or opts.s_min_uncond_all) and s_min_uncond > 0 and sigma[0] < s_min_uncond and not is_edit_model:
            skip_uncond = True
            self.p.extra_generation_params["NGMS"] = s_min_uncond
            if opts.s_min_uncond_all:
                self.p.extra_generation_params["NGMS all steps"] = opts.s_min_uncond_all

        if skip_uncond:
            x_in = x_in[:-batch_size]
            sigma_in = sigma_in[:-batch_size]

        self.padded_cond_uncond = False
        self.padded_cond_uncond_v0 = False
        if opts.pad_cond_uncond_v0 and tensor.shape[1] != uncond.shape[1]:
            tensor, uncond = self.pad_cond_uncond_v0(tensor, uncond)
        elif opts.pad_cond_uncond and tensor.shape[1] != uncond.shape[1]:
            tensor, uncond = self.pad_cond_uncond(tensor, uncond)

        if tensor.shape[1] == uncond.shape[1] or skip_uncond:
            # pattern 1 (one call) or pattern 2 (fixed B-row chunks over cond+uncond rows)
            cond_in = tensor if skip_uncond else catenate_conds([tensor, uncond])
            if opts.batch_cond_uncond:
                x_out = self.inner_model(x_in, sigma_in, cond=make_condition_dict(cond_in, image_cond_in))
            else:
                x_out = torch.zeros_like(x_in)
                for a in range(0, x_out.shape[0], batch_size):
                    b = a + batch_size
                    x_out[a:b] = self.inner_model(x_in[a:b], sigma_in[a:b], cond=make_condition_dict(subscript_cond(cond_in, a, b), image_cond_in[a:b]))
        else:
            # pattern 3: token lengths differ -> cond-only chunks, then one uncond call
            x_out = torch.zeros_like(x_in)
            chunk = batch_size * 2 if opts.batch_cond_uncond else batch_size
            for a in range(0, tensor.shape[0], chunk):
                b = min(a + chunk, tensor.shape[0])
                x_out[a:b] = self.inner_model(x_in[a:b], sigma_in[a:b], cond=make_condition_dict(subscript_cond(tensor, a, b), image_cond_in[a:b]))
            if not skip_uncond:
                n = uncond.shape[0]
                x_out[-n:] = self.inner_model(x_in[-n:], sigma_in[-n:], cond=make_condition_dict(uncond, image_cond_in[-n:]))

        first_rows = [rows[0][0] for rows in conds_list]
        if skip_uncond:
            x_out = torch.cat([x_out, torch.cat([x_out[i:i + 1] for i in first_rows])])

        cfg_denoised_callback(CFGDenoisedParams(x_out, state.sampling_step, state.sampling_steps, self.inner_model))

        if self.need_last_noise_uncond:
            self.last_noise_uncond = torch.clone(x_out[-uncond.shape[0]:])

        scale = 1.0 if skip_uncond else cond_scale * self.cond_scale_miltiplier
        denoised = self.combine_denoised(x_out, conds_list, uncond, scale)

        if not self.mask_before_denoising and self.mask is not None:
            denoised = apply_blend(denoised)

        first_x_in = torch.cat([x_in[i:i + 1] for i in first_rows])
        self.sampler.last_latent = self.get_pred_x0(first_x_in, torch.cat([x_out[i:i + 1] for i in first_rows]), sigma)
        if opts.live_preview_content == "Prompt":
            preview = self.sampler.last_latent
        elif opts.live_preview_content == "Negative prompt":
            preview = self.get_pred_x0(x_in[-uncond.shape[0]:], x_out[-uncond.shape[0]:], sigma)
        else:
            preview = self.get_pred_x0(first_x_in, torch.cat([denoised[i:i + 1] for i in first_rows]), sigma)
        sd_samplers_common.store_latent(preview)

        after = AfterCFGCallbackParams(denoised, state.sampling_step, state.sampling_steps)
        cfg_after_cfg_callback(after)
        denoised = after.x

        self.step += 1
        return denoised
