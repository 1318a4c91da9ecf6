"""Tunes the generalist distillation's weights on the dev set (issue 9).

The "distill_generalist" system of ``bench/quality.py`` (student started
from the multilingual LoRA, teachers = experts mixed with the multilingual
LoRA, KL anchor to the base Whisper) has four knobs: lambda
(``distill_weight``), T (``distill_temperature``), beta
(``multilingual_teacher_weight``) and mu (``distill_anchor_weight``),
plus the learning rate (``lr``). This
script runs one distillation per point of a grid and picks the point with
the lowest dev macro error rate (dev loss breaks ties), never looking at a
test set: the test numbers of the chosen point are then the ones to
report, through ``bench/quality.py --recipe_override``.

The expert pool and the multilingual LoRA do not depend on these knobs:
every point reuses the finished runs of a ``bench/quality.py`` work folder
(``--base_work``; linked, not copied) and trains only its distillation, in
``<work>/<point>/``, ``--parallel`` points at a time (one process each). Each point keeps its start (the multilingual LoRA) as
epoch 0 (``validate_before_training``), so a point that never improves on
dev reports the start's error rate.

Usage::

    python bench/tune_distill.py --whisper ~/.cache/lora-experts/whisper-base \\
        --base_work bench/work/quality_small \\
        --grid "distill_weight=0.3,0.7;distill_anchor_weight=0,0.3" \\
        [--setting small] [--seed 1] [--scenario aware] [--dry_run]

Writes ``<out>/<name>.json`` and ``.md``: every point's dev curve, best
dev error rate and loss, and the chosen point. The grid machinery
(``grid_parser``, ``quality_argv``, ``run_grid``) also serves
``bench/tune_residual.py``.

Authors
 * speechbrain-lora-experts developers 2026
"""

import argparse
import concurrent.futures
import itertools
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import quality  # noqa: E402
from provenance import add_run_options, public_name, save_result  # noqa: E402

SYSTEM = "distill_generalist"
KNOBS = (
    "distill_weight",
    "distill_temperature",
    "multilingual_teacher_weight",
    "distill_anchor_weight",
    # A student started from a converged LoRA may want a smaller step.
    "lr",
)


def parse_grid(text, knobs=KNOBS):
    """``"a=1,2;b=3"`` -> list of ``{"a": "1", "b": "3"}`` points.

    Arguments
    ---------
    text : str
        ``;``-separated ``KNOB=v1,v2`` items.
    knobs : tuple of str
        The recipe options a grid may set (default: ``KNOBS``).

    Returns
    -------
    list of dict
        Every combination, in the order given.

    Example
    -------
    >>> parse_grid("distill_weight=0.3,0.7;distill_anchor_weight=0")
    [{'distill_weight': '0.3', 'distill_anchor_weight': '0'}, \
{'distill_weight': '0.7', 'distill_anchor_weight': '0'}]
    >>> parse_grid("batch_size=1")
    Traceback (most recent call last):
    ...
    ValueError: unknown knob 'batch_size' in --grid; choose from \
distill_weight, distill_temperature, multilingual_teacher_weight, \
distill_anchor_weight, lr
    """
    axes = []
    for item in filter(None, (part.strip() for part in text.split(";"))):
        knob, _, values = item.partition("=")
        knob = knob.strip()
        if knob not in knobs:
            raise ValueError(
                f"unknown knob {knob!r} in --grid; choose from "
                + ", ".join(knobs)
            )
        values = [v.strip() for v in values.split(",") if v.strip()]
        if not values:
            raise ValueError(f"no values for {knob!r} in --grid")
        axes.append([(knob, v) for v in values])
    return [dict(combo) for combo in itertools.product(*axes)]


def point_name(point):
    """A folder name for a grid point.

    Example
    -------
    >>> point_name({"distill_weight": "0.3", "distill_anchor_weight": "0"})
    'distill_weight-0.3_distill_anchor_weight-0'
    """
    return "_".join(f"{k}-{v}" for k, v in point.items())


def link_base_runs(base_work, work, seed, scenario):
    """Links the inputs every point shares into ``work``.

    The corpus, the expert runs and pool, and the multilingual LoRA of
    ``base_work/seed<seed>``; they must have finished
    (``quality.run_finished``).
    """
    src = os.path.join(base_work, f"seed{seed}")
    dst = os.path.join(work, f"seed{seed}")
    os.makedirs(dst, exist_ok=True)
    names = [
        name
        for name in sorted(os.listdir(src))
        if name.startswith("expert_")
        and not name.startswith("expert_oracle")
        or name == "pool"
        or name == f"multilingual_lora_{scenario}"
    ]
    if f"multilingual_lora_{scenario}" not in names:
        raise SystemExit(
            f"{src} has no multilingual_lora_{scenario}: run bench/quality.py "
            "there first"
        )
    for name in names:
        if name != "pool" and not quality.run_finished(os.path.join(src, name)):
            raise SystemExit(f"{os.path.join(src, name)} has not finished")
        link = os.path.join(dst, name)
        if not os.path.lexists(link):
            os.symlink(os.path.join(src, name), link)
    corpus = os.path.join(work, "corpus")
    if not os.path.lexists(corpus):
        os.symlink(os.path.join(base_work, "corpus"), corpus)


