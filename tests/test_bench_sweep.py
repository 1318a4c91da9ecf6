"""bench/sweep.py: points, budgets, placement and the report."""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import sweep  # noqa: E402


def _quality_result(macro, gain):
    systems = {
        "multilingual_lora/aware": dict(
            macro=macro, macro_ci=[macro - 2, macro + 2]
        ),
        "expert_oracle/aware": dict(
            macro=macro * (1 - gain / 100),
            paired_gain=dict(gain=gain, ci=[gain - 5, gain + 5], seeds=1),
        ),
    }
    ood = {
        "expert_oracle/aware": dict(
            paired_gain=dict(gain=gain + 1, ci=[gain - 4, gain + 6], seeds=1)
        )
    }
    return dict(
        commit="abc",
        results=dict(
            in_domain=dict(systems=systems),
            out_of_domain=dict(systems=ood),
        ),
    )


def test_train_sweep_on_the_decoder_scales_the_budget(tmp_path, monkeypatch):
    calls = []
    gains = {"40": -6.0, "160": 4.0}

    def fake_quality(argv):
        options = {}
        for a in argv:
            key, _, value = a[2:].partition("=")
            options.setdefault(key, []).append(value)
        calls.append(options)
        os.makedirs(options["work"][0], exist_ok=True)
        train = options["per_split"][0].split(",")[0]
        return _quality_result(50.0, gains[train])

    monkeypatch.setattr(sweep.quality, "main", fake_quality)
    out = tmp_path / "out"
    argv = [
        "--whisper=whisper-base",
        "--placement=decoder",
        "--factors=train",
        "--values=train=40,160",
        f"--work={tmp_path / 'w'}",
        f"--corpora={tmp_path / 'c'}",
        f"--out={out}",
    ]
    report = sweep.main(argv)
    assert [c["max_steps"] for c in calls] == [["240"], ["960"]]
    overrides = calls[1]["recipe_override"]
    assert "lora_rank=16" in overrides and "lora_parts=[decoder]" in overrides
    # One cache for every point: the frozen encoder does not change.
    assert f"prefix_cache_folder={tmp_path / 'w'}/prefix_cache" in overrides
    assert calls[1]["corpus"] == [str(tmp_path / "c" / "l4_t160")]
    rows = report["points"]
    assert [(r["factor"], r["point"]["train"]) for r in rows] == [
        ("centre", 40),
        ("train", 160),
    ]
    assert rows[1]["expert_oracle"]["gain"] == 4.0
    assert rows[0]["multilingual_lora_macro"] == 50.0
    written = (out / "sweep_decoder.json").read_text()
    assert str(tmp_path) not in written
    assert json.loads(written)["command"].startswith("python bench/sweep.py ")
    markdown = (out / "sweep_decoder.md").read_text()
    assert "| train | de,es,it,ru | 160 | 16 | 960 | 50.0 [48.0, 52.0] " in (
        markdown
    )
    # In-domain, out-of-domain, other synthesizer (not run: –).
    assert (
        "| +4.0% [-1.0, +9.0] (1) | +5.0% [+0.0, +10.0] (1) | – |" in markdown
    )
    assert rows[1]["expert_oracle/out_of_domain"]["gain"] == 5.0
    assert (out / "sweep_decoder.png").stat().st_size > 0

    # --collect_only passes on to every point that has a work folder.
    calls.clear()
    sweep.main(argv + ["--collect_only", "--values=train=40,160,640"])
    assert len(calls) == 2 and all("collect_only" in c for c in calls)


def test_points_and_values():
    names = [sweep.point_name(p) for _, _, p in sweep.points()]
    # The centre once, then each factor's other values.
    assert names[0] == "l4_t40_r16" and len(names) == len(set(names)) == 7
    assert sweep.max_steps(dict(languages=8, train=40, rank=16)) == 480
