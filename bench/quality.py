"""The paper's comparison: experts, fusion and distillation vs baselines.

Runs the recipe (``recipes/CommonVoice/ASR/lora_experts/train.py``) for
every system in the language-aware and language-agnostic scenarios on the
same data, then collects per-language WER/CER, macro averages, language-ID
accuracy and relative gains over the multilingual-LoRA baseline, in-domain
(Common Voice layout) and out-of-domain (FLEURS layout), over seeds.

Systems: zero-shot Whisper, full finetuning, multilingual LoRA, expert
oracle (true language's expert), static merges (linear, TIES), fusion gate,
distillation. Experts are trained once per seed (language-aware, as each
expert knows its language) and shared by oracle, merges, fusion and
distillation.

Every run writes its own folder and is skipped when its ``metrics.json``
exists, so an interrupted benchmark resumes where it stopped.

Usage::

    python bench/quality.py --whisper ~/.cache/lora-experts/whisper-base \\
        --cv <cv-corpus-...> --fleurs <fleurs root> --languages de,es,it,ru \\
        --setting small

Authors
 * speechbrain-lora-experts developers 2026
"""

import argparse
import json
import os
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

from speechbrain_lora_experts.recipe_runner import load_metrics, run_recipe

HERE = os.path.dirname(os.path.abspath(__file__))
SCENARIOS = {"aware": True, "agnostic": False}
# system -> (hparams file, extra overrides); epochs=None means the setting's.
SYSTEMS = {
    # Listed in running order: the paper's comparison first.
    "multilingual_lora": ("multilingual_lora.yaml", {}),
    "fusion_gate": ("fuse.yaml", {}),
    "distillation": ("distill.yaml", {}),
    "expert_oracle": ("fuse.yaml", {"fusion": "oracle", "number_of_epochs": 0}),
    "zero_shot": ("multilingual_lora.yaml", {"number_of_epochs": 0}),
    "merge_ties": ("fuse.yaml", {"fusion": "ties", "number_of_epochs": 0}),
    "merge_linear": ("fuse.yaml", {"fusion": "linear", "number_of_epochs": 0}),
    "full_finetune": ("full_finetune.yaml", {}),
}
BASELINE = "multilingual_lora"
SETTINGS = {
    # CPU: whisper-base, short window, a few epochs.
    "small": dict(epochs=3, batch_size=4, window=10.0, lr=1e-3),
    # GPU: more data per language, bigger batches, more epochs; the window
    # covers the longest clip of a Bible-text make_corpus corpus (18.3 s).
    "full": dict(epochs=5, batch_size=16, window=20.0, lr=1e-3),
}


def run_one(args, hparams, out, overrides):
    """One recipe run with the setting's values, unless already done.

    The run's output goes to ``<work>/logs/<run>.log``, so parallel runs
    keep readable logs.
    """
    if os.path.isfile(os.path.join(out, "metrics.json")):
        return 0.0
    if args.collect_only:
        return None
    setting = SETTINGS[args.setting]
    values = dict(
        data_folder=args.cv,
        whisper_hub=args.whisper,
        whisper_save_folder=os.path.join(args.work, "hub"),
        output_folder=out,
        number_of_epochs=setting["epochs"],
        batch_size=setting["batch_size"],
        encoder_window_s=setting["window"],
        lr=setting["lr"],
        valid_search_interval=0,
    )
    if args.fleurs:
        values["fleurs_folder"] = args.fleurs
    if args.max_utterances:
        values["max_utterances"] = args.max_utterances
    values.update(overrides)
    logs = os.path.join(args.work, "logs")
    os.makedirs(logs, exist_ok=True)
    name = os.path.relpath(out, args.work).replace(os.sep, "_")
    path = os.path.join(logs, name + ".log")
    with open(path, "a") as log:
        try:
            return run_recipe(
                hparams,
                values,
                log=log,
                device=args.device,
                precision=args.precision,
            )
        except subprocess.CalledProcessError as error:
            # The other runs go on; main() names the failures at the end.
            args.failed[name] = f"exit status {error.returncode}, see {path}"
            return None


