"""A reduced run of the offline composition benchmark on the bundled artifacts (composbench/).

Checks that the pipeline works end to end through the project's LoRA reader, binder, branch
runner and composer, and that the numbers are sane. It asserts nothing about which method wins.
"""

import json
import math

import pytest
import torch

from composbench import world
from composbench.model import ARTIFACTS, lora_path

pytestmark = pytest.mark.skipif(
    not (ARTIFACTS / "base.safetensors").is_file() or not (ARTIFACTS / "classifier.safetensors").is_file()
    or not all(lora_path(c).is_file() for c in world.ALL_CONCEPTS),
    reason="composbench artifacts missing: run `python -m composbench.train`")


def test_world_compositions_match_composlora():
    comps = world.compositions()
    assert len(comps) == 240
    assert {len(c) for c in comps} == {2, 3, 4, 5}
    assert all(world.CATEGORY_OF[c[0]] == "character" for c in comps)
    assert all(len({world.CATEGORY_OF[x] for x in c}) == len(c) for c in comps)


def test_bundled_loras_load_through_the_runtime():
    from composbench.model import load_base
    from lib_loratorio.lora_files import read_lora_file
    from lib_loratorio.network_names import bind_lora
    unet, _ = load_base()
    for c in world.ALL_CONCEPTS:
        bound = bind_lora(read_lora_file(lora_path(c)), {"unet": unet})
        assert bound.targets and not bound.unmatched, bound.summary()


def test_split_is_fixed_disjoint_complete_and_stratified():
    from collections import Counter

    from composbench import protocol
    dev, test, every = protocol.split("dev"), protocol.split("test"), protocol.split("all")
    assert every == world.compositions()
    assert len(dev) == 80 and len(test) == 160
    assert not set(dev) & set(test) and set(dev) | set(test) == set(every)
    assert protocol.split("dev") == dev  # deterministic, and pinned: a changed split must be deliberate
    assert protocol.fingerprint("dev") == protocol.SPLIT_SHA256
    # stratified: a third of every N, characters as even as whole numbers allow
    for n, total in Counter(len(c) for c in every).items():
        assert sum(len(c) == n for c in dev) * 3 == total
        per_char = Counter(c[0] for c in dev if len(c) == n)
        assert max(per_char.values()) - min(per_char.values()) <= 1
    assert sorted(Counter(c[0] for c in dev).values()) == [26, 27, 27]
    # every non-character concept equally often in dev
    assert set(Counter(x for c in dev for x in c[1:]).values()) == {27}
    with pytest.raises(ValueError):
        protocol.split("train")


def test_composition_is_the_unit_of_the_standard_error():
    from composbench.run import comp_stats, paired_stats
    # two compositions whose seeds disagree but whose means agree: no spread across compositions
    st = comp_stats({("a",): [1.0, 0.0], ("b",): [0.0, 1.0]})
    assert st["mean"] == 0.5 and st["se"] == 0.0 and st["n"] == 2
    st = comp_stats({("a",): [1.0, 1.0], ("b",): [0.0, 0.0], ("c",): [0.5, 0.5]})
    assert st["se"] == pytest.approx(0.5 / math.sqrt(3))
    d = paired_stats({("a",): [1.0], ("b",): [0.5]}, {("a",): [0.5], ("b",): [0.0], ("c",): [1.0]})
    assert d["mean"] == pytest.approx(0.5) and d["se"] == 0.0 and d["n"] == 2


def test_detector_finds_each_concept_on_clean_renders_and_not_without_it():
    import numpy as np

    from composbench import detector
    misses, false = [], {}
    for seed in range(4):
        rng = np.random.default_rng(100 + seed)
        for c in world.ALL_CONCEPTS:
            cat = world.CATEGORY_OF[c]
            # a plain background unlike the concept, a figure (a flat image has no style)
            with_c = world.random_generic(rng, {cat: c}, p_figure=1.0)
            with_c.bg = ("plain", "blue", "blue") if c not in ("starnight", "zorbot") else ("plain", "green", "green")
            without = world.Scene(**{**with_c.__dict__, "concepts": {}})
            j = world.ALL_CONCEPTS.index(c)
            if not detector.detect(world.render(with_c))[0, j]:
                misses.append((c, seed))
            if detector.detect(world.render(without))[0, j]:
                false[c] = false.get(c, 0) + 1
    assert not misses, misses
    # pixelart is the detector's weak concept on clean renders (block-aligned edges look like it,
    # about 0.2 false positives): bounded, the others at most one scene in four
    assert false.get("pixelart", 0) <= 2, false
    assert all(k <= 1 for c, k in false.items() if c != "pixelart"), false
    # scenes with other concepts around (any subset, one per category), seeded
    imgs, labs = detector.labelled_renders(40, 5)
    det = detector.detect(imgs)
    assert (det == labs).mean() >= 0.93
    assert (det[labs]).mean() >= 0.9  # recall over every concept present


def test_reduced_benchmark_end_to_end(tmp_path):
    from composbench import run
    torch.set_num_threads(1)
    # every method but the dynamic-selection one (12 LoRA rows a step: half the time of the whole run)
    names = [m.name for m in run.standard_methods() if not m.pool]
    summary = run.main(["--part", "dev", "--per-n", "1", "--limit", "2", "--seeds", "2", "--steps", "4",
                        "--jobs", "1", "--methods", ",".join(names), "--out", str(tmp_path)])
    assert list(summary) == names
    for name, row in summary.items():
        assert 0.0 <= row["avg"] <= 1.0, name
        assert 0.0 <= row["avg_det"] <= 1.0, name
        assert row["n_compositions"] == 2 and row["n_images"] == 4, name
        assert math.isfinite(row["avg_se"]) and math.isfinite(row["avg_det_se"]), name  # s.e. over 2 compositions
        assert 0.0 <= row["spurious"] <= 1.0, name
        assert 0.0 <= row["confidence"] <= 1.0, name
        assert math.isfinite(row["fd"]) and row["fd"] >= -1e-6, name
        assert row["evals_per_image"] > 0 and row["seconds_per_image"] > 0, name
        assert name == "Merge" or math.isfinite(row["avg_diff_vs_Merge"]), name
    # cost model: prompt only / Merge / Switch 2 rows per step; LoRAtorio 2(N+1); Composite 2N
    assert summary["prompt only"]["evals_per_image"] == 2 * 4
    assert summary["Switch"]["evals_per_image"] == 2 * 4
    assert summary["LoRAtorio"]["evals_per_image"] > summary["Composite"]["evals_per_image"]
    for f in ("results.json", "results.md", "recall.png", "grid.png"):
        assert (tmp_path / f).stat().st_size > 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["summary"].keys() == summary.keys()
    meta = res["meta"]
    assert meta["part"] == "dev" and meta["seeds"] == 2 and meta["strength"] == 0.8 and meta["switch_every"] == 1
    assert meta["methods_settings"]["Switch"]["switch_every"] == 1
    assert meta["methods_settings"]["Merge"]["strength"] == 0.8
    from composbench.protocol import split
    assert all(tuple(c) in set(split("dev")) for c in meta["composition_list"])
    md = (tmp_path / "results.md").read_text()
    assert "recall (detector)" in md and "Δ vs Merge" in md and " ± " in md
