"""Audio reading for data preparation and the dataio pipeline.

Everything goes through soundfile (libsndfile >= 1.1 reads mp3, wav, flac
and ogg), so Common Voice mp3 clips need no ffmpeg/sox backend. Whisper
wants 16 kHz mono; real corpora contain stereo and 44.1/48 kHz clips,
which :func:`load_audio` converts instead of anyone dropping them.

A valid header says little about the rest of a file: an mp3 with a corrupt
body or a truncated one passes :func:`audio_info`. :func:`check_audio`
decodes the whole file once (data preparation does, about 1.3 ms per
second of 48 kHz mp3 on one core) and refuses corrupt, truncated and
non-finite audio; :func:`load_audio` refuses non-finite samples too.

Authors
 * speechbrain-lora-experts developers 2026
"""

import os

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

#: Reasons an :class:`AudioError` can carry (used as skip reasons).
MISSING, ZERO_BYTE, UNREADABLE, NO_FRAMES = (
    "missing_clip",
    "zero_byte_clip",
    "unreadable_clip",
    "empty_audio",
)
CORRUPT, TRUNCATED, NON_FINITE = (
    "corrupt_clip",
    "truncated_clip",
    "non_finite_audio",
)

# Decoded audio may fall short of the header's duration by encoder
# padding (mp3 frames); more than this is a truncated file.
_TRUNCATION_TOLERANCE_S = 0.1
_TRUNCATION_TOLERANCE = 0.02
_BLOCK_FRAMES = 1 << 16

_FIX = (
    "Re-download or re-extract the file, or re-run data preparation, "
    "which skips such clips and counts them in prepare_report.json."
)


class AudioError(RuntimeError):
    """An audio file that cannot be used: missing, empty or undecodable.

    Attributes
    ----------
    path : str
        The offending file.
    reason : str
        One of ``missing_clip``, ``zero_byte_clip``, ``unreadable_clip``,
        ``empty_audio``, ``corrupt_clip``, ``truncated_clip``,
        ``non_finite_audio``.
    detail : str
        What is wrong, without the path and the fix.

    Example
    -------
    >>> try:
    ...     load_audio("/nonexistent/clip.wav")
    ... except AudioError as e:
    ...     print("clip.wav" in str(e))
    True
    """

    def __init__(self, path, reason, detail):
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{detail}: {self.path}. {_FIX}")


