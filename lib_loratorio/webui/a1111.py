"""AUTOMATIC1111 (1.10.x) adapter: tags, per-generation session, the sampling hook, weight maps.

How it hooks (read against the WebUI's source, see tests/a1111_standin/README.md):
- ``<loratorio:NAME:STRENGTH>`` is an extra-network type of its own, so the built-in Lora extension
  never merges these files; its ``activate`` only records the tags on ``p``.
- Every call of ``CFGDenoiser.forward`` fires ``on_cfg_denoiser`` with the step's full row tensor
  and text conditioning. There the denoiser's inner model is wrapped (lazily: the WebUI builds a
  new denoiser per batch and hires pass and drops the wrapper on refiner switches) and the row
  layout of this call is recorded: cond rows per image, then one uncond row per image.
- The wrapper receives the inner-model calls (one, or chunks, or cond and uncond separately),
  finds which rows of the layout each covers, and replaces the call with the branch composer.
- Branch LoRAs act through forward hooks installed around ``p.sample`` only, removed in a
  ``finally``; the model's weights are never written.
- Errors are raised from inside ``p.sample`` so that they reach the UI and the API (the WebUI
  swallows exceptions raised in script hooks and callbacks).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

from modules import extra_networks, prompt_parser, script_callbacks, shared

from ..branch_runner import BranchRunner
from ..composer import BranchComposer
from ..errors import LoratorioError
from ..lora_library import LoraLibrary
from ..network_names import BoundLora
from ..params import LoratorioParams

EXTRA_NETWORK_NAME = "loratorio"
LIBRARY = LoraLibrary()
_REPORTED: set[int] = set()  # ids of bindings (kept alive by LIBRARY) whose unmatched keys were logged
_TEXT_KEYS = ("c_crossattn", "crossattn", "vector")


def log(message: str) -> None:
    print(f"[LoRAtorio] {message}")


# --- LoRA names, as the Lora cards resolve them ----------------------------------------------------
def _lora_module():
    try:
        import networks  # the built-in Lora extension's module (extensions-builtin/Lora)
    except ImportError:
        raise LoratorioError("LoRAtorio finds LoRA files through the built-in Lora extension, which is not "
                             "loaded: enable 'Lora' in the Extensions tab and restart.") from None
    return networks


def resolve_lora(name: str):
    """The built-in Lora extension's entry for NAME (alias, file name, or a subfolder path)."""
    networks = _lora_module()

    def lookup():
        if name.lower() in networks.forbidden_network_aliases:
            entry = networks.available_networks.get(name)
        else:
            entry = networks.available_network_aliases.get(name)
        if entry is None and ("/" in name or "\\" in name):
            wanted = os.path.normcase(os.path.normpath(name))
            entry = next((e for e in networks.available_networks.values()
                          if os.path.normcase(os.path.splitext(e.filename)[0]).endswith(wanted)), None)
        return entry

    entry = lookup()
    if entry is None:
        networks.list_available_networks()  # a file added since start-up
        entry = lookup()
    if entry is None:
        raise LoratorioError(
            f"Unknown LoRA '{name}' in <{EXTRA_NETWORK_NAME}:{name}:...>: no LoRA file or alias of that name in "
            "the Lora folder. Use the name shown on its Lora card (names are case-sensitive).")
    return entry


def model_components(sd_model, unet_only: bool) -> dict[str, nn.Module]:
    """The live networks a LoRA binds to: A1111 SD1.x, SD2.x and SDXL layouts."""
    components = {"unet": sd_model.model.diffusion_model}
    if unet_only:
        return components
    conditioner = getattr(sd_model, "conditioner", None)
    if conditioner is not None:  # SDXL: embedders[0] CLIP-L (HF), embedders[1] OpenCLIP-G
        text = [e for e in conditioner.embedders if hasattr(e, "wrapped")]
        for key, embedder in zip(("te1", "te2"), text):
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
    branch_text: dict[int, tuple[Any, Any]] = field(default_factory=dict)

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


