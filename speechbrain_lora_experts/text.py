"""Evaluation text normalisation and scoring units, as Whisper scores.

Whisper's evaluation normalises references and hypotheses before WER/CER:
the English normaliser for English, a basic normaliser for every other
language, and characters instead of words for scripts written without
spaces. This module does the same with one fix: transformers'
``BasicTextNormalizer`` turns every combining mark into a space, which
shreds Indic and other abugida scripts (``हिन्दी`` -> ``ह न द``). Our basic
normaliser keeps letters, marks and digits and only removes punctuation
and symbols.

:func:`evaluation_scheme` is the one place that decides, per language,
how text is normalised and which units are scored; the other functions
are views of it.

Authors
 * speechbrain-lora-experts developers 2026
"""

import functools
import importlib.util
import json
import os
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

from speechbrain_lora_experts.languages import canonical_language, uses_cer

# Same patterns as Whisper: [...] / <...> and (...) are annotations.
_BRACKETED = re.compile(r"[<\[][^>\]]*[>\]]")
_PARENTHESISED = re.compile(r"\(([^)]+?)\)")
_SPACES = re.compile(r"\s+")
# NFKC splits Thai/Lao SARA AM into NIKHAHIT + SARA AA; put it back so a
# written vowel stays one character for CER.
_RECOMPOSE = {"\u0e4d\u0e32": "\u0e33", "\u0ecd\u0eb2": "\u0eb3"}


def basic_normalize(text):
    """Language-agnostic normalisation that keeps combining marks.

    Steps: NFKC, lowercase, drop ``[...]``, ``<...>`` and ``(...)``,
    replace punctuation (``P*``) and symbols (``S*``) by spaces, collapse
    whitespace. Letters (``L*``), marks (``M*``) and digits are kept, so
    umlauts, accents and Indic vowel signs survive.

    Arguments
    ---------
    text : str
        A transcript or hypothesis.

    Returns
    -------
    str
        The normalised text.

    Example
    -------
    >>> basic_normalize("Grüße, Herr Müller! [Lachen]")
    'grüße herr müller'
    >>> basic_normalize("नमस्ते, दुनिया।")
    'नमस्ते दुनिया'
    """
    # NFKC first so full-width brackets/punctuation are caught below.
    text = unicodedata.normalize("NFKC", text).lower()
    for split_form, char in _RECOMPOSE.items():
        text = text.replace(split_form, char)
    text = _BRACKETED.sub("", text)
    text = _PARENTHESISED.sub("", text)
    text = "".join(
        " " if unicodedata.category(ch)[0] in "PS" else ch for ch in text
    )
    return _SPACES.sub(" ", text).strip()


def _whisper_package_spelling_file():
    """english.json of the openai-whisper package, if it is installed."""
    spec = importlib.util.find_spec("whisper")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = os.path.join(root, "normalizers", "english.json")
        if os.path.isfile(path):
            return path
    return None


def load_english_spelling_mapping(path=None):
    """British -> American spelling map used by Whisper's English normaliser.

    transformers does not ship this map: ``WhisperTokenizer`` reads it
    from ``normalizer.json`` in a hub checkpoint. Offline we look, in
    order, at ``path`` (a ``normalizer.json`` file or a model folder that
    holds one), then at the openai-whisper package's ``english.json`` if
    that package is installed. Without either the map is empty: English
    scoring then differs from Whisper's only in spelling variants
    ("colour" vs "color"), identically for every system compared.

    Arguments
    ---------
    path : str, optional
        ``normalizer.json`` or a folder containing it.

    Returns
    -------
    dict
        Possibly empty mapping.

    Example
    -------
    >>> import json
    >>> path = getfixture("tmp_path") / "normalizer.json"
    >>> _ = path.write_text(json.dumps({"colour": "color"}))
    >>> load_english_spelling_mapping(str(path))
    {'colour': 'color'}
    """
    if path is not None and os.path.isdir(path):
        path = os.path.join(path, "normalizer.json")
    if path is None:
        path = _whisper_package_spelling_file()
    if path is None:
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@functools.lru_cache(maxsize=8)
def _english_normalizer(spelling_path):
    return EnglishTextNormalizer(load_english_spelling_mapping(spelling_path))


