"""Speed of one LoRAtorio sampling step against the alternatives, measured in the same run.

    python -m composbench.speed [--loras 1 2 4 8] [--width 64] [--latent 32] [--device cpu] [--dtype float16] [--json]
    python -m composbench.speed --memory --width 320      # + memory per LoRA type at SD1.5 size

A UNet of SD1.5's architecture (diffusers ``UNet2DConditionModel``: same blocks, module names and
768-wide cross-attention, channels scaled down by ``--width``) gets random weights, and random
rank-16 LoRA files in kohya format (attention, feed-forward, projections and LoCon resnet convs,
as trainers write them) are written to a temporary folder and read back with the runtime's own
loader. Every number is a ratio to one plain step (cond + uncond rows, one forward) measured in the
same run, so a busy machine does not skew them. Needs ``diffusers`` (a benchmark-only dependency,
installed by tests/requirements.txt), which is why this lives in ``composbench`` and not in the runtime
package ``lib_loratorio`` (torch, einops and safetensors only).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from lib_loratorio.branch_runner import BranchRunner
from lib_loratorio.composer import BranchComposer
from lib_loratorio.composition import compose
from lib_loratorio.lora_files import read_lora_file
from lib_loratorio.network_names import bind_lora
from lib_loratorio.params import LoratorioParams

from .memory import MIB, Memory, format_memory, memory_by_type
from .random_loras import write_lora_of_type

# The exact mode (the paper's method) at the extension's patch size and temperature; LoRAtorio Fast at its defaults.
DEFAULTS = LoratorioParams(enabled=True, mode="LoRAtorio", weight_norm="sum")
FAST_RUN_STEPS = 20  # LoRAtorio Fast is timed over a whole run: its refresh steps cost more than the rest

def build_unet(width: int, device: str, dtype: torch.dtype = torch.float32):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(width, 2 * width, 4 * width, 4 * width), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768, attention_head_dim=8, norm_num_groups=min(32, width // 2), sample_size=64,
    )
    return unet.to(device, dtype).eval()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fns: dict[str, Callable[[], object]], repeats: int, device: str) -> dict[str, float]:
    """Median wall time of each fn, measured round-robin so that load changes hit them all alike."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {label: [] for label in fns}
    for _ in range(repeats):
        for label, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[label].append(time.perf_counter() - start)
    return {label: statistics.median(t) for label, t in times.items()}


