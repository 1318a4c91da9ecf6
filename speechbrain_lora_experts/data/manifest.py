"""Shared machinery of the corpus preparers: manifests, caps, skips, reports.

Corpus modules (:mod:`.common_voice`, :mod:`.fleurs`) only know their
on-disk layout: they turn TSV rows into :class:`Candidate` s (or
:class:`Rejected` rows). Everything else is decided here, once:

* path safety (no ``..`` or absolute clip paths),
* duplicate IDs, empty transcripts (also after evaluation normalisation:
  ``"..."`` scores nothing), missing/zero-byte/undecodable audio, corrupt
  or truncated bodies and NaN samples (every clip is decoded once, see
  :func:`~speechbrain_lora_experts.data.audio.check_audio`), duration
  bounds and implausible speaking rates, each a counted skip with a
  reason,
* deterministic caps (``max_utterances`` / ``max_hours``) in file order,
* the SpeechBrain CSV ``ID,duration,wav,spk_id,wrd,lang``, written
  atomically,
* ``<prefix>prepare_report.json`` (kept/skipped counts per language,
  split and reason) and ``<prefix>prepare_options.json`` (skip-if-done:
  the options, a hash of every TSV, and the state of every clip looked
  at, so an edited TSV or a restored clip triggers a new preparation).

Authors
 * speechbrain-lora-experts developers 2026
"""

import codecs
import collections
import csv
import hashlib
import io
import json
import logging
import math
import numbers
import os
import uuid
from dataclasses import dataclass, field

from speechbrain_lora_experts.data.audio import (
    AudioError,
    audio_info,
    check_audio,
)
from speechbrain_lora_experts.languages import canonical_language
from speechbrain_lora_experts.text import normalize_for_eval

logger = logging.getLogger(__name__)

#: Columns of every manifest CSV, in order.
CSV_COLUMNS = ("ID", "duration", "wav", "spk_id", "wrd", "lang")

#: Bump when the CSV content for the same options would change.
FORMAT_VERSION = 2

#: How clips are checked: ``decode`` (whole file) or ``header`` only.
AUDIO_CHECKS = ("decode", "header")

# Characters per second (normalised text, spaces left out) above which a
# transcript cannot have been spoken in its clip: fast read speech stays
# near 20 letters/s, and 6-8 characters/s in Chinese and Japanese. Rates
# above these mean a truncated clip or a transcript of another clip.
_MAX_CHARS_PER_SECOND = 30.0
_MAX_CHARS_PER_SECOND_LOGOGRAPHIC = 15.0
_LOGOGRAPHIC = frozenset({"zh", "yue", "ja"})

# Skip reasons decided here (audio reasons come from data.audio).
MALFORMED_ROW = "malformed_row"
UNSAFE_PATH = "unsafe_path"
DUPLICATE_ID = "duplicate_id"
EMPTY_SENTENCE = "empty_sentence"
NOTHING_TO_SCORE = "empty_after_normalization"
TOO_LONG = "too_long"
TOO_SHORT = "too_short"
IMPLAUSIBLE_RATE = "implausible_speaking_rate"

# Individual skips logged per (language, split, reason); the rest only
# appear in the summary and the report.
_LOG_SKIPS_PER_REASON = 5

csv.field_size_limit(2**31 - 1)


class PreparationError(RuntimeError):
    """Data preparation cannot produce a usable manifest.

    Example
    -------
    >>> issubclass(PreparationError, RuntimeError)
    True
    """


@dataclass
class Candidate:
    """A well-formed corpus row, not yet checked against its audio.

    Attributes
    ----------
    where : str
        ``file:line`` for messages.
    audio_root : str
        Folder the audio path must stay inside.
    audio_relpath : str
        Audio path from the corpus metadata, relative to ``audio_root``.
    spk_id : str
        Speaker id.
    text : str
        Raw transcript.

    Example
    -------
    >>> row = Candidate("train.tsv:2", "clips", "a.mp3", "spk", "Hallo")
    >>> row.audio_relpath
    'a.mp3'
    """

    where: str
    audio_root: str
    audio_relpath: str
    spk_id: str
    text: str


@dataclass
class Rejected:
    """A corpus row refused by the corpus parser (e.g. wrong column count).

    Example
    -------
    >>> Rejected("train.tsv:3", "malformed_row", "2 columns").reason
    'malformed_row'
    """

    where: str
    reason: str
    detail: str


