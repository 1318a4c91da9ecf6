"""bench/speed.py runs end to end on the tiny fixture and writes its report.

Seconds of runtime: minimal sizes, one round; nothing here is timed.
"""

import json
import math
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))


def _positive(value):
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_speed_benchmark_on_tiny_fixture(tmp_path, tiny_whisper_dir):
    import speed

    out = tmp_path / "results"
    speed.main(
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
        "fused 2, dense gate with Whisper LID over the audio [enc1+dec]",
        "fused 2, dense gate with Whisper LID [enc1+dec]",
        "fused 2, top-1 gate [enc1+dec]",
        "fused 2, dense gate [enc1+dec]",
        "fused 2, dense gate on layer input [enc1+dec]",
        "routed 1 of 2 [enc1+dec]",
        "merged 1 of 2 [enc1+dec]",
    ]
    train = written["train"]["1"]
    assert [row["system"] for row in train] == [
        "full finetune",
        "PEFT LoRA [dec]",
        "expert LoRA [dec]",
        "PEFT LoRA [dec], cut windows",
        "expert LoRA [dec], cut windows",
        "distill, 2 teachers [dec]",
        "PEFT LoRA [dec], cached prefix",
        "expert LoRA [dec], cached prefix",
        "PEFT LoRA [dec], cached prefix, cut windows",
        "expert LoRA [dec], cached prefix, cut windows",
        "distill, 2 teachers [dec], cached prefix",
    ]
    for row in decode + train:
        assert _positive(row["seconds"]) and _positive(row["ratio"])
        assert row["met"] in (True, False, None)
        assert (row["met"] is None) == (row["goal"] is None)
    # Decoding is paired: the baseline runs before each system and once
    # at the end of the round; a system's ratio is its time over the mean
    # of the two baseline runs around it (median over rounds: one here).
    base_runs = decode[0]["all_seconds"]
    assert len(base_runs) == len(decode)
    assert decode[0]["ratio"] == 1.0 and decode[0]["paired_ratios"] == []
    for row in decode[1:]:
        assert len(row["all_seconds"]) == 1
        (pair,) = row["paired_ratios"]
        assert row["ratio"] == pair
        assert row["ratio_of_medians"] == pytest.approx(
            row["seconds"] / decode[0]["seconds"]
        )
        # Its two neighbours are among the baseline's runs.
        around = 2 * row["seconds"] / pair
        assert any(
            around == pytest.approx(a + b)
            for a, b in zip(base_runs, base_runs[1:])
        )
    # Training: ratios of medians against the named baseline.
    seconds = {row["system"]: row["seconds"] for row in train}
    for row in train:
        assert len(row["all_seconds"]) == 1
        assert row["ratio"] == pytest.approx(
            row["seconds"] / seconds[row["baseline"]]
        )
    assert train[5]["baseline"] == "expert LoRA [dec]"
    assert train[10]["baseline"] == "expert LoRA [dec], cached prefix"
    assert [row["cache"] for row in train] == [False] * 6 + [True] * 5
    assert [row["cut"] for row in train] == [False, False, False] + [
        True,
        True,
        False,
        False,
        False,
        True,
        True,
        False,
    ]
    # Our LoRA against PEFT's on the same layers and windows, in the same run.
    for ours, peft in ((2, 1), (4, 3), (7, 6), (9, 8)):
        assert train[ours]["ratio_vs_peft"] == pytest.approx(
            train[ours]["seconds"] / train[peft]["seconds"]
        )
    assert train[5]["ratio_vs_full_finetune"] == pytest.approx(
        train[5]["seconds"] / train[0]["seconds"]
    )
    # The report shows what was measured.
    report = (out / "speed.md").read_text()
    for row in decode:
        assert f"| {row['system']} | {row['seconds']:.3f} |" in report

    memory = written["memory"]
    assert set(memory) == {"decode", "train"}
    assert [r["system"] for r in memory["train"]["1"]] == [
        r["system"] for r in train
    ]
    for rows in (memory["decode"]["1"], memory["train"]["1"]):
        assert rows[0]["state_mb"] == 0 or rows[0]["kind"] == "full"
        for row in rows:
            assert row["state_mb"] >= 0 and row["total_mb"] >= 0
            assert row["total_mb"] == pytest.approx(
                row["state_mb"] + row["step_mb"]
            )
        assert all(_positive(row["total_mb"]) for row in rows[1:])
    # Experts and optimiser state are counted tensor by tensor.
    by_name = {r["system"]: r for r in memory["train"]["1"]}
    assert (
        by_name["full finetune"]["state_mb"]
        > (by_name["expert LoRA [dec]"]["state_mb"])
    )
    # PEFT's LoRA keeps what ours keeps: the same adapters and AdamW state.
    assert by_name["PEFT LoRA [dec]"]["state_mb"] == pytest.approx(
        by_name["expert LoRA [dec]"]["state_mb"], rel=0.05
    )
    # The cache's entries live on disk, not in the trainer's memory.
    assert by_name["expert LoRA [dec], cached prefix"]["state_mb"] == (
        pytest.approx(by_name["expert LoRA [dec]"]["state_mb"], rel=1e-6)
    )
    # After a decode a pool keeps its adapters and nothing derived from the
    # weights: fused = routed + the gate; merged = routed + the merged
    # expert's factors (2 experts: half the adapters), no weight backup.
    from speechbrain_lora_experts.gate import UtteranceGate

    state = {r["system"]: r["state_mb"] for r in memory["decode"]["1"]}
    gate = UtteranceGate(64, 2, features="first_adapted")
    # The gate, and the tap's weights and logits of the last utterance.
    gate_mb = (sum(p.numel() for p in gate.parameters()) + 2 * 2) * 4 / 2**20
    routed = state["routed 1 of 2 [enc1+dec]"]
    assert routed > 0
    assert state["fused 2, dense gate on layer input [enc1+dec]"] == (
        pytest.approx(routed + gate_mb, rel=1e-6)
    )
    assert state["merged 1 of 2 [enc1+dec]"] == pytest.approx(1.5 * routed)


