"""Tests of Common Voice preparation on tiny synthetic corpora."""

import csv
import json
import logging
import os

import pytest
from corpus_fixtures import (
    CV_EXPECTED,
    DE_TRAIN_DURATIONS,
    Clip,
    cv_row,
    standard_cv_corpus,
    write_cv_locale,
)

from speechbrain_lora_experts.data import common_voice as cv
from speechbrain_lora_experts.data.audio import load_audio
from speechbrain_lora_experts.data.common_voice import prepare_common_voice
from speechbrain_lora_experts.data.manifest import (
    CSV_COLUMNS,
    KeepUnknownVariables,
    PreparationError,
    load_report,
)

LANGS = ["de", "zh-CN", "sv"]


def read_csv(path):
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        return list(reader)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return standard_cv_corpus(tmp_path_factory.mktemp("cv"))


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
    save = str(tmp_path_factory.mktemp("cv_out"))
    paths = prepare_common_voice(corpus, save, LANGS)
    return save, paths


def small_locale(root, locale, n, schema="v17", prefix=None, **kw):
    prefix = prefix or locale
    rows = [
        cv_row(f"{prefix}_{i}.mp3", f"Satz {i}.", f"s{i % 2}", Clip(0.5))
        for i in range(n)
    ]
    splits = {"train": rows, "dev": rows[:1], "test": rows[1:2]}
    splits.update(kw)
    return write_cv_locale(root, locale, splits, schema)


def test_outputs_and_exact_counts(prepared):
    save, paths = prepared
    assert paths == {
        s: os.path.join(save, f"{s}.csv") for s in ("train", "dev", "test")
    }
    report = load_report(save)
    assert report["corpus"] == "common_voice"
    for lang, splits in CV_EXPECTED.items():
        for split, want in splits.items():
            got = report["languages"][lang][split]
            assert got["kept"] == want["kept"], (lang, split)
            assert got["skipped"] == want["skipped"], (lang, split)
            assert got["beyond_cap"] == 0
    rows = {s: read_csv(p) for s, p in paths.items()}
    for split in paths:
        want = sum(CV_EXPECTED[lang][split]["kept"] for lang in CV_EXPECTED)
        assert len(rows[split]) == want
        assert report["totals"][split]["kept"] == want
    assert [r["lang"] for r in rows["train"]] == ["de"] * 6 + ["zh"] * 3 + [
        "sv"
    ] * 2
    assert not [f for f in os.listdir(save) if f.startswith(".tmp")]


def test_row_contents(prepared, corpus):
    _, paths = prepared
    train = read_csv(paths["train"])
    de = [r for r in train if r["lang"] == "de"]
    assert [r["ID"] for r in de] == [
        "de_de_1",
        "de_de_2",
        "de_de_3",
        "de_de_4",
        "de_de_5",
        "de_de_6",
    ]
    for row, want in zip(de, DE_TRAIN_DURATIONS):
        assert float(row["duration"]) == pytest.approx(want, abs=0.01)
    assert de[0]["wav"] == os.path.join(corpus, "de", "clips", "de_1.mp3")
    assert all(
        os.path.isabs(r["wav"]) and os.path.isfile(r["wav"]) for r in train
    )
    # raw text: stripped, whitespace collapsed, quotes/casing kept
    assert de[1]["wrd"] == 'Er sagte: "Hallo" und ging.'
    assert de[3]["wrd"] == "Es kostet $5, sagt Müller."
    assert [r["spk_id"] for r in de] == ["a", "b", "c", "c", "d", "d"]
    zh = [r for r in train if r["lang"] == "zh"]
    assert zh[0]["ID"] == "zh_zh_0" and zh[0]["wrd"] == "你好，世界。"
    sv = [r for r in train if r["lang"] == "sv"]  # v13 schema
    assert [r["wrd"] for r in sv] == ["Hej på dig.", "Två små åsnor."]


def test_stereo_and_44k_clips_are_kept_and_load_as_mono_16k(prepared):
    _, paths = prepared
    rows = {r["ID"]: r for r in read_csv(paths["train"])}
    for utt, duration in (("de_de_2", 1.25), ("de_de_3", 0.5)):
        wav = load_audio(rows[utt]["wav"])
        assert wav.dim() == 1
        assert wav.shape[0] == pytest.approx(duration * 16000, abs=16)


def test_manifest_loads_in_speechbrain_pipeline(prepared):
    import speechbrain as sb

    _, paths = prepared
    data = sb.dataio.dataset.DynamicItemDataset.from_csv(
        paths["train"], replacements=KeepUnknownVariables()
    )

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav):
        return load_audio(wav)

    data.add_dynamic_item(audio_pipeline)
    data.set_output_keys(["id", "sig", "wrd", "lang", "duration"])
    items = {item["id"]: item for item in data}
    assert items["de_de_4"]["wrd"] == "Es kostet $5, sagt Müller."
    assert items["de_de_4"]["sig"].shape[0] == pytest.approx(32000, abs=16)
    assert isinstance(items["de_de_4"]["duration"], float)


