"""Tests of FLEURS preparation and safe archive extraction."""

import csv
import os
import tarfile

import pytest
from corpus_fixtures import (
    FLEURS_EXPECTED,
    fleurs_row,
    malicious_tar,
    standard_fleurs_corpus,
    write_fleurs_language,
)

from speechbrain_lora_experts.data import fleurs
from speechbrain_lora_experts.data.audio import load_audio
from speechbrain_lora_experts.data.fleurs import (
    UnsafeArchiveError,
    extract_archive,
    prepare_fleurs,
)
from speechbrain_lora_experts.data.manifest import (
    CSV_COLUMNS,
    PreparationError,
    load_report,
)
from speechbrain_lora_experts.languages import UnknownLanguageError


def read_csv(path):
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        return list(reader)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return standard_fleurs_corpus(tmp_path_factory.mktemp("fleurs"))


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
    save = str(tmp_path_factory.mktemp("fleurs_out"))
    return save, prepare_fleurs(corpus, save, ["de", "cmn_hans_cn"])


def test_exact_counts_and_report(prepared):
    save, paths = prepared
    report = load_report(save)
    assert report["corpus"] == "fleurs"
    for lang, splits in FLEURS_EXPECTED.items():
        for split, want in splits.items():
            got = report["languages"][lang][split]
            assert (got["kept"], got["skipped"]) == (
                want["kept"],
                want["skipped"],
            ), (lang, split)
    for split, path in paths.items():
        want = sum(
            FLEURS_EXPECTED[lang][split]["kept"] for lang in ("de", "zh")
        )
        assert len(read_csv(path)) == want


def test_rows(prepared):
    save, paths = prepared
    train = read_csv(paths["train"])
    assert [r["ID"] for r in train] == [
        "de_fleurs_1001",
        "de_fleurs_1002",
        "de_fleurs_1006",
        "zh_fleurs_5001",
        "zh_fleurs_5002",
    ]
    first = train[0]
    assert first["wrd"] == "Der Hund bellt."  # raw transcription, collapsed
    assert train[2]["wrd"] == '"Zitat" am Anfang.'
    assert train[4]["wrd"] == "“引用”在开头。"
    assert float(first["duration"]) == pytest.approx(1.5, abs=0.01)
    assert first["wav"] == os.path.join(
        save, "fleurs_audio", "de_de", "train", "1001.wav"
    )
    assert [r["lang"] for r in train] == ["de"] * 3 + ["zh"] * 2
    assert first["spk_id"] == "de_fleurs_1001"
    # repeated sentence ids (two recordings of one sentence) are both kept
    test = read_csv(paths["test"])
    assert [r["ID"] for r in test][:2] == ["de_fleurs_3001", "de_fleurs_3002"]
    assert float(test[0]["duration"]) == pytest.approx(0.75, abs=0.01)
    assert load_audio(first["wav"]).shape[0] == 24000


def test_csv_prefix_for_out_of_domain_test(corpus, tmp_path):
    save = str(tmp_path)
    open(os.path.join(save, "test.csv"), "w").write("ID\n")  # e.g. from CV
    paths = prepare_fleurs(
        corpus, save, ["de"], splits=["test"], csv_prefix="fleurs_"
    )
    assert paths == {"test": os.path.join(save, "fleurs_test.csv")}
    assert len(read_csv(paths["test"])) == 2
    assert open(os.path.join(save, "test.csv")).read() == "ID\n"
    assert os.path.isfile(os.path.join(save, "fleurs_prepare_report.json"))
    assert os.path.isfile(os.path.join(save, "fleurs_prepare_options.json"))
    # only the requested split was extracted
    extracted = sorted(os.listdir(os.path.join(save, "fleurs_audio", "de_de")))
    assert extracted == [".test.extracted.json", "test"]


def test_caps(corpus, tmp_path):
    save = str(tmp_path)
    paths = prepare_fleurs(
        corpus, save, ["de", "zh"], max_utterances={"zh": 1}, splits=["train"]
    )
    ids = [r["ID"] for r in read_csv(paths["train"])]
    assert ids == [
        "de_fleurs_1001",
        "de_fleurs_1002",
        "de_fleurs_1006",
        "zh_fleurs_5001",
    ]
    assert load_report(save)["languages"]["zh"]["train"]["beyond_cap"] == 1


