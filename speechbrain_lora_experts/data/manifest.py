"""Shared machinery of the corpus preparers: manifests, caps, skips, reports.

Corpus modules (:mod:`.common_voice`, :mod:`.fleurs`) only know their
on-disk layout: they turn TSV rows into :class:`Candidate` s (or
:class:`Rejected` rows). Everything else is decided here, once:

* path safety (no ``..`` or absolute clip paths),
* duplicate IDs, empty transcripts, unreadable/zero-byte/missing audio,
  duration bounds, each a counted skip with a reason,
* deterministic caps (``max_utterances`` / ``max_hours``) in file order,
* the SpeechBrain CSV ``ID,duration,wav,spk_id,wrd,lang``, written
  atomically,
* ``<prefix>prepare_report.json`` (kept/skipped counts per language,
  split and reason) and ``<prefix>prepare_options.json`` (skip-if-done).

Authors
 * speechbrain-lora-experts developers 2026
"""

import collections
import csv
import io
import json
import logging
import math
import numbers
import os
import uuid
from dataclasses import dataclass, field

from speechbrain_lora_experts.data.audio import AudioError, audio_info
from speechbrain_lora_experts.languages import canonical_language

logger = logging.getLogger(__name__)

#: Columns of every manifest CSV, in order.
CSV_COLUMNS = ("ID", "duration", "wav", "spk_id", "wrd", "lang")

#: Bump when the CSV content for the same options would change.
FORMAT_VERSION = 1

# Skip reasons decided here (audio reasons come from data.audio).
MALFORMED_ROW = "malformed_row"
UNSAFE_PATH = "unsafe_path"
DUPLICATE_ID = "duplicate_id"
EMPTY_SENTENCE = "empty_sentence"
TOO_LONG = "too_long"
TOO_SHORT = "too_short"

# Individual skips logged per (language, split, reason); the rest only
# appear in the summary and the report.
_LOG_SKIPS_PER_REASON = 5

csv.field_size_limit(2**31 - 1)


class PreparationError(RuntimeError):
    """Data preparation cannot produce a usable manifest."""


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
    """

    where: str
    audio_root: str
    audio_relpath: str
    spk_id: str
    text: str


@dataclass
class Rejected:
    """A corpus row refused by the corpus parser (e.g. wrong column count)."""

    where: str
    reason: str
    detail: str


@dataclass
class SplitStats:
    """Counts of one language/split; serialised into the report."""

    language: str
    split: str
    source: str
    kept: int = 0
    seconds: float = 0.0
    skipped: collections.Counter = field(default_factory=collections.Counter)
    beyond_cap: int = 0

    def skip(self, reason, where, detail=""):
        """Count a skipped row; log the first few of each reason."""
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
        return {
            "source": self.source,
            "kept": self.kept,
            "hours": round(self.seconds / 3600, 6),
            "skipped": dict(sorted(self.skipped.items())),
            "skipped_total": sum(self.skipped.values()),
            "beyond_cap": self.beyond_cap,
        }

    def summary(self):
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
    """One manifest row."""

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

    Example
    -------
    >>> clean_transcript('  Er sagte: "Hallo"\\t  Welt. ')
    'Er sagte: "Hallo" Welt.'
    """
    return " ".join(text.split())


