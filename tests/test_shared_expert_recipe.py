"""Shared + expert end to end: residual experts on a multilingual LoRA.

The multilingual-LoRA recipe writes the shared adapter; ``expert.yaml``
with ``--shared_adapter`` trains a residual expert on Whisper with that
adapter merged; the exported model folder carries the shared adapter and
the pretrained interface merges it again.
"""

import json
import os

import pytest
import torch
from demo_corpora import tiny_corpus

from speechbrain_lora_experts.peft_io import read_adapter
from speechbrain_lora_experts.recipe_runner import (
    load_recipe_script,
    run_recipe,
)
from speechbrain_lora_experts.shared_adapter import adapter_delta

LAYER = "decoder.layers.0.fc1"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_whisper_dir):
    root = tmp_path_factory.mktemp("shared_expert")
    tiny_corpus(root, ("de", "es"), 5)
    common = dict(
        data_folder=str(root / "corpus" / "common_voice"),
        whisper_hub=tiny_whisper_dir,
        whisper_save_folder=str(root / "hub"),
        number_of_epochs=1,
        batch_size=2,
        encoder_window_s=10.0,
        valid_search_interval=0,
    )
    shared_run = root / "multilingual"
    run_recipe(
        "multilingual_lora.yaml",
        dict(common, languages=["de", "es"], output_folder=str(shared_run)),
    )
    shared = shared_run / "model" / "experts" / "multilingual"
    expert_run = root / "expert_de"
    run_recipe(
        "expert.yaml",
        dict(
            common,
            language="de",
            shared_adapter=str(shared),
            expert_pool=str(root / "pool"),
            output_folder=str(expert_run),
        ),
    )
    return {"shared": shared, "expert": expert_run, "pool": root / "pool"}


def test_residual_expert_records_and_ships_its_shared_adapter(runs):
    meta = json.loads((runs["pool"] / "de" / "lora_experts.json").read_text())
    assert meta["shared_adapter"] == str(runs["shared"])
    model = runs["expert"] / "model"
    info = json.loads((model / "model.json").read_text())
    assert info["shared_adapter"] == "shared_adapter"
    shipped = read_adapter(model / "shared_adapter")
    original = read_adapter(runs["shared"])
    for name in original.layer_names:
        for ours, theirs in zip(shipped.weights[name], original.weights[name]):
            assert torch.equal(ours, theirs)


def test_interface_merges_the_shared_adapter(runs, tiny_whisper_dir):
    from transformers import WhisperModel

    from speechbrain_lora_experts.inference import LoRAExpertsASR

    asr = LoRAExpertsASR.from_hparams(source=str(runs["expert"] / "model"))
    base = WhisperModel.from_pretrained(tiny_whisper_dir)
    delta = adapter_delta(read_adapter(runs["shared"]), LAYER)
    expected = dict(base.named_modules())[LAYER].weight + delta
    layer = dict(asr.mods.whisper.model.named_modules())[LAYER]
    loaded = getattr(layer, "base", layer).weight
    assert torch.allclose(loaded, expected, atol=1e-6)
    assert delta.abs().max() > 0  # the shared LoRA trained: it matters
    words, tokens = asr.transcribe_batch(torch.zeros(1, 16000))
    assert len(words) == len(tokens) == 1


def test_shared_adapter_left_out_of_plain_models(runs):
    model = runs["shared"].parent.parent
    info = json.loads((model / "model.json").read_text())
    assert "shared_adapter" not in info
    assert not os.path.exists(model / "shared_adapter")
    assert "shared_adapter: false" in (model / "hyperparams.yaml").read_text()


def _soup(runs, whisper_dir, out, **extra):
    """fuse.yaml overrides of the German soup: both scales at 0.5."""
    root = runs["pool"].parent
    return dict(
        data_folder=str(root / "corpus" / "common_voice"),
        whisper_hub=whisper_dir,
        whisper_save_folder=str(root / "hub"),
        output_folder=str(out),
        languages=["de"],
        expert_pool=str(runs["pool"]),
        fusion="oracle",
        shared_adapter=str(runs["shared"]),
        shared_adapter_scale=0.5,
        expert_scale=0.5,
        number_of_epochs=0,
        batch_size=2,
        encoder_window_s=10.0,
        valid_search_interval=0,
        **extra,
    )


