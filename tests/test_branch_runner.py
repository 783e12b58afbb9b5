"""Batched branches through forward hooks: equal to merging, base rows untouched, nothing left behind."""

import copy

import pytest
import torch

from lib_loratorio.branch_runner import MIXED, BranchRunner
from lib_loratorio.errors import LoraMismatchError, LoratorioError
from lib_loratorio.lora_files import read_lora_file
from lib_loratorio.network_names import bind_lora
from tests.lora_writers import write_kohya
from tests.tiny_models import ldm_view, tiny_clip_text, tiny_open_clip_text, tiny_sd15_unet

TARGETS = [
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
    "down_blocks.0.attentions.0.proj_in",
    "down_blocks.1.resnets.0.conv1",
    "down_blocks.0.downsamplers.0.conv",
    "mid_block.attentions.0.transformer_blocks.0.ff.net.2",
    "up_blocks.1.resnets.0.conv2",
    "up_blocks.0.upsamplers.0.conv",
]
STRENGTHS = [0.8, -0.5]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loras")
    unet = tiny_sd15_unet()
    files = []
    for i, fmt in enumerate(["lora", "locon_tucker"]):
        path = tmp / f"lora{i}.safetensors"
        write_kohya(path, unet, TARGETS, fmt=fmt, seed=i, alpha=4.0)
        files.append(read_lora_file(path))
    return unet, files


def inputs(batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 16, 16, generator=g).expand(batch, -1, -1, -1).contiguous()
    ctx = torch.randn(1, 7, 32, generator=g).expand(batch, -1, -1).contiguous()
    return x, torch.full((batch,), 400.0), ctx


def merged_copy(unet, bound, strength):
    merged = copy.deepcopy(unet)
    modules = dict(merged.named_modules())
    names = {m: n for n, m in unet.named_modules()}
    with torch.no_grad():
        for _, module, delta in bound.targets:
            modules[names[module]].weight += strength * delta.weight_delta(module)
    return merged


def snapshot(net):
    return {k: v.clone() for k, v in net.state_dict().items()}


def assert_untouched(net, before):
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())


def test_each_branch_equals_the_merged_model_and_base_rows_are_exact(setup):
    unet, files = setup
    bound = [bind_lora(f, {"unet": unet}) for f in files]
    x, t, ctx = inputs(3)
    with torch.no_grad():
        plain = unet(x, t, ctx).sample
        with BranchRunner(bound, STRENGTHS) as runner, runner.rows(torch.tensor([0, 1, 2])):
            out = unet(x, t, ctx).sample
        for i, (b, s) in enumerate(zip(bound, STRENGTHS, strict=True), start=1):
            ref = merged_copy(unet, b, s)(x[:1], t[:1], ctx[:1]).sample
            assert torch.allclose(out[i:i + 1], ref, atol=1e-5), i
    assert torch.equal(out[0], plain[0])
    assert not torch.allclose(out[1], out[0], atol=1e-3) and not torch.allclose(out[2], out[0], atol=1e-3)


def test_ldm_named_network_gives_the_same_branches(setup):
    unet, files = setup
    view = ldm_view(unet)
    x, t, ctx = inputs(4)
    branches = torch.tensor([2, 0, 1, 2])          # interleaved rows: index path, not slices
    with torch.no_grad():
        with BranchRunner([bind_lora(f, {"unet": unet}) for f in files], STRENGTHS) as r, r.rows(branches):
            diffusers_out = unet(x, t, ctx).sample
        with BranchRunner([bind_lora(f, {"unet": view}) for f in files], STRENGTHS) as r, r.rows(branches):
            ldm_out = view(x, t, ctx)
    assert torch.allclose(diffusers_out, ldm_out, atol=1e-6)
    assert torch.allclose(ldm_out[0], ldm_out[3], atol=1e-6)


def test_an_error_of_a_lora_layer_names_the_lora(setup):
    """E.g. a DoRA LoRA on a quantized layer: the message says which LoRA (by the caller's label)."""
    unet, files = setup
    bound = [bind_lora(f, {"unet": unet}) for f in files]

    class Refusing:
        def to(self, device, dtype):
            return self

        def output_delta(self, x, layer, cache=None):
            raise LoraMismatchError("DoRA LoRAs need an unquantized model.")

    name, module, _ = bound[1].targets[0]
    bound[1].targets[0] = (name, module, Refusing())
    labels = ["LoRA 'alice' (alice.safetensors, <loratorio:alice:1>)",
              "LoRA 'hat' (hat.safetensors, <loratorio:hat:1>)"]
    x, t, ctx = inputs(3)
    rows = torch.tensor([0, 1, 2])
    with BranchRunner(bound, STRENGTHS, labels=labels) as runner, runner.rows(rows), \
            pytest.raises(LoraMismatchError, match=r"^LoRA 'hat' \(hat.safetensors, <loratorio:hat:1>\): DoRA"):
        unet(x, t, ctx)
    with BranchRunner(bound, STRENGTHS) as runner, runner.rows(rows), \
            pytest.raises(LoraMismatchError, match="^LoRA 'lora1': DoRA"):          # by default its file name
        unet(x, t, ctx)


