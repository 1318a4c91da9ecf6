"""Every bad corpus row at once: each is skipped and counted, none costs a
valid row.

One Common Voice corpus holds the valid rows only; a second holds the same
valid rows with one row of every problem the preparer knows between them.
Both are prepared: the second's report counts each problem exactly, and
its manifests equal the first's (same IDs, durations, transcripts), so no
valid row is lost or changed by its neighbours.
"""

import csv
import os

import pytest
from corpus_fixtures import Clip, cv_row, write_cv_locale
from matrix import ROW_CASES

from speechbrain_lora_experts.data.common_voice import prepare_common_voice
from speechbrain_lora_experts.data.manifest import load_report

VALID = [
    cv_row("de_1.mp3", "Guten Morgen.", "a", Clip(1.0, seed=1)),
    cv_row(
        "de_2.mp3",
        '  Er sagte: "Hallo"   und  ging. ',
        "b",
        Clip(1.25, sample_rate=44100, seed=2),
    ),
    cv_row("de_3.mp3", "Zwei Kanäle hier.", "c", Clip(0.75, channels=2)),
    cv_row("de_4.mp3", "Es kostet $5, sagt Müller.", "c", Clip(2.0)),
    cv_row("de_5.mp3", "Größe zählt.", "d", Clip(1.5, seed=3)),
    cv_row("de_6.mp3", "Letzter Satz!", "d", Clip(0.75, seed=4)),
]

LONG_TEXT = "Dieser Satz ist viel zu lang für eine halbe Sekunde Audio."

#: Bad rows, each with the skip reason it must be counted under.
BAD = [
    ("malformed_row", "spk9\tde_broken.mp3\tonly three columns"),
    ("unsafe_path", cv_row("../escape.mp3", "Ausbruch.", "c")),
    ("unsafe_path", cv_row("/etc/abs.mp3", "Absolut.", "c")),
    ("duplicate_id", cv_row("de_1.mp3", "Guten Morgen.", "a")),
    ("empty_sentence", cv_row("de_empty.mp3", "", "b")),
    ("empty_sentence", cv_row("de_blank.mp3", "   ", "b")),
    ("empty_after_normalization", cv_row("de_dots.mp3", "...", "b")),
    ("zero_byte_clip", cv_row("de_zero.mp3", "Leer.", "a", Clip(kind="zero"))),
    (
        "unreadable_clip",
        cv_row("de_bad.mp3", "Kaputt.", "a", Clip(kind="corrupt")),
    ),
    (
        "missing_clip",
        cv_row("de_gone.mp3", "Fehlt.", "a", Clip(kind="missing")),
    ),
    (
        "empty_audio",
        cv_row("de_hdr.wav", "Nur Kopf.", "a", Clip(kind="no_samples")),
    ),
    (
        "corrupt_clip",
        cv_row(
            "de_body.mp3", "Kaputter Rumpf.", "a", Clip(kind="corrupt_body")
        ),
    ),
    (
        "truncated_clip",
        cv_row(
            "de_cut.mp3",
            "Abgeschnitten mitten im Satz.",
            "a",
            Clip(3.64, kind="truncated"),
        ),
    ),
    (
        "non_finite_audio",
        cv_row("de_nan.wav", "Keine Zahlen.", "a", Clip(kind="nan")),
    ),
    ("too_long", cv_row("de_long.mp3", "Viel zu lang.", "b", Clip(31.0, 8000))),
    (
        "implausible_speaking_rate",
        cv_row("de_fast.mp3", LONG_TEXT, "b", Clip(0.5)),
    ),
]

DEV = [cv_row("de_d1.mp3", "Hallo Welt.", "e")]
TEST = [cv_row("de_t1.mp3", "Test eins.", "f")]


def _interleave(valid, bad):
    rows, bad = [], list(bad)
    for i, row in enumerate(valid):
        rows.append(row)
        # Bad rows sit between valid ones, two or three at a time.
        rows += bad[: 2 + i % 2]
        bad = bad[2 + i % 2 :]
    return rows + bad


def _rows(path):
    with open(path, encoding="utf-8", newline="") as f:
        return [
            (r["ID"], r["duration"], r["spk_id"], r["wrd"], r["lang"])
            + (os.path.basename(r["wav"]),)
            for r in csv.DictReader(f)
        ]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_rows")
    out = {}
    for name, train in (
        ("clean", VALID),
        ("dirty", _interleave(VALID, [row for _, row in BAD])),
    ):
        data = str(root / name)
        write_cv_locale(data, "de", {"train": train, "dev": DEV, "test": TEST})
        save = str(root / f"{name}_out")
        out[name] = (save, prepare_common_voice(data, save, ["de"]))
    return out


def test_every_bad_row_is_counted_under_its_reason(prepared):
    save, _ = prepared["dirty"]
    got = load_report(save)["languages"]["de"]["train"]
    want = {}
    for reason, _ in BAD:
        want[reason] = want.get(reason, 0) + 1
    assert got["skipped"] == want
    assert got["skipped_total"] == len(BAD)
    assert got["kept"] == len(VALID)
    # The matrix (and the README table) lists each of these reasons.
    assert set(want) <= {case.outcome_key for case in ROW_CASES}


def test_no_valid_row_is_lost_or_changed(prepared):
    (save, clean), (_, dirty) = prepared["clean"], prepared["dirty"]
    for split in ("train", "dev", "test"):
        assert _rows(dirty[split]) == _rows(clean[split]), split
    assert len(_rows(clean["train"])) == len(VALID)
    report = load_report(save)["languages"]["de"]
    assert all(report[s]["skipped"] == {} for s in ("train", "dev", "test"))
