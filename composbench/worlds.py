"""The benchmark's two worlds and their parts, as one description each for training, sampling and runs.

* ``solo`` (world.py): one figure in the centre, every concept in a region of its own; the 240
  ComposLoRA-like compositions, its split in protocol.py; artifacts in composbench/artifacts/.
* ``duo`` (duo.py): one or two figures; compositions of two characters competing for the two
  figures; its own base model, LoRAs and scorers in composbench/artifacts/duo/.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import duo, protocol, regions, world
from .model import ARTIFACTS, MAX_TOKENS, VOCAB, vocabulary


@dataclass(frozen=True)
class WorldSpec:
    name: str
    root: Path  # where its base model, LoRAs and scorers live
    concepts: tuple[str, ...]  # the concepts it has a LoRA for
    vocab: tuple[str, ...]
    max_tokens: int
    render: Callable[[Any], np.ndarray]
    generic_scene: Callable[[np.random.Generator], Any]  # the base model's training scenes
    concept_scene: Callable[[np.random.Generator, str], Any]  # a LoRA's training scenes
    composition_prompt: Callable[[tuple[str, ...]], str]
    split: Callable[[str], list[tuple[str, ...]]]
    fingerprint: Callable[[str], str]
    region_masks: Callable[[tuple[str, ...]], np.ndarray]  # ground truth [N, H, W] per concept


def _solo_concept_scene(rng: np.random.Generator, concept: str) -> world.Scene:
    return world.random_generic(rng, {world.CATEGORY_OF[concept]: concept})


SOLO = WorldSpec("solo", ARTIFACTS, world.ALL_CONCEPTS, VOCAB, MAX_TOKENS, world.render, world.random_generic,
                 _solo_concept_scene, world.composition_prompt, protocol.split, protocol.fingerprint,
                 regions.region_masks)
DUO = WorldSpec("duo", ARTIFACTS / duo.ARTIFACTS_SUBDIR, duo.ALL_CONCEPTS,
                vocabulary(duo.GENERIC_WORDS, duo.ALL_CONCEPTS), duo.MAX_TOKENS, duo.render, duo.random_scene,
                duo.concept_scene, duo.composition_prompt, duo.split, duo.fingerprint, duo.region_masks)
WORLDS: dict[str, WorldSpec] = {w.name: w for w in (SOLO, DUO)}
