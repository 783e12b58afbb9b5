"""Flux LoRAs on a BFL-named Flux (Forge's): kohya, BFL/ComfyUI, diffusers and LyCORIS files,
diffusers q/k/v parts on fused layers, T5 text-encoder keys, and quantized-looking weights."""

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from lib_loratorio.branch_runner import BranchRunner
from lib_loratorio.errors import LoraMismatchError
from lib_loratorio.lora_files import read_lora_file
from lib_loratorio.lora_layers import SlicedOutputDelta
from lib_loratorio.network_names import bind_lora
from tests.lora_writers import write_diffusers_flux, write_kohya
from tests.tiny_models import tiny_bfl_flux, tiny_clip_text, tiny_t5_encoder

STRENGTH = 0.7
RANK, ALPHA = 4, 8.0


def _bfl_parts(depth: int = 1, single: int = 1) -> dict[str, list[str]]:
    """BFL module -> the diffusers modules whose outputs it stacks, in output order.

    Written out here from Forge's flux_to_diffusers table, independently of network_names.
    """
    parts = {"img_in": ["x_embedder"], "txt_in": ["context_embedder"], "final_layer.linear": ["proj_out"],
             "final_layer.adaLN_modulation.1": ["norm_out.linear"]}
    for bfl, diffusers in (("time_in", "timestep_embedder"), ("vector_in", "text_embedder"),
                           ("guidance_in", "guidance_embedder")):
        parts[f"{bfl}.in_layer"] = [f"time_text_embed.{diffusers}.linear_1"]
        parts[f"{bfl}.out_layer"] = [f"time_text_embed.{diffusers}.linear_2"]
    for i in range(depth):
        b, d = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        parts[b + "img_attn.qkv"] = [d + "attn.to_q", d + "attn.to_k", d + "attn.to_v"]
        parts[b + "txt_attn.qkv"] = [d + "attn.add_q_proj", d + "attn.add_k_proj", d + "attn.add_v_proj"]
        for bfl, diffusers in (("img_attn.proj", "attn.to_out.0"), ("txt_attn.proj", "attn.to_add_out"),
                               ("img_mod.lin", "norm1.linear"), ("txt_mod.lin", "norm1_context.linear"),
                               ("img_mlp.0", "ff.net.0.proj"), ("img_mlp.2", "ff.net.2"),
                               ("txt_mlp.0", "ff_context.net.0.proj"), ("txt_mlp.2", "ff_context.net.2")):
            parts[b + bfl] = [d + diffusers]
    for i in range(single):
        b, d = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        parts[b + "linear1"] = [d + "attn.to_q", d + "attn.to_k", d + "attn.to_v", d + "proj_mlp"]
        parts[b + "modulation.lin"] = [d + "norm.linear"]
        parts[b + "linear2"] = [d + "proj_out"]
    return parts


def _swap_halves(t: Tensor) -> Tensor:
    """diffusers norm_out rows (scale, shift) -> BFL order (shift, scale)."""
    half = t.shape[0] // 2
    return torch.cat([t[half:], t[:half]])


def _stack(bfl: str, tensors: list[Tensor]) -> Tensor:
    t = torch.cat(tensors)
    return _swap_halves(t) if bfl == "final_layer.adaLN_modulation.1" else t


def _merged(flux: nn.Module, expected: dict) -> nn.Module:
    """``flux`` with the diffusers deltas PEFT computed merged at STRENGTH into its BFL layers."""
    merged = copy.deepcopy(flux)
    modules = dict(merged.named_modules())
    with torch.no_grad():
        for bfl, diffusers in _bfl_parts().items():
            if not any(d in expected for d in diffusers):
                continue
            layer = modules[bfl]
            # A diffusers module a partial LoRA leaves out contributes zero rows.
            rows = [expected[d][0] if d in expected else None for d in diffusers]
            width = [r.shape[0] for r in rows if r is not None][0]
            zero = torch.zeros(width, layer.weight.shape[1])
            sizes = _part_sizes(layer, len(diffusers))
            layer.weight += STRENGTH * _stack(bfl, [r if r is not None else zero[:n]
                                                    for r, n in zip(rows, sizes, strict=True)])
            biases = [expected[d][1] if d in expected else None for d in diffusers]
            if any(b is not None for b in biases):
                layer.bias += STRENGTH * _stack(bfl, [b if b is not None else torch.zeros(n)
                                                      for b, n in zip(biases, sizes, strict=True)])
    return merged


