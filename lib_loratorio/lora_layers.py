"""Per-module LoRA weight objects ("deltas") for every supported LoRA type.

Every delta answers three questions about one layer of the host network:

* ``output_delta(x, layer)``: how much ``layer(x)`` changes because of this LoRA at strength 1.
  The branch runner adds ``strength * output_delta`` to the layer's output inside a forward hook,
  so the model's own weights are never touched.
* ``weight_delta(layer)``: the same change as a dense weight (for merging, tests, benchmarks).
* ``to(device, dtype)``: a copy on another device/dtype that callers can cache.

What a delta builds from its factors to be applied (LoHa's product factors, DoRA's merged weight)
goes into the :class:`~lib_loratorio.delta_cache.DeltaCache` the caller passes, never into the
delta itself: files stay as small in memory as on disk. Plain LoRA/LoCon and LoKr build nothing
large: they are applied factor by factor.

Layers are told apart by the rank of their weight (2 = linear, 4 = conv2d), not by their class,
so WebUI/Forge replacement ops with an ``nn.Linear``/``nn.Conv2d``-shaped ``.weight`` work too.
Conv attributes are read with ``getattr`` defaults for the same reason. The shape always comes
from :func:`weight_shape`, since Forge's bnb 4-bit weights report their packed shape; only DoRA
reads weight *values*, so the other types work on fp8, bnb and GGUF weights unchanged.

:class:`SlicedOutputDelta` gathers LoRA parts that target column ranges of one fused layer's
output (Flux: diffusers ``to_q``/``to_k``/``to_v`` on BFL's fused ``qkv``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .delta_cache import DeltaCache
from .errors import LoraMismatchError

__all__ = [
    "ModuleDelta",
    "LowRank",
    "LoHa",
    "LoKr",
    "FullDiff",
    "DoRA",
    "FusedAttentionDelta",
    "OutputSlice",
    "SlicedOutputDelta",
    "apply_weight",
    "same_weight_shape",
    "weight_shape",
]

# Weight dtypes whose values DoRA can use as they are (fp8 and packed integer storage cannot).
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def weight_shape(layer: nn.Module) -> tuple[int, ...]:
    """The real [out, in, ...] shape of ``layer.weight``.

    bnb 4-bit weights (Forge's ``ForgeParams4bit``) report their packed shape and keep the real
    one in ``quant_state.shape``; GGUF and fp8 weights report the real shape.
    """
    weight = layer.weight
    shape = getattr(getattr(weight, "quant_state", None), "shape", None)
    return tuple(int(d) for d in (weight.shape if shape is None else shape))


def _values_usable(weight: Tensor) -> bool:
    """Whether ``weight``'s values are the weight itself (not fp8, bnb-packed or GGUF storage)."""
    return weight.dtype in _FLOAT_DTYPES and not hasattr(weight, "quant_state") and not hasattr(weight, "gguf_cls")


def _readable_weight(layer: nn.Module) -> Tensor:
    """``layer.weight`` when its values can be used directly, else a clear error."""
    weight = layer.weight
    if not _values_usable(weight):
        raise LoraMismatchError(
            f"DoRA LoRAs need an unquantized model: this layer's weight is stored as {weight.dtype} "
            f"({type(weight).__name__}). Load the model in fp16/bf16 or use a LoRA without DoRA.")
    return weight


def _pair(v: object) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return (int(v[0]), int(v[-1]))
    return (int(v), int(v))  # type: ignore[call-overload]


def _conv(x: Tensor, weight: Tensor, layer: nn.Module, spatial: bool = True, groups: int = 1) -> Tensor:
    """conv2d of ``x`` with ``weight`` using ``layer``'s geometry.

    ``spatial=False`` is for 1x1 factors applied after (or before) the spatial factor: they must
    not stride or pad again.
    """
    if not spatial:
        return F.conv2d(x, weight)
    stride = _pair(getattr(layer, "stride", 1))
    dilation = _pair(getattr(layer, "dilation", 1))
    padding = getattr(layer, "padding", 0)
    mode = getattr(layer, "padding_mode", "zeros")
    if mode != "zeros" and not isinstance(padding, str):
        # Non-zero padding modes pad explicitly, as nn.Conv2d does internally.
        ph, pw = _pair(padding)
        x = F.pad(x, (pw, pw, ph, ph), mode=mode)
        padding = 0
    elif not isinstance(padding, str):
        padding = _pair(padding)
    return F.conv2d(x, weight, None, stride, padding, dilation, groups)


def apply_weight(x: Tensor, weight: Tensor, layer: nn.Module, bias: Optional[Tensor] = None) -> Tensor:
    """``layer``'s operation with ``weight`` (and ``bias``) in place of its own parameters."""
    shape = weight_shape(layer)
    if len(shape) == 4:
        out = _conv(x, weight.reshape(shape), layer, groups=int(getattr(layer, "groups", 1)))
        return out if bias is None else out + bias.reshape(1, -1, 1, 1)
    return F.linear(x, weight.reshape(shape), bias)


def same_weight_shape(delta_shape: tuple[int, ...], weight_shape: tuple[int, ...]) -> bool:
    """True when a delta of ``delta_shape`` fits a weight of ``weight_shape``.

    A 1x1 conv and a linear layer are interchangeable: SD1.5 uses 1x1 convs for ``proj_in`` /
    ``proj_out`` where SDXL (and some trainers) use linear layers.
    """
    def norm(s: tuple[int, ...]) -> tuple[int, ...]:
        s = tuple(int(d) for d in s)
        return s[:2] if len(s) == 4 and s[2:] == (1, 1) else s

    return norm(delta_shape) == norm(weight_shape)


class ModuleDelta:
    """The change one LoRA makes to one layer (strength 1, alpha/rank scale included)."""

    #: Dense weight shape the delta was made for, known without building the dense delta.
    shape: tuple[int, ...]
    #: Additive bias change (already scaled), or None.
    bias: Optional[Tensor]

    def __init__(self, shape: tuple[int, ...], bias: Optional[Tensor] = None) -> None:
        self.shape = tuple(int(d) for d in shape)
        self.bias = bias

    # -- interface -------------------------------------------------------------------------
    def to(self, device: torch.device | str | None, dtype: torch.dtype | None) -> "ModuleDelta":
        """A copy with every tensor on ``device``/``dtype`` (self when nothing changes)."""
        tensors = self._tensors()
        if all(t.device == torch.device(device or t.device) and t.dtype == (dtype or t.dtype)
               for t in tensors.values() if t is not None):
            return self
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        for name, t in tensors.items():
            setattr(clone, name, None if t is None else t.to(device=device, dtype=dtype))
        return clone

    def output_delta(self, x: Tensor, layer: nn.Module, cache: Optional[DeltaCache] = None) -> Tensor:
        """Change of ``layer(x)`` caused by this delta, for ``x`` = the layer's input.

        ``x`` and the delta must share device and dtype: call ``to(x.device, x.dtype)`` once and
        keep the copy. ``cache`` keeps what the delta builds from its factors between calls
        (the branch runner's, bounded in bytes); without one it is built on every call.
        """
        return apply_weight(x, self.dense(layer, cache), layer, self.bias)

    def weight_delta(self, layer: nn.Module) -> Tensor:
        """Dense weight change with the shape of ``layer``'s weight (``weight_shape``)."""
        raise NotImplementedError

    def dense(self, layer: nn.Module, cache: Optional[DeltaCache] = None) -> Tensor:
        """``weight_delta(layer)``, kept in ``cache`` when one is given."""
        if cache is None:
            return self.weight_delta(layer)
        return cache.get(self._dense_key(layer), lambda: self.weight_delta(layer))

    def numel(self) -> int:
        """Elements this delta holds on the model's device while applied (for memory planning):
        its own tensors plus what it builds from them."""
        return self.stored_numel()

    def stored_numel(self) -> int:
        """Elements of the delta's own tensors (what the file holds)."""
        return sum(t.numel() for t in self._tensors().values() if t is not None)

    # -- helpers for subclasses -------------------------------------------------------------
    def _tensors(self) -> dict[str, Optional[Tensor]]:
        """Attribute name -> tensor for everything ``to`` must move."""
        return {k: v for k, v in self.__dict__.items() if isinstance(v, Tensor) and not k.startswith("_")}

    def _dense_key(self, layer: nn.Module) -> tuple:
        return (id(self), "dense")

    def fits(self, weight_shape: tuple[int, ...]) -> bool:
        """Whether this delta can be applied to a weight of ``weight_shape``."""
        return same_weight_shape(self.shape, tuple(weight_shape))


class LowRank(ModuleDelta):
    """LoRA / LoCon: ``scale * up @ (mid) @ down``, applied factor by factor.

    Linear: ``down`` [r, in], ``up`` [out, r].  Conv (LoCon): ``down`` [r, in, kh, kw] carries the
    kernel, ``up`` is [out, r, 1, 1].  Tucker (``lora_mid``): ``down`` [r, in, 1, 1],
    ``mid`` [r, r, kh, kw] carries the kernel, ``up`` [out, r, 1, 1].
    """

    def __init__(self, down: Tensor, up: Tensor, scale: float, mid: Optional[Tensor] = None,
                 bias: Optional[Tensor] = None) -> None:
        if mid is not None:
            shape = (up.shape[0], down.shape[1], *mid.shape[2:])
        else:
            shape = (up.shape[0], *down.shape[1:])
        super().__init__(shape, bias)
        self.down, self.up, self.mid, self.scale = down, up, mid, float(scale)

    def output_delta(self, x: Tensor, layer: nn.Module, cache: Optional[DeltaCache] = None) -> Tensor:
        conv = len(weight_shape(layer)) == 4
        if conv and int(getattr(layer, "groups", 1)) != 1:
            # A rank factorisation does not respect conv groups; fall back to the dense delta.
            return super().output_delta(x, layer, cache)
        bias = self.bias
        if conv:
            up = self.up.reshape(self.up.shape[0], self.up.shape[1], 1, 1)
            if self.mid is None:
                down = self.down if self.down.ndim == 4 else self.down[:, :, None, None]
                h = _conv(x, down, layer)
            else:
                h = _conv(_conv(x, self.down, layer, spatial=False), self.mid, layer)
            out = _conv(h, up * self.scale, layer, spatial=False)
            return out if bias is None else out + bias.reshape(1, -1, 1, 1)
        h = F.linear(x, self.down.reshape(self.down.shape[0], -1))
        if self.mid is not None:
            h = F.linear(h, self.mid.reshape(self.mid.shape[0], -1))
        return F.linear(h, self.up.reshape(self.up.shape[0], -1) * self.scale, bias)

    def weight_delta(self, layer: nn.Module) -> Tensor:
        up = self.up.reshape(self.up.shape[0], -1)
        if self.mid is None:
            w = up @ self.down.reshape(self.down.shape[0], -1)
        else:
            mid = torch.einsum("ab...,bi->ai...", self.mid, self.down.reshape(self.down.shape[0], -1))
            w = torch.einsum("oa,ai...->oi...", up, mid)
        return (w * self.scale).reshape(weight_shape(layer))


def _flat_fits(shape: tuple[int, ...], weight_shape: tuple[int, ...]) -> bool:
    """LyCORIS stores conv factors flattened to [out, in*kh*kw]; accept those as well."""
    if same_weight_shape(shape, weight_shape):
        return True
    return len(shape) == 2 and shape[0] == weight_shape[0] and shape[1] == math.prod(weight_shape[1:])


def _tucker(t: Tensor, wa: Tensor, wb: Tensor) -> Tensor:
    """LyCORIS Tucker rebuild: ``W[p, r, ...] = sum_ij t[i, j, ...] * wb[j, r] * wa[i, p]``.

    Here ``wa`` is [rank, out] and ``wb`` is [rank, in] (both rank-first, unlike the plain case).
    """
    return torch.einsum("ij...,jr,ip->pr...", t, wb, wa)


class LoHa(ModuleDelta):
    """LyCORIS LoHa: ``scale * (w1a @ w1b) * (w2a @ w2b)`` (Hadamard product), optional Tucker.

    The Hadamard product of two rank-r factorisations is itself a factorisation of rank r1*r2
    (``W[o, i] = sum_pq w1a[o,p] w2a[o,q] * w1b[p,i] w2b[q,i]``), exact and often much smaller than
    the dense weight. Each layer is applied in whichever form has fewer elements (memory, and
    about the multiply-adds per output pixel), built per generation in the runner's cache.
    """

    def __init__(self, w1a: Tensor, w1b: Tensor, w2a: Tensor, w2b: Tensor, scale: float,
                 t1: Optional[Tensor] = None, t2: Optional[Tensor] = None,
                 bias: Optional[Tensor] = None) -> None:
        if t1 is not None:
            shape = (w1a.shape[1], w1b.shape[1], *t1.shape[2:])
        else:
            shape = (w1a.shape[0], *w1b.shape[1:])
        super().__init__(shape, bias)
        self.w1a, self.w1b, self.w2a, self.w2b, self.t1, self.t2 = w1a, w1b, w2a, w2b, t1, t2
        self.scale = float(scale)

    def fits(self, weight_shape: tuple[int, ...]) -> bool:
        return _flat_fits(self.shape, tuple(weight_shape))

    @property
    def product_rank(self) -> int:
        return self.w1b.shape[0] * self.w2b.shape[0] if self.t1 is None else self.t1.shape[0] * self.t2.shape[0]

    def _factored_numel(self) -> int:
        r, out = self.product_rank, self.shape[0]
        if self.t1 is None:
            return r * (out + math.prod(self.shape[1:]))
        return r * (out + self.shape[1]) + r * r * math.prod(self.shape[2:])

    def _factored_is_smaller(self) -> bool:
        return self._factored_numel() < math.prod(self.shape)

    def numel(self) -> int:
        return self.stored_numel() + min(self._factored_numel(), math.prod(self.shape))

    def output_delta(self, x: Tensor, layer: nn.Module, cache: Optional[DeltaCache] = None) -> Tensor:
        if not self._factored_is_smaller():
            return super().output_delta(x, layer, cache)
        shape = weight_shape(layer)
        if cache is None:
            factors = self._product_factors(shape)
        else:
            factors = cache.get((id(self), "factors"), lambda: self._product_factors(shape))
        down, up, mid = factors if len(factors) == 3 else (*factors, None)
        return LowRank(down, up, self.scale, mid, self.bias).output_delta(x, layer, cache)

    def _product_factors(self, shape: tuple[int, ...]) -> tuple[Tensor, ...]:
        """(down, up[, mid]) of the rank r1*r2 factorisation, shaped as LowRank takes them."""
        r = self.product_rank
        if self.t1 is None:
            up = torch.einsum("op,oq->opq", self.w1a.reshape(self.w1a.shape[0], -1),
                              self.w2a.reshape(self.w2a.shape[0], -1)).reshape(shape[0], r)
            down = torch.einsum("pi,qi->pqi", self.w1b.reshape(self.w1b.shape[0], -1),
                                self.w2b.reshape(self.w2b.shape[0], -1)).reshape(r, *shape[1:])
            return down, up
        # Tucker: both halves share the layout W = wa^T . t . wb, so their product is a Tucker
        # decomposition whose core is the per-kernel-position outer product of the two cores.
        up = torch.einsum("io,ko->oik", self.w1a, self.w2a).reshape(shape[0], r, 1, 1)
        down = torch.einsum("ji,li->jli", self.w1b, self.w2b).reshape(r, shape[1], 1, 1)
        mid = torch.einsum("ij...,kl...->ikjl...", self.t1, self.t2).reshape(r, r, *self.t1.shape[2:])
        return down, up, mid

    def weight_delta(self, layer: nn.Module) -> Tensor:
        def half(wa: Tensor, wb: Tensor, t: Optional[Tensor]) -> Tensor:
            if t is not None:
                return _tucker(t, wa, wb)
            return wa.reshape(wa.shape[0], -1) @ wb.reshape(wb.shape[0], -1)

        w1 = half(self.w1a, self.w1b, self.t1)
        w2 = half(self.w2a, self.w2b, self.t2)
        return ((w1.reshape(w2.shape) * w2) * self.scale).reshape(weight_shape(layer))


class LoKr(ModuleDelta):
    """LyCORIS LoKr: ``scale * kron(w1, w2)``; each side full or factored (``w2`` also Tucker).

    Applied without ever building the Kronecker product: with ``w1`` [a, b] and ``w2`` [c, d],
    ``kron(w1, w2) @ x`` is ``w1 @ X @ w2^T`` for the input reshaped to X [b, d]; a conv layer
    convolves each of the b input channel groups with ``w2`` and mixes the groups with ``w1``.
    """

    def __init__(self, w1: Optional[Tensor], w1a: Optional[Tensor], w1b: Optional[Tensor],
                 w2: Optional[Tensor], w2a: Optional[Tensor], w2b: Optional[Tensor],
                 scale: float, t2: Optional[Tensor] = None, bias: Optional[Tensor] = None) -> None:
        s1 = tuple(w1.shape) if w1 is not None else (w1a.shape[0], w1b.shape[1])
        if w2 is not None:
            s2 = tuple(w2.shape)
        elif t2 is not None:
            s2 = (w2a.shape[1], w2b.shape[1], *t2.shape[2:])
        else:
            s2 = (w2a.shape[0], *w2b.shape[1:])
        shape = (s1[0] * s2[0], s1[1] * s2[1], *s2[2:])
        super().__init__(shape, bias)
        self.w1, self.w1a, self.w1b, self.w2, self.w2a, self.w2b, self.t2 = w1, w1a, w1b, w2, w2a, w2b, t2
        self.scale = float(scale)

    def fits(self, weight_shape: tuple[int, ...]) -> bool:
        return _flat_fits(self.shape, tuple(weight_shape))

    def _sides(self) -> tuple[Tensor, Tensor]:
        """(w1 [a, b], w2 [c, d] or [c, d*kh*kw] or [c, d, kh, kw]), both small."""
        w1 = self.w1 if self.w1 is not None else self.w1a @ self.w1b
        if self.w2 is not None:
            w2 = self.w2
        elif self.t2 is not None:
            w2 = _tucker(self.t2, self.w2a, self.w2b)
        else:
            w2 = self.w2a @ self.w2b.reshape(self.w2b.shape[0], -1)
        return w1, w2

    def numel(self) -> int:
        w1 = self.w1.numel() if self.w1 is not None else self.w1a.shape[0] * self.w1b.shape[1]
        return self.stored_numel() + w1 + math.prod(self.shape) // w1  # + both sides built

    def output_delta(self, x: Tensor, layer: nn.Module, cache: Optional[DeltaCache] = None) -> Tensor:
        shape = weight_shape(layer)
        conv = len(shape) == 4
        if conv and int(getattr(layer, "groups", 1)) != 1:
            return super().output_delta(x, layer, cache)  # groups mix the channel blocks: go dense
        w1, w2 = self._sides()
        (a, b), c = w1.shape, w2.shape[0]
        d = shape[1] // b
        w1 = w1 * self.scale
        if conv:
            n, _, height, width = x.shape
            h = _conv(x.reshape(n * b, d, height, width), w2.reshape(c, d, *shape[2:]), layer)
            h = h.reshape(n, b, c, *h.shape[-2:])
            out = torch.einsum("ab,nbc...->nac...", w1, h).reshape(n, a * c, *h.shape[-2:])
            return out if self.bias is None else out + self.bias.reshape(1, -1, 1, 1)
        h = x.reshape(*x.shape[:-1], b, d) @ w2.reshape(c, d).t()      # [..., b, c]
        out = (w1 @ h).reshape(*x.shape[:-1], a * c)                      # [..., a, c]
        return out if self.bias is None else out + self.bias

    def weight_delta(self, layer: nn.Module) -> Tensor:
        w1, w2 = self._sides()
        if w2.ndim == 4:
            w1 = w1[:, :, None, None]
        # kron of [a, b] and [c, d*kh*kw] is the conv kron flattened, so the 2D case needs no care.
        return (torch.kron(w1.contiguous(), w2.contiguous()) * self.scale).reshape(weight_shape(layer))


class FullDiff(ModuleDelta):
    """LyCORIS "full" / "diff": the weight difference itself, and ``diff_b`` for the bias."""

    def __init__(self, diff: Tensor, bias: Optional[Tensor] = None) -> None:
        super().__init__(tuple(diff.shape), bias)
        self.diff = diff

    def weight_delta(self, layer: nn.Module) -> Tensor:
        return self.diff.reshape(weight_shape(layer))


class DoRA(ModuleDelta):
    """Weight-decomposed LoRA: ``W' = m * (W + dW) / ||W + dW||``; the delta is ``W' - W``.

    Norm axis. LyCORIS and A1111 (and so kohya-trained LyCORIS files) take the norm over every
    axis except the *input* axis (dim 1) and store ``dora_scale`` as [1, in(, 1, 1)]; LyCORIS with
    ``wd_on_out`` takes it per *output* row as in the DoRA paper and stores [out, 1(, 1, 1)].
    For ``dora_scale`` the stored shape tells which (``per_output=None``). PEFT's
    ``lora_magnitude_vector`` is always per output row, though conv layers store it as
    [1, out, 1, 1], so its reader passes ``per_output=True``.

    The result depends on the layer's current weight, so it is built per layer state (kept in the
    runner's cache under a key of the weight's identity and version); quantized (fp8, bnb, GGUF)
    weights are refused rather than dequantized.
    """

    def __init__(self, inner: ModuleDelta, magnitude: Tensor, per_output: Optional[bool] = None) -> None:
        super().__init__(inner.shape, inner.bias)
        self.inner, self.magnitude = inner, magnitude
        if per_output is None:
            out = inner.shape[0]
            per_output = magnitude.ndim == 1 or (magnitude.shape[0] == out and magnitude.numel() == out)
        self.per_output = per_output

    def fits(self, weight_shape: tuple[int, ...]) -> bool:
        return self.inner.fits(weight_shape)

    def to(self, device: torch.device | str | None, dtype: torch.dtype | None) -> "DoRA":
        inner = self.inner.to(device, dtype)
        mag = self.magnitude.to(device=device, dtype=dtype)
        if inner is self.inner and mag is self.magnitude:
            return self
        return DoRA(inner, mag, self.per_output)

    def stored_numel(self) -> int:
        return self.inner.stored_numel() + self.magnitude.numel()

    def numel(self) -> int:
        return self.stored_numel() + math.prod(self.shape)  # + its dense weight

    def _dense_key(self, layer: nn.Module) -> tuple:
        w = layer.weight
        # In-place edits of the weight bump its version, so a merged host LoRA invalidates this.
        return (id(self), w.data_ptr(), w._version, tuple(w.shape), w.device)

    def weight_delta(self, layer: nn.Module) -> Tensor:
        w = _readable_weight(layer)
        base = w.detach().to(device=self.magnitude.device, dtype=torch.float32)
        merged = base + self.inner.weight_delta(layer).to(torch.float32).reshape(base.shape)
        if self.per_output:
            norm = merged.reshape(merged.shape[0], -1).norm(dim=1)
            norm = norm.reshape(-1, *[1] * (merged.ndim - 1))
        else:
            norm = merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1)
            norm = norm.reshape(1, -1, *[1] * (merged.ndim - 2))
        mag = self.magnitude.to(torch.float32).reshape(norm.shape)
        return (merged * (mag / norm) - base).to(self.magnitude.dtype)


