"""The offline composition benchmark (a miniature ComposLoRA), the parameter sweep, diagnostics.

The protocol (defaults): the dev part of the fixed split (protocol.py; 80 compositions, for tuning
and ablations) or its test part (160, reported, never tuned on), 3 noise seeds per composition
(111, 112, 113, shared by all methods), LoRA strength 0.8 and Switch changing LoRA every step, as
in ComposLoRA. Standard errors take the composition as the unit (seeds averaged first); every
method is also compared with Merge pair-wise, composition by composition. Recall is scored twice:
by the CNN classifier (scoring.py) and by the hand-written detector (detector.py).

    python -m composbench.run --part dev --quick  # 44 dev compositions (12 per N; N=2 has 8), 3 seeds
    python -m composbench.run --part dev          # all 80 dev compositions
    python -m composbench.run --part test         # the reported numbers: run once per variant
    python -m composbench.run --strength 1.0      # the second table (strength the LoRAs were trained at)
    python -m composbench.run --sweep            # patch size x temperature x re-centring on 12 dev compositions
    python -m composbench.run --diagnose         # do LoRAs stay close to the base outside their concept?
    python -m composbench.run --calibrate        # classifier and detector on generated images (ceiling and floor)
    python -m composbench.run --detector-check   # detector on renders, and its agreement with the classifier

Writes results.json, results.md, recall.png (plot) and grid.png (same prompts and seeds across
methods) under --out (default outputs/bench-<part>, or outputs/bench-<part>-quick / outputs/sweep).
Before the protocol (Nov 2026 tables in RESULTS.md): --part all --seeds 1 --strength 1 --switch-every 5.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from . import world
from .protocol import split
from .sampling import CFG, STEPS, Method, control_methods, fast_method, standard_methods, variant_methods
from .stats import comp_stats, fmt, paired_stats, signed
from .worlds import DUO, SOLO, WORLDS, WorldSpec

SEED0 = 111  # noise seeds of a composition: SEED0, SEED0 + 1, ...
PROTOCOL = {"seeds": 3, "strength": 0.8, "switch_every": 1}
DEFAULT_METHOD = "LoRAtorio Fast max"  # the extension's defaults (mode LoRAtorio Fast, weights max)

_BENCH = None


def _init_worker(world_name: str = "solo") -> None:
    global _BENCH
    torch.set_num_threads(1)
    from .sampling import Bench
    _BENCH = Bench(WORLDS[world_name])


def _job(args):
    method, comp, seeds, steps, strength = args
    routed = method.kind == "composer" and method.mode in ("LoRAtorio", "LoRAtorio Fast")
    imgs, info = _BENCH.sample(method, comp, seeds, steps=steps, strength=strength, keep_weight_maps=routed)
    maps = info.get("weight_maps")  # per image [N, H, W], the mean over the steps: who owns which region
    maps = torch.stack([maps[i] for i in range(len(seeds))]).half() if maps else None
    return method.name, comp, list(seeds), ((imgs + 1) * 127.5).round().clamp(0, 255).to(torch.uint8), \
        info["evals_per_image"], info["seconds_per_image"], maps


def sample_compositions(n_per_n: int, seed: int = 0, part: str = "all",
                        spec: WorldSpec = SOLO) -> list[tuple[str, ...]]:
    """n_per_n compositions per N (all of them where a part has fewer), drawn from ``part`` of a world."""
    comps = spec.split(part)
    rng = np.random.default_rng(seed)
    out = []
    for n in range(2, 6):
        group = [c for c in comps if len(c) == n]
        idx = rng.choice(len(group), size=min(n_per_n, len(group)), replace=False)
        out += [group[i] for i in sorted(idx)]
    return out


def generate(methods: Sequence[Method], comps: Sequence[tuple[str, ...]], seeds_per_comp: int = 1,
             steps: int = STEPS, jobs: int = 2, base_seed: int = SEED0, strength: float = 1.0,
             world_name: str = "solo") -> list[dict]:
    """Every method on every composition of a world; one record per (method, composition), all seeds."""
    tasks = [(m, comp, [base_seed + k for k in range(seeds_per_comp)], steps, strength)
             for comp in comps for m in methods]
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
        with ctx.Pool(jobs, initializer=_init_worker, initargs=(world_name,)) as pool:
            for r in pool.imap_unordered(_job, tasks):
                records.append(r)
                bar and bar.update(1)
    else:
        _init_worker(world_name)
        for t in tasks:
            records.append(_job(t))
            bar and bar.update(1)
    bar and bar.close()
    print(f"generated {len(tasks)} tasks in {time.time() - t0:.0f}s", flush=True)
    return [dict(method=r[0], comp=tuple(r[1]), seeds=r[2], images=r[3], evals=r[4], secs=r[5], maps=r[6])
            for r in records]


def score(records: list[dict]) -> None:
    """Classifier and detector scores per image of every record."""
    from . import detector
    from .scoring import Scorer
    scorer = Scorer()
    for r in records:
        x = r["images"].float() / 127.5 - 1
        s = scorer.score(x, r["comp"])
        r["recall"] = s["recall"].tolist()
        r["spurious"] = s["spurious"].tolist()
        r["confidence"] = s["confidence"].tolist()
        r["features"] = s["features"]
        r["per_category"] = {world.CATEGORY_OF[c]: v.tolist() for c, v in s["per_concept"].items()}
        det = detector.detect(x)  # [B, 11]
        cols = [world.ALL_CONCEPTS.index(c) for c in r["comp"]]
        r["recall_det"] = det[:, cols].mean(1).tolist()
        r["per_category_det"] = {world.CATEGORY_OF[c]: det[:, j].astype(float).tolist()
                                 for c, j in zip(r["comp"], cols, strict=True)}
        r["clf_detected"] = (s["probs"] > 0.5).numpy()  # [B, 11], for the agreement table
        r["det_detected"] = det


def _mean(xs):
    xs = [x for x in xs]
    return float(np.mean(xs)) if xs else float("nan")


def _per_comp(rs: list[dict], key: str, n: Optional[int] = None, cat: Optional[str] = None) -> dict:
    out = {}
    for r in rs:
        if n is not None and len(r["comp"]) != n:
            continue
        if cat is not None:
            if cat in r[key]:
                out[r["comp"]] = r[key][cat]
        else:
            out[r["comp"]] = r[key]
    return out


def agreement(records: list[dict]) -> dict:
    """Per concept, over every image of the records: how often classifier and detector agree, and
    the counts of both / classifier only / detector only / neither, and Cohen's kappa."""
    clf = np.concatenate([r["clf_detected"] for r in records])
    det = np.concatenate([r["det_detected"] for r in records])
    out = {}
    for j, c in enumerate(world.ALL_CONCEPTS):
        a, b = clf[:, j], det[:, j]
        po = float((a == b).mean())
        pe = float(a.mean() * b.mean() + (1 - a.mean()) * (1 - b.mean()))
        out[c] = {"agree": po, "both": int((a & b).sum()), "classifier_only": int((a & ~b).sum()),
                  "detector_only": int((~a & b).sum()), "neither": int((~a & ~b).sum()),
                  "kappa": (po - pe) / (1 - pe) if pe < 1 else float("nan")}
    out["all"] = {"agree": float((clf == det).mean()), "images": int(len(clf))}
    return out


