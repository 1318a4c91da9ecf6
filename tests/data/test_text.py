"""Tests of evaluation normalisation and scoring units."""

import json
import unicodedata

import jiwer
import pytest
from transformers.models.whisper.english_normalizer import BasicTextNormalizer

from speechbrain_lora_experts.text import (
    _whisper_package_spelling_file,
    basic_normalize,
    error_rate_name,
    evaluation_scheme,
    load_english_spelling_mapping,
    normalize_for_eval,
    scoring_units,
)

HINDI = "हिन्दी भारत की राजभाषा है। क्या आप हिंदी बोलते हैं?"


def test_german_keeps_umlauts_and_eszett():
    text = "Grüße aus Köln! Das Straßenfest (am Sonntag) war „großartig“."
    assert normalize_for_eval(text, "de") == (
        "grüße aus köln das straßenfest war großartig"
    )
    assert scoring_units("Über 20 Äpfel, bitte.", "de") == [
        "über",
        "20",
        "äpfel",
        "bitte",
    ]
    assert error_rate_name("de") == "WER"


def test_decomposed_umlauts_compose():
    decomposed = unicodedata.normalize("NFD", "Müller")
    assert normalize_for_eval(decomposed, "de") == "müller"


def test_hindi_is_not_shredded():
    norm = normalize_for_eval(HINDI, "hi")
    assert norm == "हिन्दी भारत की राजभाषा है क्या आप हिंदी बोलते हैं"
    assert len(scoring_units(HINDI, "hi")) == 10
    # transformers' basic normaliser turns vowel signs/virama into spaces
    assert len(BasicTextNormalizer()(HINDI).split()) > 10
    assert error_rate_name("hi") == "WER"


def test_other_abugidas_and_rtl_keep_marks():
    assert normalize_for_eval("தமிழ் மொழி.", "ta") == "தமிழ் மொழி"
    assert normalize_for_eval("বাংলা ভাষা!", "bn") == "বাংলা ভাষা"
    assert normalize_for_eval("مرحبا، كيف حالك؟", "ar") == "مرحبا كيف حالك"


def test_chinese_uses_characters():
    text = "北京是中国的首都，人口超过两千万。"
    assert error_rate_name("zh") == "CER"
    units = scoring_units(text, "zh")
    assert units == list("北京是中国的首都人口超过两千万")
    assert scoring_units(text, "zh-HK") == units  # Cantonese: CER too


def test_japanese_uses_characters_and_width_folding():
    text = "今日はいい天気ですね。ｶﾀｶﾅも「全角」に！"
    assert error_rate_name("ja") == "CER"
    assert scoring_units(text, "ja") == list(
        "今日はいい天気ですねカタカナも全角に"
    )


def test_thai_vowel_stays_one_character():
    units = scoring_units("คำ ไทย", "th")
    assert units == ["ค", "ำ", "ไ", "ท", "ย"]


def test_english_uses_whisper_english_normaliser():
    text = "Mr. Smith didn't pay twenty five dollars (approx.) [laughs]"
    assert normalize_for_eval(text, "en") == "mister smith did not pay $25"
    assert scoring_units("Hmm, I'm here.", "en") == ["i", "am", "here"]
    assert error_rate_name("en") == "WER"


def test_french_apostrophes_and_guillemets():
    text = "L'été dernier, nous sommes allés à Paris : c'était « magnifique » !"
    assert normalize_for_eval(text, "fr") == (
        "l été dernier nous sommes allés à paris c était magnifique"
    )


def test_english_normaliser_is_not_applied_to_german():
    # the English normaliser strips diacritics: Köln -> koln
    assert normalize_for_eval("Köln", "en") == "koln"
    assert normalize_for_eval("Köln", "de-DE") == "köln"


def test_brackets_and_whitespace():
    assert basic_normalize("  <unk> Hallo   [Musik]\tWelt (leise) ") == (
        "hallo welt"
    )
    assert basic_normalize("（笑）你好") == "你好"  # full-width parentheses
    assert basic_normalize("...!?") == ""
    assert scoring_units("", "zh") == [] and scoring_units("", "de") == []


def test_units_give_whisper_style_error_rates():
    ref, hyp = "Guten Morgen, Herr Müller!", "guten morgen herr muller"
    r, h = (" ".join(scoring_units(x, "de")) for x in (ref, hyp))
    assert jiwer.wer(r, h) == pytest.approx(0.25)
    ref, hyp = "你好，世界。", "你好世纪"
    r, h = (" ".join(scoring_units(x, "zh")) for x in (ref, hyp))
    assert jiwer.wer(r, h) == pytest.approx(0.25)  # 1 of 4 characters


def test_scheme_is_single_decision():
    for lang in ("de", "en", "zh", "ja", "hi", "th", "yue"):
        scheme = evaluation_scheme(lang)
        assert scheme.metric == error_rate_name(lang)
        text = "Ein Satz, 一句话."
        assert scheme.normalize(text) == normalize_for_eval(text, lang)
        assert scheme.units(text) == scoring_units(text, lang)


def test_english_spelling_mapping_from_file(tmp_path):
    (tmp_path / "normalizer.json").write_text(
        json.dumps({"colour": "color"}), encoding="utf-8"
    )
    assert load_english_spelling_mapping(str(tmp_path)) == {"colour": "color"}
    text = "The colour red."
    assert normalize_for_eval(text, "en", str(tmp_path)) == "the color red"
    if _whisper_package_spelling_file() is None:  # default: empty map
        assert normalize_for_eval(text, "en") == "the colour red"