def test_outside_rows_block_the_hooks_do_nothing(setup):
    unet, files = setup
    x, t, ctx = inputs(2)
    with torch.no_grad():
        plain = unet(x, t, ctx).sample
        with BranchRunner([bind_lora(f, {"unet": unet}) for f in files], STRENGTHS) as runner:
            assert runner.installed
            assert torch.equal(unet(x, t, ctx).sample, plain)


@pytest.mark.parametrize("failure", [RuntimeError("boom"), KeyboardInterrupt()])
def test_hooks_removed_and_weights_identical_after_failure(setup, failure):
    unet, files = setup
    before = snapshot(unet)
    x, t, ctx = inputs(3)

    def explode(*_):
        raise failure

    handle = unet.mid_block.register_forward_hook(explode)
    try:
        with pytest.raises(type(failure)):
            with torch.no_grad(), BranchRunner([bind_lora(f, {"unet": unet}) for f in files], STRENGTHS) as r:
                with r.rows(torch.tensor([0, 1, 2])):
                    unet(x, t, ctx)
    finally:
        handle.remove()
    assert_untouched(unet, before)


def test_runs_leave_weights_bit_identical(setup):
    unet, files = setup
    before = snapshot(unet)
    x, t, ctx = inputs(3)
    with torch.no_grad(), BranchRunner([bind_lora(f, {"unet": unet}) for f in files], STRENGTHS) as r:
        for _ in range(2):
            with r.rows(torch.tensor([0, 1, 2])):
                unet(x, t, ctx)
    assert_untouched(unet, before)


def test_a_batch_of_the_wrong_size_is_refused(setup):
    unet, files = setup
    x, t, ctx = inputs(2)
    with torch.no_grad(), BranchRunner([bind_lora(files[0], {"unet": unet})], [1.0]) as r:
        with r.rows(torch.tensor([0, 1, 1])), pytest.raises(LoratorioError, match="expected 3 rows"):
            unet(x, t, ctx)


def test_whole_batch_and_grad_mode_match_merging(tmp_path):
    clip = tiny_clip_text()
    targets = ["encoder.layers.0.self_attn.q_proj", "encoder.layers.1.mlp.fc1"]
    path = tmp_path / "te.safetensors"
    write_kohya(path, clip, targets, component="te1", seed=3, prefix="lora_te_text_model_")  # as files name them
    bound = bind_lora(read_lora_file(path), {"te1": clip})
    ids = torch.randint(0, 100, (2, 7))
    ref = merged_copy(clip, bound, 0.7)(ids).last_hidden_state
    with BranchRunner([bound], [0.7]) as runner, runner.whole_batch(1):
        out = clip(ids).last_hidden_state        # grad enabled: the out-of-place path
    assert torch.allclose(out, ref, atol=1e-5)
    assert not any(m._forward_hooks for m in clip.modules())


