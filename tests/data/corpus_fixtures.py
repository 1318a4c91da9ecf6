"""Tiny Common Voice and FLEURS corpora written on the fly for tests.

Clips are synthetic tones/noise written with soundfile (mp3 48 kHz for
Common Voice, 16 kHz wav in tar.gz for FLEURS), so the corpora build in
well under a second without espeak/sox. Every writer takes explicit rows,
so a test states exactly what it expects; :func:`standard_cv_corpus` and
:func:`standard_fleurs_corpus` build the shared scenarios and return the
expected counts.

Authors
 * speechbrain-lora-experts developers 2026
"""

import io
import os
import tarfile
from dataclasses import dataclass

import numpy as np
import soundfile as sf

CV_SCHEMAS = {
    "v17": (
        "client_id path sentence_id sentence sentence_domain up_votes "
        "down_votes age gender accents variant locale segment"
    ).split(),
    "v13": (
        "client_id path sentence up_votes down_votes age gender accents "
        "variant locale segment"
    ).split(),
    "v10": (
        "client_id path sentence up_votes down_votes age gender accents "
        "locale segment"
    ).split(),
}


def signal(duration, sample_rate, channels=1, seed=0):
    """Tone plus a little noise, float32, shape [samples] or [samples, ch]."""
    rng = np.random.default_rng(seed)
    n = int(round(duration * sample_rate))
    t = np.arange(n) / sample_rate
    x = 0.2 * np.sin(2 * np.pi * (220 + 40 * seed) * t)
    x = x + 0.01 * rng.standard_normal(n)
    if channels > 1:
        x = np.stack([x * (0.5 + 0.5 * c) for c in range(channels)], axis=1)
    return x.astype("float32")


@dataclass
class Clip:
    """How to materialise one audio file.

    ``kind``: ``audio`` (decodable), ``zero`` (0 bytes), ``corrupt``
    (garbage bytes), ``missing`` (not written), ``corrupt_body`` (a valid
    header, random bytes after the first KiB), ``truncated`` (the first
    40 % of the file: the header still declares the full duration),
    ``nan`` (a float wav of NaN samples, whatever the extension),
    ``no_samples`` (a wav header without samples).
    """

    duration: float = 1.0
    sample_rate: int = 48000
    channels: int = 1
    kind: str = "audio"
    seed: int = 0


def write_clip(path, clip, fmt):
    """Write ``clip`` at ``path`` as ``fmt`` (``MP3`` or ``WAV``)."""
    if clip.kind == "missing":
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if clip.kind == "zero":
        open(path, "wb").close()
    elif clip.kind == "corrupt":
        with open(path, "wb") as f:
            f.write(b"this is not an mp3 file at all " * 64)
    elif clip.kind == "no_samples":
        sf.write(path, np.zeros(0, dtype="float32"), 16000, format="WAV")
    elif clip.kind == "nan":
        n = int(round(clip.duration * clip.sample_rate))
        data = np.full(n, np.nan, dtype="float32")
        sf.write(path, data, clip.sample_rate, format="WAV", subtype="FLOAT")
    elif clip.kind in ("corrupt_body", "truncated"):
        data = signal(clip.duration, clip.sample_rate, clip.channels, clip.seed)
        sf.write(path, data, clip.sample_rate, format=fmt)
        payload = open(path, "rb").read()
        if clip.kind == "truncated":
            payload = payload[: int(len(payload) * 0.4)]
        else:
            rng = np.random.default_rng(clip.seed)
            payload = payload[:1024] + rng.bytes(len(payload) - 1024)
        with open(path, "wb") as f:
            f.write(payload)
    else:
        data = signal(clip.duration, clip.sample_rate, clip.channels, clip.seed)
        subtype = "PCM_16" if fmt == "WAV" else None
        sf.write(path, data, clip.sample_rate, format=fmt, subtype=subtype)


