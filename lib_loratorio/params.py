"""LoRAtorio's settings: one dataclass from which the UI, the API arguments and the infotext derive.

Each field carries its label, hint, infotext key and allowed values in ``metadata``, so adding a
setting here adds it everywhere (UI control, API name, PNG info, validation message).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional

from .choices import Choice, Evaluation, Mode, OutsideSteps, Selection, TextEncoder, WeightNorm
from .errors import InvalidParameterError

#: Values infotexts written before a setting existed imply (that setting's behaviour then), not its default.
LEGACY_INFOTEXT_VALUES: dict[str, str] = {"weight_norm": WeightNorm.SUM.value}
INFOTEXT_PREFIX = "LoRAtorio"


def _setting(default: Any, label: str, hint: str, *, minimum: Optional[float] = None,
             maximum: Optional[float] = None) -> Any:
    """A field with its UI label, hint and bounds; a Choice default makes its enum's strings the allowed values."""
    choices = type(default).values() if isinstance(default, Choice) else None
    meta = {"label": label, "hint": hint, "choices": choices, "min": minimum, "max": maximum}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class LoratorioParams:
    enabled: bool = _setting(False, "Enable", "Compose the <loratorio:...> LoRAs at sampling time.")
    mode: Mode = _setting(
        Mode.STACK, "Mode",
        "Stack: every LoRA at its strength on the prompt (inside its region hint, if any), the base model on "
        "the negative prompt (a plain <lora> stack's cost). LoRAtorio: patch-wise SoftMin routing, every "
        "branch every step. LoRAtorio Fast: the same maps, refreshed on a schedule; in between one forward "
        "with every LoRA applied where its map says (close to a plain step's cost). Composite: plain average "
        "of LoRA branches. Switch: one LoRA at a time, rotating.")
    patch_size: int = _setting(
        4, "Patch size", "Side of a comparison patch in latent pixels (4 latent px = 32 image px).",
        minimum=1, maximum=64)
    temperature: float = _setting(
        0.05, "Temperature", "SoftMin temperature: small = one LoRA per patch, large = uniform average.",
        minimum=1e-4, maximum=100.0)
    recenter: float = _setting(
        0.5, "Re-centring", "Weight of the base model's unconditional prediction in CFG "
        "(1 = base only, fastest: N+2 evaluations per step). LoRAtorio Fast always uses 1.", minimum=0.0, maximum=1.0)
    top_k: int = _setting(
        0, "Auto-select top-k", "Keep only the k most divergent LoRAs (0 = use all).", minimum=0, maximum=64)
    selection: Selection = _setting(
        Selection.PATCH, "Selection", "Rank LoRAs per patch or by their mean over the whole image.")
    switch_every: int = _setting(5, "Switch every", "Switch mode: steps before the next LoRA.", minimum=1,
                                 maximum=1000)
    evaluation: Evaluation = _setting(
        Evaluation.BATCHED, "Evaluation", "batched: all branches in one model call (fastest). per branch: one call per "
        "branch (least memory).")
    max_batch: int = _setting(
        0, "Max batch", "Rows per model call (0 = all at once, halved automatically on out-of-memory).",
        minimum=0, maximum=4096)
    default_strength: float = _setting(
        1.0, "Default strength", "Strength of a <loratorio:NAME> tag that gives none.", minimum=-10.0,
        maximum=10.0)
    use_lora_tags: bool = _setting(
        False, "Use lora tags", "Treat the prompt's <lora:NAME:STRENGTH> tags as LoRAtorio branches too.")
    pool: list = _setting(
        [], "Pool", "LoRA names or a folder: every step the top-k most relevant are picked from these.")
    text_encoder: TextEncoder = _setting(
        TextEncoder.PER_BRANCH, "Text encoder", "per branch: each LoRA's text-encoder part conditions its own branch. "
        "UNet only: cheaper, text-encoder parts are ignored.")
    step_start: float = _setting(
        0.0, "Start at", "Fraction of the steps after which composition starts.", minimum=0.0, maximum=1.0)
    step_end: float = _setting(
        1.0, "End at", "Fraction of the steps after which composition stops.", minimum=0.0, maximum=1.0)
    outside_steps: OutsideSteps = _setting(
        OutsideSteps.MERGE, "Outside the range",
        "merge: the LoRAs act merged as a plain <lora:> would. off: base model only.")
    show_weight_maps: bool = _setting(False, "Show weight maps", "Add one heatmap per LoRA to the results.")
    weight_map_steps: list = _setting(
        [], "Weight maps at", "Also show the maps of single steps, as fractions of the run, e.g. 0.25, 0.5.",
        minimum=0.0, maximum=1.0)
    refresh_first: int = _setting(
        1, "Refresh first", "LoRAtorio Fast: the first steps that compute the weight maps (every branch).",
        minimum=1, maximum=1000)
    refresh_every: int = _setting(
        10, "Refresh every", "LoRAtorio Fast: after those, the maps are computed again every k-th step.",
        minimum=1, maximum=1000)
    weight_norm: WeightNorm = _setting(
        WeightNorm.MAX, "Weights",
        "sum: the paper's weights, summing to 1 in each patch (a blend of the branches). max: "
        "divided by the patch's largest weight, so the LoRA that owns a patch acts at full strength there "
        "and the others by their share of it; where none stands out, every LoRA acts fully.")
    hint_strength: float = _setting(
        8.0, "Region hint strength",
        "How strongly a LoRA's region hint (<loratorio:NAME:STRENGTH:left>, a box x0,y0,x1,y1, or a mask in "
        "ComfyUI) keeps it in its region: the SoftMin's bias against it outside (0 = hints off).",
        minimum=0.0, maximum=50.0)

    def __post_init__(self) -> None:
        self.validate()

    # --- validation -----------------------------------------------------------------------
    def validate(self) -> None:
        """Coerce simple types and raise InvalidParameterError naming the first bad value."""
        for f in dataclasses.fields(self):
            value = _coerce(f, getattr(self, f.name))
            meta = f.metadata
            if meta["choices"]:
                if value not in meta["choices"]:
                    raise InvalidParameterError(
                        f"LoRAtorio {f.name}={value!r} is invalid: allowed values are {', '.join(meta['choices'])}.")
                value = type(f.default)(value)
            numbers = value if isinstance(value, list) and meta["min"] is not None else [value]
            for number in numbers:
                if isinstance(number, (int, float)) and not isinstance(number, bool):
                    lo, hi = meta["min"], meta["max"]
                    if math.isnan(number) or (lo is not None and number < lo) or (hi is not None and number > hi):
                        raise InvalidParameterError(
                            f"LoRAtorio {f.name}={value!r} is invalid: it must be between {lo} and {hi}.")
            object.__setattr__(self, f.name, value)
        if self.step_start >= self.step_end:
            raise InvalidParameterError(
                f"LoRAtorio step range {self.step_start}..{self.step_end} is empty: 'Start at' must be "
                "smaller than 'End at'.")

    def composes_at(self, step: int, total_steps: int) -> bool:
        """Whether step ``step`` (from 0) of ``total_steps`` lies in the composition range (*Start at*, *End at*)."""
        fraction = step / max(1, total_steps)
        return self.step_start <= fraction and (fraction < self.step_end or self.step_end >= 1.0)

    def is_refresh_step(self, step: int) -> bool:
        """LoRAtorio Fast: whether step ``step`` (from 0) computes the weight maps with every branch."""
        return step < self.refresh_first or step % self.refresh_every == 0

    # --- dict / API ----------------------------------------------------------------------
    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "LoratorioParams":
        """Build from named values (the API's dict form). Unknown names are an error, not ignored."""
        unknown = sorted(set(values) - set(cls.names()))
        if unknown:
            raise InvalidParameterError(
                f"Unknown LoRAtorio setting(s): {', '.join(unknown)}. Known settings: {', '.join(cls.names())}.")
        return cls(**dict(values))

    @classmethod
    def from_args(cls, args: Iterable[Any]) -> "LoratorioParams":
        """Build from positional values in field order (the WebUI's script args list)."""
        args = list(args)
        names = cls.names()
        if len(args) > len(names):
            raise InvalidParameterError(
                f"LoRAtorio takes at most {len(names)} positional args ({', '.join(names)}), got {len(args)}.")
        return cls(**dict(zip(names, args, strict=False)))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # --- infotext ------------------------------------------------------------------------
    @classmethod
    def infotext_key(cls, name: str) -> str:
        return f"{INFOTEXT_PREFIX} {dataclasses.fields(cls)[cls.names().index(name)].metadata['label'].lower()}"

    def to_infotext(self) -> dict[str, str]:
        """PNG-info fields, only for enabled runs; values are plain strings (the host quotes them)."""
        if not self.enabled:
            return {}
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "enabled":
                continue
            if isinstance(value, list):
                if not value:
                    continue
                value = ";".join(map(str, value))
            out[self.infotext_key(f.name)] = str(value)
        out[INFOTEXT_PREFIX] = "True"
        return out

    @classmethod
    def from_infotext(cls, fields: Mapping[str, str]) -> Optional["LoratorioParams"]:
        """Inverse of to_infotext; None when the infotext has no LoRAtorio run."""
        if str(fields.get(INFOTEXT_PREFIX, "")).strip() != "True":
            return None
        values: dict[str, Any] = {"enabled": True}
        for name in cls.names():
            key = cls.infotext_key(name)
            if name != "enabled" and key in fields:
                values[name] = str(fields[key])
            elif name in LEGACY_INFOTEXT_VALUES:
                values[name] = LEGACY_INFOTEXT_VALUES[name]
        return cls(**values)


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    """Accept strings (infotext, API) and numbers of the neighbouring type; reject the rest clearly."""
    kind = type(f.default) if f.default is not dataclasses.MISSING else list
    try:
        if kind is bool:
            if isinstance(value, str):
                low = value.strip().lower()
                if low not in ("true", "false", "1", "0"):
                    raise ValueError
                return low in ("true", "1")
            if isinstance(value, (bool, int)) and value in (0, 1):
                return bool(value)
            raise ValueError
        if kind is int:
            number = float(value)
            if number != int(number) or isinstance(value, bool):
                raise ValueError
            return int(number)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind is list:
            if isinstance(value, str):
                value = [p.strip() for p in value.replace("\n", ",").replace(";", ",").split(",") if p.strip()]
            # a list with numeric bounds holds numbers (step fractions); otherwise names
            return [float(v) for v in value] if f.metadata["min"] is not None else [str(v) for v in value]
        return str(value)  # a choice's string (validate makes it the member)
    except (TypeError, ValueError):
        raise InvalidParameterError(
            f"LoRAtorio {f.name}={value!r} is invalid: expected {kind.__name__}.") from None
