"""Forward-time overhead of routed LoRA experts in Whisper.

Times a teacher-forced Whisper forward (encoder + decoder) of a mixed-language
batch with N = 1, 4, 8 experts in routing mode (each utterance its own
expert) against the plain model, in one run, and reports ratios. The goal is
that routing costs no more than one LoRA whatever N is.

By default the model has whisper-base's shape with random weights (timing
does not depend on the values); ``--whisper DIR`` times a real checkpoint.

Usage: python bench/layer_overhead.py [--whisper DIR] [--repeats 5]

Authors
 * speechbrain-lora-experts developers 2026
"""

import argparse
import json
import os
import platform
import statistics
import time

import torch

from speechbrain_lora_experts.attach import WhisperLoRAExperts

HERE = os.path.dirname(os.path.abspath(__file__))


def base_sized_whisper():
    """whisper-base's architecture with random weights."""
    from transformers import WhisperConfig, WhisperModel

    config = WhisperConfig(
        vocab_size=51865,
        d_model=512,
        encoder_layers=6,
        decoder_layers=6,
        encoder_attention_heads=8,
        decoder_attention_heads=8,
        encoder_ffn_dim=2048,
        decoder_ffn_dim=2048,
        max_source_positions=1500,
        pad_token_id=50257,
        bos_token_id=50257,
        eos_token_id=50257,
        decoder_start_token_id=50258,
    )
    torch.manual_seed(0)
    return WhisperModel(config).eval()


def load_model(path):
    if path is None:
        return base_sized_whisper(), "whisper-base shape, random weights"
    from transformers import WhisperModel

    return WhisperModel.from_pretrained(path).eval(), path


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--whisper", default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--experts", default="1,4,8")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args()

    torch.set_num_threads(os.cpu_count() or 1)
    model, model_name = load_model(args.whisper)
    mel = torch.randn(args.batch, model.config.num_mel_bins, 3000)
    tokens = torch.randint(0, 50000, (args.batch, args.tokens))
    # Every configuration is its own model, timed in interleaved rounds so
    # that load changes on the machine hit all of them alike.
    systems = [("plain Whisper", 0, model)]
    counts = [int(n) for n in args.experts.split(",")]

    def pool_of(n):
        """A fresh model carrying n experts with non-zero updates."""
        net, _ = load_model(args.whisper)
        experts = WhisperLoRAExperts(
            net,
            n_experts=n,
            rank=args.rank,
            alpha=2 * args.rank,
            targets=["q_proj", "v_proj", "fc1", "fc2"],
        )
        with torch.no_grad():
            for p in experts.parameters():
                p.normal_(0, 0.01)
        return net, experts

    for n in counts:
        routed, experts = pool_of(n)
        # Distinct experts per utterance: a mixed-language batch.
        experts.route(torch.arange(args.batch) % n)
        systems.append((f"routed, {n} experts", n, routed))
        if n == max(counts):
            mixed, pool = pool_of(n)
            pool.mix(torch.softmax(torch.randn(args.batch, n), dim=-1))
            systems.append((f"dense mix, {n} experts", n, mixed))
    times = {name: [] for name, _, _ in systems}
    with torch.no_grad():
        for name, _, net in systems:  # warm-up
            net(input_features=mel, decoder_input_ids=tokens)
        for _ in range(args.repeats):
            for name, _, net in systems:
                start = time.perf_counter()
                net(input_features=mel, decoder_input_ids=tokens)
                times[name].append(time.perf_counter() - start)
    rows = [
        dict(
            system=name,
            n_experts=n,
            seconds=statistics.median(times[name]),
            all_seconds=times[name],
        )
        for name, n, _ in systems
    ]
    plain = rows[0]["seconds"]
    for row in rows:
        row["ratio_vs_plain"] = row["seconds"] / plain
    result = dict(
        benchmark="layer_overhead",
        model=model_name,
        batch=args.batch,
        decoder_tokens=args.tokens,
        encoder_window_s=30,
        rank=args.rank,
        targets="q_proj,v_proj,fc1,fc2 (encoder+decoder)",
        repeats=args.repeats,
        threads=torch.get_num_threads(),
        machine=platform.processor() or platform.machine(),
        torch=torch.__version__,
        rows=rows,
    )
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "layer_overhead.json"), "w") as f:
        json.dump(result, f, indent=2)
    lines = [
        "| system | forward (s) | ratio vs plain |",
        "|---|---|---|",
    ] + [
        f"| {r['system']} | {r['seconds']:.3f} | {r['ratio_vs_plain']:.3f} |"
        for r in rows
    ]
    table = "\n".join(lines)
    with open(os.path.join(args.out, "layer_overhead.md"), "w") as f:
        f.write(
            f"Forward of {model_name}, batch {args.batch}, "
            f"{args.tokens} decoder "
            f"tokens, 30 s window, LoRA r={args.rank} on q/v/fc1/fc2, "
            f"{result['threads']} CPU threads, median of {args.repeats} "
            "interleaved rounds.\n\n" + table + "\n"
        )
    print(table)


if __name__ == "__main__":
    main()
