"""Tests of the other-synthesizer (Festival) out-of-domain test builder.

Where Festival is installed (``.ci/run`` installs it with an Italian
voice) the tests render speech and read it back through the recipe's
FLEURS preparation; where it is not, they assert the error that names the
packages to install.

Authors
 * speechbrain-lora-experts developers 2026
"""

import csv
import io
import os
import shutil
import tarfile

import numpy as np
import pytest
import soundfile as sf

from speechbrain_lora_experts.data import other_synth

HAS_FESTIVAL = shutil.which("festival") is not None
SENTENCES = ["Buongiorno a tutti voi.", "La casa è molto grande."]


def test_held_out_drops_seen_and_repeated_sentences():
    kept = other_synth.held_out(
        ["Ciao, mondo!", "Buona sera.", "ciao mondo", "Grazie mille."],
        seen=["buona  SERA"],
    )
    assert kept == ["Ciao, mondo!", "Grazie mille."]


def test_text_in_the_voice_encoding():
    assert other_synth.festival_text("È “così” – già", "iso-8859-1") == (
        'È "così" - già'.encode("iso-8859-1")
    )
    # A character the encoding lacks becomes a space, not an error.
    assert other_synth.festival_text("Ciao ☺ a te", "iso-8859-1") == (
        b"Ciao   a te"
    )
    assert other_synth.festival_text("Привет", "utf-8") == "Привет".encode()


def test_recording_conditions():
    rate = 22050
    tone = 0.5 * np.sin(2 * np.pi * 220 * np.arange(rate) / rate)
    clip = other_synth.recording(tone, rate, seed=3)
    # 1 s of speech (+-4% speed), 0.6-1.8 s of silence around it.
    assert 1.5 * 16000 < len(clip) < 2.9 * 16000
    assert np.abs(clip).max() < 1.0
    np.testing.assert_array_equal(
        clip, other_synth.recording(tone, rate, seed=3)
    )
    assert not np.array_equal(clip, other_synth.recording(tone, rate, seed=4))


def test_missing_voice_is_reported_not_fatal():
    assert other_synth.installed_voices("de") == []
    assert "no Festival voice" in other_synth.missing_reason("de")
    it = other_synth.missing_reason("it")
    assert it is None or "festvox-ital" in it


def test_missing_festival_names_the_packages(tmp_path, monkeypatch):
    monkeypatch.setattr(other_synth.shutil, "which", lambda name: None)
    with pytest.raises(other_synth.FestivalNotFoundError) as error:
        other_synth.build_other_synth_test(tmp_path, {"it": SENTENCES})
    assert "apt-get install festival" in str(error.value)
    assert not os.listdir(tmp_path)


def test_synthesize_without_festival_names_the_packages(tmp_path, monkeypatch):
    """Called directly, too: not subprocess' bare FileNotFoundError."""
    monkeypatch.setattr(other_synth.shutil, "which", lambda name: None)
    jobs = [dict(text="Buongiorno.", tempo=1.0, name="a.wav")]
    with pytest.raises(other_synth.FestivalNotFoundError) as error:
        other_synth.synthesize(jobs, "lp_diphone", "iso-8859-1", tmp_path)
    assert "apt-get install festival" in str(error.value)


