"""``comfy/samplers.py``: the CFG guider and the batching of cond/uncond rows (own rewrite, same interface).

Mirrored:
- ``calc_cond_batch(model, conds, x_in, timestep, model_options)`` -> ``_calc_cond_batch_outer`` through the
  ``CALC_COND_BATCH`` wrappers of ``model_options`` -> ``_calc_cond_batch``: ``conds`` = [cond list, uncond list
  or None]; each entry's ``model_conds`` processed to the batch (``get_area_and_mult``; an ``area`` (h, w, y, x)
  crops the input); the concat-able entries (same input shape and cond sizes) are **reversed** and the longest
  prefix whose ``model.memory_required(shape) * 1.5`` is below ``model_management.get_free_memory()`` is taken
  (else one entry) -> ``cond_or_uncond`` such as ``[1, 0]`` (uncond first); ``transformer_options`` = the
  model_options' merged with ``cond_or_uncond``, ``uuids`` (one per entry), ``sigmas`` (= timestep); the call
  ``model_options["model_function_wrapper"](model.apply_model, {"input", "timestep", "c", "cond_or_uncond"})`` or
  ``model.apply_model(input_x, timestep_, **c)``; outputs ``.chunk(batch_chunks)``, averaged with the masks;
  ``model.current_patcher.prepare_state(timestep)`` first.
- ``sampling_function``: cfg-1 skip of the uncond (unless ``disable_cfg1_optimization``), ``calc_cond_batch``,
  ``sampler_pre_cfg_function`` (args dict -> out), ``cfg_function`` (``sampler_cfg_function`` in "x - x0"
  space, ``sampler_post_cfg_function``).
- ``CFGGuider``: ``sample`` (conds copied, ``model_options`` cloned, the patcher's wrappers merged into
  ``model_options["transformer_options"]["wrappers"]`` as ``prepare_model_patcher`` does, ``outer_sample``
  through the ``OUTER_SAMPLE`` wrappers with the guider as ``class_obj``, in a try/finally); ``outer_sample``
  (``prepare_sampling`` -> ``load_models_gpu``, then ``pre_run`` and ``inner_sample`` in a try, ``cleanup`` in
  its finally); ``inner_sample`` (``process_conds`` -> ``extra_conds``; ``transformer_options["sample_sigmas"]``
  = sigmas; the sampler through the ``SAMPLER_SAMPLE`` wrappers); ``__call__`` -> ``outer_predict_noise``
  (``PREDICT_NOISE`` wrappers) -> ``predict_noise`` -> ``sampling_function``.
- ``sample(model, noise, positive, negative, cfg, device, sampler, sigmas, ...)``, ``calculate_sigmas``
  ("simple", "normal"), ``KSAMPLER`` (noise scaling, a sampler function with ``callback``).
Left out: hooks, default conds, masks, ControlNet/GLiGEN, context windows, the other samplers (``euler``,
``heun`` only).
"""

import collections
import math
import uuid

import torch

import comfy.conds
import comfy.model_management
import comfy.model_patcher
import comfy.patcher_extension
from comfy.patcher_extension import WrapperExecutor, WrappersMP, get_all_wrappers

_Chunk = collections.namedtuple("cond_obj", ["input_x", "mult", "conditioning", "area", "control", "patches", "uuid"])


def get_area_and_mult(conds, x_in, timestep_in):
    area = conds.get("area")
    input_x = x_in if area is None else x_in[:, :, area[2]:area[2] + area[0], area[3]:area[3] + area[1]]
    mult = torch.ones_like(input_x) * conds.get("strength", 1.0)
    conditioning = {k: v.process_cond(batch_size=x_in.shape[0], area=area) for k, v in conds["model_conds"].items()}
    return _Chunk(input_x, mult, conditioning, area, conds.get("control"), None, conds["uuid"])


def can_concat_cond(c1, c2):
    if c1.input_x.shape != c2.input_x.shape:
        return False
    if c1.conditioning.keys() != c2.conditioning.keys():
        return False
    return all(c1.conditioning[k].can_concat(c2.conditioning[k]) for k in c1.conditioning)


def cond_cat(c_list):
    temp = {}
    for x in c_list:
        for k, v in x.items():
            temp.setdefault(k, []).append(v)
    return {k: v[0].concat(v[1:]) for k, v in temp.items()}


def calc_cond_batch(model, conds, x_in, timestep, model_options):
    return _calc_cond_batch_outer(model, conds, x_in, timestep, model_options)


