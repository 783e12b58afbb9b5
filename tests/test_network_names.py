"""Binding LoRA files to live networks under both UNet naming conventions and to text encoders."""

import copy

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from lib_loratorio.errors import LoraMismatchError
from lib_loratorio.lora_files import read_lora_file
from lib_loratorio.network_names import bind_lora, unet_name_aliases
from tests.lora_writers import write_kohya
from tests.tiny_models import ldm_view, tiny_clip_text, tiny_open_clip_text, tiny_sd15_unet, tiny_sdxl_unet


def _weighted(net: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in net.named_modules() if isinstance(getattr(m, "weight", None), torch.Tensor)
            and m.weight.ndim in (2, 4)}


@pytest.fixture(scope="module")
def sd15():
    unet = tiny_sd15_unet(layers_per_block=2)
    return unet, ldm_view(unet)


@pytest.fixture(scope="module")
def sdxl():
    unet = tiny_sdxl_unet()
    return unet, ldm_view(unet)


@pytest.mark.parametrize("which", ["sd15", "sdxl"])
def test_every_unet_layer_has_the_same_module_under_the_other_name(which, request):
    unet, view = request.getfixturevalue(which)
    for net, other in ((unet, view), (view, unet)):
        aliases, others = unet_name_aliases(net), dict(other.named_modules())
        for name, module in _weighted(net).items():
            assert others[aliases[name]] is module, name


def test_kohya_sd15_file_binds_to_diffusers_and_ldm_unet(sd15, tmp_path):
    unet, view = sd15
    targets = list(_weighted(unet))  # every linear and conv: attention, resnets, samplers, time
    path = tmp_path / "sd15.safetensors"
    write_kohya(path, unet, targets, "lora")
    lora = read_lora_file(path)
    on_diffusers = bind_lora(lora, {"unet": unet})
    on_ldm = bind_lora(lora, {"unet": view})
    assert not on_diffusers.unmatched and not on_ldm.unmatched
    assert len(on_diffusers.targets) == len(targets)
    modules_d = {id(m): d for _, m, d in on_diffusers.targets}
    modules_l = {id(m): d for _, m, d in on_ldm.targets}
    assert modules_d.keys() == modules_l.keys()
    assert all(modules_d[k] is modules_l[k] for k in modules_d)
    names = {n for n, _, _ in on_ldm.targets}
    assert "unet:input_blocks.3.0.op" in names and "unet:output_blocks.2.2.conv" in names
    assert "unet:input_blocks.4.0.skip_connection" in names and "unet:time_embed.0" in names


def test_sdxl_naming_file_binds_to_sdxl_ldm_view_and_diffusers(sdxl, tmp_path):
    unet, view = sdxl
    targets = [n for n in _weighted(view) if "transformer_blocks" in n or "in_layers" in n or "label_emb" in n]
    path = tmp_path / "sdxl.safetensors"
    write_kohya(path, view, targets, "lokr")
    lora = read_lora_file(path)
    assert "unet:input_blocks_4_1_transformer_blocks_1_attn2_to_k" in lora.modules
    on_ldm, on_diffusers = bind_lora(lora, {"unet": view}), bind_lora(lora, {"unet": unet})
    assert len(on_ldm.targets) == len(on_diffusers.targets) == len(targets)
    assert [m for _, m, _ in on_ldm.targets] == [m for _, m, _ in on_diffusers.targets]
    assert "unet:down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k" in {n for n, _, _ in on_diffusers.targets}


def test_bound_deltas_as_hooks_equal_merged_unet(sd15, tmp_path):
    """Integration: output_delta hooks on the real UNet reproduce a merged UNet (convs included)."""
    unet, view = sd15
    path = tmp_path / "l.safetensors"
    write_kohya(path, unet, list(_weighted(unet)), "locon_tucker", alpha=1.0)
    bound = bind_lora(read_lora_file(path), {"unet": view})
    strength = 0.8
    merged = copy.deepcopy(unet)
    merged_modules = dict(merged.named_modules())
    with torch.no_grad():
        for name, module in unet.named_modules():
            for _, target, delta in bound.targets:
                if target is module:
                    merged_modules[name].weight += strength * delta.weight_delta(module)
    hooks = [m.register_forward_hook(lambda mod, args, out, d=d: out + strength * d.output_delta(args[0], mod))
             for _, m, d in bound.targets]
    try:
        x, ctx = torch.randn(1, 4, 16, 16), torch.randn(1, 3, 32)
        with torch.no_grad():
            hooked = view(x, torch.tensor([5]), ctx)
            reference = merged(x, 5, ctx).sample
    finally:
        for h in hooks:
            h.remove()
    torch.testing.assert_close(hooked, reference, atol=1e-4, rtol=1e-4)


