"""Decode speed of the working tree against an earlier commit, A/B.

Two ``speed.py`` runs made hours apart differ by more than a code change
does: the committed decode ratios moved by 5-10% between runs whose
"merged" system ran the very same computation as the baseline. This script
takes that bias out of a regression check: it checks the earlier commit out
into a temporary git worktree and runs that tree's ``bench/speed.py`` and
the working tree's alternately (``--pairs`` times each, reference first in
every pair), each in its own process importing its own package. Every run
measures its own plain-Whisper baseline, so each system gets one ratio per
run; a pair's difference (working tree minus reference) cancels what the
two runs of a pair share (machine state, load).

Reported per system: the median ratio of each side, the median paired
difference and its range over the pairs. A system counts as no worse when
the median difference is at most ``--tolerance`` (default 0.03, the merged
system's allowance in ``speed.py``).

Usage:
    python bench/speed_ab.py --against 4c512f5 \
        --whisper ~/.cache/lora-experts/whisper-base [--pairs 2] \
        [--speed-args "--window 30 --experts 8"] [--out bench/results]

Authors
 * speechbrain-lora-experts developers 2026
"""

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from provenance import public_name, save_result  # noqa: E402

DEFAULT_SPEED_ARGS = "--window 30 --experts 8 --repeats 3"


def parse_args(argv=None):
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--against", required=True, help="reference commit")
    parser.add_argument("--whisper", required=True, help="Whisper folder")
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument(
        "--speed-args",
        default=DEFAULT_SPEED_ARGS,
        help="passed to both trees' speed.py (decode phase, no memory)",
    )
    parser.add_argument("--tolerance", type=float, default=0.03)
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--name", default="speed_ab")
    return parser.parse_args(argv)


def git(*args, cwd=ROOT):
    """Output of one git command, stripped."""
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def decode_ratios(speed_json):
    """``{(window, system): ratio}`` of one ``speed.json``.

    Arguments
    ---------
    speed_json : dict
        A parsed ``speed.json``.

    Returns
    -------
    dict
        Ratios against the run's own baseline.

    Example
    -------
    >>> decode_ratios(
    ...     {
    ...         "decode": {
    ...             "30": [
    ...                 {"system": "plain Whisper", "ratio": 1.0},
    ...                 {"system": "fused", "ratio": 1.2},
    ...             ]
    ...         }
    ...     }
    ... )
    {('30', 'plain Whisper'): 1.0, ('30', 'fused'): 1.2}
    """
    return {
        (window, row["system"]): row["ratio"]
        for window, rows in speed_json["decode"].items()
        for row in rows
    }


def summarize(reference_runs, current_runs, tolerance):
    """Per-system medians and paired differences over the pairs.

    Arguments
    ---------
    reference_runs, current_runs : list of dict
        ``decode_ratios`` of each run, pair ``k`` at index ``k``.
    tolerance : float
        Largest median difference that counts as no worse.

    Returns
    -------
    list of dict
        One row per system present in every run, in the first run's order.

    Example
    -------
    >>> ref = [{("30", "a"): 1.10}, {("30", "a"): 1.20}]
    >>> cur = [{("30", "a"): 1.12}, {("30", "a"): 1.18}]
    >>> row = summarize(ref, cur, 0.03)[0]
    >>> row["difference"], row["difference_range"], row["no_worse"]
    (0.0, [-0.02, 0.02], True)
    """
    keys = [
        key
        for key in reference_runs[0]
        if all(key in run for run in reference_runs + current_runs)
    ]
    rows = []
    for key in keys:
        ref = [run[key] for run in reference_runs]
        cur = [run[key] for run in current_runs]
        diffs = [round(c - r, 4) for r, c in zip(ref, cur)]
        median = round(statistics.median(diffs), 4)
        rows.append(
            dict(
                window=key[0],
                system=key[1],
                reference=round(statistics.median(ref), 4),
                current=round(statistics.median(cur), 4),
                reference_runs=ref,
                current_runs=cur,
                difference=median,
                difference_range=[min(diffs), max(diffs)],
                no_worse=median <= tolerance,
            )
        )
    return rows


