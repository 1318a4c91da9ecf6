"""Tests of audio probing and loading (soundfile + torchaudio resample)."""

import numpy as np
import pytest
import soundfile as sf
import torch
from corpus_fixtures import Clip, signal, write_clip

from speechbrain_lora_experts.data.audio import (
    AudioError,
    audio_info,
    load_audio,
)


@pytest.mark.parametrize(
    "fmt, ext, rate, channels, duration",
    [
        ("MP3", "mp3", 48000, 1, 1.25),
        ("MP3", "mp3", 44100, 2, 0.5),
        ("WAV", "wav", 16000, 1, 0.75),
        ("FLAC", "flac", 22050, 2, 1.0),
    ],
)
def test_audio_info(tmp_path, fmt, ext, rate, channels, duration):
    path = str(tmp_path / f"a.{ext}")
    sf.write(path, signal(duration, rate, channels), rate, format=fmt)
    got, got_rate, got_channels = audio_info(path)
    assert got == pytest.approx(duration, abs=0.01)
    assert (got_rate, got_channels) == (rate, channels)


@pytest.mark.parametrize(
    "rate, channels", [(48000, 1), (44100, 2), (16000, 1), (8000, 2)]
)
def test_load_audio_is_mono_16k_float32(tmp_path, rate, channels):
    path = str(tmp_path / "a.mp3")
    write_clip(path, Clip(1.0, rate, channels), "MP3")
    wav = load_audio(path)
    assert wav.dtype == torch.float32 and wav.dim() == 1
    assert wav.shape[0] == pytest.approx(16000, abs=16)
    assert wav.abs().max() > 0.05  # the tone survived decode + resample


def test_load_audio_other_rate_and_downmix(tmp_path):
    path = str(tmp_path / "s.wav")
    left = np.full(4800, 0.5, dtype="float32")
    sf.write(path, np.stack([left, -left * 0.5], axis=1), 48000)
    wav = load_audio(path, sample_rate=8000)
    assert wav.shape == (800,)
    assert wav[100:700].mean().item() == pytest.approx(0.125, abs=1e-3)


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("zero", "zero_byte_clip"),
        ("corrupt", "unreadable_clip"),
        ("missing", "missing_clip"),
    ],
)
def test_bad_files_raise_audio_error(tmp_path, kind, reason):
    path = str(tmp_path / f"{kind}.mp3")
    write_clip(path, Clip(kind=kind), "MP3")
    for fn in (audio_info, load_audio):
        with pytest.raises(AudioError) as err:
            fn(path)
        assert err.value.reason == reason
        assert err.value.path == path
        assert path in str(err.value) and "re-run data preparation" in str(
            err.value
        )
        assert isinstance(err.value, RuntimeError)


def test_header_only_wav_has_no_samples(tmp_path):
    path = str(tmp_path / "empty.wav")
    sf.write(path, np.zeros(0, dtype="float32"), 16000)
    with pytest.raises(AudioError) as err:
        audio_info(path)
    assert err.value.reason == "empty_audio"
