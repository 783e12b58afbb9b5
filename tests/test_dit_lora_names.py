"""LoRAs of the transformer families (Z-Image, Lumina 2, Flux.2, Chroma) on their ComfyUI/Neo-named models: files in
diffusers' naming, written by diffusers/PEFT themselves, and the same LoRA as kohya/musubi-tuner, ai-toolkit and
LyCORIS files of those names, bind fully and equal the native model with PEFT's deltas merged; files in the native
naming (ComfyUI, diffusion-pipe, sd-scripts) bind by the native names.

The native <- diffusers tables below are written out from diffusers' own converters and ComfyUI's key maps, apart
from lib_loratorio/dit_names.py."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from lib_loratorio.branch_runner import BranchRunner
from lib_loratorio.lora_files import read_lora_file
from lib_loratorio.network_names import bind_lora
from tests.lora_writers import write_diffusers_dit, write_peft
from tests.tiny_dits import TinyChroma, TinyFlux2, TinyMMDiT, TinyNextDiT, TinyQwenImage, TinyWan

STRENGTH, RANK, ALPHA = 0.7, 4, 8.0


@dataclass(frozen=True)
class Family:
    diffusers_class: str
    dims: dict
    saver: str
    native: Callable[[], nn.Module]
    parts: dict[str, list[str]]            # native layer -> diffusers layers stacked in its output, in order
    inputs: Callable[[], tuple]
    swapped: tuple[str, ...] = ()          # native layers whose diffusers output halves are swapped


def _nextdit_parts(z_image: bool) -> dict[str, list[str]]:
    attn = "attention" if z_image else "attn"
    parts: dict[str, list[str]] = {}
    for blocks in ("layers.0", "noise_refiner.0", "context_refiner.0"):
        parts[f"{blocks}.attention.qkv"] = [f"{blocks}.{attn}.to_{p}" for p in "qkv"]
        parts[f"{blocks}.attention.out"] = [f"{blocks}.{attn}.to_out.0"]
        for i in (1, 2, 3):
            parts[f"{blocks}.feed_forward.w{i}"] = [f"{blocks}.feed_forward.{f'w{i}' if z_image else f'linear_{i}'}"]
        if blocks != "context_refiner.0":
            parts[f"{blocks}.adaLN_modulation.{0 if z_image else 1}"] = [
                f"{blocks}.adaLN_modulation.0" if z_image else f"{blocks}.norm1.linear"]
    if z_image:
        parts.update({"x_embedder": ["all_x_embedder.2-1"], "final_layer.linear": ["all_final_layer.2-1.linear"],
                      "final_layer.adaLN_modulation.1": ["all_final_layer.2-1.adaLN_modulation.1"],
                      "cap_embedder.1": ["cap_embedder.1"]})
    else:
        parts.update({"x_embedder": ["x_embedder"], "cap_embedder.1": ["time_caption_embed.caption_embedder.1"],
                      "t_embedder.mlp.0": ["time_caption_embed.timestep_embedder.linear_1"],
                      "t_embedder.mlp.2": ["time_caption_embed.timestep_embedder.linear_2"],
                      "final_layer.adaLN_modulation.1": ["norm_out.linear_1"],
                      "final_layer.linear": ["norm_out.linear_2"]})
    return parts


def _bfl_parts(flux2: bool) -> dict[str, list[str]]:
    d, s = "transformer_blocks.0.", "single_transformer_blocks.0."
    parts = {"img_in": ["x_embedder"], "txt_in": ["context_embedder"], "final_layer.linear": ["proj_out"],
             "double_blocks.0.img_attn.qkv": [d + "attn.to_q", d + "attn.to_k", d + "attn.to_v"],
             "double_blocks.0.txt_attn.qkv": [d + "attn.add_q_proj", d + "attn.add_k_proj", d + "attn.add_v_proj"],
             "double_blocks.0.img_attn.proj": [d + "attn.to_out.0"],
             "double_blocks.0.txt_attn.proj": [d + "attn.to_add_out"]}
    mlp = ("linear_in", "linear_out") if flux2 else ("net.0.proj", "net.2")
    for native, ff in (("img_mlp", "ff"), ("txt_mlp", "ff_context")):
        parts[f"double_blocks.0.{native}.0"] = [f"{d}{ff}.{mlp[0]}"]
        parts[f"double_blocks.0.{native}.2"] = [f"{d}{ff}.{mlp[1]}"]
    if flux2:
        parts.update({"single_blocks.0.linear1": [s + "attn.to_qkv_mlp_proj"],
                      "single_blocks.0.linear2": [s + "attn.to_out"],
                      "time_in.in_layer": ["time_guidance_embed.timestep_embedder.linear_1"],
                      "time_in.out_layer": ["time_guidance_embed.timestep_embedder.linear_2"],
                      "guidance_in.in_layer": ["time_guidance_embed.guidance_embedder.linear_1"],
                      "guidance_in.out_layer": ["time_guidance_embed.guidance_embedder.linear_2"],
                      "final_layer.adaLN_modulation.1": ["norm_out.linear"]})
        for m in ("double_stream_modulation_img", "double_stream_modulation_txt", "single_stream_modulation"):
            parts[f"{m}.lin"] = [f"{m}.linear"]
    else:
        parts.update({"single_blocks.0.linear1": [s + "attn.to_q", s + "attn.to_k", s + "attn.to_v", s + "proj_mlp"],
                      "single_blocks.0.linear2": [s + "proj_out"],
                      "distilled_guidance_layer.in_proj": ["distilled_guidance_layer.in_proj"],
                      "distilled_guidance_layer.out_proj": ["distilled_guidance_layer.out_proj"],
                      "distilled_guidance_layer.layers.0.in_layer": ["distilled_guidance_layer.layers.0.linear_1"],
                      "distilled_guidance_layer.layers.0.out_layer": ["distilled_guidance_layer.layers.0.linear_2"]})
    return parts


def _qwen_parts() -> dict[str, list[str]]:
    names = ["img_in", "txt_in", "time_text_embed.timestep_embedder.linear_1", "norm_out.linear", "proj_out"]
    names += [f"transformer_blocks.0.{n}" for n in (
        "img_mod.1", "txt_mod.1", "attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj", "attn.add_k_proj",
        "attn.add_v_proj", "attn.to_out.0", "attn.to_add_out", "img_mlp.net.0.proj", "img_mlp.net.2",
        "txt_mlp.net.0.proj", "txt_mlp.net.2")]
    return {n: [n] for n in names}          # ComfyUI's Qwen-Image names are diffusers' own


def _sd3_parts() -> dict[str, list[str]]:
    parts = {"x_embedder.proj": ["pos_embed.proj"], "context_embedder": ["context_embedder"],
             "t_embedder.mlp.0": ["time_text_embed.timestep_embedder.linear_1"],
             "y_embedder.mlp.2": ["time_text_embed.text_embedder.linear_2"],
             "final_layer.linear": ["proj_out"], "final_layer.adaLN_modulation.1": ["norm_out.linear"]}
    for i in (0, 1):
        n, d = f"joint_blocks.{i}.", f"transformer_blocks.{i}."
        parts[n + "x_block.attn.qkv"] = [d + "attn.to_q", d + "attn.to_k", d + "attn.to_v"]
        parts[n + "context_block.attn.qkv"] = [d + "attn.add_q_proj", d + "attn.add_k_proj", d + "attn.add_v_proj"]
        for native, diffusers in (("x_block.adaLN_modulation.1", "norm1.linear"),
                                  ("x_block.attn.proj", "attn.to_out.0"),
                                  ("context_block.adaLN_modulation.1", "norm1_context.linear"),
                                  ("x_block.mlp.fc1", "ff.net.0.proj"), ("x_block.mlp.fc2", "ff.net.2")):
            parts[n + native] = [d + diffusers]
    parts["joint_blocks.0.x_block.attn2.qkv"] = [f"transformer_blocks.0.attn2.to_{p}" for p in "qkv"]
    parts["joint_blocks.0.x_block.attn2.proj"] = ["transformer_blocks.0.attn2.to_out.0"]
    parts["joint_blocks.0.context_block.attn.proj"] = ["transformer_blocks.0.attn.to_add_out"]
    parts["joint_blocks.0.context_block.mlp.fc2"] = ["transformer_blocks.0.ff_context.net.2"]
    return parts


def _wan_parts() -> dict[str, list[str]]:
    parts = {"head.head": ["proj_out"],  # (a LoRA on the Conv3d patch embedding is left out: "not supported")
             "text_embedding.0": ["condition_embedder.text_embedder.linear_1"],
             "time_embedding.2": ["condition_embedder.time_embedder.linear_2"],
             "time_projection.1": ["condition_embedder.time_proj"]}
    for native, diffusers in (("self_attn.q", "attn1.to_q"), ("self_attn.k", "attn1.to_k"),
                              ("self_attn.v", "attn1.to_v"),
                              ("self_attn.o", "attn1.to_out.0"), ("cross_attn.q", "attn2.to_q"),
                              ("cross_attn.k", "attn2.to_k"), ("cross_attn.v", "attn2.to_v"),
                              ("cross_attn.o", "attn2.to_out.0"), ("ffn.0", "ffn.net.0.proj"), ("ffn.2", "ffn.net.2")):
        parts[f"blocks.0.{native}"] = [f"blocks.0.{diffusers}"]
    return parts


def _latent_inputs(channels: int, frames: tuple = ()) -> Callable[[], tuple]:
    def make() -> tuple:
        g = torch.Generator().manual_seed(3)
        return (torch.randn(1, channels, *frames, 6, 8, generator=g).expand(2, *[-1] * (3 + len(frames))),
                torch.rand(1, generator=g).expand(2), torch.randn(1, 7, 32, generator=g).expand(2, -1, -1))
    return make


def _sd3_inputs() -> tuple:
    x, t, context = _latent_inputs(16)()
    return x, t, context, torch.randn(1, 32, generator=torch.Generator().manual_seed(4)).expand(2, -1)


def _seeded(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        torch.manual_seed(0)
        return build().eval()
    return make


_Z_IMAGE = dict(dim=64, n_layers=1, n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=32, axes_dims=[8, 12, 12],
                axes_lens=[64, 32, 32])
_LUMINA2 = dict(sample_size=16, hidden_size=64, num_layers=1, num_refiner_layers=1, num_attention_heads=2,
                num_kv_heads=1, multiple_of=16, axes_dim_rope=(8, 12, 12), axes_lens=(64, 32, 32), cap_feat_dim=32,
                in_channels=4)
_FLUX2 = dict(in_channels=32, num_layers=1, num_single_layers=1, attention_head_dim=32, num_attention_heads=2,
              joint_attention_dim=32, axes_dims_rope=(8, 8, 8, 8))
_CHROMA = dict(in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=32, num_attention_heads=2,
               joint_attention_dim=32, axes_dims_rope=(8, 12, 12), approximator_num_channels=64,
               approximator_hidden_dim=32, approximator_layers=1)
_QWEN = dict(in_channels=64, out_channels=16, num_layers=1, attention_head_dim=16, num_attention_heads=2,
             joint_attention_dim=32, axes_dims_rope=(4, 6, 6))
_SD3 = dict(sample_size=16, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=32,
            pos_embed_max_size=16, dual_attention_layers=(0,), qk_norm="rms_norm")
_WAN = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=16, out_channels=16,
            text_dim=32, freq_dim=256, ffn_dim=128, num_layers=1, rope_max_seq_len=64)
FAMILIES = {
    "z-image": Family("ZImageTransformer2DModel", _Z_IMAGE, "ZImageLoraLoaderMixin",
                      _seeded(lambda: TinyNextDiT(dim=64, n_heads=2, n_kv_heads=2, ffn=170, z_image=True,
                                                  pad_tokens_multiple=32)),
                      _nextdit_parts(True), _latent_inputs(16)),
    "lumina2": Family("Lumina2Transformer2DModel", _LUMINA2, "Lumina2LoraLoaderMixin",
                      _seeded(lambda: TinyNextDiT(in_channels=4, dim=64, n_heads=2, n_kv_heads=1, ffn=256)),
                      _nextdit_parts(False), _latent_inputs(4)),
    "flux2": Family("Flux2Transformer2DModel", _FLUX2, "Flux2LoraLoaderMixin",
                    _seeded(lambda: TinyFlux2(hidden=64, heads=2, guidance_embed=True)),
                    _bfl_parts(True), _latent_inputs(32), swapped=("final_layer.adaLN_modulation.1",)),
    "chroma": Family("ChromaTransformer2DModel", _CHROMA, "FluxLoraLoaderMixin",
                     _seeded(lambda: TinyChroma(in_channels=4, hidden=64, heads=2)), _bfl_parts(False),
                     _latent_inputs(4)),
    "qwen-image": Family("QwenImageTransformer2DModel", _QWEN, "QwenImageLoraLoaderMixin", _seeded(TinyQwenImage),
                         _qwen_parts(), _latent_inputs(16, (1,))),
    "sd3": Family("SD3Transformer2DModel", _SD3, "SD3LoraLoaderMixin", _seeded(TinyMMDiT), _sd3_parts(),
                  _sd3_inputs,
                  swapped=("final_layer.adaLN_modulation.1", "joint_blocks.1.context_block.adaLN_modulation.1")),
    "wan": Family("WanTransformer3DModel", _WAN, "WanLoraLoaderMixin", _seeded(TinyWan), _wan_parts(),
                  _latent_inputs(16, (3,))),
}


def _swap_halves(t: Tensor) -> Tensor:
    half = t.shape[0] // 2
    return torch.cat([t[half:], t[:half]])


def _merged(family: Family, native: nn.Module, expected: dict) -> nn.Module:
    merged = copy.deepcopy(native)
    modules = dict(merged.named_modules())
    with torch.no_grad():
        for layer, diffusers in family.parts.items():
            delta = torch.cat([expected[d][0] for d in diffusers])
            modules[layer].weight += STRENGTH * (_swap_halves(delta) if layer in family.swapped else delta)
    return merged


def _converted(tensors: dict[str, Tensor], style: str) -> dict[str, Tensor]:
    """The diffusers file's LoRA under another trainer's key layout, diffusers module names kept: kohya's
    ``lora_unet_<flat name>.lora_down.weight`` + alpha (musubi-tuner's Z-Image/Qwen-Image files), ai-toolkit's
    ``diffusion_model.<name>.lora_A.weight`` (no alpha), LyCORIS's ``lycoris_<flat name>``."""
    out: dict[str, Tensor] = {}
    for key, t in tensors.items():
        module, param = key[len("transformer."):].rsplit(".", 2)[0], key.rsplit(".", 2)[1]
        if style == "aitoolkit":  # no alpha: the scale goes into lora_B
            out[f"diffusion_model.{module}.{param}.weight"] = t * (ALPHA / RANK if param == "lora_B" else 1.0)
            continue
        flat = ("lora_unet_" if style == "kohya" else "lycoris_") + module.replace(".", "_")
        out[f"{flat}.lora_{'down' if param == 'lora_A' else 'up'}.weight"] = t
        out[f"{flat}.alpha"] = torch.tensor(ALPHA)
    return out


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    import diffusers
    from diffusers.loaders import lora_pipeline

    spec = FAMILIES[request.param]
    path = tmp_path_factory.mktemp(request.param) / "diffusers.safetensors"
    targets = sorted({d for parts in spec.parts.values() for d in parts})
    expected = write_diffusers_dit(path, getattr(diffusers, spec.diffusers_class), spec.dims,
                                   getattr(lora_pipeline, spec.saver), targets, RANK, ALPHA)
    assert set(expected) == set(targets)                  # every diffusers layer of the table exists with that name
    return spec, spec.native(), path, expected


def _run(net: nn.Module, bound, inputs: tuple) -> Tensor:
    runner = BranchRunner([bound], [STRENGTH])
    with torch.no_grad(), runner, runner.rows(torch.tensor([0, 1])):
        return net(*inputs)


@pytest.mark.parametrize("style", ["diffusers", "kohya", "aitoolkit", "lycoris"])
def test_diffusers_named_files_bind_fully_and_equal_the_merged_native_model(family, style, tmp_path):
    spec, native, path, expected = family
    if style != "diffusers":
        save_file(_converted(load_file(str(path)), style), str(tmp_path / "f.safetensors"))
        path = tmp_path / "f.safetensors"
    bound = bind_lora(read_lora_file(path), {"unet": native})
    assert not bound.unmatched and not bound.lora.skipped
    assert {n for n, _, _ in bound.targets} == {f"unet:{n}" for n in spec.parts}
    inputs = spec.inputs()
    out = _run(native, bound, inputs)
    with torch.no_grad():
        torch.testing.assert_close(out[0], native(*inputs)[0], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(out[1], _merged(spec, native, expected)(*inputs)[0], atol=2e-5, rtol=1e-4)


def test_native_named_files_bind_by_the_native_names(family, tmp_path):
    """ComfyUI's and diffusion-pipe's files: PEFT on the native model under ``diffusion_model.``."""
    spec, native, _, _ = family
    path = tmp_path / "native.safetensors"
    expected = write_peft(path, native, sorted(spec.parts), layout="comfyui", rank=RANK, alpha=ALPHA)
    bound = bind_lora(read_lora_file(path), {"unet": native})
    assert not bound.unmatched and {n for n, _, _ in bound.targets} == {f"unet:{n}" for n in spec.parts}
    modules = dict(native.named_modules())
    for name, module, delta in bound.targets:
        layer = name.split(":", 1)[1]
        torch.testing.assert_close(delta.weight_delta(module), expected[layer][0].reshape(modules[layer].weight.shape),
                                   atol=1e-6, rtol=1e-5)