@pytest.mark.parametrize("batch_first", [False, True])
def test_fused_attention_equals_merged_weights(tmp_path, batch_first):
    """open_clip's nn.MultiheadAttention (SDXL te2 in A1111): q/k/v/out LoRA parts through the fused call."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    te2 = tiny_open_clip_text()
    attention = te2.model.transformer.resblocks[0].attn
    attention.batch_first = batch_first
    e = attention.embed_dim
    tensors, deltas = {}, {}
    for part in ("q", "k", "v", "out"):
        key = f"lora_te2_text_model_encoder_layers_0_self_attn_{part}_proj"
        down, up = torch.randn(2, e) * 0.3, torch.randn(e, 2) * 0.3
        tensors.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                        f"{key}.alpha": torch.tensor(2.0)})
        deltas[part] = up @ down
    save_file(tensors, str(tmp_path / "te2.safetensors"))
    bound = bind_lora(read_lora_file(tmp_path / "te2.safetensors"), {"te2": te2})
    merged = copy.deepcopy(attention)
    with torch.no_grad():
        merged.in_proj_weight += 0.7 * torch.cat([deltas[p] for p in "qkv"])
        merged.out_proj.weight += 0.7 * deltas["out"]
    x = torch.randn(3, 5, e)                       # [seq, batch, e] or [batch, seq, e]
    mask = torch.triu(torch.full((x.shape[int(batch_first)],) * 2, float("-inf")), diagonal=1)  # causal, [seq, seq]
    with torch.no_grad():
        plain = attention(x, x, x, need_weights=False, attn_mask=mask)[0]
        ref = merged(x, x, x, need_weights=False, attn_mask=mask)[0]
        with BranchRunner([bound], [0.7]) as runner, runner.whole_batch(1):
            out = attention(x, x, x, need_weights=False, attn_mask=mask)[0]
        n = 5 if not batch_first else 3
        branches = torch.tensor([0, 1] * n)[:n]
        with BranchRunner([bound], [0.7]) as runner, runner.rows(branches):
            rows = attention(x, x, x, need_weights=False, attn_mask=mask)[0]
    assert torch.allclose(out, ref, atol=1e-5) and not torch.allclose(out, plain, atol=1e-3)
    dim = 0 if batch_first else 1
    for r, b in enumerate(branches.tolist()):
        expected = (ref if b else plain).select(dim, r)
        assert torch.allclose(rows.select(dim, r), expected, atol=1e-5)


# --- mixed rows (the fast mode): every LoRA, each scaled by its weight map -----------------------------
def test_mixed_row_with_one_hot_maps_equals_that_lora_branch(setup):
    unet, files = setup
    bound = [bind_lora(f, {"unet": unet}) for f in files]
    x, t, ctx = inputs(4)
    maps = torch.zeros(2, 2, 16, 16)
    maps[0, 0], maps[1, 1] = 1.0, 1.0            # row 2 owned by LoRA 1 everywhere, row 3 by LoRA 2
    with torch.no_grad(), BranchRunner(bound, STRENGTHS) as runner:
        with runner.rows(torch.tensor([1, 2, MIXED, MIXED]), maps=maps):
            out = unet(x, t, ctx).sample
    torch.testing.assert_close(out[2], out[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out[3], out[1], atol=1e-5, rtol=1e-4)


def merged_at_half(unet, bound):
    """A copy of ``unet`` with every LoRA of ``bound`` merged at half its strength."""
    both = copy.deepcopy(unet)
    modules, names = dict(both.named_modules()), {m: n for n, m in unet.named_modules()}
    with torch.no_grad():
        for b, s in zip(bound, STRENGTHS, strict=True):
            for _, module, delta in b.targets:
                modules[names[module]].weight += s / 2 * delta.weight_delta(module)
    return both


def test_mixed_row_with_uniform_maps_equals_every_lora_at_its_share(setup):
    """Uniform maps 1/N: every layer outside the cross-attention gets sum_i (1/N) s_i dW_i x, which is
    the model with each LoRA merged at s_i / N, spatial layers and time embeddings alike."""
    unet, files = setup
    bound = [bind_lora(f, {"unet": unet}) for f in files]
    for b in bound:
        b.targets = [t for t in b.targets if ".attn2." not in t[0]]
    x, t, ctx = inputs(1)
    with torch.no_grad(), BranchRunner(bound, STRENGTHS) as runner:
        with runner.rows(torch.tensor([MIXED]), maps=torch.full((1, 2, 16, 16), 0.5)):
            mixed = unet(x, t, ctx).sample
    torch.testing.assert_close(mixed, merged_at_half(unet, bound)(x, t, ctx).sample, atol=1e-5, rtol=1e-4)


def test_folded_cross_attention_with_uniform_maps_equals_every_lora_at_its_share(setup):
    """The cross-attention's projections are layers like any other (keys and
    values at each LoRA's mean weight), so uniform maps give the merged model in every layer."""
    unet, files = setup
    bound = [bind_lora(f, {"unet": unet}) for f in files]
    assert any(".attn2." in t[0] for t in bound[0].targets)
    x, t, ctx = inputs(1)
    with torch.no_grad(), BranchRunner(bound, STRENGTHS) as runner:
        with runner.rows(torch.tensor([MIXED]), maps=torch.full((1, 2, 16, 16), 0.5)):
            mixed = unet(x, t, ctx).sample
    torch.testing.assert_close(mixed, merged_at_half(unet, bound)(x, t, ctx).sample, atol=1e-5, rtol=1e-4)


def test_mixed_rows_route_each_patch_to_its_lora_in_a_conv_layer(tmp_path):
    from torch import nn

    net = nn.ModuleDict({"conv": nn.Conv2d(4, 6, 3, padding=1)})
    loras = []
    for i in range(2):
        write_kohya(tmp_path / f"c{i}.safetensors", net, ["conv"], "lora", seed=i)
        loras.append(bind_lora(read_lora_file(tmp_path / f"c{i}.safetensors"), {"unet": net}))
    x = torch.randn(1, 4, 8, 8).expand(3, -1, -1, -1)
    maps = torch.zeros(1, 2, 8, 8)
    maps[0, 0, :, :4], maps[0, 1, :, 4:] = 1.0, 1.0     # left half LoRA 1, right half LoRA 2
    with torch.no_grad(), BranchRunner(loras, [1.0, 1.0]) as runner:
        with runner.rows(torch.tensor([1, 2, MIXED]), maps=maps):
            out = net["conv"](x)
    torch.testing.assert_close(out[2, :, :, :4], out[0, :, :, :4])
    torch.testing.assert_close(out[2, :, :, 4:], out[1, :, :, 4:])


