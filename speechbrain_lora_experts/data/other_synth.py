"""Out-of-domain test speech from another synthesizer (Festival).

The demo corpora are read by espeak-ng, so an adapter trained on them can
learn espeak-ng's voice instead of the language; an out-of-domain test read
by espeak-ng cannot show that. :func:`build_other_synth_test` reads held-out
sentences with Festival's voices instead (Debian/Ubuntu packages) and writes
them in the FLEURS layout, so the recipe's FLEURS out-of-domain test
(``--fleurs_folder``) reads them unchanged::

    <out>/data/<code>/test.tsv          no header, 7 columns
    <out>/data/<code>/audio/test.tar.gz 16 kHz mono wav under test/

Languages with a Festival voice (``FESTIVAL_VOICES``): it, ru, cs, fi, ca,
hi, en. A language without one is left out of the report's ``languages``
and listed under ``missing`` with the reason; only a missing Festival
(the ``festival`` program) is an error, because then no language can be read.

Each sentence is read once, by the language's installed voices in turn,
with a random tempo (Festival's duration stretch), a small speed
perturbation, silence around the speech, pink or white noise at a high
SNR and, for half of the clips, a short room reverb: the recording
conditions of the demo builder's FLEURS clips, so that against that test
the synthesizer is what changes.

Example (command line; held-out sentences from a demo corpus' FLEURS test)::

    python -m speechbrain_lora_experts.data.other_synth --out festival \\
        --fleurs demo_corpus/fleurs --cv demo_corpus/common_voice \\
        --languages it,ru --seed 0

Authors
 * speechbrain-lora-experts developers 2026
"""

import argparse
import csv
import glob
import hashlib
import io
import json
import os
import shutil
import subprocess
import tempfile
import time
import unicodedata

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000

#: Whisper code -> Festival voices as (voice, text encoding, Debian
#: packages). The encodings are the ``coding`` the voices declare: the
#: diphone voices read 8-bit text, the Russian clunits voice UTF-8.
FESTIVAL_VOICES = {
    "it": (
        ("lp_diphone", "iso-8859-1", ("festvox-italp16k",)),
        ("pc_diphone", "iso-8859-1", ("festvox-itapc16k",)),
    ),
    "ru": (("msu_ru_nsh_clunits", "utf-8", ("festvox-ru",)),),
    "cs": (
        ("czech_dita", "iso-8859-2", ("festvox-czech-dita",)),
        ("czech_machac", "iso-8859-2", ("festvox-czech-machac",)),
    ),
    "fi": (
        ("suo_fi_lj_diphone", "iso-8859-1", ("festvox-suopuhe-lj",)),
        ("hy_fi_mv_diphone", "iso-8859-1", ("festvox-suopuhe-mv",)),
    ),
    "ca": (
        (
            "upc_ca_ona_hts",
            "iso-8859-15",
            ("festival-ca", "festvox-ca-ona-hts"),
        ),
    ),
    "hi": (("hindi_NSK_diphone", "utf-8", ("festival-hi", "festvox-hi-nsk")),),
    "en": (("kal_diphone", "iso-8859-1", ("festvox-kallpc16k",)),),
}
VOICE_ROOTS = ("/usr/share/festival/voices", "/usr/lib/festival/voices")

# Typographic punctuation the 8-bit voices cannot encode; what replaces it
# reads the same.
_ASCII_PUNCTUATION = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201a": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u2013": "-",
        "\u2014": "-",
        "\u2026": "...",
        "\u00a0": " ",
    }
)
# FLEURS' gender column: each Festival voice is one speaker.
_FEMALE = {"lp_diphone", "czech_dita", "suo_fi_lj_diphone", "upc_ca_ona_hts"}
_TEMPO = (0.9, 1.15)  # Festival Duration_Stretch
_SPEED = (0.96, 1.04)  # resampling factor: tempo and pitch together
_SNR_DB = (25.0, 45.0)
_REVERB_PROBABILITY = 0.5
_RT60_S = (0.2, 0.5)


