"""Writers of real LoRA ``.safetensors`` files for tests, with seeded random weights.

Each writer returns the *expected* change of every targeted module, computed here from the
tensors it wrote with the formulas of the reference implementations (kohya, LyCORIS, A1111), or,
for diffusers/PEFT files (diffusers-format Flux included), by the real ``peft`` library merging
its own adapter. Tests compare the reader's deltas with these.
"""

from __future__ import annotations

import copy
import json
import math
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

# module name -> (expected weight delta, expected bias delta or None)
Expected = dict[str, tuple[Tensor, Optional[Tensor]]]
# (live weight, rank, alpha, generator) -> (tensors by kohya/LyCORIS suffix, dW, dB)
FormatFn = Callable[[Tensor, int, float, torch.Generator], tuple[dict[str, Tensor], Tensor, Optional[Tensor]]]

KOHYA_PREFIX = {"unet": "lora_unet_", "te1": "lora_te_", "te2": "lora_te2_"}
DIFFUSERS_PREFIX = {"unet": "unet", "te1": "text_encoder", "te2": "text_encoder_2"}


def _rand(g: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(*shape, generator=g) * 0.2


def _dims(w: Tensor) -> tuple[int, int, list[int]]:
    return w.shape[0], w.shape[1], list(w.shape[2:])


def _cp(t: Tensor, wa: Tensor, wb: Tensor) -> Tensor:
    """Tucker rebuild as A1111's lyco_helpers.make_weight_cp: wa [r, out], wb [r, in]."""
    tmp = torch.einsum("ijkl,jr->irkl", t, wb)
    return torch.einsum("ijkl,ir->rjkl", tmp, wa)


def _lora(w, r, alpha, g):
    out, inp, k = _dims(w)
    down, up = _rand(g, r, inp, *k), _rand(g, out, r, *([1, 1] if k else []))
    dw = (up.reshape(out, r) @ down.reshape(r, -1)).reshape(w.shape) * (alpha / r)
    return {"lora_down.weight": down, "lora_up.weight": up, "alpha": torch.tensor(alpha)}, dw, None


def _locon_tucker(w, r, alpha, g):
    out, inp, k = _dims(w)
    if not k or k == [1, 1]:
        return _lora(w, r, alpha, g)
    down, mid, up = _rand(g, r, inp, 1, 1), _rand(g, r, r, *k), _rand(g, out, r, 1, 1)
    dw = torch.einsum("oa,abkl,bi->oikl", up[:, :, 0, 0], mid, down[:, :, 0, 0]) * (alpha / r)
    t = {"lora_down.weight": down, "lora_mid.weight": mid, "lora_up.weight": up, "alpha": torch.tensor(alpha)}
    return t, dw, None


def _loha(w, r, alpha, g):
    out, inp, k = _dims(w)
    n = inp * math.prod(k)
    t = {"hada_w1_a": _rand(g, out, r), "hada_w1_b": _rand(g, r, n),
         "hada_w2_a": _rand(g, out, r), "hada_w2_b": _rand(g, r, n), "alpha": torch.tensor(alpha)}
    dw = (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"])
    return t, dw.reshape(w.shape) * (alpha / r), None


def _loha_tucker(w, r, alpha, g):
    out, inp, k = _dims(w)
    if not k or k == [1, 1]:
        return _loha(w, r, alpha, g)
    t = {"hada_t1": _rand(g, r, r, *k), "hada_w1_a": _rand(g, r, out), "hada_w1_b": _rand(g, r, inp),
         "hada_t2": _rand(g, r, r, *k), "hada_w2_a": _rand(g, r, out), "hada_w2_b": _rand(g, r, inp),
         "alpha": torch.tensor(alpha)}
    dw = _cp(t["hada_t1"], t["hada_w1_a"], t["hada_w1_b"]) * _cp(t["hada_t2"], t["hada_w2_a"], t["hada_w2_b"])
    return t, dw * (alpha / r), None


def _kron(w1: Tensor, w2: Tensor, shape: torch.Size) -> Tensor:
    if w2.ndim == 4:
        w1 = w1[:, :, None, None]
    return torch.kron(w1, w2).reshape(shape)


def _lokr(w, r, alpha, g, w1_factored=False, w2_full=False, tucker=False):
    out, inp, k = _dims(w)
    o2, i2 = out // 2, inp // 2  # w1 is 2x2 (every tiny layer has even dims)
    t: dict[str, Tensor] = {"alpha": torch.tensor(alpha)}
    if w1_factored:
        t["lokr_w1_a"], t["lokr_w1_b"] = _rand(g, 2, r), _rand(g, r, 2)
        w1 = t["lokr_w1_a"] @ t["lokr_w1_b"]
    else:
        w1 = t["lokr_w1"] = _rand(g, 2, 2)
    if w2_full:
        w2 = t["lokr_w2"] = _rand(g, o2, i2, *k)
    elif tucker and k and k != [1, 1]:
        t["lokr_t2"], t["lokr_w2_a"], t["lokr_w2_b"] = _rand(g, r, r, *k), _rand(g, r, o2), _rand(g, r, i2)
        w2 = _cp(t["lokr_t2"], t["lokr_w2_a"], t["lokr_w2_b"])
    else:
        t["lokr_w2_a"], t["lokr_w2_b"] = _rand(g, o2, r), _rand(g, r, i2 * math.prod(k))
        w2 = (t["lokr_w2_a"] @ t["lokr_w2_b"]).reshape(o2, i2, *k)
    # LyCORIS: full w1 and full w2 -> scale 1 whatever alpha says.
    scale = 1.0 if (w2_full and not w1_factored) else alpha / r
    return t, _kron(w1, w2, w.shape) * scale, None


def _full(w, r, alpha, g):
    t = {"diff": _rand(g, *w.shape), "diff_b": _rand(g, w.shape[0])}
    return t, t["diff"].clone(), t["diff_b"].clone()


def _dora(per_output: bool) -> FormatFn:
    def make(w, r, alpha, g):
        t, dw, _ = _lora(w, r, alpha, g)
        merged = w.detach().float() + dw
        if per_output:  # LyCORIS wd_on_out: [out, 1(, 1, 1)]
            norm = merged.reshape(merged.shape[0], -1).norm(dim=1).reshape(-1, *[1] * (w.ndim - 1))
        else:  # LyCORIS default / A1111: [1, in(, 1, 1)]
            norm = merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1)
            norm = norm.reshape(1, -1, *[1] * (w.ndim - 2))
        t["dora_scale"] = norm * (1 + 0.3 * torch.rand(norm.shape, generator=g))
        return t, merged * (t["dora_scale"] / norm) - w.detach().float(), None
    return make


FORMATS: dict[str, FormatFn] = {
    "lora": _lora,
    "locon_tucker": _locon_tucker,
    "loha": _loha,
    "loha_tucker": _loha_tucker,
    "lokr": _lokr,
    "lokr_full": lambda w, r, a, g: _lokr(w, r, a, g, w2_full=True),
    "lokr_factored": lambda w, r, a, g: _lokr(w, r, a, g, w1_factored=True),
    "lokr_tucker": lambda w, r, a, g: _lokr(w, r, a, g, tucker=True),
    "full": _full,
    "dora": _dora(per_output=False),
    "dora_out": _dora(per_output=True),
}


def write_kohya(path: str | Path, network: nn.Module, targets: list[str], fmt: str = "lora",
                component: str = "unet", rank: int = 4, alpha: float = 2.0, seed: int = 0,
                prefix: Optional[str] = None) -> Expected:
    """kohya/A1111/LyCORIS-style file: ``lora_unet_<flat name>.<param>``, names as in ``network``."""
    g = torch.Generator().manual_seed(seed)
    modules = dict(network.named_modules())
    prefix = KOHYA_PREFIX[component] if prefix is None else prefix
    tensors: dict[str, Tensor] = {}
    expected: Expected = {}
    for name in targets:
        params, dw, db = FORMATS[fmt](modules[name].weight.detach(), rank, alpha, g)
        key = prefix + name.replace(".", "_")
        tensors.update({f"{key}.{p}": v.contiguous() for p, v in params.items()})
        expected[name] = (dw, db)
    save_file(tensors, str(path), metadata={"ss_network_module": "test"})
    return expected


def write_peft(path: str | Path, network: nn.Module, targets: list[str], component: str = "unet",
               layout: str = "diffusers", rank: int = 4, alpha: float = 8.0, seed: int = 0,
               use_dora: bool = False, metadata: bool = True) -> Expected:
    """diffusers/PEFT file made by the real ``peft`` library on a copy of ``network``.

    layout: "diffusers" (``unet.`` / ``text_encoder.`` prefixes, diffusers' metadata),
    "peft" (``base_model.model.`` prefix), "comfyui" (``diffusion_model.``: ComfyUI's and diffusion-pipe's
    transformer LoRAs) or "bare" (no prefix). ``metadata=False`` leaves the
    alpha out of the file, as plain PEFT state dicts do.
    """
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

    model = copy.deepcopy(network)
    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets),
                        init_lora_weights=False, use_dora=use_dora)
    peft_model = get_peft_model(model, config)
    state = get_peft_model_state_dict(peft_model)
    before = {n: m.weight.detach().clone() for n, m in network.named_modules() if n in targets}
    merged = dict(peft_model.merge_and_unload().named_modules())
    expected: Expected = {n: (merged[n].weight.detach() - w, None) for n, w in before.items()}

    prefix = {"diffusers": DIFFUSERS_PREFIX[component] + ".", "peft": "base_model.model.",
              "comfyui": "diffusion_model.", "bare": ""}[layout]
    tensors = {prefix + k[len("base_model.model."):]: v.contiguous() for k, v in state.items()}
    meta = {"format": "pt"}
    if metadata:
        cfg = {"r": rank, "lora_alpha": alpha, "use_dora": use_dora}
        if layout == "diffusers":
            cfg = {f"{DIFFUSERS_PREFIX[component]}.{k}": v for k, v in cfg.items()}
        meta["lora_adapter_metadata"] = json.dumps(cfg)
    save_file(tensors, str(path), metadata=meta)
    return expected