def _take_rows(value: Any, idx: torch.Tensor) -> Any:
    if isinstance(value, torch.Tensor):
        return value[idx.to(value.device)]
    if isinstance(value, list):
        return [_take_rows(v, idx) for v in value]
    if isinstance(value, dict):
        return {k: _take_rows(v, idx) for k, v in value.items()}
    return value


# --- the per-generation session --------------------------------------------------------------------
class Session:
    """Everything LoRAtorio holds for one ``p`` (one generation), and its cleanup."""

    def __init__(self, p, params: LoratorioParams, error: Optional[BaseException] = None) -> None:
        self.p = p
        self.params = params
        self.error = error
        self.tags: list = []
        self.loras: list[BoundLora] = []
        self.names: list[str] = []
        self.strengths: list[float] = []
        self.has_text_encoder: list[bool] = []
        self.bound_model = None
        self._prepared_key: Any = None
        self.branch_conds: dict[int, list] = {}
        self.runner: Optional[BranchRunner] = None
        self.layouts: dict[int, StepLayout] = {}
        self.composers: dict[int, BranchComposer] = {}
        self.wrapped: list[tuple[Any, "InnerModelWrapper"]] = []
        self.weight_maps: dict[int, list[tuple[str, torch.Tensor]]] = {}
        self._step_maps: dict[int, list[tuple[str, dict[int, torch.Tensor]]]] = {}
        self.warned: set[str] = set()

    def warn_once(self, message: str) -> None:
        if message not in self.warned:
            self.warned.add(message)
            log(message)

    # --- preparation (process_batch) ----------------------------------------------------------
    def wanted(self) -> list[tuple[str, float]]:
        """(name, strength) of every branch: the tags, then the pool."""
        out: list[tuple[str, float]] = []
        for tag in self.tags:
            if not tag.positional:
                raise LoratorioError(f"<{EXTRA_NETWORK_NAME}:...> without a LoRA name: "
                                     f"write <{EXTRA_NETWORK_NAME}:NAME:STRENGTH>.")
            name = tag.positional[0]
            raw = tag.positional[1] if len(tag.positional) > 1 else tag.named.get("w", self.params.default_strength)
            try:
                strength = float(raw)
            except ValueError:
                raise LoratorioError(f"<{EXTRA_NETWORK_NAME}:{name}:{raw}>: the strength must be a number, "
                                     f"e.g. <{EXTRA_NETWORK_NAME}:{name}:0.8>.") from None
            out.append((name, strength))
        named = {n for n, _ in out}
        for name in self._pool_names():
            if name not in named:
                out.append((name, self.params.default_strength))
                named.add(name)
        return out

    def _pool_names(self) -> list[str]:
        names: list[str] = []
        for item in self.params.pool:
            folder = item if os.path.isabs(item) else os.path.join(shared.cmd_opts.lora_dir, item)
            if os.path.isdir(folder):
                for root, _, files in os.walk(folder):
                    names += sorted(os.path.splitext(f)[0] for f in files if f.endswith(".safetensors"))
            else:
                names.append(item)
        return names

    def prepare(self) -> None:
        """Resolve, read and bind the LoRAs of this batch (cached while tags and model are unchanged)."""
        sd_model = shared.sd_model
        wanted = self.wanted()
        key = (tuple(wanted), id(sd_model), self.params.text_encoder)
        if key == self._prepared_key:
            return
        unet_only = self.params.text_encoder == "UNet only"
        components = model_components(sd_model, unet_only=unet_only)
        loras, hashes = [], {}
        for name, _ in wanted:
            entry = resolve_lora(name)
            loras.append(LIBRARY.bind(entry.filename, components))
            if not getattr(entry, "shorthash", "") and hasattr(entry, "read_hash"):
                entry.read_hash()  # the WebUI hashes a LoRA lazily, on its first use
            hashes[name] = getattr(entry, "shorthash", "") or ""
        for bound in loras:
            # text-encoder keys left out on purpose ("UNet only") are not worth a note
            missed = [k for k in bound.unmatched if not (unet_only and k.startswith(("te1:", "te2:")))]
            if missed and id(bound) not in _REPORTED:  # once per file and model
                _REPORTED.add(id(bound))
                log(bound.summary())
        self.loras, self.bound_model = loras, sd_model
        self.names = [n for n, _ in wanted]
        self.strengths = [s for _, s in wanted]
        self.has_text_encoder = [any(t[0].startswith(("te1:", "te2:")) for t in b.targets) for b in loras]
        self._prepared_key = key
        if hashes:
            self.p.extra_generation_params["LoRAtorio hashes"] = ", ".join(
                f"{n.replace(':', '').replace(',', '')}: {h}" for n, h in hashes.items() if h)

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
                    with BranchRunner([self.loras[i]], [self.strengths[i]], LIBRARY.device_copies) as runner, \
                            runner.whole_batch(1):
                        per_branch.append(original(function, required_prompts, steps, [[None, None]],
                                                   extra_network_data, hires_steps))
                self.branch_conds[id(result)] = per_branch
            return result

        return get_conds_with_caching

    def branch_text(self, layout: StepLayout, denoiser, branch: int) -> Optional[tuple[Any, Any]]:
        """(cond rows, uncond rows) of LoRA ``branch``'s text encoder at this step, or None."""
        if branch in layout.branch_text:
            return layout.branch_text[branch]
        args = denoiser.sampler.sampler_extra_args
        conds = self.branch_conds.get(id(args.get("cond")))
        unconds = self.branch_conds.get(id(args.get("uncond")))
        text = None
        if conds is not None and unconds is not None and conds[branch - 1] is not None:
            text = (prompt_parser.reconstruct_multicond_batch(conds[branch - 1], layout.step)[1],
                    prompt_parser.reconstruct_cond_batch(unconds[branch - 1], layout.step))
        layout.branch_text[branch] = text
        return text

    def cond_rows(self, cond: dict, idx: torch.Tensor, branches: torch.Tensor, layout: StepLayout,
                  offset: int, denoiser) -> dict:
        """The call's conditioning for rows ``idx``, with each LoRA branch's own text rows."""
        out = _take_rows(cond, idx)
        for j, (row, branch) in enumerate(zip(idx.tolist(), branches.tolist())):
            if branch == 0 or not self.has_text_encoder[branch - 1]:
                continue
            text = self.branch_text(layout, denoiser, branch)
            if text is None:
                continue
            r = offset + row
            source = text[0] if r < layout.n_cond else text[1]
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
    @contextmanager
    def sampling(self) -> Iterator[None]:
        """Hooks and wrappers live only while ``p.sample`` runs; removed on every exit path."""
        self.runner = BranchRunner(self.loras, self.strengths, LIBRARY.device_copies)
        try:
            with self.runner:
                yield
        finally:
            self.runner = None
            for denoiser, wrapper in self.wrapped:
                if denoiser.model_wrap is wrapper:
                    denoiser.model_wrap = wrapper.inner
            self.wrapped.clear()
            self._collect_weight_maps()
            self.layouts.clear()
            self.composers.clear()

    def on_cfg_denoiser(self, params) -> None:
        denoiser = params.denoiser
        try:
            self.layouts[id(denoiser)] = layout_from_callback(params)
        except LoratorioError as err:
            self.layouts.pop(id(denoiser), None)
            self.error = err
        inner = denoiser.inner_model
        if not isinstance(inner, InnerModelWrapper):
            wrapper = InnerModelWrapper(inner, self, denoiser)
            denoiser.model_wrap = wrapper
            self.wrapped.append((denoiser, wrapper))

    def composer_for(self, denoiser) -> BranchComposer:
        composer = self.composers.get(id(denoiser))
        if composer is None:
            from modules import sd_samplers_timesteps

            eps = isinstance(denoiser, sd_samplers_timesteps.CFGDenoiserTimesteps)  # DDIM/PLMS/UniPC: eps
            composer = BranchComposer(self.params, len(self.loras), lambda rows, branches: None,
                                      prediction="eps" if eps else "x0",
                                      keep_weight_maps=self.params.show_weight_maps)
            self.composers[id(denoiser)] = composer
        return composer

    def in_step_range(self, layout: StepLayout) -> bool:
        fraction = layout.step / layout.total_steps
        return self.params.step_start <= fraction and (fraction < self.params.step_end or self.params.step_end >= 1.0)

    def call(self, inner: nn.Module, denoiser, x: torch.Tensor, sigma: torch.Tensor, cond: Any) -> torch.Tensor:
        if self.error is not None:
            raise self.error
        layout = self.layouts.get(id(denoiser))
        if layout is None or self.runner is None or getattr(inner, "inner_model", None) is not self.bound_model:
            # Not a step LoRAtorio laid out, or the refiner / a hires checkpoint replaced the model.
            return inner(x, sigma, cond=cond)
        offset = layout.offset_of(x)
        layout.cursor = offset + x.shape[0]
        if not self.in_step_range(layout):
            if self.params.outside_steps == "off":
                return inner(x, sigma, cond=cond)
            n = x.shape[0]
            every_lora = torch.ones(n, len(self.loras), dtype=torch.bool)
            with self.runner.rows(torch.zeros(n, dtype=torch.long), active=every_lora):
                return inner(x, sigma, cond=cond)

        def evaluate(idx: torch.Tensor, branches: torch.Tensor) -> torch.Tensor:
            rows = idx.to(x.device)
            sub = self.cond_rows(cond, idx, branches, layout, offset, denoiser)
            with self.runner.rows(branches):
                return inner(x[rows], sigma[rows], cond=sub)

        composer = self.composer_for(denoiser)
        composer.evaluate = evaluate
        rows = slice(offset, offset + x.shape[0])
        out = composer(x, layout.is_uncond[rows], layout.image_of_row[rows], step=layout.step)
        if self.params.show_weight_maps and not all(layout.is_uncond[rows]):
            self._capture_step_maps(denoiser, layout, composer)
        return out

    def _capture_step_maps(self, denoiser, layout: StepLayout, composer: BranchComposer) -> None:
        """Keep this step's maps when it is the first step at or past a requested fraction of the run."""
        taken = self._step_maps.setdefault(id(denoiser), [])
        fraction = layout.step / layout.total_steps
        due = [f for f in self.params.weight_map_steps if fraction >= f]
        if len(due) > len(taken):
            label = f"step {layout.step + 1}/{layout.total_steps}"
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