def test_skips_are_logged_with_file_and_line(corpus, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        prepare_common_voice(corpus, str(tmp_path), LANGS)
    tsv = os.path.join(corpus, "de", "train.tsv")
    assert f"{tsv}:11 (malformed_row)" in caplog.text
    assert f"{tsv}:5 (zero_byte_clip)" in caplog.text
    assert "de/train: kept 6" in caplog.text
    assert "zero_byte_clip=1" in caplog.text


def test_report_accounts_for_every_row(prepared, corpus):
    save, _ = prepared
    report = load_report(save)
    for lang, locale in (("de", "de"), ("zh", "zh-CN"), ("sv", "sv-SE")):
        for split, got in report["languages"][lang].items():
            with open(os.path.join(corpus, locale, f"{split}.tsv")) as f:
                n_rows = sum(1 for line in f) - 1
            assert got["kept"] + got["skipped_total"] == n_rows


def test_max_duration_option(corpus, tmp_path):
    save = str(tmp_path)
    prepare_common_voice(corpus, save, ["de"], max_duration=1.3)
    got = load_report(save)["languages"]["de"]["train"]
    assert got["kept"] == 4  # 2.0 s and 1.5 s clips join the 31 s one
    assert got["skipped"]["too_long"] == 3


def test_min_duration_option(corpus, tmp_path):
    save = str(tmp_path)
    prepare_common_voice(corpus, save, ["de"], min_duration=0.6)
    got = load_report(save)["languages"]["de"]["train"]
    assert got["kept"] == 5 and got["skipped"]["too_short"] == 1


def test_caps_are_deterministic_prefixes(corpus, tmp_path):
    save = str(tmp_path / "a")
    paths = prepare_common_voice(corpus, save, LANGS, max_utterances=2)
    train = read_csv(paths["train"])
    ids = [r["ID"] for r in train]
    assert ids == [
        "de_de_1",
        "de_de_2",
        "zh_zh_0",
        "zh_zh_1",
        "sv_sv_1",
        "sv_sv_2",
    ]
    report = load_report(save)["languages"]
    assert report["de"]["train"]["beyond_cap"] == 14
    assert report["zh"]["train"]["beyond_cap"] == 1
    assert report["sv"]["train"]["beyond_cap"] == 0
    assert report["de"]["train"]["skipped"] == {}  # never examined
    again = prepare_common_voice(
        corpus, str(tmp_path / "b"), LANGS, max_utterances=2
    )
    assert read_csv(again["train"]) == train


def test_caps_per_language_and_split(corpus, tmp_path):
    save = str(tmp_path)
    caps = {"train": {"de": 3, "zh-CN": 1}, "test": 1}
    paths = prepare_common_voice(corpus, save, LANGS, max_utterances=caps)
    counts = {}
    for split, path in paths.items():
        for r in read_csv(path):
            counts[(r["lang"], split)] = counts.get((r["lang"], split), 0) + 1
    assert counts[("de", "train")] == 3
    assert counts[("zh", "train")] == 1
    assert counts[("sv", "train")] == 2  # not named: uncapped
    assert counts[("de", "test")] == 1 and counts[("de", "dev")] == 2


def test_max_hours_cap(corpus, tmp_path):
    save = str(tmp_path)
    # de train durations 1.0, 1.25, 0.5, 2.0 ...: 2.9 s fits the first 3
    paths = prepare_common_voice(
        corpus, save, ["de"], max_hours={"de": 2.9 / 3600}
    )
    de = read_csv(paths["train"])
    assert [r["ID"] for r in de] == ["de_de_1", "de_de_2", "de_de_3"]
    got = load_report(save)["languages"]["de"]["train"]
    assert got["hours"] == pytest.approx(2.75 / 3600, abs=1e-5)
    assert got["beyond_cap"] == 4  # de_4 (stops here), dup, de_5, de_6


def test_skip_if_done_and_rerun_on_changed_options(
    corpus, tmp_path, monkeypatch
):
    save = str(tmp_path)
    paths = prepare_common_voice(corpus, save, LANGS)
    stamp = os.stat(paths["train"]).st_mtime_ns

    def boom(*args, **kwargs):
        raise AssertionError("preparation re-ran")

    with monkeypatch.context() as m:
        m.setattr(cv, "collect_corpus", boom)
        assert (
            prepare_common_voice(corpus, save, ["de", "zh", "sv-SE"]) == paths
        )
        # skip_prep returns the paths without looking at the data at all
        assert (
            prepare_common_voice("/nonexistent", save, LANGS, skip_prep=True)
            == paths
        )
    assert os.stat(paths["train"]).st_mtime_ns == stamp
    prepare_common_voice(corpus, save, LANGS, max_utterances=1)
    assert len(read_csv(paths["train"])) == 3
    with open(os.path.join(save, "prepare_options.json")) as f:
        options = json.load(f)
    assert options["max_utterances"] == {"dev": 1, "test": 1, "train": 1}
    assert options["languages"] == {"de": "de", "zh": "zh-CN", "sv": "sv-SE"}


def test_id_collision_across_languages_is_impossible(tmp_path):
    root = str(tmp_path / "cv")
    small_locale(root, "de", 2, prefix="same")
    small_locale(root, "fr", 2, prefix="same")
    paths = prepare_common_voice(root, str(tmp_path / "out"), ["de", "fr"])
    ids = [r["ID"] for r in read_csv(paths["train"])]
    assert ids == ["de_same_0", "de_same_1", "fr_same_0", "fr_same_1"]


def test_locale_fallback_and_explicit_locale(tmp_path):
    root = str(tmp_path / "cv")
    small_locale(root, "zh-TW", 2)
    paths = prepare_common_voice(root, str(tmp_path / "a"), ["zh"])
    rows = read_csv(paths["train"])
    assert {r["lang"] for r in rows} == {"zh"}
    assert "zh-TW" in rows[0]["wav"]
    prepare_common_voice(root, str(tmp_path / "b"), ["zh-TW"])
    with pytest.raises(PreparationError, match="zh-CN.*present: zh-TW"):
        prepare_common_voice(root, str(tmp_path / "c"), ["zh-CN"])


def test_missing_language_lists_folders(tmp_path):
    root = str(tmp_path / "cv")
    small_locale(root, "de", 2)
    small_locale(root, "sv-SE", 2)
    with pytest.raises(PreparationError) as err:
        prepare_common_voice(root, str(tmp_path / "out"), ["de", "ja"])
    assert "'ja'" in str(err.value) and "present: de, sv-SE" in str(err.value)


def test_download_folder_hint(tmp_path):
    release = tmp_path / "dl" / "cv-corpus-17.0-2024-03-15"
    small_locale(str(release), "de", 2)
    with pytest.raises(
        PreparationError, match="cv-corpus-17.0-2024-03-15 instead"
    ):
        prepare_common_voice(str(tmp_path / "dl"), str(tmp_path / "o"), ["de"])


def test_same_language_twice_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="both mean 'zh'"):
        prepare_common_voice(
            str(tmp_path), str(tmp_path / "o"), ["zh", "zh-CN"]
        )