def test_layer_maps_lay_weights_out_like_the_layer():
    from lib_loratorio.layer_maps import LayerMaps, is_text_side

    maps = torch.rand(2, 3, 6, 10)                      # rows, N, H, W
    lm = LayerMaps(maps)                                # a UNet: the latent grid at every scale
    assert lm.weights_for(torch.zeros(2, 7, 6, 10), False).shape == (3, 2, 1, 6, 10)
    tokens = lm.weights_for(torch.zeros(2, 15, 8), False)      # 3 x 5 tokens: the grid at scale 1
    torch.testing.assert_close(tokens[..., 0], torch.nn.functional.adaptive_avg_pool2d(maps, (3, 5))
                               .flatten(2).transpose(0, 1))
    text = lm.weights_for(torch.zeros(2, 15, 8), True)          # cross-attention K/V: the mean weight
    torch.testing.assert_close(text[..., 0, 0], maps.mean((-2, -1)).T)
    assert is_text_side("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k")
    assert is_text_side("double_blocks.0.txt_attn.qkv") and not is_text_side("double_blocks.0.img_attn.qkv")
    assert not is_text_side("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q")


def test_layer_maps_find_a_transformers_image_tokens_by_its_layout():
    from lib_loratorio.image_tokens import TokenLayout
    from lib_loratorio.layer_maps import LayerMaps

    maps = torch.rand(2, 3, 6, 10)
    mean = maps.mean((-2, -1)).T.unsqueeze(-1)                   # [N, rows, 1]
    grid = torch.nn.functional.adaptive_avg_pool2d(maps, (3, 5)).flatten(2).transpose(0, 1)
    lm = LayerMaps(maps, TokenLayout((2, 2), text=5, after=4))  # 2x2 patches: 15 image tokens, then 4 more
    image = lm.weights_for(torch.zeros(2, 15 + 4, 8), False)[..., 0]     # an image stream: image, references
    torch.testing.assert_close(image, torch.cat([grid, mean.expand(-1, -1, 4)], -1))
    joint = lm.weights_for(torch.zeros(2, 5 + 15 + 4, 8), False)[..., 0]  # a joint sequence: text first
    torch.testing.assert_close(joint, torch.cat([mean.expand(-1, -1, 5), grid, mean.expand(-1, -1, 4)], -1))
    torch.testing.assert_close(lm.weights_for(torch.zeros(2, 15, 8), False)[..., 0], grid)  # a patch embedding
    other = lm.weights_for(torch.zeros(2, 6 * 10, 8), False)            # no layout of this model: the mean
    torch.testing.assert_close(other[..., 0, 0], mean[..., 0])
    packed = LayerMaps(maps, TokenLayout((1, 1)))                         # Flux.2: a token per latent pixel
    per_pixel = packed.weights_for(torch.zeros(2, 60, 8), False)[..., 0]
    torch.testing.assert_close(per_pixel, maps.flatten(2).transpose(0, 1))


def test_layer_maps_of_a_video_have_a_map_per_frame():
    from lib_loratorio.image_tokens import TokenLayout
    from lib_loratorio.layer_maps import LayerMaps

    maps = torch.rand(1, 2, 3, 4, 6)                    # rows, N, frames, H, W
    lm = LayerMaps(maps, TokenLayout((1, 2, 2)))        # Wan: 1x2x2 patches, tokens (frame, row, column)
    tokens = lm.weights_for(torch.zeros(1, 3 * 2 * 3, 8), False)[..., 0]
    pooled = torch.nn.functional.adaptive_avg_pool3d(maps, (3, 2, 3))
    torch.testing.assert_close(tokens, pooled.flatten(2).transpose(0, 1))
    assert lm.weights_for(torch.zeros(1, 5, 3, 2, 3), False).shape == (2, 1, 1, 3, 2, 3)   # a Conv3d's output


def test_mixed_rows_need_their_maps(setup):
    unet, files = setup
    bound = [bind_lora(f, {"unet": unet}) for f in files]
    with BranchRunner(bound, STRENGTHS) as runner, pytest.raises(LoratorioError, match="mixed rows"):
        with runner.rows(torch.tensor([0, MIXED])):
            pass