class InnerModelWrapper(nn.Module):
    """Stands in for the CFG denoiser's inner model; everything but the call passes through.

    An nn.Module because the denoiser registers ``model_wrap`` as a child module.
    """

    def __init__(self, inner: nn.Module, session: Session, denoiser) -> None:
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


# --- wiring into the WebUI -------------------------------------------------------------------------
def get_session(p) -> Optional[Session]:
    return getattr(p, "_loratorio_session", None)


def start_session(p, params: Optional[LoratorioParams], error: Optional[BaseException]) -> Session:
    """Attach a session to ``p`` and wrap ``p.sample`` / ``p.get_conds_with_caching`` on the instance."""
    session = Session(p, params or LoratorioParams(), error)
    p._loratorio_session = session
    original_sample = p.sample
    p.get_conds_with_caching = session.record_conds(p.get_conds_with_caching)

    def sample(*args, **kwargs):
        if session.error is not None:
            raise session.error
        if not session.loras:
            return original_sample(*args, **kwargs)
        with session.sampling():
            result = original_sample(*args, **kwargs)
        if session.error is not None:
            raise session.error
        return result

    p.sample = sample
    return session


class ExtraNetworkLoratorio(extra_networks.ExtraNetwork):
    """``<loratorio:NAME:STRENGTH>``: records the tags; LoRAtorio, not the Lora extension, applies them."""

    def __init__(self) -> None:
        super().__init__(EXTRA_NETWORK_NAME)

    def activate(self, p, params_list) -> None:
        session = get_session(p)
        if session is not None:
            if not getattr(p, "is_hr_pass", False):
                session.tags = list(params_list)
        elif params_list:
            log(f"{len(params_list)} <{EXTRA_NETWORK_NAME}:...> tag(s) ignored: enable LoRAtorio in its accordion "
                "(or with alwayson_scripts in the API) to compose them.")

    def deactivate(self, p) -> None:
        pass


