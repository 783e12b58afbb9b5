"""The WebUI script's arguments: the positional list of the UI and the API, or the API's dict form.

Over the API, ``alwayson_scripts["LoRAtorio"]["args"]`` is either a list with one dict of named
settings or the positional list in LoratorioParams field order (first the enable flag).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import InvalidParameterError
from ..params import LoratorioParams

SCRIPT_TITLE = "LoRAtorio"
_ACCEPTED = ('a list with one dict of named settings, e.g. [{"patch_size": 4}], or the positional list '
             f'[true, "LoRAtorio", 4, ...] ({", ".join(LoratorioParams.names()[:3])}, ... in the order of the '
             "README's settings table)")


def check_api_args(args: Any) -> None:
    """Raise InvalidParameterError when an API request's ``args`` for LoRAtorio has neither accepted form.

    Called on the request itself: the WebUI then copies ``args[i]`` into the script's positions
    one by one, where a string would turn into its characters ("enabled='p' is invalid") and a
    number would fail with "object of type 'int' has no len()".
    """
    if _is_list(args):
        if not args or not (isinstance(args[0], Mapping) or _is_list(args[0])):
            return  # the positional form (each value is checked with the settings)
        if isinstance(args[0], Mapping):
            if len(args) == 1:
                return
            got = f"a dict followed by {len(args) - 1} more element(s): put every named setting in the one dict"
        else:
            got = "a list inside the list: drop the outer brackets"
    elif isinstance(args, Mapping):
        got = f"the dict {_shown(args)}: put it in a list"
    elif isinstance(args, str):
        got = f"the string {_shown(args)}"
    elif isinstance(args, (int, float)) and not isinstance(args, bool):
        got = f"the number {_shown(args)}"
    else:
        got = _shown(args)
    raise InvalidParameterError(f"LoRAtorio's API args must be {_ACCEPTED}; got {got}.")


def _is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def _shown(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_script_args(args: Sequence[Any], overrides: Mapping[str, Any]) -> LoratorioParams:
    """Settings from the script's args: the positional list, or a dict of named settings first (the API's
    friendly form, enabled unless it says otherwise; the positions after it hold the UI defaults).
    ``overrides``: settings an X/Y/Z cell sets."""
    if args and isinstance(args[0], Mapping):
        params = LoratorioParams.from_dict({"enabled": True, **args[0]})
    else:
        params = LoratorioParams.from_args(args)
    return dataclasses.replace(params, **overrides) if overrides else params
