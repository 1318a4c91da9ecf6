"""A run interrupted after early stopping resumes as stopped.

SpeechBrain 1.1.2's ``EpochCounterWithStopper`` checkpoints only the epoch
number, so a resumed run forgot its best dev loss and its stop decision and
trained on (seen in a benchmark: an expert stopped after epoch 5, was
killed during its test, and the rerun trained epochs 6-9). The recipes use
``speechbrain_lora_experts.checkpointing.EpochCounterWithStopper``.
"""

import glob
import os

from speechbrain.utils.checkpoints import Checkpointer
from speechbrain.utils.epoch_loop import EpochCounter
from speechbrain_lora_experts.checkpointing import EpochCounterWithStopper

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def run_epochs(counter, losses):
    for loss in losses:
        next(counter)
        counter.update_metric(loss)


def test_stopped_run_resumes_stopped(tmp_path):
    counter = EpochCounterWithStopper(10, 2, 0, "min")
    run_epochs(counter, [1.0, 0.8, 0.9, 0.95])
    assert counter.should_stop and counter.current == 4
    Checkpointer(tmp_path, {"counter": counter}).save_checkpoint()

    resumed = EpochCounterWithStopper(10, 2, 0, "min")
    Checkpointer(tmp_path, {"counter": resumed}).recover_if_possible()
    assert (resumed.current, resumed.best_limit) == (4, 2)
    assert resumed.best_score == 0.8
    assert list(resumed) == []  # no epoch 5


def test_patience_counts_across_a_resume(tmp_path):
    """Killed one epoch after the best: one more bad epoch stops it."""
    counter = EpochCounterWithStopper(10, 2, 0, "min")
    run_epochs(counter, [1.0, 0.8, 0.9])
    Checkpointer(tmp_path, {"counter": counter}).save_checkpoint()

    resumed = EpochCounterWithStopper(10, 2, 0, "min")
    Checkpointer(tmp_path, {"counter": resumed}).recover_if_possible()
    epochs = []
    for epoch in resumed:
        epochs.append(epoch)
        resumed.update_metric(0.85)  # no better than 0.8
    assert epochs == [4]


def test_a_plain_counter_checkpoint_still_loads(tmp_path):
    """Checkpoints written before the fix hold the epoch number only."""
    old = EpochCounter(10)
    next(old), next(old)
    Checkpointer(tmp_path, {"counter": old}).save_checkpoint()
    resumed = EpochCounterWithStopper(10, 2, 0, "min")
    Checkpointer(tmp_path, {"counter": resumed}).recover_if_possible()
    assert resumed.current == 2 and not resumed.should_stop
    assert next(resumed) == 3


def test_every_recipe_yaml_uses_the_saving_counter():
    pattern = os.path.join(
        ROOT, "recipes", "CommonVoice", "ASR", "lora_experts", "hparams"
    )
    yamls = glob.glob(os.path.join(pattern, "*.yaml"))
    assert yamls
    for path in yamls:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        assert (
            "epoch_counter: !new:speechbrain_lora_experts.checkpointing."
            "EpochCounterWithStopper" in text
        ), path