def test_text_encoder_keys_bind_to_clip_and_wrapped_clip(tmp_path):
    clip = tiny_clip_text()
    path = tmp_path / "te.safetensors"
    names = {n: m for n, m in _weighted(clip).items() if ".layers." in n}
    # Files always say "text_model.encoder..."; transformers 5 dropped "text_model." from the model.
    file_names = ["text_model." + n[n.index("encoder."):] for n in names]
    fake = nn.Module()
    for file_name, module in zip(file_names, names.values(), strict=True):
        fake.add_module(file_name.replace(".", "_"), module)
    write_kohya(path, fake, [f.replace(".", "_") for f in file_names], "loha", component="te1")
    lora = read_lora_file(path)
    assert "te1:text_model_encoder_layers_0_self_attn_q_proj" in lora.modules
    wrapper = nn.Module()
    wrapper.transformer = clip  # as A1111's FrozenCLIPEmbedder holds it
    for model in (clip, wrapper):
        bound = bind_lora(lora, {"unet": nn.Linear(1, 1), "te1": model})
        assert {id(m) for _, m, _ in bound.targets} == {id(m) for m in names.values()}
        assert not bound.unmatched


def test_sdxl_te2_binds_to_open_clip_including_its_fused_attention(tmp_path):
    te2 = tiny_open_clip_text()
    hf = {"self_attn.q_proj": (32, 32), "self_attn.out_proj": (32, 32), "mlp.fc1": (64, 32), "mlp.fc2": (32, 64)}
    tensors = {}
    for layer in range(2):
        for part, (out, inp) in hf.items():
            key = f"lora_te2_text_model_encoder_layers_{layer}_{part.replace('.', '_')}"
            tensors[f"{key}.lora_down.weight"] = torch.randn(2, inp)
            tensors[f"{key}.lora_up.weight"] = torch.randn(out, 2)
    save_file(tensors, str(tmp_path / "xl.safetensors"))
    bound = bind_lora(read_lora_file(tmp_path / "xl.safetensors"), {"te2": te2})
    names = {n for n, _, _ in bound.targets}
    # q and out of one attention gather into one fused delta on the nn.MultiheadAttention
    assert names == {f"te2:model.transformer.resblocks.{i}.{p}"
                     for i in range(2) for p in ("attn", "mlp.c_fc", "mlp.c_proj")}
    fused = [d for n, _, d in bound.targets if n.endswith(".attn")]
    assert all(sorted(d.parts) == ["out", "q"] for d in fused) and not bound.unmatched


