"""``backend/sampling/sampling_function.py``: Forge's CFG core (own minimal rewrite, same interface).

Mirrored:
- ``sampling_function(self, denoiser_params, cond_scale, cond_composition)``: ``self`` is the CFGDenoiser;
  reads ``self.inner_model.inner_model.forge_objects.unet`` (= ``shared.sd_model``'s CURRENT UnetPatcher)
  on every call, ``model = unet.model`` (KModel), ``model_options = unet.model_options``; builds
  ``uncond = compile_conditions(text_uncond)`` (None when text_uncond is None) and
  ``cond = compile_weighted_conditions(text_cond, cond_composition)``; adds ``c_concat`` when the
  image cond (or ``unet.extra_concat_condition``) matches x's batch and size; ``h['control']`` when a
  controlnet is linked; runs ``model_options['conditioning_modifiers']`` with the 8-tuple; ``seed`` =
  ``self.p.seeds[0]``; returns ``(denoised, cond_pred, uncond_pred)``.
- ``sampling_function_inner``: cfg-1 skip (``uncond_ = None`` when cond_scale is close to 1 unless
  ``disable_cfg1_optimization``), ``sampler_pre_cfg_function`` 6-tuple, ``calc_cond_uncond_batch``,
  ``sampler_cfg_function`` (args dict in "x - x0" space, result ``x - fn(args)``), edit_strength CFG,
  ``sampler_post_cfg_function`` (args dict with the condition LISTS and the original ``uncond``).
- ``calc_cond_uncond_batch``: to_run = cond entries (COND=0) then uncond entries (UNCOND=1); per round
  the concat-able indices are REVERSED, the largest prefix whose ``model.memory_required`` is below
  ``memory_management.get_free_memory()`` is taken (else just one chunk), chunks are popped in that
  order -> ``cond_or_uncond`` such as ``[1, 0]`` (uncond rows first); ``transformer_options`` copy with
  ``cond_or_uncond``, ``sigmas``, ``cond_mark``, ``cond_indices``, ``uncond_indices``; the call
  ``model_options['model_function_wrapper'](model.apply_model, {"input", "timestep", "c",
  "cond_or_uncond"})`` or ``model.apply_model(input_x, timestep_, **c)``; x0 outputs averaged with
  ``mult`` weights (area / mask / strength / timestep_start/end of a cond entry are honoured).
- ``sampling_prepare(unet, x)`` -> ``memory_management.load_models_gpu`` (which calls
  ``unet.refresh_loras()``), ``sampling_cleanup(unet)``.
Left out: the low-VRAM warning, controlnet ``get_control`` internals (a linked controlnet object's
``get_control(input_x, timestep_, c, n_chunks)`` is called if present), online-LoRA memory accounting.
"""

import collections
import math

import torch

from backend import memory_management
from backend.operations import cleanup_cache
from backend.sampling.condition import Condition, compile_conditions, compile_weighted_conditions

COND = 0
UNCOND = 1

_Chunk = collections.namedtuple('cond_obj', ['input_x', 'mult', 'conditioning', 'area', 'control', 'patches'])


