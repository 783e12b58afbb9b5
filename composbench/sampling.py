"""DDIM sampling of the tiny model, and every composition method through the project's runtime.

The LoRA files are read with ``lib_loratorio.lora_files.read_lora_file`` and bound with
``lib_loratorio.network_names.bind_lora``; LoRAtorio, Composite and Switch run through
``lib_loratorio.composer.BranchComposer`` and ``lib_loratorio.branch_runner.BranchRunner``, so the
benchmark exercises the same loading and branch code as the extension. Merge adds
``delta.weight_delta(module) * strength`` to a copy of the UNet.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from lib_loratorio.branch_runner import BranchRunner
from lib_loratorio.composer import BranchComposer
from lib_loratorio.lora_files import read_lora_file
from lib_loratorio.network_names import bind_lora
from lib_loratorio.params import LoratorioParams

from . import world
from .attention_per_lora import AttentionPerLoraRunner
from .model import ALPHAS_CUMPROD, T, load_base, lora_path
from .routing import RoutedComposer, world_hints
from .worlds import SOLO, WorldSpec

STEPS = 20
CFG = 4.0
STRENGTH = 1.0


@dataclass(frozen=True)
class Method:
    name: str
    kind: str  # "base" | "merge" | "composer"
    mode: str = "LoRAtorio"
    patch_size: int = 8
    temperature: float = 0.05
    recenter: float = 0.5
    pool: bool = False  # dynamic selection over the whole pool with top_k = N
    switch_every: int = 5  # Switch mode: steps per turn (the protocol in run.py sets 1)
    refresh_first: int = 1   # LoRAtorio Fast's schedule
    refresh_every: int = 10
    weight_norm: str = "sum"
    attention_per_lora: bool = False  # LoRAtorio Fast's rule for cross-attention (BranchRunner)
    strength: Optional[float] = None  # the LoRAs' strength in this method, instead of the run's
    base_uncond: bool = False  # Merge: the negative prompt's prediction from the base model (re-centring 1)
    rule: str = "softmin"  # routing.RULES: how the weight maps are computed (prototypes)
    hint_strength: float = 0.0  # routing: region hints from the world's ground truth, this strong (0 = none)
    options: tuple = ()  # kind "peer": (name, value) pairs for the peer named by mode (composbench/peers)

    def params(self, n: int) -> LoratorioParams:
        return LoratorioParams(enabled=True, mode=self.mode, patch_size=self.patch_size,
                               temperature=self.temperature, recenter=self.recenter,
                               top_k=n if self.pool else 0, switch_every=self.switch_every,
                               refresh_first=self.refresh_first, refresh_every=self.refresh_every,
                               weight_norm=self.weight_norm, hint_strength=self.hint_strength)


def standard_methods(patch_size: int = 2, temperature: float = 0.05, recenter: float = 0.5) -> list[Method]:
    return [
        Method("prompt only", "base"),
        Method("Merge", "merge"),
        Method("Switch", "composer", mode="Switch"),
        Method("Composite", "composer", mode="Composite"),
        Method("LoRAtorio", "composer", patch_size=patch_size, temperature=temperature, recenter=recenter),
        Method("LoRAtorio (re-centring 1)", "composer", patch_size=patch_size, temperature=temperature, recenter=1.0),
        Method("LoRAtorio Fast", "composer", mode="LoRAtorio Fast", patch_size=patch_size, temperature=temperature),
        # the owner of a patch at full strength (weight_norm "max"), exact and fast
        Method("LoRAtorio max", "composer", patch_size=patch_size, temperature=temperature, recenter=recenter,
               weight_norm="max"),
        Method("LoRAtorio Fast max", "composer", mode="LoRAtorio Fast", patch_size=patch_size,
               temperature=temperature, weight_norm="max"),
        Method("LoRAtorio dyn (k=N of 11)", "composer", patch_size=patch_size, temperature=temperature,
               recenter=recenter, pool=True),
        # controls: routing vs guidance change
        Method("ctrl: uniform + recentre (tau=100)", "composer", patch_size=patch_size, temperature=100.0,
               recenter=recenter),
        Method("ctrl: LoRAtorio no recentre", "composer", patch_size=patch_size, temperature=temperature,
               recenter=0.0),
    ]


def control_methods(patch_size: int = 2, temperature: float = 0.05,
                    merge_strengths: Sequence[float] = (0.8, 1.0, 1.2, 1.5)) -> list[Method]:
    """What separates routing from guidance and strength (issue 17): the default and the exact mode with
    uniform maps (temperature 100: every LoRA at full strength everywhere, weights max), and Merge at
    several strengths, with its own or the base model's unconditional prediction."""
    merges = [Method(f"Merge{uncond} s={s:g}", "merge", strength=s, base_uncond=bool(uncond))
              for uncond in ("", " + base uncond") for s in merge_strengths]
    return [
        # mode Stack: Merge with the base model's unconditional prediction, through the extension's own code path
        Method("Stack", "composer", mode="Stack"),
        Method("Stack + hints 8", "composer", mode="Stack", hint_strength=8.0),
        Method("ctrl: default with uniform maps", "composer", mode="LoRAtorio Fast", patch_size=patch_size,
               temperature=100.0, weight_norm="max"),
        Method("ctrl: LoRAtorio max with uniform maps", "composer", patch_size=patch_size, temperature=100.0,
               weight_norm="max"),
        *merges,
    ]


