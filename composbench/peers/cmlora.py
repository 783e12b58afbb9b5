"""CMLoRA, as we implemented it (Zou, Shen, Bouganis, Zhao, "Cached Multi-LoRA Composition for
Multi-Concept Image Generation", ICLR 2025, arXiv 2502.04923).

What the paper says (abstract and introduction, arXiv HTML v1; the authors' README; the structure
of the sampling loop from the authors' public implementation, Yqcca/CMLoRA, read but not copied):
looked at in the Fourier domain, some LoRAs mainly amplify high frequencies (edges, textures),
others low frequencies (overall structure, smooth colour). The LoRAs are profiled once, ranked by
that property and partitioned into a high- and a low-frequency set; the ranking fixes the order in
which the LoRAs are integrated during sampling. The backbone is LoRA Composite (every LoRA's own
conditional and unconditional predictions, averaged, then CFG) with one *dominant* LoRA at a time,
weighted more than the others; the dominant role passes along the ranked sequence during
sampling, and its extra weight decays. To save compute, the non-dominant LoRAs' computations are
cached and reused between refreshes, with a caching interval that depends on the LoRA's frequency
class ("non-uniform caching").

What we implemented:

* Profile (once per LoRA, not per image; neither timed nor counted in the rows): each LoRA alone
  (merged at the run's strength) and the base model generate from the trigger prompt with
  PROFILE_SEEDS; the score is the mean log FFT amplitude of the luminance over the high band
  (radius above HIGH_BAND of Nyquist) of the LoRA's images minus the base model's. INFERRED: the
  band edge, the seeds and the use of final images (the paper analyses amplitude spectra of
  generated images and latents; its thresholds are not readable to us).
* Partition: INFERRED: within a composition, the ceil(N/2) LoRAs with the highest score form the
  high-frequency set, the others the low-frequency set; the sequence is the LoRAs by score,
  highest first (the authors' released pipeline likewise puts backgrounds, its low-frequency
  class, last).
* Dominant LoRA: at step i the sequence's element (i // switch_every) mod N, switch_every = 10 % of
  the steps (the released configuration switches every 20 of 200 steps). Its weight: with a
  coefficient c, the dominant LoRA gets c / (c + N - 1) and each other LoRA 1 / (c + N - 1); c
  starts at N - 0.5 as in the released pipeline, and its excess over 1 halves at every hand-over,
  c_s = 1 + (N - 1.5) 0.5^s, so the weights decay toward uniform (the paper's decaying dominant
  weight scale w_dom). INFERRED: the released code subtracts 0.5^s from c instead, which at N = 2
  would leave the dominant LoRA weighing less than the other after a few hand-overs.
* Caching (SIMPLIFIED): the paper caches UNet features of the non-dominant LoRAs (DeepCache-style:
  the shallow layers still run every step); we cache each LoRA's whole prediction (conditional and
  unconditional): the dominant LoRA is evaluated every step, a non-dominant one only when its
  cached prediction is CACHE_HIGH (high-frequency set) or CACHE_LOW (low-frequency set) steps old,
  and every LoRA on the first step. A cached LoRA costs no row that step, so our rows are a lower
  bound on the paper's cost. INFERRED: intervals 2 and 3, the low-frequency LoRAs cached longer
  because coarse structure settles early.
* Unconditional prediction: as the paper's backbone, each LoRA's own, averaged with the same
  weights as the conditional ones.

Cost: 2N rows on the first step, then 2 (dominant) + 2 per non-dominant LoRA due for a refresh.
"""

from __future__ import annotations

import math

import torch

from lib_loratorio.branch_runner import BranchRunner

from .. import world
from ..model import T

PROFILE_SEEDS = (1001, 1002)
HIGH_BAND = 0.5
CACHE_HIGH = 2
CACHE_LOW = 3
SWITCH_SHARE = 0.1

_PROFILES: dict[tuple, float] = {}


def high_band_log_amplitude(images: torch.Tensor, band: float = HIGH_BAND) -> torch.Tensor:
    """Mean log amplitude of the luminance spectrum above ``band`` of Nyquist, per image [B]."""
    lum = images.float().mean(dim=1)
    amp = torch.fft.fft2(lum).abs()
    h, w = lum.shape[-2:]
    fy = torch.fft.fftfreq(h).abs().view(-1, 1) * 2  # 1.0 = Nyquist
    fx = torch.fft.fftfreq(w).abs().view(1, -1) * 2
    high = torch.maximum(fy, fx) > band
    return torch.log(amp[:, high] + 1e-6).mean(dim=1)


