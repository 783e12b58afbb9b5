"""A byte-bounded cache for tensors that deltas build from their factors while a generation runs.

LoHa and DoRA need tensors larger than what the file holds (a LoHa's rank r1*r2 factors or its
dense weight, DoRA's merged weight). Building them for every forward costs time; keeping them for
the life of the process cost over a gigabyte per SD1.5 file. A :class:`DeltaCache` belongs to one
branch runner (one generation): it keeps the most recently used builds up to ``max_bytes`` and is
emptied when the runner ends, so what LyCORIS files cost beyond their own tensors is bounded by
the budget and released after every generation.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Hashable, Union

from torch import Tensor

Built = Union[Tensor, tuple[Tensor, ...]]


def nbytes(value: Built) -> int:
    tensors = value if isinstance(value, tuple) else (value,)
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


class DeltaCache:
    """Least-recently-used tensors (or tuples of tensors) by key, at most ``max_bytes`` in all.

    A build larger than the whole budget is returned without being kept.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, int(max_bytes))
        self._items: OrderedDict[Hashable, tuple[Built, int]] = OrderedDict()
        self.bytes = 0
        self.builds = 0

    def get(self, key: Hashable, build: Callable[[], Built]) -> Built:
        hit = self._items.get(key)
        if hit is not None:
            self._items.move_to_end(key)
            return hit[0]
        value = build()
        self.builds += 1
        size = nbytes(value)
        if size <= self.max_bytes:
            while self._items and self.bytes + size > self.max_bytes:
                _, (_, old) = self._items.popitem(last=False)
                self.bytes -= old
            self._items[key] = (value, size)
            self.bytes += size
        return value

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)
