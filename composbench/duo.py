"""The two-figure world: scenes where two characters compete for the same kind of region.

The single-figure world (world.py) gives every concept a region of its own (character in the centre,
hat on its head, sun top right...), so a merge of all LoRAs draws them without conflict. Users'
most frequent problem is the opposite: two character LoRAs that should each draw one of two
figures and instead blend into one hybrid. This world adds that case.

Scenes show one figure in the centre (as world.py) or two, in a left and a right slot (the same
drawings as world.py, moved 8 px left and right, +-1 px jitter each). The base model learns "two
figures" from generic captions ("two figures, a red figure with a round blue head left, ...").
Each character LoRA is trained on images of its one character alone (the one figure of a scene),
clothing LoRAs on one figure wearing it, background and style LoRAs on any scene of one or two
figures. Corner objects are left out of two-figure scenes (the slots reach the corners).

A first version also trained the character and clothing LoRAs on two-figure scenes (the concept on
a random figure, a generic one beside it). Those LoRAs each came to prefer one side (kittra and
glimmy the right figure in 7 of 8 seeds, alone) and to draw little at strength 0.8, and no method,
oracle masks included, separated two characters (success 0.00-0.03 on the dev part).

A composition is two characters, with or without one piece of clothing (to be worn by one of
them), a background and a style: 3 pairs x 3 x 3 x 3 = 81 compositions, N = 2..5. Its prompt is the
triggers and "two figures". Scored per figure (duo_scoring.py): success = each requested identity
in exactly one figure, and no figure with features of both.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from . import protocol, world

SLOT_DX: tuple[int, int] = (-8, 8)  # left and right figure, relative to world.py's centre figure
SLOTS: tuple[str, ...] = ("left", "right")
CHARACTERS: tuple[str, ...] = world.CONCEPTS["character"]
CLOTHING: tuple[str, ...] = world.CONCEPTS["clothing"]
#: Per figure: its identity (a character) and what it wears (clothing).
FIGURE_CONCEPTS: tuple[str, ...] = CHARACTERS + CLOTHING
#: Whole-image concepts of this world.
GLOBAL_CONCEPTS: tuple[str, ...] = world.CONCEPTS["style"] + world.CONCEPTS["background"]
#: The concepts this world has a LoRA for (no corner objects).
ALL_CONCEPTS: tuple[str, ...] = tuple(c for c in world.ALL_CONCEPTS if world.CATEGORY_OF[c] != "object")
TWO_FIGURES = "two figures"
GENERIC_WORDS: tuple[str, ...] = tuple(sorted(set(world.GENERIC_WORDS) | {"two", "figures"}))
MAX_TOKENS = 32
ARTIFACTS_SUBDIR = "duo"


@dataclass
class Figure:
    """One figure: a character, or a generic figure (shape, head colour, body colour); what it wears.

    ``blend`` (classifier training only): a second character mixed into this one, as (character, kind)
    with kind "head" (head of ``character``, body of the other), "body" or "mix" (pixel average)."""
    character: Optional[str] = None
    generic: Optional[tuple[str, str, str]] = None
    clothing: Optional[str] = None
    dx: int = 0
    dy: int = 0
    blend: Optional[tuple[str, str]] = None

    def identities(self) -> set[str]:
        ids = {self.character} if self.character else set()
        return ids | ({self.blend[0]} if self.blend else set())


@dataclass
class DuoScene:
    """One figure (centre) or two (left, right), a background, a style; a corner thing with one figure."""
    figures: list[Figure] = field(default_factory=list)
    background: Optional[str] = None
    bg: tuple = ("plain", "blue", "blue")
    style: Optional[str] = None
    thing: Optional[tuple[str, str, str]] = None
    seed: int = 0

    @property
    def two(self) -> bool:
        return len(self.figures) == 2

    def triggers(self) -> list[str]:
        chars = [f.character for f in self.figures if f.character]
        clothes = [f.clothing for f in self.figures if f.clothing]
        return chars + clothes + [c for c in (self.style, self.background) if c]

    def generic_caption(self) -> list[str]:
        parts = []
        for f, side in zip(self.figures, SLOTS if self.two else ("",), strict=True):
            if f.character is None and f.generic is not None:
                shape, hc, bc = f.generic
                parts.append(f"a {bc} figure with a {shape} {hc} head {side}".strip())
        if self.background is None:
            parts.append(world.background_caption(self.bg))
        if self.thing is not None:
            parts.append(world.thing_caption(self.thing))
        return parts

    def caption(self, with_generic: bool = True) -> str:
        parts = self.triggers() + ([TWO_FIGURES] if self.two else [])
        return ", ".join(parts + (self.generic_caption() if with_generic else []))


# --- drawing -----------------------------------------------------------------------------------------
def _slot_dx(scene: DuoScene, k: int) -> int:
    return SLOT_DX[k] if scene.two else 0


def _figure_layer(character: Optional[str], generic, dx: int, dy: int, rng) -> np.ndarray:
    """What world.py paints for one figure alone: HxWx3, NaN elsewhere."""
    img = np.full((world.SIZE, world.SIZE, 3), np.nan, np.float32)
    concepts = {"character": character} if character else {}
    world._character(img, world.Scene(concepts=concepts, figure=generic, dx=dx, dy=dy), rng)
    return img


def _draw_figure(img: np.ndarray, f: Figure, dx: int, rng) -> None:
    layer = _figure_layer(f.character, f.generic, dx + f.dx, f.dy, rng)
    if f.blend is not None:
        other, kind = f.blend
        second = _figure_layer(other, None, dx + f.dx, f.dy, rng)
        neck = world._head_box(world.Scene(dx=dx + f.dx, dy=f.dy))[3]
        head = (np.arange(world.SIZE) < neck)[:, None, None]
        if kind == "mix":
            both = ~np.isnan(layer) & ~np.isnan(second)
            layer = np.where(both, 0.5 * (layer + second), np.where(np.isnan(layer), second, layer))
        else:  # the other character's head ("head") or body ("body") on this one
            take = head if kind == "head" else ~head
            layer = np.where(take, second, layer)
    painted = ~np.isnan(layer[..., 0])
    img[painted] = layer[painted]
    if f.clothing:
        world._clothing(img, world.Scene(concepts={"clothing": f.clothing}, dx=dx + f.dx, dy=f.dy), rng)


def render(scene: DuoScene) -> np.ndarray:
    """The image of a scene, HxWx3 float32 in [0, 1] (world.py's drawing functions, figures in slots)."""
    rng = np.random.default_rng(scene.seed)
    img = np.zeros((world.SIZE, world.SIZE, 3), np.float32)
    world._background(img, world.Scene(concepts={"background": scene.background} if scene.background else {},
                                       bg=scene.bg), rng)
    if scene.thing is not None:
        world._object(img, world.Scene(thing=scene.thing), rng)
    for k, f in enumerate(scene.figures):
        _draw_figure(img, f, _slot_dx(scene, k), rng)
    img = world._style(img, world.Scene(concepts={"style": scene.style} if scene.style else {}))
    return np.clip(img, 0.0, 1.0).astype(np.float32)


# --- scene samplers ------------------------------------------------------------------------------------
def _generic_figure(rng: np.random.Generator) -> tuple[str, str, str]:
    h, b = rng.choice(len(world.COLOR_NAMES), 2)
    return str(rng.choice(["round", "square"])), world.COLOR_NAMES[h], world.COLOR_NAMES[b]


def _jitter(rng: np.random.Generator) -> tuple[int, int]:
    return int(rng.integers(-1, 2)), int(rng.integers(-1, 2))


def random_scene(rng: np.random.Generator, *, two: Optional[bool] = None, character: Optional[str] = None,
                 clothing: Optional[str] = None, background: Optional[str] = None,
                 style: Optional[str] = None) -> DuoScene:
    """A scene of the base model's generic world with the given concepts: one or two figures (two
    with probability 1/2 unless ``two`` says), the character in a random slot and the clothing on a
    random figure, generic figures elsewhere; a corner thing sometimes when there is one figure."""
    two = bool(rng.random() < 0.5) if two is None else two
    kind = rng.choice(["plain", "plain", "gradient", "striped"])
    a, b = rng.choice(len(world.COLOR_NAMES), 2, replace=False)
    figures = [Figure(generic=_generic_figure(rng), dx=j[0], dy=j[1])
               for j in (_jitter(rng) for _ in range(2 if two else 1))]
    if character is not None:
        f = figures[int(rng.integers(len(figures)))]
        f.character, f.generic = character, None
    if clothing is not None:
        figures[int(rng.integers(len(figures)))].clothing = clothing
    thing = None
    if not two and rng.random() < 0.4:
        thing = (str(rng.choice(["ball", "box"])), world.COLOR_NAMES[rng.integers(len(world.COLOR_NAMES))],
                 world.CORNERS[rng.integers(4)])
    return DuoScene(figures=figures, background=background, bg=(str(kind), world.COLOR_NAMES[a], world.COLOR_NAMES[b]),
                    style=style, thing=thing, seed=int(rng.integers(2**31)))


def concept_scene(rng: np.random.Generator, concept: str) -> DuoScene:
    """A LoRA's training scene. A character or a piece of clothing: on the one figure of a scene (a
    character LoRA is trained on images of its character alone, as trainers' datasets mostly are);
    a background or a style: any scene, of one or two figures."""
    cat = world.CATEGORY_OF[concept]
    if cat not in ("character", "clothing", "background", "style"):
        raise ValueError(f"the two-figure world has no LoRA for {concept!r} ({cat})")
    return random_scene(rng, two=False if cat in ("character", "clothing") else None, **{cat: concept})


def random_labelled(rng: np.random.Generator) -> DuoScene:
    """A scene for the scorers: one or two figures, each a random character, a generic figure, or (one
    in five) a blend of two characters; clothing on some; a background and a style sometimes."""
    scene = random_scene(rng, two=bool(rng.random() < 0.75))
    for f in scene.figures:
        r = rng.random()
        if r < 0.75:
            f.character, f.generic = CHARACTERS[int(rng.integers(3))], None
            if r < 0.2:
                other = [c for c in CHARACTERS if c != f.character][int(rng.integers(2))]
                f.blend = (other, str(rng.choice(["head", "body", "mix"])))
        if rng.random() < 0.35:
            f.clothing = CLOTHING[int(rng.integers(2))]
    if rng.random() < 0.5:
        scene.background = world.CONCEPTS["background"][int(rng.integers(2))]
    if rng.random() < 0.4:
        scene.style = world.CONCEPTS["style"][int(rng.integers(2))]
    return scene


def slot_labels(scene: DuoScene) -> np.ndarray:
    """[2, len(FIGURE_CONCEPTS)]: per slot (left, right) the identities and clothing it shows. A
    single centred figure is in neither slot (a two-figure composition drawn as one figure fails)."""
    y = np.zeros((2, len(FIGURE_CONCEPTS)), np.float32)
    if scene.two:
        for k, f in enumerate(scene.figures):
            for c in f.identities() | ({f.clothing} if f.clothing else set()):
                y[k, FIGURE_CONCEPTS.index(c)] = 1.0
    return y


def global_labels(scene: DuoScene) -> np.ndarray:
    y = np.zeros(len(GLOBAL_CONCEPTS), np.float32)
    for c in (scene.style, scene.background):
        if c:
            y[GLOBAL_CONCEPTS.index(c)] = 1.0
    return y


# --- compositions and their split -------------------------------------------------------------------
def compositions() -> list[tuple[str, ...]]:
    """Two characters, with or without clothing, a background and a style: 81, N = 2..5."""
    out = []
    options = [(None, *world.CONCEPTS[cat]) for cat in ("clothing", "background", "style")]
    for pair in itertools.combinations(CHARACTERS, 2):
        for extra in itertools.product(*options):
            out.append(pair + tuple(c for c in extra if c))
    return sorted(out, key=lambda c: (len(c), c))


def composition_prompt(concepts: tuple[str, ...]) -> str:
    order = sorted(concepts, key=lambda c: world.CATEGORIES.index(world.CATEGORY_OF[c]))
    return ", ".join([*order, TWO_FIGURES])


SALT = "composbench-duo-split-v1"
#: sha256 of the dev compositions, one "a,b,c" line each in compositions() order
SPLIT_SHA256 = "b9fa90914d01f16bdc16280a64e460bdbb9dbae292b493e70ffa53c9c99efcf0"


def _dev_set() -> set[tuple[str, ...]]:
    """A third of every (N, character pair) stratum, by a salted SHA-256 order; where a third is not
    whole, the extra composition goes to the pairs in turn."""
    dev: set[tuple[str, ...]] = set()
    turn = 0
    for n in range(2, 6):
        strata = [sorted((c for c in compositions() if len(c) == n and c[:2] == pair),
                         key=lambda c: hashlib.sha256(f"{SALT}:{','.join(c)}".encode()).hexdigest())
                  for pair in itertools.combinations(CHARACTERS, 2)]
        quota = sum(len(s) for s in strata) // 3
        base, extra = divmod(quota, len(strata))
        for k, s in enumerate(strata):
            take = base + (1 if (k - turn) % len(strata) < extra else 0)
            dev.update(s[:take])
        turn += extra
    return dev


def split(part: str) -> list[tuple[str, ...]]:
    """The compositions of ``part`` ("dev", "test" or "all"), in compositions() order."""
    return protocol.part_of(part, compositions(), _dev_set)


def fingerprint(part: str = "dev") -> str:
    return protocol.digest(split(part))


# --- ground-truth regions (the oracle masks) --------------------------------------------------------------
def slot_region(k: int, clothing: bool = True) -> np.ndarray:
    """[32, 32] bool: every pixel slot k's figure (any character or generic figure, any jitter, with
    clothing if asked) can paint."""
    m = np.zeros((world.SIZE, world.SIZE), bool)
    rng = np.random.default_rng(0)
    for jx, jy in itertools.product((-1, 0, 1), repeat=2):
        dx = SLOT_DX[k] + jx
        for ch in (*CHARACTERS, None):
            generics = [None] if ch else [(s, "red", "red") for s in ("round", "square")]
            for g in generics:
                m |= ~np.isnan(_figure_layer(ch, g, dx, jy, rng)[..., 0])
        if clothing:
            for cl in CLOTHING:
                layer = np.full((world.SIZE, world.SIZE, 3), np.nan, np.float32)
                world._clothing(layer, world.Scene(concepts={"clothing": cl}, dx=dx, dy=jy), rng)
                m |= ~np.isnan(layer[..., 0])
    return m


def region_masks(comp: tuple[str, ...]) -> np.ndarray:
    """[N, 32, 32] float: where a user with perfect hand-drawn masks would let each LoRA act, the first
    character on the left figure and the second on the right (either way counts as success), the
    clothing on the first character, the background where neither figure can be, the style everywhere."""
    figures = [slot_region(0), slot_region(1)]
    out = []
    for c in comp:
        cat = world.CATEGORY_OF[c]
        if cat == "character":
            out.append(figures[comp.index(c)])
        elif cat == "clothing":
            out.append(figures[0])
        elif cat == "background":
            out.append(~(figures[0] | figures[1]))
        else:
            out.append(np.ones((world.SIZE, world.SIZE), bool))
    return np.stack(out).astype(np.float32)