def _part_sizes(layer: nn.Linear, n: int) -> list[int]:
    if n == 4:  # linear1: q, k, v of hidden width, then the MLP
        h = layer.in_features
        return [h, h, h, layer.out_features - 3 * h]
    return [layer.out_features // n] * n


def _convert(tensors: dict[str, Tensor], scale: float, style: str) -> dict[str, Tensor]:
    """The diffusers file's LoRA as a kohya BFL file ("kohya": fused layers get one LoRA of
    stacked rank) or a BFL/ComfyUI file ("bfl": the same under ``diffusion_model.`` with PEFT
    suffixes), or as LyCORIS names ("lycoris": ``lora_transformer_<diffusers name>``)."""
    out: dict[str, Tensor] = {}
    if style == "lycoris":
        for key, t in tensors.items():
            module, param = key[len("transformer."):].rsplit(".", 2)[0], key.rsplit(".", 2)[1]
            flat = "lora_transformer_" + module.replace(".", "_")
            out[f"{flat}.lora_{'down' if param == 'lora_A' else 'up'}.weight"] = t
            out[f"{flat}.alpha"] = torch.tensor(ALPHA)
        return out
    for bfl, diffusers in _bfl_parts().items():
        downs = [tensors[f"transformer.{d}.lora_A.weight"] for d in diffusers]
        ups = [tensors[f"transformer.{d}.lora_B.weight"] * scale for d in diffusers]
        down, up = torch.cat(downs), _stack(bfl, [torch.block_diag(*ups)])
        if style == "kohya":
            key = "lora_unet_" + bfl.replace(".", "_")
            out.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                        f"{key}.alpha": torch.tensor(float(down.shape[0]))})
        else:
            key = "diffusion_model." + bfl
            out.update({f"{key}.lora_A.weight": down, f"{key}.lora_B.weight": up,
                        f"{key}.alpha": torch.tensor(float(down.shape[0]))})
    return out


@pytest.fixture(scope="module")
def flux():
    return tiny_bfl_flux()


@pytest.fixture(scope="module")
def diffusers_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("flux") / "diffusers.safetensors"
    return path, write_diffusers_flux(path, rank=RANK, alpha=ALPHA)


def _inputs(rows: int = 2) -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(3)
    one = (torch.randn(1, 6, 8, generator=g), torch.randn(1, 5, 24, generator=g), torch.rand(1, generator=g),
           torch.randn(1, 20, generator=g), torch.rand(1, generator=g))
    return tuple(t.expand(rows, *t.shape[1:]).clone() for t in one)


def _run(net: nn.Module, bound, x: tuple[Tensor, ...]) -> Tensor:
    """Rows 0 (base) and 1 (the LoRA at STRENGTH) in one forward through BranchRunner hooks."""
    runner = BranchRunner([bound], [STRENGTH])
    with torch.no_grad(), runner, runner.rows(torch.tensor([0, 1])):
        return net(*x)


def _format_file(style: str, diffusers_file, tmp_path) -> str:
    path, _ = diffusers_file
    if style == "diffusers":
        return path
    converted = _convert(load_file(str(path)), ALPHA / RANK, style)
    save_file(converted, str(tmp_path / f"{style}.safetensors"))
    return tmp_path / f"{style}.safetensors"