@dataclass
class SplitStats:
    """Counts of one language/split; serialised into the report.

    Example
    -------
    >>> stats = SplitStats("de", "train", "train.tsv")
    >>> stats.skip("too_long", "train.tsv:2")
    >>> stats.as_dict()["skipped"]
    {'too_long': 1}
    """

    language: str
    split: str
    source: str
    kept: int = 0
    seconds: float = 0.0
    skipped: collections.Counter = field(default_factory=collections.Counter)
    beyond_cap: int = 0
    # Clips whose audio was examined: path -> (size, mtime_ns) or None,
    # and the reason of those skipped for their audio or its duration.
    clips: dict = field(default_factory=dict)
    rejected_clips: dict = field(default_factory=dict)

    def skip(self, reason, where, detail=""):
        """Count a skipped row; log the first few of each reason.

        Arguments
        ---------
        reason : str
            Why the row is skipped (a key of the report, e.g. ``too_long``).
        where : str
            ``file:line`` of the row.
        detail : str
            More about the row, for the log.
        """
        self.skipped[reason] += 1
        n = self.skipped[reason]
        if n <= _LOG_SKIPS_PER_REASON:
            logger.warning(
                "%s/%s: skipping %s (%s)%s",
                self.language,
                self.split,
                where,
                reason,
                f": {detail}" if detail else "",
            )
        if n == _LOG_SKIPS_PER_REASON:
            logger.warning(
                "%s/%s: further '%s' skips are only counted (see report)",
                self.language,
                self.split,
                reason,
            )

    def as_dict(self):
        """The counts as a JSON-ready dict (the report's entry).

        Returns
        -------
        dict
            ``source, kept, hours, skipped, skipped_total, beyond_cap``.
        """
        return {
            "source": self.source,
            "kept": self.kept,
            "hours": round(self.seconds / 3600, 6),
            "skipped": dict(sorted(self.skipped.items())),
            "skipped_total": sum(self.skipped.values()),
            "beyond_cap": self.beyond_cap,
        }

    def summary(self):
        """One log line: kept, hours, skipped per reason, beyond cap.

        Returns
        -------
        str
            The line.
        """
        reasons = ", ".join(f"{r}={n}" for r, n in sorted(self.skipped.items()))
        return (
            f"{self.language}/{self.split}: kept {self.kept} "
            f"({self.seconds / 3600:.3f} h), skipped "
            f"{sum(self.skipped.values())}"
            + (f" ({reasons})" if reasons else "")
            + f", beyond cap {self.beyond_cap}  [{self.source}]"
        )


@dataclass
class Utterance:
    """One manifest row.

    Example
    -------
    >>> Utterance("de_1", 2.5, "/c/a.wav", "spk", "Hallo", "de").lang
    'de'
    """

    ID: str
    duration: float
    wav: str
    spk_id: str
    wrd: str
    lang: str


# ----------------------------------------------------------------------
# small pure helpers
# ----------------------------------------------------------------------
def clean_transcript(text):
    """Strip and collapse internal whitespace; casing/punctuation kept.

    Arguments
    ---------
    text : str
        A transcript.

    Returns
    -------
    str
        The transcript, whitespace collapsed.

    Example
    -------
    >>> clean_transcript('  Er sagte: "Hallo"\\t  Welt. ')
    'Er sagte: "Hallo" Welt.'
    """
    return " ".join(text.split())


def safe_relpath(relpath):
    """Normalised relative path, or None if it could leave its folder.

    Arguments
    ---------
    relpath : str
        A path from corpus metadata.

    Returns
    -------
    str or None
        The normalised path, or None when absolute, empty, with
        backslashes or leaving its folder.

    Example
    -------
    >>> safe_relpath("a/b.mp3"), safe_relpath("../x.mp3")
    ('a/b.mp3', None)
    >>> safe_relpath("/etc/passwd"), safe_relpath("a/../../b")
    (None, None)
    """
    if not relpath or os.path.isabs(relpath) or "\\" in relpath:
        return None
    norm = os.path.normpath(relpath)
    if norm == "." or norm == ".." or norm.startswith(".." + os.sep):
        return None
    return norm


def parse_languages(languages):
    """Requested languages -> list of ``(request, canonical code)``.

    Accepts a list or a comma-separated string. Two requests meaning the
    same language are an error: per-language caps, IDs and reports are
    keyed by the canonical code.

    Arguments
    ---------
    languages : list of str or str
        Requested languages (codes, locales or names).

    Returns
    -------
    list of tuple
        ``(request, canonical Whisper code)`` per language, in order.

    Example
    -------
    >>> parse_languages("de, zh-CN")
    [('de', 'de'), ('zh-CN', 'zh')]
    """
    if isinstance(languages, str):
        languages = [x for x in languages.split(",")]
    requests = [str(x).strip() for x in languages if str(x).strip()]
    if not requests:
        raise ValueError("No languages requested: pass e.g. ['de', 'zh'].")
    out, seen = [], {}
    for request in requests:
        code = canonical_language(request)
        if code in seen:
            raise ValueError(
                f"Languages {seen[code]!r} and {request!r} both mean "
                f"{code!r}; request each language once."
            )
        seen[code] = request
        out.append((request, code))
    return out


def _check_cap_value(value, name):
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or value < 0
        or math.isnan(value)
    ):
        raise ValueError(f"{name} must be a number >= 0 or None, not {value!r}")
    return value


def _normalize_language_caps(spec, name):
    if not hasattr(spec, "items"):
        return _check_cap_value(spec, name)
    out = {}
    for key, value in spec.items():
        if hasattr(value, "items"):
            raise ValueError(
                f"{name}: unexpected mapping under {key!r}. Use a number, "
                "{language: number} or {split: number or {language: "
                "number}}."
            )
        out[canonical_language(str(key))] = _check_cap_value(
            value, f"{name}[{key!r}]"
        )
    return dict(sorted(out.items()))


def normalize_cap(spec, name, splits):
    """Validate a cap and expand it to ``{split: number | {lang: number}}``.

    ``spec`` is None (no cap), a number (each language, each split), a
    mapping language -> number (each split), or a mapping split -> (number
    or language mapping), e.g. ``{"train": 1000, "test": {"de": 50}}``.
    Splits/languages not named are not capped. The result is JSON-ready
    and canonical, so equal caps compare equal in the options file.

    Arguments
    ---------
    spec : None, number or dict
        The cap as given.
    name : str
        Its option name, for messages.
    splits : list of str
        The requested splits.

    Returns
    -------
    dict or None
        ``{split: number or {language: number}}``.

    Example
    -------
    >>> normalize_cap({"zh-CN": 10, "sv-SE": 5}, "cap", ["train"])
    {'train': {'sv': 5, 'zh': 10}}
    >>> normalize_cap({"test": 3}, "cap", ["train", "test"])
    {'test': 3, 'train': None}
    """
    splits = [str(s) for s in splits]
    if hasattr(spec, "items") and spec and all(k in splits for k in spec):
        return {
            s: _normalize_language_caps(spec.get(s), f"{name}[{s!r}]")
            for s in sorted(splits)
        }
    per_split = _normalize_language_caps(spec, name)
    if per_split is None:
        return None
    return dict.fromkeys(sorted(splits), per_split)