def _calc_cond_batch_outer(model, conds, x_in, timestep, model_options):
    executor = WrapperExecutor.new_executor(
        _calc_cond_batch, get_all_wrappers(WrappersMP.CALC_COND_BATCH, model_options, is_model_options=True))
    return executor.execute(model, conds, x_in, timestep, model_options)


def _calc_cond_batch(model, conds, x_in, timestep, model_options):
    out_conds = [torch.zeros_like(x_in) for _ in conds]
    out_counts = [torch.ones_like(x_in) * 1e-37 for _ in conds]
    to_run = []
    for i, cond in enumerate(conds):
        for x in cond or []:
            p = get_area_and_mult(x, x_in, timestep)
            if p is not None:
                to_run.append((p, i))
    model.current_patcher.prepare_state(timestep)
    while to_run:
        first = to_run[0]
        first_shape = first[0].input_x.shape
        to_batch_temp = [x for x in range(len(to_run)) if can_concat_cond(to_run[x][0], first[0])][::-1]
        to_batch = to_batch_temp[:1]
        free_memory = comfy.model_management.get_free_memory(x_in.device)
        for i in range(1, len(to_batch_temp) + 1):
            batch_amount = to_batch_temp[:len(to_batch_temp) // i]
            input_shape = [len(batch_amount) * first_shape[0]] + list(first_shape)[1:]
            if model.memory_required(input_shape) * 1.5 < free_memory:
                to_batch = batch_amount
                break
        input_x, mult, c, cond_or_uncond, uuids, area = [], [], [], [], [], []
        for x in to_batch:
            p, index = to_run.pop(x)
            input_x.append(p.input_x)
            mult.append(p.mult)
            c.append(p.conditioning)
            area.append(p.area)
            cond_or_uncond.append(index)
            uuids.append(p.uuid)
        batch_chunks = len(cond_or_uncond)
        input_x = torch.cat(input_x)
        c = cond_cat(c)
        timestep_ = torch.cat([timestep] * batch_chunks)
        transformer_options = comfy.patcher_extension.merge_nested_dicts(
            {}, model_options.get("transformer_options", {}), copy_dict1=False)
        transformer_options["cond_or_uncond"] = cond_or_uncond[:]
        transformer_options["uuids"] = uuids[:]
        transformer_options["sigmas"] = timestep
        c["transformer_options"] = transformer_options
        if "model_function_wrapper" in model_options:
            output = model_options["model_function_wrapper"](model.apply_model, {
                "input": input_x, "timestep": timestep_, "c": c, "cond_or_uncond": cond_or_uncond}).chunk(batch_chunks)
        else:
            output = model.apply_model(input_x, timestep_, **c).chunk(batch_chunks)
        for o in range(batch_chunks):
            a, index = area[o], cond_or_uncond[o]
            if a is None:
                out_conds[index] += output[o] * mult[o]
                out_counts[index] += mult[o]
            else:
                out_conds[index][:, :, a[2]:a[2] + a[0], a[3]:a[3] + a[1]] += output[o] * mult[o]
                out_counts[index][:, :, a[2]:a[2] + a[0], a[3]:a[3] + a[1]] += mult[o]
    return [out / count for out, count in zip(out_conds, out_counts, strict=True)]


def cfg_function(model, cond_pred, uncond_pred, cond_scale, x, timestep, model_options=None, cond=None, uncond=None):
    model_options = {} if model_options is None else model_options
    if "sampler_cfg_function" in model_options:
        args = {"cond": x - cond_pred, "uncond": x - uncond_pred, "cond_scale": cond_scale, "timestep": timestep,
                "input": x, "sigma": timestep, "cond_denoised": cond_pred, "uncond_denoised": uncond_pred,
                "model": model, "model_options": model_options}
        cfg_result = x - model_options["sampler_cfg_function"](args)
    else:
        cfg_result = uncond_pred + (cond_pred - uncond_pred) * cond_scale
    for fn in model_options.get("sampler_post_cfg_function", []):
        cfg_result = fn({"denoised": cfg_result, "cond": cond, "uncond": uncond, "cond_scale": cond_scale,
                         "model": model, "uncond_denoised": uncond_pred, "cond_denoised": cond_pred,
                         "sigma": timestep, "model_options": model_options, "input": x})
    return cfg_result


def sampling_function(model, x, timestep, uncond, cond, cond_scale, model_options=None, seed=None):
    model_options = {} if model_options is None else model_options
    if math.isclose(cond_scale, 1.0) and not model_options.get("disable_cfg1_optimization", False):
        uncond_ = None
    else:
        uncond_ = uncond
    conds = [cond, uncond_]
    out = calc_cond_batch(model, conds, x, timestep, model_options)
    for fn in model_options.get("sampler_pre_cfg_function", []):
        out = fn({"conds": conds, "conds_out": out, "cond_scale": cond_scale, "timestep": timestep, "input": x,
                  "sigma": timestep, "model": model, "model_options": model_options})
    return cfg_function(model, out[0], out[1], cond_scale, x, timestep, model_options=model_options, cond=cond,
                        uncond=uncond_)


def convert_cond(cond):
    out = []
    for c in cond:
        temp = c[1].copy()
        temp["model_conds"] = temp.get("model_conds", {})
        if c[0] is not None:
            temp["cross_attn"] = c[0]
        temp["uuid"] = uuid.uuid4()
        out.append(temp)
    return out


def process_conds(model, noise, conds, device, latent_image=None, denoise_mask=None, seed=None):
    for k in conds:
        encoded = []
        for x in conds[k]:
            params = {**x, "device": device, "noise": noise, "width": noise.shape[3] * 8, "height": noise.shape[2] * 8}
            x = x.copy()
            x["model_conds"] = {**x["model_conds"], **model.extra_conds(**params)}
            encoded.append(x)
        conds[k] = encoded
    return conds


class CFGGuider:
    def __init__(self, model_patcher):
        self.model_patcher = model_patcher
        self.model_options = model_patcher.model_options
        self.original_conds = {}
        self.cfg = 1.0

    def set_conds(self, positive, negative):
        self.original_conds = {"positive": convert_cond(positive), "negative": convert_cond(negative)}

    def set_cfg(self, cfg):
        self.cfg = cfg

    def __call__(self, *args, **kwargs):
        return self.outer_predict_noise(*args, **kwargs)

    def outer_predict_noise(self, x, timestep, model_options=None, seed=None):
        wrappers = get_all_wrappers(WrappersMP.PREDICT_NOISE, self.model_options, is_model_options=True)
        executor = WrapperExecutor.new_class_executor(self.predict_noise, self, wrappers)
        return executor.execute(x, timestep, model_options, seed)

    def predict_noise(self, x, timestep, model_options=None, seed=None):
        return sampling_function(self.inner_model, x, timestep, self.conds.get("negative"), self.conds.get("positive"),
                                 self.cfg, model_options=model_options, seed=seed)

    def inner_sample(self, noise, latent_image, device, sampler, sigmas, denoise_mask, callback, disable_pbar, seed):
        self.conds = process_conds(self.inner_model, noise, self.conds, device, latent_image, denoise_mask, seed)
        extra_model_options = comfy.model_patcher.create_model_options_clone(self.model_options)
        extra_model_options.setdefault("transformer_options", {})["sample_sigmas"] = sigmas
        extra_args = {"model_options": extra_model_options, "seed": seed}
        executor = WrapperExecutor.new_class_executor(
            sampler.sample, sampler,
            get_all_wrappers(WrappersMP.SAMPLER_SAMPLE, extra_args["model_options"], is_model_options=True))
        samples = executor.execute(self, sigmas, extra_args, callback, noise, latent_image, denoise_mask, disable_pbar)
        return self.inner_model.process_latent_out(samples.to(torch.float32))

    def outer_sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False,
                     seed=None):
        comfy.model_management.load_models_gpu([self.model_patcher])
        self.inner_model = self.model_patcher.model
        device = self.model_patcher.load_device
        try:
            self.model_patcher.pre_run()
            output = self.inner_sample(noise, latent_image, device, sampler, sigmas, denoise_mask, callback,
                                       disable_pbar, seed)
        finally:
            self.model_patcher.cleanup()
        del self.inner_model
        return output

    def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False,
               seed=None):
        if sigmas.shape[-1] == 0:
            return latent_image
        if denoise_mask is not None:  # comfy.sampler_helpers.prepare_mask
            denoise_mask = torch.nn.functional.interpolate(
                denoise_mask.reshape(-1, 1, *denoise_mask.shape[-2:]).float(), size=latent_image.shape[2:],
                mode="bilinear").repeat(1, latent_image.shape[1], 1, 1)
            denoise_mask = comfy.conds.repeat_to_batch_size(denoise_mask, latent_image.shape[0])
        self.conds = {k: [c.copy() for c in v] for k, v in self.original_conds.items()}
        orig_model_options = self.model_options
        try:
            self.model_options = comfy.model_patcher.create_model_options_clone(self.model_options)
            comfy.patcher_extension.merge_nested_dicts(
                self.model_options["transformer_options"].setdefault("wrappers", {}), self.model_patcher.wrappers,
                copy_dict1=False)
            comfy.patcher_extension.merge_nested_dicts(
                self.model_options["transformer_options"].setdefault("callbacks", {}), self.model_patcher.callbacks,
                copy_dict1=False)
            wrappers = get_all_wrappers(WrappersMP.OUTER_SAMPLE, self.model_options, is_model_options=True)
            executor = WrapperExecutor.new_class_executor(self.outer_sample, self, wrappers)
            output = executor.execute(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed)
        finally:
            self.model_options = orig_model_options
        del self.conds
        return output


