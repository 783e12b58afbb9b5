"""Host-independent branch composer: one host model call in, N+1 branch evaluations, composed rows out.

A host (the WebUI's CFG denoiser, a diffusers pipeline, a test) calls its model on a batch of rows,
each row a conditional or unconditional prediction for one image. The composer replaces that call:
it asks ``evaluate`` for every (row, branch) pair the mode needs, in one batched call or in chunks,
and returns one composed prediction per host row, in the host's own row order and shapes.

The row layout is passed with every call and never cached: hosts chunk, split cond from uncond,
skip the uncond or add ``AND`` rows from call to call. What is carried between calls is the
weight map of the current step, so that uncond rows arriving in a later call of the same step are
blended with the weights of their image's cond rows (docs/METHOD.md, step 7: W comes from the cond predictions),
and, for the fast mode, the maps of the last refresh step.

Fast mode ("LoRAtorio Fast"): on refresh steps every branch is evaluated as in LoRAtorio (with the
uncond rows the base model's, re-centring 1); on the steps between, every row is evaluated once:
prompt rows as branch MIXED (every LoRA, each scaled by its image's last weight maps, see
branch_runner and layer_maps), negative-prompt rows as the base model. The evaluator then receives
the maps of its MIXED rows as a third argument.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, Optional

import torch

from .branches import BASE, MIXED, lora_branch, lora_of
from .choices import Evaluation, Mode, WeightNorm
from .composition import (
    BASE_MODEL,
    blend,
    check_branches_finite,
    check_finite,
    composite,
    owner_weights,
    patch_weights,
    recentred_uncond,
    switch_branch,
)
from .errors import LoratorioError
from .params import LoratorioParams
from .region_hints import Hint, hint_prior

# evaluate(host_rows, branches[, maps]) -> predictions [len(host_rows), C, H, W]; branches: see branches.py (MIXED rows'
# weight maps [MIXED rows, N, H, W] then come as a third argument).
BranchEvaluator = Callable[..., torch.Tensor]
Prediction = Literal["x0", "eps"]

_OOM_ERRORS: tuple[type[BaseException], ...] = tuple(
    {getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError), torch.cuda.OutOfMemoryError}
)


class BranchComposer:
    """Composes N LoRA branches with the base model, one host model call at a time.

    ``labels[i]`` names LoRA i+1 in error messages (e.g. "LoRA 'alice' (alice.safetensors)").
    ``prediction="x0"`` for hosts whose model returns denoised x0 (k-diffusion): similarities are
    then computed on ``x - denoised``, which is proportional to eps for a given row.
    ``hints[i]``: LoRA i+1's region hint (region_hints.py) or None; they bias the weight maps' SoftMin
    by the *Region hint strength*.
    """

    def __init__(
        self,
        params: LoratorioParams,
        labels: Sequence[str],
        *,
        prediction: Prediction = "x0",
        keep_weight_maps: bool = False,
        hints: Sequence[Optional[Hint]] = (),
    ) -> None:
        if not labels:
            raise LoratorioError("LoRAtorio needs at least one LoRA: add a <loratorio:NAME:STRENGTH> tag.")
        self.params = params
        self.labels = list(labels)
        self.n_loras = len(self.labels)
        self.prediction = prediction
        self.keep_weight_maps = keep_weight_maps
        # rows per evaluation after an out-of-memory error, kept for the rest of the run
        self.oom_batch_limit: int | None = None
        self._step: int | None = None
        self._step_weights: dict[int, torch.Tensor] = {}
        self.uncond_fallbacks = 0
        self.weight_map_sums: dict[int, torch.Tensor] = {}
        self.weight_map_counts: dict[int, int] = {}
        self.last_weight_maps: dict[int, torch.Tensor] = {}
        self._refresh_maps: dict[int, torch.Tensor] = {}  # fast mode: image -> maps of the last refresh
        self.refresh_steps: set[int] = set()  # fast mode: the steps that evaluated every branch
        self.hints = list(hints) or [None] * self.n_loras
        if len(self.hints) != self.n_loras:
            raise LoratorioError(f"{len(self.hints)} region hints for {self.n_loras} LoRAs.")
        self._priors: dict[tuple, Optional[torch.Tensor]] = {}  # latent size -> hint prior (Stack: its maps)

    # --- planning ---------------------------------------------------------------------------
    def _branches_for(self, is_uncond: bool, step: int, recenter: float) -> list[int]:
        n, mode = self.n_loras, self.params.mode
        if mode is Mode.SWITCH:
            return [lora_branch(switch_branch(step, n, self.params.switch_every))]
        loras = [lora_branch(i) for i in range(n)]
        if mode is Mode.COMPOSITE:
            return loras
        if is_uncond and recenter == 1.0:
            return [BASE]
        return [BASE, *loras]

    def _run(self, plan: list[tuple[int, int]], evaluate: BranchEvaluator, batch_limit: int | None,
             maps: torch.Tensor | None = None) -> torch.Tensor:
        """Evaluate (row, branch) pairs grouped by branch, halving the chunk on out-of-memory.

        Chunks never cross a branch boundary in "per branch" evaluation. ``maps`` [len(plan), N, H, W]:
        the weight maps of the MIXED entries (other entries' are ignored).
        """
        rows = torch.tensor([r for r, _ in plan], dtype=torch.long)
        branches = torch.tensor([b for _, b in plan], dtype=torch.long)
        outputs, start = [], 0
        while start < len(plan):
            size = min((n for n in (batch_limit, self.oom_batch_limit) if n), default=len(plan))
            if self.params.evaluation is Evaluation.PER_BRANCH:
                size = min(size, int((branches[start:] == branches[start]).sum()))
            try:
                chunk = slice(start, start + size)
                if maps is None:
                    outputs.append(evaluate(rows[chunk], branches[chunk]))
                else:
                    mixed = branches[chunk] == MIXED
                    chunk_maps = maps[chunk][mixed] if bool(mixed.any()) else None
                    outputs.append(evaluate(rows[chunk], branches[chunk], chunk_maps))
            except _OOM_ERRORS as err:
                if size == 1:
                    raise LoratorioError(
                        "Out of memory even when evaluating one branch row at a time: use fewer LoRAs, a "
                        "smaller image, or the re-centring weight 1 (fewer evaluations).") from err
                self.oom_batch_limit = max(1, size // 2)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            start += size
        return torch.cat(outputs)

    # --- the call ---------------------------------------------------------------------------
    def __call__(
        self,
        x: torch.Tensor,
        is_uncond: Sequence[bool],
        image_of_row: Sequence[int],
        *,
        step: int,
        evaluate: BranchEvaluator,
        batch_limit: int | None = None,
        recenter: float | None = None,
    ) -> torch.Tensor:
        """Composed predictions for the host's rows x [R, C, H, W] (one model call of one step).

        is_uncond[r]: row r is an unconditional (negative prompt) row; image_of_row[r]: which image
        of the batch it belongs to. step: the sampling step, used to tie uncond rows to the weights
        of the same step's cond rows and by the Switch mode. evaluate: the branch evaluator of this
        call's rows. batch_limit: at most this many rows per evaluation in this call (with the
        *Max batch* setting, the smaller one wins). recenter: a re-centring the host forces over the
        setting (1.0 on guidance-distilled models: the uncond rows are the base model's).
        """
        if len(is_uncond) != x.shape[0] or len(image_of_row) != x.shape[0]:
            raise LoratorioError(
                f"Row layout has {len(is_uncond)} / {len(image_of_row)} entries for {x.shape[0]} rows.")
        if step != self._step:
            self._step, self._step_weights = step, {}
        recenter = self.params.recenter if recenter is None else recenter
        limit = min((n for n in (batch_limit, self.params.max_batch) if n), default=None)
        if self.params.mode is Mode.STACK:
            return self._stack(x, is_uncond, image_of_row, evaluate, limit)
        if self.params.mode is Mode.FAST:
            recenter = 1.0  # the uncond rows are the base model's on every step of the fast mode
            if not self.params.is_refresh_step(step):
                out = self._between_refreshes(x, is_uncond, image_of_row, evaluate, limit)
                if out is not None:
                    return out
            self.refresh_steps.add(step)

        plan_rows = {r: self._branches_for(bool(is_uncond[r]), step, recenter) for r in range(x.shape[0])}
        branches = [BASE, *(lora_branch(i) for i in range(self.n_loras))]
        plan = [(r, b) for b in branches for r in range(x.shape[0]) if b in plan_rows[r]]
        flat = self._run(plan, evaluate, limit)
        table: dict[tuple[int, int], torch.Tensor] = {key: flat[i] for i, key in enumerate(plan)}

        out = torch.empty_like(flat[: x.shape[0]])
        cond_rows = [r for r in range(x.shape[0]) if not is_uncond[r]]
        uncond_rows = [r for r in range(x.shape[0]) if is_uncond[r]]
        if self.params.mode is Mode.SWITCH:
            for r in range(x.shape[0]):
                (b,) = plan_rows[r]
                check_finite(table[(r, b)], self.labels[lora_of(b)], _kind(bool(is_uncond[r])))
                out[r] = table[(r, b)]
            return out
        if self.params.mode is Mode.COMPOSITE:
            rows = list(range(x.shape[0]))
            loras = torch.stack([torch.stack([table[(r, b)] for r in rows]) for b in branches[1:]])
            for r in rows:
                check_branches_finite(loras[:, r], self.labels, _kind(bool(is_uncond[r])))
            return composite(loras).cond

        for rows, uncond in ((cond_rows, False), (uncond_rows, True)):
            if not rows:
                continue
            base = torch.stack([table[(r, BASE)] for r in rows])
            check_finite(base, BASE_MODEL, _kind(uncond))
            if uncond and recenter == 1.0:
                out[rows] = base
                continue
            loras = torch.stack([torch.stack([table[(r, b)] for r in rows]) for b in branches[1:]])
            check_branches_finite(loras, self.labels, _kind(uncond))
            relative = self.params.weight_norm is WeightNorm.MAX
            if uncond:
                weights = self._applied(self._uncond_weights(rows, image_of_row, x, base, loras))
                out[rows] = recentred_uncond(weights, base, loras, recenter, relative).to(out.dtype)
            else:
                weights = self._weights(x[rows], base, loras)
                self._remember(rows, image_of_row, weights)
                out[rows] = blend(self._applied(weights), loras, base if relative else None).to(out.dtype)
        return out

    # --- one row per host row: the fast mode between refreshes, and Stack -----------------------------------
    def _between_refreshes(self, x: torch.Tensor, is_uncond: Sequence[bool], image_of_row: Sequence[int],
                           evaluate: BranchEvaluator, limit: int | None) -> torch.Tensor | None:
        """Prompt rows MIXED by their image's last maps (the weights they act with, see _applied), negative rows
        the base model. None when an image has no maps yet (the host's first call of it came after the refresh)."""
        if any(not is_uncond[r] and int(image_of_row[r]) not in self._refresh_maps for r in range(x.shape[0])):
            return None
        return self._one_row_each(x, is_uncond, image_of_row, evaluate, limit,
                                  lambda image: self._applied(self._refresh_maps[image]), self._refresh_maps.get)

    def _stack(self, x: torch.Tensor, is_uncond: Sequence[bool], image_of_row: Sequence[int],
               evaluate: BranchEvaluator, limit: int | None) -> torch.Tensor:
        """Mode Stack: prompt rows with every LoRA at its strength (inside its region where it has a hint: the
        hint's bias as a factor, e^-strength outside), negative rows the base model."""
        size = tuple(x.shape[-2:])
        key = ("stack", *size)
        if key not in self._priors:
            prior = hint_prior(self.hints, self.params.hint_strength, *size)
            self._priors[key] = torch.ones(self.n_loras, *size) if prior is None else prior.exp()
        maps = self._priors[key].to(x.device)
        return self._one_row_each(x, is_uncond, image_of_row, evaluate, limit, lambda image: maps,
                                  lambda image: maps)

    def _one_row_each(self, x: torch.Tensor, is_uncond: Sequence[bool], image_of_row: Sequence[int],
                      evaluate: BranchEvaluator, limit: int | None, applied: Callable[[int], torch.Tensor],
                      shown: Callable[[int], torch.Tensor]) -> torch.Tensor:
        """One evaluation per row: prompt rows MIXED, each LoRA acting by ``applied(image)`` [N, H, W], negative
        rows the base model; ``shown(image)``: the maps the weight-map pictures get for this step."""
        plan = [(r, BASE if is_uncond[r] else MIXED) for r in range(x.shape[0])]
        cond = [r for r in range(x.shape[0]) if not is_uncond[r]]
        maps = None
        if cond:
            template = applied(int(image_of_row[cond[0]]))
            maps = torch.stack([torch.zeros_like(template) if is_uncond[r] else applied(int(image_of_row[r]))
                                for r in range(x.shape[0])])
        order = sorted(range(len(plan)), key=lambda i: plan[i][1])  # base rows, then mixed rows: two slices
        plan = [plan[i] for i in order]
        flat = self._run(plan, evaluate, limit, None if maps is None else maps[order])
        out = torch.empty_like(flat)
        out[order] = flat
        for r in range(x.shape[0]):
            who = BASE_MODEL if is_uncond[r] else f"The LoRAs applied together ({', '.join(self.labels)})"
            check_finite(out[r], who, _kind(bool(is_uncond[r])))
        if self.keep_weight_maps:
            for image in {int(image_of_row[r]) for r in cond}:
                self._accumulate(image, shown(image))
        return out

    # --- helpers ------------------------------------------------------------------------------
    def _applied(self, weights: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """The weights the LoRAs act with (the SoftMin's, or rescaled to their patch's largest: weight_norm);
        ``dim``: the LoRA axis."""
        if self.params.weight_norm is not WeightNorm.MAX:
            return weights
        return owner_weights(weights.movedim(dim, 0)).movedim(0, dim)

    def _weights(self, x: torch.Tensor, base: torch.Tensor, loras: torch.Tensor) -> torch.Tensor:
        if self.prediction == "x0":
            base, loras = x - base, x.unsqueeze(0) - loras
        p = self.params
        size = tuple(base.shape[-2:])
        if size not in self._priors:
            self._priors[size] = hint_prior(self.hints, p.hint_strength, *size)
        prior = self._priors[size]
        return patch_weights(loras, base, patch_size=p.patch_size, temperature=p.temperature,
                             top_k=p.top_k or None, selection=p.selection,
                             prior=None if prior is None else prior.to(base.device))

    def _remember(self, rows: list[int], image_of_row: Sequence[int], weights: torch.Tensor) -> None:
        """Per image, the mean weight map of its cond rows (several with AND prompts)."""
        per_image: dict[int, list[torch.Tensor]] = {}
        for i, r in enumerate(rows):
            per_image.setdefault(int(image_of_row[r]), []).append(weights[:, i])
        for image, maps in per_image.items():
            mean = torch.stack(maps).mean(dim=0)
            self._step_weights[image] = self._refresh_maps[image] = mean
            if self.keep_weight_maps:
                self._accumulate(image, mean)

    def _accumulate(self, image: int, maps: torch.Tensor) -> None:
        mean_cpu = maps.detach().float().cpu()
        self.last_weight_maps[image] = mean_cpu
        self.weight_map_sums[image] = self.weight_map_sums.get(image, 0) + mean_cpu
        self.weight_map_counts[image] = self.weight_map_counts.get(image, 0) + 1

    def _uncond_weights(self, rows: list[int], image_of_row: Sequence[int], x: torch.Tensor,
                        base: torch.Tensor, loras: torch.Tensor) -> torch.Tensor:
        """The weights of each uncond row's image from this step's cond rows.

        A host that sends an uncond row before any cond row of its image in a step leaves nothing
        to reuse; then the uncond predictions themselves are compared (counted in uncond_fallbacks).
        """
        cached = [self._step_weights.get(int(image_of_row[r])) for r in rows]
        if all(w is not None for w in cached):
            return torch.stack(cached, dim=1)
        self.uncond_fallbacks += 1
        own = self._weights(x[rows], base, loras)
        return torch.stack([w if w is not None else own[:, i] for i, w in enumerate(cached)], dim=1)

    def mean_weight_maps(self) -> dict[int, torch.Tensor]:
        """Per image, the weight maps [N, H, W] averaged over the steps seen (needs keep_weight_maps)."""
        return {k: v / self.weight_map_counts[k] for k, v in self.weight_map_sums.items()}


def _kind(uncond: bool) -> str:
    return "unconditional" if uncond else "conditional"
