"""bench/expert_wall.py on the tiny Whisper: every configuration trains."""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))


def test_expert_wall_runs_each_configuration(tmp_path, tiny_whisper_dir):
    import expert_wall

    out = tmp_path / "results"
    result = expert_wall.main(
        [
            f"--whisper={tiny_whisper_dir}",
            "--clips=2",
            "--dev=1",
            "--test=1",
            "--epochs=2",
            "--batch_size=2",
            "--threads=1",
            "--text_source=django",
            "--configs=zero-shot,enc+dec,enc+dec cut,dec cached",
            "--bucket=0.5",
            "--bootstrap=50",
            f"--work={tmp_path / 'work'}",
            f"--out={out}",
        ]
    )
    zero, plain, cut, cached = result["runs"]
    assert plain["cache"] == {}
    assert zero["epochs"] == 0 and zero["train_s"] is None
    # The cut run trained on windows of its clips (about 1-3 s), not 10 s.
    assert "--window_bucket_s=0.5" in cut["flags"]
    assert plain["mean_window_s"] is None
    assert 0.5 <= cut["mean_window_s"] < 5
    # Epoch 1 computes both training clips, epoch 2 reads them; dev and
    # test clips are computed at their first pass too.
    assert cached["cache"]["train"] == [2, 2]
    assert cached["cache"]["valid"] == [1, 1]
    for row in (plain, cut, cached):
        assert row["epochs"] == 2 and row["optimizer_steps"] == 2
        assert 0 < row["train_s"] < row["wall_s"]
    written = json.loads((out / "expert_wall.json").read_text())
    assert written["runs"] == result["runs"]
    assert str(tmp_path) not in json.dumps(written)
    report = (out / "expert_wall.md").read_text()
    assert "| dec cached |" in report
    # Only the cut run has a baseline here: the same run, uncut.
    (change,) = written["paired_changes"].values()
    assert change["baseline"] == "enc+dec"
    assert (change["wer"], change["baseline_wer"]) == (
        cut["test_wer"],
        plain["test_wer"],
    )
    low, high = change["interval"]
    assert low <= high
    assert "| enc+dec cut | enc+dec |" in report
