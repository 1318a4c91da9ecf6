"""The frozen-prefix cache: exact, reused across runs, keyed, refused."""

import logging

import numpy as np
import pytest
import torch

from speechbrain_lora_experts.attach import WhisperLoRAExperts
from speechbrain_lora_experts.frozen_prefix import (
    FrozenPrefixCache,
    build_prefix_cache,
)
from speechbrain_lora_experts.gate import GateTap, UtteranceGate
from speechbrain_lora_experts.whisper import Whisper


@pytest.fixture
def whisper(tiny_whisper_dir, tmp_path):
    torch.manual_seed(0)
    model = Whisper(tiny_whisper_dir, str(tmp_path / "hub"), encoder_window_s=1)
    return model.requires_grad_(False).eval()


def upper_experts(whisper, layers, **kwargs):
    return WhisperLoRAExperts(
        whisper, expert_names=["de", "es"], rank=2, layers=layers, **kwargs
    )


def test_the_cache_starts_at_the_first_adapted_layer(whisper, tmp_path):
    experts = upper_experts(whisper, {"encoder": "1", "decoder": None})
    cache = build_prefix_cache("auto", str(tmp_path), whisper, experts)
    assert cache.start_layer == 1
    # Experts on layer 0 leave only the front-end frozen: auto stays off.
    whole = upper_experts(whisper, None)
    assert build_prefix_cache("auto", str(tmp_path), whisper, whole) is None
    with pytest.raises(ValueError, match="encoder layer 0"):
        build_prefix_cache(True, str(tmp_path), whisper, whole)


def test_routed_experts_see_the_uncached_encoder_output(whisper, tmp_path):
    experts = upper_experts(whisper, {"encoder": "1", "decoder": None})
    with torch.no_grad():
        for p in experts.parameters():
            p.normal_(0, 0.5)
    cache = build_prefix_cache(
        True, str(tmp_path), whisper, experts, dtype="float32"
    )
    wavs = torch.randn(3, 12000)
    with torch.no_grad():
        for route in (0, 1):
            with experts.scope(route=route):
                plain = whisper.forward_encoder(whisper._get_mel(wavs))
                first = cache.encode(wavs)  # computed
                again = cache.encode(wavs)  # read back
            assert torch.equal(first, plain)
            assert torch.equal(again, plain)
    assert cache.counts == {"computed": 3, "loaded": 9}
    with experts.scope(route=0):
        base = whisper.forward_encoder(whisper._get_mel(wavs))
    with experts.scope(route=1):
        assert not torch.allclose(cache.encode(wavs), base)


def test_float16_entries_stay_close(whisper, tmp_path):
    cache = FrozenPrefixCache(str(tmp_path), whisper, 2, "float16")
    wavs = torch.randn(2, 16000)
    with torch.no_grad():
        plain = whisper.forward_encoder(whisper._get_mel(wavs))
        cached = cache.encode(wavs)
    assert not torch.equal(cached, plain)  # really rounded
    torch.testing.assert_close(cached, plain, rtol=0, atol=2e-2)
    assert np.load(next(tmp_path.rglob("*.npy"))).dtype == np.float16


def test_entries_are_keyed_by_clip_and_frozen_weights(whisper, tmp_path):
    experts = upper_experts(whisper, {"encoder": "1", "decoder": None})
    cache = build_prefix_cache(True, str(tmp_path), whisper, experts)
    folder = cache.folder
    with torch.no_grad():
        # A layer that runs live does not change the entries ...
        whisper.model.encoder.layers[1].fc2.base.weight.add_(1.0)
        assert FrozenPrefixCache(str(tmp_path), whisper, 1).folder == folder
        # ... a frozen one does (another checkpoint, a merged adapter).
        whisper.model.encoder.layers[0].fc2.weight.add_(1.0)
    assert FrozenPrefixCache(str(tmp_path), whisper, 1).folder != folder
    one, other = torch.zeros(1, 8000), torch.zeros(1, 8000)
    other[0, 100] = 1e-3
    assert cache.clip_keys(one) != cache.clip_keys(other)
    # Zero padding to the window is part of the clip's key alike.
    assert cache.clip_keys(one) == cache.clip_keys(torch.zeros(1, 4000))


def test_an_unreadable_entry_is_computed_again(whisper, tmp_path, caplog):
    cache = FrozenPrefixCache(str(tmp_path), whisper, 1, "float32")
    wavs = torch.randn(1, 8000)
    with torch.no_grad():
        good = cache.encode(wavs)
        (path,) = tmp_path.rglob("*.npy")
        path.write_bytes(b"truncated")
        with caplog.at_level(logging.WARNING):
            again = cache.encode(wavs)
    assert "unreadable" in caplog.text and str(path) in caplog.text
    assert torch.equal(again, good)
    assert cache.counts["computed"] == 2
    np.save(path, np.zeros((3, 3), dtype=np.float32))  # wrong shape
    with caplog.at_level(logging.WARNING), torch.no_grad():
        assert torch.equal(cache.encode(wavs), good)
    assert "expected" in caplog.text


def test_refused_where_it_would_not_be_exact(whisper, tmp_path, caplog):
    experts = upper_experts(whisper, {"encoder": "1", "decoder": None})
    whisper.model.config.attention_dropout = 0.1
    with caplog.at_level(logging.INFO):
        assert (
            build_prefix_cache("auto", str(tmp_path), whisper, experts) is None
        )
    assert "attention_dropout" in caplog.text
    with pytest.raises(ValueError, match="attention_dropout"):
        build_prefix_cache(True, str(tmp_path), whisper, experts)
    whisper.model.config.attention_dropout = 0.0
    with pytest.raises(ValueError, match="augmentation"):
        build_prefix_cache(
            True, str(tmp_path), whisper, experts, augmentation=object()
        )
    # A trainable layer below the experts moves the start down to it.
    whisper.model.encoder.layers[0].fc1.weight.requires_grad_(True)
    assert FrozenPrefixCache.check(whisper, experts) == (0, None)
    assert build_prefix_cache("auto", str(tmp_path), whisper, experts) is None
    with pytest.raises(ValueError, match="prefix_cache"):
        build_prefix_cache("sometimes", str(tmp_path), whisper, experts)


def test_a_gate_on_the_encoder_output_routes_from_the_cache(whisper, tmp_path):
    """Decoder-only experts: the whole encoder is cached, the gate still
    routes (its hook on ``encoder.forward`` never fires there)."""
    experts = upper_experts(whisper, None, parts=("decoder",))
    torch.manual_seed(1)
    gate = UtteranceGate(64, 2, hidden_size=4, features="first_adapted").eval()
    tap = GateTap(whisper, experts, gate)
    assert tap.layer is None
    cache = build_prefix_cache(
        "auto", str(tmp_path), whisper, experts, dtype="float32"
    )
    assert cache.start_layer == 2
    wavs = torch.randn(2, 16000)
    fraction = torch.tensor([1.0, 0.5])
    with torch.no_grad():
        tap.prepare(valid_fraction=fraction)
        whisper.forward_encoder(whisper._get_mel(wavs))
        expected = tap.weights
        tap.prepare(valid_fraction=fraction)
        tap.route_encoder_output(cache.encode(wavs))
    assert torch.equal(tap.weights, expected)
    assert experts.routing.mode == "mix"
    tap.remove()
    layer_tap = GateTap(
        whisper, upper_experts(whisper, "1", parts=("encoder",)), gate
    )
    with pytest.raises(RuntimeError, match="before encoder layer 1"):
        layer_tap.route_encoder_output(torch.zeros(1, 50, 64))
    layer_tap.remove()
