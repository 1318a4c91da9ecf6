"""FLEURS -> SpeechBrain CSV manifests (training or out-of-domain test).

Reads the Hugging Face ``google/fleurs`` layout::

    <data_folder>/data/<code>/{train,dev,test}.tsv       (no header)
    <data_folder>/data/<code>/audio/{split}.tar.gz       (<split>/<file>.wav)

TSV columns: id, file_name, raw_transcription, transcription,
characters, num_samples, gender. The archives are extracted (safely: no
member may leave the target folder, no links) into
``<save_folder>/fleurs_audio/<code>/<split>/``. Manifests have the same
columns as Common Voice ones; ``wrd`` is the raw transcription. FLEURS
repeats a sentence ``id`` for different recordings, so IDs use the audio
file name: ``<lang>_fleurs_<file stem>``. FLEURS publishes no speaker
ids: ``spk_id`` is the utterance ID.

Use ``csv_prefix="fleurs_"`` to write ``fleurs_test.csv`` next to the
Common Voice manifests.

Authors
 * speechbrain-lora-experts developers 2026
"""

import json
import logging
import os
import shutil
import tarfile
import zlib

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
    safe_relpath,
)
from speechbrain_lora_experts.languages import fleurs_code

logger = logging.getLogger(__name__)

CORPUS = "fleurs"
N_COLUMNS = 7
ID, FILE_NAME, RAW_TRANSCRIPTION = 0, 1, 2
AUDIO_DIR = "fleurs_audio"
_CHUNK = 1 << 20


class UnsafeArchiveError(PreparationError):
    """A tar member that would be written outside its target folder.

    Example
    -------
    >>> issubclass(UnsafeArchiveError, Exception)
    True
    """