# ----------------------------------------------------------------------
# Common Voice
# ----------------------------------------------------------------------
def cv_row(path, sentence, client_id="spk1", clip=None):
    """A TSV row spec: ``clip=None`` means a 1 s 48 kHz mono mp3."""
    return {
        "path": path,
        "sentence": sentence,
        "client_id": client_id,
        "clip": Clip() if clip is None else clip,
    }


def write_cv_locale(root, locale, splits, schema="v17"):
    """Write ``<root>/<locale>/{clips/, <split>.tsv}``.

    Arguments
    ---------
    root : path
        Release folder.
    locale : str
        Folder name (``de``, ``zh-CN``).
    splits : dict
        ``{split: [row]}``; a row is a :func:`cv_row` dict or a raw
        string written verbatim as one TSV line (malformed rows).
    schema : str
        ``v17``, ``v13`` or ``v10``.
    """
    cols = CV_SCHEMAS[schema]
    folder = os.path.join(str(root), locale)
    os.makedirs(os.path.join(folder, "clips"), exist_ok=True)
    for split, rows in splits.items():
        lines = ["\t".join(cols)]
        for i, row in enumerate(rows):
            if isinstance(row, str):
                lines.append(row)
                continue
            clip_path = os.path.join(folder, "clips", row["path"])
            safe = not (".." in row["path"] or os.path.isabs(row["path"]))
            if safe and not os.path.exists(clip_path):
                write_clip(clip_path, row["clip"], "MP3")
            values = {
                "client_id": row["client_id"],
                "path": row["path"],
                "sentence_id": f"sid{i}",
                "sentence": row["sentence"],
                "up_votes": "2",
                "down_votes": "0",
                "locale": locale,
            }
            lines.append("\t".join(values.get(c, "") for c in cols))
        with open(
            os.path.join(folder, f"{split}.tsv"), "w", encoding="utf-8"
        ) as f:
            f.write("\n".join(lines) + "\n")
    return folder


#: Expected outcome of :func:`standard_cv_corpus` (max_duration=30).
CV_EXPECTED = {
    "de": {
        "train": {
            "kept": 6,
            "skipped": {
                "duplicate_id": 1,
                "empty_sentence": 2,
                "malformed_row": 1,
                "missing_clip": 1,
                "too_long": 1,
                "unreadable_clip": 1,
                "unsafe_path": 2,
                "zero_byte_clip": 1,
            },
        },
        "dev": {"kept": 2, "skipped": {}},
        "test": {"kept": 2, "skipped": {}},
    },
    "zh": {
        "train": {"kept": 3, "skipped": {}},
        "dev": {"kept": 1, "skipped": {}},
        "test": {"kept": 1, "skipped": {}},
    },
    "sv": {
        "train": {"kept": 2, "skipped": {}},
        "dev": {"kept": 1, "skipped": {}},
        "test": {"kept": 1, "skipped": {}},
    },
}

#: Durations (s) of the kept German training clips, in file order.
DE_TRAIN_DURATIONS = [1.0, 1.25, 0.5, 2.0, 1.5, 0.75]


