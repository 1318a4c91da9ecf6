"""Data preparation for the LoRA-experts recipe on Common Voice.

Writes ``<save_folder>/{train,dev,test}.csv`` (columns ``ID, duration, wav,
spk_id, wrd, lang``) for the target languages of a Common Voice release,
with ``prepare_report.json`` counting every skipped row and its reason.
Preparation is skipped when the CSVs are up to date, and redone when the
corpus or an option changed. The work is done by
:func:`speechbrain_lora_experts.data.common_voice.prepare_common_voice`
(reusable outside the recipe); ``train.py`` calls this file's function
through ``run_on_main``. From a shell:

    python common_voice_prepare.py <cv_release> <save_folder> de,es,it

Authors
 * speechbrain-lora-experts developers 2026
"""

import sys

from speechbrain_lora_experts.data import common_voice


def prepare_common_voice(
    data_folder,
    save_folder,
    languages,
    splits=("train", "dev", "test"),
    max_utterances=None,
    max_hours=None,
    max_duration=30.0,
    skip_prep=False,
    audio_check="decode",
    max_chars_per_second="auto",
):
    """Prepares the recipe's CSVs from a Common Voice release.

    Arguments
    ---------
    data_folder : str
        Release folder holding one folder per locale
        (``cv-corpus-17.0-2024-03-15``).
    save_folder : str
        Where the CSVs and the preparation report are written.
    languages : list of str
        Whisper codes, Common Voice locales or language names.
    splits : sequence of str
        The TSVs to convert.
    max_utterances : int or dict, optional
        Cap per language and split (see the package function).
    max_hours : float or dict, optional
        Cap in hours per language and split.
    max_duration : float
        Longer clips are skipped (the encoder window).
    skip_prep : bool
        Prepare nothing, return the CSV paths.
    audio_check : str
        ``decode`` (every clip decoded once) or ``header``.
    max_chars_per_second : float, "auto" or None
        Skip transcripts implausibly long for their clip.

    Returns
    -------
    dict
        ``{split: csv path}``.

    Example
    -------
    >>> prepare_common_voice("cv", "prep", ["de"], skip_prep=True)["dev"]
    'prep/dev.csv'
    """
    return common_voice.prepare_common_voice(
        data_folder=data_folder,
        save_folder=save_folder,
        languages=languages,
        splits=splits,
        max_utterances=max_utterances,
        max_hours=max_hours,
        max_duration=max_duration,
        skip_prep=skip_prep,
        audio_check=audio_check,
        max_chars_per_second=max_chars_per_second,
    )


if __name__ == "__main__":
    data_folder, save_folder, languages = sys.argv[1:4]
    prepare_common_voice(data_folder, save_folder, languages.split(","))
