"""Issue 13, case 5: a run killed while saving a checkpoint resumes.

SpeechBrain writes ``CKPT.yaml`` before the checkpoint's files, so a save
cut short leaves a folder that looks complete and that every resume then
fails to load. ``quarantine_incomplete_checkpoints`` moves it aside before
recovery; the run goes on from the previous checkpoint.
"""

import glob
import os
import sys

import pytest
import torch
from corpus_fixtures import Clip, cv_row, write_cv_locale
from recipe_rows import run_in_recipe

from speechbrain_lora_experts import checkpointing
from speechbrain_lora_experts.checkpointing import RNGState

# Quarantined folders are renamed with this prefix.
QUARANTINE_PREFIX = "incomplete-"


def quarantine_incomplete_checkpoints(checkpointer):
    # Looked up when called, so that each test fails on its own without it.
    return checkpointing.quarantine_incomplete_checkpoints(checkpointer)


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
RECIPE = os.path.join(ROOT, "recipes", "CommonVoice", "ASR", "lora_experts")

# Runs train.py and SIGKILLs it in the middle of writing the experts'
# file of its N-th checkpoint: the file is half written, CKPT.yaml is not.
KILLING_RUN = """
import os, runpy, signal, sys
import speechbrain.utils.checkpoints as ck
import torch
target = int(sys.argv.pop(1))
saves = {"n": 0}
original = ck.DEFAULT_SAVE_HOOKS[torch.nn.Module]
def save_and_die(obj, path):
    original(obj, path)
    if path.name == "experts.ckpt":
        saves["n"] += 1
        if saves["n"] == target:
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
ck.DEFAULT_SAVE_HOOKS[torch.nn.Module] = save_and_die
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _checkpointer(folder, value):
    from speechbrain.utils.checkpoints import Checkpointer

    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.fill_(value)
    recoverables = {"model": model, "rng_state": RNGState()}
    return model, Checkpointer(folder, recoverables=recoverables)


def test_truncated_checkpoint_file_resumes_from_the_previous(tmp_path, caplog):
    save = tmp_path / "save"
    model, checkpointer = _checkpointer(save, 1.0)
    first = checkpointer.save_checkpoint(meta={"step": 1}).path
    with torch.no_grad():
        model.weight.fill_(2.0)
    second = checkpointer.save_checkpoint(meta={"step": 2}).path
    data = (second / "model.ckpt").read_bytes()
    (second / "model.ckpt").write_bytes(data[: len(data) // 2])

    # What every resume did before: the newest checkpoint does not load.
    fresh, recovering = _checkpointer(save, 0.0)
    with pytest.raises(RuntimeError):
        recovering.recover_if_possible()

    moved = quarantine_incomplete_checkpoints(recovering)
    assert moved == [str(second.with_name(QUARANTINE_PREFIX + second.name))]
    assert "model.ckpt is cut short" in caplog.text
    assert f"the newest complete checkpoint is {first.name}" in caplog.text
    fresh, recovering = _checkpointer(save, 0.0)
    assert recovering.recover_if_possible().path == first
    assert torch.equal(fresh.weight, torch.ones(2, 2))
    assert quarantine_incomplete_checkpoints(recovering) == []


def test_checkpoint_killed_right_after_its_meta_file(tmp_path, caplog):
    save = tmp_path / "save"
    _, checkpointer = _checkpointer(save, 1.0)
    first = checkpointer.save_checkpoint(meta={"step": 1}).path
    second = checkpointer.save_checkpoint(meta={"step": 2}).path
    for path in second.glob("*.ckpt"):
        path.unlink()  # only CKPT.yaml was written
    # By folder alone: the files the other checkpoint holds are missing.
    assert quarantine_incomplete_checkpoints(str(save)) == [
        str(second.with_name(QUARANTINE_PREFIX + second.name))
    ]
    assert "model.ckpt is missing" in caplog.text
    assert [p.name for p in save.iterdir() if p.name.startswith("CKPT")] == [
        first.name
    ]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    rows = [
        cv_row(f"de_{i}.mp3", text, f"s{i % 2}", Clip(1.0, seed=i))
        for i, text in enumerate(
            ["Guten Morgen.", "Hallo Welt.", "Ein Satz.", "Noch einer."]
        )
    ]
    write_cv_locale(
        str(root / "cv"),
        "de",
        {"train": rows, "dev": rows[:1], "test": rows[1:2]},
    )
    return root


def _run(command):
    return run_in_recipe(command)


def test_sigkill_during_checkpoint_save_resumes(corpus, tiny_whisper_dir):
    out = corpus / "run"
    args = [
        os.path.join(RECIPE, "train.py"),
        os.path.join(RECIPE, "hparams", "expert.yaml"),
        "--language=de",
        f"--data_folder={corpus / 'cv'}",
        f"--whisper_hub={tiny_whisper_dir}",
        f"--whisper_save_folder={corpus / 'hub'}",
        f"--output_folder={out}",
        f"--expert_pool={out / 'pool'}",
        "--batch_size=2",
        "--encoder_window_s=2",
        "--number_of_epochs=2",
        "--valid_search_interval=0",
        "--device=cpu",
        "--precision=fp32",
    ]
    # Killed while saving the checkpoint at the end of epoch 2.
    killed = _run([sys.executable, "-c", KILLING_RUN, "2"] + args)
    assert killed.returncode == -9, killed.stderr[-3000:]
    checkpoints = sorted(glob.glob(str(out / "save" / "CKPT+*")))
    assert len(checkpoints) == 2

    # train.py itself sets the half-written checkpoint aside.
    resumed = _run([sys.executable] + args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = (out / "log.txt").read_text()
    # The files after the half-written one were never written.
    assert f"{checkpoints[1]} is incomplete (" in log
    incomplete = glob.glob(str(out / "save" / (QUARANTINE_PREFIX + "CKPT+*")))
    assert [os.path.basename(p) for p in incomplete] == [
        QUARANTINE_PREFIX + os.path.basename(checkpoints[1])
    ]
    assert f"Loading a checkpoint from {checkpoints[0]}" in log
    assert (out / "pool" / "de" / "adapter_model.safetensors").is_file()
    epochs = (out / "train_log.txt").read_text()
    assert "epoch: 2" in epochs
