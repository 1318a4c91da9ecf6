"""Where does the curse of multilinguality start? (issue 9, item 6)

A one-factor-at-a-time sweep around a centre point: the paired gain of
the expert oracle (and of the shared + expert oracle, ``--shared``) over
the multilingual LoRA, language-aware, in-domain, as one factor changes:

* the number of languages (2 / 4 / 8),
* the training clips per language,
* the LoRA rank (experts and multilingual LoRA alike).

Every point is one ``bench/quality.py`` benchmark (small setting: its
batch, window, learning rate and test size) in its own work folder, so an
interrupted sweep resumes point by point; points that share languages and
sizes share a corpus. The step budget grows with the data: every point
allows ``BUDGET_EPOCHS`` epochs of the multilingual LoRA over all its
languages (the small setting's 240 steps at the centre), and each expert
as many steps (early stopping on dev ends every run at its optimum).

``--placement decoder`` puts every LoRA on the decoder only: the whole
encoder is frozen and computed once per clip (frozen-prefix cache), which
lets larger training sets fit a CPU session. It is about twice as bad in
WER on this synthetic speech, with the same ordering of the systems
(``bench/results/quality_small_dec.md``).

Writes ``<out>/<name>.{json,md,png}``: every point's gain with its
bootstrap interval and the multilingual LoRA's macro error rate, and the
gain against each swept factor.

Usage::

    python bench/sweep.py --whisper ~/.cache/lora-experts/whisper-base \\
        [--placement decoder] [--factors train] [--values train=40,160] \\
        [--shared] [--dry_run] [--collect_only]

Authors
 * speechbrain-lora-experts developers 2026
"""

import argparse
import json
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import quality  # noqa: E402
from provenance import add_run_options, public_name  # noqa: E402

LANGUAGE_SETS = {
    2: ["de", "it"],
    4: ["de", "es", "it", "ru"],
    8: ["de", "es", "it", "ru", "fr", "pt", "pl", "uk"],
}
CENTRE = dict(languages=4, train=40, rank=16)
FACTORS = dict(languages=[2, 4, 8], train=[20, 40, 80], rank=[4, 16, 64])
AXIS_LABELS = dict(
    languages="languages",
    train="training clips per language",
    rank="LoRA rank",
)
# Multilingual LoRA epochs in each point's step budget: the small
# setting's 240 steps over 4 x 40 clips in batches of 4.
BUDGET_EPOCHS = 6
BATCH_SIZE = quality.SETTINGS["small"]["batch_size"]
# The tests of a quality result, in-domain first; columns of the table.
TESTS = {
    "in_domain": "in-domain",
    "out_of_domain": "OOD (espeak)",
    "other_synth": "other synthesizer",
}
# Recipe options per placement; {work} is the sweep's work folder.
PLACEMENTS = {
    "encoder_decoder": [],
    "decoder": [
        "lora_parts=[decoder]",
        "prefix_cache=True",
        "prefix_cache_folder={work}/prefix_cache",
    ],
}


def parse_values(items):
    """``["train=40,160"]`` -> ``{"train": [40, 160]}``.

    Example
    -------
    >>> parse_values(["train=40,160", "rank=8"])
    {'train': [40, 160], 'rank': [8]}
    >>> parse_values(["epochs=3"])
    Traceback (most recent call last):
    ...
    ValueError: --values: unknown factor 'epochs'; choose from languages, \
train, rank
    """
    values = {}
    for item in items:
        factor, _, text = item.partition("=")
        if factor not in FACTORS:
            raise ValueError(
                f"--values: unknown factor {factor!r}; choose from "
                + ", ".join(FACTORS)
            )
        values[factor] = [int(v) for v in text.split(",") if v.strip()]
        if factor == "languages" and set(values[factor]) - set(LANGUAGE_SETS):
            raise ValueError(
                f"--values: languages must be among {sorted(LANGUAGE_SETS)}"
            )
    return values


def points(factors=None, values=None):
    """``(factor, value, point)`` of the sweep, the centre once.

    Arguments
    ---------
    factors : list of str, optional
        The factors to vary (default: all of ``FACTORS``).
    values : dict, optional
        Values replacing ``FACTORS``' for some factors.

    Returns
    -------
    list of tuple

    Example
    -------
    >>> [(f, v) for f, v, _ in points(["train"], {"train": [40, 160]})]
    [('centre', None), ('train', 160)]
    >>> points(["rank"])[1][2]
    {'languages': 4, 'train': 40, 'rank': 4}
    """
    grid = dict(FACTORS, **(values or {}))
    out = [("centre", None, dict(CENTRE))]
    seen = {tuple(sorted(CENTRE.items()))}
    for factor in factors or list(FACTORS):
        for value in grid[factor]:
            point = dict(CENTRE, **{factor: value})
            key = tuple(sorted(point.items()))
            if key not in seen:
                seen.add(key)
                out.append((factor, value, point))
    return out


