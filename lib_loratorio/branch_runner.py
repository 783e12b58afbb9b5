"""Run the base model and every LoRA branch in one batched forward, without touching any weight.

Forward hooks on the modules a LoRA targets add ``strength_i * delta_i(x_rows)`` to the output rows
that belong to branch i; other rows pass through unchanged. Rows are assigned per forward with
:meth:`BranchRunner.rows`; outside that block the hooks do nothing, so any other call of the
network (a ControlNet, the host's own passes) is untouched. Hooks are removed on exit, whatever
ended the block (exception, interrupt), which is the extension's promise that nothing is left
behind.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional, Sequence, Union

import torch
from torch import nn

from .errors import LoratorioError
from .lora_layers import FusedAttentionDelta, ModuleDelta
from .network_names import BoundLora

RowSelector = Union[slice, torch.Tensor]


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

    ``loras[i]`` is LoRA i+1 of the composition (branch 0 is the base model).
    """

    def __init__(self, loras: Sequence[BoundLora], strengths: Sequence[float],
                 device_copies: Optional[dict] = None, labels: Sequence[str] | None = None) -> None:
        """``device_copies``: a cache of deltas moved to a device/dtype, shared between runs
        (LoraLibrary.device_copies); by default each runner keeps its own. ``labels[i]`` names LoRA i
        in the errors its layers raise (by default its file name)."""
        if len(loras) != len(strengths):
            raise LoratorioError(f"{len(loras)} LoRAs but {len(strengths)} strengths.")
        self.n_loras = len(loras)
        self.strengths = [float(s) for s in strengths]
        self.labels = list(labels) if labels is not None else [f"LoRA '{lora.lora.name}'" for lora in loras]
        self._by_module: dict[nn.Module, list[tuple[int, ModuleDelta]]] = {}
        for i, lora in enumerate(loras):
            for _name, module, delta in lora.targets:
                self._by_module.setdefault(module, []).append((i, delta))
        self._handles: list = []
        self._device_copies: dict = {} if device_copies is None else device_copies
        self._n_rows: Optional[int] = 0
        self._selectors: list[Optional[RowSelector]] = []

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
        """Remove every hook this runner installed; safe to call more than once."""
        while self._handles:
            self._handles.pop().remove()
        self._selectors = []

    @property
    def installed(self) -> bool:
        return bool(self._handles)

    # --- row assignment -------------------------------------------------------------------------
    @contextmanager
    def rows(self, branches: torch.Tensor, active: Optional[torch.Tensor] = None) -> Iterator[None]:
        """Within the block, row r of every hooked module's batch belongs to ``branches[r]``.

        ``active`` [rows, N] (bool) overrides the one-LoRA-per-branch rule, e.g. all True for
        rows that should see every LoRA merged.
        """
        if active is None:
            branches = branches.to("cpu", torch.long)
            active = torch.zeros(len(branches), self.n_loras, dtype=torch.bool)
            lora_rows = branches > 0
            active[lora_rows.nonzero().flatten(), branches[lora_rows] - 1] = True
        self._n_rows = active.shape[0]
        self._selectors = [_selector(active[:, i]) for i in range(self.n_loras)]
        try:
            yield
        finally:
            self._selectors = []

    @contextmanager
    def whole_batch(self, branch: int) -> Iterator[None]:
        """Within the block, every row of every hooked call belongs to ``branch``.

        For passes whose batch the caller does not lay out itself, such as a host's text encoder
        encoding a LoRA branch's prompts.
        """
        self._n_rows = None
        self._selectors = [slice(None) if i == branch - 1 else None for i in range(self.n_loras)]
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
        if not self._selectors:
            return None
        x = args[0] if args else next(iter(kwargs.values()))
        out = output[0] if isinstance(output, tuple) else output
        seq_first = isinstance(module, nn.MultiheadAttention) and not module.batch_first
        batch = x.shape[1] if seq_first else x.shape[0]
        if self._n_rows is not None and batch != self._n_rows:
            raise LoratorioError(
                f"LoRAtorio expected {self._n_rows} rows in {type(module).__name__} but got {batch}: "
                "the host changed the batch inside the network. Please report this with your settings.")
        for i, delta in self._by_module[module]:
            sel = self._selectors[i]
            if sel is None or self.strengths[i] == 0:
                continue
            try:
                out = self._add_delta(module, args, kwargs, x, out, sel, i, delta)
            except LoratorioError as err:  # e.g. a DoRA LoRA on a quantized layer: say which LoRA
                raise type(err)(f"{self.labels[i]}: {err}") from err
        if isinstance(output, tuple):
            return (out, *output[1:])
        return out

    def _add_delta(self, module: nn.Module, args: tuple, kwargs: dict, x: torch.Tensor, out: torch.Tensor,
                   sel: RowSelector, i: int, delta: ModuleDelta) -> torch.Tensor:
        """``out`` with LoRA i's delta added on its rows ``sel``."""
        if isinstance(delta, FusedAttentionDelta):
            return _fused_attention(module, args, kwargs, out, sel, self._delta_on(delta, out.device, x.dtype),
                                    self.strengths[i])
        d = self._delta_on(delta, out.device, x.dtype).output_delta(x[sel], module)
        d = d.to(out.dtype) * self.strengths[i]
        if torch.is_grad_enabled() and out.requires_grad:
            return out.index_add(0, _as_index(sel, out.shape[0], out.device), d)
        if isinstance(sel, slice):
            out[sel] += d
        else:
            out.index_add_(0, sel.to(out.device), d)
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