def variant_methods(patch_size: int = 2) -> list[Method]:
    """The routing variants under test (routing.py), each beside the default it changes: divergence
    relative to the step's mean (sharper maps early), more refresh steps while the layout forms, and
    region hints of several strengths (the world's ground truth as the hint a user would give)."""
    fast = dict(mode="LoRAtorio Fast", patch_size=patch_size, weight_norm="max")
    out = [Method(f"variant: relative {tau:g}", "composer", rule="relative", temperature=tau, **fast)
           for tau in (0.25, 0.5, 1.0)]
    out += [Method(f"variant: relative {tau:g} 3/10", "composer", rule="relative", temperature=tau, refresh_first=3,
                   **fast) for tau in (0.25, 0.5)]
    out += [Method("variant: default 3/10", "composer", temperature=0.05, refresh_first=3, **fast),
            Method("variant: LoRAtorio max relative 0.5", "composer", rule="relative", temperature=0.5,
                   patch_size=patch_size, weight_norm="max")]
    out += [Method(f"variant: hints {beta:g}", "composer", temperature=0.05, hint_strength=beta, **fast)
            for beta in (2.0, 4.0, 8.0)]
    # what the hints do without the routing: every LoRA's similarity alike, the hints alone shape the maps
    out += [Method("ctrl: hints 8 with uniform maps", "composer", temperature=100.0, hint_strength=8.0, **fast)]
    # the paper's weights (summing to 1 per patch) in the fast mode, with its uniform control
    fast_sum = {**fast, "weight_norm": "sum"}
    out += [Method("ctrl: LoRAtorio Fast (sum) with uniform maps", "composer", temperature=100.0, **fast_sum),
            Method("variant: LoRAtorio Fast (sum) 3/10", "composer", temperature=0.05, refresh_first=3, **fast_sum),
            Method("variant: LoRAtorio Fast (sum) 1/2", "composer", temperature=0.05, refresh_every=2, **fast_sum),
            Method("variant: LoRAtorio Fast (sum) relative 0.25", "composer", rule="relative", temperature=0.25,
                   **fast_sum),
            Method("variant: LoRAtorio Fast (sum) hints 8", "composer", temperature=0.05, hint_strength=8.0,
                   **fast_sum),
            Method("variant: LoRAtorio (sum) hints 8", "composer", temperature=0.05, hint_strength=8.0,
                   patch_size=patch_size)]
    return out


def fast_method(schedule: str, patch_size: int = 2, temperature: float = 0.05, weight_norm: str = "max",
                attention_per_lora: bool = False) -> Method:
    """LoRAtorio Fast at ``schedule`` "FIRST/EVERY" (refresh the first FIRST steps, then every EVERY-th)."""
    first, every = (int(v) for v in schedule.split("/"))
    rule = " attention per LoRA" if attention_per_lora else ""
    return Method(f"LoRAtorio Fast {weight_norm}{rule} {first}/{every}", "composer", mode="LoRAtorio Fast",
                  patch_size=patch_size, temperature=temperature, refresh_first=first, refresh_every=every,
                  weight_norm=weight_norm, attention_per_lora=attention_per_lora)


