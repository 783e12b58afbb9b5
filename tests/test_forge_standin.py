"""Fast checks of the Forge stand-in (tests/forge_standin, overlaid on tests/a1111_standin) itself."""

import copy
import importlib.util
import types

import pytest
import torch

from tests.standins import FORGE

W = types.SimpleNamespace()  # the stand-in's modules, imported inside the Forge environment


@pytest.fixture(scope="module", autouse=True)
def env(one_thread):
    with FORGE.active():
        import standin_models
        from backend import memory_management
        from backend.operations import ForgeOperations
        from backend.patcher.unet import UnetPatcher
        from backend.sampling import sampling_function
        from modules import errors, extra_networks, processing, script_callbacks, scripts, sd_samplers_common, shared

        W.__dict__.update(standin_models=standin_models, memory_management=memory_management,
                          ForgeOperations=ForgeOperations, UnetPatcher=UnetPatcher, sampling_function=sampling_function,
                          errors=errors, extra_networks=extra_networks, processing=processing,
                          script_callbacks=script_callbacks, scripts=scripts, sd_samplers_common=sd_samplers_common,
                          shared=shared)
        W.sd15 = standin_models.make_sd15_model()
        W.sdxl = standin_models.make_sdxl_model()
        W.flux = standin_models.make_flux_model()
        yield W


@pytest.fixture(autouse=True)
def clean_state(env):
    W.shared.opts.reset()
    W.shared.state.begin()
    W.shared.sd_model = W.sd15
    W.script_callbacks.clear_callbacks()
    W.extra_networks.initialize()
    W.errors.reported.clear()
    W.processing.StableDiffusionProcessing.cached_c[:] = [None, None]
    W.processing.StableDiffusionProcessing.cached_uc[:] = [None, None]
    W.memory_management.free_memory_bytes = float(1 << 50)
    for m in (W.sd15, W.sdxl, W.flux):
        m.forge_objects = m.forge_objects_original.shallow_copy()
        m.forge_objects_after_applying_lora = m.forge_objects_original.shallow_copy()
    yield
    W.script_callbacks.clear_callbacks()
    W.shared.state.begin()
    W.memory_management.free_memory_bytes = float(1 << 50)


def txt2img(model=None, **kw):
    W.shared.sd_model = model or W.sd15
    args = dict(prompt="a cat", negative_prompt="", steps=2, width=64, height=64, batch_size=2, sampler_name="Euler",
                seed=3)
    args.update(kw)
    return W.processing.StableDiffusionProcessingTxt2Img(**args)


def _as_method(fn):
    return lambda self, p, *args, **kwargs: fn(p, *args, **kwargs)


def runner_with(*hooks_per_script):
    """A ScriptRunner with one always-on script per dict of {hook_name: function(p, **kwargs)}."""
    classes = []
    for i, hooks in enumerate(hooks_per_script):
        body = {"title": lambda self, i=i: f"spy {i}", "show": lambda self, is_img2img: W.scripts.AlwaysVisible,
                "ui": lambda self, is_img2img: []}
        for name, fn in hooks.items():
            body[name] = _as_method(fn)
        classes.append(type(f"Spy{i}", (W.scripts.Script,), body))
    runner = W.scripts.ScriptRunner()
    runner.initialize_scripts(False, classes)
    runner.setup_ui()
    return runner


def run(p, *hooks_per_script):
    if hooks_per_script:
        p.scripts = runner_with(*hooks_per_script)
        p.script_args = (0,)
    return W.processing.process_images(p)


def wrapper_script(log, only_iteration=None, fail=False):
    """process_before_every_sampling: clone the current unet, install a recording wrapper (a closure)."""

    def pbes(p, **kwargs):
        if only_iteration is not None and p.iteration != only_iteration:
            return
        unet = p.sd_model.forge_objects.unet.clone()

        def wrapper(apply_model, args):
            if fail:
                raise RuntimeError("boom in wrapper")
            log.append({"keys": sorted(args), "cond_or_uncond": list(args["cond_or_uncond"]),
                        "rows": args["input"].shape[0], "t_rows": args["timestep"].shape[0],
                        "c": {k: getattr(v, "shape", v) for k, v in args["c"].items()},
                        "to": args["c"]["transformer_options"], "apply_model": apply_model, "iteration": p.iteration,
                        "hr": p.is_hr_pass})
            return apply_model(args["input"], args["timestep"], **args["c"])

        unet.set_model_unet_function_wrapper(wrapper)
        p.sd_model.forge_objects.unet = unet

    return {"process_before_every_sampling": pbes}


