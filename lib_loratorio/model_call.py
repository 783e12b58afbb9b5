"""Composing one call of a ComfyUI-lineage ``model_function_wrapper`` (ComfyUI, and Forge's backend, which descends
from ComfyUI's sampling code). Host-independent: plain dicts and tensors, no host import.

Both hosts batch the rows of a sampling step themselves and, when a patcher has a model function
wrapper, call ``wrapper(apply_model, {"input", "timestep", "c", "cond_or_uncond"})`` instead of
``apply_model(input, timestep, **c)``. The rows come as chunks of B images, one chunk per entry of
``cond_or_uncond`` (0 prompt, 1 negative prompt); ``apply_model`` returns the denoised x0.
:meth:`WrapperSession.call`, the one sequence of such a call for every host of this kind, replaces it by the
branch composer's: every (row, branch) pair it asks for is evaluated through ``apply_model`` (or the wrapper
that was there before, chained), each row as a chunk of its own, with the branch's LoRA applied by the branch
runner's hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch

from .composing_session import ComposingSession
from .flux import is_guidance_distilled
from .frames import StackedFrames
from .image_tokens import token_layout
from .rows import take_rows

#: A model function wrapper: (apply_model, args) -> x0 rows.
WrapperFn = Callable[[Callable, dict], torch.Tensor]
#: ``c`` entries that are not per-row conditioning (Forge's linked ControlNet, the per-call options).
_NOT_ROWS = ("control_model", "transformer_options")


@dataclass(frozen=True)
class RowLayout:
    """Which host row is a negative-prompt row, and which image of the batch it belongs to."""

    is_uncond: list[bool]
    image_of_row: list[int]
    per_chunk: int

    @classmethod
    def of(cls, args: dict) -> Optional[RowLayout]:
        """The layout of a wrapper call, or None when its rows do not split into its chunks."""
        flags = list(args["cond_or_uncond"])
        rows = args["input"].shape[0]
        per_chunk = rows // max(1, len(flags))
        if not flags or per_chunk * len(flags) != rows:
            return None
        return cls([flags[r // per_chunk] == 1 for r in range(rows)], [r % per_chunk for r in range(rows)], per_chunk)


@dataclass(frozen=True)
class ModelCall:
    """One call of the host's model function wrapper, and the wrapper that was set before ours (chained)."""

    apply_model: Callable
    args: dict
    previous: Optional[WrapperFn] = None

    def run(self, args: Optional[dict] = None) -> torch.Tensor:
        """The host's model on ``args`` (this call's by default), through the previous wrapper if any."""
        a = self.args if args is None else args
        if self.previous is not None:
            return self.previous(self.apply_model, a)
        return self.apply_model(a["input"], a["timestep"], **a["c"])

    def rows(self, idx: torch.Tensor, layout: RowLayout) -> dict:
        """The wrapper arguments of rows ``idx``, each row a chunk of its own."""
        x, timestep, c = self.args["input"], self.args["timestep"], self.args["c"]
        n_rows = x.shape[0]
        flags = [1 if layout.is_uncond[r] else 0 for r in idx.tolist()]
        chunks = [r // layout.per_chunk for r in idx.tolist()]
        sub_c = {k: v if k in _NOT_ROWS else take_rows(v, idx, n_rows) for k, v in c.items()}
        sub_timestep = timestep[idx.to(timestep.device)]
        if "transformer_options" in c:
            sub_c["transformer_options"] = chunk_options(c["transformer_options"], flags, chunks, sub_timestep)
        return {"input": x[idx.to(x.device)], "timestep": sub_timestep, "c": sub_c, "cond_or_uncond": flags}


def chained_wrapper(session: WrapperSession, previous: Optional[WrapperFn]) -> WrapperFn:
    """The model function wrapper to set on the host's patcher: ``session.call(apply_model, args, previous)``.

    A closure, not a bound method: the patchers' clone() deep-copies model_options, which copies
    functions by reference but would copy a bound method's whole session.
    """
    def loratorio_model_function_wrapper(apply_model: Callable, args: dict) -> torch.Tensor:
        return session.call(apply_model, args, previous)

    return loratorio_model_function_wrapper


def chunk_options(options: dict, flags: list[int], chunks: list[int], timestep: torch.Tensor) -> dict:
    """The per-call transformer options for rows that are each a chunk of one image.

    ``chunks[j]``: the host's chunk row j came from. Keys the host derives from its chunks are
    rewritten: ``cond_or_uncond`` and ``sigmas`` (both hosts), ``uuids`` (ComfyUI: one per chunk),
    ``cond_mark`` / ``cond_indices`` / ``uncond_indices`` (Forge).
    """
    out = dict(options)
    out["cond_or_uncond"] = list(flags)
    out["sigmas"] = timestep[:1]
    if "uuids" in options:
        out["uuids"] = [options["uuids"][c] for c in chunks]
    if "cond_mark" in options:
        out["cond_mark"] = torch.tensor([float(f) for f in flags]).to(timestep)
    if "cond_indices" in options:
        out["cond_indices"] = [j for j, f in enumerate(flags) if f == 0]
    if "uncond_indices" in options:
        out["uncond_indices"] = [j for j, f in enumerate(flags) if f == 1]
    return out


def rows_that_fit(model: Any, x: torch.Tensor, free_memory: Callable[[torch.device], float],
                  margin: float = 1.0) -> Optional[int]:
    """How many rows one model call may take on a GPU, by the host's own estimate (``model.memory_required``
    of one row, times ``margin``) and its free memory; None off the GPU or without an estimate."""
    if x.device.type != "cuda" or not hasattr(model, "memory_required"):
        return None
    per_row = model.memory_required([1, *x.shape[1:]]) * margin
    return max(1, int(free_memory(x.device) // max(per_row, 1)))


class OneCallModel:
    """The host's model with a memory estimate of zero, so that the host batches the prompt's and the negative
    prompt's rows of a step into one wrapper call: the negative prompt's weights come from the same step's
    prompt rows (the host would otherwise send the negative prompt first, alone, when memory is short), and
    LoRAtorio splits its (N+1)x rows by free memory itself (:func:`rows_that_fit`)."""

    def __init__(self, model: Any) -> None:
        self._model = model

    def memory_required(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


class WrapperSession(ComposingSession):
    """A ComposingSession on a host that calls its model through a model function wrapper (Forge, ComfyUI).

    :meth:`call` is the wrapper's work, the same on both hosts; a host fills the seams: :meth:`step_of_call`
    (which sampling step a call belongs to), :meth:`no_layout` (a call whose rows do not split into its chunks),
    :meth:`free_memory` and ``memory_margin`` (how many rows fit on the GPU), and optionally :meth:`check_call`,
    :meth:`reference_latents`, :meth:`pass_key` and :meth:`branch_args`.
    """

    #: factor on the host's memory estimate of one row (the host's own batching may need more than it says)
    memory_margin = 1.0

    def call(self, apply_model: Callable, args: dict, previous: Optional[WrapperFn]) -> torch.Tensor:
        """One call of the model function wrapper: passed through outside a run, else composed (or the LoRAs merged,
        or none, on the steps outside the composition range)."""
        call = ModelCall(apply_model, args, previous)
        self.check_call(args)
        if self.runner is None:  # a model call outside a sampling run
            return call.run()
        layout = self.row_layout(args)
        if layout is None:
            return self.no_layout(call)
        step, steps = self.step_of_call(args)
        x = args["input"]
        if not self.params.composes_at(step, steps):
            return self.outside_range(x.shape[0], call.run)
        runner = self.runner
        tokens = token_layout(self.diffusion_model, x, args["c"], self.reference_latents())
        frames = self.stacked = StackedFrames(x, self.params.patch_size) if x.dim() == 5 else None  # a video
        def evaluate(idx: torch.Tensor, branches: torch.Tensor, maps: Optional[torch.Tensor] = None) -> torch.Tensor:
            sub = self.branch_args(call, layout, idx, branches)
            if frames is not None and maps is not None:
                maps = frames.maps(maps)
            with runner.rows(branches, maps=maps, tokens=tokens):
                out = call.run(sub)
            return out if frames is None else frames.stack(out)

        key = self.pass_key()
        composer = self.composer(key)
        # guidance-distilled Flux composes its prompt rows only: its negative-prompt rows (CFG above 1) are the base's
        out = composer(x if frames is None else frames.stack(x), layout.is_uncond, layout.image_of_row, step=step,
                       evaluate=evaluate, batch_limit=rows_that_fit(getattr(apply_model, "__self__", None), x,
                                                                    self.free_memory, self.memory_margin),
                       recenter=1.0 if is_guidance_distilled(self.diffusion_model) else None)
        if self.params.show_weight_maps and not all(layout.is_uncond):
            self.keep_step_maps(key, step, steps)
        return out if frames is None else frames.unstack(out)

    # --- seams ---------------------------------------------------------------------------------------
    def check_call(self, args: dict) -> None:
        """Raise what makes this call impossible to compose (before anything runs)."""

    def step_of_call(self, args: dict) -> tuple[int, int]:
        """(step, steps) of the sampling run a model call belongs to."""
        raise NotImplementedError

    def no_layout(self, call: ModelCall) -> torch.Tensor:
        """A call whose rows do not split into its chunks: run it as it is, or raise."""
        raise NotImplementedError

    def row_layout(self, args: dict) -> Optional[RowLayout]:
        """Which rows of a call are negative-prompt rows, and how they are keyed for routing (their image)."""
        return RowLayout.of(args)

    def free_memory(self, device: torch.device) -> float:
        """Bytes free on ``device`` by the host's own measure."""
        raise NotImplementedError

    def reference_latents(self) -> Sequence[torch.Tensor]:
        """Reference images a host hands its transformer outside the call's conditioning (their tokens follow the
        image's; see image_tokens)."""
        return ()

    def pass_key(self) -> Hashable:
        """Which pass of the run a call belongs to (one composer, and one set of weight maps, per pass)."""
        return "run"

    def branch_args(self, call: ModelCall, layout: RowLayout, idx: torch.Tensor, branches: torch.Tensor) -> dict:
        """The wrapper arguments of one branch evaluation: rows ``idx``, each a chunk of its own, as branches
        ``branches`` (a host may give a LoRA branch its own text conditioning)."""
        return call.rows(idx, layout)
