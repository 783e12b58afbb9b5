"""Train the bundled artifacts, seeded: the base model, one LoRA per concept, the concept classifier.

    python -m composbench.train --what base|loras|classifier|all [--world solo|duo] [--concepts a,b] [--iters N]

One torch thread per process (the machines have 2 cores; two processes side by side is the
fastest way to train the LoRAs: ``--concepts`` splits them). Everything lands in the world's
artifacts folder (composbench/artifacts/, composbench/artifacts/duo/; worlds.py) as small fp16
safetensors files. The two-figure world's scorers are a per-figure classifier and a whole-image
classifier (duo_scoring.py). Logs go to stdout.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from . import duo, world
from .model import ARTIFACTS, T, TextEncoder, add_noise, load_base, lora_path, make_unet, save_base
from .worlds import SOLO, WORLDS, WorldSpec

# LoRA targets: attention q/k/v/out (self and cross), proj_in/out, resnet convs.
LORA_RANK = 8
_TARGET_SUFFIXES = (".to_q", ".to_k", ".to_v", ".to_out.0", ".proj_in", ".proj_out", ".conv1", ".conv2")


def _batch(rng: np.random.Generator, n: int, scene_fn, caption_fn, render=world.render):
    scenes = [scene_fn(rng) for _ in range(n)]
    x = world.to_tensor_batch([render(s) for s in scenes])
    caps = [caption_fn(rng, s) for s in scenes]
    return x, caps


def _lr(i: int, iters: int, peak: float, warm: int = 50) -> float:
    if i < warm:
        return peak * (i + 1) / warm
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (i - warm) / max(1, iters - warm))))


# ------------------------------------------------------------------------------------------------
def train_base(iters: int = 1100, batch: int = 32, seed: int = 0, log_every: int = 100,
               spec: WorldSpec = SOLO) -> None:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    unet, te = make_unet(), TextEncoder(spec.vocab, length=spec.max_tokens)
    ema = make_unet()
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False)
    params = [
        {"params": list(unet.parameters()), "weight_decay": 0.01},
        # No weight decay on the text encoder: trigger tokens never appear here and must keep
        # their random (full-scale) embeddings for the LoRAs to tell them apart.
        {"params": list(te.parameters()), "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(params, lr=2e-3)

    def caption(r, s):
        return "" if r.random() < 0.1 else s.caption()

    t0, running = time.time(), 0.0
    for i in range(iters):
        for g in opt.param_groups:
            g["lr"] = _lr(i, iters, 2e-3)
        x0, caps = _batch(rng, batch, spec.generic_scene, caption, spec.render)
        noise = torch.randn_like(x0)
        t = torch.randint(0, T, (batch,))
        pred = unet(add_noise(x0, noise, t), t, te.encode(caps)).sample
        loss = torch.mean((pred - noise) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        decay = min(0.999, (1 + i) / (10 + i))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters(), strict=True):
                pe.lerp_(p, 1 - decay)
        running += loss.item()
        if (i + 1) % log_every == 0:
            print(f"base {i + 1}/{iters} loss {running / log_every:.4f} {time.time() - t0:.0f}s", flush=True)
            running = 0.0
    save_base(ema, te, spec.root / "base.safetensors")
    print(f"saved {spec.root / 'base.safetensors'} in {time.time() - t0:.0f}s", flush=True)


# ------------------------------------------------------------------------------------------------
class _LoraHook:
    """Trainable rank-r LoRA on one Linear / Conv2d through a forward hook (weights untouched)."""

    def __init__(self, name: str, module: nn.Module, rank: int, gen: torch.Generator) -> None:
        self.name, self.module = name, module
        w = module.weight
        if w.ndim == 4:
            out_c, in_c, kh, kw = w.shape
            self.down = nn.Parameter(torch.randn(rank, in_c, kh, kw, generator=gen) / math.sqrt(in_c * kh * kw))
            self.up = nn.Parameter(torch.zeros(out_c, rank, 1, 1))
        else:
            out_c, in_c = w.shape
            self.down = nn.Parameter(torch.randn(rank, in_c, generator=gen) / math.sqrt(in_c))
            self.up = nn.Parameter(torch.zeros(out_c, rank))
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        x = args[0]
        if self.down.ndim == 4:
            h = nn.functional.conv2d(x, self.down, None, module.stride, module.padding)
            return output + nn.functional.conv2d(h, self.up)
        return output + nn.functional.linear(nn.functional.linear(x, self.down), self.up)

    def kohya_tensors(self) -> dict[str, torch.Tensor]:
        key = "lora_unet_" + self.name.replace(".", "_")
        return {f"{key}.lora_down.weight": self.down.detach().half().contiguous(),
                f"{key}.lora_up.weight": self.up.detach().half().contiguous(),
                f"{key}.alpha": torch.tensor(float(self.down.shape[0])).half()}


def lora_targets(unet: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in unet.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv2d)) and n.endswith(_TARGET_SUFFIXES)]


def concept_caption(rng: np.random.Generator, scene: world.Scene) -> str:
    r = rng.random()
    if r < 0.1:
        return ""
    return scene.caption(with_generic=r >= 0.5)


def train_lora(concept: str, iters: int = 500, batch: int = 16, seed: int = 0, lr: float = 3e-3,
               log_every: int = 100, spec: WorldSpec = SOLO) -> None:
    from safetensors.torch import save_file
    cat = world.CATEGORY_OF[concept]
    seed = seed + 1000 * (1 + world.ALL_CONCEPTS.index(concept))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    unet, te = load_base(spec.root / "base.safetensors")
    hooks = [_LoraHook(n, m, LORA_RANK, gen) for n, m in lora_targets(unet)]
    params = [p for h in hooks for p in (h.down, h.up)]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    t0, running = time.time(), 0.0
    for i in range(iters):
        for g in opt.param_groups:
            g["lr"] = _lr(i, iters, lr)
        x0, caps = _batch(rng, batch, lambda r: spec.concept_scene(r, concept), concept_caption, spec.render)
        noise = torch.randn_like(x0)
        t = torch.randint(0, T, (batch,))
        with torch.no_grad():
            cond = te.encode(caps)
        pred = unet(add_noise(x0, noise, t), t, cond).sample
        loss = torch.mean((pred - noise) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running += loss.item()
        if (i + 1) % log_every == 0:
            print(f"lora {concept} {i + 1}/{iters} loss {running / log_every:.4f} {time.time() - t0:.0f}s", flush=True)
            running = 0.0
    tensors = {}
    for h in hooks:
        tensors.update(h.kohya_tensors())
        h.handle.remove()
    path = lora_path(concept, spec.root)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={
        "ss_network_module": "networks.lora", "ss_network_dim": str(LORA_RANK),
        "ss_network_alpha": str(LORA_RANK), "trigger": concept, "category": cat,
        "ss_steps": str(iters), "composbench_seed": str(seed)})
    print(f"saved {path} in {time.time() - t0:.0f}s", flush=True)


# ------------------------------------------------------------------------------------------------
class ConceptClassifier(nn.Module):
    """Multi-label CNN: 11 concept logits from a 32x32 image in [-1, 1]."""

    def __init__(self, n: int = len(world.ALL_CONCEPTS)) -> None:
        super().__init__()

        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.GroupNorm(8, o), nn.SiLU(),
                                 nn.Conv2d(o, o, 3, padding=1), nn.GroupNorm(8, o), nn.SiLU())
        self.features = nn.Sequential(block(3, 32), nn.MaxPool2d(2), block(32, 64), nn.MaxPool2d(2),
                                      block(64, 96), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(96, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Imperfections of generated images (calibrated by eye on the tiny model's samples): colour
    casts and per-channel gains, speckle noise per pixel and channel, small shifts, slight blur."""
    b = x.shape[0]
    shift = torch.randint(-2, 3, (2,), generator=gen)
    x = torch.roll(x, shifts=(int(shift[0]), int(shift[1])), dims=(2, 3))
    gain = 1 + 0.6 * (torch.rand(b, 3, 1, 1, generator=gen) - 0.5)
    bias = 0.5 * (torch.rand(b, 3, 1, 1, generator=gen) - 0.5)
    x = x * gain + bias
    blur = torch.rand(b, 1, 1, 1, generator=gen) < 0.3
    k = torch.tensor([0.25, 0.5, 0.25])
    k2 = (k[:, None] * k[None, :]).expand(3, 1, 3, 3)
    xb = nn.functional.conv2d(nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), k2, groups=3)
    x = torch.where(blur, xb, x)
    sigma = 0.35 * torch.rand(b, 1, 1, 1, generator=gen) ** 1.5
    x = x + torch.randn(x.shape, generator=gen) * sigma
    # sparse strong speckles (single saturated pixels, as the sampler leaves them)
    speck = torch.rand(b, 1, *x.shape[2:], generator=gen) < 0.04 * torch.rand(b, 1, 1, 1, generator=gen)
    x = torch.where(speck, torch.rand(x.shape, generator=gen) * 2 - 1, x)
    return x.clamp(-1.2, 1.2)


