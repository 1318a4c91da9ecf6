"""Language identifiers: Whisper codes, Common Voice locales, FLEURS codes.

The canonical language id of this package is Whisper's own code (``de``,
``zh``, ``sv``, ``yue``, ...): it names the LoRA expert, the language token
(``<|de|>``) and the ``lang`` column of every data manifest. Corpora name
languages differently (Common Voice ``zh-CN`` / ``sv-SE`` / ``zh-HK``,
FLEURS ``cmn_hans_cn`` / ``es_419``), so every user-facing entry point goes
through :func:`canonical_language`, which also accepts ISO 639-2/3 codes
(``deu``, ``ger``) and English or native names (``German``, ``Deutsch``,
``español``) of Whisper's languages.

Authors
 * speechbrain-lora-experts developers 2026
"""

import unicodedata

from transformers.models.whisper.tokenization_whisper import (
    LANGUAGES as _WHISPER_LANGUAGES,
    TO_LANGUAGE_CODE as _WHISPER_NAMES,
)

#: Whisper language code -> English name, in Whisper's token order.
WHISPER_LANGUAGES = dict(_WHISPER_LANGUAGES)

# Common Voice locale folders whose name is not the Whisper code. Locales
# named exactly like the Whisper code (de, fr, ca, ...) need no entry.
_CV_LOCALE_TO_CODE = {
    "zh-CN": "zh",
    "zh-TW": "zh",  # Mandarin, traditional script
    "zh-HK": "yue",  # recorded in Hong Kong: Cantonese speech
    "yue": "yue",
    "sv-SE": "sv",
    "hy-AM": "hy",
    "ne-NP": "ne",
    "nn-NO": "nn",
    "nb-NO": "no",
    "pa-IN": "pa",
}

# Preferred Common Voice folders per code, best first; codes not listed
# use a folder named like the code. zh-HK is the large Cantonese set, the
# newer ``yue`` locale is the fallback.
_CODE_TO_CV_LOCALES = {
    "zh": ("zh-CN", "zh-TW"),
    "yue": ("zh-HK", "yue"),
    "sv": ("sv-SE",),
    "hy": ("hy-AM",),
    "ne": ("ne-NP",),
    "nn": ("nn-NO",),
    "no": ("nb-NO",),
    "pa": ("pa-IN",),
}

# FLEURS (google/fleurs) configs of the languages Whisper knows.
_FLEURS_CODE_TO_CODE = {
    "af_za": "af",
    "am_et": "am",
    "ar_eg": "ar",
    "as_in": "as",
    "az_az": "az",
    "be_by": "be",
    "bg_bg": "bg",
    "bn_in": "bn",
    "bs_ba": "bs",
    "ca_es": "ca",
    "cmn_hans_cn": "zh",
    "cs_cz": "cs",
    "cy_gb": "cy",
    "da_dk": "da",
    "de_de": "de",
    "el_gr": "el",
    "en_us": "en",
    "es_419": "es",
    "et_ee": "et",
    "fa_ir": "fa",
    "fi_fi": "fi",
    "fil_ph": "tl",
    "fr_fr": "fr",
    "gl_es": "gl",
    "gu_in": "gu",
    "ha_ng": "ha",
    "he_il": "he",
    "hi_in": "hi",
    "hr_hr": "hr",
    "hu_hu": "hu",
    "hy_am": "hy",
    "id_id": "id",
    "is_is": "is",
    "it_it": "it",
    "ja_jp": "ja",
    "jv_id": "jw",
    "ka_ge": "ka",
    "kk_kz": "kk",
    "km_kh": "km",
    "kn_in": "kn",
    "ko_kr": "ko",
    "lb_lu": "lb",
    "ln_cd": "ln",
    "lo_la": "lo",
    "lt_lt": "lt",
    "lv_lv": "lv",
    "mi_nz": "mi",
    "mk_mk": "mk",
    "ml_in": "ml",
    "mn_mn": "mn",
    "mr_in": "mr",
    "ms_my": "ms",
    "mt_mt": "mt",
    "my_mm": "my",
    "nb_no": "no",
    "ne_np": "ne",
    "nl_nl": "nl",
    "oc_fr": "oc",
    "pa_in": "pa",
    "pl_pl": "pl",
    "ps_af": "ps",
    "pt_br": "pt",
    "ro_ro": "ro",
    "ru_ru": "ru",
    "sd_in": "sd",
    "sk_sk": "sk",
    "sl_si": "sl",
    "sn_zw": "sn",
    "so_so": "so",
    "sr_rs": "sr",
    "sv_se": "sv",
    "sw_ke": "sw",
    "ta_in": "ta",
    "te_in": "te",
    "tg_tj": "tg",
    "th_th": "th",
    "tr_tr": "tr",
    "uk_ua": "uk",
    "ur_pk": "ur",
    "uz_uz": "uz",
    "vi_vn": "vi",
    "yo_ng": "yo",
    "yue_hant_hk": "yue",
}
_CODE_TO_FLEURS_CODE = {v: k for k, v in _FLEURS_CODE_TO_CODE.items()}