def safe_relpath(relpath):
    """Normalised relative path, or None if it could leave its folder.

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
    return {s: per_split for s in sorted(splits)}


def cap_for(spec, lang, split):
    """The cap of one language/split from a :func:`normalize_cap` result.

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
    """
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        try:
            for fields in reader:
                if fields:
                    yield reader.line_num, fields
        except UnicodeDecodeError as err:
            raise PreparationError(
                f"{path}:{reader.line_num + 1} is not valid UTF-8 ({err}). "
                "Re-download the file."
            ) from err


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

    Returns
    -------
    list of Utterance
    """
    seen_ids = set() if seen_ids is None else seen_ids
    max_seconds = None if max_hours is None else max_hours * 3600.0
    kept = []
    items = iter(items)
    for item in items:
        if max_utterances is not None and len(kept) >= max_utterances:
            stats.beyond_cap = 1 + sum(1 for _ in items)
            break
        if isinstance(item, Rejected):
            stats.skip(item.reason, item.where, item.detail)
            continue
        utt = _check_candidate(item, stats, id_prefix, seen_ids)
        if utt is None or not _duration_ok(
            utt, item, stats, max_duration, min_duration
        ):
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
        ``min_duration``.
    """
    splits = parse_splits(splits)
    for name in ("max_duration", "min_duration"):
        _check_cap_value(limits[name], name)
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
    }


def parse_splits(splits):
    """Split names as a list (a comma-separated string is accepted)."""
    if isinstance(splits, str):
        splits = splits.split(",")
    out = [str(s).strip() for s in splits if str(s).strip()]
    if not out or len(set(out)) != len(out):
        raise ValueError(f"splits must be distinct names, got {splits!r}")
    return out


def _check_candidate(item, stats, id_prefix, seen_ids):
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
    wav = os.path.abspath(os.path.join(item.audio_root, rel))
    try:
        duration, _, _ = audio_info(wav)
    except AudioError as err:
        stats.skip(err.reason, item.where, f"{err.detail}: {wav}")
        return None
    return Utterance(utt_id, duration, wav, item.spk_id, text, stats.language)


def _duration_ok(utt, item, stats, max_duration, min_duration):
    if max_duration is not None and utt.duration > max_duration:
        stats.skip(
            TOO_LONG, item.where, f"{utt.duration:.2f} s > {max_duration} s"
        )
        return False
    if min_duration and utt.duration < min_duration:
        stats.skip(
            TOO_SHORT, item.where, f"{utt.duration:.2f} s < {min_duration} s"
        )
        return False
    return True


# ----------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------
def atomic_write_text(path, text):
    """Write via a temp file in the same folder + rename (never partial).

    The temp name is unique per process and the file is created with the
    usual umask permissions (unlike ``tempfile.mkstemp``'s 0600).
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
    atomic_write_text(
        path, json.dumps(obj, indent=1, ensure_ascii=False, sort_keys=True)
    )


def write_manifest(path, utterances):
    """Write a SpeechBrain CSV (``ID,duration,wav,spk_id,wrd,lang``)."""
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
    """``{split: <save_folder>/<csv_prefix><split>.csv}``."""
    return {
        s: os.path.join(save_folder, f"{csv_prefix}{s}.csv") for s in splits
    }


def options_path(save_folder, csv_prefix=""):
    return os.path.join(save_folder, f"{csv_prefix}prepare_options.json")


def report_path(save_folder, csv_prefix=""):
    return os.path.join(save_folder, f"{csv_prefix}prepare_report.json")


def _json_roundtrip(obj):
    return json.loads(json.dumps(obj, sort_keys=True))


def already_prepared(save_folder, csv_prefix, options, paths):
    """True if the outputs exist and were made with the same options."""
    opt_file = options_path(save_folder, csv_prefix)
    needed = [opt_file, report_path(save_folder, csv_prefix)]
    if not all(os.path.isfile(p) for p in needed + list(paths.values())):
        return False
    try:
        with open(opt_file, encoding="utf-8") as f:
            previous = json.load(f)
    except (OSError, ValueError):
        return False
    return previous == _json_roundtrip(options)


def write_outputs(save_folder, csv_prefix, options, report, by_split):
    """Write report, then CSVs, then the options (the 'done' marker).

    The options file is removed first: a crash midway then forces a
    re-run instead of leaving new CSVs under old options, or the reverse.
    """
    opt_file = options_path(save_folder, csv_prefix)
    if os.path.exists(opt_file):
        os.remove(opt_file)
    atomic_write_json(report_path(save_folder, csv_prefix), report)
    paths = output_paths(save_folder, by_split, csv_prefix)
    for split, utts in by_split.items():
        write_manifest(paths[split], utts)
    atomic_write_json(opt_file, _json_roundtrip(options))
    return paths


def build_report(corpus, stats_list):
    """JSON report: ``languages -> lang -> split -> counts``, plus totals."""
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
    """Log the summary; warn on empty dev/test; error on empty train."""
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
    """Warn when the same utterance ID is in two splits (test leakage)."""
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


def run_preparation(corpus, save_folder, csv_prefix, options, make):
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
        with equal options are reused.
    make : callable
        ``make() -> (stats_list, {split: [Utterance]})``.

    Returns
    -------
    dict
        ``{split: csv path}``.
    """
    paths = output_paths(save_folder, options["splits"], csv_prefix)
    if already_prepared(save_folder, csv_prefix, options, paths):
        logger.info(
            "%s manifests in %s are up to date, skipping preparation.",
            corpus,
            save_folder,
        )
        return paths
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
    return write_outputs(save_folder, csv_prefix, options, report, by_split)


def load_report(save_folder, csv_prefix=""):
    """Read ``<prefix>prepare_report.json`` written by a preparer."""
    with open(report_path(save_folder, csv_prefix), encoding="utf-8") as f:
        return json.load(f)
