"""The ``<loratorio:NAME:STRENGTH[:REGION]>`` tags of a prompt, read into the LoRAs a generation asks for.

The WebUI's extra-network parser splits a tag at ``:`` into ``ExtraNetworkParams`` (``items``,
``positional``, ``named``); ``extra_network.py`` receives them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Optional

from ..errors import LoratorioError
from ..region_hints import FORMS, Box, parse_region

EXTRA_NETWORK_NAME = "loratorio"
_RIGHT_FORM = (f"write <{EXTRA_NETWORK_NAME}:NAME:STRENGTH>, e.g. <{EXTRA_NETWORK_NAME}:alice:0.8> "
               "(without a strength the Default strength setting applies), or with a region hint "
               f"<{EXTRA_NETWORK_NAME}:alice:0.8:left>")
# What the WebUI's extra-network parser leaves in a prompt: it needs a name and a closing '>'.
_STRAY_TAG = re.compile(rf"<{EXTRA_NETWORK_NAME}:[^<>]*>?")


@dataclass(frozen=True)
class RequestedLora:
    """A LoRA a generation composes: its name as on the Lora card, strength, and where it was asked
    for (the tag as written, or the pool)."""

    name: str
    strength: float
    source: str
    region: Optional[Box] = None  # the tag's region hint


def tag_text(tag) -> str:
    """The tag as written in the prompt, from the WebUI's ExtraNetworkParams."""
    return f"<{EXTRA_NETWORK_NAME}:{':'.join(map(str, tag.items))}>"


def read_tags(tags: Iterable, default_strength: float) -> list[RequestedLora]:
    """The LoRAs of the prompt's tags; a tag without a name or with a strength that is no number is an error
    that quotes it."""
    out = []
    for tag in tags:
        text = tag_text(tag)
        name = str(tag.positional[0]) if tag.positional else ""
        if not name.strip():
            raise LoratorioError(f'The tag "{text}" names no LoRA: {_RIGHT_FORM}.')
        raw = tag.positional[1] if len(tag.positional) > 1 else tag.named.get("w", default_strength)
        try:
            strength = float(raw)
        except (TypeError, ValueError):
            strength = math.nan
        if not math.isfinite(strength):
            raise LoratorioError(f'In the tag "{text}" the strength must be a number: {_RIGHT_FORM}.')
        region = None
        raw_region = ":".join(map(str, tag.positional[2:])) or tag.named.get("region")
        if raw_region:
            try:
                region = parse_region(str(raw_region))
            except LoratorioError as err:
                raise LoratorioError(f'In the tag "{text}" the region hint is not readable: {err} '
                                     f'(its third part: {FORMS}).') from None
        out.append(RequestedLora(name, strength, text, region))
    return out


def check_stray_tags(prompts: Iterable[str]) -> None:
    """Raise for ``<loratorio:`` text the WebUI's parser left in a prompt (an empty or unclosed tag), which
    would otherwise stay in the prompt as words while LoRAtorio composes nothing for it."""
    for prompt in prompts:
        stray = _STRAY_TAG.search(prompt or "")
        if stray:
            raise LoratorioError(f'LoRAtorio cannot read the tag "{stray.group(0)}" in the prompt: {_RIGHT_FORM}.')
