"""Exact resume after a mid-epoch interruption, and DDP on CPU (gloo)."""

import json
import os
import shutil
import sys

import pytest
import torch
from demo_corpora import tiny_corpus
from recipe_rows import RECIPE, run_in_recipe

# Runs train.py, raising KeyboardInterrupt inside the N-th training step.
CRASHING_RUN = """
import runpy, sys
import speechbrain as sb
limit = int(sys.argv.pop(1))
original = sb.Brain.fit_batch
calls = {"n": 0}
def fit_batch(self, batch):
    calls["n"] += 1
    if calls["n"] == limit:
        raise KeyboardInterrupt("simulated interruption")
    return original(self, batch)
sb.Brain.fit_batch = fit_batch
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_whisper_dir):
    root = tmp_path_factory.mktemp("robust")
    return tiny_corpus(root, ["de"], 4, per_split=(5, 2, 2))


def flags(root, whisper, out, *extra):
    given = {flag.split("=")[0] for flag in extra}
    defaults = [
        f
        for f in ("--number_of_epochs=2", "--lr=0.01")
        if f.split("=")[0] not in given
    ]
    return [
        os.path.join(RECIPE, "hparams", "expert.yaml"),
        "--language=de",
        f"--data_folder={root / 'corpus' / 'common_voice'}",
        f"--whisper_hub={whisper}",
        f"--whisper_save_folder={root / 'hub_cache'}",
        f"--output_folder={out}",
        f"--expert_pool={out / 'pool'}",
        "--batch_size=1",
        "--encoder_window_s=10",
        "--device=cpu",
        "--precision=fp32",
        *defaults,
        *extra,
    ]


def run(command):
    return run_in_recipe(command)


def adapter(out):
    from safetensors.torch import load_file

    return load_file(str(out / "pool" / "de" / "adapter_model.safetensors"))


def test_interrupted_run_resumes_to_the_same_weights(corpus, tiny_whisper_dir):
    train = os.path.join(RECIPE, "train.py")
    straight = corpus / "straight"
    result = run(
        [sys.executable, train]
        + flags(corpus, tiny_whisper_dir, straight, "--ckpt_interval_steps=1")
    )
    assert result.returncode == 0, result.stderr[-3000:]

    resumed = corpus / "resumed"
    args = flags(corpus, tiny_whisper_dir, resumed, "--ckpt_interval_steps=1")
    # Step 8 of 10: in the middle of the second epoch.
    crashed = run([sys.executable, "-c", CRASHING_RUN, "8", train] + args)
    assert crashed.returncode != 0
    assert not (resumed / "pool" / "de").exists()
    result = run([sys.executable, train] + args)
    assert result.returncode == 0, result.stderr[-3000:]

    first, second = adapter(straight), adapter(resumed)
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(second[key], first[key], rtol=0, atol=1e-6)
    # And it really trained.
    assert any(first[k].abs().sum() > 0 for k in first if "lora_B" in k)


# Runs train.py, then saves this process's experts to <folder>/rank<R>.pt.
DUMPING_RUN = """
import os, runpy, sys
import torch
folder = sys.argv.pop(1)
sys.argv = sys.argv[1:]
scope = runpy.run_path(sys.argv[0], run_name="__main__")
state = scope["brain"].hparams.experts.state_dict()
rank = int(os.environ.get("RANK", 0))
torch.save(
    {k: v.detach().cpu() for k, v in state.items()},
    os.path.join(folder, f"rank{rank}.pt"),
)
"""


@pytest.fixture(scope="module")
def even_corpus(tmp_path_factory, tiny_whisper_dir):
    """Four training clips: two processes of batch 1 see them in pairs."""
    return tiny_corpus(tmp_path_factory.mktemp("ddp"), ["de"], 5)


@pytest.mark.skipif(
    shutil.which("torchrun") is None
    and not os.path.exists(
        os.path.join(os.path.dirname(sys.executable), "torchrun")
    ),
    reason="torchrun not installed",
)
def test_two_gloo_processes_train_like_one_process(
    even_corpus, tiny_whisper_dir
):
    """DDP's hand-written gradient averaging, with a real learning rate.

    Two processes of batch 1 step on the mean of their two gradients; one
    process of batch 1 accumulating two steps takes the same steps (the
    loss is divided by the accumulation factor). Data in a fixed order,
    no LoRA dropout: the weights must agree across processes and with the
    single process.
    """
    train = os.path.join(RECIPE, "train.py")
    common = ("--lr=0.01", "--number_of_epochs=1", "--lora_dropout=0.0")
    single = even_corpus / "single"
    single.mkdir()
    result = run(
        [sys.executable, "-c", DUMPING_RUN, str(single), train]
        + flags(
            even_corpus,
            tiny_whisper_dir,
            single,
            *common,
            "--grad_accumulation_factor=2",
        )
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = even_corpus / "ddp"
    ddp.mkdir()
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    result = run(
        [
            torchrun,
            "--nproc_per_node=2",
            "--master_port=29561",
            "--no-python",
            sys.executable,
            "-c",
            DUMPING_RUN,
            str(ddp),
            train,
        ]
        + flags(
            even_corpus,
            tiny_whisper_dir,
            ddp,
            *common,
            "--distributed_backend=gloo",
        )
    )
    assert result.returncode == 0, result.stderr[-3000:]

    one = torch.load(single / "rank0.pt")
    rank0, rank1 = torch.load(ddp / "rank0.pt"), torch.load(ddp / "rank1.pt")
    assert one.keys() == rank0.keys() == rank1.keys()
    for key in one:
        # Every process holds the same weights...
        assert torch.equal(rank0[key], rank1[key]), key
        # ...those one process reaches with the same batches.
        torch.testing.assert_close(rank0[key], one[key], rtol=0, atol=1e-6)
    # And they trained: every lora_B left its zero initialisation.
    lora_b = [v for k, v in one.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)

    # Evaluation under DDP (sharding, gathering) scores like one process.
    metrics_one = json.loads((single / "metrics.json").read_text())
    metrics_two = json.loads((ddp / "metrics.json").read_text())
    assert (
        metrics_one["per_language"]["de"] == metrics_two["per_language"]["de"]
    )
    valid = [valid_losses(folder) for folder in (single, ddp)]
    assert len(valid[0]) == 1
    assert valid[0] == pytest.approx(valid[1], abs=0.011)


def valid_losses(folder):
    lines = (folder / "train_log.txt").read_text().splitlines()
    return [
        float(line.split("valid loss:")[1].split(",")[0])
        for line in lines
        if "valid loss:" in line
    ]
