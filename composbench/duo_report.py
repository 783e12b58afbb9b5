"""Scoring and tables of a run on the two-figure world (duo.py, duo_scoring.py).

Every measure of duo_scoring.MEASURES by both scorers, with the composition as the unit (its seeds
averaged first); every method paired with the baseline (the extension's default unless told
otherwise) composition by composition; success per N and per what the composition adds to the two
characters; FD of the whole-image classifier's features against renders of the compositions.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from . import detector, duo, world
from .duo_scoring import MEASURES, DuoScorer, measures, reference_renders
from .scoring import frechet
from .stats import comp_stats, fmt, paired_stats, signed

SCORERS: tuple[str, ...] = ("clf", "det")
#: What a composition adds to its two characters, for the per-kind table.
KINDS: tuple[str, ...] = ("alone", "clothing", "background", "style")


def score(records: list[dict]) -> None:
    """Classifier and detector measures per image of every record (r["clf"], r["det"]), features, and
    for routed methods what their weight maps say of each figure (r["owners"], see map_owners)."""
    scorer = DuoScorer()
    for r in records:
        x = r["images"].float() / 127.5 - 1
        figures, whole, feats = scorer.decide(x)
        r["clf"] = measures(figures, whole, r["comp"])
        r["det"] = measures(*detector.duo_detect(x), r["comp"])
        r["features"] = feats
        maps = r.get("maps")
        if maps is not None and maps.shape[1] == len(r["comp"]):
            r["owners"] = map_owners(maps.float().numpy(), figures, r["comp"])


def map_owners(maps: np.ndarray, figures: np.ndarray, comp: Sequence[str]) -> dict[str, np.ndarray]:
    """Per image, what the weight maps ([B, N, H, W], LoRAs in ``comp`` order, the mean over the steps)
    say of the two figures. A figure's owner is the character LoRA with the most weight over the
    figure's region (duo.slot_region, clothing left out). ``right``: the share of figures showing
    exactly one of the two characters (classifier) whose owner is that character; ``split``: whether
    the two figures have different owners (the maps tell the characters apart at all)."""
    ia, ib = duo.FIGURE_CONCEPTS.index(comp[0]), duo.FIGURE_CONCEPTS.index(comp[1])
    owner = np.stack([maps[:, :2, duo.slot_region(k, clothing=False)].mean(-1).argmax(1) for k in (0, 1)], 1)
    shows = np.where(figures[:, :, ia] & ~figures[:, :, ib], 0, np.where(figures[:, :, ib] & ~figures[:, :, ia], 1, -1))
    judged = shows >= 0
    right = np.where(judged.any(1), (judged & (owner == shows)).sum(1) / np.maximum(judged.sum(1), 1), np.nan)
    return {"right": right, "split": (owner[:, 0] != owner[:, 1]).astype(float)}


def _kind_of(comp: tuple[str, ...]) -> set[str]:
    kinds = {world.CATEGORY_OF[c] for c in comp[2:]}
    return kinds or {"alone"}


def _per_comp(rs: list[dict], scorer: str, measure: str, keep=lambda comp: True) -> dict:
    """{composition: per-seed values} of one measure, compositions where it applies (not NaN)."""
    out = {}
    for r in rs:
        v = r[scorer][measure]
        if keep(r["comp"]) and not np.isnan(v).all():
            out[r["comp"]] = [float(x) for x in v]
    return out


def summarize(records: list[dict], method_names: Sequence[str], baseline: str) -> dict:
    comps = sorted({r["comp"] for r in records}, key=lambda c: (len(c), c))
    n_img = len(records[0]["seeds"])
    _, _, ref_feat = DuoScorer().probs_and_features(reference_renders([c for c in comps for _ in range(n_img)]))
    base = [r for r in records if r["method"] == baseline]
    summary = {}
    for m in method_names:
        rs = [r for r in records if r["method"] == m]
        if not rs:
            continue
        row: dict = {"n_compositions": len({r["comp"] for r in rs}), "n_images": sum(len(r["seeds"]) for r in rs)}
        for sc in SCORERS:
            for ms in MEASURES:
                row[f"{sc} {ms}"] = comp_stats(_per_comp(rs, sc, ms))
                if base and m != baseline:
                    row[f"{sc} {ms} vs base"] = paired_stats(_per_comp(rs, sc, ms), _per_comp(base, sc, ms))
            for n in range(2, 6):
                row[f"{sc} separated N={n}"] = comp_stats(_per_comp(rs, sc, "separated", lambda c, n=n: len(c) == n))
            for kind in KINDS:
                row[f"{sc} separated {kind}"] = comp_stats(
                    _per_comp(rs, sc, "separated", lambda c, k=kind: k in _kind_of(c)))
        owned = [r for r in rs if "owners" in r]
        for key in ("right", "split"):
            row[f"owner {key}"] = comp_stats({r["comp"]: [v for v in r["owners"][key] if not np.isnan(v)]
                                              for r in owned}) if owned else None
        row["fd"] = frechet(torch.cat([r["features"] for r in rs]), ref_feat)
        row["evals_per_image"] = float(np.mean([r["evals"] for r in rs]))
        row["seconds_per_image"] = float(np.mean([r["secs"] for r in rs]))
        summary[m] = row
    return summary


def markdown(summary: dict, title: str, baseline: str, meta: Optional[dict] = None) -> str:
    lines = [f"### {title}", ""]
    if meta:
        lines += [f"Two-figure world, part **{meta['part']}** ({meta['compositions']} compositions; split "
                  f"{meta['split_sha256'][:12]}), noise seeds {meta['seed_list']} per composition (shared by all "
                  f"methods), LoRA strength {meta['strength']} (unless a method names its own), {meta['steps']} DDIM "
                  f"steps, CFG {meta['cfg']}.", ""]
    lines += ["success = one figure is one requested character and only it, the other figure the other; "
              "separated = share of the two characters each found at exactly one figure, no figure showing both "
              "(a graded success); identity = share of the two characters found at a figure; hybrid = a figure "
              "with both characters (blend) or one character at both figures (twin); clothing on one = the "
              "requested clothing on exactly one figure; recall = share of the requested concepts found. ± = s.e. "
              f"with the composition as the unit; Δ = paired difference with **{baseline}** on the same "
              "compositions and seeds.", ""]
    for sc, name in (("clf", "classifier"), ("det", "detector")):
        lines += [f"**{name}**", "",
                  "| method | success | separated | Δ separated | identity | hybrid | blend | twin | clothing on one | "
                  "recall | Δ recall | FD | UNet rows/img | s/img |", "|---|" + "---|" * 13]
        for m, r in summary.items():
            cell = {ms: fmt(r[f"{sc} {ms}"]["mean"], r[f"{sc} {ms}"]["se"]) for ms in MEASURES}
            delta = {ms: "0" if m == baseline else _delta(r.get(f"{sc} {ms} vs base"))
                     for ms in ("separated", "recall")}
            lines.append(f"| {m} | {cell['success']} | {cell['separated']} | {delta['separated']} | "
                         f"{cell['identity']} | {cell['hybrid']} | "
                         f"{cell['blend']} | {cell['twin']} | {cell['clothing_one']} | {cell['recall']} | "
                         f"{delta['recall']} | {r['fd']:.1f} | {r['evals_per_image']:.0f} | "
                         f"{r['seconds_per_image']:.2f} |")
        lines.append("")
    lines += ["Separated per N and per what the composition adds to the two characters, classifier / detector:", "",
              "| method | N=2 | N=3 | N=4 | N=5 | " + " | ".join(KINDS) + " |", "|---|" + "---|" * (4 + len(KINDS))]
    for m, r in summary.items():
        cells = [" / ".join(fmt(r[f"{sc} separated {key}"]["mean"], digits=2) for sc in SCORERS)
                 for key in [f"N={n}" for n in range(2, 6)] + list(KINDS)]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    owned = {m: r for m, r in summary.items() if r.get("owner right")}
    if owned:
        lines += ["", "What the weight maps say of each figure (routed methods): a figure's owner is the character "
                  "LoRA with the most weight over the figure's region (mean map over the steps). right = share of "
                  "figures showing exactly one requested character (classifier) whose owner is that character; "
                  "split = share of images whose two figures have different owners.", "",
                  "| method | owner right | split |", "|---|---|---|"]
        lines += [f"| {m} | {fmt(r['owner right']['mean'], r['owner right']['se'])} | "
                  f"{fmt(r['owner split']['mean'], r['owner split']['se'])} |" for m, r in owned.items()]
    if meta and meta.get("methods_settings"):
        lines += ["", "Method settings:", ""]
        lines += [f"- {m}: " + ", ".join(f"{k}={v}" for k, v in st.items())
                  for m, st in meta["methods_settings"].items()]
    return "\n".join(lines) + "\n"


def _delta(st: Optional[dict]) -> str:
    return signed(st["mean"], st["se"]) if st else "–"
