"""The speed benchmark runs end to end on a tiny configuration (timings are reported, never asserted)."""

import json

import pytest

from composbench import speed


def test_speed_bench_reports_every_ratio(capsys, one_thread):
    report = speed.main(["--loras", "1", "2", "--width", "16", "--latent", "8", "--repeats", "1",
                         "--compose-latent", "16", "--json"])
    assert json.loads(capsys.readouterr().out)["rows"][1]["n"] == 2
    for row in report["rows"]:
        for key in ("loratorio_ratio", "loratorio_recenter1_ratio", "fast_mode_ratio", "stack_ratio", "loop_ratio",
                    "merge_per_branch_ratio", "merged_step_ratio", "merge_once_ratio"):
            assert row[key] > 0
        assert row["batched_vs_loop_max_diff"] < 1e-4      # one batched forward == separate forwards
    assert "| 2 | 3 |" in speed.format_table(report)


def test_memory_per_lora_type(one_thread):
    report = speed.main(["--loras", "1", "--width", "16", "--latent", "8", "--repeats", "1", "--compose-latent", "16",
                         "--memory", "--memory-latent", "8", "--rank", "4"])
    rows = {r["type"]: r for r in report["memory"]}
    assert list(rows) == ["lora", "locon", "loha", "lokr"]
    for kind, row in rows.items():
        assert row["files_mib"] > 0 and row["step_peak_mib"] >= 0
        assert (row["dense_kept_before_mib"] > 0) == (kind in ("loha", "lokr"))
    assert "| loha | 2 |" in speed.format_memory(report["memory"], "cpu")


def test_flop_count_of_each_method(capsys):
    """Counted on the meta device: the ratios follow from the rows each method evaluates."""
    from composbench import flops

    report = flops.main(["--loras", "1", "2", "--width", "16", "--latent", "8", "--steps", "10"])
    assert "| 2 |" in capsys.readouterr().out
    one, two = report["rows"]
    assert one["branch_row"] > 1 and two["mixed_per_lora_row"] > two["mixed_folded_row"] > one["mixed_folded_row"] > 1
    for r in (one, two):
        assert r["loratorio"] == pytest.approx(1 + r["n"] * r["branch_row"])
        assert r["mixed_step_folded"] < r["fast_mode_folded"] < r["loratorio_recenter1"] < r["loratorio"]
