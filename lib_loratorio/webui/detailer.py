"""A detailer pass per LoRA: ADetailer's inpaint passes with the LoRAtorio LoRAs that own their region.

How ADetailer runs its passes (Bing-su/adetailer v25.3.0, ``scripts/!adetailer.py``, read at commit 36189cb): in its
script's ``postprocess_image``, after an image of the generation is decoded, it detects regions and details each in
a pass of its own: an img2img ``p`` (``_ad_inner = True``) with the region in ``image_mask``, the generation's
prompt for that image (or the ADetailer prompt), a copy of the generation's script args, and the generation's script
runner filtered to the scripts named in its settings (*Script names to apply to ADetailer*); then ``process_images``.
With ``loratorio`` among those names, LoRAtorio runs in each pass with the generation's settings, and composes the
pass's ``<loratorio:...>`` tags (the generation's, unless the ADetailer prompt has its own).

With *ADetailer per LoRA* on, a pass keeps, of the LoRAs the generation composed, only those that own its region:
each LoRA's share of the region in the generation's weight maps of that image (``weight_masks.region_shares``), at
least *Owner share* times the largest share (``weight_masks.owners``; with uniform maps, as in Stack without region
hints, every LoRA). The owners act on the whole region: their region hints are dropped in the pass (ADetailer
inpaints a crop around the region, where "left" would mean the crop's left half). Tags of other LoRAs (an ADetailer
prompt's own) stay as written. The image's infotext says which LoRAs each region's pass applied
(``LoRAtorio ADetailer``).

A1111 and Forge run one generation at a time, and ADetailer's passes run inside it (the generation's ``p`` is
between its batch's sampling and its image's infotext), so the generation in progress is kept here. After the passes
of a batch's last image ADetailer runs the scripts' ``process`` once more on a copy of the generation's ``p``: that
copy keeps the generation (found in a real A1111 1.10.1 with ADetailer 25.3.0).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field, replace
from typing import Optional

from ..weight_masks import owners, region_shares
from .console import note_once
from .session import Session
from .tags import RequestedLora
from .weight_map_api import region_tensor

#: the infotext key of the LoRAs each ADetailer pass applied, per image
INFOTEXT_KEY = "LoRAtorio ADetailer"
MISSING_SCRIPT = ("LoRAtorio's 'ADetailer per LoRA' found an ADetailer pass without LoRAtorio: add loratorio to "
                  "ADetailer's 'Script names to apply to ADetailer' (Settings > ADetailer) so that it runs there; "
                  "this pass went on without the LoRAtorio LoRAs.")


def is_detailer_pass(p) -> bool:
    """Whether ``p`` is one of ADetailer's inpaint passes (it marks them ``_ad_inner``)."""
    return bool(getattr(p, "_ad_inner", False))


@dataclass
class _Generation:
    session: weakref.ref                                           # the generation's Session
    passes: dict[int, list[list[str]]] = field(default_factory=dict)  # image -> the LoRAs of each of its passes

    def image(self) -> Optional[int]:
        """The image of the generation ADetailer is detailing now (its number over every batch)."""
        session = self.session()
        if session is None:
            return None
        p = session.p
        return getattr(p, "iteration", 0) * p.batch_size + getattr(p, "batch_index", 0)

    def infotext(self, p=None, index: int = 0, **_kwargs) -> Optional[str]:
        """The infotext value of an image: the LoRAs of each of its passes, "region 1: alice; region 2: hat"
        (a WebUI calls it with the generation's ``p`` and the image's position in its batch)."""
        passes = self.passes.get(getattr(p, "iteration", 0) * getattr(p, "batch_size", 1) + index)
        if not passes:
            return None
        return "; ".join(f"region {n}: {'+'.join(names) or 'none'}" for n, names in enumerate(passes, 1))


_generation: Optional[_Generation] = None


def attach(session: Session) -> None:
    """A session has started: the generation's (kept for its passes), or an ADetailer pass's (limited to the LoRAs
    that own its region, when the feature is on)."""
    global _generation
    if not is_detailer_pass(session.p):
        if _is_copy_of_generation(session.p):
            return
        _generation = _Generation(weakref.ref(session))
        if session.params.detailer:
            session.p.extra_generation_params[INFOTEXT_KEY] = _generation.infotext
        return
    generation = _generation
    outer = generation.session() if generation is not None else None
    if outer is None or not session.params.detailer:
        return
    maps = outer.weight_maps.get(generation.image())
    region = getattr(session.p, "image_mask", None)
    if not maps or region is None:
        return
    shares = region_shares(maps[0][1], region_tensor(region))  # maps[0]: the mean over the steps
    first_pass = set(outer.names)
    owning = {outer.names[i] for i in owners(shares, session.params.detailer_share)}

    def owners_only(lora: RequestedLora) -> Optional[RequestedLora]:
        if lora.name not in first_pass:   # the pass's own tag
            return lora
        # an owner acts on the whole region: its hint placed it there, and would mean a part of the pass's crop
        return replace(lora, region=None) if lora.name in owning else None

    session.lora_choice = owners_only


def _is_copy_of_generation(p) -> bool:
    """Whether ``p`` is a copy of the generation's ``p``: after its passes of a batch's last image ADetailer runs the
    scripts' ``process`` on one (``copy(p)``, to restore their state); it is no new generation."""
    outer = _generation.session() if _generation is not None else None
    return outer is not None and p is not outer.p and p.extra_generation_params is outer.p.extra_generation_params


def record_pass(session: Session) -> None:
    """After an ADetailer pass's LoRAs are bound: keep which it applies, for its image's infotext."""
    generation = _generation
    if generation is None or not is_detailer_pass(session.p) or not session.params.detailer:
        return
    generation.passes.setdefault(generation.image(), []).append(list(session.names))


def note_missing_script(p) -> bool:
    """``<loratorio:...>`` tags reached an ADetailer pass LoRAtorio does not run in, with *ADetailer per LoRA* on: say
    how to make it run there (once per generation). Whether it was such a pass."""
    generation = _generation
    outer = generation.session() if generation is not None else None
    if not (is_detailer_pass(p) and outer is not None and outer.params.detailer):
        return False
    note_once(outer.p, MISSING_SCRIPT)
    return True
