"""A second, hand-written concept scorer that knows the world's drawing code and learns nothing.

The CNN classifier in scoring.py was trained on renders; its blind spots could decide a ranking.
This detector is independent of it: for every concept it checks what world.py draws, where it
draws it, and nothing else.

* Characters, clothing, objects and the brick wall: **colour-layout templates**. The template of a
  concept is what world.py paints for it alone (its own drawing function on an empty canvas) at
  each of the 9 jitters (dx, dy in -1..1), its colours (zorbot: grey head and arms, yellow eyes and
  chest light, dark mouth, blue-grey body; kittra: orange, green eyes, white belly; glimmy: white,
  black eyes and mouth; tophat: black, red band; ...) split into 4x4-pixel tiles. Pixels that
  world.render can paint over it are dropped (hat and scarf over a character; characters, figures
  and clothing over an object); the brick wall (mortar and brick) is only checked where no
  foreground can ever be (`background_region`, 356 pixels). Layout score: the correlation between
  template and image colours over the template's pixels, every tile weighted alike, each channel
  centred (so blind to the colour casts and brightness offsets of generated images), times the
  least-squares gain of the image's contrasts on the template's (clipped to 1). **Ring** score: the
  pixels just around the concept that nothing else can paint, grouped by the template colour they
  border, must differ from that colour in the image (medians, RING_CONTRAST for full marks), so a
  plain patch or a generic figure of similar colours is not the concept. Score = min(layout, worst
  ring group), maximised over the jitters and three style hypotheses: none, scanlines (even rows
  only) and pixelart (2x2 blocks the concept fills entirely, at their 4-level colour, against the
  image's block means). A hypothesis with a single colour is not judged (so a pixelart sun, whose
  thin rays vanish into mixed blocks, is judged only by the other hypotheses).
* starnight: the background region dark (median luminance), blue above red and green (medians),
  with a few bright star pixels (but not a pattern of them); on even rows only if that is better
  (scanlines).
* scanlines: every odd row darker than its even neighbours (median log ratio of a row's luminance
  to its neighbours', 0.35 = -1.05 in the world).
* pixelart: 2x2 blocks uniform: (differences across the edges of the world's 2x2 blocks minus
  those inside them) / (across + 0.005); 0 for a flat image.

Thresholds (`THRESHOLDS`) were set on ground-truth renders only (`fit_thresholds`: world.render of
random scenes with and without each concept, clean and `degrade`d with the classifier's own model of
generated images' flaws), measured on other renders (`render_check`), and then checked, not tuned,
on generated images (`python -m composbench.run --detector-check`). Deliberately blind to what the
world cannot make: a concept drawn elsewhere than its region or at another size is not found.

History: a first version matched absolute colours (RGB distance 0.25 per pixel). It was 0.99
accurate on renders but found nothing at all on generated images, whose colours are cast (purple
tints), noisy and low in contrast; this version, correlation-based, was designed after that check
(its thresholds again from renders only).
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import numpy as np
import torch

from . import duo, world

RING_CONTRAST = 0.2  # RGB distance between a ring group's median and its colour's median for full marks
TILE = 4  # template colours are split into TILE x TILE pixel tiles for the correlation
MIN_PART = 3  # parts with fewer pixels are ignored (pixelart hypothesis: 1 block of 2x2)
JITTERS = tuple((dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1))
HYPOTHESES = ("none", "scanlines", "pixelart")
TEMPLATE_CONCEPTS = tuple(world.CONCEPTS["character"] + world.CONCEPTS["clothing"] + world.CONCEPTS["object"]
                          + ("brickwall",))

# score >= threshold -> detected. Set on renders only, by fit_thresholds() (3000 random labelled
# renders, seed 1, clean + degraded); not changed after the check on generated images.
THRESHOLDS: dict[str, float] = {
    "zorbot": 0.3, "kittra": 0.35, "glimmy": 0.25, "tophat": 0.4, "stripescarf": 0.25, "pixelart": 0.15,
    "scanlines": 0.35, "brickwall": 0.2, "starnight": 0.1, "sunorb": 0.3, "pinetree": 0.2,
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
def background_region(two_figures: bool = False) -> np.ndarray:
    """Pixels no character, clothing, object or generic figure/thing can cover (356 of 1024); with
    ``two_figures``, nor the figures of the two-figure world's slots (208 of 1024)."""
    m = np.zeros((world.SIZE, world.SIZE), bool)
    for dx, dy in JITTERS:
        for cat in ("character", "clothing", "object", "figure", "thing"):
            m |= _layers(cat, dx, dy)
    if two_figures:
        m |= duo.slot_region(0) | duo.slot_region(1)
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


