"""Tunes the expert soup's two weights on the dev set (issue 9).

The ``expert_soup`` system of ``bench/quality.py`` gives each language the
model ``W + a * dML + b * dE``: the multilingual LoRA's update scaled by
``a`` (fuse.yaml's ``shared_adapter_scale``) plus that language's expert's
scaled by ``b`` (``expert_scale``); the uniform soup is a = b = 0.5.
Nothing is trained, so a grid point is one evaluation: the soup's own run
of ``bench/quality.py`` (same overrides, same finished expert pool and
multilingual LoRA of the same seed) with the two scales set and the dev
set in place of the test set (``test_csv`` pointed at the run's prepared
``dev.csv``; no out-of-domain test). The point with the lowest dev macro
error rate, averaged over the seeds, is chosen; no test set is read.

Every point is scored against the uniform soup on the same dev
utterances: the paired relative gain, with a bootstrap interval over dev
sentences shared by every point and seed (``bench/bootstrap.py``). The
dev set is small (the small setting: 10 clips per language), so the
interval says how far the choice can be trusted.

Usage::

    python bench/tune_soup.py --whisper ~/.cache/lora-experts/whisper-base \\
        --work bench/work/quality_small --seeds 1,2,3 \\
        --grid "shared_adapter_scale=0.35,0.5,0.65;expert_scale=0.35,0.5,0.65"

``--work`` is a ``bench/quality.py`` work folder whose expert pools and
multilingual LoRAs of the seeds have finished (the points' runs go to
``<work>/seed<N>/soup_dev_<scenario>/<point>/``, logs to
``<work>/logs/``). Writes ``<out>/<name>.json`` and ``.md``.

Authors
 * speechbrain-lora-experts developers 2026
"""

import argparse
import concurrent.futures
import os
import sys

import numpy as np

from speechbrain_lora_experts.recipe_runner import run_finished

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import quality  # noqa: E402
from bootstrap import Bootstrap, error_rates, read_run  # noqa: E402
from provenance import add_run_options, public_name, save_result  # noqa: E402
from tune_distill import parse_grid, point_name, write_grid_markdown  # noqa: E402

SYSTEM = "expert_soup"
KNOBS = ("shared_adapter_scale", "expert_scale")
UNIFORM = {"shared_adapter_scale": "0.5", "expert_scale": "0.5"}


def parse_args(argv=None):
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--whisper", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--grid", required=True)
    parser.add_argument("--seeds", default="1")
    parser.add_argument("--setting", default="small")
    parser.add_argument("--scenario", default="aware")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    add_run_options(parser, None, "score the points that have run")
    args = parser.parse_args(argv)
    args.name = args.name or f"tune_soup_{args.setting}"
    # The recipe runs in its own folder: relative paths would move.
    args.work = os.path.abspath(os.path.expanduser(args.work))
    args.points = parse_grid(args.grid, KNOBS)
    for point in args.points:
        for knob in KNOBS:
            point.setdefault(knob, UNIFORM[knob])
    # The reference every gain is paired against runs first.
    args.points = [dict(UNIFORM)] + [p for p in args.points if p != UNIFORM]
    return args


def soup_tasks(args):
    """``seed -> the soup's bench/quality.py task`` (deps checked).

    Raises
    ------
    SystemExit
        When a run the soup reads (an expert, the multilingual LoRA) has
        not finished.
    """
    qargs = quality.parse_args(
        [
            f"--setting={args.setting}",
            f"--whisper={args.whisper}",
            f"--work={args.work}",
            f"--seeds={args.seeds}",
            f"--scenarios={args.scenario}",
            f"--systems={SYSTEM}",
        ]
    )
    if not os.path.isdir(qargs.corpus):
        raise SystemExit(
            f"{qargs.corpus} holds no corpus: run bench/quality.py "
            f"--work={args.work} --systems={SYSTEM} first"
        )
    quality.prepare_corpus(qargs)
    if qargs.threads:
        os.environ["OMP_NUM_THREADS"] = str(qargs.threads)
        os.environ["MKL_NUM_THREADS"] = str(qargs.threads)
    tasks = quality.plan_runs(qargs)
    args.device, args.precision = qargs.device, qargs.precision
    out = {}
    for seed in qargs.seeds:
        task = tasks[("system", SYSTEM, args.scenario, seed)]
        for dep in sorted(task["deps"]):
            if not run_finished(tasks[dep]["out"]):
                raise SystemExit(
                    f"{tasks[dep]['out']} has not finished: run "
                    f"bench/quality.py --work={args.work} --seeds={seed} "
                    f"--scenarios={args.scenario} --systems={SYSTEM} first"
                )
        out[seed] = task
    return out