# Languages present in Common Voice or FLEURS that Whisper has no token
# for: named in the error so users see *why* they are refused.
_NOT_IN_WHISPER = {
    "ab": "Abkhaz",
    "ast": "Asturian",
    "ceb": "Cebuano",
    "ckb": "Central Kurdish",
    "cv": "Chuvash",
    "dv": "Dhivehi",
    "eo": "Esperanto",
    "ff": "Fula",
    "fy": "Western Frisian",
    "ga": "Irish",
    "ia": "Interlingua",
    "ig": "Igbo",
    "kab": "Kabyle",
    "kam": "Kamba",
    "kea": "Kabuverdianu",
    "kmr": "Kurmanji Kurdish",
    "ky": "Kyrgyz",
    "lg": "Luganda",
    "luo": "Luo",
    "nan": "Taiwanese Hokkien",
    "nso": "Northern Sotho",
    "ny": "Nyanja",
    "om": "Oromo",
    "or": "Odia",
    "rm": "Romansh",
    "rw": "Kinyarwanda",
    "sah": "Sakha",
    "ti": "Tigrinya",
    "tw": "Twi",
    "umb": "Umbundu",
    "wo": "Wolof",
    "xh": "Xhosa",
    "zu": "Zulu",
}

# ISO 639 spellings and script tags that mean a Whisper language.
_ALIASES = {
    "iw": "he",
    "jv": "jw",
    "fil": "tl",
    "nb": "no",
    "cmn": "zh",
    "zh-hans": "zh",
    "zh-hant": "zh",
    "zh-yue": "yue",
    "yue-hant": "yue",
    "yue-hk": "yue",
}

# Per Whisper language: its other ISO 639-2/3 codes (terminology and
# bibliographic), then its names in its own language (ISO 639 tables and
# CLDR autonyms). English names come from Whisper's own table.
_OTHER_NAMES = """
en eng | English
zh chi zho | 中文; 汉语; 普通话
de deu ger | Deutsch
es spa | español
ru rus | русский
ko kor | 한국어
fr fra fre | français
ja jpn | 日本語
pt por | português
tr tur | Türkçe
pl pol | polski
ca cat | català
nl dut nld | Nederlands
ar ara | العربية
sv swe | svenska
it ita | italiano
id ind | bahasa Indonesia
hi hin | हिन्दी
fi fin | suomi
vi vie | Tiếng Việt
he heb | עברית
uk ukr | українська
el ell gre | Ελληνικά
ms may msa | bahasa Malaysia
cs ces cze | čeština
ro ron rum | română
da dan | dansk
hu hun | magyar
ta tam | தமிழ்
no nor | norsk; bokmål
th tha | ไทย
ur urd | اردو
hr hrv | hrvatski
bg bul | български
lt lit | lietuvių
la lat | Lingua latina
mi mao mri | Māori
ml mal | മലയാളം
cy cym wel | Cymraeg
sk slk slo | slovenčina
te tel | తెలుగు
fa fas per | فارسی; farsi
lv lav | latviešu
bn ben | বাংলা
sr srp | српски
az aze | azərbaycan
sl slv | slovenščina
kn kan | ಕನ್ನಡ
et est | eesti
mk mac mkd | македонски
br bre | brezhoneg
eu baq eus | euskara
is ice isl | íslenska
hy arm hye | հայերեն
ne nep | नेपाली
mn mon | монгол
bs bos | bosanski
kk kaz | қазақ тілі
sq alb sqi | shqip
sw swa | Kiswahili
gl glg | galego
mr mar | मराठी
pa pan | ਪੰਜਾਬੀ
si sin | සිංහල
km khm | ខ្មែរ
sn sna | chiShona
yo yor | Èdè Yorùbá
so som | Soomaali
af afr | Afrikaans
oc oci | occitan
ka geo kat | ქართული
be bel | беларуская
tg tgk | тоҷикӣ
sd snd | سنڌي
gu guj | ગુજરાતી
am amh | አማርኛ
yi yid | ייִדיש
lo lao | ລາວ
uz uzb | o‘zbek
fo fao | føroyskt
ht hat | Kreyòl Ayisyen
ps pus | پښتو
tk tuk | türkmen dili
nn nno | norsk nynorsk; nynorsk
mt mlt | Malti
sa san | संस्कृत भाषा
lb ltz | Lëtzebuergesch
my bur mya | မြန်မာ
bo bod tib | བོད་སྐད་
tl tgl | Filipino
mg mlg | Malagasy
as asm | অসমীয়া
tt tat | татар
haw | ʻŌlelo Hawaiʻi
ln lin | lingála
ha hau | Hausa
ba bak | башҡорт теле
jw jav | Jawa
su sun | Basa Sunda
yue | 粵語; 廣東話; 粤语
"""