def _template(concept: str, dx: int, dy: int, slot: Optional[int] = None,
              two_figures: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The concept's visible pixels (colours, NaN elsewhere) at a jitter, every pixel it paints, and
    the pixels next to it that something else can paint. Its ring, the pixels around it that
    nothing else can paint, must not look like the concept. ``slot``: a figure of the two-figure
    world (``dx`` then includes the slot's offset; the other figure is something else that can paint).
    ``two_figures``: the brick wall is checked where no figure of either world can be."""
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
        t[~background_region(two_figures)] = np.nan
        return t, np.ones(t.shape[:2], bool), np.ones(t.shape[:2], bool)  # no ring
    t = _layer(_DRAW[cat], {cat: concept}, dx, dy)
    own = _painted(t)
    for other in _ON_TOP[cat]:
        t[_layers(other, dx, dy)] = np.nan
    near = np.zeros_like(own)
    for other in _NEXT_TO[cat]:
        near |= _layers(other, dx, dy)
    if slot is not None:
        near |= duo.slot_region(1 - slot)
    return t, own, near


def _parts(t: np.ndarray, min_part: int = MIN_PART) -> list[tuple[np.ndarray, np.ndarray]]:
    """(flat pixel indices, colour) per colour of a template; colours closer than 0.12 are one part
    (pinetree's two greens). Parts under ``min_part`` pixels are left out."""
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


def _ring_owner(labels: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """For every ring cell, the part label of its first labelled 8-neighbour (-1 if none)."""
    owner = np.full(labels.shape, -1)
    for sy, sx in ((0, 1), (0, -1), (1, 0), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1)):
        shifted = np.full(labels.shape, -1)
        ys = slice(max(sy, 0), labels.shape[0] + min(sy, 0))
        yd = slice(max(-sy, 0), labels.shape[0] + min(-sy, 0))
        xs = slice(max(sx, 0), labels.shape[1] + min(sx, 0))
        xd = slice(max(-sx, 0), labels.shape[1] + min(-sx, 0))
        shifted[ys, xs] = labels[yd, xd]
        owner = np.where((owner < 0) & (shifted >= 0), shifted, owner)
    return np.where(ring, owner, -1)


def _check(t: np.ndarray, own: np.ndarray, near: np.ndarray, min_part: int) -> Optional[dict]:
    """One hypothesis on one grid: the template's pixels (flat indices, colours, 1/part-size weights,
    part label) and its ring cells with the part each one borders."""
    colours = _parts(t, min_part)
    if len(colours) < 2:  # one colour: no layout to correlate (a plain patch of it would do)
        return None
    labels = np.full(own.shape, -1)
    for k, (idx, _) in enumerate(colours):
        labels.flat[idx] = k
    owner = _ring_owner(labels, _grow(own) & ~own & ~near)  # ring cells by the colour they border
    # the correlation's parts: each colour split by tiles of TILE x TILE cells, weighted alike, so a
    # face of the wrong colour counts as much as a whole body of the right one
    tile = TILE if own.shape[0] == world.SIZE else TILE // 2
    yy, xx = np.divmod(np.arange(own.size), own.shape[1])
    tile_id = (yy // tile) * 100 + xx // tile
    parts = []
    for idx, col in colours:
        frags = [idx[tile_id[idx] == tid] for tid in np.unique(tile_id[idx])]
        big = [f for f in frags if len(f) >= min_part] or [idx]  # a colour too thin to split stays whole
        small = np.concatenate([f for f in frags if len(f) < min_part] or [np.zeros(0, int)])
        if len(big) < len(frags) and len(big[0]) != len(idx):
            big[int(np.argmax([len(f) for f in big]))] = np.concatenate(
                [big[int(np.argmax([len(f) for f in big]))], small])  # slivers join the colour's largest tile
        parts += [(f, col) for f in big]
    if len({tuple(c) for _, c in parts}) < 2:
        return None
    ring = np.flatnonzero(owner >= 0)
    idx = np.concatenate([i for i, _ in parts])
    lab = np.concatenate([np.full(len(i), k) for k, (i, _) in enumerate(parts)])
    w = np.concatenate([np.full(len(i), 1.0 / len(i)) for i, _ in parts])
    return {"idx": idx, "colour": np.stack([c for _, c in parts])[lab], "w": w / w.sum(),
            "ring": ring, "ring_part": owner.flat[ring], "colour_idx": [i for i, _ in colours]}


@functools.lru_cache(maxsize=None)
def _hypotheses(concept: str, slot: Optional[int] = None, two_figures: bool = False) -> list[tuple[str, dict]]:
    """Per (jitter, style hypothesis): the template pixels and ring cells to check, on the full image
    (none; scanlines: even rows only) or on the 16x16 image of 2x2 block means (pixelart: blocks the
    concept fills entirely, at their 4-level colour; ring: blocks with none of its pixels).
    ``slot``: at the two-figure world's left (0) or right (1) figure; ``two_figures``: in that world."""
    out = []
    jitters = ((0, 0),) if concept == "brickwall" else JITTERS
    offset = 0 if slot is None or concept == "brickwall" else duo.SLOT_DX[slot]
    even_rows = (np.arange(world.SIZE) % 2 == 0)[:, None]
    for dx, dy in jitters:
        t, own, near = _template(concept, dx + offset, dy, slot, two_figures or slot is not None)
        even = t.copy()
        even[~even_rows[:, 0]] = np.nan
        own_b, near_b = _blocks(own.astype(np.float32)) > 0, _blocks(near.astype(np.float32)) > 0
        for hyp, chk in (("none", _check(t, own, near, MIN_PART)),
                         ("scanlines", _check(even, own, near | ~even_rows, MIN_PART)),
                         ("pixelart", _check(np.round(_blocks(t) * 3) / 3, own_b, near_b, 1))):
            if chk is not None:
                out.append((hyp, chk))
    return out


# --- scores --------------------------------------------------------------------------------------
def _as_numpy(images) -> np.ndarray:
    """[B, 32, 32, 3] float in [0, 1] from a [B, 3, H, W] tensor in [-1, 1] or an HxWx3 / BxHxWx3 array."""
    if isinstance(images, torch.Tensor):
        return ((images.detach().float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
    a = np.asarray(images, np.float32)
    return a[None] if a.ndim == 3 else a


def _template_score(imgs: np.ndarray, concept: str, slot: Optional[int] = None,
                    two_figures: bool = False) -> np.ndarray:
    """Max over jitters and style hypotheses of min(layout score, ring score).

    Layout score: the weighted correlation between the template's colours and the image's over the
    template pixels (every part weighted equally, each channel centred: blind to colour casts and
    brightness offsets), times the least-squares gain of the image's contrasts on the template's
    (clipped to 1: a faint concept scores low). Ring score: how far each ring group's median colour is
    from the median colour of the template colour it borders (medians: blind to stars and speckles),
    RING_CONTRAST for full marks; the worst group counts."""
    b = imgs.shape[0]
    full = imgs.reshape(b, -1, 3)
    blocks = _blocks(imgs.transpose(1, 2, 0, 3)).transpose(2, 0, 1, 3).reshape(b, -1, 3)
    best = np.zeros(b)
    for hyp, c in _hypotheses(concept, slot, two_figures):
        src = blocks if hyp == "pixelart" else full
        x = src[:, c["idx"]]  # [B, n, 3]
        w = c["w"][None, :, None]
        tc = c["colour"] - (c["w"][:, None] * c["colour"]).sum(0)
        xc = x - (w * x).sum(1, keepdims=True)
        num = (w * tc * xc).sum((1, 2))
        tt = (c["w"][:, None] * tc * tc).sum()
        xx = (w * xc * xc).sum((1, 2))
        corr = num / np.sqrt(tt * xx + 1e-12)
        gain = num / (tt + 1e-12)
        score = np.clip(corr, 0, 1) * np.clip(gain, 0, 1)
        for k, cidx in enumerate(c["colour_idx"]):  # every ring group must stand out from its colour
            sel = c["ring"][c["ring_part"] == k]
            if len(sel):
                gap = np.linalg.norm(np.median(src[:, sel], 1) - np.median(src[:, cidx], 1), axis=-1)
                score = np.minimum(score, np.minimum(1.0, gap / RING_CONTRAST))
        best = np.maximum(best, score)
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
    """(differences across the edges of the world's 2x2 blocks minus those inside them) / (across +
    0.005): about 1 for pixelart, 0 for a flat image, lower the more the 2x2 blocks vary inside
    (noise raises both terms alike). No palette test: colour casts move the 4 levels."""
    dh = np.abs(np.diff(imgs, axis=2)).mean(-1)  # [B, 32, 31]
    dv = np.abs(np.diff(imgs, axis=1)).mean(-1)  # [B, 31, 32]
    inside = dh[:, :, 0::2].mean((1, 2)) + dv[:, 0::2, :].mean((1, 2))
    across = dh[:, :, 1::2].mean((1, 2)) + dv[:, 1::2, :].mean((1, 2))
    return np.clip((across - inside) / (across + 0.005), 0, 1)


def starnight_score(imgs: np.ndarray, two_figures: bool = False) -> np.ndarray:
    """The background region dark (median luminance under 0.25 for full marks, 0.4 for none), blue
    above red and green (by 0.08 for full marks), and with stars (3 pixels 0.2 brighter than the
    median for full marks, but no more than 15 % of the region: stars, not stripes). Medians over
    all rows and over even rows only (scanlines), the better."""
    reg = background_region(two_figures)
    best = np.zeros(len(imgs))
    for rows in (np.ones(world.SIZE, bool), np.arange(world.SIZE) % 2 == 0):
        px = imgs[:, reg & rows[:, None]]  # [B, P, 3]
        med = np.median(px, axis=1)  # [B, 3]
        lum = px.mean(-1)
        med_lum = med.mean(-1)
        dark = np.clip((0.4 - med_lum) / 0.15, 0, 1)
        blue = np.clip((med[:, 2] - np.maximum(med[:, 0], med[:, 1])) / 0.08, 0, 1)
        n_bright = (lum > med_lum[:, None] + 0.2).sum(1)
        stars = np.minimum(1.0, n_bright / 3) * (n_bright <= 0.15 * px.shape[1])  # few, not a pattern
        best = np.maximum(best, dark * blue * stars)
    return best


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
    """The imperfections of generated images that the classifier is trained with (train._augment,
    calibrated by eye on the tiny model's samples when the classifier was made), without its shifts
    (the detector relies on the world's layout): per-channel gain 0.7-1.3 and offset +-0.125,
    blur (3x3 binomial) on 30 % of the images, Gaussian noise of sigma up to 0.175, speckles."""
    r = np.random.default_rng(seed)
    b = len(imgs)
    x = imgs * 2 - 1  # train._augment works on [-1, 1]
    x = x * (1 + 0.6 * (r.random((b, 1, 1, 3)) - 0.5)) + 0.5 * (r.random((b, 1, 1, 3)) - 0.5)
    k = np.array([0.25, 0.5, 0.25])
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    xb = sum(k[i] * k[j] * xp[:, i:i + world.SIZE, j:j + world.SIZE] for i in range(3) for j in range(3))
    x = np.where((r.random(b) < 0.3)[:, None, None, None], xb, x)
    x = x + r.normal(size=x.shape) * (0.35 * r.random((b, 1, 1, 1)) ** 1.5)
    speck = r.random((b, world.SIZE, world.SIZE, 1)) < 0.04 * r.random((b, 1, 1, 1))
    x = np.where(speck, r.random(x.shape) * 2 - 1, x)
    return np.clip((x + 1) / 2, 0, 1).astype(np.float32)


def labelled_renders(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n renders of world.random_labelled scenes (any subset of concepts, random generic content),
    [n, 32, 32, 3], and their labels [n, 11] (bool)."""
    rng = np.random.default_rng(seed)
    scenes = [world.random_labelled(rng) for _ in range(n)]
    return (np.stack([world.render(s) for s in scenes]),
            np.stack([world.labels_of(s) for s in scenes]).astype(bool))


def fit_thresholds(n: int = 3000, seed: int = 1) -> dict[str, float]:
    """How THRESHOLDS were set: per concept, the threshold (grid of 0.05) with the best balanced
    accuracy (mean of recall on renders with the concept and specificity on renders without) over
    clean and degraded renders pooled; among equally good ones, the middle."""
    imgs, labs = labelled_renders(n, seed)
    s = np.concatenate([scores(imgs), scores(degrade(imgs, seed + 1))])
    y = np.concatenate([labs, labs])
    return {c: _best_threshold(s[:, j], y[:, j]) for j, c in enumerate(world.ALL_CONCEPTS)}


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


# --- the two-figure world (duo.py) --------------------------------------------------------------------
# Set on renders only, by fit_duo_thresholds() (2000 random two-figure world renders without blended
# figures, seed 1, clean + degraded, both figures pooled); checked with duo_render_check().
DUO_THRESHOLDS: dict[str, float] = {
    "zorbot": 0.25, "kittra": 0.35, "glimmy": 0.25, "tophat": 0.4, "stripescarf": 0.25, "pixelart": 0.2,
    "scanlines": 0.35, "brickwall": 0.35, "starnight": 0.05,
}


def duo_scores(images) -> tuple[np.ndarray, np.ndarray]:
    """Figure scores [B, 2, 5] (duo.FIGURE_CONCEPTS at the left and the right figure, templates at the
    slot's place, the other figure counted as something else that can paint) and whole-image scores
    [B, 4] (duo.GLOBAL_CONCEPTS; the background checked where no figure of either world can be)."""
    imgs = _as_numpy(images)
    figures = np.stack([np.stack([_template_score(imgs, c, k) for c in duo.FIGURE_CONCEPTS], -1) for k in (0, 1)], 1)
    whole = {"pixelart": pixelart_score(imgs), "scanlines": scanline_score(imgs),
             "brickwall": _template_score(imgs, "brickwall", two_figures=True),
             "starnight": starnight_score(imgs, two_figures=True)}
    return figures, np.stack([whole[c] for c in duo.GLOBAL_CONCEPTS], -1)


def duo_detect(images) -> tuple[np.ndarray, np.ndarray]:
    """Booleans [B, 2, 5] and [B, 4]: what the detector finds at each figure and in the whole image."""
    figures, whole = duo_scores(images)
    return (figures >= np.array([DUO_THRESHOLDS[c] for c in duo.FIGURE_CONCEPTS]),
            whole >= np.array([DUO_THRESHOLDS[c] for c in duo.GLOBAL_CONCEPTS]))


def duo_labelled_renders(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n renders of duo.random_labelled scenes with the blends taken out (the detector judges what the
    world draws), [n, 32, 32, 3], their figure labels [n, 2, 5] and whole-image labels [n, 4] (bool)."""
    rng = np.random.default_rng(seed)
    scenes = [duo.random_labelled(rng) for _ in range(n)]
    for sc in scenes:
        for f in sc.figures:
            f.blend = None
    return (np.stack([duo.render(s) for s in scenes]), np.stack([duo.slot_labels(s) for s in scenes]).astype(bool),
            np.stack([duo.global_labels(s) for s in scenes]).astype(bool))


def _best_threshold(s: np.ndarray, y: np.ndarray) -> float:
    """The threshold (grid of 0.05) with the best balanced accuracy; among equally good ones, the middle."""
    grid = np.round(np.arange(0.05, 1.0, 0.05), 2)
    bal = np.array([0.5 * ((s[y] >= t).mean() + (s[~y] < t).mean()) for t in grid])
    best = np.flatnonzero(bal >= bal.max() - 1e-3)
    return float(grid[best[len(best) // 2]])


def fit_duo_thresholds(n: int = 2000, seed: int = 1) -> dict[str, float]:
    """How DUO_THRESHOLDS were set: fit_thresholds' rule on two-figure renders, both figures pooled."""
    imgs, fig, whole = duo_labelled_renders(n, seed)
    s_fig, s_whole = (np.concatenate(p) for p in zip(duo_scores(imgs), duo_scores(degrade(imgs, seed + 1)),
                                                     strict=True))
    fig, whole = np.concatenate([fig, fig]), np.concatenate([whole, whole])
    out = {c: _best_threshold(s_fig[..., j].ravel(), fig[..., j].ravel()) for j, c in enumerate(duo.FIGURE_CONCEPTS)}
    out.update({c: _best_threshold(s_whole[:, j], whole[:, j]) for j, c in enumerate(duo.GLOBAL_CONCEPTS)})
    return out


def duo_render_check(n: int = 1000, seed: int = 7) -> dict:
    """Per concept, recall and false positives on held-out two-figure renders, clean and degraded."""
    imgs, fig, whole = duo_labelled_renders(n, seed)
    res = {}
    for name, x in (("clean", imgs), ("degraded", degrade(imgs, seed + 1))):
        d_fig, d_whole = duo_detect(x)
        rows = {}
        columns = [(c, d_fig[..., j].ravel(), fig[..., j].ravel()) for j, c in enumerate(duo.FIGURE_CONCEPTS)]
        columns += [(c, d_whole[:, j], whole[:, j]) for j, c in enumerate(duo.GLOBAL_CONCEPTS)]
        for c, det, lab in columns:
            rows[c] = {"recall": float(det[lab].mean()), "false_positive": float(det[~lab].mean()),
                       "accuracy": float((det == lab).mean())}
        res[name] = rows
    return res
