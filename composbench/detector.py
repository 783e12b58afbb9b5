"""A second, hand-written concept scorer that knows the world's drawing code and learns nothing.

The CNN classifier in scoring.py was trained on renders; its blind spots could decide a ranking.
This detector is independent of it: for every concept it checks what world.py draws, where it
draws it, and nothing else.

* Characters, clothing, objects and the brick wall: **colour-layout templates**. The template of a
  concept is what world.py paints for it alone (its own drawing function on an empty canvas) at
  each of the 9 jitters (dx, dy in -1..1), split into parts by colour (zorbot: grey head and arms,
  yellow eyes and chest light, dark mouth, blue-grey body; kittra: orange, green eyes, white belly;
  glimmy: white, black eyes and mouth; tophat: black, red band; ...). Pixels that world.render
  can paint over it are dropped (hat and scarf over a character; characters, figures and clothing
  over an object); the brick wall (two parts, mortar and brick) is only checked where no
  foreground can ever be (`background_region`, 356 pixels). A part scores the fraction of its
  pixels within `TOL` (RGB distance) of its colour and nearer to it than to the concept's other
  colours. One more part, the **ring**: the pixels just around the concept that nothing else can
  paint must NOT look like the concept pixel next to them (half of them suffice), so a plain
  background of the concept's colour or a generic figure of similar colours is not the concept.
  The concept's score is its worst part's, maximised over the jitters and three style hypotheses:
  none, scanlines (even rows only) and pixelart (2x2 blocks the concept fills entirely, at their
  4-level colour, compared with the image's block means; ring blocks unlike every part).
* starnight: the fraction of the background region that is dark navy (blue channel 0.08 above
  red and green, both under 0.2; on even rows only if that is more, for scanlines), and at least
  one bright star pixel there.
* scanlines: every odd row darker than its even neighbours (median log ratio of a row's luminance
  to its neighbours', 0.35 = -1.05 in the world).
* pixelart: 2x2 blocks uniform ((differences across the edges of the world's 2x2 blocks minus
  those inside them) / (across + 0.005), 0 for a flat image), times the fraction of colour values
  on the 4-level palette.

Thresholds (`THRESHOLDS`) were set on ground-truth renders only (`fit_thresholds`: world.render of
random scenes with and without each concept, clean and mildly `degrade`d), measured on other
renders (`render_check`), and then checked, not tuned, on generated images
(`python -m composbench.run --detector-check`). Deliberately blind to what the world cannot make:
a concept drawn elsewhere than its region, at another size, or blurred is not found.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import torch

from . import world

TOL = 0.25  # RGB (Euclidean) distance for a pixel to match a part's colour
RING_FRACTION = 0.5  # the ring passes when this fraction of it is unlike the concept
MIN_PART = 3  # parts with fewer pixels are ignored (pixelart hypothesis: 1 block of 2x2)
JITTERS = tuple((dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1))
HYPOTHESES = ("none", "scanlines", "pixelart")
TEMPLATE_CONCEPTS = tuple(world.CONCEPTS["character"] + world.CONCEPTS["clothing"] + world.CONCEPTS["object"]
                          + ("brickwall",))

# score >= threshold -> detected. Set on renders only, by fit_thresholds() (3000 random labelled
# renders, seed 1, clean + degraded); never changed after looking at generated images.
THRESHOLDS: dict[str, float] = {
    "zorbot": 0.5, "kittra": 0.5, "glimmy": 0.6, "tophat": 0.5, "stripescarf": 0.55, "pixelart": 0.3,
    "scanlines": 0.5, "brickwall": 0.35, "starnight": 0.4, "sunorb": 0.5, "pinetree": 0.5,
}


# --- templates ---------------------------------------------------------------------------------
def _layer(draw, concepts: dict, dx: int = 0, dy: int = 0, figure=None, thing=None) -> np.ndarray:
    """What ``draw`` (a world._* function) paints for ``concepts`` alone: HxWx3, NaN elsewhere."""
    img = np.full((world.SIZE, world.SIZE, 3), np.nan, np.float32)
    draw(img, world.Scene(concepts=concepts, figure=figure, thing=thing, dx=dx, dy=dy),
         np.random.default_rng(0))
    return img


def _painted(layer: np.ndarray) -> np.ndarray:
    return ~np.isnan(layer[..., 0])


@functools.lru_cache(maxsize=None)
def _layers(cat: str, dx: int, dy: int) -> np.ndarray:
    """Pixels the concepts of a category (plus, for "figure" and "thing", the generic ones) paint."""
    m = np.zeros((world.SIZE, world.SIZE), bool)
    if cat == "figure":
        for shape in ("round", "square"):
            m |= _painted(_layer(world._character, {}, dx, dy, figure=(shape, "red", "red")))
    elif cat == "thing":
        for kind in ("ball", "box"):
            for corner in world.CORNERS:
                m |= _painted(_layer(world._object, {}, thing=(kind, "red", corner)))
    else:
        draw = {"character": world._character, "clothing": world._clothing, "object": world._object}[cat]
        for c in world.CONCEPTS[cat]:
            m |= _painted(_layer(draw, {cat: c}, dx, dy))
    return m


@functools.lru_cache(maxsize=None)
def background_region() -> np.ndarray:
    """Pixels no character, clothing, object or generic figure/thing can cover (356 of 1024)."""
    m = np.zeros((world.SIZE, world.SIZE), bool)
    for dx, dy in JITTERS:
        for cat in ("character", "clothing", "object", "figure", "thing"):
            m |= _layers(cat, dx, dy)
    return ~m


_DRAW = {"character": world._character, "clothing": world._clothing, "object": world._object}
# what world.render draws on top of a category, and what else can be next to it
_ON_TOP = {"character": ("clothing",), "clothing": (), "object": ("character", "figure", "clothing")}
_NEXT_TO = {"character": ("clothing", "object", "thing"), "clothing": ("character", "figure", "object", "thing"),
            "object": ("character", "figure", "clothing", "thing")}


def _grow(m: np.ndarray) -> np.ndarray:
    """8-neighbour dilation by one pixel."""
    g = m.copy()
    g[1:] |= m[:-1]
    g[:-1] |= m[1:]
    h = g.copy()
    h[:, 1:] |= g[:, :-1]
    h[:, :-1] |= g[:, 1:]
    return h


def _template(concept: str, dx: int, dy: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The concept's visible pixels (colours, NaN elsewhere) at a jitter, every pixel it paints, and
    the pixels next to it that something else can paint. Its ring, the pixels around it that
    nothing else can paint, must not look like the concept."""
    cat = world.CATEGORY_OF[concept]
    if concept == "brickwall":
        # brick shades vary per brick: two parts, mortar and the mean brick colour
        renders = np.stack([world.render(world.Scene(concepts={cat: concept}, figure=None, seed=s))
                            for s in range(15)])
        mortar = np.array((0.72, 0.72, 0.7), np.float32)  # world._background's mortar
        is_mortar = np.abs(renders[0] - mortar).max(-1) < 1e-3
        t = np.empty_like(renders[0])
        t[is_mortar] = mortar
        t[~is_mortar] = renders[:, ~is_mortar].mean((0, 1))
        t[~background_region()] = np.nan
        return t, np.ones(t.shape[:2], bool), np.ones(t.shape[:2], bool)  # no ring
    t = _layer(_DRAW[cat], {cat: concept}, dx, dy)
    own = _painted(t)
    for other in _ON_TOP[cat]:
        t[_layers(other, dx, dy)] = np.nan
    near = np.zeros_like(own)
    for other in _NEXT_TO[cat]:
        near |= _layers(other, dx, dy)
    return t, own, near