class FestivalNotFoundError(RuntimeError):
    """Festival (the ``festival`` program) is not on PATH.

    Example
    -------
    >>> from unittest import mock
    >>> with tempfile.TemporaryDirectory() as empty:
    ...     with mock.patch.dict(os.environ, {"PATH": empty}):
    ...         try:
    ...             check_festival()
    ...         except RuntimeError as err:  # a RuntimeError, with a name
    ...             print(type(err).__name__)
    FestivalNotFoundError
    """


def _stable_int(*parts):
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def installed_voices(lang, roots=VOICE_ROOTS):
    """The Festival voices of ``lang`` installed on this machine.

    Arguments
    ---------
    lang : str
        Whisper language code.
    roots : sequence of str
        Folders holding ``<language>/<voice>/`` voice trees.

    Returns
    -------
    list of tuple
        ``(voice, encoding, packages)`` entries of ``FESTIVAL_VOICES``
        whose voice folder exists, in table order.

    Example
    -------
    >>> installed_voices("de")  # Debian has no German Festival voice
    []
    """
    found = []
    for entry in FESTIVAL_VOICES.get(lang, ()):
        pattern = os.path.join("*", entry[0])
        if any(glob.glob(os.path.join(root, pattern)) for root in roots):
            found.append(entry)
    return found


def missing_reason(lang):
    """Why ``lang`` has no installed Festival voice (None if it has one).

    Example
    -------
    >>> missing_reason("de")
    'Debian has no Festival voice for de'
    """
    if installed_voices(lang):
        return None
    if lang not in FESTIVAL_VOICES:
        return f"Debian has no Festival voice for {lang}"
    packages = sorted({p for v in FESTIVAL_VOICES[lang] for p in v[2]})
    return f"no voice installed: apt-get install {' '.join(packages)}"


def check_festival():
    """Raises :class:`FestivalNotFoundError` unless ``festival`` is on PATH.

    Only looks the program up (``shutil.which``): it is not run.

    Raises
    ------
    FestivalNotFoundError
        With the packages that install Festival and its voices.

    Example
    -------
    >>> import shutil
    >>> from unittest import mock
    >>> bin_dir = tempfile.mkdtemp()
    >>> with mock.patch.dict(os.environ, {"PATH": bin_dir}):
    ...     try:
    ...         check_festival()
    ...     except FestivalNotFoundError as err:
    ...         print(err)
    Festival (the `festival` program) is not on PATH: the other-...
    >>> with open(os.path.join(bin_dir, "festival"), "w") as f:
    ...     _ = f.write("#!/bin/sh\\n")
    >>> os.chmod(os.path.join(bin_dir, "festival"), 0o755)
    >>> with mock.patch.dict(os.environ, {"PATH": bin_dir}):
    ...     check_festival()  # an executable `festival` on PATH: no error
    >>> shutil.rmtree(bin_dir)
    """
    if shutil.which("festival") is None:
        raise FestivalNotFoundError(
            "Festival (the `festival` program) is not on PATH: the other-"
            "synthesizer "
            "test needs it. Install Festival and the voices of your "
            "languages (Debian/Ubuntu), e.g. `apt-get install festival "
            "festvox-italp16k festvox-itapc16k festvox-ru`; voices exist "
            f"for {', '.join(sorted(FESTIVAL_VOICES))}."
        )


def festival_text(text, encoding):
    """``text`` as bytes a Festival voice of ``encoding`` reads.

    Typographic quotes and dashes become ASCII; anything else the
    encoding lacks becomes a space.

    Example
    -------
    >>> festival_text("Perché “no”?", "iso-8859-1")
    b'Perch\\xe9 "no"?'
    """
    text = unicodedata.normalize("NFC", text).translate(_ASCII_PUNCTUATION)
    out = []
    for ch in text:
        try:
            out.append(ch.encode(encoding))
        except UnicodeEncodeError:
            out.append(b" ")
    return b"".join(out)