def standard_cv_corpus(root):
    """Common Voice release with de (v17), zh-CN (v17), sv-SE (v13).

    German train holds one row of every problem the preparer must skip
    (see :data:`CV_EXPECTED`), plus a 44.1 kHz clip and a stereo clip that
    must be kept. Returns the release folder.
    """
    d = DE_TRAIN_DURATIONS
    de_train = [
        cv_row("de_1.mp3", "Guten Morgen.", "a", Clip(d[0], seed=1)),
        cv_row(
            "de_2.mp3",
            '  Er sagte: "Hallo"   und  ging. ',
            "b",
            Clip(d[1], sample_rate=44100, seed=2),
        ),
        cv_row("de_3.mp3", "Zwei Kanäle hier.", "c", Clip(d[2], channels=2)),
        cv_row("de_zero.mp3", "Leere Datei.", "a", Clip(kind="zero")),
        cv_row("de_bad.mp3", "Kaputte Datei.", "a", Clip(kind="corrupt")),
        cv_row("de_gone.mp3", "Fehlende Datei.", "a", Clip(kind="missing")),
        cv_row("de_long.mp3", "Viel zu lang.", "b", Clip(31.0, 8000)),
        cv_row("de_empty.mp3", "", "b"),
        cv_row("de_blank.mp3", "   ", "b"),
        "spk9\tde_broken.mp3\tonly three columns",
        cv_row("../escape.mp3", "Ausbruch.", "c"),
        cv_row("/etc/abs.mp3", "Absolut.", "c"),
        cv_row("de_4.mp3", "Es kostet $5, sagt Müller.", "c", Clip(d[3])),
        cv_row("de_1.mp3", "Guten Morgen.", "a"),  # duplicate listing
        cv_row("de_5.mp3", "Größe zählt.", "d", Clip(d[4], seed=3)),
        cv_row("de_6.mp3", "Letzter Satz!", "d", Clip(d[5], seed=4)),
    ]
    root = str(root)
    write_cv_locale(
        root,
        "de",
        {
            "train": de_train,
            "dev": [
                cv_row("de_d1.mp3", "Hallo Welt.", "e"),
                cv_row("de_d2.mp3", "Noch einer.", "e"),
            ],
            "test": [
                cv_row("de_t1.mp3", "Test eins.", "f"),
                cv_row("de_t2.mp3", "Test zwei.", "f"),
            ],
        },
    )
    zh = {
        "train": [
            cv_row(f"zh_{i}.mp3", s, "z1")
            for i, s in enumerate(["你好，世界。", "今天天气很好。", "谢谢！"])
        ],
        "dev": [cv_row("zh_d.mp3", "我们走吧。", "z2")],
        "test": [cv_row("zh_t.mp3", "再见。", "z3")],
    }
    write_cv_locale(root, "zh-CN", zh)
    sv = {
        "train": [
            cv_row("sv_1.mp3", "Hej på dig.", "s1"),
            cv_row("sv_2.mp3", "Två små åsnor.", "s1"),
        ],
        "dev": [cv_row("sv_d.mp3", "God morgon.", "s2")],
        "test": [cv_row("sv_t.mp3", "Hej då.", "s3")],
    }
    write_cv_locale(root, "sv-SE", sv, schema="v13")
    return root


# ----------------------------------------------------------------------
# FLEURS
# ----------------------------------------------------------------------
def fleurs_row(uid, file_name, raw, clip=None, gender="FEMALE", in_tar=True):
    """A FLEURS TSV row spec (``clip=None``: 1 s 16 kHz wav)."""
    return {
        "id": str(uid),
        "file_name": file_name,
        "raw": raw,
        "clip": Clip(sample_rate=16000) if clip is None else clip,
        "gender": gender,
        "in_tar": in_tar,
    }