def dev_overrides(task, point, out):
    """The soup run's overrides, evaluating ``point`` on the dev set.

    Arguments
    ---------
    task : dict
        The soup's ``bench/quality.py`` task.
    point : dict
        ``shared_adapter_scale`` and ``expert_scale``.
    out : str
        The point's output folder.

    Returns
    -------
    dict

    Example
    -------
    >>> task = {
    ...     "overrides": {
    ...         "output_folder": "/w/soup",
    ...         "seed": 1,
    ...         "fleurs_folder": "/w/ood",
    ...         "shared_adapter_scale": 0.5,
    ...     }
    ... }
    >>> values = dev_overrides(task, {"shared_adapter_scale": "0.7"}, "/w/p")
    >>> values["test_csv"], values["shared_adapter_scale"], values["seed"]
    ('/w/p/data/dev.csv', '0.7', 1)
    >>> "fleurs_folder" in values
    False
    """
    values = dict(task["overrides"])
    # The dev set is the only test: no out-of-domain set is decoded.
    values.pop("fleurs_folder", None)
    values.update(point)
    values["output_folder"] = out
    prep = values.get("prep_folder", os.path.join(out, "data"))
    values["test_csv"] = os.path.join(prep, "dev.csv")
    return values


def score(runs, reference, n_resamples=1000):
    """Dev macro error rates of the points and gains over ``reference``.

    Arguments
    ---------
    runs : dict
        ``point name -> {seed: run}`` (runs as ``bootstrap.read_run``
        gives them); a point missing a seed is not scored.
    reference : str
        The point every gain is paired against.
    n_resamples : int
        Bootstrap resamples.

    Returns
    -------
    list of dict
        One row per point, scored points first by mean dev macro error
        rate: ``name``, ``seeds`` (run), ``macro`` (per seed), ``mean``,
        ``by_language`` (mean over seeds), ``gain`` over the reference
        (%), ``interval``, ``p_not_better``.

    Example
    -------
    >>> def run(edits):
    ...     return {
    ...         "de": {f"u{i}": (e, 4, (f"s{i}",)) for i, e in enumerate(edits)}
    ...     }
    >>> runs = {"ref": {1: run([2, 2, 2, 2])}, "p": {1: run([1, 1, 1, 2])}}
    >>> rows = score(runs, "ref", n_resamples=100)
    >>> [(r["name"], r["mean"], r["gain"]) for r in rows]
    [('p', 31.25, 37.5), ('ref', 50.0, 0.0)]
    >>> rows[0]["by_language"]
    {'de': 31.25}
    >>> two = {"de": {"a": (1, 4, ("s",))}, "it": {"b": (3, 4, ("t",))}}
    >>> score({"x": {1: two}}, "x", n_resamples=10)[0]["by_language"]
    {'de': 25.0, 'it': 75.0}
    """
    seeds = sorted(set().union(*(set(r) for r in runs.values())))
    complete = {
        name: [by_seed[s] for s in seeds]
        for name, by_seed in runs.items()
        if all(s in by_seed for s in seeds)
    }
    boot = (
        Bootstrap(
            [run for rs in complete.values() for run in rs],
            n_resamples=n_resamples,
        )
        if complete
        else None
    )
    rows = []
    for name in runs:
        row = dict(name=name, seeds=sorted(runs[name]))
        if name in complete:
            rates = [error_rates(run) for run in complete[name]]
            macros = [macro for _, macro in rates]
            row.update(macro=dict(zip(seeds, macros)))
            row["mean"] = float(np.mean(macros))
            # Where a weight helps: one language can move the macro alone.
            row["by_language"] = {
                lang: float(np.mean([langs[lang] for langs, _ in rates]))
                for lang in rates[0][0]
            }
        rows.append(row)
    by_name = {row["name"]: row for row in rows}
    ref = by_name.get(reference)
    for row in rows:
        if "mean" not in row or ref is None or "mean" not in ref:
            continue
        row["gain"] = 100.0 * (ref["mean"] - row["mean"]) / ref["mean"]
        samples = boot.paired_gain(complete[row["name"]], complete[reference])
        row["interval"] = list(Bootstrap.interval(samples))
        row["p_not_better"] = Bootstrap.share_at_most(samples, 0.0)
    scored = sorted((r for r in rows if "mean" in r), key=lambda r: r["mean"])
    return scored + [r for r in rows if "mean" not in r]


