"""The recipes' data step: prepare CSVs, then build SpeechBrain datasets.

``dataset: common_voice`` or ``fleurs`` selects the training corpus; an
optional ``fleurs_folder`` adds FLEURS' test split as an out-of-domain test
for a Common Voice run. Preparation is skip-if-done and safe under
``run_on_main``.

Authors
 * speechbrain-lora-experts developers 2026
"""

import os

from speechbrain_lora_experts.data.common_voice import prepare_common_voice
from speechbrain_lora_experts.data.fleurs import prepare_fleurs
from speechbrain_lora_experts.data.pipeline import build_dataset

PREPARERS = {"common_voice": prepare_common_voice, "fleurs": prepare_fleurs}
OOD_PREFIX = "fleurs_"


def prepare_data(hparams, build=False):
    """Prepares the CSVs (``build=False``) or builds the datasets.

    Arguments
    ---------
    hparams : dict
        Recipe hyperparameters: ``dataset``, ``data_folder``,
        ``prep_folder``, ``languages``, ``max_utterances``, ``max_hours``,
        ``encoder_window_s``, ``skip_prep``, optional ``fleurs_folder``.
    build : bool
        Return datasets instead of preparing.

    Returns
    -------
    dict or None
        ``{"train": ds, "valid": ds, "test": {prefix: ds}}`` when building.
    """
    dataset = hparams.get("dataset", "common_voice")
    if dataset not in PREPARERS:
        raise ValueError(
            f"dataset must be one of {sorted(PREPARERS)}, got {dataset!r}"
        )
    folder = hparams["prep_folder"]
    ood = hparams.get("fleurs_folder")
    if not build:
        common = dict(
            save_folder=folder,
            languages=hparams["languages"],
            max_duration=hparams["encoder_window_s"],
            skip_prep=hparams.get("skip_prep", False),
        )
        PREPARERS[dataset](
            data_folder=hparams["data_folder"],
            max_utterances=hparams.get("max_utterances"),
            max_hours=hparams.get("max_hours"),
            **common,
        )
        if ood:
            prepare_fleurs(
                data_folder=ood,
                splits=("test",),
                csv_prefix=OOD_PREFIX,
                **common,
            )
        return None

    tokenizer = hparams["whisper"].tokenizer
    languages = hparams["languages"]

    def make(name, split, sort, prefix=""):
        return build_dataset(
            os.path.join(folder, f"{prefix}{split}.csv"),
            tokenizer,
            languages,
            sample_rate=hparams.get("sample_rate", 16000),
            sort=sort,
            name=name,
        )

    sorting = hparams.get("sorting", "ascending")
    datasets = {
        "train": make("train", "train", sorting),
        "valid": make("valid", "dev", "ascending"),
        "test": {"": make("test", "test", "ascending")},
    }
    if ood:
        datasets["test"][OOD_PREFIX] = make(
            "fleurs test", "test", "ascending", prefix=OOD_PREFIX
        )
    return datasets
