"""Common Voice -> SpeechBrain CSV manifests for several languages.

Reads a Common Voice release folder
``<data_folder>/<locale>/{clips/*.mp3, train.tsv, dev.tsv, test.tsv}``
(any schema from v10 to v17+: columns are looked up by name) and writes one
CSV per split with the columns ``ID,duration,wav,spk_id,wrd,lang``, all
requested languages together. Validation, caps and reports are shared
with FLEURS in :mod:`speechbrain_lora_experts.data.manifest`.

Example (hparams-style)::

    from speechbrain.utils.distributed import run_on_main

    run_on_main(
        prepare_common_voice,
        kwargs={
            "data_folder": "/data/cv-corpus-17.0-2024-03-15",
            "save_folder": "results/data",
            "languages": ["de", "zh", "sv"],
            "max_utterances": {"train": 2000, "dev": 200, "test": 200},
        },
    )

Authors
 * speechbrain-lora-experts developers 2026
"""

import os

from speechbrain_lora_experts.data.manifest import (
    MALFORMED_ROW,
    Candidate,
    PreparationError,
    Rejected,
    collect_corpus,
    iter_tsv,
    make_options,
    output_paths,
    parse_languages,
    parse_splits,
    run_preparation,
)
from speechbrain_lora_experts.languages import (
    UnknownLanguageError,
    canonical_language,
    common_voice_locales,
)

CORPUS = "common_voice"
REQUIRED_COLUMNS = ("client_id", "path", "sentence")


def prepare_common_voice(
    data_folder,
    save_folder,
    languages,
    splits=("train", "dev", "test"),
    max_utterances=None,
    max_hours=None,
    max_duration=30.0,
    min_duration=0.0,
    csv_prefix="",
    skip_prep=False,
    audio_check="decode",
    max_chars_per_second="auto",
):
    """Write ``<save_folder>/<csv_prefix><split>.csv`` for Common Voice.

    Arguments
    ---------
    data_folder : str
        Release folder holding one folder per locale (``de``, ``zh-CN``).
    save_folder : str
        Output folder (CSVs, ``prepare_report.json``,
        ``prepare_options.json``).
    languages : list of str or str
        Whisper codes or CV locales (``["de", "zh-CN", "sv"]``). A code
        uses its default locale folder (:func:`common_voice_locale`), or
        another folder of the same language if that one is missing; a
        region locale (``zh-TW``) uses exactly that folder.
    splits : sequence of str
        TSV names to convert (``train``, ``dev``, ``test``, ``validated``,
        ...).
    max_utterances, max_hours : number or dict, optional
        Caps per language and split, applied in file order: a number, a
        ``{language: number}`` mapping, or ``{split: number or {language:
        number}}``.
    max_duration : float
        Longer clips are skipped (Whisper sees at most 30 s).
    min_duration : float
        Shorter clips are skipped.
    csv_prefix : str
        Prefix of the output file names.
    skip_prep : bool
        Return the output paths without preparing anything.
    audio_check : str
        ``decode`` (default): every clip is decoded once, so corrupt,
        truncated and NaN audio is skipped and counted here instead of
        failing in training (6.3 s of CPU per 1,000 five-second 48 kHz
        mp3 clips). ``header``: headers only (0.2 s per 1,000 clips).
    max_chars_per_second : float, "auto" or None
        Skip rows whose transcript is implausibly long for the clip
        (``"auto"``: 30 characters/s, 15 for Chinese, Cantonese, Japanese).

    Returns
    -------
    dict
        ``{split: csv path}``.

    Raises
    ------
    PreparationError
        Missing folders/TSVs/columns, or no usable training rows.

    Example
    -------
    >>> prepare_common_voice("cv", "prep", ["de"], skip_prep=True)["train"]
    'prep/train.csv'
    """
    splits = parse_splits(splits)
    if skip_prep:
        return output_paths(save_folder, splits, csv_prefix)
    locales = {
        code: find_locale_folder(data_folder, request)
        for request, code in parse_languages(languages)
    }
    for locale in locales.values():
        _check_tsvs(os.path.join(data_folder, locale), splits)
    options = make_options(
        CORPUS,
        data_folder,
        locales,
        splits,
        csv_prefix,
        max_utterances=max_utterances,
        max_hours=max_hours,
        max_duration=max_duration,
        min_duration=min_duration,
        audio_check=audio_check,
        max_chars_per_second=max_chars_per_second,
    )

    def tsv(code, split):
        """Path of one locale's split TSV."""
        return os.path.join(data_folder, locales[code], f"{split}.tsv")

    def rows_for(code, split):
        """Rows of one locale's split TSV, clips resolved."""
        clips = os.path.join(data_folder, locales[code], "clips")
        return read_common_voice_tsv(tsv(code, split), clips)

    def make():
        """Collects every language and split (the preparation step)."""
        return collect_corpus(options, rows_for, tsv, lambda c: f"{c}_")

    tsvs = [tsv(code, split) for code in locales for split in splits]
    return run_preparation(
        CORPUS, save_folder, csv_prefix, options, make, {"hashed": tsvs}
    )