def write_markdown(path, result):
    """The grid as a table, best dev point first."""
    seeds = result["seeds"]
    lines = [
        "# Expert soup weights tuned on dev",
        "",
        f"System `{SYSTEM}` of `bench/quality.py`, setting "
        f"{result['setting']}, {result['scenario']}, seeds "
        f"{', '.join(map(str, seeds))}: each language's model is "
        "W + a·ΔML + b·Δexpert (a = `shared_adapter_scale`, b = "
        "`expert_scale`). Scored on the dev set only (test set not read): "
        f"{result['dev_set']}. Gains are paired against the uniform soup "
        "(a = b = 0.5) on the same utterances, 95% bootstrap interval over "
        "dev sentences; p = share of resamples where the point is not better. "
        "Chosen: the lowest mean dev macro WER.",
        "",
        "| a | b | dev macro WER by seed | mean | by language (mean) "
        "| gain over uniform | p |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["points"]:
        a, b = (row["point"][k] for k in KNOBS)
        if "mean" not in row:
            done = ", ".join(map(str, row["seeds"])) or "none"
            lines.append(f"| {a} | {b} | seeds run: {done} | – | – | – | – |")
            continue
        by_seed = " / ".join(f"{row['macro'][s]:.1f}" for s in seeds)
        gain = "–"
        if "gain" in row:
            low, high = row["interval"]
            gain = f"{row['gain']:+.1f}% [{low:+.1f}, {high:+.1f}]"
        p = f"{row['p_not_better']:.2f}" if "p_not_better" in row else "–"
        langs = " · ".join(
            f"{lang} {rate:.1f}" for lang, rate in row["by_language"].items()
        )
        lines.append(
            f"| {a} | {b} | {by_seed} | {row['mean']:.1f} | {langs} | {gain} "
            f"| {p} |"
        )
    write_grid_markdown(path, lines, result)


def main(argv=None):
    """Runs the grid's evaluations (or lists them) and scores them."""
    args = parse_args(argv)
    tasks = soup_tasks(args)
    # (point name, seed, the recipe run as quality.run_one takes it)
    plan = []
    for point in args.points:
        name = point_name(point)
        for seed, task in tasks.items():
            out = os.path.join(
                args.work, f"seed{seed}", f"soup_dev_{args.scenario}", name
            )
            run = dict(
                hparams=task["hparams"],
                out=out,
                overrides=dev_overrides(task, point, out),
            )
            plan.append((name, seed, run))
    if args.dry_run:
        for name, seed, run in plan:
            print(f"seed {seed} {name}: {run['out']}")
        return None
    # quality.run_one's bookkeeping: failures, wall and CPU seconds.
    args.failed, args.seconds, args.cpu_seconds = {}, {}, {}
    if not args.collect_only:
        with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as ex:
            list(ex.map(lambda item: quality.run_one(args, item[2]), plan))
    failed = {
        f"{name} seed {seed}": args.failed[key]
        for name, seed, run in plan
        if (key := quality._run_name(args, run["out"])) in args.failed
    }
    runs = {point_name(p): {} for p in args.points}
    for name, seed, run in plan:
        if run_finished(run["out"]):
            runs[name][seed] = read_run(run["out"])
    rows = score(runs, point_name(UNIFORM))
    for row in rows:
        row["point"] = next(
            p for p in args.points if point_name(p) == row["name"]
        )
    scored = [row for row in rows if "mean" in row]
    names = quality.placeholder_names(
        {
            os.path.abspath(os.path.expanduser(args.whisper)): "<whisper>",
            args.work: "<work>",
            os.path.abspath(args.out): "<out>",
        }
    )
    argv = sys.argv[1:] if argv is None else list(argv)
    commit, dirty = quality.git_commit()
    any_run = next((runs[r["name"]] for r in scored), None)
    sizes = Bootstrap(list(any_run.values())).sizes() if any_run else {}
    result = dict(
        benchmark="tune_soup",
        command=quality.command_line(argv, names, script="bench/tune_soup.py"),
        commit=commit,
        uncommitted_changes=dirty,
        setting=args.setting,
        scenario=args.scenario,
        seeds=sorted(tasks),
        whisper=public_name(args.whisper),
        grid=args.grid,
        dev_set=", ".join(
            f"{lang} {n['utterances']} clips" for lang, n in sizes.items()
        )
        or "none scored",
        points=rows,
        chosen=scored[0]["name"] if scored else None,
        failed=quality.scrub(failed, names),
    )
    save_result(args.out, args.name, result, write_markdown)
    if failed:
        print("failed:", failed, file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