def test_speed_benchmark_compares_with_the_results_it_replaces(
    tmp_path, tiny_whisper_dir
):
    import speed

    out = tmp_path / "results"
    common = [
        f"--whisper={tiny_whisper_dir}",
        "--window=1",
        "--repeats=1",
        "--experts=2",
        "--placements=dec",
        "--train-placements=dec",
        "--new-tokens=2",
        "--train-batch=2",
        "--target-tokens=3",
        f"--out={out}",
    ]
    first = speed.main(common + ["--memory=off"])
    second = speed.main(common + ["--phases=decode", "--memory=off"])
    old = {r["system"]: r["ratio"] for r in first["decode"]["1"]}
    for row in second["decode"]["1"]:
        assert row["previous_ratio"] == old[row["system"]]
    # Training was not measured again: carried over, and said so.
    assert second["train"] == first["train"]
    assert second["carried_over"]["phases"] == ["train"]
    report = (out / "speed.md").read_text()
    assert "carried over from the previous results" in report
    assert "previous ratio" in report
    # Carried over again, the rows keep naming the run that measured them.
    third = speed.main(common + ["--phases=decode", "--memory=off"])
    assert third["train"] == first["train"]
    assert third["carried_over"]["wall_s"] == first["wall_s"]
    assert third["carried_over"]["wall_s"] != second["wall_s"]
    # Another name is another file: nothing to compare with or carry, and
    # the file of the default name is left as it was.
    before = (out / "speed.json").read_text()
    focused = speed.main(
        common + ["--phases=decode", "--memory=off", "--name=speed_dec"]
    )
    assert "train" not in focused and "carried_over" not in focused
    assert "previous_ratio" not in focused["decode"]["1"][1]
    written = json.loads((out / "speed_dec.json").read_text())
    assert [r["system"] for r in written["decode"]["1"]] == [
        r["system"] for r in focused["decode"]["1"]
    ]
    assert len(written["decode"]["1"]) > 1
    assert (out / "speed_dec.md").exists()
    assert (out / "speed.json").read_text() == before


def test_render_rewrites_the_markdown_from_the_json(tmp_path):
    # The committed result: cached / cut expert rows also name their ratio
    # to plain PEFT (HF Whisper + peft, fixed window, no cache).
    import shutil

    import speed

    shutil.copy(os.path.join(ROOT, "bench", "results", "speed.json"), tmp_path)
    speed.main(["--render", f"--out={tmp_path}"])
    report = (tmp_path / "speed.md").read_text()
    line = next(
        row
        for row in report.splitlines()
        if row.startswith("| expert LoRA [enc4+dec], cached prefix |")
    )
    assert "x PEFT alike, 0." in line and "x plain PEFT)" in line
    assert "| PEFT LoRA [enc4+dec] |" in report


def test_default_gate_is_measured_at_every_expert_count():
    import speed

    args = speed.parse_args(["--experts=2,4,8", "--placements=dec,enc2+dec"])
    names = [spec["name"] for spec in speed.decode_specs(args)]
    for place in ("dec", "enc2+dec"):
        lid = [
            n for n in names if "Whisper LID" in n and n.endswith(f"[{place}]")
        ]
        expected = [
            f"fused {n}, dense gate with Whisper LID over the audio [{place}]"
            for n in (2, 4, 8)
        ]
        if place != "dec":
            # Its frozen pass over the whole window beside it (decoder-only
            # experts have no such pass: nothing to compare).
            expected += [
                f"fused {n}, dense gate with Whisper LID [{place}]"
                for n in (2, 4, 8)
            ]
        assert lid == expected
        # Without the LID prior, top-1 and routed/merged: largest N only.
        assert f"fused 8, dense gate [{place}]" in names
        assert f"fused 4, dense gate [{place}]" not in names
        assert f"fused 8, top-1 gate [{place}]" in names
    # The free layer-input gate exists only where experts adapt the encoder.
    assert "fused 8, dense gate on layer input [enc2+dec]" in names
    assert not any(n.endswith("layer input [dec]") for n in names)
    lid_specs = [s for s in speed.decode_specs(args) if "LID" in s["name"]]
    assert {s["features"] for s in lid_specs} == {"whisper_lid"}
    assert {s["top_k"] for s in lid_specs} == {None}
    assert {s["bucket"] for s in lid_specs if "audio" in s["name"]} == {2.0}
    assert {s["bucket"] for s in lid_specs if "audio" not in s["name"]} == {
        None
    }