def test_skip_if_done_and_no_reextraction(corpus, tmp_path, monkeypatch):
    save = str(tmp_path)
    paths = prepare_fleurs(corpus, save, ["de"], splits=["dev"])

    def boom(*args, **kwargs):
        raise AssertionError("re-ran")

    with monkeypatch.context() as m:
        m.setattr(fleurs, "collect_corpus", boom)
        assert prepare_fleurs(corpus, save, ["de_de"], splits=["dev"]) == paths
    # changed options: manifests rebuilt, archive not extracted again
    with monkeypatch.context() as m:
        m.setattr(fleurs, "_extract_members", boom)
        prepare_fleurs(corpus, save, ["de"], splits=["dev"], max_duration=20)
    assert load_report(save)["languages"]["de"]["dev"]["kept"] == 1


def test_extraction_marker_tracks_the_archive(tmp_path):
    tar = str(tmp_path / "a.tar.gz")
    with tarfile.open(tar, "w:gz") as t:
        t.add(__file__, arcname="test/a.txt")
    dest = str(tmp_path / "out")
    extract_archive(tar, dest)
    target = os.path.join(dest, "test", "a.txt")
    os.remove(target)
    extract_archive(tar, dest)  # marker matches: nothing extracted
    assert not os.path.exists(target)
    os.utime(tar, ns=(1, 1))  # archive changed: extract again
    extract_archive(tar, dest)
    assert os.path.isfile(target)


@pytest.mark.parametrize(
    "kind", ["dotdot", "absolute", "nested", "symlink", "hardlink"]
)
def test_unsafe_archive_members_are_rejected(tmp_path, kind):
    tar = malicious_tar(str(tmp_path / "evil.tar.gz"), kind)
    dest = tmp_path / "sandbox" / "out"
    with pytest.raises(UnsafeArchiveError) as err:
        extract_archive(tar, str(dest))
    msg = str(err.value)
    assert tar in msg and "evil.wav" in msg and "download it again" in msg
    assert not (tmp_path / "sandbox" / "evil.wav").exists()
    assert not (dest / "test" / "ok.wav").exists()  # nothing written


def test_unsafe_archive_stops_preparation(tmp_path):
    root = str(tmp_path / "fl")
    write_fleurs_language(
        root, "de_de", {"test": [fleurs_row(1, "ok.wav", "Ja.")]}
    )
    tar = os.path.join(root, "data", "de_de", "audio", "test.tar.gz")
    malicious_tar(tar, "dotdot")
    with pytest.raises(UnsafeArchiveError, match=r"'\.\./evil\.wav'"):
        prepare_fleurs(root, str(tmp_path / "o"), ["de"], splits=["test"])


def test_corrupt_archive(tmp_path):
    root = str(tmp_path / "fl")
    write_fleurs_language(
        root, "de_de", {"test": [fleurs_row(1, "ok.wav", "Ja.")]}
    )
    tar = os.path.join(root, "data", "de_de", "audio", "test.tar.gz")
    with open(tar, "wb") as f:
        f.write(b"\x1f\x8b not really gzip")
    with pytest.raises(PreparationError, match="Cannot read .*test.tar.gz"):
        prepare_fleurs(root, str(tmp_path / "o"), ["de"], splits=["test"])


def test_unsafe_file_name_in_tsv_is_skipped(tmp_path):
    root = str(tmp_path / "fl")
    rows = [
        fleurs_row(1, "ok.wav", "Ja."),
        fleurs_row(2, "../x.wav", "Nein.", in_tar=False),
    ]
    write_fleurs_language(root, "de_de", {"test": rows})
    save = str(tmp_path / "o")
    prepare_fleurs(root, save, ["de"], splits=["test"])
    got = load_report(save)["languages"]["de"]["test"]
    assert (got["kept"], got["skipped"]) == (1, {"unsafe_path": 1})


def test_missing_language_and_files(corpus, tmp_path):
    with pytest.raises(
        PreparationError, match="'fr_fr'.*present: cmn_hans_cn, de_de"
    ):
        prepare_fleurs(corpus, str(tmp_path), ["fr"])
    with pytest.raises(UnknownLanguageError, match="FLEURS has no"):
        prepare_fleurs(corpus, str(tmp_path), ["la"])
    root = str(tmp_path / "fl")
    write_fleurs_language(
        root, "de_de", {"test": [fleurs_row(1, "a.wav", "Ja.")]}
    )
    with pytest.raises(
        PreparationError, match="lacks train.tsv, audio/train.tar.gz"
    ):
        prepare_fleurs(
            root, str(tmp_path / "o"), ["de"], splits=["train", "test"]
        )


def test_data_folder_may_be_the_data_dir(corpus, tmp_path):
    paths = prepare_fleurs(
        os.path.join(corpus, "data"), str(tmp_path), ["zh"], splits=["dev"]
    )
    assert [r["ID"] for r in read_csv(paths["dev"])] == ["zh_fleurs_6001"]