def best_dev(run_folder):
    """The best dev point of a finished distillation, start included.

    Arguments
    ---------
    run_folder : str
        The run's output folder (``dev_curve.json`` inside).

    Returns
    -------
    dict or None
        ``epoch``, ``loss``, ``error_rate`` of the lowest dev error rate
        (loss breaks ties; points without an error rate rank by loss
        after them), plus the whole ``curve``; None before any epoch.

    Example
    -------
    >>> import json, os
    >>> folder = getfixture("tmp_path")
    >>> curve = [
    ...     {"epoch": 0, "loss": 0.7, "error_rate": 30.0},
    ...     {"epoch": 1, "loss": 0.8, "error_rate": 28.0},
    ... ]
    >>> _ = (folder / "dev_curve.json").write_text(json.dumps(curve))
    >>> best = best_dev(str(folder))
    >>> best["epoch"], best["error_rate"]
    (1, 28.0)
    """
    curve = read_dev_curve(run_folder)
    if curve is None:
        return None
    return dict(min(curve, key=dev_rank), curve=curve)


def read_dev_curve(run_folder):
    """A run's ``dev_curve.json`` points, or None before any epoch."""
    path = os.path.join(run_folder, "dev_curve.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        curve = json.load(f)
    return curve or None


def dev_rank(point):
    """Sort key of a dev point: error rate, then loss; no rate ranks last.

    Example
    -------
    >>> points = [
    ...     {"loss": 0.1},
    ...     {"loss": 0.9, "error_rate": 20.0},
    ...     {"loss": 0.5, "error_rate": 20.0},
    ... ]
    >>> [p["loss"] for p in sorted(points, key=dev_rank)]
    [0.5, 0.9, 0.1]
    """
    rate = point.get("error_rate")
    return (rate is None, rate if rate is not None else 0, point["loss"])


def grid_parser(description, name, parallel):
    """The command line every dev-tuning grid shares.

    Arguments
    ---------
    description : str
        The script's one-line description.
    name : str
        Default work folder (under ``bench/work``) and result name.
    parallel : int
        Default grid points at a time.

    Returns
    -------
    argparse.ArgumentParser
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--whisper", required=True)
    parser.add_argument("--base_work", required=True)
    parser.add_argument("--grid", required=True)
    parser.add_argument("--setting", default="small")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--parallel", type=int, default=parallel, help="grid points at a time"
    )
    parser.add_argument("--work", default=os.path.join(HERE, "work", name))
    add_run_options(
        parser, name, "report the dev curves the points have so far"
    )
    return parser


def parse_args(argv=None):
    """Command line."""
    parser = grid_parser(__doc__.split("\n")[0], "tune_distill", parallel=2)
    parser.add_argument("--scenario", default="aware")
    return parser.parse_args(argv)


def quality_argv(args, point, work, scenario, runs):
    """``bench/quality.py`` arguments of one grid point.

    Arguments
    ---------
    args : argparse.Namespace
        From ``grid_parser``.
    point : dict
        The point's recipe options.
    work : str
        The point's work folder.
    scenario : str
        The scenario to run.
    runs : list of str
        What to train: ``--systems=...`` (and ``--pools=...``).

    Returns
    -------
    list of str
    """
    argv = [
        f"--setting={args.setting}",
        f"--whisper={args.whisper}",
        f"--seeds={args.seed}",
        f"--scenarios={scenario}",
        *runs,
        "--jobs=1",
        f"--work={work}",
        f"--out={os.path.join(work, 'results')}",
        # Dev error rate each epoch: what the point is chosen by.
        "--recipe_override=valid_search_interval=1",
    ]
    argv += [f"--recipe_override={k}={v}" for k, v in point.items()]
    return argv


def point_argv(args, point, work):
    """``bench/quality.py`` arguments of one grid point."""
    return quality_argv(
        args, point, work, args.scenario, [f"--systems={SYSTEM}"]
    )


def run_point(argv):
    """One grid point: ``bench/quality.py`` in its own process.

    Its exit status is not checked: a failed point has no dev curve and
    is listed as not run.
    """
    command = [sys.executable, os.path.join(HERE, "quality.py"), *argv]
    return subprocess.run(command, check=False).returncode


def write_markdown(path, result):
    """The grid as a table, best dev point first."""
    lines = [
        "# Generalist distillation tuned on dev",
        "",
        f"System `{SYSTEM}` of `bench/quality.py`, setting "
        f"{result['setting']}, seed {result['seed']}, {result['scenario']}; "
        "expert pool and multilingual LoRA shared by every point. Chosen by "
        "the lowest dev macro error rate (start = epoch 0 included), dev "
        "loss breaking ties. No test set is read.",
        "",
        "| point | best epoch | dev error rate | dev loss | start (epoch 0) "
        "| dev error rate by epoch |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["points"]:
        best = row["best"]
        if best is None:
            lines.append(f"| {row['name']} | – | not run | – | – | – |")
            continue
        start = next((p for p in best["curve"] if p["epoch"] == 0), None)
        rate = best.get("error_rate")
        lines.append(
            f"| {row['name']} | {best['epoch']} | "
            + ("–" if rate is None else f"{rate:.1f}")
            + f" | {best['loss']:.3f} | "
            + (
                "–"
                if start is None or start.get("error_rate") is None
                else f"{start['error_rate']:.1f}"
            )
            + " | "
            + ", ".join(
                "–" if p.get("error_rate") is None else f"{p['error_rate']:.1f}"
                for p in best["curve"]
            )
            + " |"
        )
    write_grid_markdown(path, lines, result)


def write_grid_markdown(path, lines, result):
    """Writes a grid's table ``lines`` with the chosen point and command."""
    chosen = result.get("chosen")
    lines = lines + [
        "",
        f"Chosen: `{chosen}`." if chosen else "Chosen: none (no point ran).",
        "",
        f"Command: `{result['command']}`",
        "",
    ]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


def run_grid(args, argv, knobs, point_argv, score, rank, key, script):
    """Runs the grid's points (unless ``--collect_only``) and scores them.

    Arguments
    ---------
    args : argparse.Namespace
        From ``grid_parser`` (plus ``scenario``: the base runs to link).
    argv : list of str or None
        The command line, for the record.
    knobs : tuple of str
        The options the grid may set.
    point_argv : callable
        ``(args, point, work) -> bench/quality.py arguments``.
    score : callable
        ``work -> score`` of a point, or None if it has not run.
    rank : callable
        ``score -> sort key``, best first.
    key : str
        The rows' name for the score.
    script : str
        The tuner's path, for the recorded command.

    Returns
    -------
    dict or None
        The result's common fields (``points`` ranked, unscored last;
        ``chosen``); None with ``--dry_run`` (the commands are printed).
    """
    args.base_work = os.path.abspath(os.path.expanduser(args.base_work))
    args.work = os.path.abspath(os.path.expanduser(args.work))
    points = parse_grid(args.grid, knobs)
    works = [os.path.join(args.work, point_name(p)) for p in points]
    commands = [point_argv(args, p, w) for p, w in zip(points, works)]
    if args.dry_run:
        for argv_point in commands:
            print("python bench/quality.py " + " ".join(argv_point))
        return None
    if not args.collect_only:
        for work in works:
            link_base_runs(args.base_work, work, args.seed, args.scenario)
        with concurrent.futures.ThreadPoolExecutor(max(1, args.parallel)) as ex:
            list(ex.map(run_point, commands))
    rows = [
        {"name": point_name(point), "point": point, key: score(work)}
        for point, work in zip(points, works)
    ]
    ranked = sorted(
        (row for row in rows if row[key] is not None),
        key=lambda row: rank(row[key]),
    )
    names = quality.placeholder_names(
        {
            os.path.abspath(os.path.expanduser(args.whisper)): "<whisper>",
            args.base_work: "<base_work>",
            args.work: "<work>",
            os.path.abspath(args.out): "<out>",
        }
    )
    command = quality.command_line(
        argv if argv is not None else sys.argv[1:], names, script=script
    )
    commit, dirty = quality.git_commit()
    return dict(
        command=command,
        commit=commit,
        uncommitted_changes=dirty,
        setting=args.setting,
        seed=args.seed,
        whisper=public_name(args.whisper),
        grid=args.grid,
        points=ranked + [row for row in rows if row[key] is None],
        chosen=ranked[0]["name"] if ranked else None,
    )


def main(argv=None):
    """Runs the grid (or, with ``--dry_run``, lists its commands)."""
    args = parse_args(argv)

    def score(work):
        run = os.path.join(
            work, f"seed{args.seed}", f"{SYSTEM}_{args.scenario}"
        )
        return best_dev(run)

    result = run_grid(
        args,
        argv,
        KNOBS,
        point_argv,
        score,
        dev_rank,
        "best",
        "bench/tune_distill.py",
    )
    if result is None:
        return None
    result = dict(benchmark="tune_distill", scenario=args.scenario, **result)
    save_result(args.out, args.name, result, write_markdown)
    return result


if __name__ == "__main__":
    main()