def summarize(records: list[dict], method_names: Sequence[str], baseline: str = "Merge") -> dict:
    from .scoring import Scorer, frechet, reference_renders
    comps = sorted({r["comp"] for r in records}, key=lambda c: (len(c), c))
    n_img = len(records[0]["seeds"])
    ref = reference_renders([c for c in comps for _ in range(n_img)])
    _, ref_feat = Scorer().probs_and_features(ref)
    base_rs = [r for r in records if r["method"] == baseline]
    summary = {}
    for m in method_names:
        rs = [r for r in records if r["method"] == m]
        if not rs:
            continue
        row = {}
        for n in range(2, 6):
            st = comp_stats(_per_comp(rs, "recall", n=n))
            row[f"N={n}"], row[f"N={n} se"] = st["mean"], st["se"]
            std = comp_stats(_per_comp(rs, "recall_det", n=n))
            row[f"N={n} det"], row[f"N={n} det se"] = std["mean"], std["se"]
        for key, name in (("recall", "avg"), ("recall_det", "avg_det")):
            st = comp_stats(_per_comp(rs, key))
            row[name], row[f"{name}_se"] = st["mean"], st["se"]
            if base_rs:
                d = paired_stats(_per_comp(rs, key), _per_comp(base_rs, key))
                row[f"{name}_diff_vs_{baseline}"], row[f"{name}_diff_se"] = d["mean"], d["se"]
        row["sem"] = row["avg_se"]  # old name
        row["n_compositions"] = len({r["comp"] for r in rs})
        row["spurious"] = _mean(v for r in rs for v in r["spurious"])
        row["confidence"] = _mean(v for r in rs for v in r["confidence"])
        row["fd"] = frechet(torch.cat([r["features"] for r in rs]), ref_feat)
        row["evals_per_image"] = _mean(r["evals"] for r in rs)
        row["seconds_per_image"] = _mean(r["secs"] for r in rs)
        row["per_category"] = {cat: comp_stats(_per_comp(rs, "per_category", cat=cat)) for cat in world.CATEGORIES}
        row["per_category_det"] = {cat: comp_stats(_per_comp(rs, "per_category_det", cat=cat))
                                   for cat in world.CATEGORIES}
        row["agreement"] = agreement(rs)["all"]["agree"]
        row["n_images"] = sum(len(r["recall"]) for r in rs)
        summary[m] = row
    return summary


