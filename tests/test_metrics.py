"""Per-language WER/CER, averages and LID accuracy on hand-scored text."""

import json

import pytest

from speechbrain_lora_experts.metrics import MultilingualScorer

# Hand-scored corpus (units after normalisation):
# de-1: guten morgen herr müller | guten morgen her müller und
#       -> 1 sub (herr/her), 1 ins (und): 2 edits / 4 words
# de-2: das ist gut | das ist gut -> 0 / 3 (case and "." normalised away)
# zh-1: 今 天 天 气 很 好 | 今 天 天 汽 好 -> 1 sub, 1 del: 2 / 6 chars
# en-1: mister smith will not pay $20, both sides after the English
#       normaliser -> 0 / 6 (it would be 5 edits without normalisation)
UTTS = [
    ("de-1", "de", "guten morgen her müller und", "Guten Morgen, Herr Müller!"),
    ("de-2", "de", "Das ist gut", "das ist gut."),
    ("zh-1", "zh-CN", "今天天汽好", "今天天气很好。"),
    (
        "en-1",
        "en",
        "mister smith will not pay twenty dollars",
        "Mr. Smith won't pay $20!",
    ),
]
PREDICTED = ["de", "en", "zh", "en"]


def scorer_with(utts=UTTS, predicted=None):
    scorer = MultilingualScorer()
    ids, langs, hyps, refs = map(list, zip(*utts))
    scorer.append(ids, langs, hyps, refs, predicted_languages=predicted)
    return scorer


def test_german_wer():
    de = scorer_with().summary()["per_language"]["de"]
    assert de["metric"] == "WER"
    assert de["error_rate"] == pytest.approx(100 * 2 / 7)
    assert (de["n_utts"], de["n_units"], de["n_edits"]) == (2, 7, 2)
    assert (de["insertions"], de["deletions"], de["substitutions"]) == (1, 0, 1)
    # Utterance rates 50 % and 0 %.
    assert de["median_utt_error_rate"] == pytest.approx(25.0)


def test_chinese_cer():
    summary = scorer_with().summary()
    zh = summary["per_language"]["zh"]  # zh-CN is scored as Whisper's zh
    assert zh["metric"] == "CER"
    assert zh["error_rate"] == pytest.approx(100 * 2 / 6)
    assert (zh["n_units"], zh["substitutions"], zh["deletions"]) == (6, 1, 1)


def test_english_normalisation():
    en = scorer_with().summary()["per_language"]["en"]
    assert en["error_rate"] == 0.0 and en["n_units"] == 6
    # "Mr." and "mister" are one word after normalisation; "Mrs" is not.
    scorer = scorer_with([("e", "en", "mister smith pays", "Mr. Smith pays.")])
    assert scorer.summary()["per_language"]["en"]["error_rate"] == 0.0
    scorer = scorer_with([("e", "en", "Mrs Smith pays", "Mr. Smith pays.")])
    assert scorer.summary()["per_language"]["en"]["error_rate"] == (
        pytest.approx(100 / 3)
    )


def test_macro_and_micro_averages():
    summary = scorer_with().summary()
    assert summary["macro"] == pytest.approx((100 * 2 / 7 + 100 * 2 / 6) / 3)
    assert summary["micro"] == pytest.approx(100 * 4 / 19)
    assert summary["micro_by_metric"]["WER"] == pytest.approx(100 * 2 / 13)
    assert summary["micro_by_metric"]["CER"] == pytest.approx(100 * 2 / 6)
    assert (summary["n_languages"], summary["n_utts"]) == (3, 4)
    assert summary["n_units"] == 19
    assert summary["lid_accuracy"] is None


def test_lid_accuracy():
    summary = scorer_with(predicted=PREDICTED).summary()
    assert summary["lid_accuracy"] == pytest.approx(3 / 4)
    per = summary["per_language"]
    assert per["de"]["lid_accuracy"] == pytest.approx(0.5)
    assert per["zh"]["lid_accuracy"] == 1.0
    # Missing predictions are left out, not counted as errors.
    scorer = scorer_with(predicted=["de", None, "zh-CN", None])
    assert scorer.summary()["lid_accuracy"] == 1.0


def test_batches_accumulate_and_errors():
    scorer = MultilingualScorer()
    for utt in UTTS:
        scorer.append(*[[field] for field in utt])
    assert scorer.summary()["micro"] == pytest.approx(100 * 4 / 19)
    with pytest.raises(ValueError, match="twice"):
        scorer.append(["de-1"], ["de"], ["a"], ["a"])
    with pytest.raises(ValueError, match="same length"):
        scorer.append(["x"], ["de", "de"], ["a"], ["a"])
    scorer.clear()
    assert scorer.summary()["macro"] is None


def test_write_files(tmp_path):
    scorer = scorer_with(predicted=PREDICTED)
    written = scorer.write(str(tmp_path / "out"), prefix="test_")
    folder = tmp_path / "out"
    data = json.loads((folder / "test_metrics.json").read_text("utf-8"))
    assert data == written
    assert data["per_language"]["zh"]["metric"] == "CER"
    assert set(data["per_language"]["de"]) >= {
        "metric",
        "error_rate",
        "n_utts",
        "n_units",
        "insertions",
        "deletions",
        "substitutions",
    }
    de = (folder / "test_wer_de.txt").read_text("utf-8")
    assert de.startswith("%WER 28.57 [ 2 / 7, 1 ins, 0 del, 1 sub ]")
    assert "de-1" in de and "de-2" in de
    zh = (folder / "test_wer_zh.txt").read_text("utf-8")
    assert zh.startswith("%WER 33.33 [ 2 / 6, 0 ins, 1 del, 1 sub ]")
    assert "汽" in zh
    assert sorted(p.name for p in folder.iterdir()) == [
        "test_metrics.json",
        "test_wer_de.txt",
        "test_wer_en.txt",
        "test_wer_zh.txt",
    ]