def max_steps(point):
    """The point's step budget: ``BUDGET_EPOCHS`` of the multilingual LoRA.

    Example
    -------
    >>> max_steps(CENTRE)
    240
    >>> max_steps(dict(CENTRE, train=160))
    960
    """
    clips = point["languages"] * point["train"]
    return BUDGET_EPOCHS * math.ceil(clips / BATCH_SIZE)


def point_name(point):
    """``l4_t40_r16``: languages, training clips per language, rank."""
    return f"l{point['languages']}_t{point['train']}_r{point['rank']}"


def point_argv(args, point, systems):
    """``(name, bench/quality.py arguments)`` of one point."""
    languages = LANGUAGE_SETS[point["languages"]]
    name = point_name(point)
    corpus = f"l{point['languages']}_t{point['train']}"
    work = os.path.join(args.work, name)
    argv = [
        "--setting=small",
        f"--whisper={args.whisper}",
        f"--languages={','.join(languages)}",
        f"--per_split={point['train']},10,60",
        f"--corpus={os.path.join(args.corpora, corpus)}",
        f"--max_steps={max_steps(point)}",
        f"--recipe_override=lora_rank={point['rank']}",
        f"--systems={','.join(systems)}",
        "--scenarios=aware",
        f"--seeds={args.seeds}",
        f"--jobs={args.jobs}",
        f"--work={work}",
        f"--out={os.path.join(work, 'results')}",
        f"--name={name}",
    ]
    argv += [
        "--recipe_override=" + option.format(work=args.work)
        for option in PLACEMENTS[args.placement]
    ]
    if args.collect_only:
        argv.append("--collect_only")
    return name, argv


def point_row(factor, value, point, name, result, systems):
    """One point's line of the report from its quality result."""
    in_domain = result["results"].get("in_domain", {}).get("systems", {})
    base = in_domain.get("multilingual_lora/aware", {})
    row = dict(
        factor=factor,
        value=value,
        point=point,
        name=name,
        languages=LANGUAGE_SETS[point["languages"]],
        max_steps=max_steps(point),
        multilingual_lora_macro=base.get("macro"),
        multilingual_lora_ci=base.get("macro_ci"),
        commit=result.get("commit"),
    )
    for system in systems[1:]:
        for test in TESTS:
            found = result["results"].get(test, {}).get("systems", {})
            gain = found.get(f"{system}/aware", {}).get("paired_gain")
            gain = gain and dict(
                gain=gain["gain"], ci=gain["ci"], seeds=gain["seeds"]
            )
            row[gain_key(system, test)] = gain
    return row


def gain_key(system, test):
    """A point row's key of one system's gain on one test.

    In-domain under the system's own name: what the plot shows.

    Example
    -------
    >>> gain_key("expert_oracle", "in_domain"), gain_key("x", "other_synth")
    ('expert_oracle', 'x/other_synth')
    """
    return system if test == "in_domain" else f"{system}/{test}"


