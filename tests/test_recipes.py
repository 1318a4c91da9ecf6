"""Every recipe yaml end to end on a tiny corpus with the tiny Whisper.

Rows come from ``tests/recipes/CommonVoice.csv`` (SpeechBrain's recipe-test
layout). Expert rows run first: they fill the pool that fusion and
distillation load.
"""

import csv
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE_CSV = os.path.join(ROOT, "tests", "recipes", "CommonVoice.csv")
LANGUAGES = ("de", "es")


def recipe_rows():
    with open(RECIPE_CSV, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def row_id(row):
    name = os.path.basename(row["Hparam_file"]).replace(".yaml", "")
    flags = row["test_debug_flags"].replace("--", "_").replace(" ", "")
    return name + "".join(c if c.isalnum() else "_" for c in flags)


@pytest.fixture(scope="module")
def recipe_env(tmp_path_factory, tiny_whisper_dir):
    from speechbrain_lora_experts.data.demo import build_demo_corpus

    root = tmp_path_factory.mktemp("recipes")
    build_demo_corpus(
        root / "corpus",
        LANGUAGES,
        per_split=(4, 2, 2),
        seed=3,
        formats=("common_voice", "fleurs"),
        speakers=2,
        progress=False,
    )
    return {"root": root, "whisper": tiny_whisper_dir}


def run_recipe(row, env, out, extra=()):
    flags = row["test_debug_flags"].replace(";", ",").split()
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


@pytest.mark.parametrize("row", recipe_rows(), ids=row_id)
def test_recipe_runs_end_to_end(row, recipe_env):
    out = recipe_env["root"] / "runs" / row_id(row)
    run_recipe(row, recipe_env, out)
    checks = row["test_debug_checks"]
    files = checks[checks.index("[") + 1 : checks.index("]")].split(";")
    for name in files:
        assert (out / name).exists(), f"{name} missing in {out}"

    # Every run's model folder loads in the pretrained interface.
    from speechbrain_lora_experts.inference import LoRAExpertsASR

    asr = LoRAExpertsASR.from_hparams(source=str(out / "model"))
    assert asr is not None

    metrics = json.loads((out / "metrics.json").read_text())
    run = json.loads((out / "run.json").read_text())
    assert set(metrics["per_language"]) == set(run["languages"])
    for lang in run["languages"]:
        entry = metrics["per_language"][lang]
        assert entry["metric"] == "WER"
        assert entry["n_utts"] == 2
        assert entry["error_rate"] >= 0
    assert metrics["macro"] >= 0
    if run["language_aware"]:
        assert metrics["lid_accuracy"] is None
    else:
        assert 0 <= metrics["lid_accuracy"] <= 1
    if os.path.isdir(recipe_env["root"] / "corpus" / "fleurs"):
        fleurs = json.loads((out / "fleurs_metrics.json").read_text())
        assert fleurs["n_utts"] == 2 * len(run["languages"])

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
