"""One composition on one host: its settings and LoRAs bound to the model, and the sampling run in progress.

Every host composes through a ComposingSession: the WebUIs' per-generation session (``webui/session.py``) and
ComfyUI's per-Apply session subclass it (hosts with a model function wrapper through ``model_call.WrapperSession``).
What is here is the same on every host: binding the requested LoRAs, the branch runner's lifetime (one sampling
run: its hooks are installed when the run starts and removed on every exit), one composer per pass of the run,
the composition's step range, and the weight maps the run keeps. What differs per host is a subclass's.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .branch_runner import DEFAULT_CACHE_BYTES, BranchRunner
from .choices import OutsideSteps, TextEncoder
from .composer import BranchComposer, Prediction
from .composition import BASE_MODEL
from .errors import LoratorioError, NonFiniteError
from .frames import StackedFrames
from .lora_library import LoraLibrary
from .network_names import BoundLora, bind_lora
from .region_hints import Hint

#: Text-encoder components of a LoRA file, left out when the text encoders are not composed.
TEXT_ENCODERS = ("te1", "te2", "te3")
#: LoRA files kept between generations (bounded; the host may set ``max_bytes``).
LIBRARY = LoraLibrary()
#: Per image of a run: (label, weight maps [N, h, w]) pairs, the mean over the last pass first, then single steps.
WeightMaps = dict[int, list[tuple[str, torch.Tensor]]]


@dataclass(frozen=True)
class LoraRequest:
    """A LoRA a composition asks for: its file, strength, and how messages name it."""

    name: str      # as the user named it (a tag's name, a node's file name): weight-map captions
    path: str
    strength: float
    label: str     # the LoRA in error messages, e.g. "LoRA 'alice' (alice.safetensors, <loratorio:alice:1>)"
    asked_in: str  # added to a binding error: "in <loratorio:alice:1>", "LoRA 'alice' in the LoRAtorio LoRA nodes"
    hint: Optional[Hint] = None  # where the user wants it to act (region_hints.py)


class ComposingSession:
    """A composition's settings and bound LoRAs, and the state of the sampling run in progress."""

    def __init__(self, params) -> None:
        self.params = params
        self.loras: list[BoundLora] = []
        self.names: list[str] = []
        self.labels: list[str] = []
        self.strengths: list[float] = []
        self.hints: list[Optional[Hint]] = []
        #: the denoiser the LoRAs are bound to (a UNet or a diffusion transformer)
        self.diffusion_model: Optional[nn.Module] = None
        #: how a video's frames were stacked into the composer's images (frames.py): its weight maps are stacked alike
        self.stacked: Optional[StackedFrames] = None
        # the sampling run in progress
        self.runner: Optional[BranchRunner] = None
        self.composers: dict[Hashable, BranchComposer] = {}  # one per pass (first pass, hires...)
        self._step_maps: dict[Hashable, list[tuple[str, dict[int, torch.Tensor]]]] = {}
        #: the weight maps of the last finished run (None: no run finished yet)
        self.last_run_maps: Optional[WeightMaps] = None
        #: the patches on the model before LoRAtorio (model_patches.describe_patches), named when the base model fails
        self.upstream_patches: list[str] = []

    # --- binding ---------------------------------------------------------------------------------
    def bind(self, requests: Iterable[LoraRequest], components: Mapping[str, nn.Module], *,
             keep_bindings: bool) -> None:
        """Read and bind the requested LoRAs to ``components`` (the live networks: ``unet``, ``te1``...).

        A file that cannot be read or does not fit the model raises, naming where it was asked for.
        ``keep_bindings``: keep them in LIBRARY for the next request on the same modules (for a host that
        says when it unloads a model, so that LIBRARY.forget_bindings lets the model go).
        """
        left_out = TEXT_ENCODERS if self.params.text_encoder is TextEncoder.UNET_ONLY else ()
        loras, kept = [], []
        for request in requests:
            try:
                if keep_bindings:
                    loras.append(LIBRARY.bind(request.path, components, left_out=left_out))
                else:
                    loras.append(bind_lora(LIBRARY.load(request.path), components, left_out=left_out))
            except LoratorioError as err:  # unreadable or not for this model: say which request asked for it
                raise type(err)(f"{err} ({request.asked_in})") from err
            kept.append(request)
        LIBRARY.trim()  # also when every file came from the cache and the limit was lowered
        self.loras, self.diffusion_model = loras, components["unet"]
        self.names, self.labels = [r.name for r in kept], [r.label for r in kept]
        self.strengths = [r.strength for r in kept]
        self.hints = [r.hint for r in kept]

    # --- one sampling run ----------------------------------------------------------------------------
    @contextmanager
    def sampling_run(self, cache_bytes: int = DEFAULT_CACHE_BYTES) -> Iterator[None]:
        """The branch runner's hooks live exactly as long as the block; removed on every exit path."""
        if self.runner is not None:  # a run inside a run of the same composition: the hooks are in place
            yield
            return
        self.runner = BranchRunner(self.loras, self.strengths, cache_bytes, labels=self.labels)
        try:
            with self.runner:
                yield
        except NonFiniteError as err:
            if err.who != BASE_MODEL or not self.upstream_patches:
                raise
            raise NonFiniteError(
                f"{err} Patches set on the model before LoRAtorio act on every branch and may cause it: "
                f"{'; '.join(self.upstream_patches)}. Try the model without them.", who=err.who) from err
        finally:
            self.runner = None
            self.last_run_maps = self._last_pass_maps()
            self.composers.clear()
            self.run_ended()

    def run_ended(self) -> None:
        """Host cleanup when a sampling run ends (any exit); ``last_run_maps`` holds its weight maps."""

    def composer(self, key: Hashable, prediction: Prediction = "x0") -> BranchComposer:
        """The composer of pass ``key`` of this run (made on its first model call)."""
        composer = self.composers.get(key)
        if composer is None:
            composer = self.composers[key] = BranchComposer(self.params, self.labels, prediction=prediction,
                                                            keep_weight_maps=self.keeps_weight_maps(),
                                                            hints=self.hints)
        return composer

    def keeps_weight_maps(self) -> bool:
        """Whether runs keep their weight maps (``last_run_maps``): with *Show weight maps*, or always where the host
        hands them on after the run (masks, detailer passes, other extensions)."""
        return self.params.show_weight_maps

    def outside_range(self, rows: int, run: Callable[[], torch.Tensor]) -> torch.Tensor:
        """A model call (``run``, of ``rows`` rows) of a step outside the composition range: every LoRA merged on
        every row (*Outside the range: merge*), or none (*off*)."""
        if self.params.outside_steps is OutsideSteps.OFF:
            return run()
        every_lora = torch.ones(rows, len(self.loras), dtype=torch.bool)
        with self.runner.rows(torch.zeros(rows, dtype=torch.long), active=every_lora):
            return run()

    # --- weight maps ---------------------------------------------------------------------------------
    def keep_step_maps(self, key: Hashable, step: int, total_steps: int) -> None:
        """Keep pass ``key``'s maps of this step when it is the first at or past a requested fraction of the run."""
        taken = self._step_maps.setdefault(key, [])
        fraction = step / max(1, total_steps)
        due = [f for f in self.params.weight_map_steps if fraction >= f]
        if len(due) > len(taken):
            label = f"step {step + 1}/{total_steps}"
            taken += [(label, dict(self.composers[key].last_weight_maps))] * (len(due) - len(taken))

    def _last_pass_maps(self) -> WeightMaps:
        """Per image: the mean maps of the run's last pass (hires when there is one), then its single steps."""
        if not self.composers:
            return {}
        key, last = list(self.composers.items())[-1]
        steps = self._step_maps.get(key, [])
        self._step_maps.clear()
        return {image: [("mean", maps)] + [(label, by_image[image]) for label, by_image in steps if image in by_image]
                for image, maps in self.maps_per_image(last.mean_weight_maps()).items()}

    def maps_per_image(self, maps: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """The run's mean maps by image, from the composer's by routing key (a host may key parts of an image apart,
        see ``model_call.WrapperSession.row_layout``)."""
        return maps
