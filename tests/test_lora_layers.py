"""ModuleDelta maths: every format on linear, conv (3x3 padded, strided, 1x1) and Forge-like layers."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lib_loratorio.lora_files import read_lora_file
from lib_loratorio.lora_layers import DoRA, LowRank, ModuleDelta
from tests.lora_writers import FORMATS, write_kohya


class ForgeLikeConv(nn.Module):
    """Not an nn.Conv2d subclass, but with a conv weight and conv attributes (as Forge's ops)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3) * 0.1)
        self.bias = nn.Parameter(torch.randn(cout) * 0.1)
        self.stride, self.padding = (2, 2), (1, 1)

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)


def _layers() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Module()
    net.linear = nn.Linear(16, 24)
    net.conv3 = nn.Conv2d(16, 24, 3, padding=1)
    net.down = nn.Conv2d(16, 16, 3, stride=2, padding=1)  # SD's Downsample "op"
    net.conv1 = nn.Conv2d(16, 24, 1)
    net.reflect = nn.Conv2d(16, 16, 3, padding=1, padding_mode="reflect")
    net.forge = ForgeLikeConv(16, 24)
    return net


LAYERS = ["linear", "conv3", "down", "conv1", "reflect", "forge"]


@pytest.fixture(scope="module")
def net():
    return _layers()


@pytest.fixture(scope="module", params=sorted(FORMATS))
def written(request, net, tmp_path_factory):
    path = tmp_path_factory.mktemp("layers") / f"{request.param}.safetensors"
    expected = write_kohya(path, net, LAYERS, request.param, rank=4, alpha=2.0)
    return request.param, read_lora_file(path), expected


