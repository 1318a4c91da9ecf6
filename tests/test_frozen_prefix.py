"""The frozen-prefix cache: exact, reused across runs, keyed, refused."""

import logging
import os
import sys

import numpy as np
import pytest
import torch
from recipe_rows import run_in_recipe
from safetensors.torch import load_file

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


# Recipe: cached and uncached training give the same expert ----------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from speechbrain_lora_experts.data.demo import build_demo_corpus

    root = tmp_path_factory.mktemp("prefix")
    build_demo_corpus(
        root / "corpus",
        ["de", "es"],
        per_split=(4, 2, 2),
        seed=5,
        formats=("common_voice",),
        speakers=2,
        progress=False,
    )
    return root


def train(
    root, whisper_dir, out, *extra, epochs=2, yaml="expert.yaml", layers="1-1"
):
    languages = ["--language=de"]
    if yaml != "expert.yaml":
        languages = ["--languages=[de,es]", "--untrained_experts=True"]
    command = [
        sys.executable,
        "train.py",
        os.path.join("hparams", yaml),
        *languages,
        f"--data_folder={root / 'corpus' / 'common_voice'}",
        f"--whisper_hub={whisper_dir}",
        f"--whisper_save_folder={root / 'hub_cache'}",
        f"--output_folder={out}",
        f"--expert_pool={out / 'pool'}",
        f"--lora_layers={layers}",  # default: encoder and decoder layer 1
        "--batch_size=2",
        f"--number_of_epochs={epochs}",
        "--lr=0.01",
        "--encoder_window_s=10",
        "--device=cpu",
        "--precision=fp32",
        *extra,
    ]
    result = run_in_recipe(command)
    assert result.returncode == 0, result.stderr[-3000:]
    return (out / "log.txt").read_text()


def adapter(out):
    return load_file(str(out / "pool" / "de" / "adapter_model.safetensors"))


def test_cached_training_gives_the_uncached_weights(corpus, tiny_whisper_dir):
    folder = corpus / "prefix_cache"
    plain_log = train(
        corpus, tiny_whisper_dir, corpus / "plain", "--prefix_cache=False"
    )
    assert "frozen-prefix cache" not in plain_log
    cached = ("--prefix_cache=True", f"--prefix_cache_folder={folder}")
    log = train(
        corpus,
        tiny_whisper_dir,
        corpus / "cached",
        *cached,
        "--prefix_cache_dtype=float32",
    )
    assert "frozen-prefix cache on: encoder layers < 1" in log
    # Epoch 1 computes the 4 training clips, epoch 2 reads them back.
    assert "train: frozen-prefix cache computed 4 clips, read 0" in log
    assert "train: frozen-prefix cache computed 0 clips, read 4" in log
    plain, cached_weights = (
        adapter(corpus / "plain"),
        adapter(corpus / "cached"),
    )
    assert plain.keys() == cached_weights.keys()
    for key in plain:
        torch.testing.assert_close(
            cached_weights[key], plain[key], rtol=0, atol=1e-6
        )
    assert any(plain[k].abs().sum() > 0 for k in plain if "lora_B" in k)

    # Another run on the same Whisper and clips computes nothing; its
    # experts (encoder layer 1, every decoder layer: per-part layers from
    # the command line) load in the pretrained interface.
    log = train(
        corpus,
        tiny_whisper_dir,
        corpus / "again",
        *cached,
        "--prefix_cache_dtype=float32",
        epochs=1,
        layers="{encoder: 1-1}",
    )
    assert "train: frozen-prefix cache computed 0 clips, read 4" in log
    from speechbrain_lora_experts.inference import LoRAExpertsASR

    asr = LoRAExpertsASR.from_hparams(source=str(corpus / "again" / "model"))
    adapted = sorted(asr.experts.layers)
    assert "encoder.layers.1.fc1" in adapted
    assert not any(name.startswith("encoder.layers.0.") for name in adapted)
    assert "decoder.layers.0.fc1" in adapted


@pytest.mark.parametrize(
    "yaml, shape, written",
    [
        # Decoder-only experts: the gate on the encoder output routes from
        # the cached encoder (no encoder.forward hook fires there).
        ("fuse.yaml", "--lora_parts=[decoder]", "model/gate.safetensors"),
        # Teachers and student share one cached prefix per batch (the
        # default shape here: encoder and decoder layer 1).
        (
            "distill.yaml",
            "--lora_parts=[encoder,decoder]",
            "model/experts/student/adapter_model.safetensors",
        ),
    ],
)
def test_fusion_and_distillation_train_alike_from_the_cache(
    corpus, tiny_whisper_dir, yaml, shape, written
):
    name = yaml.split(".")[0]
    folder = corpus / f"prefix_cache_{name}"
    runs = {}
    for cache in ("False", "True"):
        out = corpus / f"{name}_{cache}"
        log = train(
            corpus,
            tiny_whisper_dir,
            out,
            shape,
            f"--prefix_cache={cache}",
            f"--prefix_cache_folder={folder}",
            "--prefix_cache_dtype=float32",
            yaml=yaml,
        )
        assert ("frozen-prefix cache on" in log) == (cache == "True")
        runs[cache] = load_file(str(out / written))
    assert "train: frozen-prefix cache computed 0 clips, read 8" in log
    assert runs["True"].keys() == runs["False"].keys()
    for key, value in runs["False"].items():
        torch.testing.assert_close(runs["True"][key], value, rtol=0, atol=1e-6)
