"""The ComfyUI node pack end to end in the ComfyUI (3cd7b32) stand-in: the folder loaded as a custom node, the
example workflow run as an API prompt, SD1.5, SDXL and Flux, ComfyUI's own LoRA loader upstream, the settings
from LoratorioParams, and the hooks' lifetime (finished, interrupted, failed runs)."""

import copy
import dataclasses
import json
import os
import subprocess
import sys
import types

import pytest
import torch
from safetensors.torch import save_file

from lib_loratorio.params import LoratorioParams
from tests.extension_helpers import UNET_TARGETS, hook_ids
from tests.lora_writers import write_kohya
from tests.standins import COMFYUI

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOW = os.path.join(ROOT, "docs", "comfyui", "loratorio_two_loras.json")
TEXT_WORKFLOW = os.path.join(ROOT, "docs", "comfyui", "loratorio_text_encoders.json")  # with LoRAtorio Text Encode
FLUX_TARGETS = ["double_blocks.0.img_attn.qkv", "double_blocks.0.img_attn.proj", "double_blocks.0.img_mlp.0",
                "double_blocks.0.txt_attn.qkv", "single_blocks.0.linear1", "single_blocks.0.linear2"]
# ldm names of the tiny SD1.5 UNet, for the file in ComfyUI's own LoRA naming
LDM_TARGETS = ["input_blocks.1.1.transformer_blocks.0.attn1.to_q", "input_blocks.1.1.transformer_blocks.0.attn2.to_v",
               "input_blocks.1.0.in_layers.2", "middle_block.1.transformer_blocks.0.ff.net.2"]
# the transformer families: the layers of each kind a LoRA of theirs touches (ComfyUI's names)
DIT_TARGETS = {
    "flux2": ["double_blocks.0.img_attn.qkv", "double_blocks.0.txt_mlp.0", "single_blocks.0.linear1",
              "single_blocks.0.linear2", "final_layer.linear", "img_in"],
    "chroma": ["double_blocks.0.img_attn.qkv", "double_blocks.0.img_mlp.2", "double_blocks.0.txt_attn.proj",
               "single_blocks.0.linear1", "distilled_guidance_layer.in_proj"],
    "z-image": ["layers.0.attention.qkv", "layers.0.feed_forward.w1", "noise_refiner.0.attention.out",
                "context_refiner.0.feed_forward.w3", "final_layer.linear", "x_embedder"],
    "lumina2": ["layers.0.attention.qkv", "layers.0.adaLN_modulation.1", "noise_refiner.0.feed_forward.w2",
                "cap_embedder.1", "final_layer.linear"],
    "qwen-image": ["img_in", "transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.add_k_proj",
                   "transformer_blocks.0.img_mlp.net.0.proj", "transformer_blocks.0.txt_mlp.net.2", "proj_out"],
    "sd3": ["x_embedder.proj", "joint_blocks.0.x_block.attn.qkv", "joint_blocks.0.context_block.mlp.fc1",
            "joint_blocks.0.x_block.attn2.qkv", "joint_blocks.1.x_block.mlp.fc2", "final_layer.linear"],
    "wan": ["blocks.0.self_attn.q", "blocks.0.cross_attn.k", "blocks.0.cross_attn.o", "blocks.0.ffn.0",
            "head.head", "text_embedding.0"],
}
TE_SUFFIXES = ("layers.0.self_attn.q_proj", "layers.1.mlp.fc2")
QWEN3_TE_TARGETS = ["qwen3_4b.transformer.model.layers.0.self_attn.q_proj",
                    "qwen3_4b.transformer.model.layers.1.mlp.down_proj"]
C = types.SimpleNamespace()  # the stand-in's modules, imported inside the ComfyUI environment


