"""Where does the curse of multilinguality start? (issue 9, item 6)

A one-factor-at-a-time sweep around a centre point: the paired gain of
the expert oracle (and of the shared + expert oracle, ``--shared``) over
the multilingual LoRA, language-aware, in-domain, as one factor changes:

* the number of languages (2 / 4 / 8),
* the training clips per language,
* the LoRA rank (experts and multilingual LoRA alike).

Every point is one ``bench/quality.py`` benchmark (small setting: its
step budget, batch, window and test size) in its own work folder, so an
interrupted sweep resumes point by point; points that share languages and
sizes share a corpus. Writes ``<out>/<name>.json`` (every point's gain
with its bootstrap interval and the multilingual LoRA's macro) and a plot
of gain against each factor.

Usage::

    python bench/sweep.py --whisper ~/.cache/lora-experts/whisper-base \\
        [--shared] [--dry_run]

Authors
 * speechbrain-lora-experts developers 2026
"""

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import quality  # noqa: E402

LANGUAGE_SETS = {
    2: ["de", "it"],
    4: ["de", "es", "it", "ru"],
    8: ["de", "es", "it", "ru", "fr", "pt", "pl", "uk"],
}
CENTRE = dict(languages=4, train=40, rank=16)
FACTORS = dict(languages=[2, 4, 8], train=[20, 40, 80], rank=[4, 16, 64])


def points():
    """``(factor, value, point)`` of the sweep, the centre once."""
    seen, out = set(), []
    for factor, values in FACTORS.items():
        for value in values:
            point = dict(CENTRE, **{factor: value})
            key = tuple(sorted(point.items()))
            if key not in seen:
                seen.add(key)
                out.append((factor, value, point))
    return out


def point_argv(args, point, systems):
    """``bench/quality.py`` arguments of one point."""
    languages = LANGUAGE_SETS[point["languages"]]
    name = f"l{point['languages']}_t{point['train']}_r{point['rank']}"
    corpus = f"l{point['languages']}_t{point['train']}"
    work = os.path.join(args.work, name)
    return name, [
        "--setting=small",
        f"--whisper={args.whisper}",
        f"--languages={','.join(languages)}",
        f"--per_split={point['train']},10,60",
        f"--corpus={os.path.join(args.work, 'corpora', corpus)}",
        f"--recipe_override=lora_rank={point['rank']}",
        f"--systems={','.join(systems)}",
        "--scenarios=aware",
        f"--seeds={args.seeds}",
        f"--work={work}",
        f"--out={os.path.join(work, 'results')}",
        f"--name={name}",
    ]


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
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--whisper", required=True)
    parser.add_argument("--seeds", default="1")
    parser.add_argument(
        "--shared", action="store_true", help="also shared + expert oracle"
    )
    parser.add_argument("--work", default=os.path.join(HERE, "work", "sweep"))
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--name", default="sweep")
    parser.add_argument("--dry_run", action="store_true")
    args = parser.parse_args(argv)
    args.work = os.path.abspath(os.path.expanduser(args.work))
    systems = ["multilingual_lora", "expert_oracle"]
    if args.shared:
        systems.append("shared_expert_oracle")
    rows = []
    for factor, value, point in points():
        name, point_args = point_argv(args, point, systems)
        if args.dry_run:
            print(quality.command_line(point_args, {}))
            continue
        result = quality.main(point_args)
        in_domain = result["results"].get("in_domain", {}).get("systems", {})
        row = dict(factor=factor, value=value, point=point, name=name)
        base = in_domain.get("multilingual_lora/aware", {})
        row["multilingual_lora_macro"] = base.get("macro")
        for system in systems[1:]:
            gain = in_domain.get(f"{system}/aware", {}).get("paired_gain")
            row[system] = gain and dict(gain=gain["gain"], ci=gain["ci"])
        rows.append(row)
    if args.dry_run:
        return None
    os.makedirs(args.out, exist_ok=True)
    prefix = os.path.join(args.out, args.name)
    report = dict(
        benchmark="sweep",
        command="python bench/sweep.py "
        + " ".join(a for a in (argv or sys.argv[1:]) if "/" not in a),
        centre=CENTRE,
        factors=FACTORS,
        language_sets=LANGUAGE_SETS,
        systems=systems,
        points=rows,
    )
    with open(prefix + ".json", "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    plot(rows, systems[1:], prefix + ".png")
    return report


def plot(rows, systems, path):
    """Gain (with its interval) against each factor, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(FACTORS), figsize=(4 * len(FACTORS), 3.2))
    for ax, factor in zip(axes, FACTORS):
        for system in systems:
            points = [
                (r["point"][factor], r[system])
                for r in rows
                if r[system]
                and all(
                    r["point"][k] == v for k, v in CENTRE.items() if k != factor
                )
            ]
            points.sort(key=lambda p: p[0])
            xs = [p[0] for p in points]
            ys = [p[1]["gain"] for p in points]
            errors = [
                [y - p[1]["ci"][0] for y, p in zip(ys, points)],
                [p[1]["ci"][1] - y for y, p in zip(ys, points)],
            ]
            ax.errorbar(
                xs, ys, yerr=errors, marker="o", capsize=3, label=system
            )
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel(factor)
        ax.set_ylabel("gain vs multilingual LoRA (%)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