def _scheme_string(data):
    return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def synthesize(jobs, voice, encoding, folder):
    """Reads every job's text with one Festival process.

    Arguments
    ---------
    jobs : list of dict
        ``text``, ``tempo`` (duration stretch) and ``name`` (file name
        written in ``folder``).
    voice : str
        Festival voice name (without ``voice_``).
    encoding : str
        Text encoding of the voice.
    folder : str
        Existing folder for the wav files.

    Returns
    -------
    dict
        ``name -> (float64 samples, sample rate)``.

    Raises
    ------
    RuntimeError
        If Festival wrote no audio for a job (with its exit status and
        the end of its error output).

    Example
    -------
    >>> import shutil
    >>> from unittest import mock
    >>> tmp = tempfile.mkdtemp()
    >>> fake = "#!/bin/sh\\necho 'SIOD ERROR: no voice' >&2\\nexit 1\\n"
    >>> with open(os.path.join(tmp, "festival"), "w") as f:  # reads nothing
    ...     _ = f.write(fake)
    >>> os.chmod(os.path.join(tmp, "festival"), 0o755)
    >>> jobs = [dict(text="Perché “no”?", tempo=1.1, name="a.wav")]
    >>> voice = ("lp_diphone", "iso-8859-1")  # Italian, 8-bit text
    >>> with mock.patch.dict(os.environ, {"PATH": tmp}):
    ...     try:
    ...         synthesize(jobs, *voice, tmp)
    ...     except RuntimeError as err:
    ...         print(err)
    Festival voice lp_diphone produced no audio ... 1): SIOD ERROR: no voice
    >>> with open(os.path.join(tmp, "lp_diphone.scm"), "rb") as f:
    ...     print(f.read().decode("iso-8859-1"), end="")
    (voice_lp_diphone)
    (Parameter.set 'Duration_Stretch 1.100)
    (utt.save.wave (SynthText "Perché \\"no\\"?") ".../a.wav" 'riff)
    >>> audio = synthesize(jobs, *voice, tmp)  # doctest: +SKIP
    >>> samples, rate = audio["a.wav"]  # doctest: +SKIP
    >>> rate  # doctest: +SKIP
    16000
    >>> shutil.rmtree(tmp)
    """
    # One process per voice: loading a voice costs up to seconds (the
    # Russian unit database), reading a sentence a fraction of that.
    script = [f"(voice_{voice})".encode()]
    for job in jobs:
        path = os.path.join(folder, job["name"]).encode()
        script.append(b"(Parameter.set 'Duration_Stretch %.3f)" % job["tempo"])
        script.append(
            b"(utt.save.wave (SynthText %s) %s 'riff)"
            % (
                _scheme_string(festival_text(job["text"], encoding)),
                _scheme_string(path),
            )
        )
    script_path = os.path.join(folder, f"{voice}.scm")
    with open(script_path, "wb") as f:
        f.write(b"\n".join(script) + b"\n")
    check_festival()  # a clear error, not subprocess' FileNotFoundError
    res = subprocess.run(
        ["festival", "-b", script_path], capture_output=True, timeout=3600
    )
    out = {}
    for job in jobs:
        path = os.path.join(folder, job["name"])
        if not os.path.isfile(path) or os.path.getsize(path) <= 44:
            raise RuntimeError(
                f"Festival voice {voice} produced no audio for "
                f"{job['text']!r} (exit status {res.returncode}): "
                + res.stderr.decode(errors="replace").strip()[-500:]
            )
        data, rate = sf.read(path, dtype="float64", always_2d=True)
        out[job["name"]] = (data.mean(axis=1), rate)
    return out


