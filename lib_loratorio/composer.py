"""Host-independent branch composer: one host model call in, N+1 branch evaluations, composed rows out.

A host (the WebUI's CFG denoiser, a diffusers pipeline, a test) calls its model on a batch of rows,
each row a conditional or unconditional prediction for one image. The composer replaces that call:
it asks ``evaluate`` for every (row, branch) pair the mode needs, in one batched call or in chunks,
and returns one composed prediction per host row, in the host's own row order and shapes.

The row layout is passed with every call and never cached: hosts chunk, split cond from uncond,
skip the uncond or add ``AND`` rows from call to call. What is carried between calls is only the
weight map of the current step, so that uncond rows arriving in a later call of the same step are
blended with the weights of their image's cond rows (docs/METHOD.md, step 7: W comes from the cond predictions).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch

from .composition import (
    BASE_MODEL,
    blend,
    check_branches_finite,
    check_finite,
    composite,
    patch_weights,
    recentred_uncond,
    switch_branch,
)
from .errors import LoratorioError
from .params import LoratorioParams

# evaluate(host_rows, branches) -> predictions [len(host_rows), C, H, W]; branch 0 = base, i = LoRA i.
BranchEvaluator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Prediction = Literal["x0", "eps"]

_OOM_ERRORS: tuple[type[BaseException], ...] = tuple(
    {getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError), torch.cuda.OutOfMemoryError}
)


class BranchComposer:
    """Composes N LoRA branches with the base model, one host model call at a time.

    ``labels[i]`` names LoRA i+1 in error messages (e.g. "LoRA 'alice' (alice.safetensors)").
    ``prediction="x0"`` for hosts whose model returns denoised x0 (k-diffusion): similarities are
    then computed on ``x - denoised``, which is proportional to eps for a given row.
    """

    def __init__(
        self,
        params: LoratorioParams,
        labels: Sequence[str],
        *,
        prediction: Prediction = "x0",
        keep_weight_maps: bool = False,
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

    # --- planning ---------------------------------------------------------------------------
    def _branches_for(self, is_uncond: bool, step: int, recenter: float) -> list[int]:
        n, mode = self.n_loras, self.params.mode
        if mode == "Switch":
            return [switch_branch(step, n, self.params.switch_every) + 1]
        if mode == "Composite":
            return list(range(1, n + 1))
        if is_uncond and recenter == 1.0:
            return [0]
        return list(range(n + 1))

    def _run(self, plan: list[tuple[int, int]], evaluate: BranchEvaluator, batch_limit: int | None) -> torch.Tensor:
        """Evaluate (row, branch) pairs grouped by branch, halving the chunk on out-of-memory.

        Chunks never cross a branch boundary in "per branch" evaluation.
        """
        rows = torch.tensor([r for r, _ in plan], dtype=torch.long)
        branches = torch.tensor([b for _, b in plan], dtype=torch.long)
        outputs, start = [], 0
        while start < len(plan):
            size = min((n for n in (batch_limit, self.oom_batch_limit) if n), default=len(plan))
            if self.params.evaluation == "per branch":
                size = min(size, int((branches[start:] == branches[start]).sum()))
            try:
                outputs.append(evaluate(rows[start:start + size], branches[start:start + size]))
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

        plan_rows = {r: self._branches_for(bool(is_uncond[r]), step, recenter) for r in range(x.shape[0])}
        n_branches = self.n_loras + 1
        plan = [(r, b) for b in range(n_branches) for r in range(x.shape[0]) if b in plan_rows[r]]
        flat = self._run(plan, evaluate, limit)
        table: dict[tuple[int, int], torch.Tensor] = {key: flat[i] for i, key in enumerate(plan)}

        out = torch.empty_like(flat[: x.shape[0]])
        cond_rows = [r for r in range(x.shape[0]) if not is_uncond[r]]
        uncond_rows = [r for r in range(x.shape[0]) if is_uncond[r]]
        if self.params.mode == "Switch":
            for r in range(x.shape[0]):
                (b,) = plan_rows[r]
                self._check(table[(r, b)].unsqueeze(0), [b], bool(is_uncond[r]))
                out[r] = table[(r, b)]
            return out
        if self.params.mode == "Composite":
            rows = list(range(x.shape[0]))
            loras = torch.stack([torch.stack([table[(r, b)] for r in rows]) for b in range(1, n_branches)])
            for r in rows:
                self._check(loras[:, r], list(range(1, n_branches)), bool(is_uncond[r]))
            return composite(loras).cond

        for rows, uncond in ((cond_rows, False), (uncond_rows, True)):
            if not rows:
                continue
            base = torch.stack([table[(r, 0)] for r in rows])
            check_finite(base, BASE_MODEL, _kind(uncond))
            if uncond and recenter == 1.0:
                out[rows] = base
                continue
            loras = torch.stack([torch.stack([table[(r, b)] for r in rows]) for b in range(1, n_branches)])
            check_branches_finite(loras, self.labels, _kind(uncond))
            if uncond:
                weights = self._uncond_weights(rows, image_of_row, x, base, loras)
                out[rows] = recentred_uncond(weights, base, loras, recenter).to(out.dtype)
            else:
                weights = self._weights(x[rows], base, loras)
                out[rows] = blend(weights, loras).to(out.dtype)
                self._remember(rows, image_of_row, weights)
        return out

    # --- helpers ------------------------------------------------------------------------------
    def _check(self, preds: torch.Tensor, branches: Sequence[int], uncond: bool) -> None:
        for pred, b in zip(preds, branches, strict=True):
            check_finite(pred, BASE_MODEL if b == 0 else self.labels[b - 1], _kind(uncond))

    def _weights(self, x: torch.Tensor, base: torch.Tensor, loras: torch.Tensor) -> torch.Tensor:
        if self.prediction == "x0":
            base, loras = x - base, x.unsqueeze(0) - loras
        p = self.params
        return patch_weights(loras, base, patch_size=p.patch_size, temperature=p.temperature,
                             top_k=p.top_k or None, selection=p.selection)

    def _remember(self, rows: list[int], image_of_row: Sequence[int], weights: torch.Tensor) -> None:
        """Per image, the mean weight map of its cond rows (several with AND prompts)."""
        per_image: dict[int, list[torch.Tensor]] = {}
        for i, r in enumerate(rows):
            per_image.setdefault(int(image_of_row[r]), []).append(weights[:, i])
        for image, maps in per_image.items():
            mean = torch.stack(maps).mean(dim=0)
            self._step_weights[image] = mean
            if self.keep_weight_maps:
                mean_cpu = mean.detach().float().cpu()
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
