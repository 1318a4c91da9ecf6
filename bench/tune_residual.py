"""Tunes the residual experts of the shared + expert pool on dev (issue 9).

A residual expert starts at zero on top of the shared multilingual LoRA
and validates that start as epoch 0, so an expert that never lowers its
language's dev loss keeps the shared LoRA unchanged. At the benchmark's
step (lr 1e-3) all four residual experts of the small setting did: their
dev loss rose after the first epoch (``bench/results/quality_small_earlier.md``,
expert runs of the "shared" pool), and the shared + expert system equals
the multilingual LoRA. This script asks whether a gentler step (learning
rate, dropout, epochs) lets them improve on the shared LoRA.

Every grid point trains one "shared" pool with ``bench/quality.py
--systems '' --pools shared`` on the inputs of a finished work folder
(``--base_work``: corpus and multilingual LoRA, linked, not copied), in
``<work>/<point>/``, decoding the dev set every epoch. A point's score is
the macro dev error rate of the checkpoints the recipe keeps (each
language's lowest dev loss, the start included), beside the start's own
(the shared LoRA alone). No test set is read: the chosen point's test
numbers come from ``bench/quality.py --recipe_override`` afterwards.

Usage::

    python bench/tune_residual.py --whisper ~/.cache/lora-experts/whisper-base \\
        --base_work bench/work/quality_small --grid "lr=0.0001,0.0003" \\
        [--setting small] [--seed 1] [--dry_run] [--collect_only]

Writes ``<out>/<name>.json`` and ``.md``.

Authors
 * speechbrain-lora-experts developers 2026
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import quality  # noqa: E402
import tune_distill  # noqa: E402
from provenance import save_result  # noqa: E402

POOL = "shared"
# The shared LoRA the residuals refine is the aware multilingual LoRA.
SCENARIO = "aware"
KNOBS = (
    "lr",
    "lora_dropout",
    "weight_decay",
    "number_of_epochs",
    "patience",
)


def kept_point(curve):
    """The dev point whose checkpoint the recipe keeps: the lowest loss.

    Arguments
    ---------
    curve : list of dict
        ``dev_curve.json``: ``epoch``, ``loss``, ``error_rate`` per epoch
        (epoch 0: the start, with ``validate_before_training``).

    Returns
    -------
    dict
        That point (the earliest of equal losses).

    Example
    -------
    >>> kept_point(
    ...     [
    ...         {"epoch": 0, "loss": 0.56, "error_rate": 20.0},
    ...         {"epoch": 1, "loss": 0.72, "error_rate": 25.0},
    ...     ]
    ... )["epoch"]
    0
    """
    return min(curve, key=lambda point: (point["loss"], point["epoch"]))


def score_pool(seed_folder, languages):
    """Dev scores of one trained pool.

    Arguments
    ---------
    seed_folder : str
        ``<work>/seed<seed>``, holding ``shared_expert_<lang>/``.
    languages : list of str
        The pool's languages.

    Returns
    -------
    dict or None
        ``per_language`` (kept and start points, the whole curve),
        ``macro_error_rate`` and ``macro_start_error_rate`` (None where a
        language lacks a rate) and ``macro_loss``; None when a language's
        run has no dev curve yet.

    Example
    -------
    >>> import json, os
    >>> seed = getfixture("tmp_path")
    >>> for lang, rates in (("de", [20.0, 18.0]), ("it", [30.0, 33.0])):
    ...     os.makedirs(seed / f"shared_expert_{lang}")
    ...     curve = [
    ...         {"epoch": 0, "loss": 0.6, "error_rate": rates[0]},
    ...         {
    ...             "epoch": 1,
    ...             "loss": 0.5 if lang == "de" else 0.7,
    ...             "error_rate": rates[1],
    ...         },
    ...     ]
    ...     _ = (seed / f"shared_expert_{lang}" / "dev_curve.json").write_text(
    ...         json.dumps(curve)
    ...     )
    >>> score = score_pool(str(seed), ["de", "it"])
    >>> score["macro_error_rate"], score["macro_start_error_rate"]
    (24.0, 25.0)
    """
    per_language = {}
    for lang in languages:
        run = os.path.join(seed_folder, f"{POOL}_expert_{lang}")
        curve = tune_distill.read_dev_curve(run)
        if curve is None:
            return None
        start = next((p for p in curve if p["epoch"] == 0), None)
        train_loss = quality.read_train_log(run)["train_loss"]
        per_language[lang] = dict(
            kept=kept_point(curve),
            start=start,
            curve=curve,
            # How much the shared LoRA leaves to learn on these clips.
            first_train_loss=train_loss[0] if train_loss else None,
        )

    def macro(values):
        if any(v is None for v in values):
            return None
        return sum(values) / len(values)

    rows = per_language.values()
    return dict(
        per_language=per_language,
        macro_error_rate=macro([r["kept"].get("error_rate") for r in rows]),
        macro_start_error_rate=macro(
            [(r["start"] or {}).get("error_rate") for r in rows]
        ),
        macro_loss=macro([r["kept"]["loss"] for r in rows]),
    )


def score_rank(score):
    """Sort key of a point's score: macro dev error rate, then loss.

    Example
    -------
    >>> scores = [
    ...     {"macro_error_rate": None, "macro_loss": 0.1},
    ...     {"macro_error_rate": 20.0, "macro_loss": 0.9},
    ...     {"macro_error_rate": 20.0, "macro_loss": 0.5},
    ... ]
    >>> [s["macro_loss"] for s in sorted(scores, key=score_rank)]
    [0.5, 0.9, 0.1]
    """
    rate = score["macro_error_rate"]
    return (rate is None, rate if rate is not None else 0, score["macro_loss"])


def parse_args(argv=None):
    """Command line."""
    parser = tune_distill.grid_parser(
        __doc__.split("\n")[0], "tune_residual", parallel=1
    )
    return parser.parse_args(argv)


def point_argv(args, point, work):
    """``bench/quality.py`` arguments of one grid point: the pool only."""
    runs = ["--systems=", f"--pools={POOL}"]
    return tune_distill.quality_argv(args, point, work, SCENARIO, runs)


def _rate(value):
    return "–" if value is None else f"{value:.1f}"


def write_markdown(path, result):
    """The grid as a table, best dev point first."""
    languages = result["languages"]
    lines = [
        "# Residual experts of the shared + expert pool tuned on dev",
        "",
        f"Pool `{POOL}` of `bench/quality.py` (residual experts on the "
        f"aware multilingual LoRA), setting {result['setting']}, seed "
        f"{result['seed']}; corpus and multilingual LoRA shared by every "
        "point. Dev error rate in % of the checkpoint each expert keeps "
        "(lowest dev loss, epoch 0 = the shared LoRA alone included); "
        "*start*: the shared LoRA alone. Kept epoch in brackets. *train "
        "loss, epoch 1*: each residual expert's first-epoch training loss "
        "per language, i.e. how much the shared LoRA leaves to learn on "
        "those clips. No test set is read.",
        "",
        "| point | "
        + " | ".join(languages)
        + " | macro dev | start macro | macro dev loss "
        + "| train loss, epoch 1 |",
        "|---|" + "---|" * (len(languages) + 4),
    ]
    for row in result["points"]:
        score = row["score"]
        if score is None:
            lines.append(
                f"| {row['name']} | "
                + " | ".join("–" for _ in languages)
                + " | not run | – | – | – |"
            )
            continue
        cells = []
        for lang in languages:
            kept = score["per_language"][lang]["kept"]
            cells.append(f"{_rate(kept.get('error_rate'))} ({kept['epoch']})")
        lines.append(
            f"| {row['name']} | "
            + " | ".join(cells)
            + f" | {_rate(score['macro_error_rate'])}"
            + f" | {_rate(score['macro_start_error_rate'])}"
            + f" | {score['macro_loss']:.3f} | "
            + " / ".join(
                "–"
                if score["per_language"][lang].get("first_train_loss") is None
                else f"{score['per_language'][lang]['first_train_loss']:.3f}"
                for lang in languages
            )
            + " |"
        )
    tune_distill.write_grid_markdown(path, lines, result)


def main(argv=None):
    """Runs the grid (or, with ``--dry_run``, lists its commands)."""
    args = parse_args(argv)
    args.scenario = SCENARIO
    languages = quality.SETTINGS[args.setting]["languages"]

    def score(work):
        return score_pool(os.path.join(work, f"seed{args.seed}"), languages)

    result = tune_distill.run_grid(
        args,
        argv,
        KNOBS,
        point_argv,
        score,
        score_rank,
        "score",
        "bench/tune_residual.py",
    )
    if result is None:
        return None
    result = dict(benchmark="tune_residual", languages=languages, **result)
    save_result(args.out, args.name, result, write_markdown)
    return result


if __name__ == "__main__":
    main()
