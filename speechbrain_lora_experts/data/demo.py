"""Offline multilingual demo corpora in the Common Voice and FLEURS layouts.

:func:`build_demo_corpus` writes small but realistic speech corpora without
any network: real human-translated sentences from Django's translation
catalogs, read by several synthetic espeak-ng speakers per language, with
light numpy augmentation (band-limiting, speed perturbation, room reverb,
noise at a random SNR). Files are laid out exactly like the releases that
data preparation reads, so the whole pipeline can be exercised offline:

* Common Voice (v17+ TSV schema; older ones with ``cv_schema``)::

    <out>/common_voice/<locale>/clips/common_voice_<locale>_<n>.mp3  48 kHz
    <out>/common_voice/<locale>/{train,dev,test,validated}.tsv
    <out>/common_voice/<locale>/clip_durations.tsv

* FLEURS (the ``google/fleurs`` repository)::

    <out>/fleurs/data/<code>/{train,dev,test}.tsv  no header, 7 columns
    <out>/fleurs/data/<code>/audio/{train,dev,test}.tar.gz  16 kHz wav

FLEURS clips are read by other voices, in other rooms, with other noise and
other sentences than the Common Voice clips, so FLEURS serves as an
out-of-domain test set. Output is deterministic for a seed. Needs the
``espeak-ng`` program (Debian/Ubuntu: ``apt-get install espeak-ng``),
Django (for its catalogs) and soundfile >= 0.13 (writes mp3).

Example (command line)::

    python -m speechbrain_lora_experts.data.demo --out demo_corpus \\
        --languages de,es,it --per-split 20,5,5 --seed 0

Authors
 * speechbrain-lora-experts developers 2026
"""

import argparse
import functools
import glob
import gzip
import hashlib
import html
import importlib.util
import io
import itertools
import json
import os
import re
import shutil
import subprocess
import tarfile
import time
import unicodedata
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import soundfile as sf

SPLITS = ("train", "dev", "test")
FORMATS = ("common_voice", "fleurs")