def run_many(args, tasks):
    """Runs ``{key: (hparams, out, overrides)}``, ``args.jobs`` at a time.

    Independent runs share one GPU well: a whisper-base step leaves most
    of it idle, so several processes overlap their kernels.
    """
    if args.jobs <= 1:
        return {key: run_one(args, *task) for key, task in tasks.items()}
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {
            key: pool.submit(run_one, args, *task)
            for key, task in tasks.items()
        }
        return {key: future.result() for key, future in futures.items()}


def run_all(args):
    """Trains and evaluates everything; returns the run folders.

    Experts of every seed train first (all other systems read them), then
    every system of every seed, seed by seed.
    """
    os.makedirs(args.work, exist_ok=True)
    experts, systems, folders = {}, {}, {}
    for seed in args.seeds:
        root = os.path.join(args.work, f"seed{seed}")
        pool = os.path.join(root, "pool")
        for lang in args.languages:
            experts[f"expert_{lang}/seed{seed}"] = (
                "expert.yaml",
                os.path.join(root, f"expert_{lang}"),
                dict(language=lang, expert_pool=pool, seed=seed),
            )
        for system in args.systems:
            for scenario in args.scenarios:
                hparams, extra = SYSTEMS[system]
                out = os.path.join(root, f"{system}_{scenario}")
                overrides = dict(
                    languages=args.languages,
                    language_aware=SCENARIOS[scenario],
                    expert_pool=pool,
                    seed=seed,
                )
                overrides.update(extra)
                if system == "full_finetune":
                    overrides["lr"] = args.full_finetune_lr
                if system in ("expert_oracle", "merge_linear", "merge_ties"):
                    # No gate exists to name the language.
                    overrides["lid_source"] = "decoder"
                key = f"{system}_{scenario}/seed{seed}"
                systems[key] = (hparams, out, overrides)
                folders[key] = (system, scenario, seed, out)
    timings = run_many(args, experts)
    timings.update(run_many(args, systems))
    runs = {}
    for system, scenario, seed, out in folders.values():
        if os.path.isfile(os.path.join(out, "metrics.json")):
            runs.setdefault((system, scenario), {})[seed] = out
    return runs, timings


def summarise(runs, languages):
    """Mean/std over seeds of per-language rates, macro, LID accuracy.

    Gains against the multilingual LoRA of the same scenario come twice:
    from the means over whatever seeds finished, and paired, seed by seed,
    over the seeds both systems finished (the fair one when a run failed).
    """
    table = {}
    macros_by_seed = {}
    for (system, scenario), by_seed in runs.items():
        entry = {}
        for test, prefix in (("in_domain", ""), ("out_of_domain", "fleurs_")):
            metrics = {
                seed: load_metrics(folder, prefix)
                for seed, folder in by_seed.items()
            }
            metrics = {s: m for s, m in metrics.items() if m is not None}
            if not metrics:
                continue
            macros_by_seed[(system, scenario, test)] = {
                s: m["macro"] for s, m in metrics.items()
            }
            metrics = list(metrics.values())
            per_lang = {}
            for lang in languages:
                rates = [m["per_language"][lang]["error_rate"] for m in metrics]
                per_lang[lang] = dict(
                    metric=metrics[0]["per_language"][lang]["metric"],
                    mean=statistics.mean(rates),
                    std=statistics.pstdev(rates),
                    median_utt=statistics.mean(
                        m["per_language"][lang]["median_utt_error_rate"]
                        for m in metrics
                    ),
                )
            macros = [m["macro"] for m in metrics]
            lids = [m["lid_accuracy"] for m in metrics]
            entry[test] = dict(
                per_language=per_lang,
                macro=statistics.mean(macros),
                macro_std=statistics.pstdev(macros),
                lid_accuracy=(
                    None if lids[0] is None else statistics.mean(lids)
                ),
                seeds=len(metrics),
                macro_by_seed={
                    str(s): m
                    for s, m in macros_by_seed[(system, scenario, test)].items()
                },
            )
        table[f"{system}/{scenario}"] = entry
    for key, entry in table.items():
        system, scenario = key.split("/")
        baseline = table.get(f"{BASELINE}/{scenario}", {})
        for test, numbers in entry.items():
            base = baseline.get(test, {}).get("macro")
            numbers["relative_gain_vs_multilingual_lora"] = (
                None if not base else 100.0 * (base - numbers["macro"]) / base
            )
            own = macros_by_seed[(system, scenario, test)]
            ref = macros_by_seed.get((BASELINE, scenario, test), {})
            gains = [
                100.0 * (ref[s] - own[s]) / ref[s]
                for s in sorted(own)
                if ref.get(s)
            ]
            numbers["paired_gain"] = dict(
                mean=statistics.mean(gains) if gains else None,
                std=statistics.pstdev(gains) if gains else None,
                seeds=len(gains),
            )
    return table


