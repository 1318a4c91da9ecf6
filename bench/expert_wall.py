"""Wall time of one language expert, end to end from the recipe (issue 12).

Trains one expert with ``recipes/.../train.py hparams/expert.yaml`` on a
demo corpus (``--clips`` training clips of one language, espeak-ng speech in
the Common Voice layout), once per configuration, one after the other:
data preparation, every epoch with its dev decoding, the test, the export.
Reports per configuration the wall time of the whole run and of training
alone (first epoch start to last epoch end, from the run's log), the test
WER, and the frozen-prefix cache's clip counts. Configurations differ in
where the LoRA sits, whether the frozen-prefix cache is on and whether
each batch's encoder window is cut to its longest clip (``cut``:
``--window_bucket_s``); ``zero-shot`` configurations train no epoch. Each
cached configuration starts from an empty cache, so its first epoch
computes the entries (the cost a new user pays).

A configuration that differs from another one only by being cached or cut
is compared with it on the same test utterances: the paired relative WER
change with a bootstrap interval over test sentences.

Usage::

    python bench/expert_wall.py --whisper ~/.cache/lora-experts/whisper-base
    python bench/expert_wall.py --whisper ... --window 30 --name cut_windows \
        --configs "zero-shot,zero-shot cut,enc+dec,enc+dec cut"

Writes ``<out>/expert_wall.{json,md}``. Run it on an otherwise quiet
machine: wall time is the measure.

Authors
 * speechbrain-lora-experts developers 2026
"""

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RECIPE = os.path.join(ROOT, "recipes", "CommonVoice", "ASR", "lora_experts")
sys.path.insert(0, HERE)

from bootstrap import Bootstrap, read_run  # noqa: E402
from corpus import build_corpus, describe_corpus  # noqa: E402
from provenance import git_state, public_name, save_result  # noqa: E402
from quality import command_line  # noqa: E402

# name: recipe flags. whisper-base has 6 encoder layers: "enc4+dec" adapts
# the top two and the whole decoder; "cached": the frozen-prefix cache on
# (fp16 entries unless "fp32"); "cut": windows cut to the batch (--bucket);
# "zero-shot": no training (the default placement, nothing learned).
CONFIGS = {
    "zero-shot": [],
    "zero-shot cut": [],
    "enc+dec": ["--prefix_cache=False"],
    "enc+dec cut": ["--prefix_cache=False"],
    "enc4+dec": ["--lora_layers={encoder: 4-5}", "--prefix_cache=False"],
    "enc4+dec cached": [
        "--lora_layers={encoder: 4-5}",
        "--prefix_cache=True",
    ],
    "enc4+dec cached fp32": [
        "--lora_layers={encoder: 4-5}",
        "--prefix_cache=True",
        "--prefix_cache_dtype=float32",
    ],
    "dec cached": ["--lora_parts=[decoder]", "--prefix_cache=True"],
}
# What a configuration is compared with: itself without the last word(s).
_VARIANTS = (" cached fp32", " cached", " cut")
_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) - ")
_WINDOWS = re.compile(
    r"(\w+): encoder windows cut to the batch: ([\d.]+) s on average"
)
_COUNTS = re.compile(
    r"(\w+): frozen-prefix cache computed (\d+) clips, read (\d+)"
)


def parse_args(argv=None):
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--whisper", required=True)
    parser.add_argument("--language", default="de")
    parser.add_argument("--clips", type=int, default=100)
    parser.add_argument("--dev", type=int, default=20)
    parser.add_argument("--test", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument(
        "--bucket",
        type=float,
        default=2.0,
        help="window_bucket_s of the 'cut' configurations",
    )
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument(
        "--conditions",
        default="one run at a time",
        help="what else ran on the machine (reported beside wall times)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument(
        "--text_source",
        choices=("django", "bible"),
        default="bible",
        help="bible: enough distinct sentences for 180 clips",
    )
    parser.add_argument(
        "--configs",
        default=",".join(CONFIGS),
        help=f"subset of {list(CONFIGS)}, comma-separated in that order",
    )
    parser.add_argument(
        "--work", default=os.path.join(HERE, "work", "expert_wall")
    )
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--name", default="expert_wall")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown configs {unknown}; known: {list(CONFIGS)}")
    args.config_names = names
    return args


def log_times(log_text):
    """Seconds from the first epoch's start to the last epoch's end.

    Example
    -------
    >>> text = (
    ...     "2026-11-29 10:00:00,000 - x - Going into epoch 1\\n"
    ...     "2026-11-29 10:00:30,500 - x - epoch: 1 ...\\n"
    ...     "2026-11-29 10:01:00,000 - speechbrain.utils.train_logger - "
    ...     "epoch: 3, lr: 1e-3 - train loss: 1\\n"
    ...     "2026-11-29 10:02:00,000 - x - test\\n"
    ... )
    >>> log_times(text)
    60.0
    """
    start = end = None
    for line in log_text.splitlines():
        match = _TIME.match(line)
        if not match:
            continue
        stamp = datetime.datetime.strptime(
            match[1], "%Y-%m-%d %H:%M:%S"
        ) + datetime.timedelta(milliseconds=int(match[2]))
        if start is None and "Going into epoch" in line:
            start = stamp
        if "train_logger" in line and "train loss" in line:
            end = stamp
    if start is None or end is None:
        return None
    return (end - start).total_seconds()