def compare_pairs(records: list[dict], pairs: Sequence[tuple[str, str]]) -> list[dict]:
    """Paired differences A - B (classifier and detector recall) over the run's compositions, and on
    each part of the split separately (dev: settings were chosen there; test: never tuned on)."""
    parts = {"all": None, **{p: set(split(p)) for p in ("dev", "test")}}
    out = []
    for a, b in pairs:
        row = {"a": a, "b": b}
        ra, rb = ([r for r in records if r["method"] == m] for m in (a, b))
        for part, comps in parts.items():
            for key in ("recall", "recall_det"):
                pa, pb = ({c: v for c, v in _per_comp(rs, key).items() if comps is None or c in comps}
                          for rs in (ra, rb))
                if pa and pb:
                    row[f"{part} {key}"] = paired_stats(pa, pb)
        out.append(row)
    return out


def pairs_markdown(rows: list[dict]) -> str:
    lines = ["", "Paired differences (mean over compositions of A − B, ± paired s.e.), classifier / detector:", "",
             "| A | B | all | dev part | test part |", "|---|---|---|---|---|"]
    for r in rows:
        cells = []
        for part in ("all", "dev", "test"):
            st = [r.get(f"{part} {key}") for key in ("recall", "recall_det")]
            cells.append(" / ".join(signed(x["mean"], x["se"]) for x in st) if all(st) else "–")
        lines.append(f"| {r['a']} | {r['b']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown(summary: dict, title: str, meta: Optional[dict] = None, agree: Optional[dict] = None,
             baseline: str = "Merge") -> str:
    floor = summary.get("prompt only", {})
    lines = [f"### {title}", ""]
    if meta:
        lines += [f"Part **{meta['part']}** ({meta['compositions']} compositions; split {meta['split_sha256'][:12]}), "
                  f"noise seeds {meta['seed_list']} per composition (shared by all methods), LoRA strength "
                  f"{meta['strength']}, Switch every {meta['switch_every']} step(s), {meta['steps']} DDIM steps, "
                  f"CFG {meta['cfg']}.", ""]
    lines += ["Concept recall = fraction of the requested concepts found, by the CNN classifier (scoring.py) and "
              "by the hand-written detector (detector.py). ± = standard error with the composition as the unit "
              f"(a composition's seeds averaged first). Δ vs {baseline} = mean over compositions of (method − "
              f"{baseline}) on the same compositions and seeds, ± its paired s.e. 'prompt only' = the base model "
              "with the joined trigger words (the false-positive floor). spurious = not-requested concepts the "
              "classifier finds.", "",
              f"| method | N=2 | N=3 | N=4 | N=5 | recall (± s.e.) | Δ vs {baseline} | recall (detector) | "
              f"Δ vs {baseline} (detector) | spurious | FD | evals/img | s/img |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for m, r in summary.items():
        cells = [fmt(r[f"N={n}"], r[f"N={n} se"]) for n in range(2, 6)]
        diff = signed(r.get(f"avg_diff_vs_{baseline}"), r.get("avg_diff_se")) if m != baseline else "0"
        ddet = signed(r.get(f"avg_det_diff_vs_{baseline}"), r.get("avg_det_diff_se")) if m != baseline else "0"
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {fmt(r['avg'], r['avg_se'])} | {diff} | "
                     f"{fmt(r['avg_det'], r['avg_det_se'])} | {ddet} | {r['spurious']:.3f} | {r['fd']:.2f} | "
                     f"{r['evals_per_image']:.0f} | {r['seconds_per_image']:.2f} |")
    if floor:
        lines += ["", "False-positive floor per N (prompt only), classifier / detector: " + ", ".join(
            f"N={n}: {fmt(floor[f'N={n}'])} / {fmt(floor[f'N={n} det'])}" for n in range(2, 6))]
    lines += ["", "Detector recall per N:", "", "| method | N=2 | N=3 | N=4 | N=5 |", "|---|---|---|---|---|"]
    for m, r in summary.items():
        lines.append(f"| {m} | " + " | ".join(fmt(r[f"N={n} det"], r[f"N={n} det se"]) for n in range(2, 6)) + " |")
    lines += ["", "Recall per category (requested concepts of that category found; ± s.e. over the compositions "
              "that have the category), classifier / detector:", "",
              "| method | " + " | ".join(world.CATEGORIES) + " |", "|---|" + "---|" * len(world.CATEGORIES)]
    for m, r in summary.items():
        lines.append(f"| {m} | " + " | ".join(
            f"{fmt(r['per_category'][c]['mean'], r['per_category'][c]['se'], 2)} / "
            f"{fmt(r['per_category_det'][c]['mean'], r['per_category_det'][c]['se'], 2)}"
            for c in world.CATEGORIES) + " |")
    if agree:
        lines += ["", f"Classifier vs detector on this run's {agree['all']['images']} generated images (all "
                  f"methods; every concept of every image, requested or not): agreement "
                  f"{agree['all']['agree']:.3f}.", "",
                  "| concept | agreement | kappa | both | classifier only | detector only | neither |",
                  "|---|---|---|---|---|---|---|"]
        for c in world.ALL_CONCEPTS:
            a = agree[c]
            lines.append(f"| {c} | {a['agree']:.3f} | {fmt(a['kappa'], digits=2)} | {a['both']} | "
                         f"{a['classifier_only']} | {a['detector_only']} | {a['neither']} |")
    if meta and meta.get("methods_settings"):
        lines += ["", "Method settings:", ""]
        for m, st in meta["methods_settings"].items():
            lines.append(f"- {m}: " + ", ".join(f"{k}={v}" for k, v in st.items()))
    return "\n".join(lines) + "\n"


