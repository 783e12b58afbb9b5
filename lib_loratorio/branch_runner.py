"""Run the base model and every LoRA branch in one batched forward, without touching any weight.

Forward hooks on the modules a LoRA targets add ``strength_i * delta_i(x_rows)`` to the output rows
that belong to branch i; other rows pass through unchanged. Rows are assigned per forward with
:meth:`BranchRunner.rows`; outside that block the hooks do nothing, so any other call of the
network (a ControlNet, the host's own passes) is untouched. Hooks are removed on exit, whatever
ended the block (exception, interrupt), which is the extension's promise that nothing is left
behind. The deltas' copies on the model's device and what they build to be applied (a
:class:`DeltaCache` bounded by ``cache_bytes``) live as long as the runner and are freed on exit.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional, Sequence, Union

import torch
from torch import nn

from .branches import BASE, MIXED, lora_of, loras_of
from .delta_cache import DeltaCache
from .errors import LoratorioError
from .image_tokens import TokenLayout
from .layer_maps import LayerMaps, is_text_side
from .lora_layers import FusedAttentionDelta, ModuleDelta
from .low_rank_stack import LowRankStack, stackable
from .network_names import BoundLora

RowSelector = Union[slice, torch.Tensor]
DEFAULT_CACHE_BYTES = 1 << 30
__all__ = ["DEFAULT_CACHE_BYTES", "MIXED", "BranchRunner"]  # MIXED: see branches.py


def _selector(mask: torch.Tensor) -> Optional[RowSelector]:
    """Rows of one LoRA as a slice when contiguous (the composer groups rows by branch), else indices."""
    idx = mask.nonzero().flatten()
    if idx.numel() == 0:
        return None
    first, last = int(idx[0]), int(idx[-1])
    if last - first + 1 == idx.numel():
        return slice(first, last + 1)
    return idx


class BranchRunner:
    """Per-row LoRA activation through forward hooks (a context manager).

    ``loras[i]`` is LoRA i of the composition, run alone by branch ``branches.lora_branch(i)``.
    """

    def __init__(self, loras: Sequence[BoundLora], strengths: Sequence[float],
                 cache_bytes: int = DEFAULT_CACHE_BYTES, labels: Sequence[str] | None = None) -> None:
        """``cache_bytes``: the most that LyCORIS/DoRA deltas may keep built between forwards.
        ``labels[i]``: LoRA i as the errors its layers raise name it (by default its file name)."""
        if len(loras) != len(strengths):
            raise LoratorioError(f"{len(loras)} LoRAs but {len(strengths)} strengths.")
        self.n_loras = len(loras)
        self.strengths = [float(s) for s in strengths]
        self.labels = list(labels) if labels is not None else [f"LoRA '{lora.lora.name}'" for lora in loras]
        self._by_module: dict[nn.Module, list[tuple[int, ModuleDelta]]] = {}
        self._text_side: dict[nn.Module, bool] = {}
        for i, lora in enumerate(loras):
            for name, module, delta in lora.targets:
                self._by_module.setdefault(module, []).append((i, delta))
                self._text_side[module] = is_text_side(name.split(":", 1)[-1])
        self._handles: list = []
        self._device_copies: dict = {}
        self._stacks: dict = {}  # (module, device, dtype, active LoRAs) -> (LowRankStack or None, other deltas)
        self.cache = DeltaCache(cache_bytes)
        self._n_rows: Optional[int] = 0
        self._selectors: list[Optional[RowSelector]] = []
        self._mixed: Optional[RowSelector] = None
        self._layer_maps: Optional[LayerMaps] = None

    # --- lifetime -----------------------------------------------------------------------------
    def __enter__(self) -> "BranchRunner":
        try:
            for module in self._by_module:
                self._handles.append(module.register_forward_hook(self._hook, with_kwargs=True))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook this runner installed and free its device copies; safe to call more than once."""
        while self._handles:
            self._handles.pop().remove()
        self._selectors = []
        self._device_copies.clear()
        self._stacks.clear()
        self.cache.clear()

    @property
    def installed(self) -> bool:
        return bool(self._handles)

    # --- row assignment -------------------------------------------------------------------------
    @contextmanager
    def rows(self, branches: torch.Tensor, active: Optional[torch.Tensor] = None, maps: Optional[torch.Tensor] = None,
             tokens: Optional[TokenLayout] = None) -> Iterator[None]:
        """Within the block, row r of every hooked module's batch belongs to ``branches[r]``.

        ``active`` [rows, N] (bool) overrides the one-LoRA-per-branch rule, e.g. all True for
        rows that should see every LoRA merged. Rows of branch ``MIXED`` see every LoRA, each
        scaled by its weight map: ``maps`` [mixed rows, N, H, W] on the latent grid, in row order
        (see layer_maps.LayerMaps; ``tokens``: a transformer's token layout in this call, see image_tokens).
        """
        branches = branches.to("cpu", torch.long)
        mixed = branches == MIXED
        if bool(mixed.any()) != (maps is not None) or (maps is not None and maps.shape[0] != int(mixed.sum())):
            raise LoratorioError("LoRAtorio's mixed rows and their weight maps do not match; please report this.")
        if active is None:
            active = torch.zeros(len(branches), self.n_loras, dtype=torch.bool)
            lora_rows = branches > BASE
            active[lora_rows.nonzero().flatten(), loras_of(branches[lora_rows])] = True
        self._n_rows = active.shape[0]
        self._selectors = [_selector(active[:, i]) for i in range(self.n_loras)]
        if maps is not None:
            self._mixed, self._layer_maps = _selector(mixed), LayerMaps(maps, tokens)
        try:
            yield
        finally:
            self._selectors, self._mixed, self._layer_maps = [], None, None

    @contextmanager
    def whole_batch(self, branch: int) -> Iterator[None]:
        """Within the block, every row of every hooked call belongs to ``branch`` (MIXED: every LoRA, each at
        its strength; no weight map acts here).

        For passes whose batch the caller does not lay out itself, such as a host's text encoder
        encoding a LoRA branch's prompts.
        """
        self._n_rows = None
        self._selectors = [slice(None) if branch == MIXED or i == lora_of(branch) else None
                           for i in range(self.n_loras)]
        try:
            yield
        finally:
            self._selectors = []

    # --- the hook ------------------------------------------------------------------------------
    def _delta_on(self, delta: ModuleDelta, device: torch.device, dtype: torch.dtype) -> ModuleDelta:
        key = (id(delta), device, dtype)
        copy = self._device_copies.get(key)
        if copy is None:
            copy = self._device_copies[key] = delta.to(device, dtype)
        return copy

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict, output):
        if not self._selectors and self._mixed is None:
            return None
        x = args[0] if args else next(iter(kwargs.values()))
        out = output[0] if isinstance(output, tuple) else output
        seq_first = isinstance(module, nn.MultiheadAttention) and not module.batch_first
        batch = x.shape[1] if seq_first else x.shape[0]
        if self._n_rows is not None and batch != self._n_rows:
            raise LoratorioError(
                f"LoRAtorio expected {self._n_rows} rows in {type(module).__name__} but got {batch}: something runs "
                "the network's layers on parts of the batch, which LoRAtorio's branches cannot share. Extensions "
                "that rewrite the attention layers do that: Regional Prompter in its Attention mode (with "
                "LoRAtorio's routing modes: use its Latent mode, or LoRAtorio's mode Stack) and sd-forge-couple (use "
                "LoRAtorio's region hints instead, <loratorio:NAME:STRENGTH:left>). Turn it or LoRAtorio off, or "
                "report this with your settings.")
        for i, delta in self._by_module[module]:
            sel = self._selectors[i]
            if sel is None or self.strengths[i] == 0:
                continue
            with self._naming(i):
                out = self._add_delta(module, args, kwargs, x, out, sel, i, delta)
        if self._mixed is not None and self._mixes(module):
            out = self._add_mixed(module, x, out)
        if isinstance(output, tuple):
            return (out, *output[1:])
        return out

    def _mixes(self, module: nn.Module) -> bool:
        """Whether this module's hook adds the LoRAs' changes to mixed rows (a subclass may do it elsewhere)."""
        return True

    def _add_delta(self, module: nn.Module, args: tuple, kwargs: dict, x: torch.Tensor, out: torch.Tensor,
                   sel: RowSelector, i: int, delta: ModuleDelta) -> torch.Tensor:
        """``out`` with LoRA i's delta added on its rows ``sel``."""
        if isinstance(delta, FusedAttentionDelta):
            return _fused_attention(module, args, kwargs, out, sel, self._delta_on(delta, out.device, x.dtype),
                                    self.strengths[i])
        d = self._delta_on(delta, out.device, x.dtype).output_delta(x[sel], module, self.cache)
        return _add_rows(out, sel, d.to(out.dtype) * self.strengths[i])

    @contextmanager
    def _naming(self, i: int) -> Iterator[None]:
        """An error LoRA i's layers raise (e.g. DoRA on a quantized layer) says which LoRA it is."""
        try:
            yield
        except LoratorioError as err:
            raise type(err)(f"{self.labels[i]}: {err}") from err

    def _add_mixed(self, module: nn.Module, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Rows of branch MIXED: every LoRA's change, each scaled by its weight map at this layer."""
        sel, maps = self._mixed, self._layer_maps
        x_rows, out_rows = x[sel], out[sel]
        weights = maps.weights_for(out_rows, self._text_side[module]).to(out.device, out.dtype)
        stack, others = self._mixed_plan(module, out.device, x.dtype, maps.active)
        total = None
        if stack is not None:  # plain low-rank factors: nothing in them can raise a LoRA's error
            total = stack.apply(x_rows, module, weights).to(out.dtype)
        for i, delta in others:
            with self._naming(i):
                d = delta.output_delta(x_rows, module, self.cache).to(out.dtype)
            d = d * (weights[i] * self.strengths[i])
            total = d if total is None else total + d
        return out if total is None else _add_rows(out, sel, total)

    def _mixed_plan(self, module: nn.Module, device: torch.device, dtype: torch.dtype,
                    active: tuple[bool, ...]) -> tuple[LowRankStack | None, list[tuple[int, ModuleDelta]]]:
        """This layer's LoRAs for mixed rows: plain low-rank ones stacked, the rest one by one (kept per run)."""
        key = (module, device, dtype, active)
        if key not in self._stacks:
            stacked, others = [], []
            for i, delta in self._by_module[module]:
                if self.strengths[i] == 0 or not active[i] or isinstance(delta, FusedAttentionDelta):
                    continue  # nn.MultiheadAttention only appears in text encoders, which mixed rows never run
                moved = self._delta_on(delta, device, dtype)
                (stacked if stackable(moved, module) else others).append((i, moved))
            stack = None
            if stacked:
                stack = LowRankStack([i for i, _ in stacked], [d for _, d in stacked],
                                     [self.strengths[i] for i, _ in stacked], module)
            self._stacks[key] = (stack, others)
        return self._stacks[key]


def _add_rows(out: torch.Tensor, sel: RowSelector, delta: torch.Tensor) -> torch.Tensor:
    """``out`` with ``delta`` added to rows ``sel``: in place, unless autograd tracks ``out``."""
    if torch.is_grad_enabled() and out.requires_grad:
        return out.index_add(0, _as_index(sel, out.shape[0], out.device), delta)
    if isinstance(sel, slice):
        out[sel] += delta
    else:
        out.index_add_(0, sel.to(out.device), delta)
    return out


def _fused_attention(module: nn.Module, args: tuple, kwargs: dict, out: torch.Tensor, sel: RowSelector,
                     delta: FusedAttentionDelta, strength: float) -> torch.Tensor:
    """Rows ``sel`` of an nn.MultiheadAttention output, recomputed with the LoRA merged into its weights."""
    new = delta.attention_output(module, args, kwargs, strength).to(out.dtype)
    if isinstance(sel, slice) and sel == slice(None):
        return new
    dim = 0 if getattr(module, "batch_first", False) else 1  # seq-first attention keeps the batch in dim 1
    index = _as_index(sel, out.shape[dim], out.device)
    return out.index_copy(dim, index, new.index_select(dim, index))


def _as_index(sel: RowSelector, n_rows: int, device: torch.device) -> torch.Tensor:
    if isinstance(sel, slice):
        return torch.arange(n_rows, device=device)[sel]
    return sel.to(device)
