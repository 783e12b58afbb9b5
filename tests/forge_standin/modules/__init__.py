"""Forge ``modules`` package = this folder overlaid on ``tests/a1111_standin/modules``.

``__path__`` lists the Forge folder first, then the A1111 stand-in's: a submodule defined here
(processing, prompt_parser, sd_samplers*, sd_models) overrides A1111's; every other one
(shared, scripts, script_callbacks, extra_networks, errors, devices, infotext_utils, api, ...) is
A1111's file, imported as ``modules.<name>``, i.e. one shared instance inside the Forge env.

Overrides that extend an A1111 file load that file privately as ``modules._a1111_<name>``
(:func:`_load_a1111`) and re-export / subclass from it; the private copy resolves its own
``from modules import x`` through this package, so it sees the Forge overrides.
"""

import importlib.util
import os
import sys

A1111_MODULES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                             "a1111_standin", "modules")
__path__.append(A1111_MODULES)


def _load_a1111(name):
    full = f"{__name__}._a1111_{name}"
    if full in sys.modules:
        return sys.modules[full]
    spec = importlib.util.spec_from_file_location(full, os.path.join(A1111_MODULES, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[full] = module
    spec.loader.exec_module(module)
    return module
