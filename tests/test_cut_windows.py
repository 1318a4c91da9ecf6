"""Windows cut to the batch: exact short windows, cache, gate, interface."""

import json
import os

import pytest
import torch
from interface_fixtures import LANGUAGES, export, load, write_clips

from speechbrain_lora_experts import decoding
from speechbrain_lora_experts.data.audio import load_audio
from speechbrain_lora_experts.frozen_prefix import FrozenPrefixCache
from speechbrain_lora_experts.whisper import Whisper


def make(hub, tmp_path, window_s=4, bucket=None):
    torch.manual_seed(0)
    whisper = Whisper(
        hub,
        str(tmp_path / "hub"),
        encoder_window_s=window_s,
        window_bucket_s=bucket,
    )
    return whisper.requires_grad_(False).eval()


def encode(whisper, wavs):
    with torch.no_grad():
        return whisper.forward_encoder(whisper._get_mel(wavs))


def test_the_window_is_the_longest_clip_rounded_up(tiny_whisper_dir, tmp_path):
    whisper = make(tiny_whisper_dir, tmp_path, bucket=1.5)
    second = 16000
    assert whisper.batch_samples(1) == 24000
    assert whisper.batch_samples(24000) == 24000
    assert whisper.batch_samples(24001) == 48000
    # Never past the encoder window (4 s here).
    assert whisper.batch_samples(60 * second) == 4 * second
    assert make(tiny_whisper_dir, tmp_path).batch_samples(1) == 4 * second
    for bad in (0, -1, 0.01):
        with pytest.raises(ValueError, match="window_bucket_s"):
            make(tiny_whisper_dir, tmp_path, bucket=bad)


def test_a_cut_window_is_whisper_with_that_window(tiny_whisper_dir, tmp_path):
    cut = make(tiny_whisper_dir, tmp_path, bucket=1)
    wavs = torch.randn(2, 20000) * 0.1  # 1.25 s: cut to 2 s
    out = encode(cut, wavs)
    assert out.shape[1] == 100
    # The same clips through a model whose fixed window is 2 s.
    fixed = make(tiny_whisper_dir, tmp_path, window_s=2)
    torch.testing.assert_close(out, encode(fixed, wavs), rtol=0, atol=1e-6)
    # A batch as long as the window takes HF's own encoder path alike.
    long = torch.randn(2, 4 * 16000) * 0.1
    plain = make(tiny_whisper_dir, tmp_path)
    torch.testing.assert_close(
        encode(cut, long), encode(plain, long), rtol=0, atol=1e-6
    )
    # Hooks on the encoder module still fire (gates tap it).
    calls = []
    cut.model.encoder.register_forward_hook(lambda *args: calls.append(1))
    encode(cut, wavs)
    assert calls == [1]
    # Gradients reach the convolutions through the cut path.
    cut.requires_grad_(True).train()
    cut.forward_encoder(cut._get_mel(wavs)).sum().backward()
    assert cut.model.encoder.conv1.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="even number of mel frames"):
        cut.model.encoder(torch.zeros(1, 80, 801))


def test_the_cache_keeps_one_entry_per_window(tiny_whisper_dir, tmp_path):
    cut = make(tiny_whisper_dir, tmp_path, bucket=1)
    cache = FrozenPrefixCache(str(tmp_path / "cache"), cut, 1, "float32")
    clip = torch.randn(1, 12000) * 0.1
    longer = torch.nn.functional.pad(clip, (0, 20000))  # batch of 2 s
    with torch.no_grad():
        short = cache.encode(clip)
        wide = cache.encode(longer)
        assert short.shape[1] == 50 and wide.shape[1] == 100
        torch.testing.assert_close(short, encode(cut, clip), rtol=0, atol=0)
        torch.testing.assert_close(wide, encode(cut, longer), rtol=0, atol=0)
        assert cache.clip_keys(clip) != cache.clip_keys(longer)
        assert cache.counts == {"computed": 2, "loaded": 0}
        # Each is read back at its own length.
        torch.testing.assert_close(cache.encode(longer), wide, rtol=0, atol=0)
        torch.testing.assert_close(cache.encode(clip), short, rtol=0, atol=0)
    assert cache.counts == {"computed": 2, "loaded": 2}


@pytest.fixture(scope="module")
def cut_fusion(tmp_path_factory, tiny_whisper_dir):
    folder, _ = export(
        tmp_path_factory,
        tiny_whisper_dir,
        "fuse",
        "fuse_cut",
        gate=True,
        language_aware=False,
        window_bucket_s=0.5,
    )
    return folder, load(folder, tmp_path_factory)


def test_the_interface_decodes_with_the_trained_cut(cut_fusion, tmp_path):
    folder, asr = cut_fusion
    with open(os.path.join(folder, "model.json"), encoding="utf-8") as f:
        assert json.load(f)["window_bucket_s"] == 0.5
    assert asr.whisper.window_bucket_s == 0.5
    path = write_clips(tmp_path)[1]  # 1.5 s: a 1.5 s window, not 4 s
    wav = load_audio(path).unsqueeze(0)
    # The gate by hand on the cut window: it pools the clip's own frames,
    # i.e. its length over the cut window, not over the 4 s one.
    assert asr.whisper.batch_samples(wav.shape[1]) == 24000
    with torch.no_grad(), asr.experts.scope():
        base = asr.whisper.forward_encoder(asr.whisper._get_mel(wav))
    assert base.shape[1] == 75
    _, lid = decoding.detect_language(asr.whisper, base, LANGUAGES)
    valid = torch.tensor([wav.shape[1] / 24000])
    with torch.no_grad():
        weights, _ = asr.gate(base, valid, None, lid.log())
    # Padding past the clip does not widen the window either.
    padded = torch.nn.functional.pad(wav, (0, 16000))
    for batch, lens in ((wav, None), (padded, [wav.shape[1] / 40000])):
        (result,) = asr.transcribe_batch_detailed(batch, lens)
        assert [result.gate_weights[x] for x in LANGUAGES] == pytest.approx(
            weights[0].tolist(), abs=1e-5
        )
