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
            "--configs=enc+dec,dec cached",
            f"--work={tmp_path / 'work'}",
            f"--out={out}",
        ]
    )
    plain, cached = result["runs"]
    assert plain["cache"] == {}
    # Epoch 1 computes both training clips, epoch 2 reads them; dev and
    # test clips are computed at their first pass too.
    assert cached["cache"]["train"] == [2, 2]
    assert cached["cache"]["valid"] == [1, 1]
    for row in (plain, cached):
        assert row["epochs"] == 2 and row["optimizer_steps"] == 2
        assert 0 < row["train_s"] < row["wall_s"]
    written = json.loads((out / "expert_wall.json").read_text())
    assert written["runs"] == result["runs"]
    assert str(tmp_path) not in json.dumps(written)
    report = (out / "expert_wall.md").read_text()
    assert "| dec cached |" in report
