"""Does one language expert beat zero-shot Whisper on its language?

Runs the expert recipe twice on the same data, in one go: with 0 epochs (the
expert's B matrices are zero, so this is exactly zero-shot Whisper through
the same decoding and scoring path) and with N epochs, then reports the test
WER/CER of both and the relative gain.

Usage (real whisper-base from ../shared/tools/get_whisper_base):
    python bench/expert_gain.py --whisper ~/.cache/lora-experts/whisper-base \
        --data_folder <cv release> --language de --epochs 3

Authors
 * speechbrain-lora-experts developers 2026
"""

import argparse
import json
import os
import time

from provenance import public_name

from speechbrain_lora_experts.recipe_runner import load_metrics, run_recipe

HERE = os.path.dirname(os.path.abspath(__file__))


def run_expert(args, epochs, out):
    """One expert run; returns its per-language metrics and seconds."""
    start = time.time()
    run_recipe(
        "expert.yaml",
        dict(
            language=args.language,
            data_folder=args.data_folder,
            whisper_hub=args.whisper,
            whisper_save_folder=os.path.join(args.work, "hub"),
            output_folder=out,
            expert_pool=os.path.join(out, "pool"),
            number_of_epochs=epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            encoder_window_s=args.window,
            valid_search_interval=0,
        ),
    )
    metrics = load_metrics(out)
    return metrics["per_language"][args.language], time.time() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--whisper", required=True)
    parser.add_argument("--data_folder", required=True)
    parser.add_argument("--language", default="de")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--work", default=os.path.join(HERE, "work"))
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args()

    zero, zero_s = run_expert(
        args, 0, os.path.join(args.work, f"zero_{args.language}")
    )
    expert, expert_s = run_expert(
        args, args.epochs, os.path.join(args.work, f"expert_{args.language}")
    )
    gain = 100.0 * (zero["error_rate"] - expert["error_rate"])
    gain /= zero["error_rate"]
    result = dict(
        benchmark="expert_gain",
        whisper=public_name(args.whisper),
        data_folder=public_name(args.data_folder),
        language=args.language,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        encoder_window_s=args.window,
        zero_shot=zero,
        expert=expert,
        relative_gain_percent=gain,
        seconds={"zero_shot_run": zero_s, "expert_run": expert_s},
    )
    os.makedirs(args.out, exist_ok=True)
    name = f"expert_gain_{args.language}"
    with open(os.path.join(args.out, name + ".json"), "w") as f:
        json.dump(result, f, indent=2, ensure_ascii=False)
    metric = zero["metric"]
    table = (
        f"| system | test {metric} ({args.language}) | utterances |\n"
        "|---|---|---|\n"
        f"| zero-shot Whisper | {zero['error_rate']:.1f} | {zero['n_utts']} |\n"
        f"| + {args.language} expert ({args.epochs} epochs) | "
        f"{expert['error_rate']:.1f} | {expert['n_utts']} |\n"
    )
    with open(os.path.join(args.out, name + ".md"), "w") as f:
        f.write(
            f"Whisper: {public_name(args.whisper)}; "
            f"data: {public_name(args.data_folder)}; "
            f"window {args.window} s; greedy; relative gain "
            f"{gain:.1f}%.\n\n" + table
        )
    print(table)


if __name__ == "__main__":
    main()
