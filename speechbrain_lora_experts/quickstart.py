"""Try the whole method offline in one command.

Builds a small synthesized corpus (Common Voice layout, espeak-ng speech of
real sentences), trains one LoRA expert per language, fuses them with a
learned gate, trains the standard multilingual-LoRA baseline on the same
data, and prints per-language error rates of both::

    python -m speechbrain_lora_experts.quickstart
    python -m speechbrain_lora_experts.quickstart \\
        --whisper_hub ~/.cache/lora-experts/whisper-base --languages de,es,it

With no ``--whisper_hub`` a tiny random Whisper is built (seconds; its
transcripts are noise, it shows the pipeline). With a real Whisper folder
(or a hub id where the hub is reachable) the numbers mean something. Runs
are resumable: finished steps are skipped when the command is repeated.
The corpus and the tiny Whisper are built in temporary folders renamed
when complete, so an interrupted build is simply redone; a failed step
prints its last lines and its log, and Ctrl-C prints one line.

Authors
 * speechbrain-lora-experts developers 2026
"""

import argparse
import os
import shutil
import sys

from speechbrain_lora_experts.recipe_runner import (
    RecipeRunError,
    load_metrics,
    run_recipe,
)

INTERRUPTED = (
    "Interrupted. Finished steps are kept: run the same command again to "
    "resume."
)
_COMPLETE = ".complete"


def build_once(folder, build, key=""):
    """Build ``folder`` with ``build(tmp)`` unless a complete one exists.

    The build goes to ``<folder>.partial`` and is renamed when done, so an
    interrupted build (Ctrl-C, a crash) leaves no half folder behind that
    a rerun would take for finished.

    Arguments
    ---------
    folder : str
        Final location.
    build : callable
        ``build(path)`` writes everything into ``path``.
    key : str
        What was built (e.g. the options); a complete folder built with
        another key is built again.

    Returns
    -------
    bool
        Whether it was built now (False: reused).

    Example
    -------
    >>> root = str(getfixture("tmp_path") / "a")
    >>> build_once(root, lambda p: os.makedirs(p + "/x"), key="de")
    True
    >>> build_once(root, lambda p: 1 / 0, key="de")
    False
    """
    marker = os.path.join(folder, _COMPLETE)
    if os.path.isfile(marker):
        with open(marker, encoding="utf-8") as f:
            if f.read() == key:
                return False
    partial = folder + ".partial"
    for stale in (folder, partial):
        # A folder without the marker is what an interrupted build left.
        if os.path.exists(stale):
            shutil.rmtree(stale)
    os.makedirs(partial)
    build(partial)
    with open(os.path.join(partial, _COMPLETE), "w", encoding="utf-8") as f:
        f.write(key)
    os.replace(partial, folder)
    return True


