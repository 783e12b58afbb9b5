"""Scores of the two-figure world: who each figure is, and whether two characters stayed apart.

Both scorers read each figure's region. The classifier: a CNN on each figure's half of the image
(left and right 16 columns; trained on two-figure renders in which one figure in five is a blend
of two characters, labelled with both) for the identities and clothing, and a CNN on the whole
image for background and style. The detector: detector.py's colour-layout templates at each
slot's place, and its background and style tests.

Per image of a composition with characters A and B (duo.py): a figure's identities are the
characters found there. ``success``: one figure is A and only A, the other B and only B;
``separated``: the share of {A, B} each found at exactly one figure, with no figure showing both (a
graded success: 1 when both are, 0.5 when one is and the other is missing); ``identity``: the share
of {A, B} found somewhere; ``blend``: a figure with both; ``twin``: the same
character at both figures; ``hybrid``: blend or twin. Clothing, when asked: ``clothing_one`` = on
exactly one figure, ``clothing_both`` = on both. ``recall``: the share of the requested concepts
found (a character or clothing at either figure, a background or style in the image), comparable
with the single-figure world's recall.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from . import duo, world
from .worlds import DUO

FIGURE_CLASSIFIER = "figure_classifier.safetensors"
GLOBAL_CLASSIFIER = "global_classifier.safetensors"
THRESHOLD = 0.5
#: Per-image measures, in the order the reports show them.
MEASURES: tuple[str, ...] = ("success", "separated", "identity", "hybrid", "blend", "twin", "clothing_one",
                             "clothing_both", "global", "recall")


def figure_classifier():
    """The single-figure world's classifier network with one output per duo.FIGURE_CONCEPTS, on 32x16 crops."""
    from .train import ConceptClassifier
    return ConceptClassifier(len(duo.FIGURE_CONCEPTS))


def figure_crops(x: torch.Tensor) -> torch.Tensor:
    """[B, C, 32, 32] -> [2B, C, 32, 16]: each image's left then right half (one figure each)."""
    half = x.shape[-1] // 2
    return torch.stack([x[..., :half], x[..., half:]], dim=1).flatten(0, 1)


def measures(figures: np.ndarray, whole: np.ndarray, comp: Sequence[str]) -> dict[str, np.ndarray]:
    """Per image, the measures of the module docstring from decisions: ``figures`` [B, 2, 5] (bool, per
    duo.FIGURE_CONCEPTS at the left and right figure), ``whole`` [B, 4] (duo.GLOBAL_CONCEPTS).
    Measures that do not apply to the composition (clothing when none is asked) are NaN."""
    a, b = comp[0], comp[1]
    ia, ib = duo.FIGURE_CONCEPTS.index(a), duo.FIGURE_CONCEPTS.index(b)
    chars = [duo.FIGURE_CONCEPTS.index(c) for c in duo.CHARACTERS]
    has_a, has_b = figures[:, :, ia], figures[:, :, ib]  # [B, 2]
    n_chars = figures[:, :, chars].sum(-1)  # characters found per figure
    only_a, only_b = has_a & (n_chars == 1), has_b & (n_chars == 1)
    blend = (has_a & has_b).any(1)
    out = {
        "success": (only_a[:, 0] & only_b[:, 1]) | (only_b[:, 0] & only_a[:, 1]),
        "separated": (((has_a.sum(1) == 1) & ~blend).astype(float) + ((has_b.sum(1) == 1) & ~blend)) / 2,
        "identity": (has_a.any(1).astype(float) + has_b.any(1)) / 2,
        "blend": blend,
        "twin": has_a.all(1) | has_b.all(1),
    }
    out["hybrid"] = out["blend"] | out["twin"]
    clothing = [c for c in comp if c in duo.CLOTHING]
    found = [has_a.any(1), has_b.any(1)]
    nan = np.full(len(figures), np.nan)
    if clothing:
        worn = figures[:, :, duo.FIGURE_CONCEPTS.index(clothing[0])].sum(1)
        out["clothing_one"], out["clothing_both"] = worn == 1, worn == 2
        found.append(worn >= 1)
    else:
        out["clothing_one"] = out["clothing_both"] = nan
    wanted = [duo.GLOBAL_CONCEPTS.index(c) for c in comp if c in duo.GLOBAL_CONCEPTS]
    out["global"] = whole[:, wanted].mean(1) if wanted else nan
    found += [whole[:, j] for j in wanted]
    out["recall"] = np.mean(np.stack(found).astype(float), axis=0)
    return {k: np.asarray(v, float) for k, v in out.items()}


class DuoScorer:
    """The classifier scorer of the two-figure world (both networks, loaded once)."""

    def __init__(self) -> None:
        from .train import ConceptClassifier, load_classifier
        self.figures = load_classifier(DUO.root / FIGURE_CLASSIFIER, figure_classifier())
        self.whole = load_classifier(DUO.root / GLOBAL_CLASSIFIER, ConceptClassifier(len(duo.GLOBAL_CONCEPTS)))

    @torch.no_grad()
    def probs_and_features(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
        """Figure probabilities [B, 2, 5], whole-image probabilities [B, 4], whole-image features (for FD)."""
        x = images.float()
        fig = self.figures(figure_crops(x)).sigmoid().view(len(x), 2, -1)
        feats = self.whole.features(x)
        return fig.numpy(), self.whole.head(feats).sigmoid().numpy(), feats

    def decide(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
        fig, whole, feats = self.probs_and_features(images)
        return fig > THRESHOLD, whole > THRESHOLD, feats


def reference_renders(comps: Sequence[tuple[str, ...]], seed: int = 12345) -> torch.Tensor:
    """Ground-truth renders of the compositions (A and B in random slots, the clothing on one of them,
    the rest of the scene generic), the quality reference for FD."""
    rng = np.random.default_rng(seed)
    images = []
    for comp in comps:
        scene = duo.random_scene(rng, two=True, **{world.CATEGORY_OF[c]: c for c in comp[2:]})
        order = [0, 1] if rng.random() < 0.5 else [1, 0]
        for k, c in zip(order, comp[:2], strict=True):
            scene.figures[k].character, scene.figures[k].generic = c, None
        images.append(duo.render(scene))
    return world.to_tensor_batch(images)
