"""bench/tune_distill.py: shared inputs linked, the point chosen on dev."""

import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import tune_distill  # noqa: E402


def _base_work(root):
    """A finished quality work folder: corpus, experts, pool, ML LoRA."""
    seed = root / "seed1"
    for name in ("expert_de", "expert_it", "multilingual_lora_aware"):
        (seed / name).mkdir(parents=True)
        (seed / name / "metrics.json").write_text("{}")
        (seed / name / "model").mkdir()
        (seed / name / "model" / "model.json").write_text("{}")
    (seed / "pool" / "de").mkdir(parents=True)
    (seed / "expert_oracle_aware").mkdir()  # a system: not linked
    (root / "corpus").mkdir()
    return root


def test_grid_runs_each_point_on_shared_inputs_and_picks_by_dev(
    tmp_path, monkeypatch
):
    base = _base_work(tmp_path / "base")
    # Dev error rate per (lambda, mu); the test set must not be read.
    dev_rate = {("0.3", "0"): 31.0, ("0.3", "0.3"): 27.0, ("0.7", "0"): 29.0}
    calls = []

    def fake_quality_main(argv):
        options = dict(a[2:].split("=", 1) for a in argv)
        overrides = dict(
            a.split("=", 1)[1].split("=", 1)
            for a in argv
            if a.startswith("--recipe_override=")
        )
        calls.append(overrides)
        work = options["work"]
        seed = os.path.join(work, "seed1")
        # The shared runs are links into the base folder.
        assert os.path.islink(os.path.join(seed, "multilingual_lora_aware"))
        assert os.path.islink(os.path.join(seed, "expert_de"))
        assert os.path.islink(os.path.join(seed, "pool"))
        assert not os.path.exists(os.path.join(seed, "expert_oracle_aware"))
        assert os.path.islink(os.path.join(work, "corpus"))
        assert options["systems"] == "distill_generalist"
        key = (overrides["distill_weight"], overrides["distill_anchor_weight"])
        if key not in dev_rate:
            return  # a point that did not run
        run = os.path.join(seed, "distill_generalist_aware")
        os.makedirs(run)
        curve = [
            {"epoch": 0, "loss": 0.74, "error_rate": 30.0},
            {"epoch": 1, "loss": 0.80, "error_rate": dev_rate[key]},
        ]
        with open(os.path.join(run, "dev_curve.json"), "w") as f:
            json.dump(curve, f)
        # A test result that would win if it were read.
        with open(os.path.join(run, "metrics.json"), "w") as f:
            json.dump({"macro": 0.0 if key == ("0.7", "0") else 50.0}, f)

    monkeypatch.setattr(tune_distill, "run_point", fake_quality_main)
    out = tmp_path / "results"
    result = tune_distill.main(
        [
            "--whisper=whisper-base",
            f"--base_work={base}",
            "--grid=distill_weight=0.3,0.7;distill_anchor_weight=0,0.3",
            f"--work={tmp_path / 'tune'}",
            f"--out={out}",
            "--parallel=2",
        ]
    )
    assert len(calls) == 4
    assert all(c["valid_search_interval"] == "1" for c in calls)
    assert result["chosen"] == "distill_weight-0.3_distill_anchor_weight-0.3"
    names = [row["name"] for row in result["points"]]
    # Ranked by dev error rate; a point above the start keeps the start
    # (epoch 0, 30.0); the point that did not run comes last.
    assert names[:3] == [
        "distill_weight-0.3_distill_anchor_weight-0.3",
        "distill_weight-0.7_distill_anchor_weight-0",
        "distill_weight-0.3_distill_anchor_weight-0",
    ]
    worst = result["points"][2]["best"]
    assert worst["epoch"] == 0 and worst["error_rate"] == 30.0
    assert result["points"][3]["best"] is None
    written = (out / "tune_distill.json").read_text()
    assert str(tmp_path) not in written
    assert result["command"].startswith("python bench/tune_distill.py ")
    assert "--base_work=<base_work>" in result["command"]
    markdown = (out / "tune_distill.md").read_text()
    assert "Chosen: `distill_weight-0.3_distill_anchor_weight-0.3`." in markdown
    assert "| distill_weight-0.7_distill_anchor_weight-0.3 | – | not run" in (
        markdown
    )
    assert "| 30.0, 27.0 |" in markdown  # the dev curve, start first

    # --collect_only reports the same from the curves, running nothing.
    calls.clear()
    again = tune_distill.main(
        [
            "--whisper=whisper-base",
            f"--base_work={base}",
            "--grid=distill_weight=0.3,0.7;distill_anchor_weight=0,0.3",
            f"--work={tmp_path / 'tune'}",
            f"--out={tmp_path / 'collected'}",
            "--collect_only",
        ]
    )
    assert calls == []
    assert again["points"] == result["points"]


def test_unfinished_base_runs_are_refused(tmp_path):
    base = _base_work(tmp_path / "base")
    os.remove(base / "seed1" / "expert_it" / "metrics.json")
    with pytest.raises(SystemExit, match="expert_it has not finished"):
        tune_distill.link_base_runs(str(base), str(tmp_path / "w"), 1, "aware")


def test_unknown_knobs_are_refused():
    with pytest.raises(ValueError, match="unknown knob 'batch_size'"):
        tune_distill.parse_grid("batch_size=1")
