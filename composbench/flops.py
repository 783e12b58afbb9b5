"""Floating-point operations of a LoRAtorio step at a real model's size, counted without a GPU.

    python -m composbench.flops                          # SD1.5 at 512 px: width 320, 64x64 latent
    python -m composbench.flops --latent 128 --json      # SD1.5's architecture at a 1024 px latent

Timing a UNet of SD1.5's full size needs a GPU; counting its operations does not. A UNet of SD1.5's
architecture (the speed bench's) gets random rank-16 LoCon files, is moved to PyTorch's ``meta``
device (shapes only, no arithmetic) and every forward is counted with ``FlopCounterMode``: a plain
row, a row of one LoRA branch, and a mixed row of the fast mode (every LoRA applied by its weight map;
with the cross-attention computed once per LoRA, or folded). Steps are counted from rows: plain and
Merge 2 rows, exact LoRAtorio 2(N+1), at re-centring 1 N+2, the fast mode's refresh steps N+2 and its
other steps one mixed row and one base row; the fast mode's mean step over a run of ``--steps`` at
the extension's default schedule. On a GPU that is saturated (large latents) time follows these
counts; on a small latent it does not (kernel launches, memory traffic), which is what the speed
bench measures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from lib_loratorio.branch_runner import MIXED, BranchRunner
from lib_loratorio.lora_files import read_lora_file
from lib_loratorio.network_names import bind_lora
from lib_loratorio.params import LoratorioParams

from .attention_per_lora import AttentionPerLoraRunner
from .random_loras import write_lora_of_type
from .speed import build_unet


def _count(unet, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        unet(x, t, ctx)
    return counter.get_total_flops()


def row_flops(unet, loras, n: int, latent: int) -> dict[str, float]:
    """FLOPs of one row: plain, a LoRA branch, mixed with per-LoRA / folded cross-attention."""
    x = torch.zeros(1, 4, latent, latent, device="meta")
    ctx = torch.zeros(1, 77, 768, device="meta")
    t = torch.zeros(1, device="meta")
    maps = torch.rand(1, n, latent, latent, generator=torch.Generator().manual_seed(n))
    maps = maps / maps.amax(1, keepdim=True)  # weights "max": every LoRA has some weight everywhere
    rows = {"plain": _count(unet, x, t, ctx)}
    with BranchRunner(loras[:n], [0.8] * n) as runner, runner.rows(torch.tensor([1])):
        rows["branch"] = _count(unet, x, t, ctx)
    for label, runner_class in (("mixed_per_lora", AttentionPerLoraRunner), ("mixed_folded", BranchRunner)):
        with runner_class(loras[:n], [0.8] * n) as runner, runner.rows(torch.tensor([MIXED]), maps=maps):
            rows[label] = _count(unet, x, t, ctx)
    return rows


def step_ratios(rows: dict[str, float], n: int, params: LoratorioParams, steps: int) -> dict[str, float]:
    """Mean step of each method over a plain step (2 plain rows)."""
    plain, branch = rows["plain"], rows["branch"]
    refresh = 2 * plain + n * branch                      # N + 1 prompt rows, the base on the negative
    refreshes = sum(params.is_refresh_step(s) for s in range(steps))
    out = {"loratorio": (2 * plain + 2 * n * branch) / (2 * plain), "loratorio_recenter1": refresh / (2 * plain),
           "refresh_steps": refreshes}
    for rule in ("per_lora", "folded"):
        mixed = rows[f"mixed_{rule}"] + plain
        out[f"mixed_step_{rule}"] = mixed / (2 * plain)
        out[f"fast_mode_{rule}"] = (refreshes * refresh + (steps - refreshes) * mixed) / (steps * 2 * plain)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loras", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--width", type=int, default=320, help="first block's channels (SD1.5: 320)")
    ap.add_argument("--latent", type=int, default=64, help="latent side (SD1.5 at 512 px: 64)")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20, help="steps of the fast mode's run")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    params = LoratorioParams(enabled=True, mode="LoRAtorio Fast")

    unet = build_unet(args.width, "cpu")
    with tempfile.TemporaryDirectory() as tmp:  # the files need the real weights' shapes and scale
        loras = []
        for i in range(max(args.loras)):
            path = Path(tmp) / f"random_{i}.safetensors"
            write_lora_of_type(unet, path, "locon", args.rank, seed=100 + i)
            loras.append(bind_lora(read_lora_file(path), {"unet": unet}))
    unet.to("meta")
    with torch.inference_mode():
        report_rows = []
        for n in args.loras:
            rows = row_flops(unet, loras, n, args.latent)
            report_rows.append({"n": n, "gflop_plain_row": rows["plain"] / 1e9,
                                **{f"{k}_row": v / rows["plain"] for k, v in rows.items() if k != "plain"},
                                **step_ratios(rows, n, params, args.steps)})
    report = {"width": args.width, "latent": args.latent, "rank": args.rank, "steps": args.steps,
              "schedule": f"{params.refresh_first}/{params.refresh_every}", "rows": report_rows}
    print(json.dumps(report, indent=1) if args.json else format_table(report))
    return report


def format_table(report: dict) -> str:
    lines = [f"FLOPs per step over a plain step (Merge = 1.00): UNet of SD1.5's architecture, width {report['width']}, "
             f"{report['latent']}x{report['latent']} latent, rank-{report['rank']} LoCon; fast mode over "
             f"{report['steps']} steps at refresh {report['schedule']}",
             "| LoRAs N | LoRAtorio | re-centring 1 | Fast: step between refreshes | Fast: mean step "
             "| same, cross-attention per LoRA |",
             "|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['n']} | {r['loratorio']:.2f} | {r['loratorio_recenter1']:.2f} | "
                     f"{r['mixed_step_folded']:.3f} | {r['fast_mode_folded']:.2f} | {r['fast_mode_per_lora']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