def _wav_bytes(clip):
    buf = io.BytesIO()
    data = signal(clip.duration, clip.sample_rate, clip.channels, clip.seed)
    sf.write(buf, data, clip.sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue(), len(data)


def _add_bytes(tar, name, payload):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def write_fleurs_language(root, code, splits):
    """Write ``<root>/data/<code>/{<split>.tsv, audio/<split>.tar.gz}``.

    ``splits`` maps a split to rows (:func:`fleurs_row` dicts, or raw
    strings written verbatim as malformed lines).
    """
    folder = os.path.join(str(root), "data", code)
    os.makedirs(os.path.join(folder, "audio"), exist_ok=True)
    for split, rows in splits.items():
        lines = []
        tar_path = os.path.join(folder, "audio", f"{split}.tar.gz")
        with tarfile.open(tar_path, "w:gz") as tar:
            dir_info = tarfile.TarInfo(split)
            dir_info.type = tarfile.DIRTYPE
            tar.addfile(dir_info)
            for row in rows:
                if isinstance(row, str):
                    lines.append(row)
                    continue
                payload, n = _wav_bytes(row["clip"])
                if row["in_tar"]:
                    _add_bytes(tar, f"{split}/{row['file_name']}", payload)
                norm = row["raw"].lower()
                chars = " ".join(norm.replace(" ", "|"))
                lines.append(
                    "\t".join(
                        [
                            row["id"],
                            row["file_name"],
                            row["raw"],
                            norm,
                            chars,
                            str(n),
                            row["gender"],
                        ]
                    )
                )
        with open(
            os.path.join(folder, f"{split}.tsv"), "w", encoding="utf-8"
        ) as f:
            f.write("\n".join(lines) + ("\n" if lines else ""))
    return folder


#: Expected outcome of :func:`standard_fleurs_corpus`.
FLEURS_EXPECTED = {
    "de": {
        "train": {
            "kept": 3,
            "skipped": {"malformed_row": 1, "missing_clip": 1, "too_long": 1},
        },
        "dev": {"kept": 1, "skipped": {}},
        "test": {"kept": 2, "skipped": {}},
    },
    "zh": {
        "train": {"kept": 2, "skipped": {}},
        "dev": {"kept": 1, "skipped": {}},
        "test": {"kept": 2, "skipped": {}},
    },
}


def standard_fleurs_corpus(root):
    """google/fleurs layout with de_de and cmn_hans_cn.

    Sentence ids repeat across recordings (as in FLEURS). German train has
    a malformed line, a row whose wav is not in the archive and a 31 s
    recording. Returns the root folder.
    """
    root = str(root)
    long_clip = Clip(31.0, 16000)
    write_fleurs_language(
        root,
        "de_de",
        {
            "train": [
                fleurs_row(7, "1001.wav", "Der Hund  bellt.", Clip(1.5, 16000)),
                fleurs_row(7, "1002.wav", "Der Hund bellt.", gender="MALE"),
                "8\t1003.wav\ttoo few columns",
                fleurs_row(9, "1004.wav", "Nicht im Archiv.", in_tar=False),
                fleurs_row(10, "1005.wav", "Sehr lang.", long_clip),
                fleurs_row(11, "1006.wav", '"Zitat" am Anfang.'),
            ],
            "dev": [fleurs_row(12, "2001.wav", "Guten Tag.")],
            "test": [
                fleurs_row(13, "3001.wav", "Ein Test.", Clip(0.75, 16000)),
                fleurs_row(13, "3002.wav", "Ein Test."),
            ],
        },
    )
    write_fleurs_language(
        root,
        "cmn_hans_cn",
        {
            "train": [
                fleurs_row(7, "5001.wav", "狗在叫。"),
                fleurs_row(11, "5002.wav", "“引用”在开头。"),
            ],
            "dev": [fleurs_row(12, "6001.wav", "你好。")],
            "test": [
                fleurs_row(13, "7001.wav", "一个测试。"),
                fleurs_row(13, "7002.wav", "一个测试。"),
            ],
        },
    )
    return root


def malicious_tar(path, kind):
    """A tar.gz whose one bad member tries to leave the target folder.

    ``kind``: ``dotdot`` (``../evil.wav``), ``absolute``
    (``/tmp/evil.wav``), ``symlink`` (link to ``/etc/passwd``),
    ``hardlink``, ``nested`` (``test/../../evil.wav``).
    """
    payload, _ = _wav_bytes(Clip(sample_rate=16000))
    with tarfile.open(path, "w:gz") as tar:
        _add_bytes(tar, "test/ok.wav", payload)
        if kind == "dotdot":
            _add_bytes(tar, "../evil.wav", payload)
        elif kind == "absolute":
            _add_bytes(tar, "/tmp/evil.wav", payload)
        elif kind == "nested":
            _add_bytes(tar, "test/../../evil.wav", payload)
        elif kind in ("symlink", "hardlink"):
            info = tarfile.TarInfo("test/evil.wav")
            info.type = (
                tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
            )
            info.linkname = "/etc/passwd"
            tar.addfile(info)
        else:
            raise ValueError(kind)
    return path