def render_labelled(n: int, seed: int):
    rng = np.random.default_rng(seed)
    scenes = [world.random_labelled(rng) for _ in range(n)]
    x = world.to_tensor_batch([world.render(s) for s in scenes])
    y = torch.from_numpy(np.stack([world.labels_of(s) for s in scenes]))
    return x, y


def _fit(make: Callable[[], nn.Module], data: tuple, held_out: tuple, names: Sequence[str], path: Path, *,
         epochs: int = 5, seed: int = 0, view: Callable[[torch.Tensor], torch.Tensor] = lambda x: x) -> None:
    """Train a multi-label classifier on augmented renders and save it with its held-out accuracy.

    ``view`` turns a batch of images into the classifier's inputs (e.g. one crop per figure); the
    labels ``data[1]`` are already laid out like its outputs ([B, ..., len(names)])."""
    from safetensors.torch import save_file
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.time()
    clf = make()
    (x, y), (xt, yt) = data, held_out
    y, yt = y.reshape(-1, len(names)), yt.reshape(-1, len(names))
    opt = torch.optim.AdamW(clf.parameters(), lr=2e-3, weight_decay=1e-4)
    steps, bs = epochs * (len(x) // 128), 128
    for i in range(steps):
        for g in opt.param_groups:
            g["lr"] = _lr(i, steps, 2e-3)
        idx = torch.randint(0, len(x), (bs,), generator=gen)
        logits = clf(view(_augment(x[idx], gen)))
        loss = nn.functional.binary_cross_entropy_with_logits(logits, y.view(len(x), -1)[idx].view(-1, len(names)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (i + 1) % 100 == 0:
            print(f"{path.stem} {i + 1}/{steps} loss {loss.item():.4f} {time.time() - t0:.0f}s", flush=True)
    clf.eval()
    with torch.no_grad():
        clean = torch.cat([clf(view(xt[i:i + 500])) for i in range(0, len(xt), 500)]).sigmoid() > 0.5
        aug = torch.cat([clf(view(_augment(xt[i:i + 500], gen))) for i in range(0, len(xt), 500)]).sigmoid() > 0.5
    acc = (clean == yt.bool()).float().mean(0)
    acc_aug = (aug == yt.bool()).float().mean(0)
    exact = (clean == yt.bool()).all(1).float().mean()
    report = {c: round(float(a), 4) for c, a in zip(names, acc, strict=True)}
    print("held-out per-concept accuracy (clean renders):", report)
    print(f"held-out mean accuracy clean {acc.mean():.4f}, augmented {acc_aug.mean():.4f}, exact-match {exact:.4f}")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half().contiguous() for k, v in clf.state_dict().items()}, str(path),
              metadata={"concepts": " ".join(names), "heldout_acc": f"{acc.mean():.4f}",
                        "heldout_acc_augmented": f"{acc_aug.mean():.4f}", "heldout_exact": f"{exact:.4f}",
                        "per_concept": " ".join(f"{c}={a}" for c, a in report.items())})
    print(f"saved {path} in {time.time() - t0:.0f}s", flush=True)


def train_classifier(n_train: int = 16000, n_test: int = 2000, epochs: int = 5, seed: int = 0) -> None:
    t0 = time.time()
    data, held_out = render_labelled(n_train, seed + 1), render_labelled(n_test, seed + 2)
    print(f"rendered {n_train}+{n_test} in {time.time() - t0:.0f}s", flush=True)
    _fit(ConceptClassifier, data, held_out, world.ALL_CONCEPTS, ARTIFACTS / "classifier.safetensors",
         epochs=epochs, seed=seed)


def train_duo_classifiers(n_train: int = 16000, n_test: int = 2000, epochs: int = 5, seed: int = 0) -> None:
    """The two-figure world's scorers: one classifier per figure crop (identities and clothing, blends
    labelled with both characters) and one for the whole image (background and style)."""
    from . import duo_scoring
    t0 = time.time()
    rendered = []
    for n, s in ((n_train, seed + 1), (n_test, seed + 2)):
        rng = np.random.default_rng(s)
        scenes = [duo.random_labelled(rng) for _ in range(n)]
        rendered.append((world.to_tensor_batch([duo.render(sc) for sc in scenes]),
                         torch.from_numpy(np.stack([duo.slot_labels(sc) for sc in scenes])),
                         torch.from_numpy(np.stack([duo.global_labels(sc) for sc in scenes]))))
    print(f"rendered {n_train}+{n_test} in {time.time() - t0:.0f}s", flush=True)
    (x, ys, yg), (xt, yst, ygt) = rendered
    root = WORLDS["duo"].root
    _fit(duo_scoring.figure_classifier, (x, ys), (xt, yst), duo.FIGURE_CONCEPTS,
         root / duo_scoring.FIGURE_CLASSIFIER, epochs=epochs, seed=seed, view=duo_scoring.figure_crops)
    _fit(lambda: ConceptClassifier(len(duo.GLOBAL_CONCEPTS)), (x, yg), (xt, ygt), duo.GLOBAL_CONCEPTS,
         root / duo_scoring.GLOBAL_CLASSIFIER, epochs=epochs, seed=seed)


def load_classifier(path: Path = ARTIFACTS / "classifier.safetensors", clf: Optional[nn.Module] = None) -> nn.Module:
    """A saved classifier (by default the single-figure world's concept classifier), in eval mode."""
    from safetensors.torch import load_file
    clf = clf if clf is not None else ConceptClassifier()
    clf.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return clf.eval().requires_grad_(False)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--what", default="all", choices=["base", "loras", "classifier", "all"])
    ap.add_argument("--world", default="solo", choices=sorted(WORLDS),
                    help="solo: the single-figure world (artifacts/); duo: the two-figure world (artifacts/duo/)")
    ap.add_argument("--concepts", default="", help="comma-separated subset of LoRAs to train")
    ap.add_argument("--iters", type=int, default=0, help="override iterations (base or LoRA)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = WORLDS[args.world]
    # the two-figure world needs more: longer captions, two slots, identities at either side
    base_iters, lora_iters = (1100, 500) if spec is SOLO else (2000, 800)
    if args.what in ("base", "all"):
        train_base(args.iters or base_iters, spec=spec)
    if args.what in ("classifier", "all"):
        (train_classifier if spec is SOLO else train_duo_classifiers)()
    if args.what in ("loras", "all"):
        names = [c for c in args.concepts.split(",") if c] or list(spec.concepts)
        for c in names:
            train_lora(c, args.iters or lora_iters, spec=spec)


if __name__ == "__main__":
    main()