def write_comfy_lora(path, network, targets, seed, rank=4, alpha=2.0, text_encoder=None, te_targets=(),
                     te_prefix=""):
    """A LoRA in ComfyUI's naming (``diffusion_model.<ldm name>.lora_down.weight``), as its trainers save them; with
    ``text_encoder``, also a part on its ``te_targets`` under ``te_prefix`` (kohya's ``lora_te_`` + the flat name, or
    ComfyUI's ``text_encoders.<encoder>.transformer.`` + the dotted name)."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    parts = [(network, targets, lambda n: f"diffusion_model.{n}", 0.3)]
    if text_encoder is not None:
        flat = te_prefix.startswith("lora_")
        parts.append((text_encoder, te_targets, lambda n: te_prefix + (n.replace(".", "_") if flat else n), 0.5))
    for net, names, key_of, scale in parts:
        modules = dict(net.named_modules())
        for name in names:
            w = modules[name].weight
            kernel = list(w.shape[2:])
            key = key_of(name)
            tensors[f"{key}.lora_down.weight"] = torch.randn(rank, w.shape[1], *kernel, generator=g) * scale
            tensors[f"{key}.lora_up.weight"] = torch.randn(w.shape[0], rank, *([1, 1] if kernel else []),
                                                           generator=g) * scale
            tensors[f"{key}.alpha"] = torch.tensor(alpha)
    save_file(tensors, str(path))


@pytest.fixture(scope="module", autouse=True)
def env(one_thread, tmp_path_factory):
    with COMFYUI.active():
        import comfy.model_management
        import comfy.samplers
        import comfyui_models
        import execution
        import folder_paths
        import nodes

        C.__dict__.update(mm=comfy.model_management, samplers=comfy.samplers, models=comfyui_models,
                          execution=execution, folder_paths=folder_paths, nodes=nodes)
        checkpoints, loras = tmp_path_factory.mktemp("checkpoints"), tmp_path_factory.mktemp("loras")
        for name in ("standin-sd15", "standin-sdxl", "standin-flux", *(f"standin-{f}" for f in DIT_TARGETS)):
            (checkpoints / f"{name}.safetensors").write_bytes(b"")
        folder_paths.set_folder("checkpoints", checkpoints)
        folder_paths.set_folder("loras", loras)
        sd15 = comfyui_models.load_checkpoint("standin-sd15")[0].model.diffusion_model
        for i, name in enumerate(("alice", "hat")):
            write_kohya(loras / f"{name}.safetensors", sd15.unet, UNET_TARGETS, seed=10 + i, alpha=8.0)
        (loras / "sub").mkdir()
        write_comfy_lora(loras / "sub" / "comfy_style.safetensors", sd15, LDM_TARGETS, seed=3)
        xl = comfyui_models.load_checkpoint("standin-sdxl")[0].model.diffusion_model
        write_kohya(loras / "xl_a.safetensors", xl, ["input_blocks.4.1.transformer_blocks.0.attn1.to_k",
                                                     "middle_block.1.transformer_blocks.0.attn2.to_k"],
                    seed=7, alpha=8.0)
        write_kohya(loras / "xl_b.safetensors", xl, ["output_blocks.2.1.transformer_blocks.1.attn1.to_v"], seed=8,
                    alpha=8.0)
        dit = comfyui_models.load_checkpoint("standin-flux")[0].model.diffusion_model
        for i, name in enumerate(("flux_a", "flux_b")):
            write_kohya(loras / f"{name}.safetensors", dit, FLUX_TARGETS, seed=20 + i, alpha=8.0)
        for family, targets in DIT_TARGETS.items():  # in ComfyUI's own naming, which its LoRA loader reads
            dit = comfyui_models.load_checkpoint(f"standin-{family}")[0].model.diffusion_model
            (loras / family).mkdir()
            for i, suffix in enumerate("ab"):
                write_comfy_lora(loras / family / f"{suffix}.safetensors", dit, targets, seed=40 + i)
        # LoRAs with a text-encoder part: SD1.5's CLIP (kohya keys), Z-Image's Qwen3 (ComfyUI's generic keys)
        sd15_clip = comfyui_models.load_checkpoint("standin-sd15")[1].cond_stage_model.clip_l.transformer
        write_comfy_lora(loras / "sub" / "with_te.safetensors", sd15, LDM_TARGETS, seed=5, text_encoder=sd15_clip,
                         te_targets=[n for n, _ in sd15_clip.named_modules() if n.endswith(TE_SUFFIXES)],
                         te_prefix="lora_te_")
        z_image, z_clip = (comfyui_models.load_checkpoint("standin-z-image")[i] for i in (0, 1))
        write_comfy_lora(loras / "z-image" / "with_te.safetensors", z_image.model.diffusion_model,
                         DIT_TARGETS["z-image"], seed=6, text_encoder=z_clip.cond_stage_model,
                         te_targets=QWEN3_TE_TARGETS, te_prefix="text_encoders.")
        C.pack = nodes.load_custom_node(ROOT)  # as ComfyUI loads custom_nodes/LoRAtorio
        yield C


def networks():
    return [C.models.load_checkpoint(n)[0].model for n in ("standin-sd15", "standin-sdxl", "standin-flux",
                                                           *(f"standin-{f}" for f in DIT_TARGETS))]


@pytest.fixture(autouse=True)
def untouched(env):
    """Every test leaves the models' weights (once ComfyUI's own patches are unloaded) and hooks as they were."""
    C.mm.unload_all_models()
    before = [({k: v.clone() for k, v in net.state_dict().items()}, hook_ids(net)) for net in networks()]
    C.mm.free_memory_bytes = float(1 << 50)
    yield
    C.mm.interrupt_current_processing(False)
    C.mm.unload_all_models()
    for net, (weights, hooks) in zip(networks(), before, strict=True):
        assert all(torch.equal(weights[k], v) for k, v in net.state_dict().items()), "model weights changed"
        assert hook_ids(net) == hooks, "hooks left installed"


def workflow(ckpt="standin-sd15.safetensors", loras=("alice.safetensors", "hat.safetensors"), **settings):
    """The example workflow (docs/comfyui), small: 64x64, 3 steps, the stand-in's checkpoint and LoRAs."""
    with open(WORKFLOW) as f:
        prompt = json.load(f)
    prompt["1"]["inputs"]["ckpt_name"] = ckpt
    prompt["2"]["inputs"]["lora_name"], prompt["3"]["inputs"]["lora_name"] = loras
    prompt["4"]["inputs"].update(settings)
    prompt["7"]["inputs"].update(width=64, height=64)
    prompt["8"]["inputs"].update(steps=3, cfg=5.0)
    return prompt