#: Languages scored with CER: scripts written without spaces between words.
CER_LANGUAGES = frozenset({"zh", "yue", "ja", "th", "lo", "my", "km", "bo"})


class UnknownLanguageError(ValueError):
    """A language name that maps to no Whisper language.

    Example
    -------
    >>> try:
    ...     canonical_language("Klingon")
    ... except UnknownLanguageError as e:
    ...     print(type(e).__name__)
    UnknownLanguageError
    """


def _key(lang):
    """Case- and separator-insensitive lookup key (``zh_CN`` == ``zh-cn``)."""
    return lang.strip().lower().replace("_", "-")


def _fold(key):
    """``español`` -> ``espanol``: names typed without their accents.

    Example
    -------
    >>> _fold("français"), _fold("中文")
    ('francais', '中文')
    """
    decomposed = unicodedata.normalize("NFKD", key)
    folded = "".join(c for c in decomposed if not unicodedata.combining(c))
    return unicodedata.normalize("NFC", folded)


def _other_names():
    """``{key: code}`` of ISO 639-2/3 codes and native names."""
    table = {}
    for line in _OTHER_NAMES.strip().splitlines():
        codes, names = line.split("|")
        code, *iso = codes.split()
        for name in iso + [n for n in names.split(";") if n.strip()]:
            table[_key(name)] = code
            table.setdefault(_fold(_key(name)), code)
    return table


def _build_lookup():
    table = _other_names()
    table.update({code: code for code in WHISPER_LANGUAGES})
    table.update({_key(k): v for k, v in _ALIASES.items()})
    table.update({_key(k): v for k, v in _CV_LOCALE_TO_CODE.items()})
    table.update({_key(k): v for k, v in _FLEURS_CODE_TO_CODE.items()})
    # English names ("german", "mandarin") as a convenience.
    table.update({_key(k): v for k, v in _WHISPER_NAMES.items()})
    return table


_LOOKUP = _build_lookup()
_CV_KEY_TO_LOCALE = {_key(k): k for k in _CV_LOCALE_TO_CODE}


def _region_fallback(key):
    """``de-at`` -> ``de``: a Whisper code followed by region/script tags.

    Only short region (``at``), numeric (``419``) or script (``latn``)
    subtags are accepted, so a different language that merely starts with
    a Whisper code is not captured by accident.
    """
    base, *tags = key.split("-")
    if not tags or base not in _LOOKUP or base in _NOT_IN_WHISPER:
        return None
    if all(len(t) in (2, 3, 4) and t.isalnum() for t in tags):
        return _LOOKUP[base]
    return None


def _unknown_message(lang):
    base = _key(lang).split("-")[0]
    why = ""
    if base in _NOT_IN_WHISPER:
        why = (
            f" {_NOT_IN_WHISPER[base]} is in Common Voice/FLEURS but Whisper "
            "has no language token for it, so it cannot get an expert."
        )
    codes = ", ".join(sorted(WHISPER_LANGUAGES))
    return (
        f"Unknown language {lang!r}.{why} Use a Whisper language code "
        f"({codes}), an ISO 639-2/3 code (e.g. deu), an English or native "
        "name (e.g. German, Deutsch), a Common Voice locale (e.g. zh-CN, "
        "sv-SE, zh-HK for Cantonese, pa-IN) or a FLEURS code (e.g. "
        "cmn_hans_cn, es_419, de_de, yue_hant_hk). Fix the language list "
        "in your hparams."
    )


