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


def test_reduced_benchmark_end_to_end(tmp_path):
    from composbench import run
    torch.set_num_threads(1)
    summary = run.main(["--per-n", "1", "--limit", "2", "--steps", "4", "--jobs", "1", "--out", str(tmp_path)])
    names = [m.name for m in run.standard_methods()]
    assert list(summary) == names
    for name, row in summary.items():
        assert 0.0 <= row["avg"] <= 1.0, name
        assert 0.0 <= row["spurious"] <= 1.0, name
        assert 0.0 <= row["confidence"] <= 1.0, name
        assert math.isfinite(row["fd"]) and row["fd"] >= -1e-6, name
        assert row["evals_per_image"] > 0 and row["seconds_per_image"] > 0, name
    # cost model: prompt only / Merge / Switch 2 rows per step; LoRAtorio 2(N+1); Composite 2N
    assert summary["prompt only"]["evals_per_image"] == 2 * 4
    assert summary["LoRAtorio"]["evals_per_image"] > summary["Composite"]["evals_per_image"]
    assert summary["LoRAtorio dyn (k=N of 11)"]["evals_per_image"] == 2 * 12 * 4
    for f in ("results.json", "results.md", "recall.png", "grid.png"):
        assert (tmp_path / f).stat().st_size > 0
    assert json.loads((tmp_path / "results.json").read_text())["summary"].keys() == summary.keys()
