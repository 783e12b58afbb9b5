"""Published multi-LoRA composition methods as benchmark methods, each as we implemented it.

One module per peer; each is written from its paper in our own words (no code copied from any
repository) and says in its docstring what the paper says, what we implemented, and what we had
to infer (marked INFERRED). Every peer runs through the benchmark's own pieces: the Bench's
UNet, text encoder, LoRA files and bindings, ``Bench._unet`` (which counts UNet rows in
``Bench.evals``), ``Bench._ddim`` (DDIM with CFG), ``Bench.merged_unet``, and the project's
``BranchRunner`` for per-row and per-pixel LoRA application.

A peer is a ``sampling.Method`` of kind ``"peer"`` whose ``mode`` names the peer (a key of
``PEERS``) and whose ``options`` are (name, value) pairs overriding the peer's defaults.

Each peer module defines ``run(bench, ctx: Context) -> x`` (the final sample) and may define
``prepare(bench, ctx)`` for work done once per LoRA rather than per image (CMLoRA's frequency
profile), which is neither timed nor counted in the image's rows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch

from .. import world
from ..model import T
from . import cmlora, freefuse, klora, multlfg, oracle

PEERS = {
    "K-LoRA": klora,
    "CMLoRA": cmlora,
    "MultLFG": multlfg,
    "FreeFuse": freefuse,
    "Oracle": oracle,
}


@dataclass
class Context:
    """One composition and its seeds, laid out as Bench.sample lays them out: ``ctx`` rows are the
    b conditional rows then the b unconditional ones."""
    concepts: tuple[str, ...]
    prompt: str
    x: torch.Tensor          # [b, 3, H, W] initial noise
    ctx: torch.Tensor        # [2b, tokens, width]
    ts: torch.Tensor         # DDIM timesteps, high to low
    cfg: float
    strength: float
    options: dict[str, Any]
    info: dict = field(default_factory=dict)

    @property
    def b(self) -> int:
        return self.x.shape[0]

    def option(self, name: str, default):
        return self.options.get(name, default)


def make_context(bench, concepts: Sequence[str], seeds: Sequence[int], *, steps: int, cfg: float,
                 strength: float, prompt: Optional[str], options: Sequence[tuple[str, Any]]) -> Context:
    """The same prompt, noise and timesteps as ``Bench.sample`` for the same arguments."""
    b = len(seeds)
    prompt = prompt if prompt is not None else bench.spec.composition_prompt(tuple(concepts))
    cond = bench.te.encode([prompt]).expand(b, -1, -1)
    uncond = bench._uncond.expand(b, -1, -1)
    x = torch.stack([torch.randn(3, world.SIZE, world.SIZE, generator=torch.Generator().manual_seed(int(s)))
                     for s in seeds])
    ts = torch.linspace(T - 1, 0, steps).round().long()
    return Context(tuple(concepts), prompt, x, torch.cat([cond, uncond]), ts, cfg, strength, dict(options))


@torch.no_grad()
def sample(bench, method, concepts: Sequence[str], seeds: Sequence[int], *, steps: int, cfg: float,
           strength: float, prompt: Optional[str] = None, progress=None):
    """Images [B, 3, 32, 32] in [-1, 1] and an info dict, as ``Bench.sample`` returns them."""
    if method.mode not in PEERS:
        raise ValueError(f"unknown peer {method.mode!r}; known: {sorted(PEERS)}")
    peer = PEERS[method.mode]
    context = make_context(bench, concepts, seeds, steps=steps, cfg=cfg, strength=strength, prompt=prompt,
                           options=method.options)
    if hasattr(peer, "prepare"):
        peer.prepare(bench, context)
    bench.evals = 0
    t0 = time.perf_counter()
    x = peer.run(bench, context)
    info = dict(context.info)
    info["lora_names"] = list(concepts)
    info["evals_per_image"] = bench.evals / context.b
    info["seconds_per_image"] = (time.perf_counter() - t0) / context.b
    return x.clamp(-1, 1), info