def mean_window(log_text):
    """Average window (s) of a cut run's training epochs; or None.

    A run that trains no epoch reports its test window.

    Example
    -------
    >>> mean_window(
    ...     "train: encoder windows cut to the batch: 4.00 s on average\\n"
    ...     "valid: encoder windows cut to the batch: 9.00 s on average\\n"
    ...     "train: encoder windows cut to the batch: 6.00 s on average\\n"
    ... )
    5.0
    >>> mean_window("test: encoder windows cut to the batch: 3.5 s on average")
    3.5
    """
    for stage in ("train", "test"):
        values = [float(v) for s, v in _WINDOWS.findall(log_text) if s == stage]
        if values:
            return sum(values) / len(values)
    return None


def cache_counts(log_text):
    """``{stage: [computed, read]}`` summed over the run's stages.

    Example
    -------
    >>> cache_counts(
    ...     "train: frozen-prefix cache computed 4 clips, read 0\\n"
    ...     "train: frozen-prefix cache computed 0 clips, read 4\\n"
    ... )
    {'train': [4, 4]}
    """
    counts = {}
    for stage, computed, read in _COUNTS.findall(log_text):
        total = counts.setdefault(stage, [0, 0])
        total[0] += int(computed)
        total[1] += int(read)
    return counts


def baseline_of(name, names):
    """The configuration ``name`` is a cached or cut variant of, if run.

    Example
    -------
    >>> baseline_of("enc4+dec cached fp32", ["enc4+dec", "enc+dec"])
    'enc4+dec'
    >>> baseline_of("zero-shot cut", ["enc+dec"]) is None
    True
    """
    for suffix in _VARIANTS:
        if name.endswith(suffix) and name[: -len(suffix)] in names:
            return name[: -len(suffix)]
    return None


def config_flags(args, name):
    """Recipe flags of a configuration (epochs and the cut included)."""
    epochs = 0 if name.startswith("zero-shot") else args.epochs
    flags = [
        f"--number_of_epochs={epochs}",
        f"--patience={max(epochs, 1)}",  # every epoch runs: fixed work
        *CONFIGS[name],
    ]
    if name.endswith(" cut"):
        flags.append(f"--window_bucket_s={args.bucket:g}")
    return flags


def paired_changes(args, runs, work_folders):
    """Each variant's WER change against its baseline, paired.

    Returns
    -------
    dict
        ``variant -> {baseline, wer, baseline_wer, change_pct, interval}``
        where a positive change is a higher (worse) WER.
    """
    names = [row["config"] for row in runs]
    out = {}
    for name in names:
        base = baseline_of(name, names)
        if base is None:
            continue
        pair = [read_run(work_folders[n]) for n in (name, base)]
        boot = Bootstrap(pair, n_resamples=args.bootstrap, seed=0)
        system, baseline = boot.macro([pair[0]]), boot.macro([pair[1]])
        change = -boot.paired_gain([pair[0]], [pair[1]])
        rows = {row["config"]: row for row in runs}
        out[name] = dict(
            baseline=base,
            wer=rows[name]["test_wer"],
            baseline_wer=rows[base]["test_wer"],
            change_pct=(
                100.0
                * (rows[name]["test_wer"] - rows[base]["test_wer"])
                / rows[base]["test_wer"]
                if rows[base]["test_wer"]
                else None
            ),
            interval=Bootstrap.interval(change),
            wer_interval=Bootstrap.interval(system),
            baseline_wer_interval=Bootstrap.interval(baseline),
            test=boot.sizes(),
        )
    return out