def cap_for(spec, lang, split):
    """The cap of one language/split from a :func:`normalize_cap` result.

    Arguments
    ---------
    spec : dict or None
        A :func:`normalize_cap` result.
    lang : str
        Canonical language code.
    split : str
        Split name.

    Returns
    -------
    number or None
        The cap, None when uncapped.

    Example
    -------
    >>> cap_for({"train": {"de": 3}, "dev": 7}, "de", "train")
    3
    >>> cap_for({"train": {"de": 3}, "dev": 7}, "fr", "dev")
    7
    """
    if spec is None:
        return None
    value = spec.get(split)
    return value.get(lang) if hasattr(value, "items") else value


# ----------------------------------------------------------------------
# TSV reading
# ----------------------------------------------------------------------
def iter_tsv(path):
    """Yield ``(line_number, fields)`` of an unquoted TSV, lazily.

    Fields are split on tabs only: Common Voice and FLEURS text contains
    raw ``"`` characters that are data, not quotes. Blank lines are
    dropped. Rows are streamed so that a capped run over a huge TSV does
    not hold it in memory.

    Raises
    ------
    PreparationError
        If the file is not UTF-8, naming the first bad line.

    Arguments
    ---------
    path : str
        The TSV file.

    Yields
    ------
    tuple
        ``(line number from 1, list of fields)`` per non-blank line.

    Example
    -------
    >>> folder = str(getfixture("tmp_path"))
    >>> path = folder + "/x.tsv"
    >>> _ = open(path, "w", encoding="utf-8").write('a\\tb\\n\\nc\\t"d\\n')
    >>> list(iter_tsv(path))
    [(1, ['a', 'b']), (3, ['c', '"d'])]
    """
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        try:
            for fields in reader:
                if fields:
                    yield reader.line_num, fields
        except UnicodeDecodeError as err:
            # The decoder reads ahead in chunks, so the reader's line
            # number is the last line it finished, not the bad one.
            line, column = first_invalid_utf8(path)
            raise PreparationError(
                f"{path}:{line} is not valid UTF-8 (byte {column} of that "
                f"line; {err.reason}). Re-download the file, or re-encode "
                "it as UTF-8."
            ) from err


def first_invalid_utf8(path):
    """``(line, byte column)``, both from 1, of the first non-UTF-8 line.

    UTF-8 never uses the newline byte inside a multi-byte character, so
    lines can be checked one by one.

    Arguments
    ---------
    path : str or pathlib.Path
        The file.

    Returns
    -------
    tuple or None
        ``(line, column)``, None when the file is valid UTF-8.

    Example
    -------
    >>> path = getfixture("tmp_path") / "x.tsv"
    >>> _ = path.write_bytes(b"a\\tb\\nc\\td\\nok \\xff\\n")
    >>> first_invalid_utf8(path)
    (3, 4)
    """
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as err:
                return number, err.start + 1
    return None, None


# ----------------------------------------------------------------------
# collecting rows
# ----------------------------------------------------------------------
def collect_utterances(
    items,
    stats,
    id_prefix,
    max_duration,
    min_duration=0.0,
    max_utterances=None,
    max_hours=None,
    seen_ids=None,
    audio_check="decode",
    max_chars_per_second="auto",
):
    """Validate corpus rows in file order and apply the caps.

    Arguments
    ---------
    items : iterable of Candidate or Rejected
        Rows in file order.
    stats : SplitStats
        Updated in place.
    id_prefix : str
        ``ID = id_prefix + <audio file stem>``.
    max_duration, min_duration : float
        Bounds in seconds (clips longer than Whisper's 30 s window cannot
        be trained on).
    max_utterances : int, optional
        Keep at most this many rows.
    max_hours : float, optional
        Keep rows while their total stays within this many hours; the
        first row that would exceed it ends the split (file order).
    seen_ids : set, optional
        IDs already used in this split (duplicates are skipped).
    audio_check : str
        ``decode``: decode every clip (corrupt, truncated and NaN audio
        are skipped; durations are the decoded ones). ``header``: read
        headers only (faster; such clips then fail when loaded).
    max_chars_per_second : float, "auto" or None
        Skip rows whose transcript is too long for their clip;
        ``"auto"`` uses a limit per script, None disables the check.

    Returns
    -------
    list of Utterance

    Example
    -------
    >>> stats = SplitStats("de", "train", "train.tsv")
    >>> collect_utterances(
    ...     [Rejected("train.tsv:2", "malformed_row", "")], stats, "de_", 30.0
    ... )
    []
    >>> dict(stats.skipped)
    {'malformed_row': 1}
    """
    seen_ids = set() if seen_ids is None else seen_ids
    max_seconds = None if max_hours is None else max_hours * 3600.0
    check = _audio_checker(audio_check)
    kept = []
    items = iter(items)
    for item in items:
        if max_utterances is not None and len(kept) >= max_utterances:
            stats.beyond_cap = 1 + sum(1 for _ in items)
            break
        if isinstance(item, Rejected):
            stats.skip(item.reason, item.where, item.detail)
            continue
        utt = _check_candidate(item, stats, id_prefix, seen_ids, check)
        if utt is None or not _duration_ok(
            utt, item, stats, max_duration, min_duration
        ):
            continue
        if not _rate_ok(utt, item, stats, max_chars_per_second):
            continue
        if max_seconds is not None and stats.seconds + utt.duration > (
            max_seconds + 1e-9
        ):
            stats.beyond_cap = 1 + sum(1 for _ in items)
            break
        kept.append(utt)
        stats.kept += 1
        stats.seconds += utt.duration
    return kept


