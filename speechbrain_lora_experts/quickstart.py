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

Authors
 * speechbrain-lora-experts developers 2026
"""

import argparse
import os

from speechbrain_lora_experts.recipe_runner import load_metrics, run_recipe


def parse_args(argv=None):
    """Command-line options."""
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
    """Runs the quickstart; returns ``{system: metrics}``."""
    args = parse_args(argv)
    out = os.path.abspath(args.out)
    languages = args.languages.split(",")
    os.makedirs(out, exist_ok=True)

    corpus = os.path.join(out, "corpus")
    if not os.path.isdir(os.path.join(corpus, "common_voice")):
        from speechbrain_lora_experts.data.demo import build_demo_corpus

        print(f"Building a demo corpus for {languages} in {corpus}")
        build_demo_corpus(
            corpus,
            languages,
            per_split=tuple(int(n) for n in args.per_split.split(",")),
            seed=args.seed,
            formats=("common_voice",),
        )
    whisper = args.whisper_hub
    if whisper is None:
        from speechbrain_lora_experts.testing.tiny_whisper import (
            make_tiny_whisper,
        )

        whisper = make_tiny_whisper(os.path.join(out, "tiny-whisper"))
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
    """Markdown table of per-language and macro error rates."""
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


if __name__ == "__main__":
    main()