def prepare_fleurs(
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
    """Write ``<save_folder>/<csv_prefix><split>.csv`` for FLEURS.

    Arguments
    ---------
    data_folder : str
        Folder holding ``data/<code>/`` (the google/fleurs repo); a folder
        holding ``<code>/`` directly is accepted too.
    save_folder : str
        Output folder (CSVs, extracted audio, report, options).
    languages : list of str or str
        Whisper codes or FLEURS codes (``["de", "cmn_hans_cn"]``).
    splits : sequence of str
        ``train``, ``dev``, ``test``.
    max_utterances, max_hours : number or dict, optional
        Caps in file order, as in
        :func:`~speechbrain_lora_experts.data.common_voice.prepare_common_voice`.
    max_duration, min_duration : float
        Duration bounds in seconds.
    csv_prefix : str
        Prefix of output file names, e.g. ``"fleurs_"``.
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

    Example
    -------
    >>> paths = prepare_fleurs(
    ...     "fleurs",
    ...     "prep",
    ...     ["de"],
    ...     ["test"],
    ...     csv_prefix="fleurs_",
    ...     skip_prep=True,
    ... )
    >>> paths
    {'test': 'prep/fleurs_test.csv'}
    """
    splits = parse_splits(splits)
    if skip_prep:
        return output_paths(save_folder, splits, csv_prefix)
    codes = {lang: fleurs_code(lang) for _, lang in parse_languages(languages)}
    dirs = {
        lang: find_fleurs_folder(data_folder, c) for lang, c in codes.items()
    }
    for lang in codes:
        _check_split_files(dirs[lang], splits)
    options = make_options(
        CORPUS,
        data_folder,
        codes,
        splits,
        csv_prefix,
        max_utterances=max_utterances,
        max_hours=max_hours,
        max_duration=max_duration,
        min_duration=min_duration,
        audio_check=audio_check,
        max_chars_per_second=max_chars_per_second,
    )
    audio_root = os.path.join(save_folder, AUDIO_DIR)

    def tsv(lang, split):
        """Path of one language's split TSV."""
        return os.path.join(dirs[lang], f"{split}.tsv")

    def rows_for(lang, split):
        """Rows of one split, its archive extracted first."""
        dest = os.path.join(audio_root, codes[lang])
        tar = os.path.join(dirs[lang], "audio", f"{split}.tar.gz")
        extract_archive(tar, dest, marker_name=f".{split}.extracted.json")
        return read_fleurs_tsv(
            tsv(lang, split), os.path.join(dest, split), f"{lang}_fleurs_"
        )

    def make():
        """Collects every language and split (the preparation step)."""
        return collect_corpus(options, rows_for, tsv, lambda c: f"{c}_fleurs_")

    inputs = {
        "hashed": [tsv(lang, split) for lang in codes for split in splits],
        "stamped": [
            os.path.join(dirs[lang], "audio", f"{split}.tar.gz")
            for lang in codes
            for split in splits
        ],
    }
    return run_preparation(
        CORPUS, save_folder, csv_prefix, options, make, inputs
    )


def find_fleurs_folder(data_folder, code):
    """``<data_folder>/data/<code>`` (or ``<data_folder>/<code>``).

    Arguments
    ---------
    data_folder : str
        The FLEURS root.
    code : str
        FLEURS config name (``de_de``).

    Returns
    -------
    str
        The language's folder.

    Example
    -------
    >>> import os
    >>> root = str(getfixture("tmp_path"))
    >>> os.makedirs(os.path.join(root, "data", "de_de"))
    >>> find_fleurs_folder(root, "de_de") == os.path.join(root, "data", "de_de")
    True
    """
    for folder in (
        os.path.join(data_folder, "data", code),
        os.path.join(data_folder, code),
    ):
        if os.path.isdir(folder):
            return folder
    data = os.path.join(data_folder, "data")
    root = data if os.path.isdir(data) else data_folder
    present = sorted(os.listdir(root)) if os.path.isdir(root) else []
    raise PreparationError(
        f"No FLEURS folder {code!r} under {root} (present: "
        f"{', '.join(present) or 'none'}). Point data_folder at the "
        "google/fleurs checkout (holding data/<code>/) or download the "
        f"{code} config."
    )


def _check_split_files(folder, splits):
    missing = []
    for split in splits:
        for rel in (f"{split}.tsv", os.path.join("audio", f"{split}.tar.gz")):
            if not os.path.isfile(os.path.join(folder, rel)):
                missing.append(rel)
    if missing:
        raise PreparationError(
            f"{folder} lacks {', '.join(missing)}. Download the missing "
            "files or choose other splits."
        )


def read_fleurs_tsv(tsv_path, audio_dir, spk_prefix=""):
    """Yield a Candidate or Rejected per row of a header-less FLEURS TSV.

    Arguments
    ---------
    tsv_path : str
        ``train.tsv`` etc. (7 columns, no header).
    audio_dir : str
        Folder holding the split's extracted wav files.
    spk_prefix : str
        FLEURS has no speaker ids: ``spk_id = spk_prefix + <file stem>``,
        i.e. one pseudo-speaker per recording.

    Yields
    ------
    Candidate or Rejected
        In file order.

    Example
    -------
    >>> folder = getfixture("tmp_path")
    >>> tsv = folder / "test.tsv"
    >>> _ = tsv.write_text(
    ...     "1\\ta.wav\\tHallo.\\thallo\\th a l l o |\\t16000\\tFEMALE\\nbad\\n"
    ... )
    >>> rows = list(read_fleurs_tsv(str(tsv), str(folder), "de_"))
    >>> rows[0].audio_relpath, rows[0].text, rows[1].reason
    ('a.wav', 'Hallo.', 'malformed_row')
    """
    for line, fields in iter_tsv(tsv_path):
        where = f"{tsv_path}:{line}"
        if len(fields) != N_COLUMNS:
            yield Rejected(
                where,
                MALFORMED_ROW,
                f"{len(fields)} columns, FLEURS has {N_COLUMNS}",
            )
            continue
        file_name = fields[FILE_NAME]
        stem = os.path.splitext(os.path.basename(file_name))[0]
        yield Candidate(
            where,
            audio_dir,
            file_name,
            spk_id=spk_prefix + stem,
            text=fields[RAW_TRANSCRIPTION],
        )


# ----------------------------------------------------------------------
# safe extraction
# ----------------------------------------------------------------------
def _archive_stamp(tar_path):
    st = os.stat(tar_path)
    return {
        "archive": os.path.abspath(tar_path),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
    }


def _checked_members(tar, tar_path):
    """All members, after refusing any that could escape or link."""
    members = tar.getmembers()
    for m in members:
        if m.isdir():
            rel = safe_relpath(m.name.rstrip("/")) if m.name != "." else "."
        elif m.isfile():
            rel = safe_relpath(m.name)
        else:
            rel = None
        if rel is None:
            kind = "link" if (m.issym() or m.islnk()) else "member"
            raise UnsafeArchiveError(
                f"Refusing to extract {tar_path}: {kind} {m.name!r} is "
                "not a plain file/folder inside the archive root (absolute "
                "path, '..', link or device). The archive is corrupt or "
                "tampered with: download it again."
            )
    return members


def _unreadable(tar_path, err):
    return PreparationError(
        f"Cannot read {tar_path} as a tar archive ({err}). Download it again."
    )


def _open_archive(tar_path):
    try:
        return tarfile.open(tar_path)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise _unreadable(tar_path, err) from err


def _extract_members(tar, members, dest):
    os.makedirs(dest, exist_ok=True)
    for m in members:
        target = os.path.join(dest, os.path.normpath(m.name))
        if m.isdir():
            os.makedirs(target, exist_ok=True)
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with tar.extractfile(m) as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out, _CHUNK)


