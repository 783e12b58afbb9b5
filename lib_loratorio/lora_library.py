"""A process-wide cache of LoRA files, bounded in bytes.

Reading a file is the slow part of starting a generation, and users re-run the same LoRAs many
times. Entries are keyed by path, size and modification time, so an edited or replaced file is read
again; the least recently used files are dropped once the files held exceed ``max_bytes`` (the one
just read is always kept). Only the files' own tensors are held here: copies on the GPU and what
LyCORIS deltas build to be applied belong to one generation's branch runner.
"""

from __future__ import annotations

import os
import weakref
from collections import OrderedDict
from typing import Collection, Mapping

from torch import nn

from .lora_files import LoraFile, read_lora_file
from .network_names import BoundLora, bind_lora

DEFAULT_MAX_BYTES = 2 << 30


class LoraLibrary:
    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._files: OrderedDict[str, tuple[tuple[int, int], LoraFile]] = OrderedDict()
        # (id(file), component names and ids) -> (weak refs to the components, binding)
        self._bound: dict = {}

    @property
    def bytes(self) -> int:
        """Bytes of the tensors of the files held."""
        return sum(lora.nbytes for _, lora in self._files.values())

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
            del self._files[path]
            self._forget(cached[1])
        lora = read_lora_file(path)
        self._files[path] = (stamp, lora)
        self.trim()
        return lora

    def trim(self) -> None:
        """Drop the least recently used files until the rest fit ``max_bytes`` (the newest stays)."""
        while len(self._files) > 1 and self.bytes > self.max_bytes:
            _, (_, old) = self._files.popitem(last=False)
            self._forget(old)

    def bind(self, path: str, components: Mapping[str, nn.Module], left_out: Collection[str] = ()) -> BoundLora:
        """The file bound to these live modules, reused while the file and the modules are the same.

        ``left_out``: components whose keys are ignored on purpose (see bind_lora). Weak references
        confirm the modules are still the very objects bound (an id can be reused after a model is
        unloaded).
        """
        lora = self.load(path)
        key = (id(lora), tuple((name, id(module)) for name, module in sorted(components.items())),
               tuple(sorted(left_out)))
        cached = self._bound.get(key)
        if cached is not None and all(
                ref() is module for ref, module in zip(cached[0], components.values(), strict=True)):
            return cached[1]
        bound = bind_lora(lora, components, left_out)
        self._bound[key] = ([weakref.ref(module) for module in components.values()], bound)
        return bound

    def forget_bindings(self) -> None:
        """Drop every binding: they hold the layers they were bound to, which would keep a model the
        host has unloaded in memory (call when the host loads another model)."""
        self._bound.clear()

    def _forget(self, lora: LoraFile) -> None:
        for key in [k for k in self._bound if k[0] == id(lora)]:
            del self._bound[key]

    def clear(self) -> None:
        self._files.clear()
        self._bound.clear()
