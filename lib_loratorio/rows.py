"""Rows of a host's conditioning structures (tensors, or lists and dicts of them): the WebUIs' conds and the
``c`` dict of a ComfyUI-lineage model call."""

from __future__ import annotations

from typing import Any

import torch


def take_rows(value: Any, idx: torch.Tensor, n_rows: int | None = None) -> Any:
    """Rows ``idx`` of every tensor in a (nested) conditioning structure.

    With ``n_rows``, only tensors that have that many rows are taken from (others, such as a
    ControlNet hint with one row for all, pass through).
    """
    if isinstance(value, torch.Tensor):
        if value.dim() == 0 or (n_rows is not None and value.shape[0] != n_rows):
            return value
        return value[idx.to(value.device)]
    if isinstance(value, list):
        return [take_rows(v, idx, n_rows) for v in value]
    if isinstance(value, dict):
        return {k: take_rows(v, idx, n_rows) for k, v in value.items()}
    return value
