"""What a ComfyUI-lineage model patcher (ComfyUI's ModelPatcher, Forge's UnetPatcher) carries besides its model:
the patches other nodes and extensions set, named for a user (host-independent: plain dicts and functions).

LoRAtorio composes on a clone of the patcher it is given, so every patch set before it acts on every branch. When
the base model's prediction turns NaN, those patches are a likely cause (FreeU on a model it does not suit, for
one), and the message names them (see ``ComposingSession.sampling_run``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

#: model_options entries that hold one function or a list of them
_FUNCTION_OPTIONS = ("model_function_wrapper", "sampler_cfg_function", "sampler_pre_cfg_function",
                     "sampler_post_cfg_function", "denoise_mask_function")


def origin(fn: Any) -> str:
    """Who made a patch function: the class whose method defined it (``FreeU_V2`` for a closure made in
    ``FreeU_V2.execute``, ``IPAdapter`` for a bound method or a callable object of that class), or else the
    function and its module (``patch_freeu_v2 in forge_freeu``)."""
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    outer = qualname.split(".<locals>")[0]
    if "." in outer:
        return outer.split(".")[0]
    module = (getattr(fn, "__module__", None) or "").rsplit(".", 1)[-1]
    return f"{outer} in {module}" if module else outer


def _functions(value: Any) -> Iterable[Any]:
    if value is None:
        return ()
    return value if isinstance(value, (list, tuple)) else (value,)


def describe_patches(patcher: Any, skip: Iterable[str] = ()) -> list[str]:
    """One line per kind of patch ``patcher`` carries, e.g. "FreeU_V2 (output_block_patch)", "weight patches on 264
    weights (LoRAs or merges loaded before)"; wrappers registered under a key of ``skip`` are left out."""
    options = getattr(patcher, "model_options", None) or {}
    found: dict[str, int] = {}

    def add(line: str) -> None:
        found[line] = found.get(line, 0) + 1

    for key in _FUNCTION_OPTIONS:
        for fn in _functions(options.get(key)):
            add(f"{origin(fn)} ({key})")
    transformer = options.get("transformer_options") or {}
    for name, fns in (transformer.get("patches") or {}).items():
        for fn in _functions(fns):
            add(f"{origin(fn)} ({name})")
    for name, blocks in (transformer.get("patches_replace") or {}).items():
        for fn in (blocks or {}).values():
            add(f"{origin(fn)} ({name} replacement)")
    skipped = set(skip)
    for kind, by_key in (getattr(patcher, "wrappers", None) or {}).items():
        for key, fns in by_key.items():
            if key not in skipped:
                for _ in _functions(fns):
                    add(f"{key} ({kind} wrapper)")
    lines = [line if count == 1 else f"{line} x{count}" for line, count in found.items()]
    weights = getattr(patcher, "patches", None)  # ComfyUI: weight key -> patches
    if weights:
        lines.append(f"weight patches on {len(weights)} weights (LoRAs or merges loaded before)")
    files = getattr(patcher, "lora_patches", None)  # Forge: (file, strengths, online) -> its weight patches
    if files:
        lines.append("LoRA files merged by the WebUI: " + ", ".join(str(key[0]).rsplit("/", 1)[-1] for key in files))
    return lines