#: Common Voice TSV headers by schema: ``v17`` (17.0 and later), ``v13``
#: (13.0 to 16.1: ``variant`` added), ``v10`` (before 13.0).
CV_HEADERS = {
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

# Whisper code -> (espeak-ng voice, Django locale folder). Mandarin uses
# ``cmn-latn-pinyin``: espeak-ng 1.51's plain ``cmn`` voice reads many Han
# characters with English letter names, the pinyin voice reads them right.
_VOICES = {
    "ar": ("ar", "ar"),
    "bg": ("bg", "bg"),
    "ca": ("ca", "ca"),
    "cs": ("cs", "cs"),
    "da": ("da", "da"),
    "de": ("de", "de"),
    "el": ("el", "el"),
    "en": ("en-us", "en"),
    "es": ("es", "es"),
    "fa": ("fa", "fa"),
    "fi": ("fi", "fi"),
    "fr": ("fr-fr", "fr"),
    "hi": ("hi", "hi"),
    "hu": ("hu", "hu"),
    "id": ("id", "id"),
    "it": ("it", "it"),
    "ja": ("ja", "ja"),
    "ko": ("ko", "ko"),
    "nl": ("nl", "nl"),
    "pl": ("pl", "pl"),
    "pt": ("pt-br", "pt_BR"),
    "ro": ("ro", "ro"),
    "ru": ("ru", "ru"),
    "sk": ("sk", "sk"),
    "sv": ("sv", "sv"),
    "sw": ("sw", "sw"),
    "th": ("th", "th"),
    "tr": ("tr", "tr"),
    "uk": ("uk", "uk"),
    "vi": ("vi", "vi"),
    "zh": ("cmn-latn-pinyin", "zh_Hans"),
}
# Scripts without Latin letters: an ASCII letter there means an untranslated
# or technical string, which espeak-ng would read with foreign rules.
_NON_LATIN = {"ar", "bg", "el", "fa", "hi", "ja", "ko", "ru", "th", "uk", "zh"}

# espeak-ng voice variants. Common Voice and FLEURS draw from disjoint sets
# so that FLEURS speakers are unseen in training.
_VARIANTS = {
    "common_voice": {
        "male": ("m1", "m2", "m3", "m4", "m7"),
        "female": ("f1", "f2", "f3"),
    },
    "fleurs": {"male": ("m5", "m6", "m8"), "female": ("f4", "f5")},
}
# Recording conditions. Common Voice: crowd-sourced, any microphone (narrow
# to wide band, hum, low SNR, little reverb). FLEURS: read in quieter rooms,
# wide band, pink noise at high SNR, more reverb.
_CHANNELS = {
    "common_voice": dict(
        lowpass=(3400, 4000, 5500, 7000, 9000, 10500),
        highpass=(50, 80, 120, 200, 300),
        noise=("white", "brown", "hum", "pink"),
        snr=(8.0, 32.0),
        reverb=0.2,
        rt60=(0.15, 0.35),
    ),
    "fleurs": dict(
        lowpass=(7200, 7500, 7800),
        highpass=(40, 60),
        noise=("pink", "white"),
        snr=(25.0, 45.0),
        reverb=0.8,
        rt60=(0.3, 0.6),
    ),
}
_CV_AGES = ("", "teens", "twenties", "thirties", "fourties", "fifties")
# Common Voice 17.0 renamed the gender values.
_CV17_GENDERS = {"male": "male_masculine", "female": "female_feminine"}
_MP3_LEVEL = 0.88  # libsndfile compression level -> about 64 kbit/s CBR

# Sentence filters. Placeholders, markup, paths, digits and ellipses mark
# UI strings, not sentences a person would read out.
_REJECT = re.compile(r"[%{}<>\[\]()|\\/_@#=*`~^$&+\d\t\n]|\.\.\.|…|https?:")
_HAN = re.compile(r"[\u3400-\u9fff]")
_ASCII_LETTER = re.compile(r"[A-Za-z]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)|(?<=[。！？])")
_END = re.compile(r"[.!?。！？؟][\"'”»」)]*$")
_MIN_WORDS, _MAX_WORDS = 3, 16
_MIN_CHARS_CER, _MAX_CHARS_CER = 8, 28  # espeak reads Mandarin slowly


def _stable_int(*parts):
    """A 64-bit integer from ``parts`` that does not depend on the process
    (``hash()`` of a str is salted per interpreter)."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _rng(*parts):
    return np.random.default_rng(_stable_int(*parts))


# ---------------------------------------------------------------- text ----


def _unescape(text):
    escapes = {"n": "\n", "t": "\t", "r": "\r"}
    return re.sub(r"\\(.)", lambda m: escapes.get(m[1], m[1]), text)


_PO_KEY = re.compile(
    r'^(msgctxt|msgid_plural|msgid|msgstr(?:\[\d+\])?)\s+"(.*)"$'
)


def parse_po(text):
    """Parse a gettext catalog into entries.

    Handles multi-line strings, contexts, plural forms and the ``fuzzy``
    flag; obsolete (``#~``) entries are dropped like all comments.

    Arguments
    ---------
    text : str
        Content of a ``.po`` file.

    Returns
    -------
    list of dict
        One dict per entry with the keys found (``msgctxt``, ``msgid``,
        ``msgid_plural``, ``msgstr`` or ``msgstr[0]``, ``msgstr[1]``, ...)
        and ``fuzzy`` (bool).

    Example
    -------
    >>> po = '''
    ... #, fuzzy
    ... msgid "Old"
    ... msgstr "Alt"
    ...
    ... msgid ""
    ... "Two "
    ... "lines"
    ... msgstr "Zwei \\\\"Zeilen\\\\""
    ...
    ... msgid "one file"
    ... msgid_plural "%(n)s files"
    ... msgstr[0] "eine Datei"
    ... msgstr[1] "%(n)s Dateien"
    ... '''
    >>> entries = parse_po(po)
    >>> [e["msgid"] for e in entries]
    ['Old', 'Two lines', 'one file']
    >>> entries[0]["fuzzy"], entries[1]["msgstr"], entries[2]["msgstr[1]"]
    (True, 'Zwei "Zeilen"', '%(n)s Dateien')
    """
    entries, entry, field = [], {}, None

    def flush():
        """Stores the catalog entry read so far, if it has a msgid."""
        nonlocal entry, field
        if "msgid" in entry:
            entry.setdefault("fuzzy", False)
            entries.append(entry)
        entry, field = {}, None

    for line in text.splitlines():
        line = line.strip()
        if not line:
            flush()
        elif line.startswith("#"):
            if "msgid" in entry:  # comments open the next entry
                flush()
            if line.startswith("#,") and "fuzzy" in line:
                entry["fuzzy"] = True
        elif match := _PO_KEY.match(line):
            key, value = match.groups()
            if key in ("msgctxt", "msgid") and "msgid" in entry:
                flush()  # entries not separated by a blank line
            entry[key], field = _unescape(value), key
        elif line.startswith('"') and line.endswith('"') and field:
            entry[field] += _unescape(line[1:-1])
    flush()
    return entries


def _clean(text):
    text = unicodedata.normalize("NFC", html.unescape(text))
    return re.sub(r"\s+", " ", text).strip()


def is_speakable(sentence, cer=False, latin=True):
    """Whether a catalog string makes a demo sentence.

    Rejects format placeholders (``%(name)s``, ``{x}``, ``%s``), markup,
    paths, digits and ellipses, strings too short to be sentences (fewer
    than 3 words, or 8 characters where words are not spaced) and long
    ones, and UI labels (no final punctuation and fewer than 5 words).

    Arguments
    ---------
    sentence : str
        Candidate text (cleaned: single spaces, NFC).
    cer : bool
        The script has no spaces between words (zh, ja, th): count
        characters instead of words.
    latin : bool
        Whether ASCII letters are allowed (False for non-Latin scripts).

    Returns
    -------
    bool

    Example
    -------
    >>> is_speakable("Bitte geben Sie eine gültige E-Mail-Adresse ein.")
    True
    >>> is_speakable("Enter %(name)s here."), is_speakable("Save")
    (False, False)
    >>> is_speakable("请输入一个有效的电子邮件地址。", cer=True, latin=False)
    True
    """
    if not sentence or _REJECT.search(sentence):
        return False
    if not latin and _ASCII_LETTER.search(sentence):
        return False
    if cer:
        n_chars = sum(ch.isalnum() for ch in sentence)
        if not _MIN_CHARS_CER <= n_chars <= _MAX_CHARS_CER:
            return False
        return bool(_END.search(sentence)) or n_chars >= 12
    n_words = len(sentence.split())
    if not _MIN_WORDS <= n_words <= _MAX_WORDS or len(sentence) > 120:
        return False
    return bool(_END.search(sentence)) or n_words >= 5


def _django_catalogs(django_locale):
    """The Django (core and contrib) ``django.po`` files of one locale."""
    spec = importlib.util.find_spec("django")  # finds it without importing
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "The demo corpus takes its sentences from Django's translation "
            "catalogs: pip install django"
        )
    root = list(spec.submodule_search_locations)[0]
    tail = os.path.join("locale", django_locale, "LC_MESSAGES", "django.po")
    core = os.path.join(root, "conf", tail)
    contrib = glob.glob(os.path.join(root, "contrib", "*", tail))
    return [core, *sorted(contrib)] if os.path.isfile(core) else sorted(contrib)


@functools.lru_cache(maxsize=None)
def catalog_sentences(lang):
    """Usable sentences of a language from Django's translation catalogs.

    Arguments
    ---------
    lang : str
        Whisper language code with an espeak-ng voice (see ``_VOICES``).

    Returns
    -------
    dict
        ``message key -> sentence``. The key is the English source string
        (with its context), identical across languages, so equal keys are
        translations of each other. English sentences are the msgids.

    Example
    -------
    >>> sentences = catalog_sentences("de")
    >>> len(sentences) > 100
    True
    """
    from speechbrain_lora_experts.languages import uses_cer

    cer, latin = uses_cer(lang), lang not in _NON_LATIN
    sentences, seen = {}, set()
    for path in _django_catalogs(_VOICES[lang][1]):
        with open(path, encoding="utf-8") as f:
            entries = parse_po(f.read())
        for entry in entries:
            if entry["fuzzy"] or not entry["msgid"]:
                continue
            if lang == "en":  # the catalogs' source language
                forms = [entry["msgid"], entry.get("msgid_plural", "")]
            else:
                forms = [v for k, v in entry.items() if k.startswith("msgstr")]
            # Labels ("Last name", language names) are translated as
            # labels: judge the English source string as well.
            if len(entry["msgid"].split()) < _MIN_WORDS:
                continue
            context = entry.get("msgctxt", "")
            for i, form in enumerate(forms):
                form = _clean(form)
                if form == entry["msgid"] and lang != "en":
                    continue  # left untranslated
                # Help texts hold several sentences: each may be usable.
                for j, text in enumerate(_SENTENCE_END.split(form)):
                    if text in seen or not is_speakable(text, cer, latin):
                        continue
                    if lang == "ja" and _HAN.search(text):
                        continue  # espeak-ng reads kanji as "Chinese letter"
                    seen.add(text)
                    key = f"{context}\x04{entry['msgid']}\x04{i}\x04{j}"
                    sentences[key] = text
    return sentences


def fleurs_transcription(text):
    """FLEURS' normalised transcription: lower case, no punctuation.

    Apostrophes and hyphens inside words are kept; spaces left between
    CJK characters by removed punctuation are dropped.

    Arguments
    ---------
    text : str
        The raw sentence.

    Returns
    -------
    str
        The normalised transcription.

    Example
    -------
    >>> fleurs_transcription("Bitte nicht so schnell, l'ami! Geht's?")
    "bitte nicht so schnell l'ami geht's"
    >>> fleurs_transcription("请输入，有效的地址。")
    '请输入有效的地址'
    """
    text = unicodedata.normalize("NFC", text).lower()
    out = []
    for i, ch in enumerate(text):
        if unicodedata.category(ch)[0] in "PS":
            inner = 0 < i < len(text) - 1 and text[i - 1].isalnum()
            inner = inner and text[i + 1].isalnum() and ch in "'’-"
            out.append(ch if inner else " ")
        else:
            out.append(ch)
    text = re.sub(r"\s+", " ", "".join(out)).strip()
    return re.sub(r"(?<=[\u3040-\u9fff]) (?=[\u3040-\u9fff])", "", text)


def fleurs_characters(transcription):
    """FLEURS' character column: characters spaced, ``|`` ends each word.

    Arguments
    ---------
    transcription : str
        A :func:`fleurs_transcription`.

    Returns
    -------
    str
        The character column.

    Example
    -------
    >>> fleurs_characters("der hund")
    'd e r | h u n d |'
    """
    return " ".join(" ".join(word) + " |" for word in transcription.split())


# ------------------------------------------------------------ speakers ----


def _speakers(lang, corpus, n, seed):
    """``n`` synthetic speakers: voice variant, rate, pitch, room, noise."""
    rng = _rng(seed, "speakers", corpus, lang)
    variants, channel = _VARIANTS[corpus], _CHANNELS[corpus]
    first, offset = int(rng.integers(2)), int(rng.integers(8))
    out = []
    for i in range(n):
        gender = ("male", "female")[(first + i) % 2]
        pool = variants[gender]
        female = gender == "female"
        out.append(
            dict(
                index=i,
                client_id=hashlib.sha512(
                    f"demo|{seed}|{corpus}|{lang}|{i}".encode()
                ).hexdigest(),
                gender=gender,
                variant=pool[(offset + i // 2) % len(pool)],
                speed=int(rng.integers(135, 185)),
                pitch=int(
                    rng.integers(50, 80) if female else rng.integers(25, 55)
                ),
                gap=int(rng.integers(0, 3)),
                age=str(rng.choice(_CV_AGES)),
                lowpass=float(rng.choice(channel["lowpass"])),
                highpass=float(rng.choice(channel["highpass"])),
                noise=str(rng.choice(channel["noise"])),
                snr=tuple(sorted(rng.uniform(*channel["snr"], size=2))),
                reverb=float(rng.random() < channel["reverb"]),
                rt60=float(rng.uniform(*channel["rt60"])),
            )
        )
    return out


def _split_speakers(speakers, counts):
    """Speaker groups for (train, dev, test), sized like the splits.

    Returns the groups and whether they are disjoint. With fewer speakers
    than non-empty splits, train keeps one speaker to itself where it can
    and the evaluation splits share the others.
    """
    active = [i for i, c in enumerate(counts) if c > 0]
    if len(speakers) < len(active):
        if len(speakers) == 1 or counts[0] == 0:
            return [speakers] * len(counts), False
        return [speakers[:1]] + [speakers[1:]] * (len(counts) - 1), False
    sizes = [0] * len(counts)
    for i in active:
        sizes[i] = 1
    for _ in range(len(speakers) - len(active)):
        # the split with most utterances per speaker gets the next one
        i = max(active, key=lambda j: counts[j] / sizes[j])
        sizes[i] += 1
    groups, start = [], 0
    for size in sizes:
        groups.append(speakers[start : start + size])
        start += size
    return groups, True


# --------------------------------------------------------------- audio ----


def _fast_len(n):
    """Smallest 2^a 3^b 5^c >= n: FFTs of such sizes are fast."""
    best = 1 << max(0, n - 1).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


def _espeak(text, voice, speed, pitch, gap):
    """Synthesise with espeak-ng: float64 samples and their rate."""
    cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch)]
    cmd += ["-g", str(gap), "-b", "1", "--stdout", "--stdin"]
    res = subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True)
    wav = res.stdout
    start = wav.find(b"data", 12) + 8  # streamed header: sizes are bogus
    if res.returncode != 0 or start < 8 or len(wav) <= start + 2:
        raise RuntimeError(
            f"espeak-ng -v {voice} produced no audio for {text!r}: "
            f"{res.stderr.decode(errors='replace').strip()}"
        )
    rate = int.from_bytes(wav[24:28], "little")
    pcm = wav[start : start + (len(wav) - start) // 2 * 2]
    return np.frombuffer(pcm, "<i2") / 32768.0, rate


def _noise(kind, n, rate, rng):
    """Unit-RMS noise of a colour, or mains hum."""
    white = rng.standard_normal(n)
    if kind in ("pink", "brown"):
        freqs = np.fft.rfftfreq(n, 1 / rate)
        freqs[0] = freqs[1]
        shape = np.sqrt(freqs) if kind == "pink" else freqs
        noise = np.fft.irfft(np.fft.rfft(white) / shape, n)
    elif kind == "hum":
        t = np.arange(n) / rate
        f0 = rng.choice([50.0, 60.0])
        noise = 0.3 * white
        for h in (1, 2, 3, 5):
            noise += np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6.3)) / h
    else:
        noise = white
    noise -= noise.mean()
    return noise / (np.sqrt(np.mean(noise**2)) + 1e-12)


def _band(freqs, highpass, lowpass):
    """Zero-phase band-pass gain with raised-cosine skirts."""

    def ramp(x):
        """Raised-cosine ramp from 0 (x <= 0) to 1 (x >= 1)."""
        return 0.5 - 0.5 * np.cos(np.pi * np.clip(x, 0.0, 1.0))

    return ramp(freqs / highpass) * ramp(
        (1.25 * lowpass - freqs) / (0.25 * lowpass)
    )


def _render(clip):
    """Synthesise one clip; returns ``(file bytes, samples, rate)``.

    espeak-ng -> random silence padding -> noise at a random SNR ->
    (in one FFT) band-limit, reverb, speed perturbation and resampling to
    the target rate -> random level -> mp3 or wav bytes.
    """
    if clip["empty"]:
        return b"", 0, clip["rate"]
    rng = np.random.default_rng(clip["seed"])
    spk = clip["speaker"]
    speed = int(spk["speed"] * rng.uniform(0.94, 1.06))
    pitch = int(np.clip(spk["pitch"] + rng.integers(-5, 6), 0, 99))
    voice = f"{clip['voice']}+{spk['variant']}"
    speech, rate = _espeak(clip["text"], voice, speed, pitch, spk["gap"])

    lead = int(rng.uniform(0.15, 0.8) * rate)
    trail = int(rng.uniform(0.4, 1.0) * rate)  # also absorbs the reverb tail
    length = len(speech) + lead + trail
    n = _fast_len(length)  # zero padding, cropped again below
    x = np.zeros(n)
    x[lead : lead + len(speech)] = speech
    loud = np.abs(speech) > 0.05 * np.abs(speech).max()
    speech_rms = np.sqrt(np.mean(speech[loud] ** 2)) if loud.any() else 0.1
    snr = rng.uniform(*spk["snr"])
    noise = _noise(spk["noise"], n, rate, rng)
    x += noise * speech_rms / 10 ** (snr / 20)

    spectrum = np.fft.rfft(x)
    out_rate = clip["rate"]
    # Speed perturbation (tempo and pitch together, as SpeechBrain's
    # SpeedPerturb) is the same spectrum read out at another rate.
    factor = rng.uniform(0.95, 1.05)
    m = _fast_len(int(n * out_rate / (rate * factor)))
    nyquist = 0.5 * rate * min(1.0, m / n)  # in the input's frequencies
    freqs = np.fft.rfftfreq(n, 1 / rate)
    spectrum *= _band(
        freqs, spk["highpass"], min(spk["lowpass"], 0.8 * nyquist)
    )
    if spk["reverb"]:  # direct path + exponentially decaying diffuse tail
        taps = int(spk["rt60"] * rate)
        tail = rng.standard_normal(taps) * np.exp(-6.9 * np.arange(taps) / taps)
        direct_to_reverb = rng.uniform(2.0, 10.0)  # dB
        tail *= np.sqrt(10 ** (-direct_to_reverb / 10) / np.sum(tail**2))
        tail[0] = 1.0
        spectrum *= np.fft.rfft(tail, n)
    y = np.fft.irfft(spectrum, m)[: length * m // n]
    y *= 10 ** (rng.uniform(-12, -3) / 20) / (np.abs(y).max() + 1e-9)

    if clip["channels"] == 2:  # a second, slightly delayed, quieter mic
        y = np.stack([y, 0.7 * np.roll(y, int(0.0007 * out_rate))], axis=1)
    buf = io.BytesIO()
    if clip["format"] == "mp3":
        sf.write(
            buf,
            y.astype(np.float32),
            out_rate,
            format="MP3",
            bitrate_mode="CONSTANT",
            compression_level=_MP3_LEVEL,
        )
    else:
        sf.write(buf, y, out_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue(), len(y), out_rate


# ------------------------------------------------------------ planning ----


def _allocate(keys, wanted):
    """Split ``keys`` into disjoint parts of the wanted sizes.

    Parts come in blocks of three (train, dev, test of one corpus). Each
    block takes the next keys, dealt out like cards, so the first keys
    (the ones every language has) reach every split in proportion. When
    there are too few keys every part shrinks in proportion (at least one
    key each); the caller then reuses sentences within a part.
    """
    total = sum(wanted)
    if total <= len(keys):
        sizes = list(wanted)
    else:
        sizes = [min(w, max(1, w * len(keys) // total)) for w in wanted]
    parts, start = [], 0
    for b in range(0, len(sizes), len(SPLITS)):
        block = sizes[b : b + len(SPLITS)]
        dealt = [[] for _ in block]
        # cycle: wraps around only when there are fewer keys than parts
        stream = itertools.islice(
            itertools.cycle(keys), start, start + sum(block)
        )
        for key in stream:
            # the part that is proportionally least full gets the key
            i = min(
                (i for i, size in enumerate(block) if len(dealt[i]) < size),
                key=lambda i: len(dealt[i]) / block[i],
            )
            dealt[i].append(key)
        parts += dealt
        start += sum(block)
    return parts


def _rows(pool, n, group):
    """``n`` (sentence key, speaker) pairs; a reused sentence is read by
    another speaker of the split's group."""
    out = []
    for i in range(n):
        rep, j = divmod(i, len(pool))
        out.append((pool[j], group[(j + rep) % len(group)]))
    return out


def _check_tools():
    if shutil.which("espeak-ng") is None:
        raise RuntimeError(
            "espeak-ng not found on PATH; the demo corpus needs it to "
            "synthesise speech. Install it with `apt-get install espeak-ng` "
            "(Debian/Ubuntu) or `brew install espeak-ng` (macOS)."
        )
    if "MP3" not in sf.available_formats():
        raise RuntimeError(
            "This soundfile/libsndfile cannot write mp3 (Common Voice clips). "
            "pip install 'soundfile>=0.13' (bundles libsndfile >= 1.1)."
        )


def _fleurs_ids(order):
    """FLEURS sentence ids: one per message key, shared across languages
    (FLEURS is n-way parallel), small positive integers like the real
    ones (collisions are resolved in key order)."""
    ids, used = {}, set()
    for key in order:
        i = 1 + _stable_int("fleurs-id", key) % 100_000
        while i in used:
            i += 1
        used.add(i)
        ids[key] = i
    return ids


def build_demo_corpus(
    out_dir,
    languages,
    per_split=(20, 5, 5),
    seed=0,
    formats=FORMATS,
    speakers=4,
    cv_schema="v17",
    warts=False,
    progress=True,
    workers=None,
    sentences=None,
    other_synth=False,
):
    """Write a synthetic multilingual corpus in Common Voice/FLEURS layout.

    Arguments
    ---------
    out_dir : str or os.PathLike
        Destination. Common Voice goes to ``<out_dir>/common_voice`` and
        FLEURS to ``<out_dir>/fleurs``. Existing files with the same names
        are overwritten; nothing is deleted.
    languages : list of str
        Whisper language codes (``de``, ``zh``, ...) or anything
        :func:`~speechbrain_lora_experts.languages.canonical_language`
        accepts (``zh-CN``, ``cmn_hans_cn``).
    per_split : tuple of int
        Utterances per language in (train, dev, test), in each format.
    seed : int
        Everything (sentences, speakers, noise, file names) follows it.
    formats : tuple of str
        Any of ``"common_voice"`` and ``"fleurs"``.
    speakers : int
        Synthetic speakers per language and format. With at least three,
        train, dev and test have disjoint speakers.
    cv_schema : str
        TSV header of Common Voice 17.0 and later (``"v17"``), of 13.0 to
        16.1 (``"v13"``: no ``sentence_id``/``sentence_domain``) or of
        older releases (``"v10"``: no ``variant`` either, no
        ``clip_durations.tsv``).
    warts : bool
        Add to each Common Voice ``train.tsv`` three clips as found in real
        releases: one 44.1 kHz, one stereo and one zero-byte mp3.
    progress : bool
        Show a tqdm progress bar.
    workers : int, optional
        Clips rendered in parallel (default: up to 2 CPU cores).
    sentences : dict, optional
        Language -> ``{key: sentence}`` to read instead of Django's
        catalogs (for more text than they have). Equal keys across
        languages mark translations (FLEURS' parallel ids).
    other_synth : bool
        Also read the FLEURS test sentences with another synthesizer
        (Festival, see :mod:`speechbrain_lora_experts.data.other_synth`)
        into ``<out_dir>/other_synth`` (FLEURS layout; languages without
        a Festival voice are left out). Needs ``"fleurs"`` in ``formats``.

    Returns
    -------
    dict
        ``common_voice`` / ``fleurs``: per language the folder, locale or
        code, and rows per TSV; ``warnings`` (list of str), ``clips``,
        ``audio_seconds`` and ``seconds`` (wall clock); with
        ``other_synth``, that builder's report (plus ``folder``).

    Example
    -------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     info = build_demo_corpus(
    ...         tmp, ["de"], per_split=(2, 1, 1), progress=False
    ...     )
    ...     sorted(os.listdir(os.path.join(tmp, "common_voice", "de")))
    ['clip_durations.tsv', 'clips', 'dev.tsv', 'test.tsv', 'train.tsv', \
'validated.tsv']
    >>> info["fleurs"]["de"]["code"], info["fleurs"]["de"]["rows"]["train"]
    ('de_de', 2)
    """
    from speechbrain_lora_experts.languages import (
        canonical_language,
        common_voice_locale,
        fleurs_code,
    )

    start_time = time.time()
    _check_tools()
    if other_synth:
        from speechbrain_lora_experts.data import other_synth as festival

        if "fleurs" not in formats:
            raise ValueError("other_synth reads the FLEURS test: add fleurs")
        festival.check_festival()  # before minutes of espeak-ng rendering
    if cv_schema not in CV_HEADERS:
        raise ValueError(f"cv_schema must be one of {sorted(CV_HEADERS)}")
    unknown = set(formats) - set(FORMATS)
    if unknown or not formats:
        raise ValueError(
            f"formats must be a subset of {FORMATS}, got {formats}"
        )
    per_split = tuple(int(n) for n in per_split)
    if len(per_split) != 3 or min(per_split) < 0 or sum(per_split) == 0:
        raise ValueError(
            f"per_split must be (train, dev, test), got {per_split}"
        )
    if warts and "common_voice" in formats and per_split[0] == 0:
        raise ValueError("warts are train clips: per_split[0] must be > 0")
    langs = list(dict.fromkeys(canonical_language(lang) for lang in languages))
    missing = [lang for lang in langs if lang not in _VOICES]
    if missing:
        raise ValueError(
            f"No demo voice/catalog for {missing}; demo languages: "
            f"{', '.join(sorted(_VOICES))}"
        )

    report = dict(common_voice={}, fleurs={}, warnings=[])

    def warn(message):
        """Warns and records the warning in the build report."""
        warnings.warn(message, stacklevel=3)
        report["warnings"].append(message)

    # ---- sentences. FLEURS is n-way parallel: it takes the messages that
    # every language has first, in one order for all languages, so the same
    # sentence ids land in the same splits. Common Voice takes the next
    # ones: the two corpora share no text.
    texts = {
        lang: dict(sentences[lang])
        if sentences and lang in sentences
        else catalog_sentences(lang)
        for lang in langs
    }
    shared = set.intersection(*(set(t) for t in texts.values()))

    def order(key):
        """Sort key: sentences every language has first, then seeded."""
        return key not in shared, _stable_int(seed, "order", key)

    fmts = [fmt for fmt in ("fleurs", "common_voice") if fmt in formats]
    wanted = [n for fmt in fmts for n in per_split]
    slices = {}
    for lang in langs:
        keys = sorted(texts[lang], key=order)
        if len(keys) < 3:
            raise RuntimeError(f"Only {len(keys)} usable sentences for {lang}")
        if len(keys) < sum(wanted):
            warn(
                f"{lang}: {len(keys)} distinct sentences for {sum(wanted)} "
                "utterances; sentences are reused, read by other speakers."
            )
        parts = iter(_allocate(keys, wanted))
        slices[lang] = {fmt: [next(parts) for _ in SPLITS] for fmt in fmts}
    fleurs_keys = {
        key
        for lang in langs
        for part in slices[lang].get("fleurs", [])
        for key in part
    }
    fleurs_ids = _fleurs_ids(sorted(fleurs_keys, key=order))

    # ---- plan: every clip with everything needed to render it
    clips, tables = [], []
    out_dir = os.fspath(out_dir)
    for lang in langs:
        voice = _VOICES[lang][0]
        for fmt in (fmt for fmt in FORMATS if fmt in formats):
            spk = _speakers(lang, fmt, speakers, seed)
            groups, disjoint = _split_speakers(spk, per_split)
            if not disjoint:
                warn(
                    f"{lang}/{fmt}: {speakers} speakers are too few for "
                    "speaker-disjoint train/dev/test; splits share speakers."
                )
            if fmt == "common_voice":
                locale = common_voice_locale(lang)
                folder = os.path.join(out_dir, "common_voice", locale)
                base = (
                    20_000_000 + _stable_int(seed, "clip", locale) % 10_000_000
                )
            else:
                code = fleurs_code(lang)
                folder = os.path.join(out_dir, "fleurs", "data", code)
            table = dict(lang=lang, format=fmt, folder=folder, rows=[])
            table["name"] = locale if fmt == "common_voice" else code
            tables.append(table)
            for split, pool, n, group in zip(
                SPLITS, slices[lang][fmt], per_split, groups
            ):
                pairs = _rows(pool, n, group) if n else []
                kinds = [{}] * len(pairs)
                if warts and fmt == "common_voice" and split == "train":
                    # recordings of train sentences by other speakers
                    pairs += [
                        (k, group[(j + 1) % len(group)])
                        for j, k in enumerate((pool * 3)[:3])
                    ]
                    kinds += [{"rate": 44100}, {"channels": 2}, {"empty": True}]
                for i, ((key, speaker), kind) in enumerate(zip(pairs, kinds)):
                    if fmt == "common_voice":
                        name = f"common_voice_{locale}_{base + len(clips)}.mp3"
                        path = os.path.join(folder, "clips", name)
                    else:
                        name = (
                            f"{_stable_int(seed, code, split, i) % 10**19}.wav"
                        )
                        path = f"{split}/{name}"
                    clip = dict(
                        text=texts[lang][key],
                        key=key,
                        voice=voice,
                        speaker=speaker,
                        split=split,
                        name=name,
                        path=path,
                        seed=_stable_int(seed, fmt, lang, split, i),
                        format="mp3" if fmt == "common_voice" else "wav",
                        rate=48000 if fmt == "common_voice" else 16000,
                        channels=1,
                        empty=False,
                    )
                    clip.update(kind)
                    clips.append(clip)
                    table["rows"].append(clip)

    # ---- render. espeak-ng runs as a subprocess and the FFTs and the mp3
    # encoder mostly release the GIL: two threads render 1.8x faster than
    # one, as fast as a process pool, without pickling clips, forking a
    # process that may run torch, or needing a __main__ guard (spawn).
    if workers is None:
        workers = max(1, min(2, os.cpu_count() or 1))
    from tqdm.auto import tqdm

    bar = tqdm(
        total=len(clips), desc="demo corpus", unit="clip", disable=not progress
    )
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for clip, (data, n_samples, rate) in zip(
            clips, pool.map(_render, clips)
        ):
            clip["num_samples"], clip["rate"] = n_samples, rate
            if clip["format"] == "mp3":
                os.makedirs(os.path.dirname(clip["path"]), exist_ok=True)
                with open(clip["path"], "wb") as f:
                    f.write(data)
            else:  # archived with its split below
                clip["wav"] = data
            bar.update()
    bar.close()

    # ---- metadata
    for table in tables:
        os.makedirs(table["folder"], exist_ok=True)
        if table["format"] == "common_voice":
            counts = _write_common_voice(table, cv_schema, seed)
        else:
            counts = _write_fleurs(table, fleurs_ids)
        entry = dict(folder=table["folder"], rows=counts)
        entry["locale" if table["format"] == "common_voice" else "code"] = (
            table["name"]
        )
        report[table["format"]][table["lang"]] = entry
    if other_synth:
        # The FLEURS test shares no text with Common Voice (see above);
        # held_out() also drops sentences read twice.
        seen = [c["text"] for c in clips if c["split"] != "test"]
        test = {
            t["lang"]: [c["text"] for c in t["rows"] if c["split"] == "test"]
            for t in tables
            if t["format"] == "fleurs"
        }
        folder = os.path.join(out_dir, "other_synth")
        report["other_synth"] = festival.build_other_synth_test(
            folder,
            {lang: festival.held_out(s, seen) for lang, s in test.items()},
            seed=seed,
        )
        report["other_synth"]["folder"] = folder
    report.update(
        languages=langs,
        clips=len(clips),
        audio_seconds=round(
            sum(c["num_samples"] / c["rate"] for c in clips), 1
        ),
        seconds=round(time.time() - start_time, 1),
    )
    return report


def _write_tsv(path, header, rows):
    # Common Voice and FLEURS TSVs are unquoted: text goes in verbatim.
    with open(path, "w", encoding="utf-8", newline="") as f:
        if header:
            f.write("\t".join(header) + "\n")
        for row in rows:
            f.write("\t".join(str(v) for v in row) + "\n")


def _write_common_voice(table, schema, seed):
    locale, header = table["name"], CV_HEADERS[schema]
    by_split = {split: [] for split in SPLITS}
    durations = []
    for clip in table["rows"]:
        spk = clip["speaker"]
        rng = _rng(seed, "votes", clip["name"])
        gender = spk["gender"]
        if schema == "v17":
            gender = _CV17_GENDERS[gender]
        if spk["index"] % 4 == 3:  # some speakers leave it blank, as in CV
            gender = ""
        values = dict(
            client_id=spk["client_id"],
            path=clip["name"],
            sentence_id=hashlib.sha256(clip["text"].encode()).hexdigest(),
            sentence=clip["text"],
            sentence_domain="",
            up_votes=int(rng.integers(2, 5)),
            down_votes=int(rng.integers(0, 2)),
            age=spk["age"],
            gender=gender,
            accents="",
            variant="",
            locale=locale,
            segment="",
        )
        by_split[clip["split"]].append([values[c] for c in header])
        ms = round(1000 * clip["num_samples"] / clip["rate"])
        durations.append((clip["name"], ms))
    folder = table["folder"]
    validated = [row for split in SPLITS for row in by_split[split]]
    for name, rows in [*by_split.items(), ("validated", validated)]:
        _write_tsv(os.path.join(folder, f"{name}.tsv"), header, rows)
    if schema != "v10":  # releases before 13.0 had no clip_durations.tsv
        _write_tsv(
            os.path.join(folder, "clip_durations.tsv"),
            ["clip", "duration[ms]"],
            sorted(durations),
        )
    return {
        **{k: len(v) for k, v in by_split.items()},
        "validated": len(validated),
    }


def _write_fleurs(table, ids):
    counts = {}
    os.makedirs(os.path.join(table["folder"], "audio"), exist_ok=True)
    for split in SPLITS:
        clips = [c for c in table["rows"] if c["split"] == split]
        rows = []
        for c in clips:
            norm = fleurs_transcription(c["text"])
            rows.append(
                [
                    ids[c["key"]],
                    c["name"],
                    c["text"],
                    norm,
                    fleurs_characters(norm),
                    c["num_samples"],
                    c["speaker"]["gender"].upper(),
                ]
            )
        _write_tsv(os.path.join(table["folder"], f"{split}.tsv"), None, rows)
        archive = os.path.join(table["folder"], "audio", f"{split}.tar.gz")
        _write_tar(archive, [(c["path"], c["wav"]) for c in clips])
        counts[split] = len(rows)
    return counts


def _write_tar(path, members):
    """A byte-reproducible tar.gz (fixed mtimes and owners, no gzip name)."""
    with open(path, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
            with tarfile.open(
                fileobj=gz, mode="w", format=tarfile.GNU_FORMAT
            ) as tar:
                for name, data in members:
                    info = tarfile.TarInfo(name)
                    info.size, info.mode, info.mtime = len(data), 0o644, 0
                    tar.addfile(info, io.BytesIO(data))


def _per_split(text):
    """``train,dev,test`` counts for argparse (its error on bad input)."""
    try:
        counts = tuple(int(x) for x in text.split(","))
    except ValueError:
        counts = ()
    if len(counts) != 3 or min(counts) < 0:
        raise argparse.ArgumentTypeError(
            f"expected three counts train,dev,test (e.g. 20,5,5), got {text!r}"
        )
    return counts


def main(argv=None):
    """Command line entry point (see the module docstring).

    Arguments
    ---------
    argv : list of str, optional
        Command-line arguments (default: ``sys.argv[1:]``).

    Example
    -------
    >>> import contextlib
    >>> def error_of(argv):
    ...     err = io.StringIO()
    ...     with contextlib.redirect_stderr(err):
    ...         try:
    ...             main(argv)
    ...         except SystemExit as stop:
    ...             print("exit status", stop.code)
    ...     return err.getvalue().splitlines()[-1]
    >>> error_of(["--languages", "de"])
    exit status 2
    '... error: the following arguments are required: --out'
    >>> error_of(["--out", "demo", "--cv-schema", "v99"])
    exit status 2
    "... error: argument --cv-schema: invalid choice: 'v99' (choose from ..."
    """
    parser = argparse.ArgumentParser(
        prog="python -m speechbrain_lora_experts.data.demo",
        description="Write an offline demo corpus in Common Voice and "
        "FLEURS layouts (espeak-ng speech, Django catalog sentences).",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--languages", default="de,es,it", help="comma list")
    parser.add_argument(
        "--per-split",
        type=_per_split,
        default="20,5,5",
        help="train,dev,test clips per language",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--formats", default="common_voice,fleurs")
    parser.add_argument("--speakers", type=int, default=4, help="per language")
    parser.add_argument(
        "--cv-schema", choices=sorted(CV_HEADERS), default="v17"
    )
    parser.add_argument(
        "--warts", action="store_true", help="44.1 kHz, stereo, empty clips"
    )
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument(
        "--other-synth",
        action="store_true",
        help="also read the FLEURS test with Festival (other_synth/)",
    )
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    report = build_demo_corpus(
        args.out,
        [x for x in args.languages.split(",") if x.strip()],
        per_split=args.per_split,
        seed=args.seed,
        formats=tuple(x.strip() for x in args.formats.split(",") if x.strip()),
        speakers=args.speakers,
        cv_schema=args.cv_schema,
        warts=args.warts,
        progress=not args.no_progress,
        workers=args.workers,
        other_synth=args.other_synth,
    )
    print(json.dumps(report, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