class FusedAttentionDelta(ModuleDelta):
    """LoRA parts (q, k, v, out) on an ``nn.MultiheadAttention``, as open_clip text encoders have.

    Such a module applies its fused ``in_proj_weight`` and its ``out_proj`` weight inside one
    functional call, so no per-layer hook can add a delta; instead the runner asks for the whole
    attention output recomputed with ``W + strength * dW`` (attention is not linear in the weights,
    so the strength goes into the weights). Each part is computed against its slice of
    ``in_proj_weight`` (that matters for DoRA), as the WebUI's own Lora extension does.
    """

    PARTS = ("q", "k", "v", "out")

    def __init__(self, parts: dict[str, ModuleDelta]) -> None:
        first = next(iter(parts.values()))
        super().__init__(first.shape)
        self.parts = parts

    def to(self, device: torch.device | str | None, dtype: torch.dtype | None) -> "FusedAttentionDelta":
        moved = {name: part.to(device, dtype) for name, part in self.parts.items()}
        if all(moved[name] is part for name, part in self.parts.items()):
            return self
        return FusedAttentionDelta(moved)

    def numel(self) -> int:
        return sum(part.numel() for part in self.parts.values())

    def stored_numel(self) -> int:
        return sum(part.stored_numel() for part in self.parts.values())

    def weights(self, attention: nn.MultiheadAttention,
                strength: float) -> tuple[Tensor, Optional[Tensor], Tensor, Optional[Tensor]]:
        """(in_proj_weight, in_proj_bias, out_proj weight, out_proj bias) with this LoRA merged, as new tensors."""
        e = attention.embed_dim
        in_w, in_b = attention.in_proj_weight, attention.in_proj_bias
        w_slices, b_slices = [], []
        for i, name in enumerate("qkv"):
            base = in_w[i * e:(i + 1) * e]
            part = self.parts.get(name)
            if part is None:
                w_slices.append(base)
                b_slices.append(None if in_b is None else in_b[i * e:(i + 1) * e])
                continue
            w_slices.append(base + strength * part.weight_delta(SimpleNamespace(weight=base)).to(base))
            bias = None if in_b is None else in_b[i * e:(i + 1) * e]
            if bias is not None and part.bias is not None:
                bias = bias + strength * part.bias.to(bias)
            b_slices.append(bias)
        out_layer = attention.out_proj
        out_w, out_b = out_layer.weight, out_layer.bias
        part = self.parts.get("out")
        if part is not None:
            out_w = out_w + strength * part.weight_delta(out_layer).to(out_w)
            if out_b is not None and part.bias is not None:
                out_b = out_b + strength * part.bias.to(out_b)
        new_in_b = None if in_b is None else torch.cat(b_slices)
        return torch.cat(w_slices), new_in_b, out_w, out_b

    def attention_output(self, attention: nn.MultiheadAttention, args: tuple, kwargs: dict,
                         strength: float) -> Tensor:
        """The module's attention output for this call, with the LoRA merged at ``strength``."""
        names = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask",
                 "average_attn_weights", "is_causal")
        call = {**dict(zip(names, args, strict=False)), **kwargs}
        q, k, v = call["query"], call["key"], call["value"]
        if attention.batch_first:
            q, k, v = (t.transpose(0, 1) for t in (q, k, v))
        in_w, in_b, out_w, out_b = self.weights(attention, strength)
        out, _ = F.multi_head_attention_forward(
            q, k, v, attention.embed_dim, attention.num_heads, in_w, in_b, attention.bias_k, attention.bias_v,
            attention.add_zero_attn, 0.0, out_w, out_b, training=False,
            key_padding_mask=call.get("key_padding_mask"), need_weights=False, attn_mask=call.get("attn_mask"),
            is_causal=call.get("is_causal", False))
        return out.transpose(0, 1) if attention.batch_first else out

    def weight_delta(self, layer: nn.Module) -> Tensor:
        raise NotImplementedError("a fused attention delta is applied through attention_output()")