def on_cfg_denoiser(params) -> None:
    session = get_session(getattr(params.denoiser, "p", None))
    if session is not None and session.runner is not None:
        session.on_cfg_denoiser(params)


def on_before_ui() -> None:
    """The extra-network registry is reset after scripts load, so register here (as Lora does)."""
    extra_networks.register_extra_network(ExtraNetworkLoratorio())
    add_xyz_axes()


def register_callbacks() -> None:
    """Register the WebUI callbacks (the WebUI clears them on every script reload)."""
    script_callbacks.on_cfg_denoiser(on_cfg_denoiser, name="loratorio")
    script_callbacks.on_before_ui(on_before_ui, name="loratorio")
    script_callbacks.on_model_loaded(lambda _model: LIBRARY.device_copies.clear(), name="loratorio")


# --- X/Y/Z plot --------------------------------------------------------------------------------------
XYZ_FIELDS = ("mode", "patch_size", "temperature", "recenter", "top_k")


def add_xyz_axes() -> None:
    """Add LoRAtorio axes to the X/Y/Z plot script; each cell's value travels as ``p.loratorio_<field>``."""
    from modules import scripts

    xyz = next((d.module for d in scripts.scripts_data if d.script_class.__module__ == "xyz_grid.py"), None)
    if xyz is None:
        return
    labels = {opt.label for opt in xyz.axis_options}
    for name in XYZ_FIELDS:
        f = next(f for f in fields(LoratorioParams) if f.name == name)
        label = f"LoRAtorio {f.metadata['label'].lower()}"
        if label in labels:
            continue
        kind = str if f.metadata["choices"] else type(f.default)
        choices = (lambda c=f.metadata["choices"]: list(c)) if f.metadata["choices"] else None
        xyz.axis_options.append(xyz.AxisOption(
            label, kind, lambda p, x, xs, name=name: setattr(p, f"loratorio_{name}", x), choices=choices))


def xyz_overrides(p) -> dict[str, Any]:
    return {name: getattr(p, f"loratorio_{name}") for name in XYZ_FIELDS if hasattr(p, f"loratorio_{name}")}


# --- weight maps as result images -------------------------------------------------------------------
def weight_map_images(session: Session, processed) -> tuple[list, list[str]]:
    """Per generated image, one heatmap per LoRA over the image, with the LoRA's name as label."""
    import numpy as np
    from PIL import Image, ImageDraw

    from ..heatmaps import overlay

    images, infotexts = [], []
    first = getattr(processed, "index_of_first_image", 0)
    for index, labelled in sorted(session.weight_maps.items()):
        position = first + index
        if position >= len(processed.images):
            continue
        picture = torch.from_numpy(np.asarray(processed.images[position].convert("RGB")).copy())
        for label, maps in labelled:
            for name, weights in zip(session.names, maps):
                heat = Image.fromarray(overlay(weights, picture).numpy())
                ImageDraw.Draw(heat).text((4, 4), f"{name}, {label}, image {index + 1}", fill=(255, 255, 255))
                images.append(heat)
                infotexts.append(processed.infotexts[position] if position < len(processed.infotexts) else "")
    return images, infotexts
