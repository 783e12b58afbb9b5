"""The per-generation session of the WebUIs: what LoRAtorio holds for one ``p`` on top of the core's composing session.

Both WebUIs keep A1111 1.10's ``modules`` for scripts, extra networks, prompt parsing, processing and the built-in
Lora extension, so the WebUI things are here once: the prompt's tags and the pool, finding the LoRA files through
the Lora extension, the infotext, each LoRA's own text conditioning, and the errors kept for ``p.sample``. How the
model is called during sampling differs per host: a subclass each (``a1111.A1111Session``, ``forge.ForgeSession``).
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Optional

from torch import nn

from modules import prompt_parser, shared

from ..branch_runner import BranchRunner
from ..branches import MIXED, lora_of
from ..choices import Mode, TextEncoder
from ..composing_session import LIBRARY, ComposingSession, LoraRequest, WeightMaps
from ..image_tokens import check_patch_size
from ..params import LoratorioParams
from .console import log, note_once
from .lora_lookup import pool_names, resolve_lora
from .memory_settings import build_cache_bytes, file_cache_bytes
from .tags import EXTRA_NETWORK_NAME, RequestedLora, check_stray_tags, read_tags

# bindings whose left-out modules were logged: id -> weak reference (ids are reused once freed)
_REPORTED: dict[int, weakref.ref] = {}
_SESSION_ATTR = "_loratorio_session"


def get_session(p) -> Session | None:
    """The session of a generation LoRAtorio is enabled for (set by ``wiring.start_session``)."""
    return getattr(p, _SESSION_ATTR, None)


def checkpoint_of(sd_model) -> Any:
    """The checkpoint file whose weights a model object holds (A1111 loads a refiner of the same architecture
    into the loaded model object)."""
    return getattr(sd_model, "sd_model_checkpoint", None)


class Session(ComposingSession):
    """Everything LoRAtorio holds for one ``p`` (one generation), and its cleanup.

    ``error``: raised from ``p.sample`` instead of composing (see :meth:`capture_errors`).
    """

    def __init__(self, p, params: LoratorioParams, error: BaseException | None = None) -> None:
        super().__init__(params)
        self.p = p
        self.error = error
        self.tags: list = []
        self.has_text_encoder: list[bool] = []
        self.bound_model = None
        self.bound_checkpoint: Any = None
        self._prepared_key: Any = None
        self.branch_conds: dict[int, list] = {}
        self._branch_text: dict[tuple, tuple[Any, Any] | None] = {}
        self.weight_maps: WeightMaps = {}  # per image of the whole request (all batches)
        #: which requested LoRAs this generation composes and how (None: each as asked; a LoRA mapped to None is left
        #: out), e.g. an ADetailer pass's owners without their region hints (detailer.py)
        self.lora_choice: Optional[Callable[[RequestedLora], Optional[RequestedLora]]] = None

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

    def on_cfg_denoiser(self, params) -> None:
        """The WebUI's ``on_cfg_denoiser`` callback, once per sampling step of this generation."""
        raise NotImplementedError

    def composes_on(self, sd_model) -> bool:
        """Whether ``sd_model`` is the model, with the weights, the LoRAs were bound to: a refiner or a hires
        checkpoint is not (their steps run without LoRAtorio), also when A1111 loads it into the same object."""
        return sd_model is self.bound_model and checkpoint_of(sd_model) == self.bound_checkpoint

    # --- preparation (process_batch) ----------------------------------------------------------
    def requested(self) -> list[RequestedLora]:
        """The LoRAs to compose: the tags, then the pool's LoRAs not already tagged (as ``lora_choice`` keeps them)."""
        out = read_tags(self.tags, self.params.default_strength)
        named = {lora.name for lora in out}
        for name in pool_names(self.params.pool):
            if name not in named:
                out.append(RequestedLora(name, self.params.default_strength, "the pool"))
                named.add(name)
        if self.lora_choice is None:
            return out
        return [chosen for chosen in map(self.lora_choice, out) if chosen is not None]

    def prepare(self) -> None:
        """Resolve, read and bind the LoRAs of this batch (cached while tags and model are unchanged)."""
        if self.error is not None:  # p.sample raises it
            return
        check_stray_tags([*self.p.prompts, *(getattr(self.p, "hr_prompts", None) or [])])
        sd_model = shared.sd_model
        requested = self.requested()
        key = (tuple(requested), id(sd_model), checkpoint_of(sd_model), self.params.text_encoder)
        if key == self._prepared_key:
            return
        components = self.model_components(sd_model, unet_only=self.params.text_encoder is TextEncoder.UNET_ONLY)
        if requested:
            check_patch_size(self.params.patch_size, components["unet"])
        else:
            # A clean no-op, not an error: the accordion stays enabled while it is open, and the cells
            # of an X/Y/Z grid or the lines of a prompts file may have tags in some prompts only.
            # Nothing is hooked, so the image is the WebUI's own.
            self.warn_once(f"LoRAtorio is on but the prompt has no <{EXTRA_NETWORK_NAME}:NAME:STRENGTH> tag and "
                           "the pool is empty: generating without it.")
        LIBRARY.max_bytes = file_cache_bytes()  # the Settings tab's value
        entries = []

        def resolved() -> Iterator[LoraRequest]:  # one by one: a LoRA's lookup error comes before the next's
            for lora in requested:
                entry = resolve_lora(lora.name, lora.source)
                entries.append(entry)
                yield LoraRequest(lora.name, entry.filename, lora.strength, asked_in=f"in {lora.source}",
                                  label=f"LoRA '{lora.name}' ({os.path.basename(entry.filename)}, {lora.source})",
                                  hint=lora.region)

        self.bind(resolved(), components, keep_bindings=True)  # the model-loaded callback forgets them
        self.bound_model, self.bound_checkpoint = sd_model, checkpoint_of(sd_model)
        self.has_text_encoder = [any(not t[0].startswith("unet:") for t in b.targets) for b in self.loras]
        self._prepared_key = key
        self._write_infotext(entries)

    def _write_infotext(self, entries: list) -> None:
        """The LoRAs' hashes, and per LoRA the modules not applied ("name: k of n", logged once per file and model)."""
        hashes = []
        for entry in entries:
            if not getattr(entry, "shorthash", "") and hasattr(entry, "read_hash"):
                entry.read_hash()  # the WebUI hashes a LoRA lazily, on its first use
            hashes.append(getattr(entry, "shorthash", "") or "")
        names = [name.replace(":", "").replace(",", "") for name in self.names]  # as infotext values hold them
        partial = {}
        for name, bound in zip(names, self.loras, strict=True):
            missing = len(bound.not_applied())
            if not missing:
                continue
            partial[name] = f"{missing} of {missing + bound.applied}"
            seen = _REPORTED.get(id(bound))
            if seen is None or seen() is not bound:
                _REPORTED[id(bound)] = weakref.ref(bound)
                log(f"not every module of a LoRA applies: {bound.summary()}")
        if any(hashes):
            self.p.extra_generation_params["LoRAtorio hashes"] = ", ".join(
                f"{n}: {h}" for n, h in zip(names, hashes, strict=True) if h)
        if partial:
            self.p.extra_generation_params["LoRAtorio modules not applied"] = ", ".join(
                f"{n}: {v}" for n, v in partial.items())

    # --- text conditioning per branch (p.get_conds_with_caching) ------------------------------------
    def record_conds(self, original: Callable) -> Callable:
        """Wrap the WebUI's cond computation: after the base conds, compute each text-encoder LoRA's.

        The same function, prompts and steps are used (prompt editing and AND included), with a
        private cache so the WebUI's cond cache never holds a LoRA branch's conds. Not for a refiner's
        conds (its steps run without LoRAtorio).
        """
        def get_conds_with_caching(function, required_prompts, steps, caches, extra_network_data, hires_steps=None):
            result = original(function, required_prompts, steps, caches, extra_network_data, hires_steps)
            if self.error is None and any(self.has_text_encoder) and self.composes_on(shared.sd_model):
                # per LoRA with text-encoder parts its own conds; in Stack, last, every LoRA's parts at once
                stack = self.params.mode is Mode.STACK
                groups = [[i] if has_te and not stack else [] for i, has_te in enumerate(self.has_text_encoder)]
                groups += [[i for i, has_te in enumerate(self.has_text_encoder) if has_te]] if stack else []
                per_branch = []
                for group in groups:
                    if not group:
                        per_branch.append(None)
                        continue
                    with BranchRunner([self.loras[i] for i in group], [self.strengths[i] for i in group],
                                      build_cache_bytes(), labels=[self.labels[i] for i in group]) as runner, \
                            runner.whole_batch(MIXED):
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
            index = len(self.loras) if branch == MIXED else lora_of(branch)  # Stack's every-LoRA conds: last
            self._branch_text[key] = self._reconstruct_branch_text(sampler_args, step, index)
        return self._branch_text[key]

    def _reconstruct_branch_text(self, sampler_args: dict, step: int, lora: int) -> tuple[Any, Any] | None:
        conds = self.branch_conds.get(id(sampler_args.get("cond")))
        if conds is None or conds[lora] is None:
            return None
        unconds = self.branch_conds.get(id(sampler_args.get("uncond")))
        uncond = None
        if unconds is not None and unconds[lora] is not None:
            uncond = prompt_parser.reconstruct_cond_batch(unconds[lora], step)
        return prompt_parser.reconstruct_multicond_batch(conds[lora], step)[1], uncond

    def has_own_text(self, branch: int) -> bool:
        """Whether branch ``branch`` has text conditioning of its own: a LoRA with text-encoder parts, and in Stack
        the MIXED rows (every LoRA's parts at once; in the fast mode MIXED rows use the base text)."""
        if branch == MIXED:
            return self.params.mode is Mode.STACK and any(self.has_text_encoder)
        lora = lora_of(branch)
        return lora is not None and self.has_text_encoder[lora]

    # --- sampling ------------------------------------------------------------------------------
    def keeps_weight_maps(self) -> bool:
        """Always: masks, detailer passes and other extensions (``weight_map_api``) use them after the run."""
        return True

    @contextmanager
    def sampling(self) -> Iterator[None]:
        """Hooks and wrappers live only while ``p.sample`` runs; removed on every exit path."""
        with self.sampling_run(build_cache_bytes()):
            yield

    def run_ended(self) -> None:
        self._branch_text.clear()
        base = getattr(self.p, "iteration", 0) * self.p.batch_size  # the batch's first image in the request
        self.weight_maps.update({base + image: maps for image, maps in self.last_run_maps.items()})