def test_unsupported_language(tmp_path):
    from speechbrain_lora_experts.languages import UnknownLanguageError

    with pytest.raises(UnknownLanguageError, match="Frisian"):
        prepare_common_voice(str(tmp_path), str(tmp_path / "o"), ["fy-NL"])


def test_missing_split_and_missing_columns(tmp_path):
    root = str(tmp_path / "cv")
    small_locale(root, "de", 2)
    with pytest.raises(
        PreparationError, match="no other.tsv.*present: dev.tsv"
    ):
        prepare_common_voice(
            root, str(tmp_path / "o"), ["de"], splits=["other"]
        )
    with open(os.path.join(root, "de", "dev.tsv"), "w") as f:
        f.write("client_id\tfile\tsentence\nx\ty.mp3\tz\n")
    with pytest.raises(PreparationError, match="lacks column.*path"):
        prepare_common_voice(root, str(tmp_path / "o"), ["de"])


def test_empty_train_is_an_error_empty_dev_a_warning(tmp_path, caplog):
    root = str(tmp_path / "cv")
    small_locale(root, "de", 2, dev=[])
    bad = [cv_row("x.mp3", "Hallo.", clip=Clip(kind="zero"))]
    small_locale(root, "fr", 2, train=bad)
    save = str(tmp_path / "o")
    with caplog.at_level(logging.WARNING):
        paths = prepare_common_voice(root, save, ["de"])
    assert "de/dev has no usable rows" in caplog.text
    assert read_csv(paths["dev"]) == []
    with pytest.raises(
        PreparationError, match=r"training rows for \['fr'\]"
    ) as e:
        prepare_common_voice(root, save, ["de", "fr"])
    assert "zero_byte_clip=1" in str(e.value)
    report = load_report(save)  # kept for diagnosis
    assert report["languages"]["fr"]["train"]["skipped"] == {
        "zero_byte_clip": 1
    }
    # the failed run must not leave old outputs marked as done
    assert not os.path.exists(os.path.join(save, "prepare_options.json"))
    # without the train split, empty dev/test only warn
    prepare_common_voice(root, str(tmp_path / "p"), ["fr"], splits=["test"])


def test_bad_cap_values(tmp_path):
    root = str(tmp_path / "cv")
    small_locale(root, "de", 2)
    for cap in (-1, "10", {"de": -2}, {"train": {"de": {"x": 1}}}):
        with pytest.raises(ValueError):
            prepare_common_voice(
                root, str(tmp_path / "o"), ["de"], max_utterances=cap
            )


def test_invalid_utf8_names_file_and_line(tmp_path):
    root = str(tmp_path / "cv")
    small_locale(root, "de", 2)
    with open(os.path.join(root, "de", "train.tsv"), "ab") as f:
        f.write(b"x\tde_0.mp3\t\xff\xfe broken\n")
    with pytest.raises(PreparationError, match=r"train.tsv:\d+ is not valid"):
        prepare_common_voice(root, str(tmp_path / "o"), "de", splits="train")
