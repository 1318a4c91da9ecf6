"""Tests of the offline demo corpus builder (Common Voice + FLEURS layouts).

Authors
 * speechbrain-lora-experts developers 2026
"""

import csv
import io
import os
import shutil
import tarfile

import pytest
import soundfile as sf

from speechbrain_lora_experts.data import demo

pytestmark = pytest.mark.skipif(
    shutil.which("espeak-ng") is None,
    reason="needs espeak-ng (apt-get install espeak-ng)",
)

LANGUAGES = ["de", "zh"]
LOCALES = {"de": "de", "zh": "zh-CN"}
CODES = {"de": "de_de", "zh": "cmn_hans_cn"}
PER_SPLIT = (3, 1, 1)
N_WARTS = 3


def _build(path, seed=0, **kwargs):
    options = dict(per_split=PER_SPLIT, warts=True, progress=False)
    options.update(kwargs)
    return demo.build_demo_corpus(path, LANGUAGES, seed=seed, **options)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A tiny corpus built once: (root, report)."""
    root = tmp_path_factory.mktemp("demo_corpus")
    return root, _build(root)


def _read_tsv(path, header=True):
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return (rows[0], rows[1:]) if header else rows


def _tsv_bytes(root):
    """Every TSV under root, relative path -> bytes."""
    out = {}
    for base, _, files in os.walk(root):
        for name in files:
            if name.endswith(".tsv"):
                path = os.path.join(base, name)
                with open(path, "rb") as f:
                    out[os.path.relpath(path, root)] = f.read()
    return out


@pytest.mark.parametrize("lang", LANGUAGES)
def test_common_voice_layout(corpus, lang):
    root, report = corpus
    folder = root / "common_voice" / LOCALES[lang]
    assert report["common_voice"][lang]["locale"] == LOCALES[lang]
    assert sorted(os.listdir(folder)) == [
        "clip_durations.tsv",
        "clips",
        "dev.tsv",
        "test.tsv",
        "train.tsv",
        "validated.tsv",
    ]
    tables = {}
    for split in ("train", "dev", "test", "validated"):
        header, rows = _read_tsv(folder / f"{split}.tsv")
        assert header == demo.CV_HEADERS["v17"]
        assert all(len(row) == len(header) for row in rows)
        tables[split] = [dict(zip(header, row)) for row in rows]
    n_train, n_dev, n_test = PER_SPLIT
    assert len(tables["train"]) == n_train + N_WARTS
    assert (len(tables["dev"]), len(tables["test"])) == (n_dev, n_test)
    split_rows = tables["train"] + tables["dev"] + tables["test"]
    assert tables["validated"] == split_rows
    assert report["common_voice"][lang]["rows"] == {
        "train": n_train + N_WARTS,
        "dev": n_dev,
        "test": n_test,
        "validated": len(split_rows),
    }
    assert sorted(os.listdir(folder / "clips")) == sorted(
        row["path"] for row in split_rows
    )
    for row in split_rows:
        assert row["path"].startswith(f"common_voice_{LOCALES[lang]}_")
        assert row["locale"] == LOCALES[lang]
        assert len(row["client_id"]) == 128
        assert row["sentence"].strip() and "\t" not in row["sentence"]
        assert row["gender"] in ("male_masculine", "female_feminine", "")
    # speaker- and sentence-disjoint splits
    speakers = {s: {r["client_id"] for r in tables[s]} for s in tables}
    sentences = {s: {r["sentence"] for r in tables[s]} for s in tables}
    for a, b in [("train", "dev"), ("train", "test"), ("dev", "test")]:
        assert not speakers[a] & speakers[b]
        assert not sentences[a] & sentences[b]
    _, durations = _read_tsv(folder / "clip_durations.tsv")
    assert sorted(p for p, _ in durations) == sorted(
        os.listdir(folder / "clips")
    )


@pytest.mark.parametrize("lang", LANGUAGES)
def test_common_voice_audio_and_warts(corpus, lang):
    root, _ = corpus
    folder = root / "common_voice" / LOCALES[lang]
    header, rows = _read_tsv(folder / "train.tsv")
    train = [row[header.index("path")] for row in rows]
    kinds = []
    for name in os.listdir(folder / "clips"):
        path = folder / "clips" / name
        if path.stat().st_size == 0:
            kinds.append((name, "zero-byte"))
            continue
        info = sf.info(str(path))
        assert info.format == "MP3"
        assert 0.5 < info.duration < 30
        if info.samplerate == 44100:
            assert info.channels == 1
            kinds.append((name, "44.1 kHz"))
        elif info.channels == 2:
            assert info.samplerate == 48000
            kinds.append((name, "stereo"))
        else:
            assert (info.samplerate, info.channels) == (48000, 1)
            audio, _ = sf.read(str(path))
            assert 0.01 < abs(audio).max() <= 1.0
    warts = sorted(kind for _, kind in kinds)
    assert warts == ["44.1 kHz", "stereo", "zero-byte"]
    assert all(name in train for name, _ in kinds)


@pytest.mark.parametrize("lang", LANGUAGES)
def test_fleurs_layout_and_audio(corpus, lang):
    root, report = corpus
    folder = root / "fleurs" / "data" / CODES[lang]
    assert report["fleurs"][lang]["code"] == CODES[lang]
    assert sorted(os.listdir(folder)) == [
        "audio",
        "dev.tsv",
        "test.tsv",
        "train.tsv",
    ]
    assert sorted(os.listdir(folder / "audio")) == [
        "dev.tar.gz",
        "test.tar.gz",
        "train.tar.gz",
    ]
    _, cv_rows = _read_tsv(
        root / "common_voice" / LOCALES[lang] / "validated.tsv"
    )
    cv_sentences = {row[3] for row in cv_rows}
    for split, n in zip(("train", "dev", "test"), PER_SPLIT):
        rows = _read_tsv(folder / f"{split}.tsv", header=False)
        assert len(rows) == n  # no header line
        with tarfile.open(folder / "audio" / f"{split}.tar.gz") as tar:
            members = {
                m.name: tar.extractfile(m).read() for m in tar.getmembers()
            }
        assert sorted(members) == sorted(f"{split}/{row[1]}" for row in rows)
        for row in rows:
            assert len(row) == 7
            sid, name, raw, norm, chars, num_samples, gender = row
            assert sid.isdigit() and name.endswith(".wav")
            assert raw not in cv_sentences  # out-of-domain text
            assert norm == demo.fleurs_transcription(raw)
            assert norm == norm.lower() and not set(norm) & set(",.!?。，")
            assert chars.endswith("|")
            assert chars.replace(" ", "").replace("|", "") == norm.replace(
                " ", ""
            )
            assert gender in ("MALE", "FEMALE")
            audio, rate = sf.read(io.BytesIO(members[f"{split}/{name}"]))
            assert rate == 16000 and audio.ndim == 1
            assert len(audio) == int(num_samples)
            assert 0.5 < len(audio) / rate < 30


def test_same_seed_same_corpus_other_seed_differs(corpus, tmp_path):
    root, report = corpus
    again = _build(tmp_path / "again")
    assert _tsv_bytes(tmp_path / "again") == _tsv_bytes(root)
    for lang in LANGUAGES:
        for split in ("train", "dev", "test"):
            archive = os.path.join("fleurs", "data", CODES[lang], "audio")
            archive = os.path.join(archive, f"{split}.tar.gz")
            with open(root / archive, "rb") as a:
                with open(tmp_path / "again" / archive, "rb") as b:
                    assert a.read() == b.read()
    assert again["clips"] == report["clips"]
    _build(tmp_path / "other", seed=1)
    other = _tsv_bytes(tmp_path / "other")
    mine = _tsv_bytes(root)
    assert other.keys() == mine.keys()
    assert all(other[k] != mine[k] for k in other)


@pytest.mark.parametrize("schema", ["v13", "v10"])
def test_older_common_voice_schemas(tmp_path, schema):
    report = demo.build_demo_corpus(
        tmp_path,
        ["de"],
        per_split=(1, 1, 1),
        formats=("common_voice",),
        cv_schema=schema,
        progress=False,
    )
    assert report["fleurs"] == {}
    assert not (tmp_path / "fleurs").exists()
    folder = tmp_path / "common_voice" / "de"
    header, rows = _read_tsv(folder / "train.tsv")
    columns = (
        "client_id path sentence up_votes down_votes age gender accents "
        "locale segment"
    ).split()
    if schema == "v13":  # 13.0 added "variant" before "locale"
        columns.insert(columns.index("locale"), "variant")
    assert header == columns
    assert len(rows) == 1
    assert rows[0][header.index("gender")] in ("male", "female", "")
    assert (folder / "clip_durations.tsv").exists() == (schema == "v13")


def test_reuse_warns_when_sentences_run_out(tmp_path, monkeypatch):
    few = dict(list(demo.catalog_sentences("de").items())[:4])
    monkeypatch.setattr(demo, "catalog_sentences", lambda lang: few)
    with pytest.warns(UserWarning, match="reused"):
        report = demo.build_demo_corpus(
            tmp_path,
            ["de"],
            per_split=(4, 1, 1),
            formats=("common_voice",),
            progress=False,
        )
    assert report["warnings"]
    _, rows = _read_tsv(tmp_path / "common_voice" / "de" / "train.tsv")
    pairs = [(row[0], row[3]) for row in rows]  # (speaker, sentence)
    assert len(rows) == 4 and len(set(pairs)) == 4


def test_missing_espeak_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(demo.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install espeak-ng"):
        demo.build_demo_corpus(tmp_path, ["de"], progress=False)


def test_parse_po_and_filters():
    po = "\n".join(
        [
            "#, fuzzy",
            'msgid "Old"',
            'msgstr "Alt"',
            "",
            'msgctxt "ctx"',
            'msgid ""',
            '"Two "',
            '"lines"',
            'msgstr "Zwei \\"Zeilen\\""',
            'msgid "one file"',
            'msgid_plural "%(n)s files"',
            'msgstr[0] "eine Datei"',
            'msgstr[1] "%(n)s Dateien"',
            '#~ msgid "obsolete"',
        ]
    )
    entries = demo.parse_po(po)
    assert [e["msgid"] for e in entries] == ["Old", "Two lines", "one file"]
    assert entries[0]["fuzzy"] and not entries[1]["fuzzy"]
    assert entries[1]["msgctxt"] == "ctx"
    assert entries[1]["msgstr"] == 'Zwei "Zeilen"'
    assert entries[2]["msgstr[1]"] == "%(n)s Dateien"
    assert not demo.is_speakable("Enter {value} here, please.")
    assert not demo.is_speakable("Click <b>here</b> to continue now.")
    assert not demo.is_speakable("Ja bitte.")
    assert not demo.is_speakable("有效的值。", cer=True, latin=False)
    assert demo.is_speakable("输入一个有效的域名。", cer=True, latin=False)


@pytest.mark.parametrize("value", ["two", "4,2", "4,-1,2"])
def test_cli_refuses_a_bad_per_split_with_its_usage(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exit_:
        demo.main(["--out", str(tmp_path), "--per-split", value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--per-split: expected three counts train,dev,test" in err
    assert not os.listdir(tmp_path)  # nothing built