def parse_args(argv=None):
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--whisper", required=True)
    parser.add_argument("--seeds", default="1")
    parser.add_argument(
        "--shared", action="store_true", help="also shared + expert oracle"
    )
    parser.add_argument(
        "--placement", choices=sorted(PLACEMENTS), default="encoder_decoder"
    )
    parser.add_argument(
        "--factors",
        default=",".join(FACTORS),
        help="factors to vary, comma-separated (the others stay at the centre)",
    )
    parser.add_argument(
        "--values",
        action="append",
        default=[],
        metavar="FACTOR=V1,V2",
        help="values of a factor instead of FACTORS' (repeatable)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="runs at once")
    parser.add_argument("--work", default=None)
    parser.add_argument(
        "--corpora",
        default=os.path.join(HERE, "work", "sweep_corpora"),
        help="corpora, shared by placements",
    )
    add_run_options(parser, None, "report the finished points")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.factors = [f for f in args.factors.split(",") if f]
    unknown = set(args.factors) - set(FACTORS)
    if unknown:
        parser.error(f"unknown factors {sorted(unknown)}")
    try:
        args.values = parse_values(args.values)
    except ValueError as error:
        parser.error(str(error))
    suffix = "" if args.placement == "encoder_decoder" else f"_{args.placement}"
    if args.work is None:
        args.work = os.path.join(HERE, "work", f"sweep{suffix}")
    if args.name is None:
        args.name = f"sweep{suffix}"
    for name in ("work", "corpora", "out"):
        setattr(args, name, os.path.abspath(getattr(args, name)))
    return args


def main(argv=None):
    """Runs every point's benchmark and writes the sweep's report.

    Arguments
    ---------
    argv : list of str, optional
        Command-line arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    dict or None
        The report (None with ``--dry_run``).
    """
    args = parse_args(argv)
    systems = ["multilingual_lora", "expert_oracle"]
    if args.shared:
        systems.append("shared_expert_oracle")
    rows = []
    for factor, value, point in points(args.factors, args.values):
        name, point_args = point_argv(args, point, systems)
        if args.dry_run:
            print(quality.command_line(point_args, {}))
            continue
        if args.collect_only and not os.path.isdir(
            os.path.join(args.work, name)
        ):
            continue
        result = quality.main(point_args)
        rows.append(point_row(factor, value, point, name, result, systems))
    if args.dry_run:
        return None
    names = quality.placeholder_names(
        {
            os.path.abspath(os.path.expanduser(args.whisper)): "<whisper>",
            args.work: "<work>",
            args.corpora: "<corpora>",
            args.out: "<out>",
        }
    )
    commit, dirty = quality.git_commit()
    report = dict(
        benchmark="sweep",
        command=quality.command_line(args.argv, names, script="bench/sweep.py"),
        commit=commit,
        uncommitted_changes=dirty,
        whisper=public_name(args.whisper),
        placement=args.placement,
        placement_overrides=PLACEMENTS[args.placement],
        budget_epochs=BUDGET_EPOCHS,
        centre=CENTRE,
        factors=args.factors,
        values=dict(FACTORS, **args.values),
        language_sets=LANGUAGE_SETS,
        systems=systems,
        seeds=args.seeds,
        points=rows,
    )
    report = quality.scrub(report, names)
    os.makedirs(args.out, exist_ok=True)
    prefix = os.path.join(args.out, args.name)
    with open(prefix + ".json", "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    plot(rows, systems[1:], prefix + ".png")
    write_markdown(prefix + ".md", report, os.path.basename(prefix) + ".png")
    return report


def _gain(cell):
    if not cell:
        return "–"
    low, high = cell["ci"]
    seeds = cell.get("seeds")
    pooled = "" if seeds is None else f" ({seeds})"
    return f"{cell['gain']:+.1f}% [{low:+.1f}, {high:+.1f}]{pooled}"


def write_markdown(path, report, image):
    """The points as a table, then the plot."""
    systems = report["systems"][1:]
    lines = [
        "# Where does the curse of multilinguality start?",
        "",
        f"Placement `{report['placement']}`, whisper "
        f"{report['whisper']}, aware, seeds {report['seeds']} asked (a "
        "point's gain pools the seeds that finished there: count in "
        "brackets). Gain = "
        "relative macro error-rate reduction of the oracle over the "
        "multilingual LoRA of the same point, on each test "
        "(paired 95% bootstrap interval over test sentences; > 0: the "
        "experts win). Step budget: "
        f"{report['budget_epochs']} epochs of the multilingual LoRA.",
        "",
        "| varied | languages | train clips / language | rank | steps "
        "| ML-LoRA macro [95% CI] | "
        + " | ".join(
            f"{s} gain, {label} [95% CI]"
            for s in systems
            for label in TESTS.values()
        )
        + " |",
        "|---|---|---|---|---|---|" + "---|" * len(systems) * len(TESTS),
    ]
    for row in report["points"]:
        point = row["point"]
        macro = row["multilingual_lora_macro"]
        ci = row["multilingual_lora_ci"]
        lines.append(
            f"| {row['factor']} | {','.join(row['languages'])} | "
            f"{point['train']} | {point['rank']} | {row['max_steps']} | "
            + (
                "–"
                if macro is None
                else f"{macro:.1f} [{ci[0]:.1f}, {ci[1]:.1f}]"
            )
            + " | "
            + " | ".join(
                _gain(row.get(gain_key(s, test)))
                for s in systems
                for test in TESTS
            )
            + " |"
        )
    lines += [
        "",
        f"Command: `{report['command']}`; commit {report['commit'][:10]}.",
        "",
        f"![{image}]({image})",
        "",
    ]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


def plot(rows, systems, path):
    """Gain (with its interval) against each swept factor, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    factors = [f for f in FACTORS if any(r["factor"] == f for r in rows)]
    factors = factors or ["train"]
    fig, axes = plt.subplots(
        1, len(factors), figsize=(4 * len(factors), 3.2), squeeze=False
    )
    for ax, factor in zip(axes[0], factors):
        for system in systems:
            found = [
                (r["point"][factor], r[system])
                for r in rows
                if r.get(system)
                and all(
                    r["point"][k] == v for k, v in CENTRE.items() if k != factor
                )
            ]
            found.sort(key=lambda p: p[0])
            xs = [p[0] for p in found]
            ys = [p[1]["gain"] for p in found]
            errors = [
                [y - p[1]["ci"][0] for y, p in zip(ys, found)],
                [p[1]["ci"][1] - y for y, p in zip(ys, found)],
            ]
            ax.errorbar(
                xs, ys, yerr=errors, marker="o", capsize=3, label=system
            )
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        values = sorted({r["point"][factor] for r in rows})
        ax.set_xticks(values, [str(v) for v in values])
        ax.minorticks_off()
        ax.set_xlabel(AXIS_LABELS[factor])
        ax.set_ylabel("gain vs multilingual LoRA (%)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
