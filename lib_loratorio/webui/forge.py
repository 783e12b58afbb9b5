"""Forge adapter: the current ``backend/`` Forge (read at commit dfdcbab: SD1.x, SD2.x, SDXL and Flux) and Forge Neo
(read at release 2.26: also Flux.2, Chroma, Lumina 2 and Z-Image; the families in forge_models.py).

How it hooks (read against Forge's source, see docs/research/forge-dfdcbab.md):
- Forge's CFG denoiser never calls A1111's inner model: ``backend.sampling.sampling_function``
  batches cond and uncond rows itself and calls the UNet patcher's ``model_function_wrapper``
  with ``(apply_model, {"input", "timestep", "c", "cond_or_uncond"})``. In
  ``process_before_every_sampling`` LoRAtorio clones the current UNet patcher (so ``<lora:>``
  merges, ControlNet and other extensions' patches stay) and installs a wrapper there that runs
  the base and every LoRA branch through ``apply_model`` (Forge's own model call: its memory
  management, dtype casts and predictor) and returns the composed x0 rows: the model-call sequence
  of ``model_call.WrapperSession``, shared with ComfyUI. A wrapper another extension installed
  before is chained: each branch evaluation goes through it.
- Rows come as chunks of B images, one chunk per entry of ``cond_or_uncond`` (0 cond, 1 uncond,
  uncond usually first); the step comes from ``on_cfg_denoiser``, which Forge still fires. A
  pre-CFG function keeps cond and uncond chunks in one call while composing (see model_call.OneCallModel).
- Branch LoRAs act through forward hooks on Forge's layers (``ForgeOperations.Linear`` is no
  ``nn.Linear``; hooks fire the same), installed around ``p.sample`` only: Forge's weights and its
  own LoRA patches are never touched.
- Flux.1 and Flux.2 are guidance-distilled: at CFG 1 Forge computes no uncond rows, so the composition is
  conditional only; uncond rows (CFG > 1) use the base model alone. A transformer's weight maps are placed
  on its image tokens by the model's own layout (image_tokens.py); the patch size must hold whole tokens.
- Neo keeps this contract (``sampling_function`` gained ``extra_model_options``, joined with the patcher's
  model options, where LoRAtorio's wrapper stays); what differs is in forge_models.py.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Callable, Optional

import torch
from torch import nn

from modules import prompt_parser

from ..flux import is_flux
from ..model_call import ModelCall, OneCallModel, RowLayout, WrapperSession, chained_wrapper
from ..model_patches import describe_patches
from ..params import LoratorioParams
from .adapter import HostAdapter
from .forge_models import check_family, model_components
from .session import Session

# c key of Forge's model call -> key of the text conditioning dict it was made from
_TEXT_KEYS = (("c_crossattn", "crossattn"), ("y", "vector"))
_UNKNOWN = object()


class ForgeSession(WrapperSession, Session):
    """The Forge sampling hook: a ``model_function_wrapper`` on a clone of the UNet patcher."""

    def __init__(self, p, params: LoratorioParams, error: Optional[BaseException] = None) -> None:
        super().__init__(p, params, error)
        self.step = 0
        self.total_steps = 1
        self.denoiser = None
        self.base_cond: Any = None  # the step's text conditioning of the prompt (tensor or dict)
        self._composition: Any = _UNKNOWN  # the step's AND parts per image, found when first needed
        self.patched: list[tuple[Any, Any, Any]] = []  # (engine, its unet patcher before, our clone)

    # --- host specifics -----------------------------------------------------------------------
    def model_components(self, sd_model, unet_only: bool) -> dict[str, nn.Module]:
        check_family(sd_model)
        return model_components(sd_model, unet_only)

    def run_ended(self) -> None:
        """Put back the UNet patcher that was current before LoRAtorio's clone (if still ours)."""
        super().run_ended()
        for engine, before, clone in reversed(self.patched):
            if engine.forge_objects.unet is clone:
                engine.forge_objects.unet = before
        self.patched.clear()

    # --- installing the wrapper (process_before_every_sampling) ------------------------------------
    def install(self) -> None:
        """Clone the current UNet patcher and set the model wrapper and the pre-CFG function on it;
        idempotent per sampling run (Forge calls the hook twice for a hires pass and resets
        ``forge_objects`` in between)."""
        engine = self.p.sd_model
        if self.runner is None or not self.loras or not self.composes_on(engine):
            if self.loras and not self.composes_on(engine):
                self.warn_once("The hires/refiner checkpoint differs from the one the LoRAs were bound to: "
                               "that pass runs without LoRAtorio.")
            return
        before = engine.forge_objects.unet
        if any(clone is before for _, _, clone in self.patched):
            return
        self.upstream_patches = describe_patches(before)
        clone = before.clone()
        previous = clone.model_options.get("model_function_wrapper")
        clone.set_model_unet_function_wrapper(chained_wrapper(self, previous))
        clone.add_sampler_pre_cfg_function(_one_call_pre_cfg(self))
        # room for the LoRA deltas beside the weights Forge keeps on the GPU
        dtype = getattr(clone.model, "computation_dtype", None) or torch.float32
        clone.add_extra_preserved_memory_during_sampling(self.unet_delta_numel() * dtype.itemsize)
        engine.forge_objects.unet = clone
        self.patched.append((engine, before, clone))

    def unet_delta_numel(self) -> int:
        return sum(delta.numel() for lora in self.loras for name, _, delta in lora.targets if name.startswith("unet:"))

    # --- the step ------------------------------------------------------------------------------
    def on_cfg_denoiser(self, params) -> None:
        denoiser = params.denoiser
        self.denoiser = denoiser
        self.step, self.total_steps = denoiser.step, max(1, denoiser.total_steps)
        self.base_cond = params.text_cond
        self._composition = _UNKNOWN

    def composing(self) -> bool:
        """Whether this step's model calls are composed (not passed through)."""
        return self.runner is not None and self.error is None and self.params.composes_at(self.step, self.total_steps)

    # --- the seams of WrapperSession.call ---------------------------------------------------------
    def check_call(self, args: dict) -> None:
        self.raise_error()

    def step_of_call(self, args: dict) -> tuple[int, int]:
        return self.step, self.total_steps  # from on_cfg_denoiser

    def no_layout(self, call: ModelCall) -> torch.Tensor:
        self.warn_once("Forge sent a model call LoRAtorio cannot lay out; it ran without LoRAtorio.")
        return call.run()

    def free_memory(self, device: torch.device) -> float:
        from backend import memory_management

        return memory_management.get_free_memory(device)

    def pass_key(self) -> Hashable:
        return "hires" if getattr(self.p, "is_hr_pass", False) else "first"

    def reference_latents(self) -> list[torch.Tensor]:
        """Neo's Flux transformers append the edit references it keeps in ``dynamic_args.ref_latents`` (a class
        attribute there; Forge's ``dynamic_args`` is a dict without them) after the image tokens."""
        from backend.args import dynamic_args

        refs = getattr(dynamic_args, "ref_latents", None)
        return list(refs or ()) if is_flux(self.diffusion_model) else []

    def branch_args(self, call: ModelCall, layout: RowLayout, idx: torch.Tensor, branches: torch.Tensor) -> dict:
        """Forge's wrapper arguments for rows ``idx``, each row a chunk of its own, with each LoRA
        branch's own text conditioning where its LoRA has text-encoder parts."""
        sub = call.rows(idx, layout)
        c = call.args["c"]
        for j, (row, branch) in enumerate(zip(idx.tolist(), branches.tolist(), strict=True)):
            if self.has_own_text(branch):
                self._branch_text_into(sub["c"], j, c, row, branch, layout.is_uncond[row], layout.per_chunk)
        return sub

    def _branch_text_into(self, sub_c: dict, j: int, c: dict, row: int, branch: int, uncond: bool,
                          per_chunk: int) -> None:
        args = self.denoiser.sampler.sampler_extra_args if self.denoiser is not None else {}
        text = self.branch_text_at(args, self.step, branch)
        source = None if text is None else text[1] if uncond else text[0]
        if source is None:
            return
        image = row % per_chunk
        index = image if uncond else self._cond_text_row(c, row, image)
        if index is None:
            return
        for c_key, text_key in _TEXT_KEYS:
            if c_key not in sub_c:
                continue
            value = source.get(text_key) if isinstance(source, dict) else source if c_key == "c_crossattn" else None
            if value is None:
                continue
            value, target = value[index], sub_c[c_key]
            if c_key == "c_crossattn" and value.shape[0] != target.shape[1] and target.shape[1] % value.shape[0] == 0:
                value = value.repeat(target.shape[1] // value.shape[0], 1)  # Forge repeats to a common length
            if target.shape[1:] == value.shape:
                target[j] = value.to(target)
            else:
                self.warn_once("Prompts of other lengths: a LoRA branch uses the base text conditioning.")

    def _cond_text_row(self, c: dict, row: int, image: int) -> Optional[int]:
        """Which row of the step's text conditioning a cond row was made from (its AND part)."""
        if self._composition is _UNKNOWN:
            cond = self.denoiser.sampler.sampler_extra_args.get("cond") if self.denoiser is not None else None
            self._composition = None if cond is None else prompt_parser.reconstruct_multicond_batch(cond, self.step)[0]
        composition = self._composition
        if composition is None or image >= len(composition):
            return None
        parts = [index for index, _ in composition[image]]
        if len(parts) == 1:
            return parts[0]
        base = self.base_cond
        base = base.get("crossattn") if isinstance(base, dict) else base
        row_text = c.get("c_crossattn")
        if base is None or row_text is None:
            return None
        for index in parts:
            candidate = base[index].to(row_text)
            if torch.equal(row_text[row, :candidate.shape[0]], candidate):
                return index
        return None


def _one_call_pre_cfg(session: ForgeSession) -> Callable:
    def loratorio_pre_cfg(model, cond, uncond, x, timestep, model_options):
        if session.composing():
            model = OneCallModel(model)
        return model, cond, uncond, x, timestep, model_options

    return loratorio_pre_cfg


class ForgeAdapter(HostAdapter):
    session_class = ForgeSession

    def before_every_sampling(self, session: Session) -> None:
        """Set LoRAtorio's model wrapper on the UNet patcher of this sampler run."""
        if isinstance(session, ForgeSession):
            session.install()


ADAPTER = ForgeAdapter()