def sample(model, noise, positive, negative, cfg, device, sampler, sigmas, model_options=None, latent_image=None,
           denoise_mask=None, callback=None, disable_pbar=False, seed=None):
    guider = CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    return guider.sample(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed)


def calculate_sigmas(model_sampling, scheduler_name, steps, denoise=1.0):
    """The schedule of ``steps`` steps; with ``denoise`` below 1 the last ``steps`` of a longer one
    (``KSampler.set_steps``)."""
    if denoise < 0.9999:
        return _calculate_sigmas(model_sampling, scheduler_name, int(steps / denoise))[-(steps + 1):]
    return _calculate_sigmas(model_sampling, scheduler_name, steps)


def _calculate_sigmas(model_sampling, scheduler_name, steps):
    if scheduler_name == "simple":
        ss = len(model_sampling.sigmas) / steps
        sigs = [float(model_sampling.sigmas[-(1 + int(x * ss))]) for x in range(steps)]
    elif scheduler_name == "normal":
        start = float(model_sampling.timestep(model_sampling.sigma_max))
        end = float(model_sampling.timestep(model_sampling.sigma_min))
        sigs = [float(model_sampling.sigma(t)) for t in torch.linspace(start, end, steps)]
    else:
        raise ValueError(f"scheduler {scheduler_name} not in the stand-in")
    return torch.FloatTensor(sigs + [0.0])