def collect_corpus(options, rows_for, source_for, id_prefix_for):
    """Collect every requested language and split of a corpus.

    Arguments
    ---------
    options : dict
        From :func:`make_options` (languages, splits, caps, bounds).
    rows_for : callable
        ``(code, split) -> iterable of Candidate/Rejected`` in file order.
    source_for : callable
        ``(code, split) -> str`` naming the source file for the report.
    id_prefix_for : callable
        ``code -> str`` prefix of utterance IDs.

    Returns
    -------
    tuple
        ``(list of SplitStats, {split: [Utterance]})``; rows are ordered
        by requested language, then file order.

    Example
    -------
    >>> options = make_options(
    ...     "demo",
    ...     ".",
    ...     {"de": "de"},
    ...     ["train"],
    ...     "",
    ...     max_utterances=None,
    ...     max_hours=None,
    ...     max_duration=30.0,
    ...     min_duration=0.0,
    ... )
    >>> stats, by_split = collect_corpus(
    ...     options,
    ...     lambda code, split: [],
    ...     lambda code, split: "t.tsv",
    ...     lambda c: c,
    ... )
    >>> [(s.language, s.split, s.kept) for s in stats], by_split
    ([('de', 'train', 0)], {'train': []})
    """
    stats_list, by_split = [], {s: [] for s in options["splits"]}
    for code in options["languages"]:
        for split in options["splits"]:
            stats = SplitStats(code, split, source_for(code, split))
            by_split[split] += collect_utterances(
                rows_for(code, split),
                stats,
                id_prefix_for(code),
                max_duration=options["max_duration"],
                min_duration=options["min_duration"],
                max_utterances=cap_for(options["max_utterances"], code, split),
                max_hours=cap_for(options["max_hours"], code, split),
                audio_check=options.get("audio_check", "decode"),
                max_chars_per_second=options.get(
                    "max_chars_per_second", "auto"
                ),
            )
            stats_list.append(stats)
    return stats_list, by_split


def make_options(corpus, data_folder, sources, splits, csv_prefix, **limits):
    """Options dict that keys skip-if-done (JSON-ready, canonical).

    Arguments
    ---------
    corpus : str
        Corpus name.
    data_folder : str
        Corpus root.
    sources : dict
        ``{code: corpus-specific folder name}`` in requested order.
    splits : sequence of str
        Requested splits.
    csv_prefix : str
        Output file prefix.
    **limits
        ``max_utterances``, ``max_hours``, ``max_duration``,
        ``min_duration``; optional ``audio_check`` and
        ``max_chars_per_second`` (see :func:`collect_utterances`).

    Returns
    -------
    dict
        The options, as compared by :func:`outdated_reason`.

    Example
    -------
    >>> options = make_options(
    ...     "demo",
    ...     ".",
    ...     {"de": "de"},
    ...     "train,test",
    ...     "",
    ...     max_utterances=10,
    ...     max_hours=None,
    ...     max_duration=30.0,
    ...     min_duration=None,
    ... )
    >>> options["splits"], options["max_utterances"], options["audio_check"]
    (['train', 'test'], {'test': 10, 'train': 10}, 'decode')
    """
    splits = parse_splits(splits)
    for name in ("max_duration", "min_duration"):
        _check_cap_value(limits[name], name)
    audio_check = limits.get("audio_check", "decode")
    if audio_check not in AUDIO_CHECKS:
        raise ValueError(
            f"audio_check must be one of {AUDIO_CHECKS}, not {audio_check!r}"
        )
    rate = limits.get("max_chars_per_second", "auto")
    if rate != "auto":
        _check_cap_value(rate, "max_chars_per_second")
    return {
        "corpus": corpus,
        "format_version": FORMAT_VERSION,
        "data_folder": os.path.abspath(data_folder),
        "languages": dict(sources),
        "splits": splits,
        "csv_prefix": csv_prefix,
        "max_utterances": normalize_cap(
            limits["max_utterances"], "max_utterances", splits
        ),
        "max_hours": normalize_cap(limits["max_hours"], "max_hours", splits),
        "max_duration": limits["max_duration"],
        "min_duration": limits["min_duration"] or 0.0,
        "audio_check": audio_check,
        "max_chars_per_second": rate,
    }


def parse_splits(splits):
    """Split names as a list (a comma-separated string is accepted).

    Arguments
    ---------
    splits : sequence of str or str
        Split names.

    Returns
    -------
    list of str
        Distinct, stripped names.

    Example
    -------
    >>> parse_splits("train, dev")
    ['train', 'dev']
    """
    if isinstance(splits, str):
        splits = splits.split(",")
    out = [str(s).strip() for s in splits if str(s).strip()]
    if not out or len(set(out)) != len(out):
        raise ValueError(f"splits must be distinct names, got {splits!r}")
    return out


def _audio_checker(audio_check):
    if audio_check == "decode":
        return check_audio
    if audio_check == "header":
        return audio_info
    raise ValueError(
        f"audio_check must be one of {AUDIO_CHECKS}, not {audio_check!r}"
    )