@dataclass(frozen=True)
class EvaluationScheme:
    """How one language is scored.

    Attributes
    ----------
    language : str
        Canonical (Whisper) code.
    metric : str
        ``"WER"`` or ``"CER"``.
    normalize : callable
        ``str -> str`` evaluation normaliser.

    Example
    -------
    >>> scheme = evaluation_scheme("de")
    >>> scheme.metric, scheme.units("Guten Morgen!")
    ('WER', ['guten', 'morgen'])
    """

    language: str
    metric: str
    normalize: Callable[[str], str]

    def units(self, text):
        """Normalise ``text`` and split it into scoring units.

        Arguments
        ---------
        text : str
            A transcript or hypothesis.

        Returns
        -------
        list of str
            Words (WER) or non-space characters (CER).
        """
        norm = self.normalize(text)
        if self.metric == "CER":
            # Code points, spaces dropped: jiwer's CER on Whisper's output.
            return [ch for ch in norm if not ch.isspace()]
        return norm.split()


def evaluation_scheme(lang, english_spelling=None):
    """Decide normaliser and scoring unit for a language.

    Arguments
    ---------
    lang : str
        Any name accepted by :func:`canonical_language`.
    english_spelling : str, optional
        ``normalizer.json`` (or its folder) for English spelling variants;
        see :func:`load_english_spelling_mapping`.

    Returns
    -------
    EvaluationScheme

    Example
    -------
    >>> evaluation_scheme("zh-CN").metric, evaluation_scheme("de").metric
    ('CER', 'WER')
    """
    code = canonical_language(lang)
    if code == "en":
        normalize = _english_normalizer(english_spelling)

        def normalize_en(text):
            """Whisper's English normalizer, without surrounding spaces."""
            return normalize(text).strip()

        return EvaluationScheme(code, "WER", normalize_en)
    metric = "CER" if uses_cer(code) else "WER"
    return EvaluationScheme(code, metric, basic_normalize)


def normalize_for_eval(text, lang, english_spelling=None):
    """Normalise a reference or hypothesis for scoring, as Whisper does.

    Arguments
    ---------
    text : str
        A reference or hypothesis.
    lang : str
        Its language (any name :func:`canonical_language` accepts).
    english_spelling : str, optional
        ``normalizer.json`` (or its folder) for English spelling variants.

    Returns
    -------
    str
        The normalised text.

    Example
    -------
    >>> normalize_for_eval("Mr. Smith won't pay $20!", "en")
    'mister smith will not pay $20'
    >>> normalize_for_eval("Ça coûte 20 €, d'accord ?", "fr")
    'ça coûte 20 d accord'
    """
    return evaluation_scheme(lang, english_spelling).normalize(text)


def scoring_units(text, lang, english_spelling=None):
    """Normalised words, or characters without spaces for CER languages.

    Arguments
    ---------
    text : str
        A reference or hypothesis.
    lang : str
        Its language (any name :func:`canonical_language` accepts).
    english_spelling : str, optional
        ``normalizer.json`` (or its folder) for English spelling variants.

    Returns
    -------
    list of str
        The units the error rate counts.

    Example
    -------
    >>> scoring_units("Guten Morgen!", "de")
    ['guten', 'morgen']
    >>> scoring_units("你好，世界。", "zh")
    ['你', '好', '世', '界']
    """
    return evaluation_scheme(lang, english_spelling).units(text)


def error_rate_name(lang):
    """``"CER"`` or ``"WER"``, matching :func:`scoring_units`.

    Arguments
    ---------
    lang : str
        Any name :func:`canonical_language` accepts.

    Returns
    -------
    str
        ``"CER"`` or ``"WER"``.

    Example
    -------
    >>> error_rate_name("ja"), error_rate_name("hi")
    ('CER', 'WER')
    """
    return evaluation_scheme(lang).metric