# A tiny diffusers FluxTransformer2DModel with the dimensions of tiny_models.TinyBflFlux's defaults.
TINY_DIFFUSERS_FLUX = dict(patch_size=1, in_channels=8, num_layers=1, num_single_layers=1, attention_head_dim=16,
                           num_attention_heads=2, joint_attention_dim=24, pooled_projection_dim=20,
                           guidance_embeds=True, axes_dims_rope=(4, 6, 6))
# Every Linear of a diffusers Flux, as PEFT target suffixes.
FLUX_DIFFUSERS_TARGETS = [
    "to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp", "proj_out",
    "norm1.linear", "norm1_context.linear", "norm.linear", "norm_out.linear", "x_embedder",
    "context_embedder", "linear_1", "linear_2",
]


def write_diffusers_flux(path: str | Path, rank: int = 4, alpha: float = 8.0, seed: int = 0,
                         lora_bias: bool = False, targets: Optional[list[str]] = None,
                         dims: Optional[dict] = None) -> Expected:
    """diffusers-format Flux LoRA (``transformer.<diffusers name>.lora_A.weight``) on every Linear
    of a tiny diffusers Flux (``dims`` overrides TINY_DIFFUSERS_FLUX); see write_diffusers_dit."""
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders.lora_pipeline import FluxLoraLoaderMixin

    return write_diffusers_dit(path, FluxTransformer2DModel, {**TINY_DIFFUSERS_FLUX, **(dims or {})},
                               FluxLoraLoaderMixin, targets or FLUX_DIFFUSERS_TARGETS, rank, alpha, seed, lora_bias)


