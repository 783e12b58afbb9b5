"""What the A1111 and Forge adapters share: tags, LoRA look-up, the per-generation session, the
``p.sample`` wrapper, per-branch text conditioning, the X/Y/Z axes and the weight-map images.

Both WebUIs keep A1111 1.10's ``modules`` for scripts, extra networks, prompt parsing, processing
and the built-in Lora extension's ``networks`` module; they differ in how the model is called
during sampling, which each adapter handles (``a1111.py``, ``forge.py``).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import fields
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


def log(message: str) -> None:
    print(f"[LoRAtorio] {message}")


# --- LoRA names, as the Lora cards resolve them ----------------------------------------------------
def _lora_module():
    try:
        import networks  # the built-in Lora extension's module (A1111: Lora, Forge: sd_forge_lora)
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


def take_rows(value: Any, idx: torch.Tensor, n_rows: Optional[int] = None) -> Any:
    """Rows ``idx`` of every tensor in a (nested) conditioning structure.

    With ``n_rows``, only tensors that have that many rows are taken from (others, such as a
    ControlNet hint with one row for all, pass through).
    """
    if isinstance(value, torch.Tensor):
        if value.dim() == 0 or (n_rows is not None and value.shape[0] != n_rows):
            return value
        return value[idx.to(value.device)]
    if isinstance(value, list):
        return [take_rows(v, idx, n_rows) for v in value]
    if isinstance(value, dict):
        return {k: take_rows(v, idx, n_rows) for k, v in value.items()}
    return value


# --- the per-generation session --------------------------------------------------------------------
class Session:
    """Everything LoRAtorio holds for one ``p`` (one generation), and its cleanup.

    Hosts subclass it for the sampling hook; see ``a1111.A1111Session`` and ``forge.ForgeSession``.
    """

    def __init__(self, p, params: LoratorioParams, error: Optional[BaseException] = None) -> None:
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
        self._branch_text: dict[tuple, Optional[tuple[Any, Any]]] = {}
        self.runner: Optional[BranchRunner] = None
        self.composers: dict[Any, BranchComposer] = {}
        self.weight_maps: dict[int, list[tuple[str, torch.Tensor]]] = {}
        self._step_maps: dict[Any, list[tuple[str, dict[int, torch.Tensor]]]] = {}
        self.warned: set[str] = set()

    def warn_once(self, message: str) -> None:
        if message not in self.warned:
            self.warned.add(message)
            log(message)

    # --- host specifics -----------------------------------------------------------------------
    def model_components(self, sd_model, unet_only: bool) -> dict[str, nn.Module]:
        """The live networks a LoRA binds to, keyed ``unet``, ``te1``, ``te2``..."""
        raise NotImplementedError

    def check_model(self, sd_model) -> None:
        """Raise LoratorioError when the settings cannot work on this model."""

    def finish_sampling(self) -> None:
        """Host cleanup when ``p.sample`` ends (any exit)."""

    def on_cfg_denoiser(self, params) -> None:
        """The WebUI's ``on_cfg_denoiser`` callback, once per sampling step of this generation."""
        raise NotImplementedError

    # --- preparation (process_batch) ----------------------------------------------------------
    def wanted(self) -> list[tuple[str, float, str]]:
        """(name, strength, where it was asked for) of every branch: the tags, then the pool."""
        out: list[tuple[str, float, str]] = []
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
            out.append((name, strength, f"<{EXTRA_NETWORK_NAME}:{':'.join(map(str, tag.items))}>"))
        named = {n for n, _, _ in out}
        for name in self._pool_names():
            if name not in named:
                out.append((name, self.params.default_strength, "the pool"))
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
        if wanted:
            self.check_model(sd_model)
        unet_only = self.params.text_encoder == "UNet only"
        components = self.model_components(sd_model, unet_only=unet_only)
        loras, hashes, labels = [], {}, []
        for name, _, source in wanted:
            entry = resolve_lora(name)
            loras.append(LIBRARY.bind(entry.filename, components))
            labels.append(f"LoRA '{name}' ({os.path.basename(entry.filename)}, {source})")
            if not getattr(entry, "shorthash", "") and hasattr(entry, "read_hash"):
                entry.read_hash()  # the WebUI hashes a LoRA lazily, on its first use
            hashes[name] = getattr(entry, "shorthash", "") or ""
        for bound in loras:
            # text-encoder keys left out on purpose ("UNet only") are not worth a note
            missed = [k for k in bound.unmatched if not (unet_only and not k.startswith("unet:"))]
            if missed and id(bound) not in _REPORTED:  # once per file and model
                _REPORTED.add(id(bound))
                log(bound.summary())
        self.loras, self.bound_model = loras, sd_model
        self.names = [n for n, _, _ in wanted]
        self.strengths = [s for _, s, _ in wanted]
        self.labels = labels
        self.has_text_encoder = [any(not t[0].startswith("unet:") for t in b.targets) for b in loras]
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

    def branch_text_at(self, sampler_args: dict, step: int, branch: int) -> Optional[tuple[Any, Any]]:
        """(cond, uncond) text conditioning of LoRA ``branch``'s text encoder at ``step``, or None.

        ``sampler_args`` is the sampler's ``sampler_extra_args`` (its cond and uncond objects are
        the ones the WebUI computed, by identity). The uncond is None when the WebUI skipped it.
        Kept for the sampling run: a step's model calls (chunks, separate uncond) share it.
        """
        key = (id(sampler_args.get("cond")), id(sampler_args.get("uncond")), step, branch)
        if key not in self._branch_text:
            self._branch_text[key] = self._reconstruct_branch_text(sampler_args, step, branch)
        return self._branch_text[key]

    def _reconstruct_branch_text(self, sampler_args: dict, step: int, branch: int) -> Optional[tuple[Any, Any]]:
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
        self.runner = BranchRunner(self.loras, self.strengths, LIBRARY.device_copies)
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
        fraction = step / max(1, total_steps)
        return self.params.step_start <= fraction and (fraction < self.params.step_end or self.params.step_end >= 1.0)

    def call_outside_range(self, rows: int, run: Callable[[], torch.Tensor]) -> torch.Tensor:
        """A model call of a step outside the composition range: every LoRA merged on every row
        ("merge"), or none ("off")."""
        if self.params.outside_steps == "off":
            return run()
        every_lora = torch.ones(rows, len(self.loras), dtype=torch.bool)
        with self.runner.rows(torch.zeros(rows, dtype=torch.long), active=every_lora):
            return run()

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


# --- wiring into the WebUI -------------------------------------------------------------------------
def get_session(p) -> Optional[Session]:
    return getattr(p, "_loratorio_session", None)


def start_session(p, session: Session) -> Session:
    """Attach ``session`` to ``p`` and wrap ``p.sample`` / ``p.get_conds_with_caching`` on the instance.

    ``p.sample`` encloses every sampler run of a batch (first pass, hires, a refiner switch), so
    the hooks live exactly that long, and an error raised there reaches the UI and the API (the
    WebUI swallows exceptions raised in script hooks).
    """
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


def on_before_ui() -> None:
    """The extra-network registry is reset after scripts load, so register here (as Lora does)."""
    extra_networks.register_extra_network(ExtraNetworkLoratorio())
    add_xyz_axes()


def on_cfg_denoiser(params) -> None:
    session = get_session(getattr(params.denoiser, "p", None))
    if session is not None and session.runner is not None:
        session.on_cfg_denoiser(params)


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
