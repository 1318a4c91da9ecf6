"""Tests of language id mapping (Whisper / Common Voice / FLEURS)."""

import pytest

from speechbrain_lora_experts import languages as L
from speechbrain_lora_experts.languages import (
    UnknownLanguageError,
    canonical_language,
    common_voice_locale,
    common_voice_locales,
    fleurs_code,
    language_token,
    uses_cer,
)


def test_every_whisper_code_is_canonical():
    assert len(L.WHISPER_LANGUAGES) == 100
    for code in L.WHISPER_LANGUAGES:
        assert canonical_language(code) == code


@pytest.mark.parametrize(
    "locale, code",
    [
        ("zh-CN", "zh"),
        ("zh-TW", "zh"),
        ("zh-HK", "yue"),
        ("yue", "yue"),
        ("sv-SE", "sv"),
        ("pa-IN", "pa"),
        ("hy-AM", "hy"),
        ("ne-NP", "ne"),
        ("nn-NO", "nn"),
        ("pt", "pt"),
        ("es", "es"),
        ("de", "de"),
        ("ca", "ca"),
        ("cy", "cy"),
        ("ba", "ba"),
    ],
)
def test_common_voice_locales(locale, code):
    assert canonical_language(locale) == code


@pytest.mark.parametrize(
    "fleurs, code",
    [
        ("cmn_hans_cn", "zh"),
        ("es_419", "es"),
        ("de_de", "de"),
        ("yue_hant_hk", "yue"),
        ("pt_br", "pt"),
        ("nb_no", "no"),
        ("fil_ph", "tl"),
        ("jv_id", "jw"),
        ("he_il", "he"),
        ("en_us", "en"),
    ],
)
def test_fleurs_codes(fleurs, code):
    assert canonical_language(fleurs) == code


def test_case_separator_and_names():
    assert canonical_language("ZH_cn") == "zh"
    assert canonical_language(" sv_se ") == "sv"
    assert canonical_language("German") == "de"
    assert canonical_language("mandarin") == "zh"
    assert canonical_language("iw") == "he"
    assert canonical_language("de-AT") == "de"  # region fallback
    assert canonical_language("sr-Latn") == "sr"


@pytest.mark.parametrize(
    "bad", ["fy-NL", "ga-IE", "ga_ie", "rm-sursilv", "nan-tw", "xx", "", "eo"]
)
def test_unsupported_languages_raise_helpfully(bad):
    with pytest.raises(UnknownLanguageError) as err:
        canonical_language(bad)
    msg = str(err.value)
    assert "de, el, en" in msg  # lists supported codes
    assert "Fix" in msg
    assert isinstance(err.value, ValueError)


def test_non_whisper_language_is_named():
    with pytest.raises(UnknownLanguageError, match="Irish.*no language token"):
        canonical_language("ga-IE")


def test_common_voice_locale_defaults():
    assert common_voice_locale("zh") == "zh-CN"
    assert common_voice_locale("sv") == "sv-SE"
    assert common_voice_locale("yue") == "zh-HK"
    assert common_voice_locale("pa") == "pa-IN"
    assert common_voice_locale("de") == "de"
    assert common_voice_locale("cmn_hans_cn") == "zh-CN"
    assert common_voice_locales("zh") == ("zh-CN", "zh-TW")
    assert common_voice_locales("yue") == ("zh-HK", "yue")
    # an explicit region locale names exactly that folder
    assert common_voice_locales("zh-TW") == ("zh-TW",)
    assert common_voice_locales("zh-HK") == ("zh-HK",)


def test_fleurs_code_defaults_and_round_trip():
    assert fleurs_code("zh") == "cmn_hans_cn"
    assert fleurs_code("es") == "es_419"
    assert fleurs_code("de") == "de_de"
    assert fleurs_code("yue") == "yue_hant_hk"
    assert fleurs_code("pt") == "pt_br"
    assert fleurs_code("zh-CN") == "cmn_hans_cn"
    for fl, code in L._FLEURS_CODE_TO_CODE.items():
        assert fleurs_code(code) == fl
    assert len(L._FLEURS_CODE_TO_CODE) >= 80  # a real table


def test_fleurs_code_for_language_without_fleurs():
    with pytest.raises(UnknownLanguageError, match="FLEURS has no latin"):
        fleurs_code("la")


def test_tables_only_name_whisper_languages():
    for table in (L._CV_LOCALE_TO_CODE, L._FLEURS_CODE_TO_CODE, L._ALIASES):
        assert set(table.values()) <= set(L.WHISPER_LANGUAGES)
    for code, locales in L._CODE_TO_CV_LOCALES.items():
        for locale in locales:
            assert canonical_language(locale) == code
    assert not set(L._NOT_IN_WHISPER) & set(L.WHISPER_LANGUAGES)


def test_language_token_matches_whisper_vocabulary():
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    assert language_token("de") == "<|de|>"
    assert language_token("zh-HK") == "<|yue|>"
    assert language_token("jv_id") == "<|jw|>"
    tokens = {f"<|{c}|>" for c in LANGUAGES}
    assert {language_token(c) for c in L.WHISPER_LANGUAGES} == tokens


def test_uses_cer():
    for lang in ("zh", "zh-CN", "zh-HK", "yue", "ja", "th", "lo", "my"):
        assert uses_cer(lang), lang
    for lang in ("de", "en", "hi", "ko", "ar", "ru", "vi"):
        assert not uses_cer(lang), lang