def _euler(model, x, sigmas, extra_args, callback):
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "denoised": denoised})
        x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
    return x


def _heun(model, x, sigmas, extra_args, callback):
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "denoised": denoised})
        d = (x - denoised) / sigmas[i]
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
            continue
        x_2 = x + d * dt
        d_2 = (x_2 - model(x_2, sigmas[i + 1] * s_in, **extra_args)) / sigmas[i + 1]
        x = x + (d + d_2) / 2 * dt
    return x


class KSamplerX0Inpaint:
    """The sampler's model with a ``denoise_mask``: outside the mask, x is the latent image noised to the step's sigma
    before the call and the latent image after it."""

    def __init__(self, model, sigmas):
        self.inner_model = model
        self.sigmas = sigmas

    def __call__(self, x, sigma, denoise_mask=None, model_options=None, seed=None):
        if denoise_mask is not None:
            latent_mask = 1.0 - denoise_mask
            sampling = self.inner_model.inner_model.model_sampling
            x = x * denoise_mask + sampling.noise_scaling(sigma.reshape([-1] + [1] * (x.ndim - 1)), self.noise,
                                                          self.latent_image) * latent_mask
        out = self.inner_model(x, sigma, model_options=model_options, seed=seed)
        if denoise_mask is not None:
            out = out * denoise_mask + self.latent_image * latent_mask
        return out


class KSAMPLER:
    def __init__(self, sampler_function):
        self.sampler_function = sampler_function

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        extra_args = {**extra_args, "denoise_mask": denoise_mask}
        model_k = KSamplerX0Inpaint(model_wrap, sigmas)
        model_k.latent_image, model_k.noise = latent_image, noise
        noise = model_wrap.inner_model.model_sampling.noise_scaling(sigmas[0], noise, latent_image)
        k_callback = None
        if callback is not None:
            def k_callback(x):
                callback(x["i"], x["denoised"], x["x"], len(sigmas) - 1)
        return self.sampler_function(model_k, noise, sigmas, extra_args, k_callback)


def sampler_object(name):
    return KSAMPLER({"euler": _euler, "heun": _heun}[name])