def get_area_and_mult(conds, x_in, timestep_in):
    if 'timestep_start' in conds and timestep_in[0] > conds['timestep_start']:
        return None
    if 'timestep_end' in conds and timestep_in[0] < conds['timestep_end']:
        return None
    area = conds.get('area', (x_in.shape[2], x_in.shape[3], 0, 0))
    h, w, y, x = area
    input_x = x_in[:, :, y:y + h, x:x + w]
    if 'mask' in conds:
        mask = conds['mask'][:, y:y + h, x:x + w] * conds.get('mask_strength', 1.0)
        mask = mask.unsqueeze(1).repeat(input_x.shape[0] // mask.shape[0], input_x.shape[1], 1, 1)
    else:
        mask = torch.ones_like(input_x)
    mult = mask * conds.get('strength', 1.0)
    conditioning = {k: v.process_cond(batch_size=x_in.shape[0], device=x_in.device, area=area)
                    for k, v in conds['model_conds'].items()}
    return _Chunk(input_x, mult, conditioning, area, conds.get('control', None), None)


def cond_equal_size(c1, c2):
    if c1 is c2:
        return True
    return c1.keys() == c2.keys() and all(c1[k].can_concat(c2[k]) for k in c1)


def can_concat_cond(c1, c2):
    if c1.input_x.shape != c2.input_x.shape:
        return False
    for a, b in ((c1.control, c2.control), (c1.patches, c2.patches)):
        if (a is None) != (b is None) or (a is not None and a is not b):
            return False
    return cond_equal_size(c1.conditioning, c2.conditioning)


def cond_cat(c_list):
    keys = []
    for c in c_list:
        keys += [k for k in c if k not in keys]
    return {k: [c[k] for c in c_list if k in c][0].concat([c[k] for c in c_list if k in c][1:]) for k in keys}


def compute_cond_mark(cond_or_uncond, sigmas):
    n = int(sigmas.shape[0])
    return torch.tensor([float(flag) for flag in cond_or_uncond for _ in range(n)]).to(sigmas)


def compute_cond_indices(cond_or_uncond, sigmas):
    n = int(sigmas.shape[0])
    cond_indices, uncond_indices = [], []
    for j, flag in enumerate(cond_or_uncond):
        (cond_indices if flag == COND else uncond_indices).extend(range(j * n, (j + 1) * n))
    return cond_indices, uncond_indices


def calc_cond_uncond_batch(model, cond, uncond, x_in, timestep, model_options):
    out_cond = torch.zeros_like(x_in)
    out_count = torch.full_like(x_in, 1e-37)
    out_uncond = torch.zeros_like(x_in)
    out_uncond_count = torch.full_like(x_in, 1e-37)

    to_run = []
    for entries, flag in ((cond, COND), (uncond or [], UNCOND)):
        for entry in entries:
            chunk = get_area_and_mult(entry, x_in, timestep)
            if chunk is not None:
                to_run.append((chunk, flag))

    while to_run:
        first = to_run[0][0]
        candidates = [i for i in range(len(to_run)) if can_concat_cond(to_run[i][0], first)][::-1]
        chosen = candidates[:1]
        free_memory = memory_management.get_free_memory(x_in.device)
        for divisor in range(1, len(candidates) + 1):
            trial = candidates[:len(candidates) // divisor]
            shape = [len(trial) * first.input_x.shape[0]] + list(first.input_x.shape[1:])
            if model.memory_required(shape) < free_memory:
                chosen = trial
                break

        popped = [to_run.pop(i) for i in chosen]  # indices are descending: popping keeps the rest valid
        chunks = [c for c, _ in popped]
        cond_or_uncond = [flag for _, flag in popped]
        batch_chunks = len(chunks)
        input_x = torch.cat([c.input_x for c in chunks])
        c = cond_cat([ch.conditioning for ch in chunks])
        timestep_ = torch.cat([timestep] * batch_chunks)
        control = chunks[-1].control

        transformer_options = dict(model_options.get('transformer_options', {}))
        transformer_options['cond_or_uncond'] = list(cond_or_uncond)
        transformer_options['sigmas'] = timestep
        transformer_options['cond_mark'] = compute_cond_mark(cond_or_uncond, timestep)
        transformer_options['cond_indices'], transformer_options['uncond_indices'] = compute_cond_indices(cond_or_uncond, timestep)
        c['transformer_options'] = transformer_options

        if control is not None:
            c['control'] = control.get_control(input_x, timestep_, dict(c), len(cond_or_uncond))
            c['control_model'] = control

        if 'model_function_wrapper' in model_options:
            output = model_options['model_function_wrapper'](model.apply_model, {"input": input_x, "timestep": timestep_, "c": c,
                                                                                 "cond_or_uncond": cond_or_uncond})
        else:
            output = model.apply_model(input_x, timestep_, **c)
        output = output.chunk(batch_chunks)

        for o, chunk in enumerate(chunks):
            h, w, y, x = chunk.area
            out, count = (out_cond, out_count) if cond_or_uncond[o] == COND else (out_uncond, out_uncond_count)
            out[:, :, y:y + h, x:x + w] += output[o] * chunk.mult
            count[:, :, y:y + h, x:x + w] += chunk.mult

    return out_cond / out_count, out_uncond / out_uncond_count


def sampling_function_inner(model, x, timestep, uncond, cond, cond_scale, model_options={}, seed=None, return_full=False):
    edit_strength = sum(item.get('strength', 1) for item in cond)
    skip_uncond = math.isclose(cond_scale, 1.0) and not model_options.get("disable_cfg1_optimization", False)
    uncond_ = None if skip_uncond else uncond

    for fn in model_options.get("sampler_pre_cfg_function", []):
        model, cond, uncond_, x, timestep, model_options = fn(model, cond, uncond_, x, timestep, model_options)

    cond_pred, uncond_pred = calc_cond_uncond_batch(model, cond, uncond_, x, timestep, model_options)

    if "sampler_cfg_function" in model_options:
        args = {"cond": x - cond_pred, "uncond": x - uncond_pred, "cond_scale": cond_scale, "timestep": timestep, "input": x,
                "sigma": timestep, "cond_denoised": cond_pred, "uncond_denoised": uncond_pred, "model": model,
                "model_options": model_options}
        cfg_result = x - model_options["sampler_cfg_function"](args)
    elif not math.isclose(edit_strength, 1.0):
        cfg_result = uncond_pred + (cond_pred - uncond_pred) * cond_scale * edit_strength
    else:
        cfg_result = uncond_pred + (cond_pred - uncond_pred) * cond_scale

    for fn in model_options.get("sampler_post_cfg_function", []):
        args = {"denoised": cfg_result, "cond": cond, "uncond": uncond, "model": model, "uncond_denoised": uncond_pred,
                "cond_denoised": cond_pred, "sigma": timestep, "model_options": model_options, "input": x}
        cfg_result = fn(args)

    if return_full:
        return cfg_result, cond_pred, uncond_pred
    return cfg_result


def sampling_function(self, denoiser_params, cond_scale, cond_composition):
    unet_patcher = self.inner_model.inner_model.forge_objects.unet
    model = unet_patcher.model
    control = unet_patcher.controlnet_linked_list
    x = denoiser_params.x
    timestep = denoiser_params.sigma
    uncond = compile_conditions(denoiser_params.text_uncond)
    cond = compile_weighted_conditions(denoiser_params.text_cond, cond_composition)
    model_options = unet_patcher.model_options
    seed = self.p.seeds[0]

    image_cond_in = unet_patcher.extra_concat_condition
    if image_cond_in is None:
        image_cond_in = denoiser_params.image_cond
    if isinstance(image_cond_in, torch.Tensor) and image_cond_in.shape[0] == x.shape[0] \
            and image_cond_in.shape[2:4] == x.shape[2:4]:
        for h in cond + (uncond or []):
            h['model_conds']['c_concat'] = Condition(image_cond_in)

    if control is not None:
        for h in cond + (uncond or []):
            h['control'] = control

    for modifier in model_options.get('conditioning_modifiers', []):
        model, x, timestep, uncond, cond, cond_scale, model_options, seed = modifier(model, x, timestep, uncond, cond, cond_scale, model_options, seed)

    return sampling_function_inner(model, x, timestep, uncond, cond, cond_scale, model_options, seed, return_full=True)


def sampling_prepare(unet, x):
    B, C, H, W = x.shape
    estimate = unet.model_options.get('memory_peak_estimation_modifier', unet.memory_required)
    memory_management.load_models_gpu(models=[unet] + list(unet.extra_model_patchers_during_sampling),
                                      memory_required=estimate([B * 2, C, H, W]),
                                      hard_memory_preservation=unet.extra_preserved_memory_during_sampling)


def sampling_cleanup(unet):
    cleanup_cache()