def bench_n(unet, loras, n: int, latent: int, repeats: int, device: str) -> dict:
    g = torch.Generator().manual_seed(n)
    dtype = unet.dtype
    x = torch.randn(2, 4, latent, latent, generator=g).to(device, dtype)
    ctx = torch.randn(2, 77, 768, generator=g).to(device, dtype)
    t = torch.full((2,), 500.0, device=device)
    bound = loras[:n]
    strengths = [0.8] * n
    memory = Memory(device)
    row_kinds, images = [False, True], [0, 0]

    def plain():
        return unet(x, t, ctx).sample

    with BranchRunner(bound, strengths) as runner:
        def evaluate(rows, branches, maps=None):
            rows = rows.to(device)
            with runner.rows(branches, maps=maps):
                return unet(x[rows], t[rows], ctx[rows]).sample

        def loratorio(recenter):
            composer = BranchComposer(dataclasses.replace(DEFAULTS, recenter=recenter),
                                      [f"LoRA {i + 1}" for i in range(n)], prediction="eps")
            return lambda: composer(x, row_kinds, images, step=0, evaluate=evaluate)

        def loop():
            preds = []
            for b in range(n + 1):
                with runner.rows(torch.full((2,), b)):
                    preds.append(unet(x, t, ctx).sample)
            return compose(preds[0][:1], preds[0][1:], torch.stack([p[:1] for p in preds[1:]]),
                           torch.stack([p[1:] for p in preds[1:]]), patch_size=DEFAULTS.patch_size,
                           temperature=DEFAULTS.temperature, recenter=DEFAULTS.recenter)

        def run_of(mode):
            """A whole run of FAST_RUN_STEPS steps in ``mode`` (LoRAtorio Fast at its default schedule; Stack)."""
            def run():
                composer = BranchComposer(LoratorioParams(enabled=True, mode=mode),
                                          [f"LoRA {i + 1}" for i in range(n)], prediction="eps")
                for step in range(FAST_RUN_STEPS):
                    out = composer(x, row_kinds, images, step=step, evaluate=evaluate)
                return out
            return run

        fast_mode_run = run_of("LoRAtorio Fast")
        results = timed({"plain": plain, "loratorio": loratorio(0.5), "loratorio_recenter1": loratorio(1.0),
                         "loop": loop, "fast_mode_run": fast_mode_run, "stack_run": run_of("Stack")}, repeats, device)
        results["fast_mode"] = results.pop("fast_mode_run") / FAST_RUN_STEPS
        results["stack"] = results.pop("stack_run") / FAST_RUN_STEPS
        for label, fn in (("plain", plain), ("loratorio", loratorio(0.5)), ("loop", loop),
                          ("fast_mode", fast_mode_run)):
            before = memory.now()
            memory.reset_peak()
            fn()
            results[f"{label}_peak_mib"] = memory.peak() / MIB
            results[f"{label}_peak_over_start_mib"] = (memory.peak() - before) / MIB
        batched, looped = loratorio(0.5)(), loop()
        results["batched_vs_loop_max_diff"] = float((batched[0].float() - looped.cond[0].float()).abs().max())

    targets = [(module, [(lora, delta) for lora in bound for _, m, delta in lora.targets if m is module])
               for module in {m for lora in bound for _, m, _ in lora.targets}]
    originals = {module: module.weight.detach().clone() for module, _ in targets}

    def merge_loop():
        # The naive alternative: merge LoRA b, forward, restore, for every branch of every step.
        preds = [unet(x, t, ctx).sample]
        for b in range(n):
            for module, deltas in targets:
                for lora, delta in deltas:
                    if lora is bound[b]:
                        module.weight.data += strengths[b] * delta.weight_delta(module).to(module.weight)
            preds.append(unet(x, t, ctx).sample)
            for module, _ in targets:
                module.weight.data.copy_(originals[module])
        return preds

    def merge_all():
        for module, deltas in targets:
            for lora, delta in deltas:
                module.weight.data += strengths[bound.index(lora)] * delta.weight_delta(module).to(module.weight)

    def restore():
        for module, _ in targets:
            module.weight.data.copy_(originals[module])

    def timed_once(fn) -> float:
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        return time.perf_counter() - start

    # The Merge baseline: merging once per generation, then plain steps on the merged weights;
    # timed beside plain steps on the original weights, round-robin.
    samples: dict[str, list[float]] = {"plain": [], "merge_once": [], "merged_step": [], "merge_per_branch": []}
    merge_loop()
    for _ in range(repeats):
        samples["plain"].append(timed_once(plain))
        samples["merge_once"].append(timed_once(merge_all))
        samples["merged_step"].append(timed_once(plain))
        restore()
        samples["merge_per_branch"].append(timed_once(merge_loop))
    medians = {k: statistics.median(v) for k, v in samples.items()}
    for label in ("merge_once", "merged_step", "merge_per_branch"):
        results[f"{label}_ratio"] = medians[label] / medians["plain"]
    for label in ("loratorio", "loratorio_recenter1", "loop", "fast_mode", "stack"):
        results[f"{label}_ratio"] = results[label] / results["plain"]
    return results