def _open_info(path):
    """``soundfile.info`` with every failure turned into an AudioError."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise AudioError(path, MISSING, "Audio file does not exist")
    if os.path.getsize(path) == 0:
        raise AudioError(path, ZERO_BYTE, "Audio file is empty (0 bytes)")
    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioError(
            path,
            UNREADABLE,
            f"Cannot decode audio (corrupt or not wav/flac/mp3/ogg; "
            f"libsndfile says: {err})",
        ) from err
    if info.frames <= 0 or info.samplerate <= 0:
        raise AudioError(path, NO_FRAMES, "Audio file holds no samples")
    return info


def audio_info(path):
    """Duration, sample rate and channel count read from the file header.

    Arguments
    ---------
    path : str or os.PathLike
        wav, flac, mp3 or ogg file.

    Returns
    -------
    tuple
        ``(duration_s, sample_rate, channels)``.

    Raises
    ------
    AudioError
        Missing, zero-byte, undecodable or sample-less file.

    Example
    -------
    >>> import numpy as np
    >>> path = str(getfixture("tmp_path") / "a.wav")
    >>> sf.write(path, np.zeros(8000, dtype="float32"), 16000)
    >>> audio_info(path)
    (0.5, 16000, 1)
    """
    info = _open_info(path)
    return info.frames / info.samplerate, info.samplerate, info.channels


def check_audio(path):
    """Decode a whole file once: its true duration, or an AudioError.

    Catches what the header cannot show: a body that does not decode, a
    file cut short (decoded duration well below the declared one) and
    NaN/infinite samples (float wav). Decoding is blockwise, so memory
    stays small whatever the clip length.

    Arguments
    ---------
    path : str or os.PathLike
        wav, flac, mp3 or ogg file.

    Returns
    -------
    tuple
        ``(decoded_duration_s, sample_rate, channels)``.

    Raises
    ------
    AudioError
        Any reason of :func:`audio_info`, or ``corrupt_clip``,
        ``truncated_clip``, ``non_finite_audio``.

    Example
    -------
    >>> import numpy as np
    >>> path = str(getfixture("tmp_path") / "c.wav")
    >>> sf.write(path, np.zeros(800, dtype="float32"), 16000)
    >>> check_audio(path)
    (0.05, 16000, 1)
    >>> nan = np.full(800, np.nan, dtype="float32")
    >>> sf.write(path, nan, 16000, subtype="FLOAT")
    >>> try:
    ...     check_audio(path)
    ... except AudioError as err:
    ...     print(err.reason)
    non_finite_audio
    """
    info = _open_info(path)
    declared = info.frames / info.samplerate
    decoded, finite = 0, True
    try:
        with sf.SoundFile(os.fspath(path)) as f:
            # Not SoundFile.blocks: it trusts the header's frame count and
            # so never sees a file end early.
            while True:
                block = f.read(_BLOCK_FRAMES, dtype="float32")
                if not len(block):
                    break
                finite = finite and bool(np.isfinite(block).all())
                decoded += len(block)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioError(
            path,
            CORRUPT,
            f"Audio stops decoding after {decoded / info.samplerate:.2f} s "
            f"of {declared:.2f} s (corrupt file; libsndfile says: {err})",
        ) from err
    if not finite:
        raise _non_finite(path)
    _check_length(path, decoded, info)
    return decoded / info.samplerate, info.samplerate, info.channels


def _check_length(path, decoded, info):
    """Refuse audio that decodes well short of its header's duration."""
    declared = info.frames / info.samplerate
    if decoded == 0:
        raise AudioError(
            path,
            CORRUPT,
            f"Audio decodes to nothing although its header declares "
            f"{declared:.2f} s (corrupt file)",
        )
    duration = decoded / info.samplerate
    slack = max(_TRUNCATION_TOLERANCE_S, _TRUNCATION_TOLERANCE * declared)
    if declared - duration > slack:
        raise AudioError(
            path,
            TRUNCATED,
            f"Audio decodes to {duration:.2f} s but its header says "
            f"{declared:.2f} s (truncated file)",
        )


def _non_finite(path):
    return AudioError(
        path,
        NON_FINITE,
        "Audio holds NaN or infinite samples (a broken float file), which "
        "would turn every feature and gate weight into NaN",
    )


def load_audio(path, sample_rate=16000):
    """Read a file as a mono float32 tensor at ``sample_rate``.

    Channels are averaged; other rates are resampled with
    ``torchaudio.functional.resample``.

    Arguments
    ---------
    path : str or os.PathLike
        wav, flac, mp3 or ogg file.
    sample_rate : int
        Target rate (Whisper: 16000).

    Returns
    -------
    torch.Tensor
        Shape ``[samples]``, dtype float32.

    Raises
    ------
    AudioError
        Missing, zero-byte, undecodable, sample-less, truncated or
        non-finite file.

    Example
    -------
    >>> import numpy as np
    >>> path = str(getfixture("tmp_path") / "b.wav")
    >>> sf.write(path, np.zeros((4800, 2), dtype="float32"), 48000)
    >>> load_audio(path).shape
    torch.Size([1600])
    """
    info = _open_info(path)  # uniform errors before decoding
    try:
        data, rate = sf.read(os.fspath(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioError(
            path, CORRUPT, f"Cannot decode audio (corrupt file; {err})"
        ) from err
    if not np.isfinite(data).all():
        raise _non_finite(path)
    _check_length(path, len(data), info)
    wav = torch.from_numpy(data).mean(dim=1)
    if rate != sample_rate:
        wav = AF.resample(wav, orig_freq=rate, new_freq=sample_rate)
    return wav.contiguous()