def _parts(t: np.ndarray, min_part: int = MIN_PART) -> list[tuple[np.ndarray, np.ndarray]]:
    """(flat pixel indices, colour) per colour of a template; colours closer than 0.12 are one part
    (pinetree's two greens)."""
    flat = t.reshape(-1, 3)
    idx = np.flatnonzero(~np.isnan(flat[:, 0]))
    groups: list[list[int]] = []
    centres: list[np.ndarray] = []
    for i in idx:
        for g, c in zip(groups, centres, strict=True):
            if np.linalg.norm(flat[i] - c) < 0.12:
                g.append(i)
                break
        else:
            groups.append([i])
            centres.append(flat[i])
    return [(np.array(g), flat[g].mean(0)) for g in groups if len(g) >= min_part]


def _blocks(a: np.ndarray) -> np.ndarray:
    """2x2 block means (NaN where a block has a NaN)."""
    return a.reshape(world.SIZE // 2, 2, world.SIZE // 2, 2, *a.shape[2:]).mean(axis=(1, 3))


@functools.lru_cache(maxsize=None)
def _hypotheses(concept: str) -> list[tuple[str, list, np.ndarray]]:
    """Per (jitter, style hypothesis): the colour parts and the ring (flat indices) to check, on the
    full image (none; scanlines: even rows only) or on the 16x16 image of 2x2 block means (pixelart:
    blocks the concept fills entirely, at their 4-level colour; ring blocks: none of its pixels)."""
    out = []
    jitters = ((0, 0),) if concept == "brickwall" else JITTERS
    for dx, dy in jitters:
        t, own, near = _template(concept, dx, dy)
        full = _layer(_DRAW[world.CATEGORY_OF[concept]], {world.CATEGORY_OF[concept]: concept}, dx, dy) \
            if concept != "brickwall" else t
        ring = _grow(own) & ~own & ~near
        # a ring pixel must not look like the concept pixel next to it (first in the 8-neighbourhood)
        avoid = np.full(full.shape, np.nan, np.float32)
        for sy, sx in ((0, 1), (0, -1), (1, 0), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1)):
            shifted = np.roll(full, (sy, sx), axis=(0, 1))
            fill = np.isnan(avoid[..., 0]) & ~np.isnan(shifted[..., 0])
            avoid[fill] = shifted[fill]
        ring_col = avoid.reshape(-1, 3)
        r_all = np.flatnonzero(ring)
        out.append(("none", _parts(t), (r_all, ring_col[r_all])))
        even = t.copy()
        even[1::2] = np.nan
        r_even = np.flatnonzero(ring & (np.arange(world.SIZE) % 2 == 0)[:, None])
        out.append(("scanlines", _parts(even), (r_even, ring_col[r_even])))
        own_b, near_b = _blocks(own.astype(np.float32)) > 0, _blocks(near.astype(np.float32)) > 0
        ring_b = np.flatnonzero(_grow(own_b) & ~own_b & ~near_b)
        parts_b = _parts(np.round(_blocks(t) * 3) / 3, min_part=1)
        out.append(("pixelart", parts_b, (ring_b, None)))  # ring blocks: unlike every part
    return out