def canonical_language(lang):
    """Return the Whisper code for a Whisper code, CV locale or FLEURS code.

    Arguments
    ---------
    lang : str
        ``de``, ``zh-CN``, ``sv-SE``, ``zh-HK``, ``cmn_hans_cn``,
        ``es_419``, ``deu``, ``german``, ``Deutsch``, ... (case and
        ``-``/``_`` insensitive; accents optional in names).

    Returns
    -------
    str
        Whisper's language code.

    Raises
    ------
    UnknownLanguageError
        If the name maps to no Whisper language.

    Example
    -------
    >>> canonical_language("zh-CN"), canonical_language("cmn_hans_cn")
    ('zh', 'zh')
    >>> canonical_language("zh-HK"), canonical_language("es_419")
    ('yue', 'es')
    >>> canonical_language("deu"), canonical_language("Deutsch")
    ('de', 'de')
    """
    if not isinstance(lang, str) or not lang.strip():
        raise UnknownLanguageError(_unknown_message(str(lang)))
    key = _key(lang)
    code = _LOOKUP.get(key) or _LOOKUP.get(_fold(key)) or _region_fallback(key)
    if code is None:
        raise UnknownLanguageError(_unknown_message(lang))
    return code


def common_voice_locales(lang):
    """Candidate Common Voice locale folders for a language, best first.

    A region-specific locale (``zh-TW``) names exactly one folder; a
    Whisper code lists every folder holding that language.

    Arguments
    ---------
    lang : str
        A Whisper code, a Common Voice or FLEURS locale, an ISO 639-2/3 code or
        an English or native language name.

    Returns
    -------
    tuple of str
        Locale folder names, the default first.

    Example
    -------
    >>> common_voice_locales("zh"), common_voice_locales("zh-TW")
    (('zh-CN', 'zh-TW'), ('zh-TW',))
    """
    code = canonical_language(lang)
    exact = _CV_KEY_TO_LOCALE.get(_key(lang))
    if exact is not None and exact != code:
        return (exact,)
    return _CODE_TO_CV_LOCALES.get(code, (code,))


def common_voice_locale(lang):
    """Default Common Voice locale folder name of a language.

    Arguments
    ---------
    lang : str
        A Whisper code, a Common Voice or FLEURS locale, an ISO 639-2/3 code or
        an English or native language name.

    Returns
    -------
    str
        The locale folder name (``sv-SE``, ``de``).

    Example
    -------
    >>> common_voice_locale("sv"), common_voice_locale("de")
    ('sv-SE', 'de')
    """
    return common_voice_locales(lang)[0]


def fleurs_code(lang):
    """Default FLEURS config name of a language.

    Raises
    ------
    UnknownLanguageError
        If FLEURS has no data for this language.

    Arguments
    ---------
    lang : str
        A Whisper code, a Common Voice or FLEURS locale, an ISO 639-2/3 code or
        an English or native language name.

    Returns
    -------
    str
        The FLEURS config name (``de_de``, ``cmn_hans_cn``).

    Example
    -------
    >>> fleurs_code("zh"), fleurs_code("es"), fleurs_code("yue")
    ('cmn_hans_cn', 'es_419', 'yue_hant_hk')
    """
    code = canonical_language(lang)
    if code not in _CODE_TO_FLEURS_CODE:
        have = ", ".join(sorted(_CODE_TO_FLEURS_CODE))
        raise UnknownLanguageError(
            f"FLEURS has no {WHISPER_LANGUAGES[code]} ({code!r}) subset. "
            f"Languages with FLEURS data: {have}. Drop {lang!r} from the "
            "FLEURS language list."
        )
    return _CODE_TO_FLEURS_CODE[code]


def language_token(lang):
    """Whisper's language token.

    Arguments
    ---------
    lang : str
        A Whisper code, a Common Voice or FLEURS locale, an ISO 639-2/3 code or
        an English or native language name.

    Returns
    -------
    str
        ``<|code|>`` of the canonical Whisper code.

    Example
    -------
    >>> language_token("de-DE"), language_token("zh-HK")
    ('<|de|>', '<|yue|>')
    """
    return f"<|{canonical_language(lang)}|>"


def uses_cer(lang):
    """True if the language is scored with CER (no spaces between words).

    Arguments
    ---------
    lang : str
        A Whisper code, a Common Voice or FLEURS locale, an ISO 639-2/3 code or
        an English or native language name.

    Returns
    -------
    bool
        Whether the language is scored per character.

    Example
    -------
    >>> uses_cer("ja"), uses_cer("zh-CN"), uses_cer("de")
    (True, True, False)
    """
    return canonical_language(lang) in CER_LANGUAGES