def run_speed(tree, whisper, speed_args, out, log):
    """One decode-only ``speed.py`` run of ``tree``; its ratios."""
    command = [
        sys.executable,
        os.path.join(tree, "bench", "speed.py"),
        "--whisper",
        whisper,
        "--phases",
        "decode",
        "--memory",
        "off",
        "--out",
        out,
        *shlex.split(speed_args),
    ]
    # PYTHONPATH first: the tree's own package, not the installed one.
    env = dict(os.environ, PYTHONPATH=tree)
    start = time.time()
    subprocess.run(command, cwd=tree, env=env, check=True)
    log(f"{tree}: {time.time() - start:.0f} s")
    with open(os.path.join(out, "speed.json"), encoding="utf-8") as f:
        return decode_ratios(json.load(f))


def write_markdown(path, result):
    """The table a reader checks."""
    lines = [
        "# Decode speed A/B: working tree vs an earlier commit",
        "",
        f"Reference {result['reference_commit'][:10]}, current "
        f"{result['current_commit'][:10]}"
        + (" (uncommitted changes)" if result["current_dirty"] else "")
        + f"; {result['pairs']} pairs of `speed.py` runs, alternating "
        "(reference first), each ratio against its own run's plain Whisper. "
        f"Speed args: `{result['speed_args']}`. Whisper: "
        f"{result['whisper']}. No worse: median paired difference "
        f"<= {result['tolerance']}. Wall time {result['wall_s']:.0f} s.",
        "",
        "| window | system | reference | current | difference (range) "
        "| no worse? |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        low, high = row["difference_range"]
        lines.append(
            f"| {row['window']} s | {row['system']} | {row['reference']:.3f} "
            f"| {row['current']:.3f} | {row['difference']:+.3f} "
            f"({low:+.3f} to {high:+.3f}) "
            f"| {'yes' if row['no_worse'] else '**no**'} |"
        )
    lines += ["", f"Command: `{result['command']}`", ""]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


def main(argv=None):
    """Runs the A/B and writes ``<name>.json`` and ``<name>.md``."""
    args = parse_args(argv)
    start = time.time()

    def log(message):
        print(f"[{time.time() - start:6.0f} s] {message}", flush=True)

    reference = git("rev-parse", args.against)
    current = git("rev-parse", "HEAD")
    dirty = bool(git("status", "--porcelain", "speechbrain_lora_experts"))
    with tempfile.TemporaryDirectory(prefix="speed_ab_") as tmp:
        tree = os.path.join(tmp, "reference")
        git("worktree", "add", "--detach", tree, reference)
        try:
            reference_runs, current_runs = [], []
            for pair in range(args.pairs):
                for side, runs, root in (
                    ("reference", reference_runs, tree),
                    ("current", current_runs, ROOT),
                ):
                    out = os.path.join(tmp, f"{side}_{pair}")
                    os.makedirs(out)
                    log(f"pair {pair + 1}/{args.pairs}: {side}")
                    runs.append(
                        run_speed(root, args.whisper, args.speed_args, out, log)
                    )
        finally:
            git("worktree", "remove", "--force", tree)
    result = dict(
        benchmark="speed_ab",
        command="python bench/speed_ab.py "
        + " ".join(
            shlex.quote(public_name(a) if os.path.isabs(a) else a)
            for a in (argv if argv is not None else sys.argv[1:])
        ),
        reference_commit=reference,
        current_commit=current,
        current_dirty=dirty,
        whisper=public_name(args.whisper),
        speed_args=args.speed_args,
        pairs=args.pairs,
        tolerance=args.tolerance,
        rows=summarize(reference_runs, current_runs, args.tolerance),
        wall_s=time.time() - start,
    )
    path = save_result(args.out, args.name, result, write_markdown)
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
