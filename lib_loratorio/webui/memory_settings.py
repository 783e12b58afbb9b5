"""LoRAtorio's memory settings in the WebUI's Settings tab (section "LoRAtorio").

They bound what LoRAtorio keeps: the LoRA files read from disk, kept between generations (the
library, lora_library.py), and what LyCORIS/DoRA deltas build from their factors during one
generation (the branch runner's cache, delta_cache.py; on a GPU this is VRAM).
"""

from __future__ import annotations

from modules import shared

from ..branch_runner import DEFAULT_CACHE_BYTES
from ..lora_library import DEFAULT_MAX_BYTES

SECTION = ("loratorio", "LoRAtorio")
MIB = 2 ** 20
FILE_CACHE = "loratorio_file_cache_mb"
BUILD_CACHE = "loratorio_build_cache_mb"
_OPTIONS = {
    FILE_CACHE: (DEFAULT_MAX_BYTES // MIB, "LoRA files kept in memory between generations (MiB)",
                 "The least recently used files are dropped beyond this; a file larger than it is still used."),
    BUILD_CACHE: (DEFAULT_CACHE_BYTES // MIB, "Weights LoHa/DoRA LoRAs build during a generation (MiB)",
                  "Kept up to this size on the model's device while a generation runs, freed when it ends; "
                  "beyond it they are rebuilt when needed (slower, no more memory)."),
}


def on_ui_settings() -> None:
    for key, (default, label, info) in _OPTIONS.items():
        shared.opts.add_option(key, shared.OptionInfo(default, label, section=SECTION).info(info))


def _megabytes(key: str) -> int:
    try:
        value = int(float(getattr(shared.opts, key)))
    except (AttributeError, TypeError, ValueError):
        value = _OPTIONS[key][0]
    return max(0, value) * MIB


def file_cache_bytes() -> int:
    return _megabytes(FILE_CACHE)


def build_cache_bytes() -> int:
    return _megabytes(BUILD_CACHE)
