"""One test per fault of issue 13; each fails on the code before the fix.

The numbers are the issue's: 1 changed corpus, 2 interrupted quickstart,
3 corrupt mp3 body, 4 truncated mp3, 6 missing Whisper folder, 7 expert on
another base, 9 non-UTF-8 line, 10 punctuation-only text and NaN audio,
plus language codes and names. 5 (checkpoints) is in
``test_kill_during_save.py``.
"""

import csv
import logging
import os
import random
import subprocess

import pytest
from corpus_fixtures import Clip, cv_row, write_cv_locale

from speechbrain_lora_experts import quickstart
from speechbrain_lora_experts.data.audio import AudioError, load_audio
from speechbrain_lora_experts.data.common_voice import (
    PreparationError,
    prepare_common_voice,
)
from speechbrain_lora_experts.data.manifest import load_report


def corpus(root, train, name="cv"):
    data = str(root / name)
    write_cv_locale(
        data,
        "de",
        {
            "train": train,
            "dev": [cv_row("de_d.mp3", "Hallo Welt.", "e")],
            "test": [cv_row("de_t.mp3", "Test eins.", "f")],
        },
    )
    return data


def valid_rows(n, start=0):
    return [
        cv_row(f"de_{i}.mp3", f"Satz Nummer {i}.", "s", Clip(1.0, seed=i))
        for i in range(start, start + n)
    ]


def manifest(path):
    with open(path, encoding="utf-8", newline="") as f:
        return {r["ID"]: r["wrd"] for r in csv.DictReader(f)}


def train_report(save):
    return load_report(save)["languages"]["de"]["train"]


