"""bench/quality.py runs on the tiny fixture and writes its report."""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))


def test_quality_benchmark_on_tiny_fixture(tmp_path, tiny_whisper_dir):
    import quality

    from speechbrain_lora_experts.data.demo import build_demo_corpus

    build_demo_corpus(
        tmp_path / "corpus",
        ["de", "es"],
        per_split=(2, 1, 1),
        seed=5,
        speakers=3,
        progress=False,
    )
    args = [
        f"--whisper={tiny_whisper_dir}",
        f"--cv={tmp_path / 'corpus' / 'common_voice'}",
        f"--fleurs={tmp_path / 'corpus' / 'fleurs'}",
        "--languages=de,es",
        "--systems=multilingual_lora,expert_oracle",
        "--scenarios=aware",
        f"--work={tmp_path / 'work'}",
        f"--out={tmp_path / 'results'}",
    ]
    os.environ["HF_HUB_OFFLINE"] = "1"
    quality.SETTINGS["small"] = dict(
        epochs=1, batch_size=2, window=10.0, lr=1e-3
    )
    result = quality.main(args)
    table = result["results"]
    assert set(table) == {"multilingual_lora/aware", "expert_oracle/aware"}
    for entry in table.values():
        for test in ("in_domain", "out_of_domain"):
            numbers = entry[test]
            assert set(numbers["per_language"]) == {"de", "es"}
            assert numbers["macro"] >= 0
    baseline = table["multilingual_lora/aware"]["in_domain"]
    assert baseline["relative_gain_vs_multilingual_lora"] == 0.0
    written = json.loads(
        (tmp_path / "results" / "quality_small.json").read_text()
    )
    assert written["languages"] == ["de", "es"]
    assert (tmp_path / "results" / "quality_small_wer_aware.png").exists()
    # A second call resumes: nothing is retrained.
    again = quality.main(args + ["--collect_only"])
    assert again["results"] == table
