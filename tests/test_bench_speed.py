"""bench/speed.py runs end to end on the tiny fixture and writes its report.

Seconds of runtime: minimal sizes, one round; nothing here is timed.
"""

import json
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))


def _positive(value):
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_speed_benchmark_on_tiny_fixture(tmp_path, tiny_whisper_dir):
    import speed

    out = tmp_path / "results"
    result = speed.main(
        [
            f"--whisper={tiny_whisper_dir}",
            "--window=1",
            "--repeats=1",
            "--experts=2",
            "--placements=enc1+dec",
            "--train-placements=dec",
            "--new-tokens=2",
            "--train-batch=2",
            "--target-tokens=3",
            "--memory=key",
            f"--out={out}",
        ]
    )
    written = json.loads((out / "speed.json").read_text())
    assert written["settings"]["teachers"] == ["de", "es"]
    assert "## Decoding, 1 s encoder window" in (out / "speed.md").read_text()

    decode = written["decode"]["1"]
    assert [row["system"] for row in decode] == [
        "plain Whisper",
        "fused 2, dense gate [enc1+dec]",
        "fused 2, top-1 gate [enc1+dec]",
        "fused 2, dense gate with Whisper LID [enc1+dec]",
        "fused 2, dense gate on layer input [enc1+dec]",
        "routed 1 of 2 [enc1+dec]",
        "merged 1 of 2 [enc1+dec]",
    ]
    train = written["train"]["1"]
    assert [row["system"] for row in train] == [
        "full finetune",
        "expert LoRA [dec]",
        "distill, 2 teachers [dec]",
    ]
    for row in decode + train:
        assert _positive(row["seconds"]) and _positive(row["ratio"])
        assert len(row["all_seconds"]) == 1
        assert row["met"] in (True, False, None)
        assert (row["met"] is None) == (row["goal"] is None)
    assert decode[0]["ratio"] == 1.0 and train[0]["ratio"] == 1.0
    assert train[2]["baseline"] == "expert LoRA [dec]"
    assert _positive(train[2]["ratio_vs_full_finetune"])

    memory = written["memory"]
    assert set(memory) == {"decode", "train"}
    assert [r["system"] for r in memory["train"]["1"]] == [
        r["system"] for r in train
    ]
    for rows in (memory["decode"]["1"], memory["train"]["1"]):
        assert rows[0]["state_mb"] == 0 or rows[0]["kind"] == "full"
        for row in rows:
            assert row["state_mb"] >= 0 and row["total_mb"] >= 0
            # None only where the baseline used no measurable memory.
            assert row["ratio"] is None or math.isfinite(row["ratio"])
        assert all(_positive(row["total_mb"]) for row in rows[1:])
    # Experts and optimiser state are counted tensor by tensor.
    by_name = {r["system"]: r for r in memory["train"]["1"]}
    assert (
        by_name["full finetune"]["state_mb"]
        > (by_name["expert LoRA [dec]"]["state_mb"])
    )
    assert result["decode"] == written["decode"]
