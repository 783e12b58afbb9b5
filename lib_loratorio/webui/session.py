"""The per-generation session: everything LoRAtorio holds for one ``p``, and its cleanup.

Both WebUIs keep A1111 1.10's ``modules`` for scripts, extra networks, prompt parsing, processing
and the built-in Lora extension; they differ in how the model is called during sampling, which a
subclass per host handles (``a1111.A1111Session``, ``forge.ForgeSession``).
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from modules import prompt_parser, shared

from ..branch_runner import BranchRunner
from ..choices import TextEncoder
from ..composer import BranchComposer
from ..errors import LoratorioError
from ..lora_library import LoraLibrary
from ..model_call import outside_range
from ..network_names import BoundLora
from ..params import LoratorioParams
from .console import log, note_once
from .lora_lookup import pool_names, resolve_lora
from .memory_settings import build_cache_bytes, file_cache_bytes
from .tags import EXTRA_NETWORK_NAME, RequestedLora, check_stray_tags, read_tags

TEXT_ENCODERS = ("te1", "te2", "te3")
LIBRARY = LoraLibrary()
# bindings whose left-out modules were logged: id -> weak reference (ids are reused once freed)
_REPORTED: dict[int, weakref.ref] = {}
_SESSION_ATTR = "_loratorio_session"


def get_session(p) -> Session | None:
    """The session of a generation LoRAtorio is enabled for (set by ``wiring.start_session``)."""
    return getattr(p, _SESSION_ATTR, None)


class Session:
    """Everything LoRAtorio holds for one ``p`` (one generation), and its cleanup.

    ``error``: raised from ``p.sample`` instead of composing (see :meth:`capture_errors`).
    """

    def __init__(self, p, params: LoratorioParams, error: BaseException | None = None) -> None:
        self.p = p
        self.params = params
        self.error = error
        self.tags: list = []
        self.loras: list[BoundLora] = []
        self.names: list[str] = []
        self.labels: list[str] = []  # each LoRA as error messages name it: name, file and tag
        self.strengths: list[float] = []
        self.has_text_encoder: list[bool] = []
        self.bound_model = None
        self._prepared_key: Any = None
        self.branch_conds: dict[int, list] = {}
        self._branch_text: dict[tuple, tuple[Any, Any] | None] = {}
        self.runner: BranchRunner | None = None
        self.composers: dict[Any, BranchComposer] = {}
        self.weight_maps: dict[int, list[tuple[str, torch.Tensor]]] = {}
        self._step_maps: dict[Any, list[tuple[str, dict[int, torch.Tensor]]]] = {}

    def attach(self) -> None:
        setattr(self.p, _SESSION_ATTR, self)

    def warn_once(self, message: str) -> None:
        note_once(self.p, message)

    # --- errors -------------------------------------------------------------------------------
    @contextmanager
    def capture_errors(self) -> Iterator[None]:
        """Keep what the block raises, for ``p.sample`` to raise (the first error wins).

        The WebUIs only print errors raised in script hooks, callbacks and extra networks and go on
        generating; raised from ``p.sample`` they stop the generation and reach the UI and the API.
        """
        try:
            yield
        except Exception as err:  # noqa: BLE001 - kept, and raised from p.sample
            if self.error is None:
                self.error = err

    def raise_error(self) -> None:
        """Raise the error kept for this generation (from ``p.sample`` and the model calls inside it)."""
        if self.error is not None:
            raise self.error

    # --- host specifics -----------------------------------------------------------------------
    def model_components(self, sd_model, unet_only: bool) -> dict[str, nn.Module]:
        """The live networks a LoRA binds to, keyed ``unet``, ``te1``, ``te2``..."""
        raise NotImplementedError

    def check_model(self, sd_model) -> None:
        """Raise LoratorioError when the settings cannot work on this model."""

    def on_cfg_denoiser(self, params) -> None:
        """The WebUI's ``on_cfg_denoiser`` callback, once per sampling step of this generation."""
        raise NotImplementedError

    def finish_sampling(self) -> None:
        """Host cleanup when ``p.sample`` ends (any exit)."""

    # --- preparation (process_batch) ----------------------------------------------------------
    def requested(self) -> list[RequestedLora]:
        """The LoRAs to compose: the tags, then the pool's LoRAs not already tagged."""
        out = read_tags(self.tags, self.params.default_strength)
        named = {lora.name for lora in out}
        for name in pool_names(self.params.pool):
            if name not in named:
                out.append(RequestedLora(name, self.params.default_strength, "the pool"))
                named.add(name)
        return out

    def prepare(self) -> None:
        """Resolve, read and bind the LoRAs of this batch (cached while tags and model are unchanged)."""
        if self.error is not None:  # p.sample raises it
            return
        check_stray_tags([*self.p.prompts, *(getattr(self.p, "hr_prompts", None) or [])])
        sd_model = shared.sd_model
        requested = self.requested()
        key = (tuple(requested), id(sd_model), self.params.text_encoder)
        if key == self._prepared_key:
            return
        if requested:
            self.check_model(sd_model)
        else:
            # A clean no-op, not an error: the accordion stays enabled while it is open, and the cells
            # of an X/Y/Z grid or the lines of a prompts file may have tags in some prompts only.
            # Nothing is hooked, so the image is the WebUI's own.
            self.warn_once(f"LoRAtorio is on but the prompt has no <{EXTRA_NETWORK_NAME}:NAME:STRENGTH> tag and "
                           "the pool is empty: generating without it.")
        unet_only = self.params.text_encoder is TextEncoder.UNET_ONLY
        components = self.model_components(sd_model, unet_only=unet_only)
        loras, hashes, labels = [], [], []
        left_out = TEXT_ENCODERS if unet_only else ()
        LIBRARY.max_bytes = file_cache_bytes()  # the Settings tab's value
        for lora in requested:
            entry = resolve_lora(lora.name, lora.source)
            try:
                loras.append(LIBRARY.bind(entry.filename, components, left_out=left_out))
            except LoratorioError as err:  # unreadable or not for this model: say which tag asked for it
                raise type(err)(f"{err} (in {lora.source})") from err
            labels.append(f"LoRA '{lora.name}' ({os.path.basename(entry.filename)}, {lora.source})")
            if not getattr(entry, "shorthash", "") and hasattr(entry, "read_hash"):
                entry.read_hash()  # the WebUI hashes a LoRA lazily, on its first use
            hashes.append(getattr(entry, "shorthash", "") or "")
        LIBRARY.trim()  # also when every file came from the cache and the setting was lowered
        names = [lora.name.replace(":", "").replace(",", "") for lora in requested]  # as infotext values hold them
        partial = {}
        for name, bound in zip(names, loras, strict=True):
            missing = len(bound.not_applied())
            if not missing:
                continue
            partial[name] = f"{missing} of {missing + bound.applied}"
            seen = _REPORTED.get(id(bound))
            if seen is None or seen() is not bound:  # once per file and model
                _REPORTED[id(bound)] = weakref.ref(bound)
                log(f"not every module of a LoRA applies: {bound.summary()}")
        self.loras, self.bound_model, self.labels = loras, sd_model, labels
        self.names = [lora.name for lora in requested]
        self.strengths = [lora.strength for lora in requested]
        self.has_text_encoder = [any(not t[0].startswith("unet:") for t in b.targets) for b in loras]
        self._prepared_key = key
        if any(hashes):
            self.p.extra_generation_params["LoRAtorio hashes"] = ", ".join(
                f"{n}: {h}" for n, h in zip(names, hashes, strict=True) if h)
        if partial:  # modules not applied, per LoRA, as "name: k of n"
            self.p.extra_generation_params["LoRAtorio modules not applied"] = ", ".join(
                f"{n}: {v}" for n, v in partial.items())

    # --- text conditioning per branch (p.get_conds_with_caching) ------------------------------------
    def record_conds(self, original: Callable) -> Callable:
        """Wrap the WebUI's cond computation: after the base conds, compute each text-encoder LoRA's.

        The same function, prompts and steps are used (prompt editing and AND included), with a
        private cache so the WebUI's cond cache never holds a LoRA branch's conds.
        """
        def get_conds_with_caching(function, required_prompts, steps, caches, extra_network_data, hires_steps=None):
            result = original(function, required_prompts, steps, caches, extra_network_data, hires_steps)
            if self.error is None and any(self.has_text_encoder):
                per_branch = []
                for i, has_te in enumerate(self.has_text_encoder):
                    if not has_te:
                        per_branch.append(None)
                        continue
                    with BranchRunner([self.loras[i]], [self.strengths[i]], build_cache_bytes(),
                                      labels=[self.labels[i]]) as runner, \
                            runner.whole_batch(1):
                        per_branch.append(original(function, required_prompts, steps, [[None, None]],
                                                   extra_network_data, hires_steps))
                self.branch_conds[id(result)] = per_branch
            return result

        return get_conds_with_caching

    def branch_text_at(self, sampler_args: dict, step: int, branch: int) -> tuple[Any, Any] | None:
        """(cond, uncond) text conditioning of LoRA ``branch``'s text encoder at ``step``, or None.

        ``sampler_args`` is the sampler's ``sampler_extra_args`` (its cond and uncond objects are
        the ones the WebUI computed, by identity). The uncond is None when the WebUI skipped it.
        Kept for the sampling run: a step's model calls (chunks, separate uncond) share it.
        """
        key = (id(sampler_args.get("cond")), id(sampler_args.get("uncond")), step, branch)
        if key not in self._branch_text:
            self._branch_text[key] = self._reconstruct_branch_text(sampler_args, step, branch)
        return self._branch_text[key]

    def _reconstruct_branch_text(self, sampler_args: dict, step: int, branch: int) -> tuple[Any, Any] | None:
        conds = self.branch_conds.get(id(sampler_args.get("cond")))
        if conds is None or conds[branch - 1] is None:
            return None
        unconds = self.branch_conds.get(id(sampler_args.get("uncond")))
        uncond = None
        if unconds is not None and unconds[branch - 1] is not None:
            uncond = prompt_parser.reconstruct_cond_batch(unconds[branch - 1], step)
        return prompt_parser.reconstruct_multicond_batch(conds[branch - 1], step)[1], uncond

    # --- sampling ------------------------------------------------------------------------------
    @contextmanager
    def sampling(self) -> Iterator[None]:
        """Hooks and wrappers live only while ``p.sample`` runs; removed on every exit path."""
        self.runner = BranchRunner(self.loras, self.strengths, build_cache_bytes(), labels=self.labels)
        try:
            with self.runner:
                yield
        finally:
            self.runner = None
            self._branch_text.clear()
            self.finish_sampling()
            self._collect_weight_maps()
            self.composers.clear()

    def new_composer(self, prediction: str) -> BranchComposer:
        return BranchComposer(self.params, self.labels, prediction=prediction,
                              keep_weight_maps=self.params.show_weight_maps)

    def in_step_range(self, step: int, total_steps: int) -> bool:
        return self.params.composes_at(step, total_steps)

    def call_outside_range(self, rows: int, run: Callable[[], torch.Tensor]) -> torch.Tensor:
        """A model call of a step outside the composition range (see model_call.outside_range)."""
        return outside_range(self.runner, rows, self.params.outside_steps, run)

    def capture_step_maps(self, key: Any, step: int, total_steps: int, composer: BranchComposer) -> None:
        """Keep this step's maps when it is the first step at or past a requested fraction of the run."""
        taken = self._step_maps.setdefault(key, [])
        fraction = step / max(1, total_steps)
        due = [f for f in self.params.weight_map_steps if fraction >= f]
        if len(due) > len(taken):
            label = f"step {step + 1}/{total_steps}"
            taken += [(label, dict(composer.last_weight_maps))] * (len(due) - len(taken))

    def _collect_weight_maps(self) -> None:
        """Per image of this batch: (label, maps [N, h, w]) of the final pass (hires when enabled)."""
        if not self.params.show_weight_maps or not self.composers:
            return
        key, last = list(self.composers.items())[-1]
        base = getattr(self.p, "iteration", 0) * self.p.batch_size
        for image, maps in last.mean_weight_maps().items():
            steps = [(label, by_image[image]) for label, by_image in self._step_maps.get(key, []) if image in by_image]
            self.weight_maps[base + image] = [("mean", maps)] + steps
        self._step_maps.clear()