def test_expert_soup_ships_and_loads_the_average(runs, tiny_whisper_dir):
    """fuse.yaml with both scales at 0.5: base + (shared + expert) / 2."""
    from transformers import WhisperModel

    from speechbrain_lora_experts.inference import LoRAExpertsASR

    root = runs["pool"].parent
    out = root / "soup"
    shared = read_adapter(runs["shared"])
    expert = read_adapter(runs["pool"] / "de")
    run_recipe("fuse.yaml", _soup(runs, tiny_whisper_dir, out))
    shipped = read_adapter(out / "model" / "shared_adapter")
    shipped_expert = read_adapter(out / "model" / "experts" / "de")
    assert shipped.alphas[LAYER] == shared.alphas[LAYER] / 2
    assert shipped_expert.alphas[LAYER] == expert.alphas[LAYER] / 2
    # The pool's and the shared run's own folders are left as trained.
    assert read_adapter(runs["pool"] / "de").alphas == expert.alphas
    assert read_adapter(runs["shared"]).alphas == shared.alphas

    asr = LoRAExpertsASR.from_hparams(source=str(out / "model"))
    base = dict(WhisperModel.from_pretrained(tiny_whisper_dir).named_modules())
    expected = base[LAYER].weight + 0.5 * (
        adapter_delta(shared, LAYER) + adapter_delta(expert, LAYER)
    )
    layer = asr.experts.layers[LAYER]
    loaded = layer.base.weight + layer.delta_weight(expert=0)
    assert adapter_delta(expert, LAYER).abs().max() > 1e-3  # not trivial
    assert torch.allclose(loaded, expected, atol=1e-6)


def test_agnostic_soup_routed_by_the_full_shared_adapter(
    runs, tiny_whisper_dir, monkeypatch
):
    """shared_adapter_lid_scale: recorded at export, used by the interface."""
    from transformers import WhisperModel

    from speechbrain_lora_experts import decoding
    from speechbrain_lora_experts.inference import LoRAExpertsASR

    root = runs["pool"].parent
    out = root / "soup_ml_routed"
    run_recipe(
        "fuse.yaml",
        _soup(
            runs,
            tiny_whisper_dir,
            out,
            language_aware=False,
            oracle_routing="lid",
            lid_source="decoder",
            shared_adapter_lid_scale=1.0,
        ),
    )
    step = json.loads(
        (out / "model" / "shared_adapter" / "language_step.json").read_text()
    )
    # Relative to the shipped copy, which carries the 0.5.
    assert step == {"lid_scale": 2.0}
    info = json.loads((out / "model" / "model.json").read_text())
    assert "shared_adapter/language_step.json" in info["files"]

    asr = LoRAExpertsASR.from_hparams(source=str(out / "model"))
    base = dict(WhisperModel.from_pretrained(tiny_whisper_dir).named_modules())
    delta = adapter_delta(read_adapter(runs["shared"]), LAYER)
    layer = asr.experts.layers[LAYER]
    soup_weight = layer.base.weight.clone()
    assert torch.allclose(
        soup_weight, base[LAYER].weight + 0.5 * delta, atol=1e-6
    )
    seen = []
    detect = decoding.detect_language

    def spy(whisper, *args, **kwargs):
        seen.append(layer.base.weight.clone())
        return detect(whisper, *args, **kwargs)

    monkeypatch.setattr(decoding, "detect_language", spy)
    words, _ = asr.transcribe_batch(torch.zeros(1, 16000))
    assert len(words) == 1
    # The language step ran with the full multilingual LoRA, the
    # transcription with the soup again.
    assert len(seen) == 1
    assert torch.allclose(seen[0], base[LAYER].weight + delta, atol=1e-6)
    assert torch.equal(layer.base.weight, soup_weight)


def test_expert_scale_is_refused_without_trained_experts(
    tiny_whisper_dir, tmp_path
):
    from speechbrain_lora_experts.whisper import Whisper

    hparams = {
        "languages": ["de"],
        "untrained_experts": True,
        "expert_scale": 0.5,
        "whisper": Whisper(tiny_whisper_dir, str(tmp_path)),
    }
    with pytest.raises(ValueError, match="none to scale"):
        load_recipe_script().attach_experts(hparams)