def markdown(table, languages, test):
    """One markdown table of a test set."""
    head = "| system | scenario | " + " | ".join(languages)
    head += " | macro | paired gain vs ML-LoRA (seeds) | LID acc |\n"
    head += "|---" * (len(languages) + 5) + "|\n"
    rows = []
    for key, entry in table.items():
        if test not in entry:
            continue
        system, scenario = key.split("/")
        numbers = entry[test]
        cells = [
            f"{numbers['per_language'][lang]['mean']:.1f}" for lang in languages
        ]
        paired = numbers["paired_gain"]
        lid = numbers["lid_accuracy"]
        macro = f"{numbers['macro']:.1f}"
        if numbers["seeds"] > 1:
            macro += f" ± {numbers['macro_std']:.1f}"
        rows.append(
            f"| {system} | {scenario} | "
            + " | ".join(cells)
            + f" | {macro} | "
            + (
                "–"
                if paired["mean"] is None
                else f"{paired['mean']:+.1f}% ± {paired['std']:.1f} "
                f"({paired['seeds']})"
            )
            + " | "
            + ("–" if lid is None else f"{100 * lid:.0f}%")
            + " |"
        )
    return head + "\n".join(rows) + "\n"


def plot(table, runs, languages, out_prefix):
    """Per-language error bars per system, and gate weights per language."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for scenario in SCENARIOS:
        keys = [k for k in table if k.endswith("/" + scenario)]
        keys = [k for k in keys if "in_domain" in table[k]]
        if not keys:
            continue
        fig, ax = plt.subplots(figsize=(1.8 + 1.4 * len(languages), 3.6))
        width = 0.8 / len(keys)
        for i, key in enumerate(keys):
            values = [
                table[key]["in_domain"]["per_language"][lang]["mean"]
                for lang in languages
            ]
            positions = [j + i * width for j in range(len(languages))]
            ax.bar(positions, values, width, label=key.split("/")[0])
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(languages))])
        ax.set_xticklabels(languages)
        ax.set_ylabel("WER / CER (%)")
        ax.set_title(f"Per-language error rate, language-{scenario}")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        path = f"{out_prefix}_wer_{scenario}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    for scenario in SCENARIOS:
        by_seed = runs.get(("fusion_gate", scenario), {})
        path_json = (
            os.path.join(by_seed[min(by_seed)], "gate_weights.json")
            if by_seed
            else ""
        )
        if not os.path.isfile(path_json):
            continue
        with open(path_json, encoding="utf-8") as f:
            weights = json.load(f)
        matrix = [[weights[t][e] for e in languages] for t in languages]
        fig, ax = plt.subplots(figsize=(1.2 + 0.8 * len(languages),) * 2)
        image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(languages)), languages)
        ax.set_yticks(range(len(languages)), languages)
        ax.set_xlabel("expert")
        ax.set_ylabel("true language")
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                ax.text(
                    j,
                    i,
                    f"{value:.2f}",
                    ha="center",
                    va="center",
                    color="w" if value < 0.5 else "k",
                    fontsize=8,
                )
        ax.set_title(f"Gate weights, language-{scenario}")
        fig.colorbar(image, ax=ax, fraction=0.046)
        fig.tight_layout()
        path = f"{out_prefix}_gate_{scenario}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--whisper", required=True)
    parser.add_argument("--cv", required=True, help="Common Voice release")
    parser.add_argument("--fleurs", default=None, help="FLEURS root (OOD)")
    parser.add_argument("--languages", default="de,es,it,ru")
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="small")
    parser.add_argument("--seeds", default="1986")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--max_utterances", type=int, default=None)
    parser.add_argument("--full_finetune_lr", type=float, default=1e-5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--precision",
        default=None,
        help="fp32, bf16 or fp16 (default: fp32 on CPU, the recipe's on GPU)",
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="recipe runs at a time"
    )
    parser.add_argument("--work", default=os.path.join(HERE, "work", "quality"))
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--name", default=None)
    parser.add_argument(
        "--collect_only",
        action="store_true",
        help="summarise finished runs without starting new ones",
    )
    args = parser.parse_args(argv)
    args.languages = args.languages.split(",")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.systems = args.systems.split(",")
    args.scenarios = args.scenarios.split(",")
    # The recipe runs in its own folder: relative paths would move.
    # --whisper may also be a hub id: only existing paths are made absolute.
    for name in ("whisper", "cv", "fleurs"):
        value = getattr(args, name)
        if value is not None and os.path.exists(os.path.expanduser(value)):
            setattr(args, name, os.path.abspath(os.path.expanduser(value)))
    args.work = os.path.abspath(os.path.expanduser(args.work))
    args.out = os.path.abspath(os.path.expanduser(args.out))
    args.failed = {}  # run name -> why, filled by run_one
    unknown = set(args.systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}")

    start = time.time()
    runs, timings = run_all(args)
    table = summarise(runs, args.languages)
    name = args.name or f"quality_{args.setting}"
    os.makedirs(args.out, exist_ok=True)
    prefix = os.path.join(args.out, name)
    result = dict(
        benchmark="quality",
        setting=args.setting,
        settings=SETTINGS[args.setting],
        whisper=args.whisper,
        cv=args.cv,
        fleurs=args.fleurs,
        languages=args.languages,
        seeds=args.seeds,
        baseline=BASELINE,
        results=table,
        seconds_per_run=timings,
        wall_seconds=time.time() - start,
        failed_runs=dict(args.failed),
    )
    with open(prefix + ".json", "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2, ensure_ascii=False)
    text = (
        f"Whisper: `{args.whisper}`; setting `{args.setting}` "
        f"({SETTINGS[args.setting]}); seeds {args.seeds}; greedy decoding. "
        "Error rates in % (WER, CER for zh/ja/th...), mean over the seeds "
        "that finished; macro ± std over seeds. Paired gain = relative macro "
        "reduction vs the multilingual LoRA of the same scenario and seed, "
        "mean ± std over the seeds both finished (count in brackets)."
        "\n\n### In-domain test\n\n"
        + markdown(table, args.languages, "in_domain")
    )
    if args.fleurs:
        text += "\n### Out-of-domain test (FLEURS layout)\n\n" + markdown(
            table, args.languages, "out_of_domain"
        )
    plots = plot(table, runs, args.languages, prefix)
    text += "\n" + "\n".join(
        f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots
    )
    with open(prefix + ".md", "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print(text)
    if args.failed:
        raise SystemExit(
            "runs failed (the report covers the others): "
            + "; ".join(f"{k}: {v}" for k, v in args.failed.items())
        )
    return result


if __name__ == "__main__":
    main()
