"""Stand-in for ``modules/rng.py``: ``ImageRNG(shape, seeds, ...)``; ``next()`` -> [B, *shape] noise,
one torch.Generator per seed (first call: the seeds' initial noise; later calls continue each stream)."""

import torch


class ImageRNG:
    def __init__(self, shape, seeds, subseeds=None, subseed_strength=0.0, seed_resize_from_h=0, seed_resize_from_w=0):
        self.shape = tuple(int(x) for x in shape)
        self.seeds = seeds
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def next(self):
        return torch.stack([torch.randn(self.shape, generator=g) for g in self.generators])