def clip_stamp(path):
    """``[size, mtime_ns]`` of a file, or None when it does not exist.

    Arguments
    ---------
    path : str
        The file.

    Returns
    -------
    list or None
        ``[size, mtime_ns]``.

    Example
    -------
    >>> clip_stamp("/nonexistent/clip.mp3") is None
    True
    """
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _check_candidate(item, stats, id_prefix, seen_ids, check=check_audio):
    """Path safety, duplicate, transcript and audio checks of one row."""
    rel = safe_relpath(item.audio_relpath)
    if rel is None:
        stats.skip(
            UNSAFE_PATH,
            item.where,
            f"audio path {item.audio_relpath!r} is empty, absolute or "
            f"leaves {item.audio_root}",
        )
        return None
    utt_id = id_prefix + os.path.splitext(os.path.basename(rel))[0]
    if utt_id in seen_ids:
        stats.skip(DUPLICATE_ID, item.where, f"{utt_id} listed before")
        return None
    seen_ids.add(utt_id)
    text = clean_transcript(item.text)
    if not text:
        stats.skip(EMPTY_SENTENCE, item.where, "no transcript")
        return None
    if not normalize_for_eval(text, stats.language):
        stats.skip(
            NOTHING_TO_SCORE,
            item.where,
            f"transcript {text!r} is only punctuation/symbols: nothing to "
            "learn or score",
        )
        return None
    wav = os.path.abspath(os.path.join(item.audio_root, rel))
    # Stamped before decoding: a clip changed meanwhile is seen next time.
    stats.clips[wav] = clip_stamp(wav)
    try:
        duration, _, _ = check(wav)
    except AudioError as err:
        stats.rejected_clips[wav] = err.reason
        stats.skip(err.reason, item.where, f"{err.detail}: {wav}")
        return None
    return Utterance(utt_id, duration, wav, item.spk_id, text, stats.language)


def _duration_ok(utt, item, stats, max_duration, min_duration):
    reason = None
    if max_duration is not None and utt.duration > max_duration:
        reason = TOO_LONG
        detail = f"{utt.duration:.2f} s > {max_duration} s"
    elif min_duration and utt.duration < min_duration:
        reason = TOO_SHORT
        detail = f"{utt.duration:.2f} s < {min_duration} s"
    if reason is None:
        return True
    stats.rejected_clips[utt.wav] = reason
    stats.skip(reason, item.where, detail)
    return False


def speaking_rate_limit(lang):
    """Default plausible maximum of characters per second for a language.

    Arguments
    ---------
    lang : str
        Any name :func:`canonical_language` accepts.

    Returns
    -------
    float
        Characters per second.

    Example
    -------
    >>> speaking_rate_limit("de"), speaking_rate_limit("zh")
    (30.0, 15.0)
    """
    if canonical_language(lang) in _LOGOGRAPHIC:
        return _MAX_CHARS_PER_SECOND_LOGOGRAPHIC
    return _MAX_CHARS_PER_SECOND


def speaking_rate(text, lang, duration):
    """Characters per second of a transcript (normalised, no spaces).

    Arguments
    ---------
    text : str
        The transcript.
    lang : str
        Its language (normalisation and scoring unit).
    duration : float
        The clip's duration in seconds.

    Returns
    -------
    float
        Characters per second.

    Example
    -------
    >>> speaking_rate("Guten Morgen, Welt!", "de", 2.0)
    7.5
    """
    norm = normalize_for_eval(text, lang)
    return sum(not ch.isspace() for ch in norm) / duration


def _rate_ok(utt, item, stats, max_chars_per_second):
    if max_chars_per_second is None:
        return True
    limit = max_chars_per_second
    if limit == "auto":
        limit = speaking_rate_limit(utt.lang)
    rate = speaking_rate(utt.wrd, utt.lang, utt.duration)
    if rate <= limit:
        return True
    stats.rejected_clips[utt.wav] = IMPLAUSIBLE_RATE
    stats.skip(
        IMPLAUSIBLE_RATE,
        item.where,
        f"{rate:.1f} characters/s in {utt.duration:.2f} s > {limit:g}/s "
        f"for {utt.lang}: truncated audio or a transcript of another clip",
    )
    return False


# ----------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------
def atomic_write_text(path, text):
    """Write via a temp file in the same folder + rename (never partial).

    The temp name is unique per process and the file is created with the
    usual umask permissions (unlike ``tempfile.mkstemp``'s 0600).

    Arguments
    ---------
    path : str
        Destination file.
    text : str
        UTF-8 content.

    Example
    -------
    >>> folder = str(getfixture("tmp_path"))
    >>> atomic_write_text(folder + "/a.txt", "hallo")
    >>> open(folder + "/a.txt", encoding="utf-8").read()
    'hallo'
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(
        folder,
        f".tmp-{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}",
    )
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_json(path, obj):
    """Writes ``obj`` as sorted, indented JSON, atomically.

    A reader never sees a half-written file: the preparation reports and
    option files decide whether data is prepared again.

    Arguments
    ---------
    path : str
        Destination file.
    obj : object
        JSON-serialisable value.

    Example
    -------
    >>> import json, os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.json")
    >>> atomic_write_json(path, {"b": 1, "a": "ä"})
    >>> json.load(open(path, encoding="utf-8"))
    {'a': 'ä', 'b': 1}
    """
    atomic_write_text(
        path, json.dumps(obj, indent=1, ensure_ascii=False, sort_keys=True)
    )


def write_manifest(path, utterances):
    """Write a SpeechBrain CSV (``ID,duration,wav,spk_id,wrd,lang``).

    Arguments
    ---------
    path : str
        Destination CSV.
    utterances : list of Utterance
        The rows.

    Example
    -------
    >>> folder = str(getfixture("tmp_path"))
    >>> utt = Utterance("de_1", 2.5, "/c/a.wav", "spk", "Hallo", "de")
    >>> write_manifest(folder + "/train.csv", [utt])
    >>> print(open(folder + "/train.csv", encoding="utf-8").read().strip())
    ID,duration,wav,spk_id,wrd,lang
    de_1,2.500,/c/a.wav,spk,Hallo,de
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for u in utterances:
        writer.writerow(
            [u.ID, f"{u.duration:.3f}", u.wav, u.spk_id, u.wrd, u.lang]
        )
    atomic_write_text(path, buf.getvalue())


