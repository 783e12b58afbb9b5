"""Statistics and number formatting shared by the benchmark's reports.

The composition is the unit: a composition's seeds are averaged first, so the standard errors
measure how results vary across compositions, not across noise seeds of the same prompt.
"""

from __future__ import annotations

import math

import numpy as np


def comp_stats(per_comp: dict) -> dict:
    """Mean and standard error with the composition as the unit: ``per_comp`` maps a composition
    to its per-seed values; the seeds of a composition are averaged first, then the s.e. is the
    standard deviation across compositions (ddof 1) over sqrt(number of compositions)."""
    vals = np.array([np.mean(v) for v in per_comp.values() if len(v)], float)
    if len(vals) == 0:
        return {"mean": None, "se": None, "n": 0}
    se = float(np.std(vals, ddof=1) / math.sqrt(len(vals))) if len(vals) > 1 else float("nan")
    return {"mean": float(vals.mean()), "se": se, "n": int(len(vals))}


def paired_stats(a: dict, b: dict) -> dict:
    """Mean per-composition difference a - b over the compositions both have, and its s.e."""
    common = [c for c in a if c in b and len(a[c]) and len(b[c])]
    return comp_stats({c: [float(np.mean(a[c]) - np.mean(b[c]))] for c in common})


def fmt(v, se=None, digits=3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if se is None or (isinstance(se, float) and math.isnan(se)):
        return f"{v:.{digits}f}"
    return f"{v:.{digits}f} ± {se:.{digits}f}"


def signed(v, se) -> str:
    if v is None:
        return "–"
    return f"{v:+.3f}" + ("" if se is None or math.isnan(se) else f" ± {se:.3f}")