# --- scores --------------------------------------------------------------------------------------
def _as_numpy(images) -> np.ndarray:
    """[B, 32, 32, 3] float in [0, 1] from a [B, 3, H, W] tensor in [-1, 1] or an HxWx3 / BxHxWx3 array."""
    if isinstance(images, torch.Tensor):
        return ((images.detach().float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
    a = np.asarray(images, np.float32)
    return a[None] if a.ndim == 3 else a


def _template_score(imgs: np.ndarray, concept: str) -> np.ndarray:
    """Max over jitters and style hypotheses of the worst part's match fraction (ring included)."""
    b = imgs.shape[0]
    full = imgs.reshape(b, -1, 3)
    blocks = _blocks(imgs.transpose(1, 2, 0, 3)).transpose(2, 0, 1, 3).reshape(b, -1, 3)
    best = np.zeros(b)
    for hyp, parts, (ring, ring_col) in _hypotheses(concept):
        use_ring = len(ring) >= (1 if hyp == "pixelart" else MIN_PART)
        if len(parts) + use_ring < 2:  # one colour alone proves nothing (a plain background of it)
            continue
        src = blocks if hyp == "pixelart" else full
        cols = np.stack([col for _, col in parts])  # [P, 3]
        fr = []
        for k, (idx, _) in enumerate(parts):
            d = np.linalg.norm(src[:, idx, None, :] - cols, axis=-1)  # [B, n, P]
            fr.append(((d[..., k] < TOL) & (d.argmin(-1) == k)).mean(1))
        if use_ring:
            if ring_col is None:
                unlike = np.linalg.norm(src[:, ring, None, :] - cols, axis=-1).min(-1) >= TOL
            else:
                unlike = np.linalg.norm(src[:, ring] - ring_col, axis=-1) >= TOL
            fr.append(np.minimum(1.0, unlike.mean(1) / RING_FRACTION))
        best = np.maximum(best, np.min(fr, axis=0))
    return best


def _luminance(imgs: np.ndarray) -> np.ndarray:
    return imgs.mean(-1)


def scanline_score(imgs: np.ndarray) -> np.ndarray:
    """Minus the median log ratio of odd rows' luminance to the mean of their even neighbours
    (the world's scanlines: -log 0.35 = 1.05; plain images about 0)."""
    lum = np.log(_luminance(imgs) + 0.03)
    odd = lum[:, 1:-1:2]
    nb = 0.5 * (lum[:, 0:-2:2] + lum[:, 2::2])
    return -np.median((odd - nb).reshape(len(imgs), -1), axis=1)


def pixelart_score(imgs: np.ndarray) -> np.ndarray:
    """1 - (differences inside the world's 2x2 blocks) / (differences across block edges): about 1
    for pixelart, about 0 for other images; times the fraction of colour values on the 4-level palette."""
    dh = np.abs(np.diff(imgs, axis=2)).mean(-1)  # [B, 32, 31]
    dv = np.abs(np.diff(imgs, axis=1)).mean(-1)  # [B, 31, 32]
    inside = dh[:, :, 0::2].mean((1, 2)) + dv[:, 0::2, :].mean((1, 2))
    across = dh[:, :, 1::2].mean((1, 2)) + dv[:, 1::2, :].mean((1, 2))
    uniform = (across - inside) / (across + 0.005)  # a flat image has neither: 0
    palette = (np.abs(imgs * 3 - np.round(imgs * 3)) < 0.25).mean((1, 2, 3))  # within 1/12 of a level
    return np.clip(uniform, 0, 1) * palette


def starnight_score(imgs: np.ndarray) -> np.ndarray:
    """Fraction of the background region that is dark navy (even rows only if that is more: under
    scanlines the odd rows are too dark to judge), zero without at least one bright star pixel."""
    reg = background_region()
    px = imgs[:, reg]  # [B, P, 3]
    rg = np.maximum(px[..., 0], px[..., 1])
    navy = (rg < 0.2) & (px[..., 2] - rg > 0.08) & (px[..., 2] < 0.5)
    even = np.zeros_like(reg)
    even[0::2] = True
    on_even = even[reg]
    frac = np.maximum(navy.mean(1), navy[:, on_even].mean(1))
    star = (px.min(-1) > 0.3).sum(1) >= 1
    return frac * star


def scores(images) -> np.ndarray:
    """[B, 11] detector scores (columns in world.ALL_CONCEPTS order); detected = score >= THRESHOLDS."""
    imgs = _as_numpy(images)
    out = np.zeros((imgs.shape[0], len(world.ALL_CONCEPTS)))
    for j, c in enumerate(world.ALL_CONCEPTS):
        if c in TEMPLATE_CONCEPTS:
            out[:, j] = _template_score(imgs, c)
        elif c == "starnight":
            out[:, j] = starnight_score(imgs)
        elif c == "scanlines":
            out[:, j] = scanline_score(imgs)
        elif c == "pixelart":
            out[:, j] = pixelart_score(imgs)
    return out


def detect(images) -> np.ndarray:
    """[B, 11] booleans: which concepts the detector finds."""
    thr = np.array([THRESHOLDS[c] for c in world.ALL_CONCEPTS])
    return scores(images) >= thr


def recall(images, concepts: Sequence[str]) -> np.ndarray:
    """Per image, the fraction of ``concepts`` the detector finds."""
    det = detect(images)
    cols = [world.ALL_CONCEPTS.index(c) for c in concepts]
    return det[:, cols].mean(1)


# --- thresholds from renders, and the check on renders ----------------------------------------------
def degrade(imgs: np.ndarray, seed: int) -> np.ndarray:
    """Mild, generation-like imperfections for the threshold renders: per-channel gain (+-8 %) and
    offset (+-0.03), Gaussian noise (sigma 0.04). No blur or shift: the detector assumes the
    world's layout and its 2x2 / row structure (a blurred scanline image is not scanlines)."""
    r = np.random.default_rng(seed)
    b = len(imgs)
    x = imgs * (1 + 0.16 * (r.random((b, 1, 1, 3)) - 0.5)) + 0.06 * (r.random((b, 1, 1, 3)) - 0.5)
    return np.clip(x + r.normal(0, 0.04, x.shape), 0, 1).astype(np.float32)


def labelled_renders(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n renders of world.random_labelled scenes (any subset of concepts, random generic content),
    [n, 32, 32, 3], and their labels [n, 11] (bool)."""
    rng = np.random.default_rng(seed)
    scenes = [world.random_labelled(rng) for _ in range(n)]
    return (np.stack([world.render(s) for s in scenes]),
            np.stack([world.labels_of(s) for s in scenes]).astype(bool))


def fit_thresholds(n: int = 3000, seed: int = 1) -> dict[str, float]:
    """How THRESHOLDS were set: per concept, halfway between the 5th percentile of the scores of
    renders with the concept and the 95th percentile of those without (clean and degraded renders
    pooled), rounded to 0.05. Halfway, not where the renders separate best: generated images are
    rougher than renders on both sides."""
    imgs, labs = labelled_renders(n, seed)
    s = np.concatenate([scores(imgs), scores(degrade(imgs, seed + 1))])
    y = np.concatenate([labs, labs])
    out = {}
    for j, c in enumerate(world.ALL_CONCEPTS):
        mid = 0.5 * (np.percentile(s[y[:, j], j], 5) + np.percentile(s[~y[:, j], j], 95))
        out[c] = float(np.round(mid * 20) / 20)
    return out


def render_check(n: int = 1000, seed: int = 7) -> dict:
    """Accuracy, recall on positives and false-positive rate per concept on held-out renders
    (clean and degraded; a different seed from fit_thresholds')."""
    imgs, labs = labelled_renders(n, seed)
    res = {}
    for name, x in (("clean", imgs), ("degraded", degrade(imgs, seed + 1))):
        det = detect(x)
        res[name] = {c: {"accuracy": float((det[:, j] == labs[:, j]).mean()),
                         "recall": float(det[labs[:, j], j].mean()),
                         "false_positive": float(det[~labs[:, j], j].mean()),
                         "positives": int(labs[:, j].sum())}
                     for j, c in enumerate(world.ALL_CONCEPTS)}
        res[name]["mean_accuracy"] = float((det == labs).mean())
    return res
