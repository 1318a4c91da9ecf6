"""Training batches: dynamic batching options and their errors."""

import pytest

from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain_lora_experts.data.batching import train_loader_options

SAMPLER = {"max_batch_length": 10, "num_buckets": 2, "shuffle": False}


def dataset(durations):
    return DynamicItemDataset(
        {f"u{i}": {"duration": d} for i, d in enumerate(durations)}
    )


def test_fixed_batches_keep_the_recipe_options():
    opts = {"batch_size": 8, "shuffle": False}
    assert train_loader_options(dataset([1.0]), opts) is opts


def test_batches_hold_at_most_max_batch_length_seconds():
    durations = [1.0, 2.5, 3.0, 4.0, 6.0, 7.5, 9.0, 0.5]
    opts = train_loader_options(
        dataset(durations),
        {"batch_size": 2, "shuffle": True, "num_workers": 0},
        dynamic=True,
        sampler=SAMPLER,
    )
    assert opts.keys() == {"batch_sampler", "num_workers"}
    batches = list(opts["batch_sampler"])
    assert sorted(i for b in batches for i in b) == list(range(8))
    for batch in batches:
        assert sum(durations[i] for i in batch) <= 10


def test_unusable_options_and_durations_are_named():
    with pytest.raises(ValueError, match="max_batch_length"):
        train_loader_options(dataset([1.0]), {}, dynamic=True, sampler={})
    bad = DynamicItemDataset({"u0": {"duration": 1.0}, "u1": {"wav": "x"}})
    with pytest.raises(ValueError, match="'u1' has duration None"):
        train_loader_options(bad, {}, dynamic=True, sampler=SAMPLER)


def test_the_recipe_reshuffles_dynamic_batches_every_epoch():
    import speechbrain as sb
    from speechbrain_lora_experts.recipe_runner import load_recipe_script

    recipe = load_recipe_script()
    durations = [1.0 + 0.25 * i for i in range(16)]
    data = dataset(durations)
    opts = train_loader_options(
        data,
        {"batch_size": 4},
        dynamic=True,
        sampler={"max_batch_length": 6, "num_buckets": 2, "shuffle": True},
    )
    brain = sb.Brain.__new__(recipe.WhisperExpertsBrain)
    brain.train_sampler = None
    brain.distributed_launch = False
    brain.checkpointer = None
    recipe.WhisperExpertsBrain.make_dataloader(
        brain, data, sb.Stage.TRAIN, **opts
    )
    assert brain.train_sampler is opts["batch_sampler"]
    epochs = []
    for epoch in (1, 2):
        brain.train_sampler.set_epoch(epoch)
        epochs.append([list(batch) for batch in brain.train_sampler])
    assert epochs[0] != epochs[1]