class Bench:
    """A world's bundled base model, text encoder and LoRAs (worlds.py), loaded once."""

    def __init__(self, spec: WorldSpec = SOLO) -> None:
        self.spec = spec
        self.unet, self.te = load_base(spec.root / "base.safetensors")
        self.files = {c: read_lora_file(lora_path(c, spec.root)) for c in spec.concepts}
        self.bound = {c: bind_lora(f, {"unet": self.unet}) for c, f in self.files.items()}
        for c, b in self.bound.items():
            if not b.targets:
                raise RuntimeError(f"LoRA {c} bound to no module: {b.summary()}")
        self._uncond = self.te.encode([""])
        self.evals = 0  # network evaluations (rows through the UNet), reset by callers

    def bound_summary(self) -> list[str]:
        return [b.summary() for b in self.bound.values()]

    # --- network -------------------------------------------------------------------------------
    def _unet(self, net, x, t, ctx):
        self.evals += x.shape[0]
        return net(x, torch.full((x.shape[0],), int(t)), ctx).sample

    def merged_unet(self, concepts: Sequence[str], strength: float = STRENGTH):
        net = copy.deepcopy(self.unet)
        with torch.no_grad():
            for c in concepts:
                for _name, module, delta in bind_lora(self.files[c], {"unet": net}).targets:
                    module.weight += delta.weight_delta(module).to(module.weight.dtype) * strength
                    if delta.bias is not None and getattr(module, "bias", None) is not None:
                        module.bias += delta.bias * strength
        return net

    # --- sampling --------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, method: Method, concepts: Sequence[str], seeds: Sequence[int], *,
               steps: int = STEPS, cfg: float = CFG, strength: float = STRENGTH,
               prompt: Optional[str] = None, keep_weight_maps: bool = False, progress=None):
        """Images [B, 3, 32, 32] in [-1, 1] for one composition and B seeds; plus info dict."""
        if method.kind == "peer":  # published methods as we implemented them (composbench/peers)
            from .peers import sample as peer_sample
            return peer_sample(self, method, concepts, seeds, steps=steps, cfg=cfg, strength=strength, prompt=prompt)
        b = len(seeds)
        prompt = prompt if prompt is not None else self.spec.composition_prompt(tuple(concepts))
        cond = self.te.encode([prompt]).expand(b, -1, -1)
        uncond = self._uncond.expand(b, -1, -1)
        ctx = torch.cat([cond, uncond])
        x = torch.stack([torch.randn(3, world.SIZE, world.SIZE, generator=torch.Generator().manual_seed(int(s)))
                         for s in seeds])
        ts = torch.linspace(T - 1, 0, steps).round().long()
        info: dict = {}
        self.evals = 0
        t0 = time.perf_counter()

        strength = strength if method.strength is None else method.strength
        if method.kind in ("base", "merge"):
            net = self.unet if method.kind == "base" else self.merged_unet(concepts, strength)

            def eps_fn(x, i, t):
                if method.base_uncond:
                    return self._unet(net, x, t, cond), self._unet(self.unet, x, t, uncond)
                e = self._unet(net, torch.cat([x, x]), t, ctx)
                return e[:b], e[b:]
            x = self._ddim(x, ts, eps_fn, cfg, progress)
        else:
            names = list(self.spec.concepts) if method.pool else list(concepts)
            loras = [self.bound[c] for c in names]
            state = {}

            def evaluate(rows, branches, maps=None):
                with runner.rows(branches, maps=maps):
                    return self._unet(self.unet, state["x"][rows], state["t"], ctx[rows])

            labels = [f"LoRA '{c}'" for c in names]
            hints = world_hints(names, self.spec.region_masks(tuple(names))) if method.hint_strength else ()
            composer_class = RoutedComposer if method.rule != "softmin" else BranchComposer
            composer = composer_class(method.params(len(concepts)), labels, prediction="eps",
                                      keep_weight_maps=keep_weight_maps, hints=hints,
                                      **({"rule": method.rule} if method.rule != "softmin" else {}))
            is_uncond = [False] * b + [True] * b
            image_of_row = list(range(b)) * 2

            def eps_fn(x, i, t):
                state["x"], state["t"] = torch.cat([x, x]), t
                e = composer(state["x"], is_uncond, image_of_row, step=i, evaluate=evaluate)
                return e[:b], e[b:]
            runner_class = AttentionPerLoraRunner if method.attention_per_lora else BranchRunner
            with runner_class(loras, [strength] * len(loras)) as runner:
                x = self._ddim(x, ts, eps_fn, cfg, progress)
            info["lora_names"] = names
            if keep_weight_maps:
                info["weight_maps"] = composer.mean_weight_maps()
        info["evals_per_image"] = self.evals / b
        info["seconds_per_image"] = (time.perf_counter() - t0) / b
        return x.clamp(-1, 1), info

    @staticmethod
    def _ddim(x, ts, eps_fn, cfg, progress=None):
        ac = ALPHAS_CUMPROD
        for i, t in enumerate(ts):
            ec, eu = eps_fn(x, i, t)
            eps = eu + cfg * (ec - eu)
            a = ac[t]
            a_prev = ac[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0)
            x0 = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
            if progress is not None:
                progress()
        return x
