"""bench/lid_evidence.py on the tiny Whisper: probes per layer, Whisper LID."""

import json
import os
import sys

import numpy as np
import soundfile as sf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))


def _split(folder, name, count, seed):
    """Clips whose pitch gives their language away (de low, it high)."""
    rng = np.random.default_rng(seed)
    rows = ["ID,duration,wav,spk_id,wrd,lang"]
    for i in range(count):
        lang, freq = ("de", 220.0) if i % 2 else ("it", 1760.0)
        seconds = rng.uniform(0.5, 1.0)
        t = np.arange(int(seconds * 16000)) / 16000
        wave = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.normal(
            size=t.shape
        )
        path = folder / f"{name}_{i}.wav"
        sf.write(path, wave.astype("float32"), 16000)
        rows.append(f"{name}{i},{seconds:.3f},{path},s{i},x,{lang}")
    (folder / f"{name}.csv").write_text("\n".join(rows) + "\n")


def test_probes_read_the_language_where_the_signal_carries_it(
    tmp_path, tiny_whisper_dir
):
    import lid_evidence

    data = tmp_path / "data"
    data.mkdir()
    _split(data, "train", 16, seed=0)
    _split(data, "test", 10, seed=1)
    out = tmp_path / "results"
    result = lid_evidence.main(
        [
            f"--whisper={tiny_whisper_dir}",
            f"--data={data}",
            "--window=1",
            "--lid_bucket=0.2",
            f"--out={out}",
        ]
    )
    assert result["languages"] == ["de", "it"]
    assert [row["layer"] for row in result["layers"]] == [0, 1, 2]
    # Pitch survives the convolutions: the free layer-0 probe reads it.
    assert result["layers"][0]["test"]["accuracy"] == 100.0
    for row in result["layers"]:
        assert row["test"]["n"] == 10
        low, high = row["test"]["interval"]
        assert low <= row["test"]["accuracy"] <= high
    assert result["whisper_lid"]["test"]["n"] == 10
    # Over the audio only: 0.5-1 s clips of a 1 s window, 0.2 s buckets.
    assert result["whisper_lid_audio"]["test"]["n"] == 10
    assert result["lid_bucket"] == 0.2
    assert "fleurs_test" not in result["whisper_lid"]  # no such split here
    written = (out / "lid_evidence.json").read_text()
    assert str(tmp_path) not in written
    assert json.loads(written)["layers"] == result["layers"]
    report = (out / "lid_evidence.md").read_text()
    assert "| layer 2 (output) |" in report and "| Whisper LID |" in report
    assert "| Whisper LID over the audio (0.2 s buckets) |" in report
