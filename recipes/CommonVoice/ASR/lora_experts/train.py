#!/usr/bin/env python3
"""Recipe: multilingual Whisper with LoRA language experts (Common Voice).

One script, five systems chosen by the hparams file:

    python train.py hparams/expert.yaml --language=de --data_folder=...
    python train.py hparams/multilingual_lora.yaml --languages=[de,es,it] ...
    python train.py hparams/full_finetune.yaml --languages=[de,es,it] ...
    python train.py hparams/fuse.yaml --languages=[de,es,it] ...
    python train.py hparams/distill.yaml --languages=[de,es,it] ...

``--language_aware=False`` switches to the language-agnostic scenario.
``--dataset=fleurs`` trains on FLEURS instead; ``--fleurs_folder=...`` adds
an out-of-domain FLEURS test to a Common Voice run. Runs on CPU with
``--device=cpu --precision=fp32`` and under ``torchrun`` with
``--distributed_backend=gloo``.

Authors
 * speechbrain-lora-experts developers 2026
"""

import sys

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.distributed import run_on_main

from speechbrain_lora_experts.brains import BRAINS
from speechbrain_lora_experts.data.prepare import prepare_data
from speechbrain_lora_experts.export import export_run

if __name__ == "__main__":
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:])
    sb.utils.distributed.ddp_init_group(run_opts)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )

    run_on_main(prepare_data, kwargs={"hparams": hparams})
    datasets = prepare_data(hparams, build=True)

    brain = BRAINS[hparams["system"]](
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    brain.fit(
        brain.hparams.epoch_counter,
        datasets["train"],
        datasets["valid"],
        train_loader_kwargs=hparams["train_dataloader_opts"],
        valid_loader_kwargs=hparams["valid_dataloader_opts"],
    )
    for prefix, test_set in datasets["test"].items():
        brain.metrics_prefix = prefix
        brain.evaluate(
            test_set,
            min_key="loss",
            test_loader_kwargs=hparams["test_dataloader_opts"],
        )
    run_on_main(export_run, kwargs={"brain": brain})
