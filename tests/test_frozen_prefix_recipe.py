"""The frozen-prefix cache in the recipe: cached training equals uncached."""

import json
import os
import sys

import pytest
import torch
from demo_corpora import tiny_corpus
from recipe_rows import run_in_recipe
from safetensors.torch import load_file


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return tiny_corpus(tmp_path_factory.mktemp("prefix"), ["de", "es"], 5)


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
    "yaml, shape, written, bucket",
    [
        # Decoder-only experts: the gate on the encoder output routes from
        # the cached encoder (no encoder.forward hook fires there), with
        # windows cut to each batch (entries per clip and window length,
        # the gate pooling the clips' share of the cut window).
        (
            "fuse.yaml",
            "--lora_parts=[decoder]",
            "model/gate.safetensors",
            0.5,
        ),
        # Teachers and student share one cached prefix per batch (the
        # default shape here: encoder and decoder layer 1).
        (
            "distill.yaml",
            "--lora_parts=[encoder,decoder]",
            "model/experts/student/adapter_model.safetensors",
            None,
        ),
    ],
)
def test_fusion_and_distillation_train_alike_from_the_cache(
    corpus, tiny_whisper_dir, yaml, shape, written, bucket
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
            f"--window_bucket_s={'null' if bucket is None else bucket}",
            # Cut windows with batches of similar durations, as a user would.
            f"--dynamic_batching={bucket is not None}",
            "--dynamic_batch_sampler={max_batch_length: 6, num_buckets: 2}",
            yaml=yaml,
            epochs=1,
        )
        assert ("frozen-prefix cache on" in log) == (cache == "True")
        assert ("train: encoder windows cut to the batch" in log) == bool(
            bucket
        )
        assert ("dynamic batching: the batch sampler replaces" in log) == (
            bucket is not None
        )
        runs[cache] = load_file(str(out / written))
        with open(out / "model" / "model.json", encoding="utf-8") as f:
            assert json.load(f)["window_bucket_s"] == bucket
    assert "train: frozen-prefix cache computed 8 clips, read 0" in log
    assert runs["True"].keys() == runs["False"].keys()
    for key, value in runs["False"].items():
        torch.testing.assert_close(runs["True"][key], value, rtol=0, atol=1e-6)