# --- pictures (PIL only) ---------------------------------------------------------------------------
def _font():
    from PIL import ImageFont
    return ImageFont.load_default()


def write_grid(records: list[dict], method_names: Sequence[str], comps: Sequence[tuple[str, ...]], path: Path,
               scale: int = 3, label=world.composition_prompt) -> None:
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
        draw.text((2, head_h + i * cell + cell // 2 - 6), label(comp), fill="black", font=_font())
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


# --- calibration: the classifier and the detector on generated images ---------------------------------
@torch.no_grad()
def calibrate(seeds: int = 8, steps: int = STEPS, out: Optional[Path] = None, strength: float = 1.0,
              keep_images: bool = False) -> dict:
    """Single-LoRA generations (LoRA alone, its trigger as prompt: the best a composition can hope
    for) and base-model generations (generic captions and bare trigger words: false positives), scored
    by the classifier and by the detector."""
    from . import detector
    from .sampling import Bench
    from .scoring import Scorer
    bench, scorer = Bench(), Scorer()
    seed_list = [500 + k for k in range(seeds)]
    res: dict = {k: {} for k in ("single_lora_detection", "base_with_trigger_prompt_detection",
                                 "single_lora_detector", "base_with_trigger_prompt_detector")}
    tiles, images = [], []
    for c in world.ALL_CONCEPTS:
        j = world.ALL_CONCEPTS.index(c)
        imgs, _ = bench.sample(Method("LoRAtorio", "composer"), (c,), seed_list, steps=steps, strength=strength)
        base, _ = bench.sample(Method("prompt only", "base"), (c,), seed_list, steps=steps)
        res["single_lora_detection"][c] = float(scorer.score(imgs, (c,))["recall"].mean())
        res["base_with_trigger_prompt_detection"][c] = float(scorer.score(base, (c,))["recall"].mean())
        res["single_lora_detector"][c] = float(detector.detect(imgs)[:, j].mean())
        res["base_with_trigger_prompt_detector"][c] = float(detector.detect(base)[:, j].mean())
        tiles.append(torch.cat([imgs, base]))
        images += [(f"single LoRA {c}", imgs), (f"base + trigger {c}", base)]
    rng = np.random.default_rng(3)
    caps = [world.random_generic(rng).caption() for _ in range(seeds * 2)]
    generic = torch.cat([bench.sample(Method("prompt only", "base"), (), [900 + k], steps=steps, prompt=cap)[0]
                         for k, cap in enumerate(caps)])
    images.append(("base generic", generic))
    p, _ = scorer.probs_and_features(generic)
    det = detector.detect(generic)
    res["base_generic_false_positive"] = {c: float((p[:, i] > 0.5).float().mean())
                                          for i, c in enumerate(world.ALL_CONCEPTS)}
    res["base_generic_detector_false_positive"] = {c: float(det[:, i].mean()) for i, c in enumerate(world.ALL_CONCEPTS)}
    for k in list(res):
        res["mean_" + k] = float(np.mean(list(res[k].values())))
    res["mean_single"] = res["mean_single_lora_detection"]
    res["mean_floor"] = res["mean_base_with_trigger_prompt_detection"]
    res["mean_fp_generic"] = res["mean_base_generic_false_positive"]
    res["strength"], res["seeds"], res["steps"] = strength, seeds, steps
    if out is not None:
        from PIL import Image
        rows = [torch.cat(list(t), dim=2) for t in tiles]  # each row: LoRA images then base images
        sheet = ((torch.cat(rows, dim=1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(sheet).resize((sheet.shape[1] * 2, sheet.shape[0] * 2), Image.NEAREST).save(
            out / "calibration.png")
    if keep_images:
        res["_images"] = images
    return res


def calibrate_markdown(r: dict) -> str:
    lines = ["### Classifier and detector on generated images", "",
             f"LoRA strength {r.get('strength', 1.0)}, {r.get('seeds', '?')} seeds per concept. "
             "single LoRA = the LoRA alone with its trigger word (the ceiling a composition can reach); "
             "base + trigger = the base model with the same prompt (false-positive floor); "
             "base generic = base model with generic captions (false positives per concept). "
             "Each cell: classifier / detector.", "",
             "| concept | single LoRA detected | base + trigger detected | base generic: flagged |",
             "|---|---|---|---|"]
    cols = (("single_lora_detection", "single_lora_detector"),
            ("base_with_trigger_prompt_detection", "base_with_trigger_prompt_detector"),
            ("base_generic_false_positive", "base_generic_detector_false_positive"))
    for c in world.ALL_CONCEPTS:
        lines.append(f"| {c} | " + " | ".join(f"{r[a][c]:.2f} / {r[b][c]:.2f}" for a, b in cols) + " |")
    lines.append("| **mean** | " + " | ".join(f"{r['mean_' + a]:.3f} / {r['mean_' + b]:.3f}" for a, b in cols) + " |")
    return "\n".join(lines) + "\n"


@torch.no_grad()
def detector_check(seeds: int = 4, steps: int = STEPS, strength: float = 0.8, n_renders: int = 1000) -> dict:
    """The detector on held-out renders (accuracy, recall, false positives), and its agreement with the
    classifier per concept on those renders and on generated images (calibrate's single-LoRA, base +
    trigger and generic generations)."""
    from . import detector
    from .scoring import Scorer
    scorer = Scorer()
    res: dict = {"renders": detector.render_check(n_renders), "thresholds": dict(detector.THRESHOLDS)}
    imgs, labs = detector.labelled_renders(n_renders, 7)
    agree = {}
    for name, x in (("renders_clean", imgs), ("renders_degraded", detector.degrade(imgs, 8))):
        t = torch.from_numpy(x).permute(0, 3, 1, 2) * 2 - 1
        clf = (scorer.probs_and_features(t)[0] > 0.5).numpy()
        det = detector.detect(x)
        agree[name] = {c: float((clf[:, j] == det[:, j]).mean()) for j, c in enumerate(world.ALL_CONCEPTS)}
        agree[name]["classifier_accuracy"] = float((clf == labs).mean())
    cal = calibrate(seeds, steps, strength=strength, keep_images=True)
    gen = torch.cat([x for _, x in cal.pop("_images")])
    clf = (scorer.probs_and_features(gen)[0] > 0.5).numpy()
    det = detector.detect(gen)
    agree["generated"] = {c: float((clf[:, j] == det[:, j]).mean()) for j, c in enumerate(world.ALL_CONCEPTS)}
    agree["generated_images"] = int(len(gen))
    res["agreement"] = agree
    res["calibrate"] = cal
    return res


def detector_check_markdown(r: dict) -> str:
    rc, ag = r["renders"], r["agreement"]
    lines = ["### Detector check", "",
             "Held-out renders (1000 random labelled scenes, seed 7; thresholds were fitted on other renders, "
             "seed 1): detector recall on renders with the concept / false positives on renders without; "
             "clean and degraded (detector.degrade: the classifier's training augmentation without shifts). "
             "Agreement = fraction of images on which detector "
             f"and classifier say the same for the concept; generated = {ag['generated_images']} generated images "
             "(single LoRA, base + trigger, base generic; the table below).", "",
             "| concept | threshold | renders: recall / FP (clean) | recall / FP (degraded) | agreement renders "
             "(clean) | agreement renders (degraded) | agreement generated |", "|---|---|---|---|---|---|---|"]
    for c in world.ALL_CONCEPTS:
        a, b = rc["clean"][c], rc["degraded"][c]
        lines.append(f"| {c} | {r['thresholds'][c]} | {a['recall']:.3f} / {a['false_positive']:.3f} | "
                     f"{b['recall']:.3f} / {b['false_positive']:.3f} | {ag['renders_clean'][c]:.3f} | "
                     f"{ag['renders_degraded'][c]:.3f} | {ag['generated'][c]:.3f} |")
    mean = {k: float(np.mean([ag[k][c] for c in world.ALL_CONCEPTS]))
            for k in ("renders_clean", "renders_degraded", "generated")}
    lines.append(f"| **mean** | | accuracy {rc['clean']['mean_accuracy']:.3f} | accuracy "
                 f"{rc['degraded']['mean_accuracy']:.3f} | {mean['renders_clean']:.3f} | "
                 f"{mean['renders_degraded']:.3f} | {mean['generated']:.3f} |")
    lines += ["", f"Classifier accuracy on the same renders: clean {ag['renders_clean']['classifier_accuracy']:.3f}, "
              f"degraded {ag['renders_degraded']['classifier_accuracy']:.3f}.", ""]
    return "\n".join(lines) + "\n" + calibrate_markdown(r["calibrate"])


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


def peer_methods() -> list[Method]:
    """Published multi-LoRA methods as we implemented them (composbench/peers), and the oracle masks."""
    names = {"K-LoRA": "K-LoRA", "CMLoRA": "CMLoRA", "MultLFG": "MultLFG", "FreeFuse": "FreeFuse-style masks"}
    return [Method(f"{name} (as we implemented it)", "peer", mode=peer) for peer, name in names.items()] + [
        Method("Oracle region masks", "peer", mode="Oracle"),
        # the same masks with LoRAtorio's guidance (the base model's unconditional prediction): routing alone
        Method("Oracle region masks (base uncond)", "peer", mode="Oracle", options=(("uncond", "base"),))]


def _write_report(out: Path, name: str, data: dict, text: str) -> dict:
    """``name``.json and ``name``.md in ``out``; the markdown is also printed."""
    (out / f"{name}.json").write_text(json.dumps(data, indent=1))
    (out / f"{name}.md").write_text(text)
    print(text)
    return data


_RELEVANT = {"Switch": ("switch_every",), "Composite": (), "Stack": ("hint_strength",),
             "LoRAtorio": ("patch_size", "temperature", "recenter", "pool", "weight_norm"),
             "LoRAtorio Fast": ("patch_size", "temperature", "pool", "weight_norm", "refresh_first", "refresh_every",
                                "attention_per_lora")}


def method_settings(m: Method, strength: float) -> dict:
    """What defines a method's run, for the results (fields a method does not use left out)."""
    st = dataclasses.asdict(m)
    st.pop("name", None)
    strength = strength if m.strength is None else m.strength
    if m.kind == "base":
        return {"kind": "base"}
    if m.kind == "merge":
        return {"kind": "merge", "strength": strength, "base_uncond": m.base_uncond}
    if m.kind == "peer":
        return {"kind": "peer", "peer": m.mode, "strength": strength, **dict(m.options)}
    if m.kind == "composer" and m.mode in _RELEVANT:
        routing = {k: st[k] for k in ("rule", "hint_strength") if st[k] != Method.__dataclass_fields__[k].default}
        return {"kind": m.kind, "mode": m.mode, "strength": strength, **{k: st[k] for k in _RELEVANT[m.mode]},
                **routing}
    return {**st, "strength": strength}


def _settings(args, comps, methods) -> dict:
    return {"comps": [list(c) for c in comps], "seeds": args.seeds, "steps": args.steps, "strength": args.strength,
            "methods": {m.name: dataclasses.asdict(m) for m in methods}}


def main(argv: Optional[list[str]] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", choices=sorted(WORLDS), default="solo",
                    help="solo: the single-figure world's 240 compositions (world.py); duo: the two-figure "
                         "world's 81 (duo.py), two characters competing for two figures")
    ap.add_argument("--part", choices=("dev", "test", "all"), default="dev",
                    help="compositions of the world's fixed split (protocol.py, duo.py): dev = tuning and "
                         "ablations, test = reported numbers (never tune on it), all")
    ap.add_argument("--baseline", default="",
                    help="the method every other is paired with (default: Merge in the solo world, the "
                         "extension's default in the duo world)")
    ap.add_argument("--variants", action="store_true",
                    help="add the routing variants under test (routing.py; sampling.variant_methods)")
    ap.add_argument("--controls", action="store_true",
                    help="add the controls: the default and exact mode with uniform maps, Merge at strengths "
                         "0.8/1.0/1.2/1.5 with its own or the base model's unconditional prediction")
    ap.add_argument("--quick", action="store_true", help="12 compositions per N of the part (seeded sample)")
    ap.add_argument("--per-n", type=int, default=0, help="compositions per N of the part (sampled, seed --sample-seed)")
    ap.add_argument("--sample-seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, default=PROTOCOL["seeds"],
                    help=f"images (noise seeds {SEED0}, {SEED0 + 1}, ...) per composition")
    ap.add_argument("--strength", type=float, default=PROTOCOL["strength"],
                    help="LoRA strength for every method (ComposLoRA: 0.8; the LoRAs were trained at 1.0)")
    ap.add_argument("--switch-every", type=int, default=PROTOCOL["switch_every"],
                    help="Switch: steps per LoRA turn (1 at 20 steps: 20 turns; ComposLoRA switches every 5 of "
                         "its 100-200 steps)")
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--sweep", action="store_true", help="patch size x temperature x re-centring sweep")
    ap.add_argument("--diagnose", action="store_true", help="divergence inside/outside each concept")
    ap.add_argument("--calibrate", action="store_true",
                    help="classifier and detector on single-LoRA and base generations")
    ap.add_argument("--detector-check", action="store_true",
                    help="detector on renders, and its agreement with the classifier on renders and generations")
    ap.add_argument("--patch", type=int, default=2,
                    help="LoRAtorio patch size (2 = the sweep's choice, 1/16 of this 32-px side; "
                         "the extension's default 4 is 1/16 of an SD1.5 latent)")
    ap.add_argument("--temperature", type=float, default=0.05)
    ap.add_argument("--recenter", type=float, default=0.5)
    ap.add_argument("--fast-schedules", type=lambda v: [x for x in v.split(",") if x], default=[],
                    help="extra LoRAtorio Fast methods, e.g. 1/3,3/4 (refresh first / refresh every)")
    ap.add_argument("--fast-weights", choices=("max", "sum"), default="max",
                    help="the weights of the --fast-schedules methods (named 'LoRAtorio Fast max 1/3')")
    ap.add_argument("--fast-attention-per-lora", action="store_true",
                    help="the --fast-schedules methods also with each cross-attention computed once per LoRA "
                         "and blended (composbench/attention_per_lora.py), named 'LoRAtorio Fast max attention "
                         "per LoRA 1/3'")
    ap.add_argument("--peers", action="store_true",
                    help="also the published methods as we implemented them (K-LoRA, CMLoRA, MultLFG, FreeFuse-style "
                         "masks; composbench/peers) and the oracle region masks")
    ap.add_argument("--methods", default="", help="comma-separated subset of method names")
    ap.add_argument("--pairs", type=lambda v: [tuple(p.split(" - ")) for p in v.split(",") if p], default=[],
                    help='paired differences to report, e.g. "LoRAtorio Fast max - LoRAtorio max" (comma-separated)')
    ap.add_argument("--limit", type=int, default=0, help="keep only the first K compositions (tests)")
    ap.add_argument("--rescore", action="store_true",
                    help="score the images of an earlier run again (--out's images.pt) instead of generating")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    if args.calibrate or args.detector_check:
        out = Path(args.out or ("outputs/detector-check" if args.detector_check else "outputs/calibrate"))
        out.mkdir(parents=True, exist_ok=True)
        n = args.seeds if args.seeds != PROTOCOL["seeds"] else (4 if args.detector_check else 8)
        if args.detector_check:
            r = detector_check(n, args.steps, args.strength)
            return _write_report(out, "detector_check", r, detector_check_markdown(r))
        r = calibrate(n, args.steps, out, strength=args.strength)
        return _write_report(out, "calibrate", r, calibrate_markdown(r))

    if args.diagnose:
        comps = sample_compositions(args.per_n or 6, args.sample_seed, args.part)
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
        methods += control_methods(args.patch, args.temperature) if args.controls else []
        methods += variant_methods(args.patch) if args.variants else []
        methods += [fast_method(schedule, args.patch, args.temperature, args.fast_weights, per_lora)
                    for per_lora in ((False, True) if args.fast_attention_per_lora else (False,))
                    for schedule in args.fast_schedules]
        methods += peer_methods() if args.peers else []
        out = Path(args.out or (f"outputs/bench-{args.part}" + ("-quick" if args.quick else "")))
    methods = [dataclasses.replace(m, switch_every=args.switch_every) for m in methods]
    if args.methods:
        keep = [s.strip() for s in args.methods.split(",")]
        unknown = set(keep) - {m.name for m in methods}
        if unknown:
            raise SystemExit(f"unknown method(s): {sorted(unknown)}; known: {[m.name for m in methods]}")
        methods = [m for m in methods if m.name in keep]
    spec = WORLDS[args.world]
    # the sweep draws its own compositions (sample seed + 1), apart from the quick benchmark's
    comps = (sample_compositions(per_n, args.sample_seed + (1 if args.sweep else 0), args.part, spec) if per_n
             else spec.split(args.part))
    if args.limit:
        comps = comps[::max(1, len(comps) // args.limit)][:args.limit]
    out.mkdir(parents=True, exist_ok=True)
    print(f"{spec.name} world, part {args.part}: {len(comps)} compositions x {len(methods)} methods x "
          f"{args.seeds} seed(s), {args.steps} steps, strength {args.strength}, Switch every {args.switch_every} "
          f"-> {out}", flush=True)
    from . import detector
    t0 = time.time()
    if args.rescore:  # same images, scored again (e.g. after a scorer change); the settings must match
        saved = torch.load(out / "images.pt")
        records = saved["records"]
        if saved["settings"] != _settings(args, comps, methods):
            raise SystemExit(f"--rescore: {out}/images.pt was made with other settings: {saved['settings']}")
        gen_s = saved["generation_seconds"]
    else:
        records = generate(methods, comps, args.seeds, args.steps, args.jobs, strength=args.strength,
                           world_name=spec.name)
        gen_s = time.time() - t0
        torch.save({"records": [{k: r[k] for k in ("method", "comp", "seeds", "images", "evals", "secs", "maps")}
                                for r in records],
                    "settings": _settings(args, comps, methods), "generation_seconds": gen_s}, out / "images.pt")
    names = [m.name for m in methods]
    meta = {"world": spec.name, "part": args.part, "split_sha256": spec.fingerprint(args.part),
            "compositions": len(comps), "per_n": per_n, "sample_seed": args.sample_seed, "limit": args.limit,
            "seeds": args.seeds, "seed_list": [SEED0 + k for k in range(args.seeds)], "strength": args.strength,
            "switch_every": args.switch_every, "steps": args.steps, "cfg": CFG, "methods": names,
            "methods_settings": {m.name: method_settings(m, args.strength) for m in methods},
            "argv": argv if argv is not None else sys.argv[1:], "classifier_threshold": 0.5,
            "detector_thresholds": dict(detector.THRESHOLDS if spec is SOLO else detector.DUO_THRESHOLDS),
            "generation_seconds": round(gen_s, 1), "jobs": args.jobs,
            "composition_list": [list(c) for c in comps]}
    title = (f"Sweep ({len(comps)} compositions)" if args.sweep else
             f"Composition benchmark, {spec.name} world, part {args.part}: {len(comps)} compositions, "
             f"{args.seeds} seed(s), strength {args.strength}")
    if spec is DUO:
        from . import duo_report
        baseline = args.baseline or DEFAULT_METHOD
        duo_report.score(records)
        summary = duo_report.summarize(records, names, baseline)
        agree, pairs = {}, []
        text = duo_report.markdown(summary, title, baseline, meta)
        for r in records:
            r["recall"] = r["clf"]["recall"]  # what the grid shows under each image
    else:
        score(records)
        summary = summarize(records, names, args.baseline or "Merge")
        agree = agreement(records)
        pairs = compare_pairs(records, args.pairs)
        text = markdown(summary, title, meta, agree, args.baseline or "Merge")
        text += pairs_markdown(pairs) if pairs else ""
        write_plot(summary, out / "recall.png")
    (out / "results.json").write_text(json.dumps({"meta": meta, "summary": summary, "agreement": agree,
                                                  "pairs": pairs}, indent=1))
    (out / "results.md").write_text(text)
    every = max(1, len(comps) // 8)
    grid_comps = [c for i, c in enumerate(comps) if i % every == 0][:8]
    write_grid(records, names, grid_comps or comps[:4], out / "grid.png", label=spec.composition_prompt)
    print(text, flush=True)
    return summary


if __name__ == "__main__":
    main()