class KeepUnknownVariables(dict):
    """``replacements`` for SpeechBrain's ``load_data_csv`` that leaves
    unknown ``$name`` text alone.

    SpeechBrain substitutes ``$word`` in every CSV field and raises
    KeyError for names it was not given, so a transcript such as
    ``"It costs $5."`` breaks loading. Pass
    ``replacements=KeepUnknownVariables(data_root=...)`` to
    ``DynamicItemDataset.from_csv`` to load such manifests.

    Example
    -------
    >>> KeepUnknownVariables(a="x")["a"], KeepUnknownVariables()["5"]
    ('x', '$5')
    """

    def __missing__(self, key):
        return "$" + key


# ----------------------------------------------------------------------
# the preparation driver
# ----------------------------------------------------------------------
def output_paths(save_folder, splits, csv_prefix=""):
    """``{split: <save_folder>/<csv_prefix><split>.csv}``.

    Arguments
    ---------
    save_folder : str
        The preparation's output folder.
    splits : iterable of str
        Split names.
    csv_prefix : str
        Prefix of the file names.

    Returns
    -------
    dict
        ``{split: csv path}``.

    Example
    -------
    >>> output_paths("prep", ["train"], "fleurs_")
    {'train': 'prep/fleurs_train.csv'}
    """
    return {
        s: os.path.join(save_folder, f"{csv_prefix}{s}.csv") for s in splits
    }


def options_path(save_folder, csv_prefix=""):
    """Where a preparation records the options it ran with.

    Arguments
    ---------
    save_folder : str
        The preparation's output folder.
    csv_prefix : str
        Prefix of the CSVs (e.g. ``fleurs_`` for an out-of-domain test).

    Returns
    -------
    str
        ``<save_folder>/<csv_prefix>prepare_options.json``.

    Example
    -------
    >>> options_path("prep", "fleurs_")
    'prep/fleurs_prepare_options.json'
    """
    return os.path.join(save_folder, f"{csv_prefix}prepare_options.json")


def report_path(save_folder, csv_prefix=""):
    """Where a preparation writes its report (kept and skipped rows).

    Arguments
    ---------
    save_folder : str
        The preparation's output folder.
    csv_prefix : str
        Prefix of the CSVs (e.g. ``fleurs_`` for an out-of-domain test).

    Returns
    -------
    str
        ``<save_folder>/<csv_prefix>prepare_report.json``.

    Example
    -------
    >>> report_path("prep")
    'prep/prepare_report.json'
    """
    return os.path.join(save_folder, f"{csv_prefix}prepare_report.json")


def _json_roundtrip(obj):
    return json.loads(json.dumps(obj, sort_keys=True))


