"""Audio reading for data preparation and the dataio pipeline.

Everything goes through soundfile (libsndfile >= 1.1 reads mp3, wav, flac
and ogg), so Common Voice mp3 clips need no ffmpeg/sox backend. Whisper
wants 16 kHz mono; real corpora contain stereo and 44.1/48 kHz clips,
which :func:`load_audio` converts instead of anyone dropping them.

Authors
 * speechbrain-lora-experts developers 2026
"""

import os

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
        ``empty_audio``.
    detail : str
        What is wrong, without the path and the fix.
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
        Missing, zero-byte, undecodable or sample-less file.

    Example
    -------
    >>> import numpy as np
    >>> path = str(getfixture("tmp_path") / "b.wav")
    >>> sf.write(path, np.zeros((4800, 2), dtype="float32"), 48000)
    >>> load_audio(path).shape
    torch.Size([1600])
    """
    _open_info(path)  # uniform errors before decoding
    try:
        data, rate = sf.read(os.fspath(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioError(
            path, UNREADABLE, f"Cannot decode audio ({err})"
        ) from err
    wav = torch.from_numpy(data).mean(dim=1)
    if rate != sample_rate:
        wav = AF.resample(wav, orig_freq=rate, new_freq=sample_rate)
    return wav.contiguous()
