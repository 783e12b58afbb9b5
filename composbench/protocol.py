"""The benchmark protocol: a fixed dev/test split of the 240 compositions.

``dev`` (80 compositions) is for tuning, sweeps and ablations; ``test`` (160) is what gets
reported, and nothing is ever tuned on it. The split is stratified by N (2..5) and by character:
in every N exactly a third of the compositions are dev (8, 24, 32 and 16 of 24, 72, 96 and 48),
spread over the three characters as evenly as whole numbers allow (27, 27 and 26 in all; where a
third of a stratum is not whole, the extra composition goes to the characters in turn). Inside a
(N, character) stratum the dev compositions are picked one at a time, greedily balancing how often
each concept, each (character, concept) pair and each set of categories is already in dev, ties
broken by a salted SHA-256 of the composition. The result: every non-character concept is in 27
dev compositions (54 test), every category in 54, every concept once among the 8 dev N = 2 pairs.
Seeded by the salt, not by a random number generator (whose streams may change between numpy
versions), so the split is the same on every machine; ``SPLIT_SHA256`` pins it and the tests
check it.

    from composbench.protocol import split
    split("dev"), split("test"), split("all")
"""

from __future__ import annotations

import hashlib

from . import world

PARTS = ("dev", "test", "all")
SALT = "composbench-split-v1"
DEV_FRACTION_DEN = 3  # one third dev, two thirds test
# sha256 of the dev compositions, one "a,b,c" line each in world.compositions() order
SPLIT_SHA256 = "abc36644c86e2a78929b26814a676f218bb9942c12a840a280e557b815083c6e"


def _key(comp: tuple[str, ...]) -> str:
    return hashlib.sha256(f"{SALT}:{','.join(comp)}".encode()).hexdigest()


def _features(comp: tuple[str, ...]) -> list:
    """What the split balances inside a stratum: each concept, each (character, concept) pair
    and the set of categories."""
    return [*comp[1:], *((comp[0], c) for c in comp[1:]), tuple(world.CATEGORY_OF[c] for c in comp[1:])]


def _dev_set() -> set[tuple[str, ...]]:
    comps = world.compositions()
    chars = world.CONCEPTS["character"]
    dev: set[tuple[str, ...]] = set()
    used: dict = {}  # how often each balanced feature (see _features) is in dev so far
    turn = 0  # which character gets the next extra composition when a third is not whole
    for n in range(2, 6):
        group = [c for c in comps if len(c) == n]
        quota = len(group) // DEV_FRACTION_DEN
        base, extra = divmod(quota, len(chars))
        counts = [base] * len(chars)
        for _ in range(extra):
            counts[turn % len(chars)] += 1
            turn += 1
        for ch, k in zip(chars, counts, strict=True):
            left = sorted((c for c in group if c[0] == ch), key=_key)
            for _ in range(k):
                # the composition whose concepts (and category set) are least used in dev so far;
                # ties go to the hash order
                pick = min(left, key=lambda c: (sum(used.get(x, 0) for x in _features(c)), left.index(c)))
                left.remove(pick)
                dev.add(pick)
                for x in _features(pick):
                    used[x] = used.get(x, 0) + 1
    return dev


def part_of(part: str, comps: list[tuple[str, ...]], dev_set) -> list[tuple[str, ...]]:
    """The compositions of ``part`` ("dev", "test" or "all") among ``comps``, in their order; ``dev_set()``
    gives the dev compositions (called only for dev and test)."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, not {part!r}")
    if part == "all":
        return comps
    dev = dev_set()
    return [c for c in comps if (c in dev) == (part == "dev")]


def digest(comps: list[tuple[str, ...]]) -> str:
    """sha256 of compositions, one "a,b,c" line each: what pins a split."""
    return hashlib.sha256("\n".join(",".join(c) for c in comps).encode()).hexdigest()


def split(part: str) -> list[tuple[str, ...]]:
    """The compositions of ``part`` ("dev", "test" or "all"), in world.compositions() order."""
    return part_of(part, world.compositions(), _dev_set)


def fingerprint(part: str = "dev") -> str:
    return digest(split(part))
