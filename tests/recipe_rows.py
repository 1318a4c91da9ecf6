"""The recipe test rows of ``tests/recipes/CommonVoice.csv``.

SpeechBrain's recipe-test layout: each row names a script, an hparams file,
its ``test_debug_flags`` and its ``test_debug_checks``. Shared by the
demo-corpus runs (``test_recipes.py``) and the standalone runs
(``test_recipe_rows_standalone.py``).

Authors
 * speechbrain-lora-experts developers 2026
"""

import csv
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "recipes", "CommonVoice", "ASR", "lora_experts")
RECIPE_CSV = os.path.join(ROOT, "tests", "recipes", "CommonVoice.csv")
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


def run_in_recipe(command, timeout=600):
    """Runs ``command`` in the recipe folder, offline, one thread.

    Returns the ``CompletedProcess`` (output captured as text); the caller
    checks the exit status.
    """
    return subprocess.run(
        command,
        cwd=RECIPE,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        timeout=timeout,
    )


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