def _input(layer: nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if layer.weight.ndim == 2:
        return torch.randn(3, 5, layer.weight.shape[1], generator=g)
    return torch.randn(2, layer.weight.shape[1], 9, 9, generator=g)  # odd size: stride edge


def _reference_apply(x, layer, w, b):
    """The layer's own operation with (w, b), written out per layer type."""
    if isinstance(layer, nn.Linear):
        return F.linear(x, w, b)
    if getattr(layer, "padding_mode", "zeros") != "zeros":
        p = layer.padding[0]
        x = F.pad(x, (p, p, p, p), mode=layer.padding_mode)
        return F.conv2d(x, w, b, layer.stride)
    return F.conv2d(x, w, b, layer.stride, layer.padding)


@pytest.mark.parametrize("name", LAYERS)
def test_delta_matches_dense_and_merge(written, net, name):
    fmt, lora, expected = written
    layer = getattr(net, name)
    delta = lora.modules[f"unet:{name}"]
    dw, db = expected[name]
    torch.testing.assert_close(delta.weight_delta(layer), dw.reshape(layer.weight.shape), atol=1e-6, rtol=1e-5)
    if db is not None:
        torch.testing.assert_close(delta.bias, db)

    x = _input(layer)
    out = delta.output_delta(x, layer)
    torch.testing.assert_close(out, _reference_apply(x, layer, delta.weight_delta(layer), delta.bias),
                               atol=1e-5, rtol=1e-4)

    strength = 0.7
    merged = copy.deepcopy(layer)
    with torch.no_grad():
        merged.weight += strength * dw.reshape(layer.weight.shape)
        if db is not None:
            merged.bias += strength * db
        torch.testing.assert_close(merged(x), layer(x) + strength * out, atol=1e-5, rtol=1e-4)


def test_low_rank_never_builds_dense(net, tmp_path, monkeypatch):
    path = tmp_path / "l.safetensors"
    write_kohya(path, net, ["linear", "conv3", "down"], "locon_tucker")
    lora = read_lora_file(path)
    monkeypatch.setattr(LowRank, "weight_delta", lambda *a: pytest.fail("dense delta built"))
    for name in ("linear", "conv3", "down"):
        layer = getattr(net, name)
        assert isinstance(lora.modules[f"unet:{name}"], LowRank)
        lora.modules[f"unet:{name}"].output_delta(_input(layer), layer)


def test_to_copies_and_keeps_values(written, net):
    _, lora, _ = written
    delta: ModuleDelta = lora.modules["unet:conv3"]
    assert delta.to("cpu", torch.float32) is delta
    d64 = delta.to("cpu", torch.float64)
    assert d64 is not delta and type(d64) is type(delta)
    layer64 = copy.deepcopy(net.conv3).double()
    x = _input(net.conv3)
    torch.testing.assert_close(d64.output_delta(x.double(), layer64).float(),
                               delta.output_delta(x, net.conv3), atol=1e-5, rtol=1e-4)


def test_dora_follows_the_layers_current_weight(net, tmp_path):
    path = tmp_path / "d.safetensors"
    write_kohya(path, net, ["linear"], "dora")
    delta = read_lora_file(path).modules["unet:linear"]
    assert isinstance(delta, DoRA) and not delta.per_output
    layer = copy.deepcopy(net.linear)
    first = delta.weight_delta(layer).clone()
    with torch.no_grad():
        layer.weight.mul_(1.5)  # e.g. the host merged another LoRA in place
    assert not torch.allclose(delta.weight_delta(layer), first)


def test_grouped_conv_falls_back_to_dense():
    torch.manual_seed(0)
    layer = nn.Conv2d(8, 8, 3, padding=1, groups=2)
    delta = LowRank(torch.randn(2, 4, 3, 3), torch.randn(8, 2, 1, 1), scale=0.5)
    x = torch.randn(1, 8, 6, 6)
    ref = F.conv2d(x, delta.weight_delta(layer), None, 1, 1, 1, 2)
    torch.testing.assert_close(delta.output_delta(x, layer), ref)


def test_linear_factors_on_1x1_conv_and_back():
    """SD1.5 has 1x1 conv proj_in/proj_out where SDXL-style LoRAs store linear factors."""
    torch.manual_seed(0)
    down, up = torch.randn(2, 8), torch.randn(6, 2)
    conv, linear = nn.Conv2d(8, 6, 1), nn.Linear(8, 6)
    x = torch.randn(1, 8, 4, 4)
    as_linear = LowRank(down, up, 0.5).output_delta(x.permute(0, 2, 3, 1), linear).permute(0, 3, 1, 2)
    for delta in (LowRank(down, up, 0.5), LowRank(down[:, :, None, None], up[:, :, None, None], 0.5)):
        assert delta.fits(tuple(conv.weight.shape)) and delta.fits(tuple(linear.weight.shape))
        torch.testing.assert_close(delta.output_delta(x, conv), as_linear)


def test_numel_counts_what_a_delta_holds_on_the_device():
    from lib_loratorio.lora_layers import FusedAttentionDelta, LoHa, OutputSlice, SlicedOutputDelta

    low = LowRank(torch.zeros(4, 32), torch.zeros(48, 4), 1.0)
    assert low.numel() == 4 * 32 + 48 * 4                      # low-rank stays low-rank on the device
    loha = LoHa(torch.zeros(48, 2), torch.zeros(2, 32), torch.zeros(48, 2), torch.zeros(2, 32), 1.0)
    assert loha.numel() == 2 * (48 * 2 + 2 * 32) + 4 * (48 + 32)  # factors + their rank-4 product factors
    wide = LoHa(torch.zeros(48, 8), torch.zeros(8, 32), torch.zeros(48, 8), torch.zeros(8, 32), 1.0)
    assert wide.numel() == 2 * (48 * 8 + 8 * 32) + 48 * 32     # rank 64 > dense: the dense delta
    dora = DoRA(low, torch.ones(48))
    assert dora.numel() == low.numel() + 48 + 48 * 32
    assert FusedAttentionDelta({"q": low, "k": low}).numel() == 2 * low.numel()
    sliced = SlicedOutputDelta([(OutputSlice(0, 48, False), low), (OutputSlice(48, 48, False), low)], (96, 32))
    assert sliced.numel() == 2 * low.numel()


LOKR_FORMATS = ["lokr", "lokr_full", "lokr_factored", "lokr_tucker"]


@pytest.mark.parametrize("fmt", LOKR_FORMATS)
def test_lokr_never_builds_the_kronecker_product(net, tmp_path, monkeypatch, fmt):
    path = tmp_path / f"{fmt}.safetensors"
    expected = write_kohya(path, net, LAYERS, fmt, rank=4, alpha=2.0)
    lora = read_lora_file(path)
    real_kron = torch.kron
    monkeypatch.setattr(torch, "kron", lambda *a: pytest.fail("Kronecker product built"))
    for name in LAYERS:
        layer, x = getattr(net, name), _input(getattr(net, name))
        out = lora.modules[f"unet:{name}"].output_delta(x, layer)
        dw = expected[name][0].reshape(layer.weight.shape)
        torch.testing.assert_close(out, _reference_apply(x, layer, dw, None), atol=1e-5, rtol=1e-4)
    monkeypatch.setattr(torch, "kron", real_kron)


@pytest.mark.parametrize("fmt", ["loha", "loha_tucker", "dora"])
def test_built_forms_stay_within_the_cache_budget(net, tmp_path, fmt):
    """LoHa product factors / dense deltas and DoRA weights live in the caller's cache, bounded in bytes;
    the result is the same whether they are kept, evicted or never kept."""
    from lib_loratorio.delta_cache import DeltaCache

    path = tmp_path / f"{fmt}.safetensors"
    write_kohya(path, net, LAYERS, fmt, rank=4, alpha=2.0)
    lora = read_lora_file(path)
    plain = {name: lora.modules[f"unet:{name}"].output_delta(_input(getattr(net, name)), getattr(net, name))
             for name in LAYERS}
    for budget in (0, 4000, 1 << 20):
        cache = DeltaCache(budget)
        for _ in range(2):
            for name in LAYERS:
                layer = getattr(net, name)
                out = lora.modules[f"unet:{name}"].output_delta(_input(layer), layer, cache)
                torch.testing.assert_close(out, plain[name])
                assert cache.bytes <= budget
        assert (cache.builds == len(LAYERS)) == (budget == 1 << 20)   # all kept: built once each
    assert not any(k.startswith("_") for d in lora.modules.values() for k in vars(d))  # nothing kept on the delta


def test_delta_cache_drops_the_least_recently_used():
    from lib_loratorio.delta_cache import DeltaCache

    cache = DeltaCache(3 * 400)                      # room for three 100-float tensors
    for key in "abc":
        cache.get(key, lambda: torch.zeros(100))
    cache.get("a", lambda: pytest.fail("a was kept"))
    cache.get("d", lambda: torch.zeros(100))         # drops b, the least recently used
    assert cache.bytes == 1200 and len(cache) == 3
    rebuilt = []
    cache.get("b", lambda: rebuilt.append(1) or torch.zeros(100))
    assert rebuilt == [1]
    big = cache.get("e", lambda: torch.zeros(1000))  # larger than the budget: returned, not kept
    assert big.numel() == 1000 and len(cache) == 3 and cache.bytes <= 1200
    cache.clear()
    assert cache.bytes == 0 and len(cache) == 0
