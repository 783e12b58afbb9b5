"""A fixed set of requests through the A1111, Forge and ComfyUI stand-ins, saved, to check that a refactor
changes no image (run it before and after on the SAME machine: float results differ between CPUs, so this
is no cross-machine golden test).

    python -m tests.tools.standin_outputs save BEFORE_DIR      # in a checkout of the commit before the change
    python -m tests.tools.standin_outputs save AFTER_DIR       # in a checkout of the commit after
    python -m tests.tools.standin_outputs compare BEFORE_DIR AFTER_DIR

(Copy this file into the older checkout if it predates it: it needs only the stand-ins, tests/lora_writers.py and
tests/extension_helpers.py's UNET_TARGETS.)

Each host runs in a process of its own (``--host``), with its stand-in first on sys.path. The requests use
only what users use (the script's API dict form, prompt tags, ComfyUI API prompts), so the same file runs
on both commits. Saved per request: every image (weight maps included) as uint8 pixels, and the infotexts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from tests.extension_helpers import UNET_TARGETS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TESTS = os.path.join(ROOT, "tests")
HOSTS = ("a1111", "forge", "comfyui")
FLUX_TARGETS = ["double_blocks.0.img_attn.qkv", "double_blocks.0.img_attn.proj", "double_blocks.0.img_mlp.0",
                "double_blocks.0.txt_attn.qkv", "single_blocks.0.linear1", "single_blocks.0.linear2"]
XL_TARGETS = ["input_blocks.4.1.transformer_blocks.0.attn1.to_k", "middle_block.1.transformer_blocks.0.attn2.to_k"]
TE_TARGETS = ["encoder.layers.0.self_attn.q_proj", "encoder.layers.1.mlp.fc2"]
PAPER = {"mode": "LoRAtorio", "weight_norm": "sum"}
TWO = "a cat <loratorio:alice:0.8> <loratorio:hat:1>"

# (name, txt2img settings, LoRAtorio's named settings or None for off); model "sdxl"/"flux" picks another checkpoint
WEBUI_REQUESTS = [
    ("off", {}, None),
    ("defaults", {}, {}),
    ("defaults_maps_hires_batch", dict(n_iter=2, batch_size=2, enable_hr=True, hr_scale=1.5, denoising_strength=0.5,
                                       hr_second_pass_steps=2, steps=4), {"show_weight_maps": True}),
    ("paper", {}, PAPER),
    ("paper_and_long_negative", dict(prompt="a cat AND a dog <loratorio:alice:0.8> <loratorio:hat:1>", batch_size=2,
                                     negative_prompt="word " * 80), PAPER),
    ("paper_max_recenter0", {}, {"mode": "LoRAtorio", "recenter": 0.0}),
    ("te_per_branch", dict(prompt="a cat <loratorio:te_only:1> <loratorio:alice:0.8>"),
     {**PAPER, "show_weight_maps": True, "weight_map_steps": [0.0, 0.5]}),
    ("te_unet_only", dict(prompt="a cat <loratorio:te_only:1> <loratorio:alice:0.8>"),
     {**PAPER, "text_encoder": "UNet only"}),
    ("composite", {}, {"mode": "Composite"}),
    ("switch", dict(steps=4), {"mode": "Switch", "switch_every": 1}),
    ("range_off", dict(steps=4), {**PAPER, "step_end": 0.5, "outside_steps": "off"}),
    ("range_merge", dict(steps=4), {**PAPER, "step_start": 0.25, "outside_steps": "merge"}),
    ("fast_schedule", dict(steps=6), {"refresh_first": 2, "refresh_every": 3, "show_weight_maps": True}),
    ("pool_topk_global", dict(prompt="a cat"), {**PAPER, "pool": ["alice", "hat", "styles"], "top_k": 2,
                                                "selection": "global"}),
    ("lora_tags", dict(prompt="a cat <lora:alice:0.8> <lora:styles/ink:1>"), {"use_lora_tags": True}),
    ("per_branch_max_batch", {}, {**PAPER, "evaluation": "per branch", "max_batch": 2}),
    ("sdxl", dict(prompt="a cat <loratorio:xl_lora:1> <loratorio:xl_lora:-1>", model="sdxl"), {}),
]
A1111_ONLY = [
    ("ddim", dict(sampler_name="DDIM", steps=4), PAPER),
    ("heun_chunks", dict(sampler_name="Heun", batch_size=2, batch_cond_uncond=False), PAPER),
    ("refiner_other_model", dict(steps=4, refiner_switch_at=0.5, refiner="other"), PAPER),
]
FORGE_ONLY = [
    ("sdxl_te2", dict(prompt="a cat <loratorio:xl_lora:1> <loratorio:xl_te2:1>", model="sdxl"), PAPER),
    ("flux_cfg1", dict(prompt="a robot <loratorio:flux_a:1> <loratorio:flux_b:1>", model="flux"),
     {"show_weight_maps": True}),
    ("flux_cfg3", dict(prompt="a robot <loratorio:flux_a:1> <loratorio:flux_b:1>", model="flux", cfg_scale=3.0,
                       negative_prompt="blurry"), PAPER),
    ("flux_fast", dict(prompt="a robot <loratorio:flux_a:1> <loratorio:flux_b:1>", model="flux", steps=3),
     {"refresh_first": 1, "refresh_every": 2}),
    ("little_memory", dict(prompt="a cat AND a dog <loratorio:alice:0.8> <loratorio:hat:1>", batch_size=2,
                           free_memory=1), PAPER),
]
# (name, checkpoint, LoRAs, LoRAtorio Apply settings, KSampler settings)
COMFY_REQUESTS = [
    ("defaults_maps", "standin-sd15", ("alice", "hat"), {}, {}),
    ("paper", "standin-sd15", ("alice", "hat"), {"mode": "LoRAtorio", "weight_norm": "sum"}, {}),
    ("composite", "standin-sd15", ("alice", "hat"), {"mode": "Composite", "show_weight_maps": False}, {}),
    ("switch", "standin-sd15", ("alice", "hat"), {"mode": "Switch", "show_weight_maps": False, "switch_every": 1}, {}),
    ("range_off", "standin-sd15", ("alice", "hat"), {"step_start": 0.3, "outside_steps": "off"}, {}),
    ("range_merge", "standin-sd15", ("alice", "hat"), {"step_end": 0.5, "outside_steps": "merge"}, {}),
    ("heun", "standin-sd15", ("alice", "hat"), {"mode": "LoRAtorio"}, {"sampler_name": "heun"}),
    ("sdxl", "standin-sdxl", ("xl_a", "xl_b"), {}, {}),
    ("flux_cfg1", "standin-flux", ("flux_a", "flux_b"), {}, {"cfg": 1.0}),
    ("flux_cfg3", "standin-flux", ("flux_a", "flux_b"), {"mode": "LoRAtorio"}, {"cfg": 3.0}),
    ("little_memory", "standin-sd15", ("alice", "hat"), {"mode": "LoRAtorio"}, {"free_memory": 1.0}),
]


# --- the WebUIs --------------------------------------------------------------------------------------------------
def _webui_loras(folder, models):
    from tests.lora_writers import write_kohya

    sd15 = models["sd15"]
    forge = hasattr(sd15, "forge_objects")
    unet = sd15.forge_objects.unet.model.diffusion_model.unet if forge else sd15.model.diffusion_model.unet
    os.makedirs(os.path.join(folder, "styles"), exist_ok=True)
    for i, (name, fmt) in enumerate([("alice", "lora"), ("hat", "locon_tucker"), ("styles/ink", "loha")]):
        write_kohya(os.path.join(folder, f"{name}.safetensors"), unet, UNET_TARGETS, fmt=fmt, seed=10 + i, alpha=8.0,
                    rank=4)
    te = (sd15.forge_objects.clip.cond_stage_model.clip_l.transformer if forge
          else sd15.cond_stage_model.wrapped.transformer)
    write_kohya(os.path.join(folder, "te_only.safetensors"), te, TE_TARGETS, component="te1",
                prefix="lora_te_text_model_", seed=5, alpha=8.0)
    xl = models["sdxl"]
    write_kohya(os.path.join(folder, "xl_lora.safetensors"),
                xl.forge_objects.unet.model.diffusion_model if forge else xl.model.diffusion_model, XL_TARGETS,
                seed=7, alpha=8.0)
    if forge:
        clip_g = xl.forge_objects.clip.cond_stage_model.clip_g.transformer
        write_kohya(os.path.join(folder, "xl_te2.safetensors"), clip_g,
                    ["encoder.layers.0.self_attn.v_proj", "encoder.layers.1.mlp.fc1"], component="te2",
                    prefix="lora_te2_text_model_", seed=8, alpha=8.0)
        dit = models["flux"].forge_objects.unet.model.diffusion_model
        for i, name in enumerate(("flux_a", "flux_b")):
            write_kohya(os.path.join(folder, f"{name}.safetensors"), dit, FLUX_TARGETS, seed=20 + i, alpha=8.0)


def run_webui(host: str) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    folders = [os.path.join(TESTS, "a1111_standin")]
    if host == "forge":
        folders.insert(0, os.path.join(TESTS, "forge_standin"))
    sys.path[:0] = folders + [ROOT]
    import standin_models
    from modules import extra_networks, processing, script_callbacks, scripts, shared

    models = {"sd15": standin_models.make_sd15_model(), "sdxl": standin_models.make_sdxl_model()}
    if host == "forge":
        models["flux"] = standin_models.make_flux_model()
    refiner = standin_models.make_sd15_model("refiner", seed=1)
    lora_dir = tempfile.mkdtemp(prefix="loratorio-outputs-")
    _webui_loras(lora_dir, models)
    shared.cmd_opts.lora_dir = lora_dir
    scripts.load_scripts([os.path.join(ROOT, "scripts", "loratorio.py")])
    extra_networks.initialize()
    script_callbacks.before_ui_callback()
    import networks
    networks.list_available_networks()
    runner = scripts.ScriptRunner()
    runner.initialize_scripts(False)
    runner.setup_ui()
    script = runner.alwayson_scripts[-1]
    requests = WEBUI_REQUESTS + (FORGE_ONLY if host == "forge" else A1111_ONLY)
    out = {}
    for name, settings, loratorio in requests:
        settings = dict(settings)
        shared.opts.reset()
        shared.state.begin()
        shared.opts.batch_cond_uncond = settings.pop("batch_cond_uncond", True)
        model = models[settings.pop("model", "sd15")]
        shared.sd_model = model
        if host == "forge":
            from backend import memory_management

            memory_management.free_memory_bytes = float(settings.pop("free_memory", 1 << 50))
            for m in models.values():
                m.forge_objects = m.forge_objects_original.shallow_copy()
                m.forge_objects_after_applying_lora = m.forge_objects_original.shallow_copy()
        if settings.pop("refiner", None):
            settings["refiner_model"] = refiner
        processing.StableDiffusionProcessing.cached_c[:] = [None, None]
        processing.StableDiffusionProcessing.cached_uc[:] = [None, None]
        request = dict(prompt=TWO, negative_prompt="blurry", steps=3, width=128, height=128, batch_size=1,
                       sampler_name="Euler", seed=3, cfg_scale=5.0)
        if model is models.get("flux"):
            request.update(cfg_scale=1.0, distilled_cfg_scale=3.5, width=64, height=64, steps=2, scheduler="Simple")
        request.update(settings)
        p = processing.StableDiffusionProcessingTxt2Img(**request)
        p.scripts = runner
        args = [0] * script.args_to
        args[script.args_from] = {"enabled": loratorio is not None, **(loratorio or {})}
        p.script_args = tuple(args)
        result = processing.process_images(p)
        shared.sd_model = models["sd15"]
        out[name] = {"images": [np.asarray(image.convert("RGB")) for image in result.images],
                     "infotexts": list(result.infotexts)}
    return out


# --- ComfyUI -----------------------------------------------------------------------------------------------------
def run_comfyui() -> dict:
    import torch

    torch.set_num_threads(1)
    sys.path[:0] = [os.path.join(TESTS, "comfy_standin"), ROOT]
    import comfy.model_management
    import comfyui_models
    import execution
    import folder_paths
    import nodes

    from tests.lora_writers import write_kohya

    checkpoints, loras = tempfile.mkdtemp(prefix="ckpt-"), tempfile.mkdtemp(prefix="loras-")
    for name in ("standin-sd15", "standin-sdxl", "standin-flux"):
        open(os.path.join(checkpoints, f"{name}.safetensors"), "wb").close()
    folder_paths.set_folder("checkpoints", checkpoints)
    folder_paths.set_folder("loras", loras)
    sd15 = comfyui_models.load_checkpoint("standin-sd15")[0].model.diffusion_model
    for i, name in enumerate(("alice", "hat")):
        write_kohya(os.path.join(loras, f"{name}.safetensors"), sd15.unet, UNET_TARGETS, seed=10 + i, alpha=8.0)
    xl = comfyui_models.load_checkpoint("standin-sdxl")[0].model.diffusion_model
    write_kohya(os.path.join(loras, "xl_a.safetensors"), xl, XL_TARGETS, seed=7, alpha=8.0)
    write_kohya(os.path.join(loras, "xl_b.safetensors"), xl, ["output_blocks.2.1.transformer_blocks.1.attn1.to_v"],
                seed=8, alpha=8.0)
    dit = comfyui_models.load_checkpoint("standin-flux")[0].model.diffusion_model
    for i, name in enumerate(("flux_a", "flux_b")):
        write_kohya(os.path.join(loras, f"{name}.safetensors"), dit, FLUX_TARGETS, seed=20 + i, alpha=8.0)
    nodes.load_custom_node(ROOT)
    with open(os.path.join(ROOT, "docs", "comfyui", "loratorio_two_loras.json")) as f:
        example = json.load(f)
    out = {}
    for name, ckpt, pair, settings, sampler in COMFY_REQUESTS:
        sampler = dict(sampler)
        comfy.model_management.unload_all_models()
        comfy.model_management.free_memory_bytes = float(sampler.pop("free_memory", 1 << 50))
        prompt = json.loads(json.dumps(example))
        prompt["1"]["inputs"]["ckpt_name"] = f"{ckpt}.safetensors"
        prompt["2"]["inputs"]["lora_name"], prompt["3"]["inputs"]["lora_name"] = (f"{n}.safetensors" for n in pair)
        prompt["4"]["inputs"].update(settings)
        if not prompt["4"]["inputs"]["show_weight_maps"]:
            del prompt["11"], prompt["12"]
        prompt["7"]["inputs"].update(width=64, height=64)
        prompt["8"]["inputs"].update({"steps": 3, "cfg": 5.0, **sampler})
        history = execution.execute(prompt)
        assert history["status"]["status_str"] == "success", (name, history["status"])
        out[name] = {node: [t.detach().numpy() for t in history["outputs"][node]["result"][:1]]
                     for node in history["outputs"]}
    return out


# --- saving and comparing ----------------------------------------------------------------------------------------
def save(folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    for host in HOSTS:
        path = os.path.join(folder, f"{host}.pt")
        subprocess.run([sys.executable, "-m", "tests.tools.standin_outputs", "--host", host, path], cwd=ROOT,
                       check=True)
        print(f"{host}: saved {path}")


def compare(before: str, after: str) -> int:
    import numpy as np
    import torch

    differences = 0
    for host in HOSTS:
        a = torch.load(os.path.join(before, f"{host}.pt"), weights_only=False)
        b = torch.load(os.path.join(after, f"{host}.pt"), weights_only=False)
        if sorted(a) != sorted(b):
            print(f"{host}: other requests: {sorted(set(a) ^ set(b))}")
            differences += 1
        for name in sorted(set(a) & set(b)):
            same = a[name].keys() == b[name].keys() and all(
                len(a[name][k]) == len(b[name][k]) and all(
                    (x == y) if isinstance(x, str) else (x.shape == y.shape and np.array_equal(x, y))
                    for x, y in zip(a[name][k], b[name][k], strict=True))
                for k in a[name])
            print(f"{host} {name}: {'identical' if same else 'DIFFERENT'}")
            differences += not same
    print(f"{differences} difference(s)")
    return 1 if differences else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", choices=HOSTS, help="run one host's requests in this process and save them")
    parser.add_argument("args", nargs="+", help="save DIR | compare BEFORE AFTER | (with --host) FILE")
    ns = parser.parse_args()
    if ns.host:
        import torch

        torch.save(run_comfyui() if ns.host == "comfyui" else run_webui(ns.host), ns.args[0])
        return 0
    if ns.args[0] == "save" and len(ns.args) == 2:
        save(ns.args[1])
        return 0
    if ns.args[0] == "compare" and len(ns.args) == 3:
        return compare(ns.args[1], ns.args[2])
    parser.error("expected: save DIR, or compare BEFORE AFTER")
    return 2


if __name__ == "__main__":
    sys.exit(main())