def compose_fraction(unet, repeats: int, device: str, side: int = 128) -> dict:
    """compose() for N=4 on a 4 x side x side latent (128: SDXL) over one UNet forward there."""
    g = torch.Generator().manual_seed(1)
    base = torch.randn(2, 4, side, side, generator=g).to(device, unet.dtype)
    loras = base + 0.1 * torch.randn(4, 2, 4, side, side, generator=g).to(device, unet.dtype)
    ctx = torch.randn(2, 77, 768, generator=g).to(device, unet.dtype)
    t = torch.full((2,), 500.0, device=device)
    times = timed({"compose": lambda: compose(base[:1], base[1:], loras[:, :1], loras[:, 1:],
                                              patch_size=DEFAULTS.patch_size, temperature=DEFAULTS.temperature),
                   "unet": lambda: unet(base, t, ctx).sample}, max(1, repeats // 2), device)
    t_compose, t_unet = times["compose"], times["unet"]
    return {"compose_latent": side, "compose_n4_s": t_compose, "unet_forward_s": t_unet,
            "compose_n4_over_unet_forward": t_compose / t_unet}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loras", type=int, nargs="+", default=[1, 2, 4, 8], help="numbers of LoRAs N")
    ap.add_argument("--width", type=int, default=64, help="first block's channels (SD1.5: 320)")
    ap.add_argument("--latent", type=int, default=32, help="latent side (SD1.5 at 512 px: 64)")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                    help="model and latent dtype (GPUs: float16 as the WebUIs run)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--compose-latent", type=int, default=128, help="latent side for timing compose() alone")
    ap.add_argument("--memory", action="store_true",
                    help="also measure memory per LoRA type (LoRA, LoCon, LoHa, LoKr), two branches each")
    ap.add_argument("--memory-latent", type=int, default=16, help="latent side of the memory runs")
    ap.add_argument("--json", action="store_true", help="print machine-readable results")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    unet = build_unet(args.width, args.device, getattr(torch, args.dtype))
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        loras = []
        for i in range(max(args.loras)):
            path = Path(tmp) / f"random_{i}.safetensors"
            write_lora_of_type(unet, path, "locon", args.rank, seed=100 + i)
            loras.append(bind_lora(read_lora_file(path), {"unet": unet}))
        rows = [{"n": n, **bench_n(unet, loras, n, args.latent, args.repeats, args.device)} for n in args.loras]
        fraction = compose_fraction(unet, args.repeats, args.device, args.compose_latent)

    report = {"device": args.device, "dtype": args.dtype, "threads": torch.get_num_threads(), "width": args.width,
              "latent": args.latent, "rank": args.rank, "rows": rows, **fraction}
    if args.memory:
        report["memory"] = memory_by_type(unet, rank=args.rank, latent=args.memory_latent, device=args.device)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(format_table(report))
        if args.memory:
            print(format_memory(report["memory"], args.device))
    return report


def format_table(report: dict) -> str:
    lines = [f"device {report['device']} ({report['threads']} threads), {report['dtype']}, "
             f"UNet width {report['width']}, latent {report['latent']}x{report['latent']}, LoRA rank {report['rank']}",
             "times are ratios to one plain step (cond+uncond, one forward) of the same run",
             f"LoRAtorio Fast and Stack: mean step of a {FAST_RUN_STEPS}-step run (Fast: its default schedule, "
             "refreshes included)",
             "| N | floor N+1 | LoRAtorio | re-centring 1 | LoRAtorio Fast | Stack | loop of forwards "
             "| merge/unmerge per branch | merged step | merge once | peak MiB plain / LoRAtorio / Fast / loop |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(
            f"| {r['n']} | {r['n'] + 1} | {r['loratorio_ratio']:.2f} | {r['loratorio_recenter1_ratio']:.2f} | "
            f"{r['fast_mode_ratio']:.2f} | {r['stack_ratio']:.2f} | {r['loop_ratio']:.2f} | "
            f"{r['merge_per_branch_ratio']:.2f} | "
            f"{r['merged_step_ratio']:.2f} | {r['merge_once_ratio']:.2f} | {r['plain_peak_mib']:.0f} / "
            f"{r['loratorio_peak_mib']:.0f} / {r['fast_mode_peak_mib']:.0f} / {r['loop_peak_mib']:.0f} |")
    side = report["compose_latent"]
    lines.append(f"compose() for N=4 on 4x{side}x{side}: {report['compose_n4_s'] * 1000:.2g} ms = "
                 f"{report['compose_n4_over_unet_forward']:.2g} of one "
                 "UNet forward (batch 2) on the same latent")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
