"""How each package of this overlay falls through to the Forge stand-in's (tests only): a package here lists its
own folder first in ``__path__`` and the Forge stand-in's same folder after it, so a module defined here overrides
Forge's and every other one is Forge's file; :func:`forge_module` loads a Forge file privately for an override
that extends it."""

import importlib.util
import os
import sys

NEO = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(NEO)
FORGE = os.path.join(TESTS, "forge_standin")
if TESTS not in sys.path:  # tiny_models, tiny_dits
    sys.path.append(TESTS)


def extend(path: list, package_file: str) -> None:
    """Append the Forge stand-in's folder of the package at ``package_file`` to its ``__path__``."""
    path.append(os.path.join(FORGE, os.path.relpath(os.path.dirname(os.path.abspath(package_file)), NEO)))


def forge_module(relative: str):
    """The Forge stand-in's file ``relative`` (e.g. "backend/sampling/sampling_function.py"), loaded privately."""
    name = "_forge_" + relative.replace("/", "_").removesuffix(".py")
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(FORGE, relative))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