def file_sha256(path):
    """Hex SHA-256 of a file's bytes (read in 1 MiB chunks).

    Arguments
    ---------
    path : str
        The file.

    Returns
    -------
    str
        The hex digest.

    Example
    -------
    >>> folder = str(getfixture("tmp_path"))
    >>> _ = open(folder + "/x", "wb").write(b"")
    >>> file_sha256(folder + "/x")[:12]
    'e3b0c44298fc'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def input_state(hashed=(), stamped=()):
    """What the corpus files are now: TSV hashes, archive stamps.

    Arguments
    ---------
    hashed : iterable of str
        Small files keyed by content (TSVs): any edit counts, even one
        that keeps size and modification time.
    stamped : iterable of str
        Large files keyed by size and modification time (archives).

    Returns
    -------
    dict
        JSON-ready ``{"sha256": {path: hex}, "stamps": {path: stamp}}``.

    Example
    -------
    >>> folder = str(getfixture("tmp_path"))
    >>> _ = open(folder + "/x.tsv", "wb").write(b"")
    >>> state = input_state(hashed=[folder + "/x.tsv"])
    >>> sorted(state), len(state["sha256"])
    (['sha256', 'stamps'], 1)
    """
    return {
        "sha256": {os.path.abspath(p): file_sha256(p) for p in hashed},
        "stamps": {os.path.abspath(p): clip_stamp(p) for p in stamped},
    }


def clips_state(stats_list, by_split):
    """What the clips looked at were: the record skip-if-done compares.

    Kept clips are summarised by one digest (their paths are in the
    manifests); clips skipped for their audio or duration are listed,
    so that restoring one re-runs the preparation and names it.

    Arguments
    ---------
    stats_list : list of SplitStats
        One entry per language and split.
    by_split : dict
        ``{split: [Utterance]}`` kept.

    Returns
    -------
    dict
        ``kept`` (count), ``kept_digest``, ``rejected`` (clip -> reason and
        stamp).

    Example
    -------
    >>> clips_state([], {})["kept"]
    0
    """
    stamps, rejected = {}, {}
    for st in stats_list:
        stamps.update(st.clips)
        for wav, reason in st.rejected_clips.items():
            rejected[wav] = {"reason": reason, "stamp": st.clips.get(wav)}
    wavs = [u.wav for split in sorted(by_split) for u in by_split[split]]
    return {
        "kept": len(wavs),
        "kept_digest": _stamps_digest(wavs, stamps),
        "rejected": dict(sorted(rejected.items())),
    }


def _stamps_digest(wavs, stamps=None):
    digest = hashlib.sha256()
    for wav in wavs:
        stamp = stamps[wav] if stamps and wav in stamps else clip_stamp(wav)
        digest.update(f"{wav}\t{stamp}\n".encode())
    return digest.hexdigest()


def _manifest_wavs(paths):
    wavs = []
    for split in sorted(paths):
        with open(paths[split], encoding="utf-8", newline="") as f:
            wavs += [row["wav"] for row in csv.DictReader(f)]
    return wavs


def outdated_reason(save_folder, csv_prefix, options, paths, inputs):
    """Why the outputs cannot be reused (a sentence), or None.

    Reused only when every output exists, the options are equal, every
    TSV has the same content, and every clip looked at last time (kept or
    skipped) is unchanged.

    Arguments
    ---------
    save_folder : str
        The preparation's output folder.
    csv_prefix : str
        Prefix of the output file names.
    options : dict
        From :func:`make_options`.
    paths : dict
        ``{split: csv path}``.
    inputs : dict
        From :func:`input_state`.

    Returns
    -------
    str or None
        The reason, None when the outputs can be reused.

    Example
    -------
    >>> folder = str(getfixture("tmp_path"))
    >>> outdated_reason(folder, "", {}, {}, input_state()).endswith(
    ...     "prepare_options.json does not exist"
    ... )
    True
    """
    opt_file = options_path(save_folder, csv_prefix)
    needed = [opt_file, report_path(save_folder, csv_prefix)]
    absent = [p for p in needed + list(paths.values()) if not os.path.isfile(p)]
    if absent:
        return f"{absent[0]} does not exist"
    try:
        with open(opt_file, encoding="utf-8") as f:
            previous = json.load(f)
        recorded_inputs = previous.pop("inputs")
        recorded_clips = previous.pop("clips")
    except (OSError, ValueError, KeyError, AttributeError):
        return f"{opt_file} is unreadable or from an older version"
    if previous != _json_roundtrip(options):
        return "the options changed"
    for kind in ("sha256", "stamps"):
        for path, value in inputs[kind].items():
            if recorded_inputs[kind].get(path) != value:
                return f"{path} changed"
    for wav, was in recorded_clips["rejected"].items():
        if clip_stamp(wav) != was["stamp"]:
            return f"{wav} (skipped as {was['reason']}) changed"
    try:
        wavs = _manifest_wavs(paths)
    except (OSError, csv.Error, KeyError):
        return "a manifest is unreadable"
    if (
        len(wavs) != recorded_clips["kept"]
        or _stamps_digest(wavs) != recorded_clips["kept_digest"]
    ):
        return "a clip used by the manifests changed"
    return None


def already_prepared(save_folder, csv_prefix, options, paths, inputs=None):
    """True if the outputs exist and match the options and the corpus.

    Arguments
    ---------
    save_folder : str
        The preparation's output folder.
    csv_prefix : str
        Prefix of the output file names.
    options : dict
        From :func:`make_options`.
    paths : dict
        ``{split: csv path}``.
    inputs : dict, optional
        From :func:`input_state`.

    Returns
    -------
    bool
        Whether :func:`outdated_reason` finds nothing.

    Example
    -------
    >>> folder = str(getfixture("tmp_path"))
    >>> already_prepared(folder, "", {}, {})
    False
    """
    inputs = inputs or input_state()
    return (
        outdated_reason(save_folder, csv_prefix, options, paths, inputs) is None
    )


def write_outputs(
    save_folder, csv_prefix, options, report, by_split, record=None
):
    """Write report, then CSVs, then the options (the 'done' marker).

    The options file is removed first: a crash midway then forces a
    re-run instead of leaving new CSVs under old options, or the reverse.
    ``record`` (the corpus and clip state) is stored beside the options.

    Arguments
    ---------
    save_folder : str
        The preparation's output folder.
    csv_prefix : str
        Prefix of the output file names.
    options : dict
        From :func:`make_options`.
    report : dict
        From :func:`build_report`.
    by_split : dict
        ``{split: [Utterance]}``.
    record : dict, optional
        Corpus and clip state stored with the options.

    Returns
    -------
    dict
        ``{split: csv path}``.

    Example
    -------
    >>> folder = str(getfixture("tmp_path"))
    >>> paths = write_outputs(folder, "", {"corpus": "demo"}, {}, {"train": []})
    >>> sorted(os.listdir(folder))
    ['prepare_options.json', 'prepare_report.json', 'train.csv']
    """
    opt_file = options_path(save_folder, csv_prefix)
    if os.path.exists(opt_file):
        os.remove(opt_file)
    atomic_write_json(report_path(save_folder, csv_prefix), report)
    paths = output_paths(save_folder, by_split, csv_prefix)
    for split, utts in by_split.items():
        write_manifest(paths[split], utts)
    done = _json_roundtrip(options)
    done.update(record or {})
    atomic_write_json(opt_file, done)
    return paths


def build_report(corpus, stats_list):
    """JSON report: ``languages -> lang -> split -> counts``, plus totals.

    Arguments
    ---------
    corpus : str
        Corpus name.
    stats_list : list of SplitStats
        One entry per language and split.

    Returns
    -------
    dict
        ``corpus``, ``languages`` and ``totals`` per split.

    Example
    -------
    >>> stats = SplitStats("de", "train", "train.tsv", kept=2, seconds=7200.0)
    >>> build_report("demo", [stats])["totals"]["train"]
    {'kept': 2, 'hours': 2.0, 'skipped_total': 0}
    """
    languages, totals = {}, collections.OrderedDict()
    for st in stats_list:
        languages.setdefault(st.language, {})[st.split] = st.as_dict()
        tot = totals.setdefault(
            st.split, {"kept": 0, "hours": 0.0, "skipped_total": 0}
        )
        tot["kept"] += st.kept
        tot["hours"] = round(tot["hours"] + st.seconds / 3600, 6)
        tot["skipped_total"] += sum(st.skipped.values())
    return {"corpus": corpus, "languages": languages, "totals": totals}


def check_and_log(stats_list, report_file):
    """Log the summary; warn on empty dev/test; error on empty train.

    Arguments
    ---------
    stats_list : list of SplitStats
        One entry per language and split.
    report_file : str
        The report, named in the error.

    Example
    -------
    >>> stats = SplitStats("de", "train", "train.tsv")
    >>> try:
    ...     check_and_log([stats], "prepare_report.json")
    ... except PreparationError as e:
    ...     print(str(e)[:34])
    No usable training rows for ['de']
    """
    empty_train = []
    for st in stats_list:
        logger.info("%s", st.summary())
        if st.kept:
            continue
        if st.split == "train":
            empty_train.append(st)
        else:
            logger.warning(
                "%s/%s has no usable rows (%s).",
                st.language,
                st.split,
                st.source,
            )
    if empty_train:
        detail = "; ".join(st.summary() for st in empty_train)
        raise PreparationError(
            f"No usable training rows for {[s.language for s in empty_train]}"
            f": {detail}. See {report_file} for the skip reasons; fix the "
            "corpus path/files or drop the language."
        )


def warn_cross_split_overlap(by_split):
    """Warn when the same utterance ID is in two splits (test leakage).

    Arguments
    ---------
    by_split : dict
        ``{split: [Utterance]}``.

    Example
    -------
    >>> utt = Utterance("de_1", 2.5, "/c/a.wav", "spk", "Hallo", "de")
    >>> warn_cross_split_overlap({"train": [utt], "test": []})
    """
    names = list(by_split)
    ids = {s: {u.ID for u in by_split[s]} for s in names}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            common = ids[a] & ids[b]
            if common:
                logger.warning(
                    "%d utterances are in both %s and %s, e.g. %s",
                    len(common),
                    a,
                    b,
                    min(common),
                )


def run_preparation(
    corpus, save_folder, csv_prefix, options, make, inputs=None
):
    """Skip-if-done wrapper shared by the corpus preparers.

    Arguments
    ---------
    corpus : str
        Corpus name for the report.
    save_folder : str
        Output folder.
    csv_prefix : str
        Prefix of every output file name.
    options : dict
        JSON-serialisable options; must contain ``splits``. Outputs made
        with equal options, from unchanged inputs, are reused.
    make : callable
        ``make() -> (stats_list, {split: [Utterance]})``.
    inputs : dict, optional
        ``{"hashed": [TSV paths], "stamped": [archive paths]}``: corpus
        files whose change makes the outputs outdated.

    Returns
    -------
    dict
        ``{split: csv path}``.

    Example
    -------
    >>> folder = str(getfixture("tmp_path"))
    >>> options = make_options(
    ...     "demo",
    ...     ".",
    ...     {"de": "de"},
    ...     ["train"],
    ...     "",
    ...     max_utterances=None,
    ...     max_hours=None,
    ...     max_duration=30.0,
    ...     min_duration=0.0,
    ... )
    >>> utt = Utterance("de_1", 2.5, "/c/a.wav", "spk", "Hallo", "de")
    >>> stats = SplitStats("de", "train", "train.tsv", kept=1, seconds=2.5)
    >>> paths = run_preparation(
    ...     "demo", folder, "", options, lambda: ([stats], {"train": [utt]})
    ... )
    >>> load_report(folder)["totals"]["train"]["kept"]
    1
    """
    inputs = inputs or {}
    paths = output_paths(save_folder, options["splits"], csv_prefix)
    state = input_state(inputs.get("hashed", ()), inputs.get("stamped", ()))
    reason = outdated_reason(save_folder, csv_prefix, options, paths, state)
    if reason is None:
        logger.info(
            "%s manifests in %s are up to date, skipping preparation.",
            corpus,
            save_folder,
        )
        return paths
    if os.path.exists(options_path(save_folder, csv_prefix)):
        logger.info("Preparing %s again: %s.", corpus, reason)
    os.makedirs(save_folder, exist_ok=True)
    stats_list, by_split = make()
    report = build_report(corpus, stats_list)
    report_file = report_path(save_folder, csv_prefix)
    try:
        check_and_log(stats_list, report_file)
    except PreparationError:
        # Keep the report for diagnosis, but never let old outputs pass
        # as "done" next to a report that describes this failed run.
        opt_file = options_path(save_folder, csv_prefix)
        if os.path.exists(opt_file):
            os.remove(opt_file)
        atomic_write_json(report_file, report)
        raise
    warn_cross_split_overlap(by_split)
    record = {"inputs": state, "clips": clips_state(stats_list, by_split)}
    return write_outputs(
        save_folder, csv_prefix, options, report, by_split, record
    )


def load_report(save_folder, csv_prefix=""):
    """Read ``<prefix>prepare_report.json`` written by a preparer.

    Arguments
    ---------
    save_folder : str
        The preparation's output folder.
    csv_prefix : str
        Prefix of the output file names.

    Returns
    -------
    dict
        The report (see :func:`build_report`).

    Example
    -------
    >>> folder = str(getfixture("tmp_path"))
    >>> _ = write_outputs(folder, "", {}, {"corpus": "demo"}, {})
    >>> load_report(folder)
    {'corpus': 'demo'}
    """
    with open(report_path(save_folder, csv_prefix), encoding="utf-8") as f:
        return json.load(f)