def _read_test(root, code):
    folder = root / "data" / code
    with open(folder / "test.tsv", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    audio = {}
    with tarfile.open(folder / "audio" / "test.tar.gz") as tar:
        for member in tar.getmembers():
            audio[member.name] = tar.extractfile(member).read()
    return rows, audio


def test_build_reads_sentences_in_the_fleurs_layout(tmp_path):
    sentences = {"it": SENTENCES, "de": ["Guten Tag."]}
    if not HAS_FESTIVAL:
        with pytest.raises(other_synth.FestivalNotFoundError):
            other_synth.build_other_synth_test(tmp_path, sentences)
        return
    report = other_synth.build_other_synth_test(tmp_path, sentences, seed=1)
    assert report["languages"] == ["it"]
    assert report["missing"] == {"de": "Debian has no Festival voice for de"}
    assert report["rows"] == {"it": 2}
    # The installed Italian voices take turns (.ci/run installs both).
    voices = [v[0] for v in other_synth.installed_voices("it")]
    assert report["voices"]["it"] == voices
    rows, audio = _read_test(tmp_path, "it_it")
    assert [len(row) for row in rows] == [7, 7]
    assert [row[2] for row in rows] == SENTENCES
    assert rows[1][3] == "la casa è molto grande"
    genders = {"lp_diphone": "FEMALE", "pc_diphone": "MALE"}
    assert [row[6] for row in rows] == [
        genders[voices[i % len(voices)]] for i in range(2)
    ]
    assert sorted(audio) == sorted(f"test/{row[1]}" for row in rows)
    for row in rows:
        wav, rate = sf.read(io.BytesIO(audio[f"test/{row[1]}"]))
        assert rate == 16000 and wav.ndim == 1
        assert len(wav) == int(row[5])
        assert 1.5 < len(wav) / rate < 8.0  # a short sentence, not silence
        assert np.abs(wav).max() > 0.05
    # The recipe's FLEURS out-of-domain preparation reads it unchanged.
    from speechbrain_lora_experts.data.fleurs import prepare_fleurs

    paths = prepare_fleurs(
        str(tmp_path), str(tmp_path / "prep"), ["it"], splits=("test",)
    )
    with open(paths["test"], encoding="utf-8", newline="") as f:
        prepared = list(csv.DictReader(f))
    assert [row["wrd"] for row in prepared] == SENTENCES
    # IDs keep the file stem: the benchmark tells Festival clips by it.
    stems = [os.path.splitext(row[1])[0] for row in rows]
    assert [row["ID"][-len(s) :] for row, s in zip(prepared, stems)] == stems
    # Same seed, same bytes.
    again = other_synth.build_other_synth_test(
        tmp_path / "again", {"it": SENTENCES}, seed=1
    )
    assert again["rows"] == {"it": 2}
    assert _read_test(tmp_path / "again", "it_it") == (rows, audio)


@pytest.mark.skipif(
    shutil.which("espeak-ng") is None,
    reason="the demo corpus needs espeak-ng (apt-get install espeak-ng)",
)
def test_demo_builder_reads_its_fleurs_test_with_festival(
    tmp_path, monkeypatch
):
    from speechbrain_lora_experts.data.demo import build_demo_corpus

    options = dict(per_split=(2, 0, 2), seed=3, speakers=3, progress=False)
    which = shutil.which
    with monkeypatch.context() as patch:
        patch.setattr(
            shutil,
            "which",
            lambda name: None if name == "festival" else which(name),
        )
        with pytest.raises(other_synth.FestivalNotFoundError):
            build_demo_corpus(tmp_path, ["it"], other_synth=True, **options)
    assert not os.listdir(tmp_path)  # it failed before rendering anything
    if not HAS_FESTIVAL:
        with pytest.raises(other_synth.FestivalNotFoundError):
            build_demo_corpus(tmp_path, ["it"], other_synth=True, **options)
        return
    report = build_demo_corpus(tmp_path, ["it"], other_synth=True, **options)
    festival = report["other_synth"]
    assert festival["folder"] == os.path.join(str(tmp_path), "other_synth")
    rows, _ = _read_test(tmp_path / "other_synth", "it_it")
    fleurs = other_synth.fleurs_sentences(str(tmp_path / "fleurs"), "it")
    train = other_synth.common_voice_sentences(
        str(tmp_path / "common_voice"), "it"
    )
    # The FLEURS test sentences, each once, none of them a training one.
    assert [row[2] for row in rows] == list(dict.fromkeys(fleurs))
    assert festival["rows"] == {"it": len(rows)} and len(rows) >= 1
    assert not {row[2] for row in rows} & set(train)
    with pytest.raises(ValueError, match="fleurs"):
        build_demo_corpus(
            tmp_path / "x",
            ["it"],
            formats=("common_voice",),
            other_synth=True,
            **options,
        )
