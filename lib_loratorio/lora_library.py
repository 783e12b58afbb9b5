"""A process-wide cache of LoRA files and of their tensors on the model's device.

Reading a file and moving its tensors to the GPU is the slow part of starting a generation; users
re-run the same LoRAs many times. Entries are keyed by path, size and modification time, so an
edited or replaced file is read again; the least recently used files are dropped beyond a limit.
"""

from __future__ import annotations

import os
import weakref
from collections import OrderedDict
from typing import Mapping

from torch import nn

from .lora_files import LoraFile, read_lora_file
from .network_names import BoundLora, bind_lora


class LoraLibrary:
    def __init__(self, max_files: int = 32) -> None:
        self.max_files = max_files
        self._files: OrderedDict[str, tuple[tuple[int, int], LoraFile]] = OrderedDict()
        # (id(delta), device, dtype) -> delta copy; shared with every BranchRunner of this library.
        self.device_copies: dict = {}
        # (id(file), component names and ids) -> (weak refs to the components, binding)
        self._bound: dict = {}

    def load(self, path: str) -> LoraFile:
        """The file's contents, read once while the file is unchanged."""
        path = os.path.abspath(path)
        try:
            st = os.stat(path)
            stamp = (st.st_size, st.st_mtime_ns)
        except OSError:
            stamp = (-1, -1)  # read_lora_file reports the missing file
        cached = self._files.get(path)
        if cached is not None and cached[0] == stamp:
            self._files.move_to_end(path)
            return cached[1]
        if cached is not None:
            self._forget(cached[1])
        lora = read_lora_file(path)
        self._files[path] = (stamp, lora)
        while len(self._files) > self.max_files:
            _, (_, old) = self._files.popitem(last=False)
            self._forget(old)
        return lora

    def bind(self, path: str, components: Mapping[str, nn.Module]) -> BoundLora:
        """The file bound to these live modules, reused while the file and the modules are the same.

        Weak references confirm the modules are still the very objects bound (an id can be reused
        after a model is unloaded).
        """
        lora = self.load(path)
        key = (id(lora), tuple((name, id(module)) for name, module in sorted(components.items())))
        cached = self._bound.get(key)
        if cached is not None and all(
                ref() is module for ref, module in zip(cached[0], components.values(), strict=True)):
            return cached[1]
        bound = bind_lora(lora, components)
        self._bound[key] = ([weakref.ref(module) for module in components.values()], bound)
        return bound

    def _forget(self, lora: LoraFile) -> None:
        ids = {id(d) for d in lora.modules.values()}
        for key in [k for k in self.device_copies if k[0] in ids]:
            del self.device_copies[key]
        for key in [k for k in self._bound if k[0] == id(lora)]:
            del self._bound[key]

    def clear(self) -> None:
        self._files.clear()
        self.device_copies.clear()
        self._bound.clear()
