"""The bad-input and fault matrix: every case, what happens, its test.

One list, the source of the README section "What happens with bad input":
``test_readme_matrix.py`` checks that the README table is exactly
:func:`markdown_table` and that every test named here exists.

Authors
 * speechbrain-lora-experts developers 2026
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    """One bad input or fault.

    Attributes
    ----------
    bad_input : str
        What the user has.
    outcome : str
        What happens (markdown).
    test : str
        ``path::test`` relative to ``tests/``.
    outcome_key : str
        The skip reason in ``prepare_report.json``, for counted skips.
    """

    bad_input: str
    outcome: str
    test: str
    outcome_key: str = ""


ROWS = "faults/test_bad_rows.py::test_every_bad_row_is_counted_under_its_reason"
CV = "data/test_common_voice.py::"
FL = "data/test_fleurs.py::"
FAULTS = "faults/test_faults.py::"
KILL = "faults/test_kill_during_save.py::"
STOP = "faults/test_resume_after_early_stop.py::"


def _skip(bad_input, reason, test=ROWS):
    return Case(
        bad_input,
        f"row skipped, counted as `{reason}`",
        test,
        outcome_key=reason,
    )


#: Corpus rows: skipped at preparation and counted in the report, no
#: valid row lost (``test_no_valid_row_is_lost_or_changed``).
ROW_CASES = [
    _skip("TSV row with the wrong number of columns", "malformed_row"),
    _skip("clip path with `..`, absolute, or empty", "unsafe_path"),
    _skip("the same clip listed twice", "duplicate_id"),
    _skip("empty or blank transcript", "empty_sentence"),
    _skip('punctuation-only transcript (`"..."`)', "empty_after_normalization"),
    _skip("zero-byte clip", "zero_byte_clip"),
    _skip("clip that is not audio (garbage header)", "unreadable_clip"),
    _skip("clip listed but absent", "missing_clip"),
    _skip("audio header without samples", "empty_audio"),
    _skip(
        "mp3 with a valid header and a corrupt body",
        "corrupt_clip",
        FAULTS + "test_03_corrupt_mp3_body_is_skipped_at_preparation",
    ),
    _skip(
        "truncated mp3 (decodes shorter than its header says)",
        "truncated_clip",
        FAULTS + "test_04_truncated_mp3_and_implausible_rate_are_skipped",
    ),
    _skip(
        "NaN or infinite samples",
        "non_finite_audio",
        FAULTS + "test_10_punctuation_only_and_nan_rows_are_skipped",
    ),
    _skip("clip longer than the encoder window", "too_long"),
    _skip(
        "transcript too long for its clip (> 30 characters/s, 15 for "
        "zh/yue/ja)",
        "implausible_speaking_rate",
        FAULTS + "test_04_truncated_mp3_and_implausible_rate_are_skipped",
    ),
    _skip(
        "clip shorter than `min_duration`",
        "too_short",
        CV + "test_min_duration_option",
    ),
    _skip(
        "FLEURS row whose wav is not in the archive",
        "missing_clip",
        FL + "test_exact_counts_and_report",
    ),
    _skip(
        "FLEURS file name leaving its folder",
        "unsafe_path",
        FL + "test_unsafe_file_name_in_tsv_is_skipped",
    ),
]

#: Everything else: a clear error, a repair, or kept as it should be.
OTHER_CASES = [
    Case(
        "44.1 kHz or stereo clips, `$5` or quotes in transcripts",
        "kept; audio converted to 16 kHz mono, text kept verbatim",
        "faults/test_bad_rows.py::test_no_valid_row_is_lost_or_changed",
    ),
    Case(
        "Common Voice v10/v13 TSV schemas",
        "read by column name",
        "data/test_demo_corpus.py::test_older_common_voice_schemas",
    ),
    Case(
        "corpus changed after preparation (rows added, TSV edited, a "
        "skipped clip restored, a kept clip replaced)",
        "prepared again, the log says why",
        FAULTS + "test_01_changed_corpus_is_prepared_again",
    ),
    Case(
        "TSV that is not UTF-8",
        "error naming the file and the bad line",
        FAULTS + "test_09_non_utf8_error_names_the_bad_line",
    ),
    Case(
        "split TSV missing, or a TSV without the needed columns",
        "error listing the TSVs/columns present",
        CV + "test_missing_split_and_missing_columns",
    ),
    Case(
        "no usable training row / no usable dev or test row",
        "error naming the report / a warning",
        CV + "test_empty_train_is_an_error_empty_dev_a_warning",
    ),
    Case(
        "language folder absent / download folder given",
        "error listing the folders present / naming the release folder",
        CV + "test_missing_language_lists_folders",
    ),
    Case(
        "negative or malformed caps",
        "error",
        CV + "test_bad_cap_values",
    ),
    Case(
        "the same language requested twice (`zh`, `zh-CN`)",
        "error",
        CV + "test_same_language_twice_is_an_error",
    ),
    Case(
        "ISO 639-2/3 code, English or native name (`deu`, `German`, "
        "`Deutsch`, `español`)",
        "accepted",
        FAULTS + "test_language_codes_and_names",
    ),
    Case(
        "language Whisper has no token for / unknown name",
        "error naming the language / `Unknown language`",
        FAULTS + "test_language_codes_and_names",
    ),
    Case(
        "FLEURS archive with `..`, absolute, link members / not a tar",
        "refused before anything is written / error naming the archive",
        FL + "test_unsafe_archive_members_are_rejected",
    ),
    Case(
        "a clip that breaks after preparation (corrupt, NaN)",
        "`AudioError` naming the file and the fix; the next run prepares "
        "again and skips it",
        FAULTS + "test_03_04_10_bad_audio_is_refused_at_load_too",
    ),
    Case(
        "punctuation-only reference at scoring",
        "not scored, counted as `skipped_empty_references`",
        FAULTS + "test_10_punctuation_only_reference_is_not_scored",
    ),
    Case(
        "quickstart interrupted while building (Ctrl-C, crash)",
        "rebuilt from scratch on the next run; Ctrl-C prints one line",
        FAULTS + "test_02_interrupted_quickstart_build_is_redone",
    ),
    Case(
        "a quickstart step fails",
        "its last lines and log path, no traceback",
        FAULTS + "test_02_failed_step_shows_its_last_lines_and_log",
    ),
    Case(
        "training interrupted mid-epoch",
        "resumes to bit-identical adapters",
        "test_recipe_robustness.py::"
        "test_interrupted_run_resumes_to_the_same_weights",
    ),
    Case(
        "SIGKILL during a checkpoint save",
        "the incomplete checkpoint is moved aside (`incomplete-CKPT+...`) "
        "with a warning; the run resumes from the previous one",
        KILL + "test_sigkill_during_checkpoint_save_resumes",
    ),
    Case(
        "a truncated checkpoint file",
        "same: moved aside, the previous checkpoint is recovered",
        KILL + "test_truncated_checkpoint_file_resumes_from_the_previous",
    ),
    Case(
        "a checkpoint with `CKPT.yaml` but files missing",
        "same: moved aside, the previous checkpoint is recovered",
        KILL + "test_checkpoint_killed_right_after_its_meta_file",
    ),
    Case(
        "a run killed after early stopping",
        "the rerun resumes stopped: best dev loss, patience and stop "
        "decision are in the checkpoint (SpeechBrain 1.1.2's counter "
        "forgets them and trains on)",
        STOP + "test_stopped_run_resumes_stopped",
    ),
    Case(
        "a run killed during its patience",
        "patience keeps counting from the best epoch",
        STOP + "test_patience_counts_across_a_resume",
    ),
    Case(
        "a checkpoint of SpeechBrain's plain epoch counter (older runs)",
        "loads: the epoch is kept, the early stopper starts afresh",
        STOP + "test_a_plain_counter_checkpoint_still_loads",
    ),
    Case(
        "a recipe yaml with SpeechBrain's own `EpochCounterWithStopper`",
        "refused by the tests: every yaml uses the project's counter, "
        "which checkpoints the stopper",
        STOP + "test_every_recipe_yaml_uses_the_saving_counter",
    ),
    Case(
        "Whisper folder moved or misspelled",
        "error: the folder does not exist (similar names), fix "
        '`whisper_hub` / `overrides={"whisper_hub": ...}`',
        FAULTS + "test_06_missing_whisper_folder_names_the_option",
    ),
    Case(
        "expert loaded on another Whisper of the same shape",
        "refused (base-weight fingerprint); `strict=False` loads it with a "
        "warning",
        FAULTS + "test_07_expert_on_other_base_weights_is_refused",
    ),
    Case(
        "expert of another architecture, rank or layers; pickled `.bin`; DoRA",
        "refused, naming each mismatch",
        "test_peft_io.py::test_mismatches_give_clear_errors",
    ),
    Case(
        "inference: clip longer than the encoder window",
        "refused (split it first)",
        "test_inference.py::test_beam_option_and_long_clip_error",
    ),
    Case(
        "inference: model folder with a file missing",
        "error naming the file",
        "test_inference.py::test_missing_files_are_named",
    ),
    Case(
        "inference: truncated `gate.safetensors`, adapter or `model.json`",
        "error naming the file and the fix",
        "test_inference.py::test_truncated_files_are_named",
    ),
    Case(
        "inference: NaN or infinite samples",
        "refused, naming the clip",
        "test_interface_whisperasr.py::test_non_finite_audio_is_refused",
    ),
]

CASES = ROW_CASES + OTHER_CASES

HEADER = "| bad input or fault | what happens | test |\n|---|---|---|"


def markdown_table():
    """The README table, one row per case."""
    lines = [HEADER]
    for case in CASES:
        lines.append(
            f"| {case.bad_input} | {case.outcome} | `tests/{case.test}` |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
