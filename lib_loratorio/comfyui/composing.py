"""ComfyUI's sampling hook: LoRAtorio on a clone of the model patcher, composing while a sampler runs.

How it hooks (read against ComfyUI's source, commit 3cd7b32 of January 2026, see docs/research/comfyui-3cd7b32.md):
- ``comfy.samplers._calc_cond_batch`` batches the prompt's and the negative prompt's rows itself and calls
  ``model_options["model_function_wrapper"](model.apply_model, {"input", "timestep", "c",
  "cond_or_uncond"})``; ``apply_model`` returns x0. LoRAtorio Apply clones the MODEL's patcher (so
  ComfyUI's own LoRA loaders and other patches upstream stay part of the base) and sets a wrapper there
  that evaluates the base and every LoRA branch through ``apply_model`` (or the wrapper set before,
  chained) and returns the composed rows (``model_call.WrapperSession``, shared with Forge).
- There is no per-image ``p.sample`` as on the WebUIs: the hooks' lifetime is one sampling run, an
  ``OUTER_SAMPLE`` wrapper on the patcher (``CFGGuider.sample`` runs ``outer_sample`` through it, every
  sampler node goes there). The branch runner's hooks are installed when it starts and removed in its
  ``finally``: after a finished run, an interrupt (``InterruptProcessingException``, raised from the
  sampler's progress callback) or any error. Outside a run the wrapper passes calls through.
- A ``CALC_COND_BATCH`` wrapper hands ComfyUI a model whose memory estimate is zero while composing, so
  the prompt's and the negative prompt's rows of a step come in one call (their weight maps are the
  same step's), and LoRAtorio splits its (N+1)x rows by ComfyUI's estimate of free memory itself.
- Area conditioning: an entry restricted to an area comes as a chunk of the area's crop, named by its uuid in
  ``transformer_options["uuids"]``; its rows are routed as a region of their own (``areas.py``).
- The step is the sampler's: the position of the call's sigma in ``transformer_options["sample_sigmas"]``
  (the run's schedule, set by ``CFGGuider.inner_sample``).
- Guidance-distilled Flux (``flux.is_guidance_distilled``) composes its prompt rows only: ComfyUI computes no
  negative rows at CFG 1, and with CFG above 1 they are the base model's. On a transformer the patch size must
  hold whole tokens (``image_tokens.check_patch_size``: even for 2x2-packed latents).
- Text encoders per branch: ComfyUI encodes the prompt before sampling, in a node. With LoRAtorio Text Encode the
  CONDITIONING carries each LoRA branch's own encoding (branch_text.py); the ``CALC_COND_BATCH`` wrapper takes those
  entries out and the model wrapper gives each LoRA branch's rows its own text (in Stack, the prompt rows the text with
  every LoRA's text-encoder parts). With CLIPTextEncode every branch has
  the base text (a LoRA's text-encoder part is then ignored: "UNet only").
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Optional

import torch
from comfy.patcher_extension import WrappersMP

from ..branches import MIXED, lora_of
from ..choices import Mode
from ..composing_session import LoraRequest
from ..errors import LoratorioError
from ..image_tokens import check_patch_size
from ..model_call import ModelCall, OneCallModel, RowLayout, WrapperFn, WrapperSession, chained_wrapper
from ..model_patches import describe_patches
from ..params import LoratorioParams
from .areas import AreaRegions, areas_of
from .branch_text import BranchConds, split_branch_conds, substitute_row
from .stack import LoraStack

KEY = "loratorio"  # our key among the patcher's wrappers and attachments
LOG = logging.getLogger("LoRAtorio")


def apply_loratorio(patcher: Any, stack: Optional[LoraStack], params: LoratorioParams) -> Any:
    """A clone of ``patcher`` that composes the LoRAs of ``stack`` when sampled (``patcher`` itself when the
    stack has no LoRA of non-zero strength: nothing is hooked)."""
    entries = [entry for entry in stack or () if entry.strength != 0]
    if not entries:
        return patcher
    if patcher.get_attachment(KEY) is not None:
        raise LoratorioError("This MODEL already comes from a LoRAtorio Apply node, and one model composes once: "
                             "chain every LoRAtorio LoRA node into the stack of a single LoRAtorio Apply.")
    unet = patcher.get_model_object("diffusion_model")
    check_patch_size(params.patch_size, unet)
    session = ComfySession(params)
    # bindings belong to this Apply's session: ComfyUI says nothing when it unloads a model
    session.bind((LoraRequest(e.name, e.path, e.strength, label=f"LoRA '{e.name}'",
                              asked_in=f"LoRA '{e.name}' in the LoRAtorio LoRA nodes", hint=e.region)
                  for e in entries),
                 {"unet": unet}, keep_bindings=False)
    for bound in session.loras:
        if bound.not_applied():
            LOG.warning("[LoRAtorio] not every module of a LoRA applies: %s", bound.summary())
    return session.install(patcher)


def session_of(patcher: Any) -> Optional[ComfySession]:
    """The LoRAtorio session a MODEL carries (set by LoRAtorio Apply; clones downstream share it)."""
    return patcher.get_attachment(KEY) if hasattr(patcher, "get_attachment") else None


class ComfySession(WrapperSession):
    """One LoRAtorio Apply's LoRAs and settings, and the state of the sampling run in progress."""

    memory_margin = 1.5

    def __init__(self, params: LoratorioParams) -> None:
        super().__init__(params)
        self.wrapper: Optional[WrapperFn] = None
        # the sampling run in progress
        self.latent_size: Optional[tuple[int, ...]] = None
        self.regions = AreaRegions()
        self._sigmas_seen: list[float] = []
        self.branch_text: BranchConds = {}  # this call's LoRA branches' own text conditioning (branch_text.py)

    def install(self, patcher: Any) -> Any:
        self.upstream_patches = describe_patches(patcher)
        clone = patcher.clone()
        self.wrapper = chained_wrapper(self, clone.model_options.get("model_function_wrapper"))
        clone.set_model_unet_function_wrapper(self.wrapper)
        clone.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, KEY, _outer_sample(self))
        clone.add_wrapper_with_key(WrappersMP.CALC_COND_BATCH, KEY, _calc_cond_batch(self))
        clone.set_attachments(KEY, self)
        return clone

    def run_ended(self) -> None:
        self.latent_size = None
        self.regions.clear()
        self._sigmas_seen = []
        self.branch_text = {}

    def step_of(self, timestep: torch.Tensor, options: dict) -> tuple[int, int]:
        """(step, steps) of a model call: where its sigma lies in the run's schedule."""
        sigma = float(timestep.flatten()[0])
        sigmas = options.get("sample_sigmas")
        if sigmas is not None and len(sigmas) > 1:
            later = sigmas[1:].detach().float().cpu()
            return min(int((later >= sigma * (1 - 1e-5)).sum()), len(sigmas) - 2), len(sigmas) - 1
        # a sampler that gives no schedule: count the run's noise levels
        if self.params.step_start > 0 or self.params.step_end < 1:
            raise LoratorioError("This sampler gives LoRAtorio no step schedule, which 'step_start' and 'step_end' "
                                 "need: set them to 0 and 1, or use a sampler node of ComfyUI's own.")
        if sigma not in self._sigmas_seen:
            self._sigmas_seen.append(sigma)
        step = self._sigmas_seen.index(sigma)
        return step, step + 1

    def composes(self, timestep: torch.Tensor, options: dict) -> bool:
        return self.params.composes_at(*self.step_of(timestep, options))

    # --- the seams of WrapperSession.call ---------------------------------------------------------
    def check_call(self, args: dict) -> None:
        size = tuple(args["input"].shape[2:])
        if self.latent_size is not None and size != self.latent_size and not self.regions.covers(
                _uuids(args), size):
            raise LoratorioError(f"ComfyUI sent LoRAtorio {size} latent pixels of a {self.latent_size} latent that "
                                 "belong to no conditioning area it knows (a node that crops the latent itself?): "
                                 "please report this with your workflow, or bypass LoRAtorio Apply.")

    def row_layout(self, args: dict) -> Optional[RowLayout]:
        layout = super().row_layout(args)
        return None if layout is None else self.regions.layout(layout, _uuids(args))

    def maps_per_image(self, maps: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        return self.regions.per_image(maps, self.latent_size) if self.latent_size else maps

    def step_of_call(self, args: dict) -> tuple[int, int]:
        return self.step_of(args["timestep"], args["c"].get("transformer_options", {}))

    def no_layout(self, call: ModelCall) -> torch.Tensor:
        raise LoratorioError(f"ComfyUI sent {call.args['input'].shape[0]} rows in {len(call.args['cond_or_uncond'])} "
                             "chunks, which LoRAtorio cannot lay out: please report this with your workflow.")

    def free_memory(self, device: torch.device) -> float:
        import comfy.model_management

        return comfy.model_management.get_free_memory(device)

    def branch_args(self, call: ModelCall, layout: RowLayout, idx: torch.Tensor, branches: torch.Tensor) -> dict:
        """The rows ``idx`` of the call, a LoRA branch's rows (in Stack the every-LoRA rows) with their own text where
        LoRAtorio Text Encode made one for the prompt their chunk came from."""
        sub = call.rows(idx, layout)
        uuids = call.args["c"].get("transformer_options", {}).get("uuids")
        if not self.branch_text or uuids is None:
            return sub
        stack = self.params.mode is Mode.STACK
        for j, (row, branch) in enumerate(zip(idx.tolist(), branches.tolist(), strict=True)):
            own = MIXED if branch == MIXED and stack else lora_of(branch)  # Stack's rows: every LoRA's text parts
            model_conds = None if own is None else self.branch_text.get(uuids[row // layout.per_chunk], {}).get(own)
            if model_conds is not None and not substitute_row(sub["c"], j, model_conds):
                LOG.warning("[LoRAtorio] a LoRA branch's own text conditioning does not fit its rows; it uses the "
                            "prompt's (prompts of other lengths in one batch?)")
        return sub


def _uuids(args: dict) -> list:
    """The conditioning entry of each chunk of a model call (ComfyUI's ``transformer_options["uuids"]``)."""
    return list(args["c"].get("transformer_options", {}).get("uuids") or [])


# Closures, not bound methods: ModelPatcher.clone() deep-copies model_options, which copies functions by
# reference but would copy a bound method's whole session.
def _outer_sample(session: ComfySession) -> Callable:
    def loratorio_outer_sample(executor: Any, *args: Any, **kwargs: Any) -> Any:
        options = getattr(executor.class_obj, "model_options", None) or {}
        current = options.get("model_function_wrapper")
        if current is not session.wrapper:
            raise LoratorioError(
                f"A node between LoRAtorio Apply and the sampler replaced the model function wrapper "
                f"({getattr(current, '__qualname__', type(current).__name__)}), so LoRAtorio would not compose: "
                "put LoRAtorio Apply after that node (it chains the wrapper it finds).")
        with session.sampling_run():
            return executor(*args, **kwargs)

    return loratorio_outer_sample


def _calc_cond_batch(session: ComfySession) -> Callable:
    def loratorio_calc_cond_batch(executor: Any, model: Any, conds: list, x_in: torch.Tensor, timestep: torch.Tensor,
                                  model_options: dict) -> Any:
        conds, session.branch_text = split_branch_conds(conds, list(zip(session.names, session.strengths,
                                                                          strict=True)))
        if session.runner is not None:
            session.latent_size = tuple(x_in.shape[2:])
            session.regions.areas = areas_of(conds, x_in)
            if session.composes(timestep, model_options.get("transformer_options", {})):
                model = OneCallModel(model)
        return executor(model, conds, x_in, timestep, model_options)

    return loratorio_calc_cond_batch
