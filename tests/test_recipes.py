"""Every recipe yaml end to end with the tiny Whisper.

Rows come from ``tests/recipes/CommonVoice.csv`` (SpeechBrain's recipe-test
layout). Each row runs twice:

* standalone, as SpeechBrain's recipe tests run it: its own flags on the
  tiny samples in ``tests/samples`` (``--skip_prep=True``), then its
  ``test_debug_checks`` (files, training-loss bound);
* on a prepared demo corpus (Common Voice and FLEURS layout) with a real
  pool: the row's flags without the standalone data and pool flags.
  Expert rows run first: they fill the pool that fusion and distillation
  load.
"""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE_CSV = os.path.join(ROOT, "tests", "recipes", "CommonVoice.csv")
LANGUAGES = ("de", "es")
# Flags that point a row at the tiny samples and stand in for a pool; the
# demo-corpus runs replace them with a prepared corpus and a trained pool.
STANDALONE_FLAGS = {
    "--data_folder",
    "--train_csv",
    "--valid_csv",
    "--test_csv",
    "--skip_prep",
    "--expert_pool",
    "--untrained_experts",
    "--fleurs_folder",
    "--fleurs_test_csv",
}


def recipe_rows():
    with open(RECIPE_CSV, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def row_id(row):
    """A short test id: the hparams file and the row's system flags."""
    name = os.path.basename(row["Hparam_file"]).replace(".yaml", "")
    common = STANDALONE_FLAGS | {"--batch_size", "--lr", "--number_of_epochs"}
    flags = [
        flag
        for flag in row["test_debug_flags"].split()
        if flag.split("=")[0] not in common or flag == "--number_of_epochs=0"
    ]
    text = "".join(flags).replace("--", "_")
    return name + "".join(c if c.isalnum() else "_" for c in text)


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


def checked_files(row):
    """The ``file_exists=[...]`` list of a row's checks."""
    checks = row["test_debug_checks"]
    start = checks.index("file_exists=[") + len("file_exists=[")
    return checks[start : checks.index("]", start)].split(",")


def loss_bound(row):
    """``(file, variable, threshold, epoch tag)`` of ``performance_check``."""
    checks = row["test_debug_checks"]
    start = checks.index("performance_check=[") + len("performance_check=[")
    return [
        x.strip() for x in checks[start : checks.index("]", start)].split(",")
    ]


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


def standalone_rows():
    """Rows whose standalone run exercises what the demo runs do not.

    Every row takes ``--skip_prep=True`` CSVs; the expert row writes a pool
    of its own; untrained experts (fusion, token gates, distillation) and
    the FLEURS test CSV are standalone-only. The other rows differ from
    these only in the system, which the demo-corpus runs cover (and
    SpeechBrain's recipe tests run every row): this keeps the suite short.
    """
    keep = ("--language=de", "--gate_level=token", "distill", "--fusion=ties")
    return [
        row
        for row in recipe_rows()
        if any(k in row["test_debug_flags"] + row["Hparam_file"] for k in keep)
    ]


@pytest.mark.parametrize("row", standalone_rows(), ids=row_id)
def test_recipe_row_runs_standalone(row, tiny_whisper_dir, tmp_path):
    """The row as SpeechBrain's recipe tests run it, with its checks."""
    out = tmp_path / "run"
    flags = [
        # the pool an expert row writes goes to the test's folder
        f"--expert_pool={tmp_path / 'pool'}"
        if flag.startswith("--expert_pool=")
        else flag
        for flag in row["test_debug_flags"].split()
    ]
    recipe = os.path.join(ROOT, os.path.dirname(row["Script_file"]))
    result = subprocess.run(
        [
            sys.executable,
            row["Script_file"],
            row["Hparam_file"],
            *flags,
            "--device=cpu",
            "--precision=fp32",
            f"--whisper_hub={tiny_whisper_dir}",
            f"--whisper_save_folder={tmp_path / 'hub_cache'}",
            f"--output_folder={out}",
        ],
        cwd=ROOT,  # the flags' sample paths are relative to the project
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": recipe,
        },
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    for name in checked_files(row):
        assert (out / name).exists(), f"{name} missing in {out}"

    # performance_check=[train_log.txt, train loss, <=X, epoch: N]: the
    # value on the line of that epoch (-1: the last line), as SpeechBrain
    # reads it.
    log_name, variable, threshold, epoch = loss_bound(row)
    lines = [
        line
        for line in (out / log_name).read_text().splitlines()
        if line.strip()
    ]
    line = (
        lines[-1]
        if epoch == "epoch: -1"
        else next(line for line in lines if epoch in line)
    )
    value = float(line.split(variable + ":")[1].split(",")[0].split(" - ")[0])
    assert threshold.startswith("<=")
    assert value <= float(threshold[2:]), (variable, value, threshold)


def test_early_stopping_stops_a_run_whose_dev_loss_does_not_improve(
    tiny_whisper_dir, tmp_path
):
    """lr=0: the dev loss never improves, so the run stops after patience.

    Epoch 1 sets the best dev loss; epochs 2 and 3 do not beat it, so with
    ``patience=2`` the run ends after epoch 3 of 5. ``run.json`` records the
    optimizer steps actually taken and the dev curve of those epochs.
    """
    samples = "tests/samples/annotation"
    recipe = os.path.join(ROOT, "recipes", "CommonVoice", "ASR", "lora_experts")
    out = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(recipe, "train.py"),
            os.path.join(recipe, "hparams", "expert.yaml"),
            "--data_folder=tests/samples/ASR",
            f"--train_csv={samples}/lora_experts_train.csv",
            f"--valid_csv={samples}/lora_experts_dev.csv",
            f"--test_csv={samples}/lora_experts_dev.csv",
            "--skip_prep=True",
            "--language=de",
            "--number_of_epochs=5",
            "--patience=2",
            "--batch_size=2",
            "--lr=0",
            f"--expert_pool={tmp_path / 'pool'}",
            f"--whisper_hub={tiny_whisper_dir}",
            f"--whisper_save_folder={tmp_path / 'hub_cache'}",
            f"--output_folder={out}",
            "--device=cpu",
            "--precision=fp32",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    run = json.loads((out / "run.json").read_text())
    assert run["epochs"] == 3 and run["stopped_early"]
    # 4 de training clips, batch 2: 2 steps per epoch, 3 epochs.
    assert run["optimizer_steps"] == 6
    assert [p["epoch"] for p in run["dev_curve"]] == [1, 2, 3]
    losses = {p["loss"] for p in run["dev_curve"]}
    assert len(losses) == 1  # lr=0: the dev loss is constant
    assert all(p["error_rate"] is not None for p in run["dev_curve"])