def parse_args(argv=None):
    """Command-line options.

    Arguments
    ---------
    argv : list of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    argparse.Namespace
        The options.

    Example
    -------
    >>> parse_args(["--languages", "de,it"]).languages
    'de,it'
    """
    parser = argparse.ArgumentParser(
        description="Experts + fusion vs multilingual LoRA, offline."
    )
    parser.add_argument("--out", default="quickstart")
    parser.add_argument("--languages", default="de,es")
    parser.add_argument(
        "--whisper_hub",
        default=None,
        help="Whisper folder or hub id (default: a tiny random Whisper)",
    )
    parser.add_argument("--per_split", default="12,3,3")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--encoder_window_s", type=float, default=10.0)
    parser.add_argument("--language_aware", default="True")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None):
    """Runs the quickstart; returns ``{system: metrics}``.

    Arguments
    ---------
    argv : list of str, optional
        Arguments (see :func:`parse_args`).

    Returns
    -------
    dict
        ``{system: metrics}`` of every system run.

    Example
    -------
    The whole run takes minutes; a bad option stops it before anything
    is written:

    >>> import contextlib, io
    >>> err = io.StringIO()
    >>> with contextlib.redirect_stderr(err):
    ...     try:
    ...         main(["--out", "quickstart", "--epochs", "two"])
    ...     except SystemExit as stop:
    ...         print("exit status", stop.code)
    exit status 2
    >>> err.getvalue().splitlines()[-1]
    "... error: argument --epochs: invalid int value: 'two'"
    """
    args = parse_args(argv)
    out = os.path.abspath(args.out)
    languages = args.languages.split(",")
    os.makedirs(out, exist_ok=True)

    corpus = os.path.join(out, "corpus")

    def build_corpus(path):
        """Builds the demo corpus into ``path`` (the resumable step's work)."""
        from speechbrain_lora_experts.data.demo import build_demo_corpus

        print(f"Building a demo corpus for {languages} in {corpus}")
        build_demo_corpus(
            path,
            languages,
            per_split=tuple(int(n) for n in args.per_split.split(",")),
            seed=args.seed,
            formats=("common_voice",),
        )

    build_once(
        corpus, build_corpus, key=f"{languages} {args.per_split} {args.seed}"
    )
    whisper = args.whisper_hub
    if whisper is None:
        from speechbrain_lora_experts.testing.tiny_whisper import (
            make_tiny_whisper,
        )

        whisper = os.path.join(out, "tiny-whisper")
        build_once(whisper, make_tiny_whisper)
        print(f"Using a tiny random Whisper ({whisper}): numbers are noise")

    common = dict(
        data_folder=os.path.join(corpus, "common_voice"),
        whisper_hub=whisper,
        whisper_save_folder=os.path.join(out, "hub"),
        expert_pool=os.path.join(out, "expert_pool"),
        number_of_epochs=args.epochs,
        batch_size=args.batch_size,
        encoder_window_s=args.encoder_window_s,
        valid_search_interval=0,
        seed=args.seed,
    )
    log_path = os.path.join(out, "runs.log")
    with open(log_path, "a") as log:
        for lang in languages:
            print(f"Training the {lang} expert ...")
            run_recipe(
                "expert.yaml",
                dict(
                    common,
                    language=lang,
                    output_folder=os.path.join(out, f"expert_{lang}"),
                ),
                log=log,
                device=args.device,
            )
        systems = {}
        for system, hparams in (
            ("multilingual_lora", "multilingual_lora.yaml"),
            ("fusion_gate", "fuse.yaml"),
        ):
            print(f"Training {system} on {languages} ...")
            folder = os.path.join(out, system)
            run_recipe(
                hparams,
                dict(
                    common,
                    languages=languages,
                    language_aware=args.language_aware,
                    output_folder=folder,
                ),
                log=log,
                device=args.device,
            )
            systems[system] = load_metrics(folder)
    print(f"\nTest error rates (%), logs in {log_path}:\n")
    print(table(systems, languages))
    print(f"\nFused model folder: {os.path.join(out, 'fusion_gate', 'model')}")
    return systems


def table(systems, languages):
    """Markdown table of per-language and macro error rates.

    Arguments
    ---------
    systems : dict
        ``{system: metrics}`` (``metrics.json`` contents).
    languages : list of str
        The columns.

    Returns
    -------
    str
        The Markdown table.

    Example
    -------
    >>> row = {"error_rate": 12.5, "metric": "WER"}
    >>> metrics = {"per_language": {"de": row}, "macro": 12.5}
    >>> print(table({"fusion": metrics}, ["de"]).splitlines()[2])
    | fusion | 12.5 | 12.5 |
    """
    first = next(iter(systems.values()))
    metric = {lang: first["per_language"][lang]["metric"] for lang in languages}
    lines = [
        "| system | "
        + " | ".join(f"{lang} ({metric[lang]})" for lang in languages)
        + " | macro |",
        "|---" * (len(languages) + 2) + "|",
    ]
    for name, metrics in systems.items():
        cells = [
            f"{metrics['per_language'][lang]['error_rate']:.1f}"
            for lang in languages
        ]
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {metrics['macro']:.1f} |"
        )
    return "\n".join(lines)


def cli(argv=None):
    """``main`` for the command line: an exit status, no tracebacks.

    A failed step prints its last lines and log path; Ctrl-C prints one
    line. Returns 0, 1 (a step failed) or 130 (interrupted).

    Arguments
    ---------
    argv : list of str, optional
        Arguments (see :func:`parse_args`).

    Returns
    -------
    int
        The exit status.

    Example
    -------
    The statuses for a failed step and Ctrl-C (``main`` stands in for
    the minutes-long run):

    >>> import contextlib, io
    >>> from unittest import mock
    >>> failed = RecipeRunError(1, ["train.py"], "fuse.yaml", tail="OOM")
    >>> run = "speechbrain_lora_experts.quickstart.main"
    >>> for error in (failed, KeyboardInterrupt()):
    ...     err = io.StringIO()
    ...     with mock.patch(run, side_effect=error):
    ...         with contextlib.redirect_stderr(err):
    ...             status = cli([])
    ...     print(status, err.getvalue().strip().splitlines()[0])
    1 The fuse.yaml run failed (exit status 1). Its last lines:
    130 Interrupted. Finished steps are kept: run the same command again ...
    """
    try:
        main(argv)
    except KeyboardInterrupt:
        print(f"\n{INTERRUPTED}", file=sys.stderr)
        return 130
    except RecipeRunError as err:
        print(f"\n{err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