def images_array(res):
    import numpy as np
    return np.stack([np.asarray(im, dtype=np.float32) for im in res.images[res.index_of_first_image:]])


def test_detection_and_layers():
    assert importlib.util.find_spec("modules_forge") is not None
    assert importlib.util.find_spec("ldm_patched") is None
    assert importlib.util.find_spec("backend.sampling.sampling_function") is not None
    assert not issubclass(W.ForgeOperations.Linear, torch.nn.Linear)
    for model in (W.sd15, W.sdxl, W.flux):
        for root in (model.forge_objects.unet.model.diffusion_model, model.forge_objects.clip.cond_stage_model):
            kinds = {type(m) for m in root.modules()}
            assert torch.nn.Linear not in kinds and W.ForgeOperations.Linear in kinds
        assert not hasattr(model, "model") and model.cond_stage_model is None
    dm = W.sd15.forge_objects.unet.model.diffusion_model
    assert isinstance(dm.input_blocks[1][1].transformer_blocks[0].attn2.to_k, W.ForgeOperations.Linear)
    # the diffusers UNet that actually runs holds the same layer objects as the ldm names
    to_k = dm.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_k
    assert to_k is dm.input_blocks[1][1].transformer_blocks[0].attn2.to_k
    names = dict(W.flux.forge_objects.unet.model.diffusion_model.named_modules())
    for n in ("img_in", "txt_in", "time_in.in_layer", "guidance_in.out_layer", "double_blocks.0.img_attn.qkv",
              "double_blocks.0.img_attn.proj", "double_blocks.0.img_mlp.0", "double_blocks.0.img_mlp.2",
              "double_blocks.0.txt_attn.qkv", "single_blocks.0.linear1", "single_blocks.0.linear2",
              "final_layer.linear"):
        assert isinstance(names[n], W.ForgeOperations.Linear), n
    assert names["double_blocks.0.img_attn.qkv"].out_features == 3 * 32
    assert type(W.flux).__name__ == "Flux" and "flux" in W.flux.model_config.huggingface_repo.lower()


def test_wrapper_args_row_layout_and_identity():
    base = images_array(run(txt2img()))
    log = []
    res = run(txt2img(), wrapper_script(log))
    assert len(log) == 2  # one batched call per step
    entry = log[0]
    assert entry["keys"] == ["c", "cond_or_uncond", "input", "timestep"]
    assert entry["cond_or_uncond"] == [1, 0]  # uncond chunk first
    assert entry["rows"] == entry["t_rows"] == 4
    assert entry["c"]["c_crossattn"] == (4, 77, 32)
    to = entry["to"]
    assert to["cond_or_uncond"] == [1, 0] and to["cond_indices"] == [2, 3] and to["uncond_indices"] == [0, 1]
    assert to["cond_mark"].tolist() == [1.0, 1.0, 0.0, 0.0] and to["sigmas"].shape == (2,)
    assert entry["apply_model"].__self__ is W.sd15.forge_objects_original.unet.model  # KModel.apply_model
    assert (images_array(res) == base).all()  # an identity wrapper changes nothing


def test_memory_knob_splits_calls_and_and_prompts():
    log = []
    W.memory_management.free_memory_bytes = 0
    run(txt2img(steps=1, prompt="a cat AND a dog :0.5"), wrapper_script(log))
    assert [e["cond_or_uncond"] for e in log] == [[1], [0], [0]]  # uncond first, then AND parts in reverse
    assert all(e["rows"] == 2 for e in log)
    log.clear()
    W.memory_management.free_memory_bytes = float(1 << 50)
    run(txt2img(steps=1, prompt="a cat AND a dog :0.5"), wrapper_script(log))
    assert [e["cond_or_uncond"] for e in log] == [[1, 0, 0]] and log[0]["rows"] == 6


