"""Memory of LoRAtorio branches per LoRA type (LoRA, LoCon, LoHa, LoKr), for ``composbench.speed --memory``.

For each type, random files of that type are written for the benchmark UNet (SD1.5's architecture;
``--width 320`` is SD1.5's size) in the layouts trainers write (kohya names; LyCORIS factors for
LoHa and LoKr, conv factors flattened as LyCORIS stores them), read and bound with the runtime's own
loader, and one LoRAtorio step is run. Reported per type, in MiB: the files' tensors as held by the
library, the step's peak above the memory before it (peak RSS on a CPU, the allocator's peak on a
GPU), what is still held once the branch runner has ended, and, for comparison, the dense deltas
that LoRAtorio kept for the life of the process before it applied LoHa/LoKr in factored form.
"""

from __future__ import annotations

import gc
import math
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from lib_loratorio.branch_runner import BranchRunner
from lib_loratorio.composer import BranchComposer
from lib_loratorio.lora_files import read_lora_file
from lib_loratorio.lora_layers import LoHa, LoKr
from lib_loratorio.network_names import bind_lora
from lib_loratorio.params import LoratorioParams

from .random_loras import TYPES, write_lora_of_type

MIB = 2 ** 20


class Memory:
    """Current and peak memory: the CUDA allocator's, or the process's RSS (Linux)."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    def _status(self, field: str) -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) * 1024
        return float("nan")

    def now(self) -> float:
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.memory_allocated()
        return self._status("VmRSS:")

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS

    def peak(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        return self._status("VmHWM:")


def _one_step(unet, loras: list, latent: int, device: str) -> Callable[[], Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, unet.config.in_channels, latent, latent, generator=g).to(device, unet.dtype)
    ctx = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g).to(device, unet.dtype)
    t = torch.full((2,), 500.0, device=device)
    params = LoratorioParams(enabled=True, mode="LoRAtorio Fast")

    def step() -> Tensor:
        with BranchRunner(loras, [0.8] * len(loras)) as runner:
            def evaluate(rows, branches):
                rows = rows.to(device)
                with runner.rows(branches):
                    return unet(x[rows], t[rows], ctx[rows]).sample

            composer = BranchComposer(params, [f"LoRA {i + 1}" for i in range(len(loras))], prediction="eps")
            return composer(x, [False, True], [0, 0], step=0, evaluate=evaluate)

    return step


def memory_by_type(unet, types: tuple[str, ...] = TYPES, n_loras: int = 2, rank: int = 16, latent: int = 16,
                   device: str = "cpu") -> list[dict]:
    """One row per LoRA type: MiB held by the files, step peak and after-step memory above the start."""
    memory = Memory(device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        for kind in types:
            paths = [Path(tmp) / f"{kind}_{i}.safetensors" for i in range(n_loras)]
            for i, path in enumerate(paths):
                write_lora_of_type(unet, path, kind, rank, seed=200 + i)
            before = memory.now()
            files = [read_lora_file(p) for p in paths]
            loras = [bind_lora(f, {"unet": unet}) for f in files]
            memory.reset_peak()
            step = _one_step(unet, loras, latent, device)
            step()
            peak = memory.peak() - before
            after = memory.now() - before
            step()  # a second generation: reuses what the allocator kept, or grows
            again = memory.now() - before
            old_dense = sum(math.prod(d.shape) * 4 for f in files for d in f.modules.values()
                            if isinstance(d, (LoHa, LoKr)))
            rows.append({"type": kind, "n": n_loras, "files_mib": sum(f.nbytes for f in files) / MIB,
                         "disk_mib": sum(p.stat().st_size for p in paths) / MIB, "step_peak_mib": peak / MIB,
                         "held_after_step_mib": after / MIB, "held_after_second_step_mib": again / MIB,
                         "dense_kept_before_mib": old_dense / MIB})
            del files, loras, step
    return rows


def format_memory(rows: list[dict], device: str) -> str:
    what = "GPU allocator" if device.startswith("cuda") else "RSS"
    lines = [f"memory per LoRA type ({what}, MiB above the memory before the files were read; "
             "'dense kept before' = what earlier versions held for the process's life)",
             "| type | N | files held | step peak | held after the step (files incl.) | after a second step "
             "| dense kept before |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['type']} | {r['n']} | {r['files_mib']:.0f} | {r['step_peak_mib']:.0f} | "
                     f"{r['held_after_step_mib']:.0f} | {r['held_after_second_step_mib']:.0f} | "
                     f"{r['dense_kept_before_mib']:.0f} |")
    return "\n".join(lines)