@pytest.mark.parametrize("style", ["diffusers", "kohya", "bfl", "lycoris"])
def test_every_format_binds_fully_and_equals_the_merged_bfl_model(style, flux, diffusers_file, tmp_path):
    _, expected = diffusers_file
    bound = bind_lora(read_lora_file(_format_file(style, diffusers_file, tmp_path)), {"unet": flux})
    assert not bound.unmatched and not bound.lora.skipped
    assert {n for n, _, _ in bound.targets} == {f"unet:{n}" for n in _bfl_parts()}
    x = _inputs()
    out = _run(flux, bound, x)
    with torch.no_grad():
        torch.testing.assert_close(out[0], flux(*x)[0], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(out[1], _merged(flux, expected)(*x)[0], atol=2e-5, rtol=1e-4)


def test_diffusers_parts_gather_into_sliced_deltas_with_their_biases(flux, tmp_path):
    path = tmp_path / "biased.safetensors"
    expected = write_diffusers_flux(path, rank=RANK, alpha=ALPHA, lora_bias=True)
    bound = bind_lora(read_lora_file(path), {"unet": flux})
    deltas = {n.split(":", 1)[1]: (m, d) for n, m, d in bound.targets}
    qkv, delta = deltas["double_blocks.0.img_attn.qkv"]
    assert isinstance(delta, SlicedOutputDelta) and len(delta.parts) == 3
    parts = [expected[f"transformer_blocks.0.attn.{p}"] for p in ("to_q", "to_k", "to_v")]
    torch.testing.assert_close(delta.weight_delta(qkv), torch.cat([w for w, _ in parts]))
    torch.testing.assert_close(delta.bias, torch.cat([b for _, b in parts]))
    norm, swapped = deltas["final_layer.adaLN_modulation.1"]
    torch.testing.assert_close(swapped.weight_delta(norm), _swap_halves(expected["norm_out.linear"][0]))
    x = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(_run(flux, bound, x)[1], _merged(flux, expected)(*x)[0], atol=2e-5, rtol=1e-4)


def test_partial_parts_leave_the_other_columns_alone(flux, tmp_path):
    """Only q and v of the fused qkv, q, v and the MLP of linear1: zeros in between."""
    path = tmp_path / "partial.safetensors"
    expected = write_diffusers_flux(path, targets=["to_q", "to_v", "proj_mlp"])
    bound = bind_lora(read_lora_file(path), {"unet": flux})
    assert not bound.unmatched and len(bound.targets) == 2
    layer, delta = next((m, d) for n, m, d in bound.targets if n.endswith("linear1"))
    x = torch.randn(2, 5, 32)
    dense = delta.weight_delta(layer)
    assert not dense[32:64].any() and dense[64:96].any()
    torch.testing.assert_close(delta.output_delta(x, layer), F.linear(x, dense), atol=1e-6, rtol=1e-5)
    d64 = delta.to("cpu", torch.float64)
    assert d64 is not delta and d64.parts[0][1].down.dtype == torch.float64
    torch.testing.assert_close(d64.output_delta(x.double(), layer).float(), delta.output_delta(x, layer))
    xs = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(_run(flux, bound, xs)[1], _merged(flux, expected)(*xs)[0], atol=2e-5, rtol=1e-4)


def test_flux_lora_of_another_hidden_size_is_a_mismatch(diffusers_file, tmp_path):
    path, _ = diffusers_file
    wider = tiny_bfl_flux(hidden=48)
    with pytest.raises(LoraMismatchError, match=r"30 of 30 modules.*hidden size 32 but the model.s is 48"):
        bind_lora(read_lora_file(path), {"unet": wider})
    write_diffusers_flux(tmp_path / "q.safetensors", targets=["to_q"])
    with pytest.raises(LoraMismatchError, match=r"LoRA \[32, 32\] vs output columns 0:48 of model layer "
                                                r"\[336, 48\] \(expected \[48, 48\]\)"):
        bind_lora(read_lora_file(tmp_path / "q.safetensors"), {"unet": wider})


class Fp8Linear(nn.Module):
    """Forge's Linear with an fp8-stored weight: not an nn.Linear, casts the weight per forward."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = nn.Parameter(linear.weight.detach().to(torch.float8_e4m3fn), requires_grad=False)
        self.bias = linear.bias

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight.to(x.dtype), self.bias)


class PackedLinear(nn.Module):
    """bnb 4-bit-like Linear: ``weight`` is packed uint8 storage of another shape, the real shape
    is ``weight.quant_state.shape``; the forward uses a kept dequantized copy."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.register_buffer("dequantized", linear.weight.detach().clone())
        self.weight = nn.Parameter(torch.zeros(linear.weight.numel() // 2, 1, dtype=torch.uint8), requires_grad=False)
        self.weight.quant_state = SimpleNamespace(shape=linear.weight.shape)
        self.bias = linear.bias

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.dequantized.to(x.dtype), self.bias)


def _replace_linears(net: nn.Module, cls: type) -> nn.Module:
    net = copy.deepcopy(net)
    for name, module in list(net.named_modules()):
        if isinstance(module, nn.Linear):
            parent, _, child = name.rpartition(".")
            setattr(net.get_submodule(parent) if parent else net, child, cls(module))
    return net


@pytest.mark.parametrize("cls", [Fp8Linear, PackedLinear])
def test_quantized_weights_bind_by_their_real_shape_and_give_the_same_output(cls, flux, diffusers_file):
    path, expected = diffusers_file
    quantized = _replace_linears(flux, cls)
    # The float model these weights stand for (fp8 rounding included).
    reference = copy.deepcopy(flux)
    with torch.no_grad():
        pairs = zip(sorted(_weights(quantized).items()), sorted(_weights(reference).items()), strict=True)
        for (_, q), (_, r) in pairs:
            r.weight.copy_(q.weight.float() if cls is Fp8Linear else q.dequantized)
    bound = bind_lora(read_lora_file(path), {"unet": quantized})
    assert not bound.unmatched and len(bound.targets) == len(_bfl_parts())
    x = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(_run(quantized, bound, x)[1], _merged(reference, expected)(*x)[0],
                                   atol=2e-5, rtol=1e-4)


def _weights(net: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in net.named_modules() if getattr(m, "weight", None) is not None}


def test_dora_on_an_fp8_model_says_it_needs_an_unquantized_one(flux, tmp_path):
    path = tmp_path / "dora.safetensors"
    write_kohya(path, flux, ["img_in"], "dora")
    quantized = _replace_linears(flux, Fp8Linear)
    bound = bind_lora(read_lora_file(path), {"unet": quantized})
    with pytest.raises(LoraMismatchError, match="DoRA LoRAs need an unquantized model.*float8_e4m3fn"):
        _run(quantized, bound, _inputs())


def test_flux_text_encoder_keys_bind_to_clip_l_and_t5(flux, tmp_path):
    """CLIP-L as lora_te1_, T5 as lora_te3_ (sd-scripts), lora_te2_ (OneTrainer), text_encoder_2. (diffusers)."""
    clip, t5 = tiny_clip_text(), tiny_t5_encoder()
    clip_names = [n for n in _weights(clip) if ".layers." in n and n.endswith(("q_proj", "fc1"))]
    t5_names = [n for n in _weights(t5) if n.startswith("encoder.block.") and not n.endswith("layer_norm")]
    tensors: dict[str, Tensor] = {}
    for i, (prefix, net, names) in enumerate((("lora_te1_", clip, clip_names), ("lora_te3_", t5, t5_names),
                                              ("lora_te2_", t5, t5_names[:3]))):
        write_kohya(tmp_path / f"{i}.safetensors", net, names, "lora", prefix=prefix)
        tensors.update(load_file(str(tmp_path / f"{i}.safetensors")))
    # transformers 5 has no "text_model." level; files always do.
    tensors = {k.replace("lora_te1_encoder_", "lora_te1_text_model_encoder_"): v for k, v in tensors.items()}
    q = "text_encoder_2.encoder.block.1.layer.0.SelfAttention.q"
    tensors.update({f"{q}.lora_A.weight": torch.randn(2, 32), f"{q}.lora_B.weight": torch.randn(32, 2)})
    save_file(tensors, str(tmp_path / "te.safetensors"))
    lora = read_lora_file(tmp_path / "te.safetensors")
    assert "te3:encoder_block_0_layer_1_DenseReluDense_wi_0" in lora.modules
    bound = bind_lora(lora, {"unet": flux, "te1": clip, "te2": t5, "te3": t5})
    assert not bound.unmatched
    counts = {c: sum(n.startswith(c + ":") for n, _, _ in bound.targets) for c in ("te1", "te2", "te3")}
    assert counts == {"te1": len(clip_names), "te2": 4, "te3": len(t5_names)}


def test_te3_peft_alpha_comes_from_its_metadata_prefix(tmp_path):
    key = "text_encoder_3.encoder.block.0.layer.0.SelfAttention.q"
    save_file({f"{key}.lora_A.weight": torch.randn(4, 32), f"{key}.lora_B.weight": torch.randn(32, 4)},
              str(tmp_path / "t5.safetensors"), metadata={"lora_adapter_metadata": '{"text_encoder_3.lora_alpha": 2}'})
    modules = read_lora_file(tmp_path / "t5.safetensors").modules
    assert modules["te3:encoder_block_0_layer_0_SelfAttention_q"].scale == 0.5


def test_dora_on_the_swapped_norm_out_is_left_out_with_a_reason(flux, tmp_path):
    tensors = {f"transformer.{m}.{p}": t for m in ("norm_out.linear", "x_embedder") for p, t in (
        ("lora_A.weight", torch.randn(2, 32 if m == "norm_out.linear" else 8)),
        ("lora_B.weight", torch.randn(64 if m == "norm_out.linear" else 32, 2)),
        ("lora_magnitude_vector", torch.rand(64 if m == "norm_out.linear" else 32)))}
    save_file(tensors, str(tmp_path / "dora.safetensors"))
    bound = bind_lora(read_lora_file(tmp_path / "dora.safetensors"), {"unet": flux})
    assert [n for n, _, _ in bound.targets] == ["unet:img_in"]
    assert "swapped" in bound.reasons["unet:norm_out_linear"]