def _resample(x, rate_in, rate_out):
    """FFT resampling (band-limited; the output rate's Nyquist)."""
    n_out = max(1, int(round(len(x) * rate_out / rate_in)))
    if n_out == len(x):
        return x
    spectrum = np.fft.rfft(x)
    keep = min(len(spectrum), n_out // 2 + 1)
    return np.fft.irfft(spectrum[:keep], n_out) * (n_out / len(x))


def _noise(kind, n, rng):
    white = rng.standard_normal(n)
    if kind == "pink":
        spectrum = np.fft.rfft(white)
        freqs = np.arange(len(spectrum), dtype=float)
        freqs[0] = 1.0
        white = np.fft.irfft(spectrum / np.sqrt(freqs), n)
    white -= white.mean()
    return white / (np.sqrt(np.mean(white**2)) + 1e-12)


def recording(speech, rate, seed):
    """Festival output -> a 16 kHz clip in FLEURS-like conditions.

    Speed perturbation, 0.2-0.8 s of leading and 0.4-1.0 s of trailing
    silence, noise at 25-45 dB SNR, a short reverb for half of the clips
    and a random level.

    Arguments
    ---------
    speech : numpy.ndarray
        Mono samples in [-1, 1].
    rate : int
        Their sample rate.
    seed : int
        Everything random follows it.

    Returns
    -------
    numpy.ndarray
        float64 samples at 16 kHz, peak below 1.

    Example
    -------
    >>> tone = np.sin(np.arange(8000) / 5.0)
    >>> clip = recording(tone, 8000, seed=0)
    >>> 1.6 * SAMPLE_RATE < len(clip) < 2.9 * SAMPLE_RATE
    True
    """
    rng = np.random.default_rng(seed)
    speed = rng.uniform(*_SPEED)
    x = _resample(speech, rate * speed, SAMPLE_RATE)
    lead = int(rng.uniform(0.2, 0.8) * SAMPLE_RATE)
    trail = int(rng.uniform(0.4, 1.0) * SAMPLE_RATE)
    y = np.concatenate([np.zeros(lead), x, np.zeros(trail)])
    loud = np.abs(x) > 0.05 * (np.abs(x).max() + 1e-12)
    rms = np.sqrt(np.mean(x[loud] ** 2)) if loud.any() else 0.1
    kind = "pink" if rng.random() < 0.5 else "white"
    snr = rng.uniform(*_SNR_DB)
    y = y + _noise(kind, len(y), rng) * rms / 10 ** (snr / 20)
    if rng.random() < _REVERB_PROBABILITY:
        taps = int(rng.uniform(*_RT60_S) * SAMPLE_RATE)
        tail = rng.standard_normal(taps) * np.exp(-6.9 * np.arange(taps) / taps)
        direct_to_reverb = rng.uniform(3.0, 10.0)  # dB
        tail *= np.sqrt(10 ** (-direct_to_reverb / 10) / np.sum(tail**2))
        tail[0] = 1.0
        n = len(y) + taps
        y = np.fft.irfft(np.fft.rfft(y, n) * np.fft.rfft(tail, n), n)
        y = y[: len(y) - taps]
    return y * 10 ** (rng.uniform(-12, -3) / 20) / (np.abs(y).max() + 1e-9)


def comparison_key(text):
    """What two texts must share to count as one sentence: case,
    punctuation and spacing do not count.

    Example
    -------
    >>> comparison_key("Ciao,  Mondo!") == comparison_key("ciao mondo")
    True
    """
    text = unicodedata.normalize("NFC", text).casefold()
    kept = (ch if ch.isalnum() else " " for ch in text)
    return " ".join("".join(kept).split())


def held_out(sentences, seen):
    """Sentences of ``sentences`` not in ``seen``, each once, in order.

    Arguments
    ---------
    sentences : iterable of str
        Candidates (e.g. a FLEURS test split's transcriptions).
    seen : iterable of str
        Texts a model trained on (e.g. Common Voice train and dev).

    Returns
    -------
    list of str

    Example
    -------
    >>> held_out(["Ciao, mondo!", "Buona sera.", "ciao mondo"], ["Buona sera"])
    ['Ciao, mondo!']
    """
    seen = {comparison_key(text) for text in seen}
    out = []
    for text in sentences:
        key = comparison_key(text)
        if key and key not in seen:
            seen.add(key)
            out.append(text)
    return out


def _read_tsv(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def fleurs_sentences(fleurs_root, lang, split="test"):
    """Raw transcriptions of a FLEURS-layout split, in file order.

    Arguments
    ---------
    fleurs_root : str
        Folder holding ``data/<code>/`` (or ``<code>/``).
    lang : str
        Whisper language code.
    split : str
        ``train``, ``dev`` or ``test``.

    Returns
    -------
    list of str
        The third column (raw transcription) of every row.

    Example
    -------
    >>> import shutil
    >>> root = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(root, "data", "it_it"))
    >>> tsv = os.path.join(root, "data", "it_it", "test.tsv")
    >>> with open(tsv, "w", encoding="utf-8") as f:  # FLEURS: 7 columns
    ...     for i, text in enumerate(["Ciao, mondo!", "Buona sera."]):
    ...         _ = f.write(f"{i}\\t{i}.wav\\t{text}\\tx\\tx\\t9\\tMALE\\n")
    >>> fleurs_sentences(root, "it")
    ['Ciao, mondo!', 'Buona sera.']
    >>> shutil.rmtree(root)
    """
    from speechbrain_lora_experts.data.fleurs import find_fleurs_folder
    from speechbrain_lora_experts.languages import fleurs_code

    folder = find_fleurs_folder(fleurs_root, fleurs_code(lang))
    return [row[2] for row in _read_tsv(os.path.join(folder, f"{split}.tsv"))]


def common_voice_sentences(cv_root, lang, splits=("train", "dev")):
    """Sentences of Common Voice split TSVs (looked up by column name).

    Arguments
    ---------
    cv_root : str
        Release folder holding ``<locale>/``.
    lang : str
        Whisper language code.
    splits : sequence of str
        TSV names without ``.tsv``; absent ones are skipped.

    Returns
    -------
    list of str
        The ``sentence`` column of the splits, in order.

    Example
    -------
    >>> import shutil
    >>> root = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(root, "it"))
    >>> header = "client_id\\tpath\\tsentence\\tup_votes\\n"
    >>> for split, text in [("train", "Buona sera."), ("dev", "Grazie.")]:
    ...     with open(os.path.join(root, "it", f"{split}.tsv"), "w") as f:
    ...         _ = f.write(header + f"c1\\ta.mp3\\t{text}\\t2\\n")
    >>> common_voice_sentences(root, "it")
    ['Buona sera.', 'Grazie.']
    >>> common_voice_sentences(root, "it", splits=("test",))  # no test.tsv
    []
    >>> shutil.rmtree(root)
    """
    from speechbrain_lora_experts.languages import common_voice_locales

    out = []
    for locale in common_voice_locales(lang):
        for split in splits:
            path = os.path.join(cv_root, locale, f"{split}.tsv")
            if not os.path.isfile(path):
                continue
            rows = _read_tsv(path)
            if not rows or "sentence" not in rows[0]:
                continue
            column = rows[0].index("sentence")
            out += [row[column] for row in rows[1:] if len(row) > column]
    return out


def build_other_synth_test(
    out_dir, sentences, seed=0, max_per_language=None, progress=False
):
    """Read sentences with Festival into a FLEURS-layout test split.

    Arguments
    ---------
    out_dir : str or os.PathLike
        Root of the FLEURS layout written (``<out_dir>/data/<code>/``).
    sentences : dict
        Whisper language code -> list of sentences, already held out
        from training (see :func:`held_out`). Languages without an
        installed Festival voice are skipped and reported.
    seed : int
        Tempo, speed, noise, room and level of every clip follow it.
    max_per_language : int, optional
        Read only the first sentences of each language.
    progress : bool
        Print one line per language.

    Returns
    -------
    dict
        ``languages`` (those written), ``missing`` (language -> reason),
        ``voices`` (language -> voice names used), ``rows`` (language ->
        clips), ``audio_seconds``, ``seconds`` and ``synthesizer``.

    Raises
    ------
    FestivalNotFoundError
        If Festival is not installed.

    Example
    -------
    >>> import shutil
    >>> from unittest import mock
    >>> tmp = tempfile.mkdtemp()
    >>> sentences = {"de": ["Hallo Welt."]}
    >>> with mock.patch.dict(os.environ, {"PATH": tmp}):  # no festival
    ...     build_other_synth_test(os.path.join(tmp, "out"), sentences)
    Traceback (most recent call last):
    ...
    speechbrain_lora_experts.data.other_synth.FestivalNotFoundError: ...
    >>> with open(os.path.join(tmp, "festival"), "w") as f:  # never run
    ...     _ = f.write("#!/bin/sh\\n")
    >>> os.chmod(os.path.join(tmp, "festival"), 0o755)
    >>> with mock.patch.dict(os.environ, {"PATH": tmp}):
    ...     report = build_other_synth_test(os.path.join(tmp, "out"), sentences)
    >>> report["languages"], report["missing"]  # Festival reads no German
    ([], {'de': 'Debian has no Festival voice for de'})
    >>> it = {"it": ["Buona sera."]}  # needs Festival's Italian voices:
    >>> build_other_synth_test(tmp, it)["rows"]  # doctest: +SKIP
    {'it': 1}
    >>> shutil.rmtree(tmp)
    """
    check_festival()
    from speechbrain_lora_experts.data.demo import (
        _write_tar,
        _write_tsv,
        fleurs_characters,
        fleurs_transcription,
    )
    from speechbrain_lora_experts.languages import (
        canonical_language,
        fleurs_code,
    )

    start = time.time()
    out_dir = os.fspath(out_dir)
    report = dict(
        synthesizer="festival",
        languages=[],
        missing={},
        voices={},
        rows={},
        audio_seconds=0.0,
    )
    for lang, texts in sentences.items():
        lang = canonical_language(lang)
        voices = installed_voices(lang)
        if not voices:
            report["missing"][lang] = missing_reason(lang)
            continue
        texts = list(texts)[:max_per_language]
        if not texts:
            report["missing"][lang] = "no held-out sentences"
            continue
        code = fleurs_code(lang)
        jobs = []
        for i, text in enumerate(texts):
            voice = voices[i % len(voices)]
            rng = np.random.default_rng(_stable_int(seed, lang, i, text))
            name = f"festival-{_stable_int(seed, code, i) % 10**12}.wav"
            jobs.append(
                dict(
                    text=text,
                    voice=voice,
                    name=name,
                    tempo=float(rng.uniform(*_TEMPO)),
                    seed=_stable_int(seed, "channel", lang, i),
                    id=1 + i,
                )
            )
        audio = {}
        with tempfile.TemporaryDirectory() as tmp:
            for voice, encoding, _ in voices:
                group = [j for j in jobs if j["voice"][0] == voice]
                if group:
                    audio.update(synthesize(group, voice, encoding, tmp))
        rows, members = [], []
        for job in jobs:
            speech, rate = audio[job["name"]]
            clip = recording(speech, rate, job["seed"])
            buf = io.BytesIO()
            sf.write(buf, clip, SAMPLE_RATE, format="WAV", subtype="PCM_16")
            members.append((f"test/{job['name']}", buf.getvalue()))
            norm = fleurs_transcription(job["text"])
            gender = "FEMALE" if job["voice"][0] in _FEMALE else "MALE"
            rows.append(
                [
                    job["id"],
                    job["name"],
                    job["text"],
                    norm,
                    fleurs_characters(norm),
                    len(clip),
                    gender,
                ]
            )
            report["audio_seconds"] += len(clip) / SAMPLE_RATE
        folder = os.path.join(out_dir, "data", code)
        os.makedirs(os.path.join(folder, "audio"), exist_ok=True)
        _write_tsv(os.path.join(folder, "test.tsv"), None, rows)
        _write_tar(os.path.join(folder, "audio", "test.tar.gz"), members)
        report["languages"].append(lang)
        report["voices"][lang] = [v[0] for v in voices]
        report["rows"][lang] = len(rows)
        if progress:
            print(f"[other_synth] {lang}: {len(rows)} clips", flush=True)
    report["audio_seconds"] = round(report["audio_seconds"], 1)
    report["seconds"] = round(time.time() - start, 1)
    return report


def main(argv=None):
    """Command line entry point (see the module docstring).

    Reads each language's FLEURS test sentences, holds out those of the
    Common Voice train and dev splits (``--cv``), reads them with Festival
    (:func:`build_other_synth_test`) and prints the report as JSON.

    Arguments
    ---------
    argv : list of str, optional
        Command-line arguments (default: ``sys.argv[1:]``).

    Raises
    ------
    FestivalNotFoundError
        If Festival is not installed (after the sentences are read).

    Example
    -------
    >>> import shutil
    >>> from unittest import mock
    >>> tmp = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(tmp, "fleurs", "data", "de_de"))
    >>> tsv = os.path.join(tmp, "fleurs", "data", "de_de", "test.tsv")
    >>> with open(tsv, "w", encoding="utf-8") as f:
    ...     _ = f.write("1\\ta.wav\\tHallo.\\thallo\\th|a|l|l|o\\t1\\tMALE\\n")
    >>> argv = ["--out", tmp, "--fleurs", os.path.join(tmp, "fleurs")]
    >>> with mock.patch.dict(os.environ, {"PATH": tmp}):  # no festival
    ...     main(argv + ["--languages", "de"])
    Traceback (most recent call last):
    ...
    speechbrain_lora_experts.data.other_synth.FestivalNotFoundError: ...
    >>> with open(os.path.join(tmp, "festival"), "w") as f:  # never run
    ...     _ = f.write("#!/bin/sh\\n")
    >>> os.chmod(os.path.join(tmp, "festival"), 0o755)
    >>> with mock.patch.dict(os.environ, {"PATH": tmp}):
    ...     main(argv + ["--languages", "de"])
    {
     "synthesizer": "festival",
     "languages": [],
     "missing": {
      "de": "Debian has no Festival voice for de"
     },
     "voices": {},
     "rows": {},
     "audio_seconds": 0.0,
     "seconds": ...
    }
    >>> main(argv + ["--languages", "ko"])  # no FLEURS folder for ko_kr
    Traceback (most recent call last):
    ...
    speechbrain_lora_experts.data.manifest.PreparationError: No FLEURS ...
    >>> shutil.rmtree(tmp)
    """
    parser = argparse.ArgumentParser(
        prog="python -m speechbrain_lora_experts.data.other_synth",
        description="Read held-out FLEURS test sentences with Festival "
        "into a FLEURS-layout out-of-domain test.",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--fleurs", required=True, help="FLEURS root")
    parser.add_argument(
        "--cv", default=None, help="Common Voice release: train/dev held out"
    )
    parser.add_argument("--languages", required=True, help="comma list")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-per-language", type=int, default=None)
    args = parser.parse_args(argv)
    sentences = {}
    for lang in (x.strip() for x in args.languages.split(",")):
        if not lang:
            continue
        seen = common_voice_sentences(args.cv, lang) if args.cv else []
        sentences[lang] = held_out(fleurs_sentences(args.fleurs, lang), seen)
    report = build_other_synth_test(
        args.out,
        sentences,
        seed=args.seed,
        max_per_language=args.max_per_language,
        progress=True,
    )
    print(json.dumps(report, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