def _locale_folders(data_folder):
    return sorted(
        d
        for d in os.listdir(data_folder)
        if os.path.isdir(os.path.join(data_folder, d))
    )


def find_locale_folder(data_folder, language):
    """Name of the locale folder holding ``language``.

    Arguments
    ---------
    data_folder : str
        Common Voice release folder.
    language : str
        Whisper code or CV locale.

    Returns
    -------
    str
        Folder name, e.g. ``zh-CN``.

    Example
    -------
    >>> import os
    >>> release = str(getfixture("tmp_path"))
    >>> os.makedirs(os.path.join(release, "sv-SE"))
    >>> find_locale_folder(release, "sv")
    'sv-SE'
    """
    if not os.path.isdir(data_folder):
        raise PreparationError(
            f"Common Voice folder {data_folder} does not exist. Point "
            "data_folder at the release folder (e.g. cv-corpus-17.0-...)."
        )
    candidates = common_voice_locales(language)
    for locale in candidates:
        if os.path.isdir(os.path.join(data_folder, locale)):
            return locale
    present = _locale_folders(data_folder)
    code = canonical_language(language)
    # A code (not a region locale such as zh-TW) may use any folder of
    # the same language, e.g. zh-TW when only that one was downloaded.
    if candidates == common_voice_locales(code):
        for folder in present:
            if _folder_language(folder) == code:
                return folder
    raise PreparationError(
        f"No Common Voice folder for {language!r} in {data_folder} (looked "
        f"for {', '.join(candidates)}). Folders present: "
        f"{', '.join(present) or 'none'}. " + _layout_hint(data_folder, present)
    )


def _folder_language(folder):
    try:
        return canonical_language(folder)
    except UnknownLanguageError:
        return None


def _layout_hint(data_folder, present):
    releases = [d for d in present if d.startswith("cv-corpus")]
    if releases:
        return (
            f"data_folder looks like a download folder: use "
            f"{os.path.join(data_folder, releases[0])} instead."
        )
    return "Download the locale or drop it from the language list."


def _check_tsvs(locale_dir, splits):
    missing = [
        s
        for s in splits
        if not os.path.isfile(os.path.join(locale_dir, f"{s}.tsv"))
    ]
    if missing:
        have = sorted(f for f in os.listdir(locale_dir) if f.endswith(".tsv"))
        raise PreparationError(
            f"{locale_dir} has no {', '.join(s + '.tsv' for s in missing)}"
            f" (TSVs present: {', '.join(have) or 'none'}). Choose splits "
            "among the TSVs present."
        )


def read_common_voice_tsv(tsv_path, clips_dir):
    """Yield a Candidate or Rejected per row of a Common Voice TSV.

    Columns are found by name, so the v17+ schema (with ``sentence_id``)
    and older ones both work. Rows are read unquoted: CV text contains
    raw ``"`` characters.

    Arguments
    ---------
    tsv_path : str
        ``train.tsv`` etc.
    clips_dir : str
        The locale's ``clips`` folder.

    Yields
    ------
    Candidate or Rejected
        One per non-blank data row, in file order.

    Example
    -------
    >>> folder = getfixture("tmp_path")
    >>> tsv = folder / "train.tsv"
    >>> _ = tsv.write_text(
    ...     "client_id\\tpath\\tsentence\\nspk\\ta.mp3\\tHallo Welt\\nspk\\tb.mp3\\n",
    ...     encoding="utf-8",
    ... )
    >>> rows = list(read_common_voice_tsv(str(tsv), str(folder / "clips")))
    >>> rows[0].audio_relpath, rows[0].text, rows[1].reason
    ('a.mp3', 'Hallo Welt', 'malformed_row')
    """
    rows = iter_tsv(tsv_path)
    first = next(rows, None)
    if first is None:
        raise PreparationError(f"{tsv_path} is empty: it has no header.")
    header = first[1]
    col = {name: i for i, name in enumerate(header)}
    missing = [c for c in REQUIRED_COLUMNS if c not in col]
    if missing:
        raise PreparationError(
            f"{tsv_path} lacks column(s) {', '.join(missing)} (header: "
            f"{' '.join(header)}). Is this a Common Voice TSV?"
        )
    for line, fields in rows:
        where = f"{tsv_path}:{line}"
        if len(fields) != len(header):
            yield Rejected(
                where,
                MALFORMED_ROW,
                f"{len(fields)} columns, header has {len(header)}",
            )
            continue
        yield Candidate(
            where,
            clips_dir,
            fields[col["path"]],
            fields[col["client_id"]],
            fields[col["sentence"]],
        )
