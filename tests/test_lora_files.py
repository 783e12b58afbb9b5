"""Reading LoRA files: key layouts, scales, PEFT files made by peft itself, bad files."""

import json

import pytest
import torch
from safetensors.torch import save_file

from lib_loratorio.errors import LoraFileError
from lib_loratorio.lora_files import read_lora_file, split_key
from lib_loratorio.lora_layers import DoRA, FullDiff, LoHa, LoKr, LowRank
from tests.lora_writers import FORMATS, write_diffusers_text_encoder, write_kohya, write_peft
from tests.tiny_models import tiny_clip_text, tiny_sd15_unet

# A linear, a 3x3 conv, a 1x1 conv (SD1.5 proj_in), a strided downsampler, the time embedding.
TARGETS = [
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    "down_blocks.0.attentions.0.proj_in",
    "down_blocks.1.resnets.0.conv1",
    "down_blocks.0.downsamplers.0.conv",
    "time_embedding.linear_1",
]
TYPES = {"lora": LowRank, "locon_tucker": LowRank, "loha": LoHa, "loha_tucker": LoHa, "lokr": LoKr,
         "lokr_full": LoKr, "lokr_factored": LoKr, "lokr_tucker": LoKr, "full": FullDiff,
         "dora": DoRA, "dora_out": DoRA}


@pytest.fixture(scope="module")
def unet():
    return tiny_sd15_unet()


def _check(lora, unet, expected, component="unet"):
    modules = dict(unet.named_modules())
    for name, (dw, db) in expected.items():
        delta = lora.modules[f"{component}:{name.replace('.', '_')}"]
        layer = modules[name]
        torch.testing.assert_close(delta.weight_delta(layer), dw.reshape(layer.weight.shape),
                                   atol=1e-6, rtol=1e-5)
        if db is not None:
            torch.testing.assert_close(delta.bias, db)


def test_type_table_covers_every_writer_format():
    assert set(TYPES) == set(FORMATS)


@pytest.mark.parametrize("fmt", sorted(TYPES))
def test_kohya_and_lycoris_formats(fmt, unet, tmp_path):
    path = tmp_path / f"my_{fmt}.safetensors"
    expected = write_kohya(path, unet, TARGETS, fmt)
    lora = read_lora_file(path)
    assert lora.name == f"my_{fmt}" and lora.path == path
    assert lora.metadata["ss_network_module"] == "test"
    assert "unet:down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" in lora.modules
    assert len(lora.modules) == len(TARGETS) and not lora.skipped
    assert all(isinstance(d, TYPES[fmt]) for d in lora.modules.values())
    _check(lora, unet, expected)


@pytest.mark.parametrize("layout", ["diffusers", "peft", "bare"])
@pytest.mark.parametrize("use_dora", [False, True])
def test_peft_files_match_peft_merge(layout, use_dora, unet, tmp_path):
    pytest.importorskip("peft")
    path = tmp_path / "peft.safetensors"
    expected = write_peft(path, unet, TARGETS, layout=layout, use_dora=use_dora, alpha=8.0, rank=4)
    lora = read_lora_file(path)
    assert len(lora.modules) == len(TARGETS)
    _check(lora, unet, expected)


def test_peft_without_metadata_uses_alpha_equal_rank(unet, tmp_path):
    pytest.importorskip("peft")
    path = tmp_path / "peft.safetensors"
    expected = write_peft(path, unet, TARGETS[:2], layout="peft", metadata=False, alpha=4.0, rank=4)
    lora = read_lora_file(path)
    assert all(d.scale == 1.0 for d in lora.modules.values())
    _check(lora, unet, expected)


def test_peft_text_encoder(tmp_path):
    pytest.importorskip("peft")
    clip = tiny_clip_text()
    path = tmp_path / "te.safetensors"
    # transformers 4 names these "text_model.encoder...", transformers 5 "encoder...".
    targets = [n for n, _ in clip.named_modules()
               if n.endswith(("layers.0.self_attn.q_proj", "layers.1.mlp.fc2"))]
    expected = write_peft(path, clip, targets, component="te1", layout="diffusers")
    lora = read_lora_file(path)
    assert set(lora.modules) == {f"te1:{n.replace('.', '_')}" for n in targets}
    _check(lora, clip, expected, component="te1")


def test_diffusers_saved_text_encoder(tmp_path):
    """diffusers' own savers name text-encoder LoRA modules ``text_encoder.<module>.lora_linear_layer.down.weight``."""
    pytest.importorskip("diffusers")
    clip = tiny_clip_text()
    path = tmp_path / "te.safetensors"
    targets = [n for n, _ in clip.named_modules() if n.endswith(("layers.0.self_attn.k_proj", "layers.1.mlp.fc1"))]
    expected = write_diffusers_text_encoder(path, clip, targets)
    lora = read_lora_file(path)
    assert not lora.skipped and set(lora.modules) == {f"te1:{n.replace('.', '_')}" for n in targets}
    _check(lora, clip, expected, component="te1")


def test_missing_alpha_means_scale_one(tmp_path):
    down, up = torch.randn(4, 8), torch.randn(6, 4)
    save_file({"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": down,
               "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": up}, str(tmp_path / "a.safetensors"))
    delta = read_lora_file(tmp_path / "a.safetensors").modules["te1:text_model_encoder_layers_0_mlp_fc1"]
    assert delta.scale == 1.0


