"""Every recipe yaml end to end with the tiny Whisper.

Rows come from ``tests/recipes/CommonVoice.csv`` (SpeechBrain's recipe-test
layout). Each row runs here on a prepared demo corpus (Common Voice and
FLEURS layout) with a real pool: the row's flags without the standalone
data and pool flags. Expert rows run first: they fill the pool that fusion
and distillation load. ``test_recipe_rows_standalone.py`` runs rows as
SpeechBrain's recipe tests do.
"""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch
from demo_corpora import tiny_corpus
from recipe_rows import (
    ROOT,
    STANDALONE_FLAGS,
    checked_files,
    recipe_rows,
    row_id,
)

LANGUAGES = ("de", "es")


@pytest.fixture(scope="module")
def recipe_env(tmp_path_factory, tiny_whisper_dir):
    root = tmp_path_factory.mktemp("recipes")
    formats = ("common_voice", "fleurs")
    tiny_corpus(root, LANGUAGES, 3, formats=formats)
    return {"root": root, "whisper": tiny_whisper_dir}


def run_recipe(row, env, out, extra=()):
    flags = [
        flag
        for flag in row["test_debug_flags"].split()
        if flag.split("=")[0] not in STANDALONE_FLAGS
    ]
    given = {flag.split("=")[0] for flag in flags}
    defaults = [
        f"--data_folder={env['root'] / 'corpus' / 'common_voice'}",
        f"--fleurs_folder={env['root'] / 'corpus' / 'fleurs'}",
        f"--whisper_hub={env['whisper']}",
        f"--whisper_save_folder={env['root'] / 'hub_cache'}",
        f"--output_folder={out}",
        f"--expert_pool={env['root'] / 'pool'}",
        "--number_of_epochs=2",
        "--batch_size=2",
        "--lr=0.003",
        "--encoder_window_s=10",
        "--device=cpu",
        "--precision=fp32",
    ]
    command = [
        sys.executable,
        os.path.join(ROOT, row["Script_file"]),
        os.path.join(ROOT, row["Hparam_file"]),
        *[f for f in defaults if f.split("=")[0] not in given],
        *flags,
        *extra,
    ]
    result = subprocess.run(
        command,
        cwd=os.path.join(ROOT, os.path.dirname(row["Script_file"])),
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def rescore_with_interface(out, language_aware):
    """Test-set metrics of ``out/model`` transcribing each clip alone."""
    from speechbrain_lora_experts.inference import LoRAExpertsASR
    from speechbrain_lora_experts.metrics import MultilingualScorer

    asr = LoRAExpertsASR.from_hparams(source=str(out / "model"))
    scorer = MultilingualScorer()
    with open(out / "data" / "test.csv", newline="", encoding="utf-8") as f:
        for entry in csv.DictReader(f):
            wav = asr.load_audio(entry["wav"])
            (result,) = asr.transcribe_batch_detailed(
                wav, languages=entry["lang"] if language_aware else None
            )
            scorer.append(
                ids=[entry["ID"]],
                languages=[entry["lang"]],
                hypotheses=[result.text],
                references=[entry["wrd"]],
                predicted_languages=None
                if language_aware
                else [result.language],
            )
    return scorer.summary()


def assert_same_adapter(folder, pool_folder):
    from safetensors.torch import load_file

    name = "adapter_model.safetensors"
    ours, pool = (
        load_file(str(folder / name)),
        load_file(str(pool_folder / name)),
    )
    assert ours.keys() == pool.keys() and ours
    for key, value in pool.items():
        assert torch.equal(ours[key], value), key


@pytest.mark.parametrize("row", recipe_rows(), ids=row_id)
def test_recipe_runs_end_to_end(row, recipe_env):
    out = recipe_env["root"] / "runs" / row_id(row)
    run_recipe(row, recipe_env, out)
    for name in checked_files(row):
        assert (out / name).exists(), f"{name} missing in {out}"

    metrics = json.loads((out / "metrics.json").read_text())
    run = json.loads((out / "run.json").read_text())
    assert set(metrics["per_language"]) == set(run["languages"])
    for lang in run["languages"]:
        entry = metrics["per_language"][lang]
        assert entry["metric"] == "WER"
        assert entry["n_utts"] == 2
    rates = [e["error_rate"] for e in metrics["per_language"].values()]
    assert metrics["macro"] == pytest.approx(sum(rates) / len(rates))
    if run["language_aware"]:
        assert metrics["lid_accuracy"] is None
    if os.path.isdir(recipe_env["root"] / "corpus" / "fleurs"):
        fleurs = json.loads((out / "fleurs_metrics.json").read_text())
        assert fleurs["n_utts"] == 2 * len(run["languages"])

    # The exported model, through the pretrained interface, scores the test
    # set as the recipe did.
    rescored = rescore_with_interface(out, run["language_aware"])
    for lang, entry in metrics["per_language"].items():
        again = rescored["per_language"][lang]
        assert again["n_edits"] == entry["n_edits"], lang
        assert again["error_rate"] == pytest.approx(entry["error_rate"])
    assert rescored["lid_accuracy"] == metrics["lid_accuracy"]

    if row["Hparam_file"].endswith("fuse.yaml"):
        # Fusion trains the gate only: the experts are the pool's.
        for lang in run["languages"]:
            assert_same_adapter(
                out / "model" / "experts" / lang,
                recipe_env["root"] / "pool" / lang,
            )

    history = run["train_loss_history"]
    if "--number_of_epochs=0" in row["test_debug_flags"]:
        assert history == []  # evaluation-only systems (static merges)
        return
    half = len(history) // 2
    assert sum(history[half:]) / (len(history) - half) < sum(
        history[:half]
    ) / max(half, 1), history


def test_pool_adapters_load_with_peft(recipe_env):
    from peft import PeftModel
    from transformers import WhisperForConditionalGeneration

    for lang in LANGUAGES:
        folder = recipe_env["root"] / "pool" / lang
        if not folder.exists():
            pytest.skip("expert rows did not run")
        base = WhisperForConditionalGeneration.from_pretrained(
            recipe_env["whisper"]
        )
        model = PeftModel.from_pretrained(base, str(folder))
        lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
        assert lora_b and any(p.abs().sum() > 0 for p in lora_b)
