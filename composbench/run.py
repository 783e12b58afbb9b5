"""The offline composition benchmark (a miniature ComposLoRA), the parameter sweep, diagnostics.

    python -m composbench.run --quick            # 48 compositions (12 per N, seed 0), ~10 min on 2 cores
    python -m composbench.run                    # all 240 compositions
    python -m composbench.run --sweep            # patch size x temperature x re-centring on 12 compositions
    python -m composbench.run --diagnose         # do LoRAs stay close to the base outside their concept?
    python -m composbench.run --calibrate        # the classifier on generated images (ceiling and floor)

Writes results.json, results.md, recall.png (plot) and grid.png (same prompts and seeds across
methods) under --out (default outputs/bench, or outputs/bench-quick / outputs/sweep).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from . import world
from .sampling import STEPS, Method, standard_methods

_BENCH = None


def _init_worker() -> None:
    global _BENCH
    torch.set_num_threads(1)
    from .sampling import Bench
    _BENCH = Bench()


def _job(args):
    method, comp, seeds, steps = args
    imgs, info = _BENCH.sample(method, comp, seeds, steps=steps)
    return method.name, comp, list(seeds), ((imgs + 1) * 127.5).round().clamp(0, 255).to(torch.uint8), \
        info["evals_per_image"], info["seconds_per_image"]


def sample_compositions(n_per_n: int, seed: int = 0) -> list[tuple[str, ...]]:
    comps = world.compositions()
    rng = np.random.default_rng(seed)
    out = []
    for n in range(2, 6):
        group = [c for c in comps if len(c) == n]
        idx = rng.choice(len(group), size=min(n_per_n, len(group)), replace=False)
        out += [group[i] for i in sorted(idx)]
    return out


def generate(methods: Sequence[Method], comps: Sequence[tuple[str, ...]], seeds_per_comp: int = 1,
             steps: int = STEPS, jobs: int = 2, base_seed: int = 111) -> list[dict]:
    """Every method on every composition; one record per (method, composition)."""
    tasks = [(m, comp, [base_seed + k for k in range(seeds_per_comp)], steps) for comp in comps for m in methods]
    # costly tasks first for better load balance
    tasks.sort(key=lambda t: -(len(t[1]) * (12 if t[0].pool else 1)))
    records = []
    t0 = time.time()
    try:
        from tqdm import tqdm
        bar = tqdm(total=len(tasks), desc="images", unit="task")
    except ImportError:  # pragma: no cover
        bar = None
    if jobs > 1:
        import multiprocessing as mp
        ctx = mp.get_context("spawn")
        with ctx.Pool(jobs, initializer=_init_worker) as pool:
            for r in pool.imap_unordered(_job, tasks):
                records.append(r)
                bar and bar.update(1)
    else:
        _init_worker()
        for t in tasks:
            records.append(_job(t))
            bar and bar.update(1)
    bar and bar.close()
    print(f"generated {len(tasks)} tasks in {time.time() - t0:.0f}s", flush=True)
    return [dict(method=r[0], comp=tuple(r[1]), seeds=r[2], images=r[3], evals=r[4], secs=r[5]) for r in records]


def score(records: list[dict]) -> None:
    from .scoring import Scorer
    scorer = Scorer()
    for r in records:
        s = scorer.score(r["images"].float() / 127.5 - 1, r["comp"])
        r["recall"] = s["recall"].tolist()
        r["spurious"] = s["spurious"].tolist()
        r["confidence"] = s["confidence"].tolist()
        r["features"] = s["features"]
        r["per_category"] = {world.CATEGORY_OF[c]: v.tolist() for c, v in s["per_concept"].items()}


def _mean(xs):
    xs = [x for x in xs]
    return float(np.mean(xs)) if xs else float("nan")


def summarize(records: list[dict], method_names: Sequence[str]) -> dict:
    from .scoring import Scorer, frechet, reference_renders
    comps = sorted({r["comp"] for r in records}, key=lambda c: (len(c), c))
    n_img = len(records[0]["seeds"])
    ref = reference_renders([c for c in comps for _ in range(n_img)])
    _, ref_feat = Scorer().probs_and_features(ref)
    summary = {}
    for m in method_names:
        rs = [r for r in records if r["method"] == m]
        if not rs:
            continue
        row = {}
        for n in range(2, 6):
            vals = [v for r in rs if len(r["comp"]) == n for v in r["recall"]]
            row[f"N={n}"] = _mean(vals) if vals else None
        allv = [v for r in rs for v in r["recall"]]
        row["avg"] = _mean(allv)
        row["sem"] = float(np.std(allv) / math.sqrt(max(1, len(allv))))
        row["spurious"] = _mean(v for r in rs for v in r["spurious"])
        row["confidence"] = _mean(v for r in rs for v in r["confidence"])
        row["fd"] = frechet(torch.cat([r["features"] for r in rs]), ref_feat)
        row["evals_per_image"] = _mean(r["evals"] for r in rs)
        row["seconds_per_image"] = _mean(r["secs"] for r in rs)
        row["per_category"] = {cat: _mean(v for r in rs for v in r["per_category"].get(cat, []))
                               for cat in world.CATEGORIES}
        row["n_images"] = len(allv)
        summary[m] = row
    return summary


def markdown(summary: dict, title: str) -> str:
    floor = summary.get("prompt only", {})
    lines = [f"### {title}", "",
             "Concept recall (fraction of requested concepts the classifier detects). The 'prompt only' row "
             "is the base model with the joined trigger words: it knows no trigger, so its recall is the "
             "classifier's false-positive floor. 'spurious' = fraction of NOT requested concepts detected.", "",
             "| method | N=2 | N=3 | N=4 | N=5 | avg (± s.e.) | avg − floor | spurious | confidence | FD "
             "| evals/img | s/img |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def f(v):
        return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"
    for m, r in summary.items():
        cells = [f(r[f"N={n}"]) for n in range(2, 6)]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {r['avg']:.3f} ± {r['sem']:.3f} | "
                     f"{r['avg'] - floor.get('avg', 0):+.3f} | {r['spurious']:.3f} | {r['confidence']:.3f} | "
                     f"{r['fd']:.2f} | {r['evals_per_image']:.0f} | {r['seconds_per_image']:.2f} |")
    if floor:
        lines += ["", "False-positive floor per N (prompt only): " + ", ".join(
            f"N={n}: {f(floor[f'N={n}'])}" for n in range(2, 6))]
    lines += ["", "Recall per category (requested concepts of that category detected):", "",
              "| method | " + " | ".join(world.CATEGORIES) + " |", "|---|" + "---|" * len(world.CATEGORIES)]
    for m, r in summary.items():
        lines.append(f"| {m} | " + " | ".join(f(r["per_category"][c]) for c in world.CATEGORIES) + " |")
    return "\n".join(lines) + "\n"


# --- pictures (PIL only) ---------------------------------------------------------------------------
def _font():
    from PIL import ImageFont
    return ImageFont.load_default()


def write_grid(records: list[dict], method_names: Sequence[str], comps: Sequence[tuple[str, ...]], path: Path,
               scale: int = 3) -> None:
    from PIL import Image, ImageDraw
    cell = world.SIZE * scale
    label_w, head_h = 230, 28
    img = Image.new("RGB", (label_w + cell * len(method_names), head_h + cell * len(comps)), "white")
    draw = ImageDraw.Draw(img)
    for j, m in enumerate(method_names):
        draw.text((label_w + j * cell + 2, 2), m[:16], fill="black", font=_font())
        if len(m) > 16:
            draw.text((label_w + j * cell + 2, 14), m[16:32], fill="black", font=_font())
    index = {(r["method"], r["comp"]): r for r in records}
    for i, comp in enumerate(comps):
        draw.text((2, head_h + i * cell + cell // 2 - 6), world.composition_prompt(comp), fill="black", font=_font())
        for j, m in enumerate(method_names):
            r = index.get((m, comp))
            if r is None:
                continue
            a = r["images"][0].permute(1, 2, 0).numpy()
            tile = Image.fromarray(a).resize((cell, cell), Image.NEAREST)
            img.paste(tile, (label_w + j * cell, head_h + i * cell))
            draw.text((label_w + j * cell + 2, head_h + i * cell + 2), f"{r['recall'][0]:.2f}", fill="white",
                      font=_font())
    img.save(path)


def write_plot(summary: dict, path: Path) -> None:
    """Recall against N, one line per method, floor dashed."""
    from PIL import Image, ImageDraw
    w, h, pad = 720, 420, 50
    img = Image.new("RGB", (w + 260, h), "white")
    d = ImageDraw.Draw(img)
    d.line([(pad, h - pad), (w - 10, h - pad)], fill="black")
    d.line([(pad, 10), (pad, h - pad)], fill="black")
    for k in range(0, 11, 2):
        y = h - pad - (h - pad - 10) * k / 10
        d.text((5, y - 6), f"{k / 10:.1f}", fill="black", font=_font())
        d.line([(pad, y), (w - 10, y)], fill=(225, 225, 225))
    xs = {n: pad + (w - pad - 40) * (n - 2) / 3 + 20 for n in range(2, 6)}
    for n, x in xs.items():
        d.text((x - 10, h - pad + 8), f"N={n}", fill="black", font=_font())
    palette = [(0, 0, 0), (228, 26, 28), (55, 126, 184), (77, 175, 74), (152, 78, 163), (255, 127, 0),
               (166, 86, 40), (247, 129, 191), (100, 100, 100), (0, 150, 150)]
    for idx, (m, r) in enumerate(summary.items()):
        col = palette[idx % len(palette)]
        pts = [(xs[n], h - pad - (h - pad - 10) * r[f"N={n}"]) for n in range(2, 6) if r[f"N={n}"] is not None]
        if len(pts) > 1:
            d.line(pts, fill=col, width=3 if m.startswith("LoRAtorio") else 2)
        for p in pts:
            d.ellipse([p[0] - 3, p[1] - 3, p[0] + 3, p[1] + 3], fill=col)
        d.text((w + 5, 20 + 18 * idx), f"{m}: {r['avg']:.3f}", fill=col, font=_font())
    d.text((pad + 5, 12), "concept recall vs N (prompt only = false-positive floor)", fill="black", font=_font())
    img.save(path)


# --- diagnostics: does a LoRA stay close to the base outside its concept? -------------------------------
@torch.no_grad()
def diagnose(comps: Sequence[tuple[str, ...]], patch: int = 4, timesteps=(900, 700, 500, 300, 100),
             seed: int = 7) -> dict:
    """On noisy ground-truth renders of each composition: per LoRA, 1 - cos(eps_lora, eps_base) per
    patch inside its concept's pixels vs outside, and how often the most divergent LoRA in a patch is
    the one whose concept owns the patch (the routing LoRAtorio relies on)."""
    from lib_loratorio.branch_runner import BranchRunner
    from lib_loratorio.composition import patch_similarity

    from .model import add_noise
    from .sampling import Bench
    bench = Bench()
    rng = np.random.default_rng(seed)
    stats = {t: {"in": [], "out": [], "hit": [], "hit_nostyle": []} for t in timesteps}
    per_cat = {t: {c: {"in": [], "out": []} for c in world.CATEGORIES} for t in timesteps}
    g = torch.Generator().manual_seed(seed)
    for comp in comps:
        scene = world.random_generic(rng, {world.CATEGORY_OF[c]: c for c in comp})
        full = world.render(scene)
        masks = []
        for c in comp:  # pixels that change when the concept is removed
            cats = {k: v for k, v in scene.concepts.items() if v != c}
            other = world.Scene(**{**scene.__dict__, "concepts": cats})
            masks.append(torch.from_numpy(np.abs(world.render(other) - full).sum(-1) > 0.05).float())
        x0 = world.to_tensor_batch([full])
        n = len(comp)
        loras = [bench.bound[c] for c in comp]
        ctx = bench.te.encode([world.composition_prompt(comp)])
        for t in timesteps:
            noise = torch.randn(x0.shape, generator=g)
            xt = add_noise(x0, noise, torch.tensor([t]))
            with BranchRunner(loras, [1.0] * n) as runner:
                with runner.rows(torch.arange(n + 1)):
                    eps = bench.unet(xt.expand(n + 1, -1, -1, -1), torch.full((n + 1,), t),
                                     ctx.expand(n + 1, -1, -1)).sample
            sim = patch_similarity(eps[1:].unsqueeze(1), eps[:1], patch)[:, 0]  # [n, h, w]
            cover = torch.stack([torch.nn.functional.avg_pool2d(m[None, None], patch)[0, 0] for m in masks])
            for i, c in enumerate(comp):
                inside = cover[i] > 0.5
                outside = cover[i] < 0.05
                if inside.any():
                    stats[t]["in"].append(float((1 - sim[i][inside]).mean()))
                    per_cat[t][world.CATEGORY_OF[c]]["in"].append(float((1 - sim[i][inside]).mean()))
                if outside.any():
                    stats[t]["out"].append(float((1 - sim[i][outside]).mean()))
                    per_cat[t][world.CATEGORY_OF[c]]["out"].append(float((1 - sim[i][outside]).mean()))
            # routing: owner = non-style concept covering most of the patch
            nostyle = [i for i, c in enumerate(comp) if world.CATEGORY_OF[c] != "style"]
            cov_ns = cover[nostyle]
            owner = torch.tensor(nostyle)[cov_ns.argmax(0)]
            valid = cov_ns.max(0).values > 0.5
            pick_all = sim.argmin(0)
            pick_ns = torch.tensor(nostyle)[sim[nostyle].argmin(0)]
            if valid.any():
                stats[t]["hit"].append(float((pick_all == owner)[valid].float().mean()))
                stats[t]["hit_nostyle"].append(float((pick_ns == owner)[valid].float().mean()))
    out = {}
    for t in timesteps:
        s = stats[t]
        out[str(t)] = {"divergence_inside": _mean(s["in"]), "divergence_outside": _mean(s["out"]),
                       "routing_accuracy": _mean(s["hit"]), "routing_accuracy_without_style": _mean(s["hit_nostyle"]),
                       "per_category": {c: (_mean(v["in"]), _mean(v["out"])) for c, v in per_cat[t].items()}}
    return out


def diagnose_markdown(d: dict) -> str:
    lines = ["### Do LoRA predictions stay close to the base model outside their concept?", "",
             "Noisy ground-truth renders of the compositions, composition prompt, 4x4 patches. "
             "Divergence = 1 − cos(eps_LoRA, eps_base) per patch; inside = patches mostly covered by the "
             "LoRA's concept (pixels that change when the concept is removed), outside = patches it does not "
             "touch. Routing accuracy = how often the most divergent LoRA in a patch is the one whose concept "
             "owns it (chance ≈ 1/N).", "",
             "| t | divergence inside | divergence outside | routing acc. | routing acc. (style LoRA excluded) |",
             "|---|---|---|---|---|"]
    for t, r in d.items():
        lines.append(f"| {t} | {r['divergence_inside']:.5f} | {r['divergence_outside']:.5f} | "
                     f"{r['routing_accuracy']:.3f} | {r['routing_accuracy_without_style']:.3f} |")
    lines += ["", "Per category, divergence inside / outside:", "",
              "| t | " + " | ".join(world.CATEGORIES) + " |", "|---|" + "---|" * len(world.CATEGORIES)]
    for t, r in d.items():
        lines.append(f"| {t} | " + " | ".join(f"{a:.5f} / {b:.5f}" for a, b in r["per_category"].values()) + " |")
    return "\n".join(lines) + "\n"


# --- calibration: the classifier on generated images ------------------------------------------------
@torch.no_grad()
def calibrate(seeds: int = 8, steps: int = STEPS, out: Optional[Path] = None) -> dict:
    """Single-LoRA generations (LoRA alone, its trigger as prompt: the best a composition can hope
    for) and base-model generations (generic captions and bare trigger words: false positives)."""
    from .sampling import Bench
    from .scoring import Scorer
    bench, scorer = Bench(), Scorer()
    seed_list = [500 + k for k in range(seeds)]
    single, floor, tiles = {}, {}, []
    for c in world.ALL_CONCEPTS:
        imgs, _ = bench.sample(Method("LoRAtorio", "composer"), (c,), seed_list, steps=steps)
        single[c] = float(scorer.score(imgs, (c,))["recall"].mean())
        base, _ = bench.sample(Method("prompt only", "base"), (c,), seed_list, steps=steps)
        floor[c] = float(scorer.score(base, (c,))["recall"].mean())
        tiles.append(torch.cat([imgs, base]))
    rng = np.random.default_rng(3)
    caps = [world.random_generic(rng).caption() for _ in range(seeds * 2)]
    generic = torch.cat([bench.sample(Method("prompt only", "base"), (), [900 + k], steps=steps, prompt=cap)[0]
                         for k, cap in enumerate(caps)])
    p, _ = scorer.probs_and_features(generic)
    fp_generic = {c: float((p[:, i] > 0.5).float().mean()) for i, c in enumerate(world.ALL_CONCEPTS)}
    res = {"single_lora_detection": single, "base_with_trigger_prompt_detection": floor,
           "base_generic_false_positive": fp_generic,
           "mean_single": float(np.mean(list(single.values()))), "mean_floor": float(np.mean(list(floor.values()))),
           "mean_fp_generic": float(np.mean(list(fp_generic.values())))}
    if out is not None:
        from PIL import Image
        rows = [torch.cat(list(t), dim=2) for t in tiles]  # each row: LoRA images then base images
        sheet = ((torch.cat(rows, dim=1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(sheet).resize((sheet.shape[1] * 2, sheet.shape[0] * 2), Image.NEAREST).save(
            out / "calibration.png")
    return res


def calibrate_markdown(r: dict) -> str:
    lines = ["### Classifier on generated images", "",
             "single LoRA = the LoRA alone with its trigger word (the ceiling a composition can reach); "
             "base + trigger = the base model with the same prompt (false-positive floor); "
             "base generic = base model with generic captions (false positives per concept).", "",
             "| concept | single LoRA detected | base + trigger detected | base generic: flagged |",
             "|---|---|---|---|"]
    for c in world.ALL_CONCEPTS:
        lines.append(f"| {c} | {r['single_lora_detection'][c]:.2f} | {r['base_with_trigger_prompt_detection'][c]:.2f} "
                     f"| {r['base_generic_false_positive'][c]:.2f} |")
    lines.append(f"| **mean** | {r['mean_single']:.3f} | {r['mean_floor']:.3f} | {r['mean_fp_generic']:.3f} |")
    return "\n".join(lines) + "\n"


# --- sweep ---------------------------------------------------------------------------------------------
def sweep_methods(patches=(2, 4, 8, 16), temps=(0.01, 0.05, 0.2), recenters=(0.0, 0.5, 1.0)) -> list[Method]:
    ms = [Method("prompt only", "base"), Method("Merge", "merge"), Method("Composite", "composer", mode="Composite")]
    for p in patches:
        for tau in temps:
            ms.append(Method(f"p={p} tau={tau} r=0.5", "composer", patch_size=p, temperature=tau, recenter=0.5))
    for r in recenters:
        if r != 0.5:
            for p in (4, 8):
                ms.append(Method(f"p={p} tau=0.05 r={r}", "composer", patch_size=p, temperature=0.05, recenter=r))
    return ms


def _write_report(out: Path, name: str, data: dict, text: str) -> dict:
    """``name``.json and ``name``.md in ``out``; the markdown is also printed."""
    (out / f"{name}.json").write_text(json.dumps(data, indent=1))
    (out / f"{name}.md").write_text(text)
    print(text)
    return data


def main(argv: Optional[list[str]] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="12 compositions per N (seeded sample) instead of all 240")
    ap.add_argument("--per-n", type=int, default=0, help="compositions per N (sampled, seed --sample-seed)")
    ap.add_argument("--sample-seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, default=1, help="images (noise seeds 111, 112, ...) per composition")
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--sweep", action="store_true", help="patch size x temperature x re-centring sweep")
    ap.add_argument("--diagnose", action="store_true", help="divergence inside/outside each concept")
    ap.add_argument("--calibrate", action="store_true", help="classifier on single-LoRA and base generations")
    ap.add_argument("--patch", type=int, default=2,
                    help="LoRAtorio patch size (2 = the sweep's choice, 1/16 of this 32-px side; "
                         "the extension's default 4 is 1/16 of an SD1.5 latent)")
    ap.add_argument("--temperature", type=float, default=0.05)
    ap.add_argument("--recenter", type=float, default=0.5)
    ap.add_argument("--methods", default="", help="comma-separated subset of method names")
    ap.add_argument("--limit", type=int, default=0, help="keep only the first K compositions (tests)")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    if args.calibrate:
        out = Path(args.out or "outputs/calibrate")
        out.mkdir(parents=True, exist_ok=True)
        r = calibrate(args.seeds if args.seeds > 1 else 8, args.steps, out)
        return _write_report(out, "calibrate", r, calibrate_markdown(r))

    if args.diagnose:
        comps = sample_compositions(args.per_n or 6, args.sample_seed)
        d = diagnose(comps)
        out = Path(args.out or "outputs/diagnose")
        out.mkdir(parents=True, exist_ok=True)
        return _write_report(out, "diagnose", d, diagnose_markdown(d))

    if args.sweep:
        per_n = args.per_n or 3
        methods = sweep_methods()
        out = Path(args.out or "outputs/sweep")
    else:
        per_n = args.per_n or (12 if args.quick else 0)
        methods = standard_methods(args.patch, args.temperature, args.recenter)
        out = Path(args.out or ("outputs/bench-quick" if args.quick else "outputs/bench"))
    if args.methods:
        keep = [s.strip() for s in args.methods.split(",")]
        methods = [m for m in methods if m.name in keep]
    # the sweep draws its own compositions (sample seed + 1), apart from the quick benchmark's
    comps = (sample_compositions(per_n, args.sample_seed + (1 if args.sweep else 0)) if per_n
             else world.compositions())
    if args.limit:
        comps = comps[::max(1, len(comps) // args.limit)][:args.limit]
    out.mkdir(parents=True, exist_ok=True)
    print(f"{len(comps)} compositions x {len(methods)} methods x {args.seeds} seed(s), {args.steps} steps -> {out}",
          flush=True)
    records = generate(methods, comps, args.seeds, args.steps, args.jobs)
    score(records)
    names = [m.name for m in methods]
    summary = summarize(records, names)
    title = (f"Sweep ({len(comps)} compositions)" if args.sweep else
             f"Composition benchmark: {len(comps)} compositions, {args.seeds} seed(s), {args.steps} DDIM steps")
    text = markdown(summary, title)
    meta = {"compositions": len(comps), "seeds": args.seeds, "steps": args.steps, "methods": names,
            "argv": argv, "classifier_threshold": 0.5}
    (out / "results.json").write_text(json.dumps({"meta": meta, "summary": summary}, indent=1))
    (out / "results.md").write_text(text)
    write_plot(summary, out / "recall.png")
    every = max(1, len(comps) // 8)
    grid_comps = sample_compositions(2, 99) if not per_n else [c for i, c in enumerate(comps) if i % every == 0][:8]
    grid_comps = [c for c in grid_comps if c in set(r["comp"] for r in records)][:8] or comps[:4]
    write_grid(records, names, grid_comps, out / "grid.png")
    print(text, flush=True)
    return summary


if __name__ == "__main__":
    main()
