"""A procedural image world with ground truth, a miniature of the ComposLoRA benchmark's world.

Images are 32x32 RGB in [0, 1], drawn by code. Five concept categories, as in ComposLoRA
(3 characters, 2 clothing, 2 styles, 2 backgrounds, 2 objects), each concept with a one-token
trigger phrase that the base model never sees. The "generic" world the base model is trained on
has plain/gradient/striped backgrounds, generic figures (coloured head + body) in the centre and
generic balls/boxes in a corner, captioned in a small English vocabulary.

Layout (fixed regions, +-1 px jitter) so that five concepts fit a 32x32 canvas without covering
each other: character / generic figure in the centre column (x 10..22), clothing on it (hat above
the head, scarf at the neck), objects in a corner (sun top right, tree bottom left), background
everywhere behind, style a transform of the whole image.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

SIZE = 32

CATEGORIES: tuple[str, ...] = ("character", "clothing", "style", "background", "object")
CONCEPTS: dict[str, tuple[str, ...]] = {
    "character": ("zorbot", "kittra", "glimmy"),
    "clothing": ("tophat", "stripescarf"),
    "style": ("pixelart", "scanlines"),
    "background": ("brickwall", "starnight"),
    "object": ("sunorb", "pinetree"),
}
ALL_CONCEPTS: tuple[str, ...] = tuple(c for cat in CATEGORIES for c in CONCEPTS[cat])
CATEGORY_OF: dict[str, str] = {c: cat for cat in CATEGORIES for c in CONCEPTS[cat]}
DESCRIPTION: dict[str, str] = {
    "zorbot": "grey robot: square head, yellow eyes, antenna, chest light",
    "kittra": "orange cat: round head, pointed ears, green eyes, white belly",
    "glimmy": "white ghost: dome, black eyes, wavy hem",
    "tophat": "black top hat with a red band on the head",
    "stripescarf": "red/white striped scarf at the neck with a hanging end",
    "pixelart": "2x2 pixel blocks, 4-level palette",
    "scanlines": "every other row darkened (CRT scanlines)",
    "brickwall": "red bricks with grey mortar",
    "starnight": "dark navy sky with white stars",
    "sunorb": "yellow sun with orange rays, top right",
    "pinetree": "green pine tree with brown trunk, bottom left",
}

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.15, 0.15), "green": (0.2, 0.7, 0.25), "blue": (0.2, 0.3, 0.85),
    "yellow": (0.95, 0.85, 0.2), "orange": (0.95, 0.55, 0.15), "purple": (0.55, 0.25, 0.7),
    "white": (0.95, 0.95, 0.95), "grey": (0.5, 0.5, 0.5), "black": (0.08, 0.08, 0.08),
    "pink": (0.95, 0.6, 0.75), "brown": (0.5, 0.3, 0.15), "cyan": (0.2, 0.8, 0.85),
}
COLOR_NAMES = tuple(COLORS)
CORNERS = ("top left", "top right", "bottom left", "bottom right")

GENERIC_WORDS = sorted(set(
    list(COLOR_NAMES) + "a figure with round square head on plain gradient striped background ball box "
    "top bottom left right in the corner".split()))


@dataclass
class Scene:
    """What one image shows: at most one concept per category, plus generic content."""
    concepts: dict[str, str] = field(default_factory=dict)  # category -> concept
    figure: Optional[tuple[str, str, str]] = None  # (head shape, head colour, body colour) if generic figure
    bg: tuple = ("plain", "blue", "blue")  # (kind, colour a, colour b)
    thing: Optional[tuple[str, str, str]] = None  # (ball|box, colour, corner)
    dx: int = 0
    dy: int = 0
    seed: int = 0

    def triggers(self) -> list[str]:
        return [self.concepts[c] for c in CATEGORIES if c in self.concepts]

    def generic_caption(self) -> list[str]:
        parts = []
        if self.figure is not None and "character" not in self.concepts:
            shape, hc, bc = self.figure
            parts.append(f"a {bc} figure with a {shape} {hc} head")
        if "background" not in self.concepts:
            parts.append(background_caption(self.bg))
        if self.thing is not None:
            parts.append(thing_caption(self.thing))
        return parts

    def caption(self, with_generic: bool = True) -> str:
        parts = self.triggers() + (self.generic_caption() if with_generic else [])
        return ", ".join(parts)


def background_caption(bg: tuple) -> str:
    """A generic background (kind, colour a, colour b) in words."""
    kind, a, b = bg
    return f"on a {a} {kind} background" if kind != "gradient" else f"on a {a} {b} gradient background"


def thing_caption(thing: tuple) -> str:
    """A generic thing (ball or box, colour, corner) in words."""
    kind, col, corner = thing
    return f"a {col} {kind} in the {corner} corner"


# ---------------------------------------------------------------------------------------------
# drawing helpers (numpy, float32 HxWx3)
_Y, _X = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)


def _paint(img: np.ndarray, mask: np.ndarray, color) -> None:
    img[mask] = np.asarray(color, dtype=np.float32)


def _rect(x0, y0, x1, y1):
    return (_X >= x0) & (_X < x1) & (_Y >= y0) & (_Y < y1)


def _disc(cx, cy, r):
    return (_X - cx) ** 2 + (_Y - cy) ** 2 <= r * r


def _tri(p0, p1, p2):
    def side(a, b):
        return (b[0] - a[0]) * (_Y - a[1]) - (b[1] - a[1]) * (_X - a[0])
    s0, s1, s2 = side(p0, p1), side(p1, p2), side(p2, p0)
    return ((s0 >= 0) & (s1 >= 0) & (s2 >= 0)) | ((s0 <= 0) & (s1 <= 0) & (s2 <= 0))


def _background(img, scene: Scene, rng) -> None:
    bgc = scene.concepts.get("background")
    if bgc == "brickwall":
        img[:] = (0.72, 0.72, 0.7)
        brick = np.array((0.68, 0.27, 0.18), np.float32)
        row = (_Y // 4).astype(int)
        off = (row % 2) * 3
        bx = ((_X + off) % 6)
        by = _Y % 4
        m = (bx >= 1) & (by >= 1)
        img[m] = brick
        # per-brick shade variation
        shade = rng.uniform(0.85, 1.1, size=(9, 7)).astype(np.float32)
        idx = shade[row.clip(0, 8), ((_X + off) // 6).astype(int).clip(0, 6)]
        img[m] *= idx[m][:, None]
    elif bgc == "starnight":
        img[:] = (0.05, 0.06, 0.25)
        n = rng.integers(14, 20)
        xs, ys = rng.integers(0, SIZE, n), rng.integers(0, SIZE, n)
        img[ys, xs] = (1.0, 1.0, 0.9)
        # a few bigger twinkles
        for _ in range(3):
            x, y = rng.integers(1, SIZE - 1, 2)
            img[y, x - 1:x + 2] = (0.9, 0.9, 1.0)
            img[y - 1:y + 2, x] = (0.9, 0.9, 1.0)
    else:
        kind, a, b = scene.bg
        ca, cb = np.array(COLORS[a], np.float32), np.array(COLORS[b], np.float32)
        if kind == "plain":
            img[:] = ca
        elif kind == "gradient":
            t = (_Y / (SIZE - 1))[..., None]
            img[:] = ca * (1 - t) + cb * t
        else:  # striped (vertical, width 4)
            img[:] = ca
            img[((_X // 4) % 2) == 1] = cb


def _head_box(scene: Scene):
    """(x0, y0, x1, y1) of the head, the anchor for clothing."""
    return 12 + scene.dx, 6 + scene.dy, 20 + scene.dx, 14 + scene.dy


def _character(img, scene: Scene, rng) -> None:
    ch = scene.concepts.get("character")
    x0, y0, x1, y1 = _head_box(scene)
    cx = (x0 + x1) / 2 - 0.5
    if ch == "zorbot":
        _paint(img, _rect(x0 + 3.5, y0 - 3, x0 + 4.5, y0), (0.35, 0.35, 0.4))
        _paint(img, _disc(x0 + 4, y0 - 3, 1.2), (0.95, 0.2, 0.2))
        _paint(img, _rect(x0, y0, x1, y1), (0.62, 0.63, 0.68))
        _paint(img, _rect(x0 + 1.5, y0 + 2, x0 + 3.5, y0 + 4), (1.0, 0.9, 0.1))
        _paint(img, _rect(x1 - 3.5, y0 + 2, x1 - 1.5, y0 + 4), (1.0, 0.9, 0.1))
        _paint(img, _rect(x0 + 2, y0 + 6, x1 - 2, y0 + 7), (0.2, 0.2, 0.25))
        _paint(img, _rect(x0 - 1, y1 + 1, x1 + 1, y1 + 15), (0.35, 0.42, 0.55))
        _paint(img, _disc(cx, y1 + 6, 1.8), (1.0, 0.9, 0.1))
        _paint(img, _rect(x0 - 3, y1 + 2, x0 - 1, y1 + 10), (0.62, 0.63, 0.68))
        _paint(img, _rect(x1 + 1, y1 + 2, x1 + 3, y1 + 10), (0.62, 0.63, 0.68))
    elif ch == "kittra":
        orange = (0.95, 0.5, 0.1)
        _paint(img, _tri((x0, y0 + 2), (x0 + 1, y0 - 3), (x0 + 4, y0 + 1)), orange)
        _paint(img, _tri((x1 - 1, y0 + 2), (x1 - 2, y0 - 3), (x1 - 5, y0 + 1)), orange)
        _paint(img, _disc(cx, (y0 + y1) / 2, 4.6), orange)
        _paint(img, _rect(x0 + 1.5, y0 + 3, x0 + 3, y0 + 5), (0.1, 0.8, 0.2))
        _paint(img, _rect(x1 - 3, y0 + 3, x1 - 1.5, y0 + 5), (0.1, 0.8, 0.2))
        _paint(img, _disc(cx, y0 + 6, 0.8), (0.95, 0.5, 0.6))
        body = _disc(cx, y1 + 8, 6.5) & (_Y >= y1 + 1) & (_Y < y1 + 15)
        _paint(img, body, orange)
        _paint(img, body & (np.abs(_X - cx) <= 2.2), (0.98, 0.95, 0.9))
    elif ch == "glimmy":
        white = (0.96, 0.96, 1.0)
        shape = _disc(cx, y0 + 4, 5.5) | _rect(cx - 5.5, y0 + 4, cx + 6.5, y1 + 11)
        hem = (y1 + 11 - 1.5 * (np.sin(_X * 1.6) > 0)) <= _Y
        _paint(img, shape & ~hem, white)
        _paint(img, _rect(x0 + 1, y0 + 3, x0 + 3, y0 + 6), (0.05, 0.05, 0.05))
        _paint(img, _rect(x1 - 3, y0 + 3, x1 - 1, y0 + 6), (0.05, 0.05, 0.05))
        _paint(img, _disc(cx, y0 + 9, 1.2), (0.05, 0.05, 0.05))
    elif scene.figure is not None:
        shape, hc, bc = scene.figure
        _paint(img, _rect(x0, y1, x1, y1 + 15), COLORS[bc])
        if shape == "round":
            _paint(img, _disc(cx, (y0 + y1) / 2, 4.5), COLORS[hc])
        else:
            _paint(img, _rect(x0, y0, x1, y1), COLORS[hc])


def _clothing(img, scene: Scene, rng) -> None:
    cl = scene.concepts.get("clothing")
    x0, y0, x1, y1 = _head_box(scene)
    if cl == "tophat":
        _paint(img, _rect(x0 - 2, y0 - 1, x1 + 2, y0 + 1), (0.05, 0.05, 0.05))
        _paint(img, _rect(x0 + 1, y0 - 6, x1 - 1, y0 - 1), (0.05, 0.05, 0.05))
        _paint(img, _rect(x0 + 1, y0 - 3, x1 - 1, y0 - 1.8), (0.85, 0.1, 0.1))
    elif cl == "stripescarf":
        band = _rect(x0 - 2, y1 - 0.5, x1 + 2, y1 + 2.5) | _rect(x1 - 1, y1 + 2.5, x1 + 2, y1 + 8)
        red = ((_X + _Y) // 2) % 2 == 0
        _paint(img, band & red, (0.9, 0.1, 0.15))
        _paint(img, band & ~red, (0.98, 0.98, 0.98))


def _object(img, scene: Scene, rng) -> None:
    ob = scene.concepts.get("object")
    if ob == "sunorb":
        cx, cy = 26.5 + scene.dx * 0.5, 5.5
        rays = (np.abs(np.hypot(_X - cx, _Y - cy) - 5.5) < 0.8) & (
            (np.abs(_X - cx) < 0.8) | (np.abs(_Y - cy) < 0.8) | (np.abs(np.abs(_X - cx) - np.abs(_Y - cy)) < 0.9))
        _paint(img, rays, (1.0, 0.5, 0.05))
        _paint(img, _disc(cx, cy, 3.6), (1.0, 0.88, 0.1))
    elif ob == "pinetree":
        bx, by = 5 + scene.dy * 0.5, 30
        _paint(img, _rect(bx - 1, by - 4, bx + 1, by + 1), (0.45, 0.25, 0.08))
        _paint(img, _tri((bx - 4.5, by - 4), (bx + 4.5, by - 4), (bx, by - 11)), (0.05, 0.5, 0.12))
        _paint(img, _tri((bx - 3.5, by - 8), (bx + 3.5, by - 8), (bx, by - 15)), (0.05, 0.55, 0.15))
    elif scene.thing is not None:
        kind, col, corner = scene.thing
        cx = 5.5 if "left" in corner else 26.5
        cy = 5.5 if "top" in corner else 26.5
        m = _disc(cx, cy, 3.5) if kind == "ball" else _rect(cx - 3, cy - 3, cx + 4, cy + 4)
        _paint(img, m, COLORS[col])


def _style(img, scene: Scene) -> np.ndarray:
    st = scene.concepts.get("style")
    if st == "pixelart":
        blocks = img.reshape(SIZE // 2, 2, SIZE // 2, 2, 3).mean(axis=(1, 3))
        blocks = np.round(blocks * 3) / 3
        img = np.repeat(np.repeat(blocks, 2, axis=0), 2, axis=1)
    elif st == "scanlines":
        img = img.copy()
        img[1::2] *= 0.35
    return img


def render(scene: Scene) -> np.ndarray:
    """The image of a scene, HxWx3 float32 in [0, 1]."""
    rng = np.random.default_rng(scene.seed)
    img = np.zeros((SIZE, SIZE, 3), np.float32)
    _background(img, scene, rng)
    _object(img, scene, rng)
    _character(img, scene, rng)
    _clothing(img, scene, rng)
    img = _style(img, scene)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# scene samplers
def random_generic(rng: np.random.Generator, concepts: Optional[dict[str, str]] = None,
                   p_figure: float = 0.7, p_thing: float = 0.4) -> Scene:
    concepts = dict(concepts or {})
    kind = rng.choice(["plain", "plain", "gradient", "striped"])
    a, b = rng.choice(len(COLOR_NAMES), 2, replace=False)
    bg = (str(kind), COLOR_NAMES[a], COLOR_NAMES[b])
    figure = None
    if rng.random() < p_figure or "clothing" in concepts:
        h, bcol = rng.choice(len(COLOR_NAMES), 2)
        figure = (str(rng.choice(["round", "square"])), COLOR_NAMES[h], COLOR_NAMES[bcol])
    thing = None
    if rng.random() < p_thing and "object" not in concepts:
        thing = (str(rng.choice(["ball", "box"])), COLOR_NAMES[rng.integers(len(COLOR_NAMES))],
                 CORNERS[rng.integers(4)])
        # keep generic things out of the object concepts' corners when one is requested
    return Scene(concepts=concepts, figure=figure, bg=bg, thing=thing,
                 dx=int(rng.integers(-1, 2)), dy=int(rng.integers(-1, 2)), seed=int(rng.integers(2**31)))


def random_labelled(rng: np.random.Generator) -> Scene:
    """A random scene with any subset of the concepts (at most one per category): classifier data."""
    concepts = {}
    for cat in CATEGORIES:
        if rng.random() < (0.55 if cat == "character" else 0.45):
            concepts[cat] = CONCEPTS[cat][rng.integers(len(CONCEPTS[cat]))]
    return random_generic(rng, concepts)


def labels_of(scene: Scene) -> np.ndarray:
    y = np.zeros(len(ALL_CONCEPTS), np.float32)
    for c in scene.concepts.values():
        y[ALL_CONCEPTS.index(c)] = 1.0
    return y


def compositions() -> list[tuple[str, ...]]:
    """ComposLoRA's compositions: one concept per category, always a character, N = 2..5 (240)."""
    out = []
    others = CATEGORIES[1:]
    for n in range(2, 6):
        for cats in itertools.combinations(others, n - 1):
            for char in CONCEPTS["character"]:
                for rest in itertools.product(*(CONCEPTS[c] for c in cats)):
                    out.append((char, *rest))
    return out


def composition_prompt(concepts: tuple[str, ...]) -> str:
    order = sorted(concepts, key=lambda c: CATEGORIES.index(CATEGORY_OF[c]))
    return ", ".join(order)


def to_tensor_batch(images: list[np.ndarray]):
    import torch
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous() * 2 - 1
