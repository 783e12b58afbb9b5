"""AUTOMATIC1111 (1.10.x) adapter: the sampling hook through the CFG denoiser's inner model.

How it hooks (read against the WebUI's source, see tests/a1111_standin/README.md):
- Every call of ``CFGDenoiser.forward`` fires ``on_cfg_denoiser`` with the step's full row tensor
  and text conditioning. There the denoiser's inner model is wrapped (lazily: the WebUI builds a
  new denoiser per batch and hires pass and drops the wrapper on refiner switches) and the row
  layout of this call is recorded: cond rows per image, then one uncond row per image.
- A refiner's steps run without LoRAtorio, also when A1111 loads a refiner of the same architecture
  into the loaded model object (``Session.composes_on`` compares the checkpoint too).
- The wrapper receives the inner-model calls (one, or chunks, or cond and uncond separately),
  finds which rows of the layout each covers, and replaces the call with the branch composer.
- Branch LoRAs act through forward hooks installed around ``p.sample`` only, removed in a
  ``finally``; the model's weights are never written.
- Errors are raised from inside ``p.sample`` so that they reach the UI and the API (the WebUI
  swallows exceptions raised in script hooks and callbacks; see ``Session.capture_errors``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from ..errors import LoratorioError
from ..rows import take_rows
from .adapter import HostAdapter
from .session import Session

_TEXT_KEYS = ("c_crossattn", "crossattn", "vector")


# --- the live networks -------------------------------------------------------------------------
def model_components(sd_model, unet_only: bool) -> dict[str, nn.Module]:
    """The live networks a LoRA binds to: A1111 SD1.x, SD2.x and SDXL layouts."""
    components = {"unet": sd_model.model.diffusion_model}
    if unet_only:
        return components
    conditioner = getattr(sd_model, "conditioner", None)
    if conditioner is not None:  # SDXL: embedders[0] CLIP-L (HF), embedders[1] OpenCLIP-G
        text = [e for e in conditioner.embedders if hasattr(e, "wrapped")]
        for key, embedder in zip(("te1", "te2"), text, strict=False):
            components[key] = getattr(embedder.wrapped, "transformer", None) or embedder.wrapped.model
    else:
        stage = getattr(sd_model.cond_stage_model, "wrapped", sd_model.cond_stage_model)
        components["te1"] = getattr(stage, "transformer", None) or stage.model
    return components


# --- the layout of one denoiser call ---------------------------------------------------------------
@dataclass
class StepLayout:
    """Rows of one CFGDenoiser.forward: the cond rows of each image, then one uncond row per image."""

    x_in: torch.Tensor
    is_uncond: list[bool]
    image_of_row: list[int]
    n_cond: int
    step: int
    total_steps: int
    cursor: int = 0

    def offset_of(self, x: torch.Tensor) -> int:
        """Which rows of the layout an inner-model call covers.

        The WebUI passes slices (views) of its row tensor, so the storage offset says where the
        call starts. A copy (another extension replaced the tensor) is matched by value, from the
        rows not yet served.
        """
        full, n = self.x_in, x.shape[0]
        if (x.device == full.device and x.dtype == full.dtype and x.dim() == full.dim()
                and x.untyped_storage().data_ptr() == full.untyped_storage().data_ptr()
                and x.stride() == full.stride()):
            delta = x.storage_offset() - full.storage_offset()
            if delta % full.stride(0) == 0 and 0 <= delta // full.stride(0) <= full.shape[0] - n:
                return delta // full.stride(0)
        starts = list(range(self.cursor, full.shape[0] - n + 1)) + list(range(0, self.cursor))
        for start in starts:
            if torch.equal(full[start:start + n], x):
                return start
        raise LoratorioError(
            "LoRAtorio could not match the model call to the sampler's rows (another extension may change "
            "the latents between the sampler and the model). Disable that extension or LoRAtorio.")


def layout_from_callback(params) -> StepLayout:
    denoiser = params.denoiser
    n_cond, n_uncond = params.text_cond.shape[0], params.text_uncond.shape[0]
    if params.x.shape[0] != n_cond + n_uncond:
        raise LoratorioError("LoRAtorio does not support this model type (an edit/InstructPix2Pix model?).")
    multicond = denoiser.sampler.sampler_extra_args.get("cond")
    repeats = [len(conds) for conds in getattr(multicond, "batch", [])]
    if sum(repeats) != n_cond or len(repeats) != n_uncond:
        repeats = [n_cond // n_uncond] * n_uncond
    image_of_row = [i for i, r in enumerate(repeats) for _ in range(r)] + list(range(n_uncond))
    return StepLayout(x_in=params.x, is_uncond=[False] * n_cond + [True] * n_uncond, image_of_row=image_of_row,
                      n_cond=n_cond, step=denoiser.step, total_steps=max(1, denoiser.total_steps))


# --- the per-generation session --------------------------------------------------------------------
class A1111Session(Session):
    """The A1111 sampling hook: the CFG denoiser's inner model is wrapped per step layout."""

    def __init__(self, p, params, error: Optional[BaseException] = None) -> None:
        super().__init__(p, params, error)
        self.layouts: dict[int, StepLayout] = {}
        self.wrapped: list[tuple[Any, "InnerModelWrapper"]] = []

    def model_components(self, sd_model, unet_only: bool) -> dict[str, nn.Module]:
        return model_components(sd_model, unet_only)

    def run_ended(self) -> None:
        super().run_ended()
        for denoiser, wrapper in self.wrapped:
            if denoiser.model_wrap is wrapper:
                denoiser.model_wrap = wrapper.inner
        self.wrapped.clear()
        self.layouts.clear()

    # --- text conditioning per branch -----------------------------------------------------------
    def cond_rows(self, cond: dict, idx: torch.Tensor, branches: torch.Tensor, layout: StepLayout,
                  offset: int, denoiser) -> dict:
        """The call's conditioning for rows ``idx``, with each LoRA branch's own text rows."""
        out = take_rows(cond, idx)
        for j, (row, branch) in enumerate(zip(idx.tolist(), branches.tolist(), strict=True)):
            if not self.has_own_text(branch):
                continue
            text = self.branch_text_at(denoiser.sampler.sampler_extra_args, layout.step, branch)
            r = offset + row
            source = None if text is None else text[0] if r < layout.n_cond else text[1]
            if source is None:
                continue
            index = r if r < layout.n_cond else r - layout.n_cond
            for key in _TEXT_KEYS:
                if key not in out:
                    continue
                target = out[key][0] if key == "c_crossattn" else out[key]
                value = (source[key] if isinstance(source, dict) else source)[index]
                if target.shape[1:] == value.shape:
                    target[j] = value.to(target)
                else:
                    self.warn_once("Padded or truncated prompts: a LoRA branch uses the base text conditioning.")
        return out

    # --- sampling ------------------------------------------------------------------------------
    def on_cfg_denoiser(self, params) -> None:
        denoiser = params.denoiser
        inner = denoiser.inner_model
        if not isinstance(inner, InnerModelWrapper):
            wrapper = InnerModelWrapper(inner, self, denoiser)
            denoiser.model_wrap = wrapper
            self.wrapped.append((denoiser, wrapper))
        self.layouts[id(denoiser)] = layout_from_callback(params)  # an error here is raised by the wrapper

    def call(self, inner: nn.Module, denoiser, x: torch.Tensor, sigma: torch.Tensor, cond: Any) -> torch.Tensor:
        self.raise_error()
        layout = self.layouts.get(id(denoiser))
        if layout is None or self.runner is None or not self.composes_on(getattr(inner, "inner_model", None)):
            # Not a step LoRAtorio laid out, or a refiner / hires checkpoint in place of the LoRAs' model.
            return inner(x, sigma, cond=cond)
        offset = layout.offset_of(x)
        layout.cursor = offset + x.shape[0]
        if not self.params.composes_at(layout.step, layout.total_steps):
            return self.outside_range(x.shape[0], lambda: inner(x, sigma, cond=cond))

        def evaluate(idx: torch.Tensor, branches: torch.Tensor, maps: torch.Tensor | None = None) -> torch.Tensor:
            rows = idx.to(x.device)
            sub = self.cond_rows(cond, idx, branches, layout, offset, denoiser)
            with self.runner.rows(branches, maps=maps):
                return inner(x[rows], sigma[rows], cond=sub)

        from modules import sd_samplers_timesteps

        eps = isinstance(denoiser, sd_samplers_timesteps.CFGDenoiserTimesteps)  # DDIM/PLMS/UniPC: eps
        composer = self.composer(id(denoiser), "eps" if eps else "x0")  # a denoiser per pass
        rows = slice(offset, offset + x.shape[0])
        out = composer(x, layout.is_uncond[rows], layout.image_of_row[rows], step=layout.step, evaluate=evaluate)
        if self.params.show_weight_maps and not all(layout.is_uncond[rows]):
            self.keep_step_maps(id(denoiser), layout.step, layout.total_steps)
        return out


class InnerModelWrapper(nn.Module):
    """Stands in for the CFG denoiser's inner model; everything but the call passes through.

    An nn.Module because the denoiser registers ``model_wrap`` as a child module.
    """

    def __init__(self, inner: nn.Module, session: A1111Session, denoiser) -> None:
        super().__init__()
        object.__setattr__(self, "inner", inner)  # not registered: no second copy in state_dict
        object.__setattr__(self, "session", session)
        object.__setattr__(self, "denoiser", denoiser)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any = None, **kwargs) -> torch.Tensor:
        if kwargs:
            return self.inner(x, sigma, cond=cond, **kwargs)
        return self.session.call(self.inner, self.denoiser, x, sigma, cond)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "inner"), name)


class A1111Adapter(HostAdapter):
    session_class = A1111Session


ADAPTER = A1111Adapter()