def test_sdxl_conds_and_cfg1_has_no_uncond_rows():
    log = []
    res = run(txt2img(W.sdxl, batch_size=1), wrapper_script(log))
    assert log[0]["cond_or_uncond"] == [1, 0]
    assert log[0]["c"]["y"] == (2, 80) and log[0]["c"]["c_crossattn"] == (2, 77, 64)
    assert torch.isfinite(torch.from_numpy(images_array(res))).all()
    log.clear()
    ucs = []
    p = txt2img(W.sdxl, cfg_scale=1, batch_size=1)
    run(p, {"process_before_every_sampling": lambda p, **kw: ucs.append((p.uc, kw["uc"]))}, wrapper_script(log))
    assert ucs == [(None, None)]  # p.uc is None at cfg 1
    assert [e["cond_or_uncond"] for e in log] == [[0], [0]] and log[0]["rows"] == 1


def test_skip_early_cond_drops_uncond_for_early_steps():
    log = []
    W.shared.opts.skip_early_cond = 0.5
    p = txt2img(steps=3, batch_size=1)
    run(p, wrapper_script(log))
    assert [e["cond_or_uncond"] for e in log] == [[0], [0], [1, 0]]  # steps 0/3 and 1/3 <= 0.5
    assert p.extra_generation_params["Skip Early CFG"] == 0.5


def test_flux_txt2img_cfg1_guidance_and_packing():
    log = []
    p = txt2img(W.flux, cfg_scale=1, scheduler="Simple", distilled_cfg_scale=2.5, batch_size=2, height=80)
    res = run(p, wrapper_script(log))
    assert [e["cond_or_uncond"] for e in log] == [[0], [0]]
    c = log[0]["c"]
    assert c["c_crossattn"] == (2, 256, 32) and c["y"] == (2, 32) and c["guidance"] == (2,)
    assert log[0]["rows"] == 2
    images = images_array(res)
    assert images.shape == (2, 80, 64, 3) and torch.isfinite(torch.from_numpy(images)).all()
    assert "Distilled CFG Scale: 2.5" in res.info
    # odd latent sizes are padded for the 2x2 patches and cropped back
    km = W.flux.forge_objects.unet.model
    x = torch.randn(1, 16, 5, 7)
    out = km.apply_model(x, torch.tensor([0.5]), c_crossattn=torch.randn(1, 256, 32), y=torch.randn(1, 32),
                         guidance=torch.tensor([3.5]))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_script_clone_is_used_then_dropped_per_batch():
    log, seen = [], []

    def process_batch(p, **kwargs):
        unet = p.sd_model.forge_objects.unet
        seen.append((unet is p.sd_model.forge_objects_after_applying_lora.unet,
                     "model_function_wrapper" in unet.model_options))

    res = run(txt2img(steps=1, batch_size=1, n_iter=2), wrapper_script(log, only_iteration=0),
              {"process_batch": process_batch})
    assert [e["iteration"] for e in log] == [0]  # the clone from batch 0 is gone in batch 1
    assert seen == [(True, False), (True, False)]
    assert len(res.images) == 3
    assert "model_function_wrapper" not in W.sd15.forge_objects_after_applying_lora.unet.model_options
    assert "model_function_wrapper" not in W.sd15.forge_objects_original.unet.model_options


def test_hires_calls_process_before_every_sampling_twice():
    calls, log = [], []

    def pbes(p, **kwargs):
        unet = p.sd_model.forge_objects.unet
        calls.append((p.is_hr_pass, sorted(kwargs), "model_function_wrapper" in unet.model_options,
                      kwargs["uc"] is None))

    p = txt2img(steps=1, batch_size=1, enable_hr=True, hr_scale=1.5, denoising_strength=0.5, hr_cfg=1.0)
    res = run(p, {"process_before_every_sampling": pbes}, wrapper_script(log))
    # 1st hires call runs BEFORE the forge_objects reset: it still sees the first pass's clone (wrapper set);
    # the 2nd runs after it (the spy script runs before wrapper_script, so no wrapper yet)
    assert calls == [(False, ["c", "noise", "uc", "x"], False, False), (True, ["c", "noise", "uc", "x"], True, True),
                     (True, ["c", "noise", "uc", "x"], False, True)]
    # hires: hr_cfg 1 -> no uncond
    assert [(e["hr"], e["cond_or_uncond"]) for e in log] == [(False, [1, 0]), (True, [0])]
    assert res.images[0].size == (96, 96)