@pytest.mark.parametrize("key, expected", [
    ("lora_unet_input_blocks_4_1_proj_in.lora_up.weight", ("unet", "input_blocks_4_1_proj_in", "up")),
    ("lora_te_text_model_encoder_layers_0_mlp_fc1.alpha", ("te1", "text_model_encoder_layers_0_mlp_fc1", "alpha")),
    ("lora_te2_text_model_encoder_layers_0_mlp_fc1.hada_w1_a",
     ("te2", "text_model_encoder_layers_0_mlp_fc1", "hada_w1_a")),
    ("text_encoder_2.text_model.encoder.layers.0.mlp.fc1.lora_A.weight",
     ("te2", "text_model_encoder_layers_0_mlp_fc1", "down")),
    ("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight",
     ("unet", "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", "down")),
    ("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.up.weight",
     ("unet", "down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0", "up")),
    ("unet.mid_block.attentions.0.proj_in.lora.down.weight", ("unet", "mid_block_attentions_0_proj_in", "down")),
    ("base_model.model.conv_in.lora_B.weight", ("unet", "conv_in", "up")),
    ("text_model.encoder.layers.1.self_attn.k_proj.lora_A.weight",
     ("te1", "text_model_encoder_layers_1_self_attn_k_proj", "down")),
    ("text_encoders.qwen3_4b.transformer.model.layers.0.self_attn.q_proj.lora_A.weight",  # ComfyUI's generic keys
     ("te1", "model_layers_0_self_attn_q_proj", "down")),
    ("text_encoders.qwen3.model.layers.0.mlp.down_proj.lora_B.weight",  # Forge Neo's
     ("te1", "model_layers_0_mlp_down_proj", "up")),
    ("text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.lora_down.weight",
     ("te3", "encoder_block_0_layer_0_SelfAttention_q", "down")),
    ("text_encoders.clip_g.transformer.text_model.encoder.layers.0.mlp.fc1.lora_up.weight",
     ("te2", "text_model_encoder_layers_0_mlp_fc1", "up")),
    ("bundle_emb.my_token.string_to_param.*", None),
    ("lora_unet_foo.something_else", None),
])
def test_key_normalization(key, expected):
    assert split_key(key) == expected


def test_unknown_and_incomplete_keys_are_skipped(tmp_path):
    save_file({
        "lora_unet_conv_in.lora_down.weight": torch.randn(2, 4, 3, 3),
        "lora_unet_conv_in.lora_up.weight": torch.randn(32, 2, 1, 1),
        "lora_unet_conv_out.lora_down.weight": torch.randn(2, 32, 3, 3),  # no up
        "bundle_emb.tok.string_to_param.*": torch.randn(1, 32),
    }, str(tmp_path / "s.safetensors"))
    lora = read_lora_file(tmp_path / "s.safetensors")
    assert list(lora.modules) == ["unet:conv_in"]
    assert "bundle_emb.tok.string_to_param.*" in lora.skipped
    assert any(k.startswith("unet:conv_out") for k in lora.skipped)


def _valid_file(path):
    save_file({"lora_unet_conv_in.lora_down.weight": torch.randn(64, 4, 3, 3),
               "lora_unet_conv_in.lora_up.weight": torch.randn(32, 64, 1, 1)}, str(path))
    return path


@pytest.mark.parametrize("damage, words", [
    ("empty", ["empty"]),
    ("truncated", ["corrupt", "download it again"]),
    ("garbage", ["corrupt"]),
    ("pickle", ["convert", ".safetensors"]),
    ("missing", ["does not exist"]),
    ("no_lora_keys", ["no LoRA weights", "model.diffusion_model.conv_in.weight"]),
])
def test_bad_files_raise_lora_file_error(damage, words, tmp_path):
    path = tmp_path / "broken.safetensors"
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        data = _valid_file(path).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + bytes(100))
    elif damage == "pickle":
        path = tmp_path / "broken.pt"
        torch.save({"a": torch.zeros(1)}, path)
    elif damage == "no_lora_keys":
        save_file({"model.diffusion_model.conv_in.weight": torch.zeros(2)}, str(path),
                  metadata={"x": json.dumps(1)})
    with pytest.raises(LoraFileError) as info:
        read_lora_file(path)
    message = str(info.value)
    assert path.name in message
    for word in words:
        assert word in message


def test_peft_metadata_alpha_pattern_and_rslora(tmp_path):
    tensors = {}
    for name in ("to_q", "to_k"):
        key = f"unet.mid_block.attentions.0.transformer_blocks.0.attn1.{name}"
        tensors[f"{key}.lora_A.weight"], tensors[f"{key}.lora_B.weight"] = torch.randn(4, 8), torch.randn(8, 4)
    meta = {"unet.r": 4, "unet.lora_alpha": 8, "unet.alpha_pattern": {"attn1.to_k": 2},
            "unet.use_rslora": True}
    save_file(tensors, str(tmp_path / "p.safetensors"), metadata={"lora_adapter_metadata": json.dumps(meta)})
    modules = read_lora_file(tmp_path / "p.safetensors").modules
    prefix = "unet:mid_block_attentions_0_transformer_blocks_0_attn1_"
    assert modules[prefix + "to_q"].scale == pytest.approx(8 / 2)  # alpha / sqrt(r)
    assert modules[prefix + "to_k"].scale == pytest.approx(2 / 2)


def test_a_file_holding_nan_is_refused_by_name(tmp_path):
    from safetensors.torch import load_file

    path = tmp_path / "diverged.safetensors"
    write_kohya(path, torch.nn.ModuleDict({"proj": torch.nn.Linear(8, 8)}), ["proj"])
    tensors = load_file(str(path))
    tensors["lora_unet_proj.lora_up.weight"][0, 0] = float("inf")
    save_file(tensors, str(path))
    with pytest.raises(LoraFileError, match="'diverged.safetensors' holds NaN or infinite values in 1 of its 3 "
                       "tensors \\(e.g. lora_unet_proj.lora_up.weight\\)"):
        read_lora_file(path)