# 1 ---------------------------------------------------------------------
def test_01_changed_corpus_is_prepared_again(tmp_path, caplog):
    gone = cv_row("de_gone.mp3", "Fehlt noch.", "s", Clip(kind="missing"))
    data = corpus(tmp_path, valid_rows(2) + [gone])
    save = str(tmp_path / "out")
    paths = prepare_common_voice(data, save, ["de"])
    assert train_report(save)["skipped"] == {"missing_clip": 1}

    with caplog.at_level(logging.INFO):
        prepare_common_voice(data, save, ["de"])
    assert "up to date" in caplog.text

    # The skipped clip is restored: it must now be used.
    clips = os.path.join(data, "de", "clips")
    os.link(os.path.join(clips, "de_0.mp3"), os.path.join(clips, "de_gone.mp3"))
    caplog.clear()
    with caplog.at_level(logging.INFO):
        prepare_common_voice(data, save, ["de"])
    assert "de_gone.mp3 (skipped as missing_clip) changed" in caplog.text
    assert "de_de_gone" in manifest(paths["train"])

    # Rows added to the TSV.
    tsv = os.path.join(data, "de", "train.tsv")
    with open(tsv, encoding="utf-8") as f:
        header_and_rows = f.read()
    with open(tsv, "a", encoding="utf-8") as f:
        f.write(header_and_rows.splitlines()[1].replace("de_0", "de_0b") + "\n")
    os.link(os.path.join(clips, "de_1.mp3"), os.path.join(clips, "de_0b.mp3"))
    prepare_common_voice(data, save, ["de"])
    assert "de_de_0b" in manifest(paths["train"])

    # An edit that keeps the size and the modification time: the hash sees it.
    stat = os.stat(tsv)
    text = open(tsv, encoding="utf-8").read()
    with open(tsv, "w", encoding="utf-8") as f:
        f.write(text.replace("Satz Nummer 1.", "Satz Nummer 7."))
    os.utime(tsv, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(tsv).st_size == stat.st_size
    prepare_common_voice(data, save, ["de"])
    assert manifest(paths["train"])["de_de_1"] == "Satz Nummer 7."

    # A kept clip replaced by a broken one after preparation.
    with open(os.path.join(clips, "de_0.mp3"), "r+b") as f:
        f.seek(1024)
        f.write(random.Random(13).randbytes(4096))
    prepare_common_voice(data, save, ["de"])
    # Garbage in an mp3 body either stops the decoder (corrupt) or ends the
    # decoded audio early (truncated): both are counted skips, never kept.
    ((reason, count),) = train_report(save)["skipped"].items()
    assert reason in ("corrupt_clip", "truncated_clip") and count == 2
    assert "de_de_0" not in manifest(paths["train"])


# 2 ---------------------------------------------------------------------
def _fast_quickstart(monkeypatch, build):
    """Quickstart with a stub corpus builder, Whisper and recipe runs."""
    import speechbrain_lora_experts.data.demo as demo
    import speechbrain_lora_experts.testing.tiny_whisper as tiny

    monkeypatch.setattr(demo, "build_demo_corpus", build)
    monkeypatch.setattr(tiny, "make_tiny_whisper", lambda path: path)
    monkeypatch.setattr(quickstart, "run_recipe", lambda *a, **k: None)
    row = {"metric": "WER", "error_rate": 50.0}
    metrics = {"per_language": {"de": row, "es": row}, "macro": 50.0}
    monkeypatch.setattr(quickstart, "load_metrics", lambda folder: metrics)


def test_02_interrupted_quickstart_build_is_redone(
    tmp_path, monkeypatch, capsys
):
    def interrupted(path, *args, **kwargs):
        os.makedirs(os.path.join(path, "common_voice", "de"))
        raise KeyboardInterrupt  # Ctrl-C during the build

    _fast_quickstart(monkeypatch, interrupted)
    assert quickstart.cli([f"--out={tmp_path}"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [quickstart.INTERRUPTED]
    assert not (tmp_path / "corpus").exists()

    built = []

    def complete(path, *args, **kwargs):
        built.append(sorted(os.listdir(path)))  # nothing left over
        for lang in ("de", "es"):
            os.makedirs(os.path.join(path, "common_voice", lang))

    _fast_quickstart(monkeypatch, complete)
    assert quickstart.cli([f"--out={tmp_path}"]) == 0
    assert built == [[]]
    assert sorted(os.listdir(tmp_path / "corpus" / "common_voice")) == [
        "de",
        "es",
    ]
    assert "| fusion_gate |" in capsys.readouterr().out
    # A finished corpus is reused.
    assert quickstart.cli([f"--out={tmp_path}"]) == 0
    assert len(built) == 1


FAILING_TRAIN = """
import sys
for i in range(40):
    print("progress line", i)
print("PreparationError: Common Voice folder", sys.argv[-3].split("=")[1],
      "does not exist.", file=sys.stderr)
sys.exit(1)
"""


def test_02_failed_step_shows_its_last_lines_and_log(
    tmp_path, monkeypatch, capsys
):
    from speechbrain_lora_experts import recipe_runner
    from speechbrain_lora_experts.recipe_runner import (
        RecipeRunError,
        run_recipe,
    )

    # A stand-in train.py that fails as a run without its corpus does.
    (tmp_path / "recipe").mkdir()
    (tmp_path / "recipe" / "train.py").write_text(FAILING_TRAIN)
    monkeypatch.setattr(
        recipe_runner, "recipe_folder", lambda: str(tmp_path / "recipe")
    )
    log_path = tmp_path / "runs.log"
    with open(log_path, "a") as log:
        log.write("an earlier run's output\n")
        with pytest.raises(RecipeRunError) as caught:
            run_recipe(
                "expert.yaml",
                dict(
                    output_folder=str(tmp_path / "run"),
                    data_folder=str(tmp_path / "no_corpus"),
                ),
                log=log,
            )
    message = str(caught.value)
    # The cause, from this run's output only, and where the rest is.
    assert "no_corpus does not exist" in message
    assert "progress line 39" in message and "progress line 20" not in message
    assert "earlier run" not in message
    assert message.endswith(f"Full output: {log_path}")
    assert caught.value.returncode == 1
    assert isinstance(caught.value, subprocess.CalledProcessError)

    def failing(*args, **kwargs):
        raise caught.value

    _fast_quickstart(monkeypatch, lambda path, *a, **k: None)
    monkeypatch.setattr(quickstart, "run_recipe", failing)
    assert quickstart.cli([f"--out={tmp_path / 'qs'}"]) == 1
    err = capsys.readouterr().err
    assert "no_corpus does not exist" in err and "Traceback" not in err


# 3, 4, 10 ----------------------------------------------------------------
def test_03_corrupt_mp3_body_is_skipped_at_preparation(tmp_path):
    bad = cv_row("de_b.mp3", "Kaputt.", "s", Clip(2.0, kind="corrupt_body"))
    data = corpus(tmp_path, valid_rows(2) + [bad])
    save = str(tmp_path / "out")
    paths = prepare_common_voice(data, save, ["de"])
    assert train_report(save)["skipped"] == {"corrupt_clip": 1}
    assert sorted(manifest(paths["train"])) == ["de_de_0", "de_de_1"]


def test_04_truncated_mp3_and_implausible_rate_are_skipped(tmp_path):
    cut = cv_row(
        "de_cut.mp3", "Ein ganzer Satz.", "s", Clip(3.64, kind="truncated")
    )
    fast = cv_row("de_fast.mp3", "Viel zu viel Text " * 3, "s", Clip(0.5))
    data = corpus(tmp_path, valid_rows(2) + [cut, fast])
    save = str(tmp_path / "out")
    prepare_common_voice(data, save, ["de"])
    assert train_report(save)["skipped"] == {
        "implausible_speaking_rate": 1,
        "truncated_clip": 1,
    }
    # The check can be switched off (e.g. for a corpus of spelled letters).
    prepare_common_voice(data, save, ["de"], max_chars_per_second=None)
    assert train_report(save)["skipped"] == {"truncated_clip": 1}


def test_03_04_10_bad_audio_is_refused_at_load_too(tmp_path):
    from corpus_fixtures import write_clip

    for kind, reason in (
        ("corrupt_body", "corrupt_clip"),
        ("truncated", "truncated_clip"),
        ("nan", "non_finite_audio"),
    ):
        path = str(tmp_path / f"{kind}.mp3")
        write_clip(path, Clip(3.0, kind=kind), "MP3")
        with pytest.raises(AudioError) as err:
            load_audio(path)
        assert err.value.reason == reason
        assert path in str(err.value) and "re-run data preparation" in str(
            err.value
        )


def test_10_punctuation_only_and_nan_rows_are_skipped(tmp_path):
    dots = cv_row("de_dots.mp3", "... ?!", "s")
    nan = cv_row("de_nan.wav", "Keine Zahlen.", "s", Clip(kind="nan"))
    data = corpus(tmp_path, valid_rows(2) + [dots, nan])
    save = str(tmp_path / "out")
    paths = prepare_common_voice(data, save, ["de"])
    assert train_report(save)["skipped"] == {
        "empty_after_normalization": 1,
        "non_finite_audio": 1,
    }
    assert sorted(manifest(paths["train"])) == ["de_de_0", "de_de_1"]


def test_10_punctuation_only_reference_is_not_scored():
    from speechbrain_lora_experts.metrics import MultilingualScorer

    scorer = MultilingualScorer()
    scorer.append(
        ids=["a", "b", "c"],
        languages=["de", "de", "zh"],
        hypotheses=["Guten Morgen", "Hallo", "你好"],
        references=["Guten Abend!", "...", "。！"],
    )
    summary = scorer.summary()
    assert summary["skipped_empty_references"] == {"de": 1, "zh": 1}
    assert summary["per_language"]["de"]["n_utts"] == 1
    assert summary["per_language"]["de"]["error_rate"] == 50.0
    assert "zh" not in summary["per_language"]
    assert summary["macro"] == 50.0


# 6 ---------------------------------------------------------------------
def test_06_missing_whisper_folder_names_the_option(tmp_path):
    from speechbrain_lora_experts.whisper import Whisper

    (tmp_path / "models" / "whisper-base").mkdir(parents=True)
    typo = str(tmp_path / "models" / "whisper-bsae")
    with pytest.raises(FileNotFoundError) as err:
        Whisper(typo, str(tmp_path / "save"))
    message = str(err.value)
    assert f"Whisper folder {typo} does not exist" in message
    assert "similar names" in message and "whisper-base" in message
    assert "whisper_hub" in message
    assert 'overrides={"whisper_hub"' in message
    moved = str(tmp_path / "gone" / "whisper-base")
    with pytest.raises(FileNotFoundError, match="parent folder .* either"):
        Whisper(moved, str(tmp_path / "save"))


# 7 ---------------------------------------------------------------------
def test_07_expert_on_other_base_weights_is_refused(
    tiny_whisper_dir, tmp_path, caplog
):
    from speechbrain_lora_experts.attach import WhisperLoRAExperts
    from speechbrain_lora_experts.peft_io import (
        AdapterError,
        attach_from_adapters,
        save_expert,
    )
    from speechbrain_lora_experts.testing import tiny_whisper
    from speechbrain_lora_experts.whisper import Whisper

    trained_on = Whisper(tiny_whisper_dir, str(tmp_path / "s"))
    experts = WhisperLoRAExperts(
        trained_on, expert_names=["de"], rank=2, targets=["fc1"]
    )
    folder = save_expert(experts, "de", tmp_path / "de", tiny_whisper_dir)

    # Same architecture, other weights: loaded silently before the fix.
    other_dir = tiny_whisper.make_tiny_whisper(tmp_path / "other", seed=1)
    with pytest.raises(AdapterError, match="other base weights") as err:
        attach_from_adapters(Whisper(other_dir, str(tmp_path / "s")), [folder])
    assert "strict=False" in str(err.value)
    assert str(tmp_path / "de") in str(err.value)

    with caplog.at_level(logging.WARNING):
        pool = attach_from_adapters(
            Whisper(other_dir, str(tmp_path / "s")), [folder], strict=False
        )
    assert pool.expert_names == ["de"]
    assert "other base weights" in caplog.text
    # Its own base loads it without a word.
    same = attach_from_adapters(
        Whisper(tiny_whisper_dir, str(tmp_path / "s")), [folder]
    )
    assert same.expert_names == ["de"]


# 9 ---------------------------------------------------------------------
@pytest.mark.parametrize("rows, bad_line", [(3, 4), (999, 701)])
def test_09_non_utf8_error_names_the_bad_line(tmp_path, rows, bad_line):
    data = corpus(tmp_path, valid_rows(1))
    tsv = os.path.join(data, "de", "train.tsv")
    with open(tsv, "rb") as f:
        header, row = f.read().splitlines()[:2]
    lines = [header] + [row.replace(b"de_0", b"de_%d" % i) for i in range(rows)]
    lines[bad_line - 1] = lines[bad_line - 1].replace(b"Satz", b"S\xe4tz")
    with open(tsv, "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
    with pytest.raises(PreparationError) as err:
        prepare_common_voice(data, str(tmp_path / "o"), ["de"], splits="train")
    assert f"{tsv}:{bad_line} is not valid UTF-8" in str(err.value)


# languages -----------------------------------------------------------------
def test_language_codes_and_names(tmp_path):
    from speechbrain_lora_experts.languages import (
        UnknownLanguageError,
        canonical_language,
    )

    for name, code in (
        ("deu", "de"),
        ("ger", "de"),
        ("Deutsch", "de"),
        ("German", "de"),
        ("español", "es"),
        ("Espanol", "es"),
        ("spa", "es"),
        ("fre", "fr"),
        ("Français", "fr"),
        ("中文", "zh"),
        ("zho", "zh"),
        ("日本語", "ja"),
        ("Tiếng Việt", "vi"),
        ("nld", "nl"),
        ("Nederlands", "nl"),
        ("deu-DE", "de"),
    ):
        assert canonical_language(name) == code, name
    for unknown in ("klingon", "xyz", "Deutschland"):
        with pytest.raises(UnknownLanguageError, match="Unknown language"):
            canonical_language(unknown)
    # The preparers take them too.
    data = corpus(tmp_path, valid_rows(1))
    paths = prepare_common_voice(data, str(tmp_path / "o"), ["Deutsch"])
    assert list(manifest(paths["train"])) == ["de_de_0"]
