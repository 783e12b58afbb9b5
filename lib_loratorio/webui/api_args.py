"""Checking LoRAtorio's ``alwayson_scripts`` args of an API request while their shape is still visible.

The WebUI's ``Api.init_script_args`` copies ``args[i]`` into the script's positional args for
``i < min(len(args), number of controls)``: a string arrives as its characters, extra elements are
dropped, a number fails before any script runs. So the check wraps that method (the same in A1111
1.10 and Forge), ahead of the copy.
"""

from __future__ import annotations

import functools
import sys

from .script_args import SCRIPT_TITLE, check_api_args

_MARK = "_loratorio_checks_args"


def guard_api_args() -> None:
    """Wrap ``modules.api.api.Api.init_script_args`` once (the WebUI calls app_started again on a UI reload)."""
    api = sys.modules.get("modules.api.api")  # imported by the WebUI before app_started when the API is on
    if api is None:
        return
    original = api.Api.init_script_args
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def init_script_args(self, request, *args, **kwargs):
        for name, entry in (getattr(request, "alwayson_scripts", None) or {}).items():
            if name.lower() == SCRIPT_TITLE.lower() and isinstance(entry, dict) and "args" in entry:
                check_api_args(entry["args"])
        return original(self, request, *args, **kwargs)

    setattr(init_script_args, _MARK, True)
    api.Api.init_script_args = init_script_args