def without_loratorio(prompt):
    """The same prompt with LoRAtorio Apply bypassed (its MODEL input wired through) and no weight-map nodes."""
    prompt = copy.deepcopy(prompt)
    for node_id in ("2", "3", "4", "11", "12"):
        del prompt[node_id]
    prompt["8"]["inputs"]["model"] = ["1", 0]
    return prompt


def run(prompt):
    return C.execution.execute(prompt)


def image(history, node="10"):
    return history["outputs"][node]["result"][0]


def error_of(history):
    kind, data = history["status"]["messages"][-1]
    assert history["status"]["status_str"] == "error"
    return data.get("exception_message", kind)


# --- the node pack ----------------------------------------------------------------------------------------------
def test_the_folder_loads_as_a_node_pack_with_settings_from_loratorio_params():
    assert C.pack.NODE_DISPLAY_NAME_MAPPINGS == {"LoratorioLora": "LoRAtorio LoRA", "LoratorioApply": "LoRAtorio Apply",
                                                 "LoratorioWeightMaps": "LoRAtorio Weight Maps",
                                                 "LoratorioTextEncode": "LoRAtorio Text Encode"}
    apply = C.nodes.NODE_CLASS_MAPPINGS["LoratorioApply"]
    inputs = apply.INPUT_TYPES()
    assert apply.RETURN_TYPES == ("MODEL",) and inputs["optional"]["stack"][0] == "LORATORIO_STACK"
    fields = {f.name: f for f in dataclasses.fields(LoratorioParams)}
    settings = {k: v for k, v in inputs["required"].items() if k != "model"}
    assert list(settings) == [n for n in fields if n not in ("enabled", "default_strength", "use_lora_tags", "pool",
                                                             "text_encoder", "weight_map_steps", "weight_masks",
                                                             "detailer", "detailer_share")]
    for name, (kind, options) in settings.items():
        meta = fields[name].metadata
        assert options["default"] == fields[name].default
        if meta["choices"]:
            assert kind == list(meta["choices"])
        elif kind in ("INT", "FLOAT"):
            assert (options["min"], options["max"]) == (meta["min"], meta["max"])
    lora = C.nodes.NODE_CLASS_MAPPINGS["LoratorioLora"].INPUT_TYPES()["required"]["lora_name"][0]
    assert [n for n in lora if "/" not in n or n.startswith("sub/")] == [
        "alice.safetensors", "flux_a.safetensors", "flux_b.safetensors", "hat.safetensors",
        "sub/comfy_style.safetensors", "sub/with_te.safetensors", "xl_a.safetensors", "xl_b.safetensors"]
    # the example workflow sets every setting of LoRAtorio Apply
    with open(WORKFLOW) as f:
        assert set(json.load(f)["4"]["inputs"]) == {"model", "stack", *settings}


