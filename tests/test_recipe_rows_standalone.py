"""Recipe rows as SpeechBrain's recipe tests run them, standalone.

Each kept row runs its own ``test_debug_flags`` on the tiny samples in
``tests/samples`` (``--skip_prep=True``), then its ``test_debug_checks``
(files, training-loss bound). Early stopping is checked on the same data.
"""

import json
import os
import subprocess
import sys

import pytest
from recipe_rows import ROOT, checked_files, loss_bound, recipe_rows, row_id


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