@dataclass(frozen=True)
class OutputSlice:
    """Output columns ``[start, start + length)`` of a fused linear layer that one LoRA module changes.

    ``swap_halves``: the LoRA orders the two halves of its output the other way round (diffusers
    Flux ``norm_out`` emits (scale, shift), BFL's ``final_layer.adaLN_modulation.1`` (shift, scale)).
    """

    start: int
    length: int
    swap_halves: bool = False

    def place(self, t: Tensor, dim: int) -> Tensor:
        """A part's output (or weight rows) in the fused layer's order along ``dim``."""
        return t.roll(self.length // 2, dim) if self.swap_halves else t


class SlicedOutputDelta(ModuleDelta):
    """LoRA parts that each change a column range of one fused *linear* layer's output.

    BFL's Flux fuses q, k and v (and, in single blocks, the MLP input) into one Linear, where
    diffusers-format LoRAs train every projection on its own. Each part is computed on the
    layer's input against a stand-in layer of its slice's shape and put into its columns; a part's
    bias travels with its output. Parts may be of any type (DoRA sees its slice of the weight).
    """

    def __init__(self, parts: list[tuple[OutputSlice, ModuleDelta]], shape: tuple[int, int]) -> None:
        self.parts = sorted(parts, key=lambda p: p[0].start)
        super().__init__(shape, self._gather_bias(shape[0]))
        ends = [0] + [s.start + s.length for s, _ in self.parts]
        # Parts that tile the output exactly are concatenated instead of added into zeros.
        self._tiles = ends[-1] == shape[0] and all(
            s.start == e for (s, _), e in zip(self.parts, ends[:-1], strict=True))

    def _gather_bias(self, out_features: int) -> Optional[Tensor]:
        biased = [(s, part.bias) for s, part in self.parts if part.bias is not None]
        if not biased:
            return None
        bias = biased[0][1].new_zeros(out_features)
        for s, b in biased:
            bias[s.start:s.start + s.length] += s.place(b, 0)
        return bias

    def fits(self, weight_shape: tuple[int, ...]) -> bool:
        return tuple(int(d) for d in weight_shape) == self.shape

    def to(self, device: torch.device | str | None, dtype: torch.dtype | None) -> "SlicedOutputDelta":
        moved = [(s, part.to(device, dtype)) for s, part in self.parts]
        if all(new is old for (_, new), (_, old) in zip(moved, self.parts, strict=True)):
            return self
        return SlicedOutputDelta(moved, self.shape)

    def numel(self) -> int:
        return sum(part.numel() for _, part in self.parts)

    def stored_numel(self) -> int:
        return sum(part.stored_numel() for _, part in self.parts)

    def _part_layer(self, layer: nn.Module, s: OutputSlice) -> SimpleNamespace:
        """A stand-in layer for the rows of ``s``: a view of the weight where it is readable
        (DoRA), else a shape-only tensor of the weight's dtype (the other types read no values)."""
        w = layer.weight
        if _values_usable(w):
            return SimpleNamespace(weight=w.narrow(0, s.start, s.length))
        return SimpleNamespace(weight=torch.empty(s.length, self.shape[1], dtype=w.dtype, device="meta"))

    def _part_output(self, x: Tensor, layer: nn.Module, s: OutputSlice, part: ModuleDelta,
                     cache: Optional[DeltaCache]) -> Tensor:
        return s.place(part.output_delta(x, self._part_layer(layer, s), cache), -1)

    def output_delta(self, x: Tensor, layer: nn.Module, cache: Optional[DeltaCache] = None) -> Tensor:
        if self._tiles:
            return torch.cat([self._part_output(x, layer, s, part, cache) for s, part in self.parts], dim=-1)
        out = x.new_zeros(*x.shape[:-1], self.shape[0])
        for s, part in self.parts:
            out[..., s.start:s.start + s.length] += self._part_output(x, layer, s, part, cache)
        return out

    def weight_delta(self, layer: nn.Module) -> Tensor:
        dense: Optional[Tensor] = None
        for s, part in self.parts:
            rows = s.place(part.weight_delta(self._part_layer(layer, s)).reshape(s.length, -1), 0)
            if dense is None:
                dense = rows.new_zeros(self.shape)
            dense[s.start:s.start + s.length] += rows
        return dense