def test_outside_comfyui_the_folder_defines_no_nodes(tmp_path):
    code = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('LoRAtorio', sys.argv[1], "
            "submodule_search_locations=[]); m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
            "print(m.NODE_CLASS_MAPPINGS, m.NODE_DISPLAY_NAME_MAPPINGS)")
    out = subprocess.run([sys.executable, "-c", code, os.path.join(ROOT, "__init__.py")], cwd=tmp_path,
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "{} {}"


# --- composing --------------------------------------------------------------------------------------------------
def test_the_example_workflow_composes_and_shows_weight_maps():
    prompt = workflow()
    composed = run(prompt)
    assert composed["status"]["status_str"] == "success", composed["status"]
    plain = run(without_loratorio(prompt))
    assert image(composed).shape == image(plain).shape == (1, 64, 64, 3)
    assert not torch.equal(image(composed), image(plain))
    maps = image(composed, "12")
    assert maps.shape == (2, 64, 64, 3) and float(maps.min()) >= 0 and float(maps.max()) <= 1
    assert torch.equal(image(run(prompt)), image(composed))  # deterministic; nothing left over from the last run


class HalfMask:
    """A test node: a MASK [1, H, W] white on one half (ComfyUI's own mask nodes are not in the stand-in)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"side": (["left", "right"],), "width": ("INT", {}), "height": ("INT", {})}}

    RETURN_TYPES = ("MASK",)
    FUNCTION = "make"

    def make(self, side, width, height):
        mask = torch.zeros(1, height, width)
        mask[..., : width // 2] = 1.0
        return (mask if side == "left" else 1.0 - mask,)


def test_a_region_mask_keeps_its_lora_in_its_region():
    C.nodes.NODE_CLASS_MAPPINGS["HalfMask"] = HalfMask
    try:
        prompt = workflow()
        for lora_node, side in (("2", "left"), ("3", "right")):
            prompt[f"m{lora_node}"] = {"class_type": "HalfMask", "inputs": {"side": side, "width": 64, "height": 64}}
            prompt[lora_node]["inputs"]["region"] = [f"m{lora_node}", 0]
        hinted = run(prompt)
        assert hinted["status"]["status_str"] == "success", hinted["status"]
        maps = image(hinted, "12")  # [2 LoRAs, 64, 64, 3]: the heatmaps over the image
        diff = (maps[0] - maps[1]).mean(dim=-1)  # the first LoRA's heat minus the second's: the picture cancels
        assert diff[16:, :32].mean() > 0.2 and diff[16:, 32:].mean() < -0.2
        plain = image(run(workflow()), "12")  # without masks the LoRAs do not split the image in halves
        diff = (plain[0] - plain[1]).mean(dim=-1)
        assert abs(diff[16:, :32].mean() - diff[16:, 32:].mean()) < 0.1
    finally:
        del C.nodes.NODE_CLASS_MAPPINGS["HalfMask"]


def test_no_lora_in_the_stack_returns_the_model_itself():
    model = C.models.load_checkpoint("standin-sd15")[0]
    apply = C.nodes.NODE_CLASS_MAPPINGS["LoratorioApply"]()
    assert apply.apply(model)[0] is model
    stack = C.nodes.NODE_CLASS_MAPPINGS["LoratorioLora"]().add("alice.safetensors", 0.0)[0]
    assert apply.apply(model, stack)[0] is model
    composed = apply.apply(model, C.nodes.NODE_CLASS_MAPPINGS["LoratorioLora"]().add("alice.safetensors", 1.0)[0])[0]
    assert composed is not model and "model_function_wrapper" not in model.model_options and not model.wrappers


def test_one_lora_without_recentring_equals_comfyuis_own_lora_loader():
    """The same file merged by ComfyUI's LoraLoaderModelOnly, and as LoRAtorio's only branch at re-centring 0."""
    prompt = workflow(loras=("sub/comfy_style.safetensors", "alice.safetensors"), recenter=0.0, mode="LoRAtorio")
    prompt["3"]["inputs"]["strength"] = 0.0  # leaves the second LoRA out
    composed = image(run(prompt))
    merged = without_loratorio(prompt)
    merged["13"] = {"class_type": "LoraLoaderModelOnly", "inputs": {
        "model": ["1", 0], "lora_name": "sub/comfy_style.safetensors", "strength_model": 0.8}}
    merged["8"]["inputs"]["model"] = ["13", 0]
    assert torch.allclose(composed, image(run(merged)), atol=1e-4)
    assert not torch.allclose(composed, image(run(without_loratorio(prompt))), atol=1e-3)


def test_comfyuis_lora_loader_upstream_stays_part_of_the_base():
    prompt = workflow()
    upstream = copy.deepcopy(prompt)
    upstream["13"] = {"class_type": "LoraLoaderModelOnly", "inputs": {
        "model": ["1", 0], "lora_name": "sub/comfy_style.safetensors", "strength_model": 1.0}}
    upstream["4"]["inputs"]["model"] = ["13", 0]
    result = run(upstream)
    assert result["status"]["status_str"] == "success"
    assert not torch.allclose(image(result), image(run(prompt)), atol=1e-3)


XL_LORAS, FLUX_LORAS = ("xl_a.safetensors", "xl_b.safetensors"), ("flux_a.safetensors", "flux_b.safetensors")


@pytest.mark.parametrize("ckpt, loras, cfg", [("standin-sdxl.safetensors", XL_LORAS, 5.0),
                                              ("standin-flux.safetensors", FLUX_LORAS, 1.0),
                                              ("standin-flux.safetensors", FLUX_LORAS, 3.0)])
def test_sdxl_and_flux_compose(ckpt, loras, cfg):
    prompt = workflow(ckpt, loras)
    prompt["8"]["inputs"]["cfg"] = cfg
    composed = run(prompt)
    assert composed["status"]["status_str"] == "success", composed["status"]
    assert not torch.allclose(image(composed), image(run(without_loratorio(prompt))), atol=1e-4)
    assert image(composed, "12").shape == (2, 64, 64, 3)


def _dit_workflow(family, **settings):
    prompt = workflow(f"standin-{family}.safetensors", (f"{family}/a.safetensors", f"{family}/b.safetensors"),
                      **settings)
    prompt["8"]["inputs"]["cfg"] = 1.0 if family == "flux2" else 4.0  # Flux.2 Klein: distilled, CFG 1
    if family == "wan":  # a video of 9 frames: 3 latent frames
        prompt["7"] = {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 64, "height": 64, "length": 9,
                                                                          "batch_size": 1}}
    return prompt


@pytest.mark.parametrize("family", sorted(DIT_TARGETS))
@pytest.mark.parametrize("mode", ["LoRAtorio Fast", "LoRAtorio"])
def test_transformer_families_compose_two_loras_with_weight_maps(family, mode):
    prompt = _dit_workflow(family, mode=mode, refresh_first=1, refresh_every=2)
    composed = run(prompt)
    assert composed["status"]["status_str"] == "success", composed["status"]
    assert not torch.allclose(image(composed), image(run(without_loratorio(prompt))), atol=1e-4)
    frames = 3 if family == "wan" else 1                          # Wan: a map per latent frame, over that frame
    assert image(composed, "12").shape == (2 * frames, 64, 64, 3)


@pytest.mark.parametrize("family", sorted(DIT_TARGETS))
def test_transformer_families_one_lora_at_recentring_0_equals_lora_loader_model_only(family):
    prompt = _dit_workflow(family, recenter=0.0, mode="LoRAtorio")
    prompt["3"]["inputs"]["strength"] = 0.0
    composed = image(run(prompt))
    merged = without_loratorio(prompt)
    merged["13"] = {"class_type": "LoraLoaderModelOnly", "inputs": {
        "model": ["1", 0], "lora_name": f"{family}/a.safetensors", "strength_model": 0.8}}
    merged["8"]["inputs"]["model"] = ["13", 0]
    assert torch.allclose(composed, image(run(merged)), atol=1e-4)
    assert not torch.allclose(composed, image(run(without_loratorio(prompt))), atol=1e-3)


def _with_text_encode(prompt):
    """The prompt with LoRAtorio Text Encode for the positive and negative prompts (the stack of LoRAtorio Apply)."""
    for node in ("5", "6"):
        prompt[node] = {"class_type": "LoratorioTextEncode", "inputs": {**prompt[node]["inputs"], "stack": ["3", 0]}}
    return prompt


def _lora_loader(prompt, lora, clip=True):
    """``without_loratorio(prompt)`` with ComfyUI's LoraLoader (model and CLIP) or LoraLoaderModelOnly on ``lora``."""
    merged = without_loratorio(prompt)
    for node in ("5", "6"):
        merged[node] = {"class_type": "CLIPTextEncode", "inputs": {"text": merged[node]["inputs"]["text"],
                                                                   "clip": ["13", 1] if clip else ["1", 1]}}
    merged["13"] = {"class_type": "LoraLoader" if clip else "LoraLoaderModelOnly",
                    "inputs": {"model": ["1", 0], "lora_name": lora, "strength_model": 0.8,
                               **({"clip": ["1", 1], "strength_clip": 0.8} if clip else {})}}
    merged["8"]["inputs"]["model"] = ["13", 0]
    return merged


@pytest.mark.parametrize("ckpt, lora", [("standin-sd15.safetensors", "sub/with_te.safetensors"),
                                        ("standin-z-image.safetensors", "z-image/with_te.safetensors")])
def test_text_encode_gives_each_branch_its_lora_text_encoder_part(ckpt, lora):
    """One LoRA at re-centring 0 with LoRAtorio Text Encode equals ComfyUI's LoraLoader (model and CLIP); with
    CLIPTextEncode ("UNet only") it equals LoraLoaderModelOnly."""
    prompt = workflow(ckpt, (lora, lora), recenter=0.0, mode="LoRAtorio")
    prompt["3"]["inputs"]["strength"] = 0.0
    per_branch = image(run(_with_text_encode(copy.deepcopy(prompt))))
    unet_only = image(run(prompt))
    assert torch.allclose(per_branch, image(run(_lora_loader(prompt, lora))), atol=1e-4)
    assert torch.allclose(unet_only, image(run(_lora_loader(prompt, lora, clip=False))), atol=1e-4)
    assert not torch.allclose(per_branch, unet_only, atol=1e-3)


def _lora_loaders(prompt, loras):
    """``without_loratorio(prompt)`` with one ComfyUI LoraLoader (model and CLIP) per (LoRA, strength), chained."""
    merged = without_loratorio(prompt)
    model, clip = ["1", 0], ["1", 1]
    for i, (lora, strength) in enumerate(loras):
        node = str(13 + i)
        merged[node] = {"class_type": "LoraLoader", "inputs": {"model": model, "clip": clip, "lora_name": lora,
                                                              "strength_model": strength, "strength_clip": strength}}
        model, clip = [node, 0], [node, 1]
    for node in ("5", "6"):
        merged[node] = {"class_type": "CLIPTextEncode",
                        "inputs": {"text": merged[node]["inputs"]["text"], "clip": clip}}
    merged["8"]["inputs"]["model"] = model
    return merged


@pytest.mark.parametrize("ckpt, te_lora, other", [
    ("standin-sd15.safetensors", "sub/with_te.safetensors", "sub/comfy_style.safetensors"),
    ("standin-z-image.safetensors", "z-image/with_te.safetensors", "z-image/a.safetensors")])
def test_stack_with_text_encode_gives_the_prompt_rows_every_loras_text_encoder_parts(ckpt, te_lora, other):
    """Stack at CFG 1 (ComfyUI then computes the prompt rows only) with LoRAtorio Text Encode is the LoRAs merged
    into the model and the text encoder: LoraLoaders chained, whether one LoRA of two or both have text parts."""
    for loras in ((te_lora, other), (te_lora, te_lora)):
        prompt = _with_text_encode(workflow(ckpt, loras, mode="Stack"))
        prompt["8"]["inputs"]["cfg"] = 1.0
        stacked = image(run(prompt))
        merged = _lora_loaders(prompt, list(zip(loras, (0.8, 1.0), strict=True)))
        assert torch.allclose(stacked, image(run(merged)), atol=1e-4)
    unet_only = workflow(ckpt, loras, mode="Stack")
    unet_only["8"]["inputs"]["cfg"] = 1.0
    assert not torch.allclose(stacked, image(run(unet_only)), atol=1e-3)


def test_text_encode_without_loratorio_apply_gives_the_prompts_image():
    prompt = _with_text_encode(workflow(loras=("sub/with_te.safetensors", "alice.safetensors")))
    plain = without_loratorio(workflow())
    prompt_without = without_loratorio(prompt)
    for node in ("5", "6"):
        prompt_without[node]["inputs"]["stack"] = ["3", 0]
    prompt_without.update({k: v for k, v in prompt.items() if k in ("2", "3")})
    assert torch.allclose(image(run(prompt_without)), image(run(plain)), atol=1e-5)


def test_the_text_encoders_example_composes_with_each_loras_own_text():
    with open(TEXT_WORKFLOW) as f:
        prompt = json.load(f)
    with open(WORKFLOW) as f:
        unet_only = json.load(f)
    for p in (prompt, unet_only):
        p["1"]["inputs"]["ckpt_name"] = "standin-sd15.safetensors"
        p["2"]["inputs"]["lora_name"], p["3"]["inputs"]["lora_name"] = "sub/with_te.safetensors", "alice.safetensors"
        p["7"]["inputs"].update(width=64, height=64)
        p["8"]["inputs"].update(steps=3)
    composed = run(prompt)
    assert composed["status"]["status_str"] == "success", composed["status"]
    assert image(composed, "12").shape == (2, 64, 64, 3)
    assert not torch.allclose(image(composed), image(run(unet_only)), atol=1e-4)


def test_two_loras_with_their_own_text_in_the_fast_mode():
    prompt = _with_text_encode(workflow(loras=("sub/with_te.safetensors", "alice.safetensors"), mode="LoRAtorio Fast",
                                        refresh_every=2))
    per_branch = run(prompt)
    assert per_branch["status"]["status_str"] == "success", per_branch["status"]
    unet_only = run(workflow(loras=("sub/with_te.safetensors", "alice.safetensors"), mode="LoRAtorio Fast",
                             refresh_every=2))
    assert not torch.allclose(image(per_branch), image(unet_only), atol=1e-4)


def test_fast_mode_and_the_other_modes_run():
    for mode in ("LoRAtorio Fast", "Composite", "Switch"):
        prompt = workflow(mode=mode, refresh_first=1, refresh_every=2)
        if mode != "LoRAtorio Fast":  # no weight maps in these modes
            del prompt["11"], prompt["12"]
        result = run(prompt)
        assert result["status"]["status_str"] == "success", (mode, result["status"])


def test_each_branch_row_is_a_chunk_of_its_own_and_a_wrapper_set_before_is_chained():
    from lib_loratorio.comfyui.composing import apply_loratorio
    from lib_loratorio.comfyui.stack import StackEntry

    calls = []

    def spy(apply_model, args):
        options = args["c"]["transformer_options"]
        calls.append((list(args["cond_or_uncond"]), args["input"].shape[0], list(options["uuids"]),
                      options["sigmas"].shape, "sample_sigmas" in options))
        return apply_model(args["input"], args["timestep"], **args["c"])

    base = C.models.load_checkpoint("standin-sd15")[0].clone()
    base.set_model_unet_function_wrapper(spy)
    entries = tuple(StackEntry(n, C.folder_paths.get_full_path("loras", n), 1.0) for n in ("alice.safetensors",
                                                                                             "hat.safetensors"))
    model = apply_loratorio(base, entries, LoratorioParams(mode="LoRAtorio", recenter=0.5, text_encoder="UNet only"))
    C.mm.free_memory_bytes = 1.0  # ComfyUI would run the negative prompt's rows first, alone
    sample(model, steps=2)
    assert calls and all(len(flags) == rows == len(uuids) and shape == (1,) and scheduled
                         for flags, rows, uuids, shape, scheduled in calls)
    # one call per step (the prompt's and the negative prompt's rows together): the base and 2 LoRAs on both
    assert [len(flags) for flags, *_ in calls] == [6, 6]


def sample(model, steps=3, cfg=5.0, sampler="euler", seed=1):
    positive = C.nodes.CLIPTextEncode().encode(C.models.load_checkpoint("standin-sd15")[1], "a cat")[0]
    negative = C.nodes.CLIPTextEncode().encode(C.models.load_checkpoint("standin-sd15")[1], "blurry")[0]
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    return C.nodes.common_ksampler(model, seed, steps, cfg, sampler, "simple", positive, negative, latent)[0]["samples"]


def test_little_memory_gives_the_same_image():
    prompt = workflow()
    plenty = image(run(prompt))
    C.mm.free_memory_bytes = 1.0  # one chunk per model call unless LoRAtorio asks for one call
    assert torch.allclose(image(run(prompt)), plenty, atol=1e-5)


def test_step_of_a_call_follows_the_schedule_also_between_its_sigmas():
    from lib_loratorio.comfyui.composing import ComfySession

    session = ComfySession(LoratorioParams())
    sigmas = torch.tensor([10.0, 5.0, 2.0, 0.5, 0.0])
    options = {"sample_sigmas": sigmas}
    assert [session.step_of(torch.tensor([s]), options) for s in (10.0, 7.0, 5.0, 2.0, 1.0, 0.5)] == [
        (0, 4), (0, 4), (1, 4), (2, 4), (2, 4), (3, 4)]
    assert run(workflow(step_start=0.3, outside_steps="off"))["status"]["status_str"] == "success"
    prompt = workflow()
    prompt["8"]["inputs"]["sampler_name"] = "heun"  # a second model call per step, between the sigmas
    assert run(prompt)["status"]["status_str"] == "success"


# --- hooks' lifetime and errors ------------------------------------------------------------------------------
def test_an_interrupted_run_removes_the_hooks_and_the_next_run_is_whole():
    prompt = workflow()
    C.mm.interrupt_current_processing(True)  # the sampler's progress callback raises at the first step
    result = run(prompt)
    assert result["status"]["messages"][-1][0] == "execution_interrupted"  # (hooks: checked by `untouched`)
    assert run(prompt)["status"]["status_str"] == "success"


def test_an_error_while_sampling_removes_the_hooks():
    from lib_loratorio.comfyui.composing import apply_loratorio, session_of
    from lib_loratorio.comfyui.stack import StackEntry

    calls = []

    def failing(apply_model, args):
        calls.append(1)
        if len(calls) == 2:  # the second step
            raise RuntimeError("a node's wrapper failed")
        return apply_model(args["input"], args["timestep"], **args["c"])

    base = C.models.load_checkpoint("standin-sd15")[0].clone()
    base.set_model_unet_function_wrapper(failing)
    entry = StackEntry("alice.safetensors", C.folder_paths.get_full_path("loras", "alice.safetensors"), 1.0)
    model = apply_loratorio(base, (entry,), LoratorioParams(text_encoder="UNet only"))
    with pytest.raises(RuntimeError, match="wrapper failed"):
        sample(model)
    assert session_of(model).runner is None and not session_of(model).composers


def test_a_wrapper_set_after_loratorio_apply_is_refused_with_the_fix():
    from lib_loratorio.comfyui.composing import apply_loratorio
    from lib_loratorio.comfyui.stack import StackEntry
    from lib_loratorio.errors import LoratorioError

    entry = StackEntry("alice.safetensors", C.folder_paths.get_full_path("loras", "alice.safetensors"), 1.0)
    model = apply_loratorio(C.models.load_checkpoint("standin-sd15")[0], (entry,),
                            LoratorioParams(text_encoder="UNet only")).clone()
    model.set_model_unet_function_wrapper(lambda apply_model, args: apply_model(args["input"], args["timestep"],
                                                                                **args["c"]))
    with pytest.raises(LoratorioError, match="put LoRAtorio Apply after that node"):
        sample(model)
    with pytest.raises(LoratorioError, match="one model composes once"):
        apply_loratorio(model, (entry,), LoratorioParams())


@pytest.mark.parametrize("change, message", [
    (dict(step_start=0.8, step_end=0.5), "'Start at' must be smaller than 'End at'"),
    (dict(patch_size=0), "patch_size=0 is invalid"),
    (dict(mode="Merge"), "allowed values are LoRAtorio, LoRAtorio Fast, Composite, Switch, Stack"),
    (dict(show_weight_maps=False), "turn on 'show_weight_maps'"),
    (dict(loras=("alice.safetensors", "xl_a.safetensors")), "LoRA 'xl_a.safetensors'"),
    (dict(ckpt="standin-flux.safetensors", loras=("flux_a.safetensors", "flux_b.safetensors"), patch_size=3),
     "use a multiple of 2"),
])
def test_bad_input_is_a_clear_error_in_the_history(change, message):
    ckpt = change.pop("ckpt", "standin-sd15.safetensors")
    loras = change.pop("loras", ("alice.safetensors", "hat.safetensors"))
    assert message in error_of(run(workflow(ckpt, loras, **change)))


def test_a_lora_file_gone_is_named():
    prompt = workflow()
    prompt["2"]["inputs"]["lora_name"] = "gone.safetensors"
    assert "LoRA 'gone.safetensors' is not in ComfyUI's models/loras" in error_of(run(prompt))


EXAMPLES = [WORKFLOW, WORKFLOW.replace("two_loras", "masks_inpaint"), TEXT_WORKFLOW]
#: what an example sets other than the defaults: weight maps on (to feed its preview); the masks example routes
#: (mode LoRAtorio: the default Stack's maps are uniform without region hints, so its masks would be all white);
#: the text-encoders example shows its maps at the fast mode's cost
EXAMPLE_SETTINGS = {WORKFLOW: {"show_weight_maps": True},
                    EXAMPLES[1]: {"show_weight_maps": True, "mode": "LoRAtorio"},
                    TEXT_WORKFLOW: {"show_weight_maps": True, "mode": "LoRAtorio Fast"}}


@pytest.mark.parametrize("path", EXAMPLES)
def test_example_workflow_uses_the_default_settings(path):
    """The examples users start from show the defaults, but for what they are about."""
    with open(path) as f:
        apply = next(n for n in json.load(f).values() if n["class_type"] == "LoratorioApply")["inputs"]
    defaults = {f.name: f.default for f in dataclasses.fields(LoratorioParams) if f.name in apply}
    settings = {k: v for k, v in apply.items() if not isinstance(v, list)}
    assert settings == {**defaults, **EXAMPLE_SETTINGS[path]}


@pytest.mark.parametrize("path", EXAMPLES)
def test_the_ui_workflow_is_the_api_example_as_a_graph(path):
    """docs/comfyui has each example twice: API format (POST /prompt) and the UI's graph (drag into ComfyUI);
    the graph's widgets hold the API file's values, in the node's input order, and its links are the API's."""
    with open(path) as f:
        api = json.load(f)
    with open(path.replace(".json", ".workflow.json")) as f:
        graph = json.load(f)
    assert sorted(n["type"] for n in graph["nodes"]) == sorted(n["class_type"] for n in api.values())
    links = {(str(src), slot, str(dst)) for _, src, slot, dst, _, _ in graph["links"]}
    assert links == {(v[0], v[1], k) for k, n in api.items() for v in n["inputs"].values() if isinstance(v, list)}
    for node in graph["nodes"]:
        assert node["type"] == api[str(node["id"])]["class_type"]
        widgets = [v for v in api[str(node["id"])]["inputs"].values() if not isinstance(v, list)]
        if node["type"] == "KSampler":
            widgets.insert(1, "fixed")            # the seed's "control after generate" widget
        assert (node.get("widgets_values") or []) == widgets, node["type"]
    nodes = {n["id"]: n for n in graph["nodes"]}
    graph_links = {(target, nodes[target]["inputs"][slot]["name"]): [str(origin), origin_slot]
                   for _, origin, origin_slot, target, slot, _ in graph["links"]}
    api_links = {(int(node_id), name): value for node_id, n in api.items() for name, value in n["inputs"].items()
                 if isinstance(value, list)}
    assert graph_links == api_links
