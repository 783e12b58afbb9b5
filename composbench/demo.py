"""Compose concept LoRAs with the bundled tiny model; write the image, weight maps and a comparison.

    python -m composbench.demo --concepts zorbot,tophat,sunorb

Concepts (one per category at most): characters zorbot, kittra, glimmy; clothing tophat,
stripescarf; styles pixelart, scanlines; backgrounds brickwall, starnight; objects sunorb,
pinetree. Two characters (e.g. --concepts zorbot,kittra,tophat) compose in the two-figure world
(duo.py: its own base model and LoRAs; no objects there), where the two character LoRAs compete for
the two figures. Writes to outputs/demo/<concepts>/: side_by_side.png (prompt only | Merge | the
extension's default mode, Stack | with --hints, Stack with region hints | LoRAtorio, each with the
classifier's verdict), loratorio.png (the LoRAtorio image) and weight_maps.png (one heatmap per LoRA:
its SoftMin weight, the share of each patch it owns, averaged over the steps). The routing panel runs
the paper's method (mode LoRAtorio, weights sum) unless --mode / --weights say otherwise. Runs offline
on CPU in well under a minute.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from lib_loratorio.params import LoratorioParams

from . import duo, world
from .sampling import CFG, STEPS, Bench, Method
from .worlds import DUO, SOLO


def _heat(v: np.ndarray) -> np.ndarray:
    """[H, W] in [0, 1] -> RGB uint8 (dark blue -> yellow)."""
    stops = np.array([[0.05, 0.03, 0.3], [0.2, 0.4, 0.8], [0.2, 0.75, 0.5], [0.99, 0.9, 0.15]])
    x = np.clip(v, 0, 1) * (len(stops) - 1)
    i = np.minimum(x.astype(int), len(stops) - 2)
    f = (x - i)[..., None]
    return ((stops[i] * (1 - f) + stops[i + 1] * f) * 255).astype(np.uint8)


def _to_pil(img: torch.Tensor, scale: int):
    from PIL import Image
    a = ((img.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(a).resize((a.shape[1] * scale, a.shape[0] * scale), Image.NEAREST)


def _verdict(spec, concepts: tuple[str, ...]):
    """image batch -> (short, long) text of what the world's classifier finds in the first image."""
    if spec is DUO:
        from .duo_scoring import DuoScorer, measures
        scorer = DuoScorer()

        def duo_verdict(images):
            figures, whole, _ = scorer.decide(images)
            m = measures(figures, whole, concepts)
            sides = [[c for j, c in enumerate(duo.FIGURE_CONCEPTS) if figures[0, k, j]] for k in (0, 1)]
            ok = "two characters apart" if m["success"][0] else ("hybrid" if m["hybrid"][0] else "not apart")
            return f"{ok}, recall {m['recall'][0]:.2f}", f"{ok}; left {sides[0]}, right {sides[1]}; " \
                f"recall {m['recall'][0]:.2f}"
        return duo_verdict
    from .scoring import Scorer
    scorer = Scorer()

    def solo_verdict(images):
        sc = scorer.score(images, concepts)
        found = [c for c in concepts if sc["per_concept"][c][0] > 0]
        return f"recall {sc['recall'][0]:.2f}", f"recall {sc['recall'][0]:.2f}  detected {found}"
    return solo_verdict


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concepts", default="zorbot,tophat,sunorb")
    ap.add_argument("--seed", type=int, default=111)
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--cfg", type=float, default=CFG)
    ap.add_argument("--patch", type=int, default=2,
                    help="LoRAtorio patch size (2 = the sweep's choice; the extension's default is 4)")
    ap.add_argument("--temperature", type=float, default=0.05)
    ap.add_argument("--recenter", type=float, default=0.5)
    ap.add_argument("--mode", default="LoRAtorio", choices=("LoRAtorio", "LoRAtorio Fast"),
                    help="the routing mode of the last panel, whose weight maps are drawn (the default mode, "
                         "Stack, routes nothing)")
    ap.add_argument("--weights", default="sum", choices=("max", "sum"),
                    help="the routing panel's weights: sum, the paper's blend; max, a patch's owner at full strength")
    ap.add_argument("--hints", action="store_true",
                    help="two characters: also Stack with region hints, the first character left, the second right")
    ap.add_argument("--strength", type=float, default=1.0)
    ap.add_argument("--scale", type=int, default=8, help="upscaling of the 32x32 images")
    ap.add_argument("--out", default="outputs/demo")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from PIL import Image, ImageDraw
    from tqdm import tqdm

    concepts = tuple(c.strip() for c in args.concepts.split(",") if c.strip())
    unknown = [c for c in concepts if c not in world.ALL_CONCEPTS]
    if unknown:
        raise SystemExit(f"unknown concept(s) {unknown}; choose from {', '.join(world.ALL_CONCEPTS)}")
    cats = [world.CATEGORY_OF[c] for c in concepts]
    spec = DUO if cats.count("character") == 2 else SOLO
    if spec is DUO and "object" in cats:
        raise SystemExit("the two-figure world has no objects: leave sunorb and pinetree out with two characters")
    if len(set(cats)) != len(cats) - (spec is DUO):
        raise SystemExit("choose at most one concept per category (two characters for the two-figure world)")
    concepts = tuple(sorted(concepts, key=lambda c: world.CATEGORIES.index(world.CATEGORY_OF[c])))
    out = Path(args.out) / "_".join(concepts)
    out.mkdir(parents=True, exist_ok=True)

    bench = Bench(spec)
    n = len(concepts)
    default = LoratorioParams().mode
    lora_method = Method(args.mode, "composer", mode=args.mode, patch_size=args.patch,
                         temperature=args.temperature, recenter=args.recenter, weight_norm=args.weights)
    methods = [Method("prompt only", "base"), Method("Merge", "merge"), Method(default, "composer", mode=default)]
    if args.hints:
        if spec is not DUO:
            raise SystemExit("--hints is for two characters (the two-figure world)")
        methods.append(Method(f"{default} + hints", "composer", mode=default, hint_strength=8.0))
    methods.append(lora_method)
    kw = dict(steps=args.steps, cfg=args.cfg, strength=args.strength)
    results = {}
    with tqdm(total=args.steps * len(methods), desc="denoising", unit="step") as bar:
        for m in methods:
            bar.set_postfix_str(m.name)
            results[m.name] = bench.sample(m, concepts, [args.seed], keep_weight_maps=m is lora_method,
                                           progress=lambda: bar.update(1), **kw)

    verdict = _verdict(spec, concepts)
    img, info = results[lora_method.name]
    _to_pil(img[0], args.scale).save(out / "loratorio.png")

    # weight maps: each LoRA's SoftMin weight averaged over the steps
    maps = info["weight_maps"][0].numpy()  # [N, H, W]
    s = args.scale
    tile = world.SIZE * s
    sheet = Image.new("RGB", (tile * (n + 1), tile + 20), "white")
    d = ImageDraw.Draw(sheet)
    sheet.paste(_to_pil(img[0], s), (0, 20))
    d.text((2, 4), lora_method.name, fill="black")
    for i, c in enumerate(concepts):
        heat = Image.fromarray(_heat(maps[i])).resize((tile, tile), Image.NEAREST)
        sheet.paste(heat, (tile * (i + 1), 20))
        d.text((tile * (i + 1) + 2, 4), f"{c}  mean {maps[i].mean():.2f}", fill="black")
    sheet.save(out / "weight_maps.png")

    # side by side with the classifier's verdict
    side = Image.new("RGB", (tile * len(methods), tile + 34), "white")
    d = ImageDraw.Draw(side)
    lines = []
    for j, m in enumerate(methods):
        im, inf = results[m.name]
        short, long = verdict(im)
        side.paste(_to_pil(im[0], s), (tile * j, 34))
        d.text((tile * j + 2, 2), f"{m.name}: {short}", fill="black")
        d.text((tile * j + 2, 16), f"{inf['evals_per_image']:.0f} evals, {inf['seconds_per_image']:.1f}s", fill="black")
        lines.append(f"{m.name:14s} {long}  {inf['evals_per_image']:.0f} UNet evals  {inf['seconds_per_image']:.1f}s")
    side.save(out / "side_by_side.png")
    print(f"prompt: {spec.composition_prompt(concepts)!r} ({spec.name} world), seed {args.seed}")
    print("\n".join(lines))
    print(f"mean {lora_method.name} weight per LoRA: "
          + ", ".join(f"{c} {maps[i].mean():.2f}" for i, c in enumerate(concepts)))
    print(f"wrote {out}/loratorio.png, weight_maps.png, side_by_side.png")
    return out


if __name__ == "__main__":
    main()
