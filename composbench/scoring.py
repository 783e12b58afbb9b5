"""Scores: concept recall from the classifier, spurious concepts, confidence, a feature distance."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from . import world

THRESHOLD = 0.5


class Scorer:
    def __init__(self) -> None:
        from .train import load_classifier
        self.clf = load_classifier()

    @torch.no_grad()
    def probs_and_features(self, images: torch.Tensor):
        feats = self.clf.features(images.float())
        return self.clf.head(feats).sigmoid(), feats

    def score(self, images: torch.Tensor, concepts: Sequence[str]) -> dict:
        """Per image: recall (fraction of requested concepts detected), spurious rate, confidence."""
        p, f = self.probs_and_features(images)
        want = torch.zeros(len(world.ALL_CONCEPTS), dtype=torch.bool)
        for c in concepts:
            want[world.ALL_CONCEPTS.index(c)] = True
        det = p > THRESHOLD
        recall = det[:, want].float().mean(1)
        spurious = det[:, ~want].float().mean(1)
        conf = p[:, want].mean(1)
        per_concept = {c: det[:, world.ALL_CONCEPTS.index(c)].float() for c in concepts}
        return {"recall": recall, "spurious": spurious, "confidence": conf, "features": f,
                "per_concept": per_concept, "probs": p}


def reference_renders(comps: Sequence[tuple[str, ...]], seed: int = 12345) -> torch.Tensor:
    """Ground-truth renders of the same compositions (one each), the quality reference."""
    rng = np.random.default_rng(seed)
    imgs = [world.render(world.random_generic(rng, {world.CATEGORY_OF[c]: c for c in comp})) for comp in comps]
    return world.to_tensor_batch(imgs)


def frechet(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance of two feature sets (biased at small n; compare methods at equal n)."""
    a, b = a.double().numpy(), b.double().numpy()
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # sqrtm of s1 s2 through the symmetric form s1^1/2 s2 s1^1/2
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = r1 @ s2 @ r1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)
