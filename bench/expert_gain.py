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
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RECIPE = os.path.join(
    os.path.dirname(HERE), "recipes", "CommonVoice", "ASR", "lora_experts"
)


def run_expert(args, epochs, out):
    command = [
        sys.executable,
        "train.py",
        "hparams/expert.yaml",
        f"--language={args.language}",
        f"--data_folder={args.data_folder}",
        f"--whisper_hub={args.whisper}",
        f"--whisper_save_folder={os.path.join(args.work, 'hub')}",
        f"--output_folder={out}",
        f"--expert_pool={os.path.join(out, 'pool')}",
        f"--number_of_epochs={epochs}",
        f"--batch_size={args.batch_size}",
        f"--lr={args.lr}",
        f"--encoder_window_s={args.window}",
        "--valid_search_interval=0",
        "--device=cpu",
        "--precision=fp32",
    ]
    start = time.time()
    subprocess.run(command, cwd=RECIPE, check=True)
    with open(os.path.join(out, "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)
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
        whisper=args.whisper,
        data_folder=args.data_folder,
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
            f"Whisper: {args.whisper}; data: {args.data_folder}; "
            f"window {args.window} s; greedy; relative gain "
            f"{gain:.1f}%.\n\n" + table
        )
    print(table)


if __name__ == "__main__":
    main()