def test_unmatched_keys_are_reported(sd15, tmp_path):
    unet, _ = sd15
    path = tmp_path / "u.safetensors"
    write_kohya(path, unet, ["conv_in", "time_embedding.linear_1"], "lora")
    tensors = {"lora_unet_no_such_block_proj.lora_down.weight": torch.randn(2, 8),
               "lora_unet_no_such_block_proj.lora_up.weight": torch.randn(8, 2),
               "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.randn(2, 8),
               "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.randn(8, 2)}
    from safetensors.torch import load_file
    save_file({**load_file(str(path)), **tensors}, str(path))
    bound = bind_lora(read_lora_file(path), {"unet": unet})
    assert len(bound.targets) == 2
    assert set(bound.unmatched) == {"unet:no_such_block_proj", "te1:text_model_encoder_layers_0_mlp_fc1"}
    assert "te1" in bound.reasons["te1:text_model_encoder_layers_0_mlp_fc1"]
    assert bound.applied == 2
    summary = bound.summary()
    assert summary.startswith("u: 2 modules applied (unet 2); 2 not applied: ")
    assert "1: the model has no 'te1' component (e.g. te1:text_model_encoder_layers_0_mlp_fc1)" in summary
    assert "1: no module of that name in the model (e.g. unet:no_such_block_proj)" in summary
    left_out = bind_lora(read_lora_file(path), {"unet": unet}, left_out=("te1",))   # "UNet only"
    assert set(left_out.not_applied()) == {"unet:no_such_block_proj"}


def test_a_file_mostly_left_out_is_an_error_that_says_why(sd15, tmp_path):
    unet, _ = sd15
    path = tmp_path / "partial.safetensors"
    write_kohya(path, unet, ["conv_in"], "lora")
    from safetensors.torch import load_file
    tensors = load_file(str(path))
    for i in range(2):   # modules the file cannot build, and a module that exists nowhere
        tensors[f"lora_unet_down_blocks_0_resnets_{i}_conv1.lora_down.weight"] = torch.randn(2, 32, 3, 3)
    tensors["lora_unet_nowhere.lora_down.weight"] = torch.randn(2, 8)
    tensors["lora_unet_nowhere.lora_up.weight"] = torch.randn(8, 2)
    save_file(tensors, str(path))
    lora = read_lora_file(path)
    assert lora.skipped == {f"unet:down_blocks_0_resnets_{i}_conv1": "could not be built: has only one of the "
                            "two LoRA factors" for i in range(2)}
    with pytest.raises(LoraMismatchError) as info:
        bind_lora(lora, {"unet": unet})
    message = str(info.value)
    assert "'partial': 3 of its 4 modules cannot be applied" in message
    assert "2: could not be built: has only one of the two LoRA factors" in message
    assert "1: no module of that name in the model (e.g. unet:nowhere)" in message


def test_sd15_lora_on_sdxl_names_both_families(sd15, sdxl, tmp_path):
    unet15, _ = sd15
    _, viewxl = sdxl
    path = tmp_path / "sd15_style.safetensors"
    write_kohya(path, unet15, [n for n in _weighted(unet15) if ".attentions." in n and "attn2.to_k" in n], "lora")
    with pytest.raises(LoraMismatchError) as info:
        bind_lora(read_lora_file(path), {"unet": viewxl})
    assert "this looks like an SD1.x/SD2.x LoRA but the model is SDXL" in str(info.value)


def test_sd15_lora_on_sdxl_model_names_both_versions(tmp_path):
    """Real SD dims on a stand-in holding just the layers concerned (cheap)."""
    model = nn.Module()
    block = model
    for part in "input_blocks.4.1.transformer_blocks.0.attn2".split("."):
        block.add_module(part, nn.Module())
        block = getattr(block, part)
    block.to_k = nn.Linear(2048, 640, bias=False)  # SDXL: context 2048
    key = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k"
    save_file({f"{key}.lora_down.weight": torch.randn(4, 768),  # SD1.5: context 768
               f"{key}.lora_up.weight": torch.randn(640, 4)}, str(tmp_path / "sd15.safetensors"))
    with pytest.raises(LoraMismatchError) as info:
        bind_lora(read_lora_file(tmp_path / "sd15.safetensors"), {"unet": model})
    assert "this looks like an SD1.5 LoRA but the model is SDXL (context dim 768 vs 2048)" in str(info.value)


def test_tiny_sdxl_lora_on_tiny_sd15_raises_mismatch(sd15, sdxl, tmp_path):
    _, view15 = sd15
    _, viewxl = sdxl
    path = tmp_path / "xl_style.safetensors"
    write_kohya(path, viewxl, [n for n in _weighted(viewxl) if n.startswith("input_blocks.4.1.")], "lora")
    with pytest.raises(LoraMismatchError) as info:
        bind_lora(read_lora_file(path), {"unet": view15})
    message = str(info.value)
    assert "xl_style" in message and "modules have other shapes" in message
    assert "context dim 64" in message and "uses 32" in message


def test_sdxl_lora_on_sd15_model_names_both_versions(tmp_path):
    """Real SD dims on a stand-in holding just the layers concerned (cheap)."""
    model = nn.Module()
    block = model
    for part in "input_blocks.4.1.transformer_blocks.0.attn2".split("."):
        block.add_module(part, nn.Module())
        block = getattr(block, part)
    block.to_k = nn.Linear(768, 640, bias=False)  # SD1.5: context 768
    key = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k"
    save_file({f"{key}.lora_down.weight": torch.randn(4, 2048),  # SDXL: context 2048
               f"{key}.lora_up.weight": torch.randn(640, 4)}, str(tmp_path / "xl.safetensors"))
    with pytest.raises(LoraMismatchError) as info:
        bind_lora(read_lora_file(tmp_path / "xl.safetensors"), {"unet": model})
    message = str(info.value)
    assert "'xl'" in message and "1 of 1 modules" in message
    assert "this looks like an SDXL LoRA but the model is SD1.5 (context dim 2048 vs 768)" in message


def test_lora_for_another_architecture_matches_nothing(sd15, tmp_path):
    unet, _ = sd15
    save_file({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.randn(2, 8),
               "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.randn(8, 2)},
              str(tmp_path / "flux.safetensors"))
    with pytest.raises(LoraMismatchError, match="flux.*matches none.*another model architecture"):
        bind_lora(read_lora_file(tmp_path / "flux.safetensors"), {"unet": unet})
