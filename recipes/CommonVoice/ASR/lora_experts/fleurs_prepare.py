"""Data preparation for the LoRA-experts recipe on FLEURS.

Writes ``<save_folder>/<csv_prefix>{train,dev,test}.csv`` (columns ``ID,
duration, wav, spk_id, wrd, lang``) from the google/fleurs layout
(``data/<code>/*.tsv`` + ``audio/*.tar.gz``), extracting the archives
(members leaving their folder are refused). ``train.py`` calls it through
``run_on_main`` to train on FLEURS (``--dataset=fleurs``) or to add FLEURS'
test split as an out-of-domain test (``--fleurs_folder``). The work is done
by :func:`speechbrain_lora_experts.data.fleurs.prepare_fleurs`. From a
shell:

    python fleurs_prepare.py <fleurs_root> <save_folder> de,es,it

Authors
 * speechbrain-lora-experts developers 2026
"""

import sys

from speechbrain_lora_experts.data import fleurs


def prepare_fleurs(
    data_folder,
    save_folder,
    languages,
    splits=("train", "dev", "test"),
    csv_prefix="",
    max_utterances=None,
    max_hours=None,
    max_duration=30.0,
    skip_prep=False,
    audio_check="decode",
    max_chars_per_second="auto",
):
    """Prepares the recipe's CSVs from FLEURS.

    Arguments
    ---------
    data_folder : str
        Folder holding ``data/<code>/`` (the google/fleurs repository).
    save_folder : str
        Where the CSVs, extracted audio and report are written.
    languages : list of str
        Whisper codes or FLEURS codes.
    splits : sequence of str
        ``train``, ``dev``, ``test``.
    csv_prefix : str
        Prefix of the CSV names (``fleurs_`` for the out-of-domain test).
    max_utterances : int or dict, optional
        Cap per language and split.
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
    >>> paths = prepare_fleurs(
    ...     "fleurs", "prep", ["de"], ["test"], "fleurs_", skip_prep=True
    ... )
    >>> paths["test"]
    'prep/fleurs_test.csv'
    """
    return fleurs.prepare_fleurs(
        data_folder=data_folder,
        save_folder=save_folder,
        languages=languages,
        splits=splits,
        csv_prefix=csv_prefix,
        max_utterances=max_utterances,
        max_hours=max_hours,
        max_duration=max_duration,
        skip_prep=skip_prep,
        audio_check=audio_check,
        max_chars_per_second=max_chars_per_second,
    )


if __name__ == "__main__":
    data_folder, save_folder, languages = sys.argv[1:4]
    prepare_fleurs(data_folder, save_folder, languages.split(","))