def extract_archive(tar_path, dest, marker_name=".extracted.json"):
    """Extract a tar(.gz) into ``dest`` once, refusing unsafe members.

    Every member is checked before anything is written. A marker file in
    ``dest`` records the archive's path, size and mtime; a later call with
    the same archive does nothing.

    Arguments
    ---------
    tar_path : str
        Archive.
    dest : str
        Target folder (created).
    marker_name : str
        Marker file name inside ``dest`` (one per archive).

    Raises
    ------
    UnsafeArchiveError
        If a member is absolute, contains ``..`` that leaves ``dest``, or
        is a link/device.
    PreparationError
        If the file is not a readable tar archive.

    Example
    -------
    >>> import io, tempfile
    >>> def write_tar(path, names):
    ...     with tarfile.open(path, "w:gz") as tar:
    ...         for name in names:
    ...             info = tarfile.TarInfo(name)
    ...             info.size = 3
    ...             tar.addfile(info, io.BytesIO(b"wav"))
    >>> tmp = tempfile.mkdtemp()
    >>> tar_path = os.path.join(tmp, "test.tar.gz")
    >>> dest = os.path.join(tmp, "audio")
    >>> write_tar(tar_path, ["test/1.wav", "test/2.wav"])
    >>> extract_archive(tar_path, dest)
    >>> sorted(os.listdir(os.path.join(dest, "test")))
    ['1.wav', '2.wav']
    >>> os.remove(os.path.join(dest, "test", "1.wav"))
    >>> extract_archive(tar_path, dest)  # done before: nothing to do
    >>> sorted(os.listdir(os.path.join(dest, "test")))
    ['2.wav']
    >>> write_tar(tar_path, ["test/3.wav", "../evil.wav"])
    >>> extract_archive(tar_path, dest)
    Traceback (most recent call last):
    ...
    speechbrain_lora_experts.data.fleurs.UnsafeArchiveError: Refusing ...
    >>> sorted(os.listdir(os.path.join(dest, "test")))  # nothing written
    ['2.wav']
    >>> shutil.rmtree(tmp)
    """
    marker = os.path.join(dest, marker_name)
    stamp = _archive_stamp(tar_path)
    if os.path.isfile(marker):
        with open(marker, encoding="utf-8") as f:
            try:
                if json.load(f) == stamp:
                    return
            except ValueError:
                pass
        os.remove(marker)
    with _open_archive(tar_path) as tar:
        # getmembers() reads the whole archive: corruption shows up here,
        # before anything is written.
        try:
            members = _checked_members(tar, tar_path)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
            raise _unreadable(tar_path, err) from err
        logger.info("Extracting %s -> %s", tar_path, dest)
        _extract_members(tar, members, dest)
    with open(marker, "w", encoding="utf-8") as f:
        json.dump(stamp, f)