def test_interrupt_and_errors():
    log = []

    def interrupting(p, **kwargs):
        unet = p.sd_model.forge_objects.unet.clone()

        def wrapper(apply_model, args):
            log.append(1)
            W.shared.state.interrupt()
            return apply_model(args["input"], args["timestep"], **args["c"])

        unet.set_model_unet_function_wrapper(wrapper)
        p.sd_model.forge_objects.unet = unet

    res = run(txt2img(steps=3, batch_size=1, n_iter=2), {"process_before_every_sampling": interrupting})
    # the 2nd denoiser call raised InterruptedException (caught), batch 2 was skipped
    assert log == [1] and len(res.images) == 1

    W.shared.state.begin()
    with pytest.raises(RuntimeError, match="boom in wrapper"):
        run(txt2img(steps=1, batch_size=1), wrapper_script([], fail=True))

    def broken(p, **kwargs):
        raise ValueError("swallowed")

    res = run(txt2img(steps=1, batch_size=1), {"process_before_every_sampling": broken})
    assert len(res.images) == 1 and len(W.errors.reported) == 1


def test_cfg_hooks_argument_dicts_and_clone_semantics():
    unet = W.sd15.forge_objects.unet.clone()
    got = {}

    def pre(model, cond, uncond, x, timestep, model_options):
        got["pre_uncond_is_none"] = uncond is None
        return model, cond, uncond, x, timestep, model_options

    def cfg(args):
        got["cfg"] = sorted(args)
        return args["cond"]  # x - x0 of cond -> result is cond_pred

    def post(args):
        got["post"] = sorted(args)
        got["post_uncond_list"] = isinstance(args["uncond"], list)
        return args["denoised"]

    unet.add_sampler_pre_cfg_function(pre)
    unet.set_model_sampler_cfg_function(cfg)
    unet.set_model_sampler_post_cfg_function(post)
    W.sd15.forge_objects_after_applying_lora = W.sd15.forge_objects.shallow_copy()
    W.sd15.forge_objects_after_applying_lora.unet = unet
    res = run(txt2img(steps=1, batch_size=1))
    assert len(res.images) == 1 and got["pre_uncond_is_none"] is False
    assert got["cfg"] == ["cond", "cond_denoised", "cond_scale", "input", "model", "model_options", "sigma", "timestep",
                          "uncond", "uncond_denoised"]
    assert got["post"] == ["cond", "cond_denoised", "denoised", "input", "model", "model_options", "sigma", "uncond",
                           "uncond_denoised"]
    assert got["post_uncond_list"]

    # clone(): same model, deep-copied model_options (closures by reference, bound methods deep-copied)
    class Holder:
        def method(self, apply_model, args):
            return apply_model(args["input"], args["timestep"], **args["c"])

    def closure(apply_model, args):
        return apply_model(args["input"], args["timestep"], **args["c"])

    a = W.sd15.forge_objects_original.unet.clone()
    a.set_model_unet_function_wrapper(closure)
    b = a.clone()
    assert b.model is a.model and b.model_options is not a.model_options
    assert b.model_options["model_function_wrapper"] is closure
    holder = Holder()
    a.set_model_unet_function_wrapper(holder.method)
    assert a.clone().model_options["model_function_wrapper"].__self__ is not holder
    assert "model_function_wrapper" not in W.sd15.forge_objects_original.unet.model_options
    assert copy.deepcopy({"f": closure})["f"] is closure


def test_lora_patches_merge_into_new_parameter_objects():
    patcher = W.sd15.forge_objects_original.unet.clone()
    layer = patcher.model.diffusion_model.input_blocks[1][1].transformer_blocks[0].attn2.to_k
    key = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    original = layer.weight
    up, down = torch.randn(layer.out_features, 2), torch.randn(2, layer.in_features)
    patches = {key: ("lora", (up, down, 2.0, None, None)), "nope.weight": ("diff", (up,))}
    accepted = patcher.add_patches(filename="toy.safetensors", patches=patches)
    assert accepted == {key}
    W.sd15.forge_objects_after_applying_lora = W.sd15.forge_objects.shallow_copy()
    W.sd15.forge_objects_after_applying_lora.unet = patcher
    run(txt2img(steps=1, batch_size=1))
    # the module object is kept
    assert patcher.model.diffusion_model.input_blocks[1][1].transformer_blocks[0].attn2.to_k is layer
    assert layer.weight is not original and torch.allclose(layer.weight, original + up @ down)
    W.sd15.forge_objects_after_applying_lora = W.sd15.forge_objects_original.shallow_copy()
    run(txt2img(steps=1, batch_size=1))
    assert layer.weight is original  # backup restored when the patches go away