def write_diffusers_dit(path: str | Path, model_class: type, dims: dict, saver: type, targets: list[str],
                        rank: int = 4, alpha: float = 8.0, seed: int = 0, lora_bias: bool = False) -> Expected:
    """A diffusers-format transformer LoRA (``transformer.<diffusers name>.lora_A.weight``) on the ``targets`` of a
    tiny ``model_class(**dims)``, made and saved by diffusers/PEFT themselves (``saver``: the family's LoRA loader
    mixin); expected deltas by PEFT merging its own adapter, keyed by diffusers module name."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    model = model_class(**dims)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=False, lora_bias=lora_bias)
    model.add_adapter(config)
    with warnings.catch_warnings():  # PEFT takes 1-D lora_B biases for unsharded ZeRO-3 tensors
        warnings.simplefilter("ignore")
        state = get_peft_model_state_dict(model)
    expected: Expected = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, BaseTunerLayer):
                base = module.get_base_layer()
                w = base.weight.clone()
                b = base.bias.clone() if base.bias is not None else None
                module.merge()
                expected[name] = (base.weight - w, base.bias - b if lora_bias and b is not None else None)
    path = Path(path)
    saver.save_lora_weights(path.parent, transformer_lora_layers=state, weight_name=path.name,
                            transformer_lora_adapter_metadata=config.to_dict())
    return expected


def write_diffusers_text_encoder(path: str | Path, text_encoder: nn.Module, targets: list[str], rank: int = 4,
                                 seed: int = 0) -> Expected:
    """A text-encoder LoRA as diffusers' own training scripts save one: PEFT adapters converted by
    ``convert_state_dict_to_diffusers`` (``<module>.lora_linear_layer.down.weight``) and written by
    ``StableDiffusionPipeline.save_lora_weights`` under ``text_encoder.``; no alpha in the file (diffusers
    loads it at scale 1, so the adapter is made with alpha = rank). Expected deltas by PEFT's merge."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    model = copy.deepcopy(text_encoder)
    torch.manual_seed(seed)
    model = inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False,
                                               target_modules=list(targets)), model)
    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(model))
    adapted = dict(model.named_modules())
    with torch.no_grad():
        expected: Expected = {name: (adapted[name].get_delta_weight("default"), None) for name in targets}
    path = Path(path)
    StableDiffusionPipeline.save_lora_weights(path.parent, text_encoder_lora_layers=state, weight_name=path.name,
                                              safe_serialization=True)
    return expected
