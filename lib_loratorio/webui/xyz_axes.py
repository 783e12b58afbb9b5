"""LoRAtorio's axes in the X/Y/Z plot script; each cell's value travels to the script as ``p.loratorio_<field>``."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from ..params import LoratorioParams

XYZ_FIELDS = ("mode", "patch_size", "temperature", "recenter", "top_k")


def add_xyz_axes() -> None:
    """Add the axes to the X/Y/Z plot script, if it is loaded and they are not there yet."""
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
    """The settings an X/Y/Z cell sets for this generation."""
    return {name: getattr(p, f"loratorio_{name}") for name in XYZ_FIELDS if hasattr(p, f"loratorio_{name}")}