def _generate(bench, net, prompt: str, steps: int, cfg: float) -> torch.Tensor:
    b = len(PROFILE_SEEDS)
    ctx = torch.cat([bench.te.encode([prompt]).expand(b, -1, -1), bench._uncond.expand(b, -1, -1)])
    x = torch.stack([torch.randn(3, world.SIZE, world.SIZE, generator=torch.Generator().manual_seed(s))
                     for s in PROFILE_SEEDS])
    ts = torch.linspace(T - 1, 0, steps).round().long()

    def eps_fn(x, i, t):
        e = bench._unet(net, torch.cat([x, x]), t, ctx)
        return e[:b], e[b:]
    return bench._ddim(x, ts, eps_fn, cfg)


@torch.no_grad()
def frequency_score(bench, concept: str, steps: int, cfg: float, strength: float) -> float:
    """How much the LoRA raises high-frequency amplitude over the base model (kept per LoRA and setting)."""
    key = (concept, steps, cfg, strength)
    if key not in _PROFILES:
        saved = bench.evals
        lora = _generate(bench, bench.merged_unet([concept], strength), concept, steps, cfg)
        base = _generate(bench, bench.unet, concept, steps, cfg)
        bench.evals = saved
        _PROFILES[key] = float((high_band_log_amplitude(lora) - high_band_log_amplitude(base)).mean())
    return _PROFILES[key]


def plan(scores: list[float]) -> tuple[list[int], set[int]]:
    """The integration sequence (LoRA indices by score, highest first) and the high-frequency set."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    return order, set(order[: math.ceil(len(scores) / 2)])


def dominant_weights(n: int, switches: int) -> tuple[float, float]:
    """(dominant, other) weights after ``switches`` hand-overs of the dominant role; they sum to 1."""
    c = 1.0 + (n - 1.5) * 0.5 ** switches
    return c / (c + n - 1), 1.0 / (c + n - 1)


def prepare(bench, ctx) -> None:
    steps = len(ctx.ts)
    ctx.info["cmlora_scores"] = [frequency_score(bench, c, steps, ctx.cfg, ctx.strength) for c in ctx.concepts]


def run(bench, ctx) -> torch.Tensor:
    n, b, steps = len(ctx.concepts), ctx.b, len(ctx.ts)
    order, high = plan(ctx.info["cmlora_scores"])
    every = max(1, round(steps * float(ctx.option("switch_share", SWITCH_SHARE))))
    interval = {i: int(ctx.option("cache_high", CACHE_HIGH)) if i in high else int(ctx.option("cache_low", CACHE_LOW))
                for i in range(n)}
    cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    last: dict[int, int] = {}
    evaluated = []
    ctx.info["cmlora_order"] = [ctx.concepts[i] for i in order]
    ctx.info["cmlora_high"] = sorted(ctx.concepts[i] for i in high)

    def eps_fn(x, i, t):
        turn = i // every
        dom = order[turn % n]
        due = [j for j in range(n) if j == dom or j not in cache or i - last[j] >= interval[j]]
        evaluated.append(len(due))
        branches = torch.tensor([j + 1 for j in due for _ in range(2 * b)])
        rows = torch.cat([torch.cat([x, x]) for _ in due])
        ctx_rows = torch.cat([ctx.ctx for _ in due])
        with runner.rows(branches):
            e = bench._unet(bench.unet, rows, t, ctx_rows)
        for k, j in enumerate(due):
            part = e[2 * b * k: 2 * b * (k + 1)]
            cache[j], last[j] = (part[:b], part[b:]), i
        w_dom, w_other = dominant_weights(n, turn)
        weights = [w_dom if j == dom else w_other for j in range(n)]
        ec = sum(w * cache[j][0] for j, w in enumerate(weights))
        eu = sum(w * cache[j][1] for j, w in enumerate(weights))
        return ec, eu

    loras = [bench.bound[c] for c in ctx.concepts]
    with BranchRunner(loras, [ctx.strength] * n) as runner, torch.no_grad():
        x = bench._ddim(ctx.x, ctx.ts, eps_fn, ctx.cfg)
    ctx.info["cmlora_loras_evaluated"] = evaluated
    return x