def run_config(args, name, corpus, out):
    """Trains the expert of one configuration; its measurements."""
    shutil.rmtree(out, ignore_errors=True)
    command = [
        sys.executable,
        "train.py",
        os.path.join("hparams", "expert.yaml"),
        f"--language={args.language}",
        f"--data_folder={os.path.join(corpus, 'common_voice')}",
        f"--whisper_hub={args.whisper}",
        f"--whisper_save_folder={os.path.join(args.work, 'hub')}",
        f"--output_folder={out}",
        f"--expert_pool={os.path.join(out, 'pool')}",
        f"--prefix_cache_folder={os.path.join(out, 'prefix_cache')}",
        f"--batch_size={args.batch_size}",
        f"--encoder_window_s={args.window:g}",
        "--device=cpu",
        "--precision=fp32",
        *config_flags(args, name),
    ]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": str(args.threads),
    }
    started = time.perf_counter()
    result = subprocess.run(
        command, cwd=RECIPE, env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{name}: train.py failed\n{result.stderr[-3000:]}")
    with open(os.path.join(out, "log.txt"), encoding="utf-8") as f:
        text = f.read()
    with open(os.path.join(out, "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    with open(os.path.join(out, "run.json"), encoding="utf-8") as f:
        run = json.load(f)
    return dict(
        config=name,
        flags=config_flags(args, name),
        wall_s=wall,
        train_s=log_times(text),
        test_wer=metrics["macro"],
        epochs=run["epochs"],
        optimizer_steps=run["optimizer_steps"],
        cache=cache_counts(text),
        mean_window_s=mean_window(text),
    )


def write_markdown(path, result):
    """The configurations as a table."""
    s = result["settings"]
    lines = [
        "# One expert end to end from the recipe",
        "",
        f"`train.py hparams/expert.yaml`, {result['whisper']}, language "
        f"{s['language']}: {s['clips']} training clips, {s['dev']} dev, "
        f"{s['test']} test (espeak-ng demo corpus, {s['text_source']} text, "
        f"seed {s['seed']}), "
        f"{s['epochs']} epochs (all run), batch {s['batch_size']}, "
        f"{s['window']:g} s window, CPU, {s['threads']} threads, "
        f"{s.get('conditions', 'one run at a time')}. *run*: the whole "
        "command (preparation, every epoch with "
        "its dev decoding, test, export); *training*: first epoch start to "
        "last epoch end. Cached runs start from an empty cache; *cut* runs "
        f"cut each batch's window to its longest clip rounded up to "
        f"{s.get('bucket', 2.0):g} s (*window*: their average training "
        "window); *zero-shot*: no epoch.",
        "",
        f"Command: `{result['command']}`; commit "
        f"{(result['git'].get('commit') or 'unknown')[:10]}.",
        "",
        "| configuration | run (min) | training (min) | test WER (%) | "
        "window (s) | prefix cache (computed/read, all stages) |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["runs"]:
        counts = row["cache"]
        cache = (
            ", ".join(f"{k} {v[0]}/{v[1]}" for k, v in counts.items())
            if counts
            else "off"
        )
        train = "—" if row["train_s"] is None else f"{row['train_s'] / 60:.1f}"
        window = row.get("mean_window_s")
        window = f"{window:.2f}" if window else f"{s['window']:g}"
        lines.append(
            f"| {row['config']} | {row['wall_s'] / 60:.1f} | {train} | "
            f"{row['test_wer']:.1f} | {window} | {cache} |"
        )
    changes = result.get("paired_changes") or {}
    if changes:
        lines += [
            "",
            "Paired on the same test utterances (relative WER change, "
            "positive = worse; 95 % bootstrap interval over test sentences, "
            f"{result['settings'].get('bootstrap', 1000)} resamples):",
            "",
            "| configuration | vs | WER | vs WER | change (%) | interval |",
            "|---|---|---|---|---|---|",
        ]
        for name, c in changes.items():
            low, high = c["interval"]
            lines.append(
                f"| {name} | {c['baseline']} | {c['wer']:.1f} | "
                f"{c['baseline_wer']:.1f} | "
                + (
                    "—"
                    if c["change_pct"] is None
                    else f"{c['change_pct']:+.1f}"
                )
                + " | "
                f"[{low:+.1f}, {high:+.1f}] |"
            )
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def _in_repo(path, label):
    """``path`` relative to the repository, or ``label`` outside it."""
    relative = os.path.relpath(os.path.abspath(path), ROOT)
    return label if relative.startswith("..") else relative


def main(argv=None):
    """Builds the corpus (once), runs every configuration, writes results."""
    args = parse_args(argv)
    corpus = os.path.join(args.work, "corpus")
    if not os.path.exists(os.path.join(corpus, "corpus.json")):
        build_corpus(
            corpus,
            [args.language],
            per_split=(args.clips, args.dev, args.test),
            seed=args.seed,
            text_source=args.text_source,
            other_synth=False,
        )
    runs, folders = [], {}
    for name in args.config_names:
        folder = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
        folders[name] = os.path.join(args.work, folder)
        row = run_config(args, name, corpus, folders[name])
        print(json.dumps(row), flush=True)
        runs.append(row)
    names = {
        os.path.abspath(path): _in_repo(path, label)
        for path, label in ((args.work, "<work>"), (args.out, "<out>"))
    }
    if os.path.isabs(os.path.expanduser(args.whisper)):
        names[os.path.abspath(os.path.expanduser(args.whisper))] = public_name(
            args.whisper
        )
    result = dict(
        benchmark="expert_wall",
        command=command_line(args.argv, names, script="bench/expert_wall.py"),
        whisper=public_name(args.whisper),
        git=git_state(),
        corpus=describe_corpus(
            corpus,
            os.path.join(corpus, "common_voice"),
            None,
            None,
            [args.language],
        ),
        settings=dict(
            language=args.language,
            clips=args.clips,
            dev=args.dev,
            test=args.test,
            epochs=args.epochs,
            batch_size=args.batch_size,
            window=args.window,
            bucket=args.bucket,
            bootstrap=args.bootstrap,
            conditions=args.conditions,
            threads=args.threads,
            seed=args.seed,
            text_source=args.text_source,
        ),
        runs=runs,
        paired_changes=paired_changes(args, runs, folders),
    )
    print(open(save_result(args.out, args.name, result, write_markdown)).read())
    return result


if __name__ == "__main__":
    main()
