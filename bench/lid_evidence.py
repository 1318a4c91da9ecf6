"""How much language identity each encoder layer offers for free (issue 12).

A fused model routes its experts by a gate. The default gate
(``whisper_lid``) reads frozen Whisper's language identification: the
frozen encoder's output and one decoder step. When the experts adapt the
encoder from layer k, that output is a second pass over layers >= k. The
hidden states entering layer k are computed anyway (and cached by the
frozen-prefix cache): a gate reading them (``first_adapted``) costs
nothing. This benchmark measures what each choice of k offers.

For every encoder layer k (0 = after the convolutions, n = the encoder
output after its final norm) the hidden states are mean-pooled over the
frames that hold audio, and a linear probe (multinomial logistic
regression, standardised features, L2, L-BFGS) trained on the training
clips predicts the language of the test clips: an estimate of what a
trained gate can read there. Beside it, frozen Whisper's own LID (one
decoder step on the encoder output, restricted to the candidate languages:
what ``whisper_lid`` adds) on the same clips, once over the whole window
and once with the frozen pass over each batch's audio only (its longest
clip rounded up to ``--lid_bucket`` seconds: ``UtteranceGate``'s
``base_pass_bucket_s``), and the cost of each source for experts that
start at layer k.

Usage::

    python bench/lid_evidence.py --whisper ~/.cache/lora-experts/whisper-base \\
        --data bench/work/quality_small/seed1/multilingual_lora_aware/data

``--data`` is a recipe run's prepared data folder (``train.csv``,
``test.csv`` and, when present, ``fleurs_test.csv``). Writes
``<out>/lid_evidence.{json,md}``.

Authors
 * speechbrain-lora-experts developers 2026
"""

import argparse
import csv
import math
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from provenance import git_state, public_name, save_result  # noqa: E402
from quality import command_line  # noqa: E402

SPLITS = {"test": "in-domain test", "fleurs_test": "out-of-domain test"}


def parse_args(argv=None):
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--whisper", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--l2", type=float, default=1e-2)
    parser.add_argument(
        "--lid_bucket",
        type=float,
        default=2.0,
        help="bucket (s) of Whisper's LID over the audio only",
    )
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--name", default="lid_evidence")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def read_rows(path):
    """Rows of a prepared CSV (``wav``, ``lang``, ``duration``)."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@torch.no_grad()
def layer_features(whisper, wavs, durations, bucket_s):
    """``[n + 1, B, D]`` pooled hidden states entering each layer, the
    encoder output ``[B, T, D]`` and the encoder output over the audio
    only ``[B, T', D]`` (T': the longest clip rounded up to ``bucket_s``).

    Index k < n: the input of encoder layer k (k = 0: convolutions plus
    positions); index n: the encoder output (after the final norm).
    Frames past a clip's end are left out of the mean.
    """
    from speechbrain_lora_experts.gate import audio_frames
    from speechbrain_lora_experts.whisper import (
        encoder_front,
        run_encoder_layers,
    )

    encoder = whisper.model.encoder
    hidden = encoder_front(encoder, whisper._get_mel(wavs))
    positions = torch.arange(hidden.shape[1], device=hidden.device)
    # 50 encoder positions per second of audio.
    valid = torch.tensor(
        [min(hidden.shape[1], math.ceil(d * 50)) for d in durations]
    )
    mask = (positions[None, :] < valid[:, None]).to(hidden.dtype)

    def pooled(states):
        return (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)

    keep = audio_frames(hidden.shape[1], valid / hidden.shape[1], bucket_s)
    cut = encoder.layer_norm(
        run_encoder_layers(encoder.layers, hidden[:, :keep])
    )
    pools = []
    for layer in encoder.layers:
        pools.append(pooled(hidden))
        hidden = run_encoder_layers([layer], hidden)
    enc = encoder.layer_norm(hidden)
    pools.append(pooled(enc))
    return torch.stack(pools), enc, cut


def extract(whisper, rows, languages, batch_size, bucket_s):
    """Pooled features per layer, Whisper's LID over the whole window and
    over the audio only, and labels of ``rows``."""
    from speechbrain_lora_experts.data.audio import load_audio
    from speechbrain_lora_experts.decoding import detect_language

    feats, whisper_lid, cut_lid, labels = [], [], [], []
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        clips = [load_audio(row["wav"]) for row in batch]
        wavs = torch.nn.utils.rnn.pad_sequence(clips, batch_first=True)
        pools, enc, cut = layer_features(
            whisper, wavs, [len(c) / 16000 for c in clips], bucket_s
        )
        codes, _ = detect_language(whisper, enc, candidates=languages)
        whisper_lid += codes
        codes, _ = detect_language(whisper, cut, candidates=languages)
        cut_lid += codes
        feats.append(pools)
        labels += [languages.index(row["lang"]) for row in batch]
    return (
        torch.cat(feats, dim=1),
        whisper_lid,
        cut_lid,
        torch.tensor(labels),
    )


def fit_probe(x, y, n_classes, l2):
    """Multinomial logistic regression on standardised features.

    Example
    -------
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(40, 3, generator=g)
    >>> y = (x[:, 0] > 0).long()
    >>> predict = fit_probe(x, y, 2, 1e-3)
    >>> bool((predict(x) == y).float().mean() > 0.9)
    True
    """
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    weight = torch.zeros(x.shape[1], n_classes, requires_grad=True)
    bias = torch.zeros(n_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=200)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z @ weight + bias, y)
        loss = loss + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    weight, bias = weight.detach(), bias.detach()
    return lambda q: (((q - mean) / std) @ weight + bias).argmax(-1)


def wilson(correct, n, z=1.96):
    """95% Wilson interval of a proportion, in percent.

    Example
    -------
    >>> [round(v, 1) for v in wilson(95, 100)]
    [88.8, 97.8]
    """
    if n == 0:
        return [None, None]
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = (
        z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    )
    return [100 * (centre - half), 100 * (centre + half)]


def accuracy(predicted, labels):
    """``{accuracy, interval, n}`` in percent."""
    correct = int((predicted == labels).sum())
    n = len(labels)
    return dict(
        accuracy=100 * correct / n if n else None,
        interval=wilson(correct, n),
        n=n,
    )


def write_markdown(path, result):
    """The layers as a table."""
    n_layers = result["encoder_layers"]
    splits = list(result["whisper_lid"])
    lines = [
        "# Language identity per encoder layer",
        "",
        f"{result['whisper']}, {result['window']:g} s window, languages "
        f"{', '.join(result['languages'])}; probes trained on "
        f"{result['train_clips']} clips ({result['data']}). Accuracy in % "
        "[95% Wilson interval]. *layer k*: a linear probe on the mean of "
        "the hidden states entering encoder layer k (k = "
        f"{n_layers}: the encoder output); free for a gate when the "
        "experts start at layer k or above. *Whisper LID*: frozen "
        "Whisper's one-step language identification over these languages "
        "(what the default `whisper_lid` gate adds), which costs the "
        "frozen encoder from the first adapted layer on plus a decoder "
        "step.",
        "",
        "| evidence | "
        + " | ".join(SPLITS.get(s, s) for s in splits)
        + " | extra cost for experts from layer k |",
        "|---|" + "---|" * len(splits) + "---|",
    ]

    def cell(entry):
        low, high = entry["interval"]
        return f"{entry['accuracy']:.1f} [{low:.1f}, {high:.1f}]"

    for row in result["layers"]:
        k = row["layer"]
        name = f"layer {k}" if k < n_layers else f"layer {k} (output)"
        cost = (
            "none (k ≤ first adapted)"
            if k < n_layers
            else "none for decoder-only experts"
        )
        lines.append(
            f"| {name} | "
            + " | ".join(cell(row[s]) for s in splits)
            + f" | {cost} |"
        )
    lines.append(
        "| Whisper LID | "
        + " | ".join(cell(result["whisper_lid"][s]) for s in splits)
        + " | encoder layers ≥ k again + 1 decoder step |"
    )
    if "whisper_lid_audio" in result:
        lines.append(
            f"| Whisper LID over the audio ({result['lid_bucket']:g} s "
            "buckets) | "
            + " | ".join(cell(result["whisper_lid_audio"][s]) for s in splits)
            + " | the same over the batch's longest clip, rounded up |"
        )
    lines += [
        "",
        f"Command: `{result['command']}`; commit "
        f"{(result['git'].get('commit') or 'unknown')[:10]}.",
        "",
    ]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


def main(argv=None):
    """Extracts the features, fits one probe per layer, writes results."""
    from speechbrain_lora_experts.whisper import Whisper

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    whisper = Whisper(
        os.path.expanduser(args.whisper),
        os.path.join(HERE, "work", "hub"),
        encoder_window_s=args.window,
    )
    whisper.requires_grad_(False).eval()
    train = read_rows(os.path.join(args.data, "train.csv"))
    languages = sorted({row["lang"] for row in train})
    x_train, _, _, y_train = extract(
        whisper, train, languages, args.batch_size, args.lid_bucket
    )
    tests = {}
    for split in SPLITS:
        path = os.path.join(args.data, f"{split}.csv")
        if os.path.isfile(path):
            tests[split] = extract(
                whisper,
                read_rows(path),
                languages,
                args.batch_size,
                args.lid_bucket,
            )
    n_layers = len(whisper.model.encoder.layers)
    layers = []
    for k in range(n_layers + 1):
        predict = fit_probe(x_train[k], y_train, len(languages), args.l2)
        row = {"layer": k}
        for split, (x, _, _, y) in tests.items():
            row[split] = accuracy(predict(x[k]), y)
        layers.append(row)

    def lid_accuracy(position):
        """Accuracy of the LID codes at ``position`` of each split's tuple."""
        return {
            split: accuracy(
                torch.tensor([languages.index(c) for c in test[position]]),
                test[3],
            )
            for split, test in tests.items()
        }

    names = {
        os.path.abspath(os.path.expanduser(args.whisper)): public_name(
            args.whisper
        ),
        os.path.abspath(args.data): public_name(args.data),
        os.path.abspath(args.out): "<out>",
    }
    result = dict(
        benchmark="lid_evidence",
        command=command_line(args.argv, names, script="bench/lid_evidence.py"),
        whisper=public_name(args.whisper),
        data=public_name(args.data),
        git=git_state(),
        window=args.window,
        languages=languages,
        encoder_layers=n_layers,
        train_clips=len(train),
        layers=layers,
        whisper_lid=lid_accuracy(1),
        whisper_lid_audio=lid_accuracy(2),
        lid_bucket=args.lid_bucket,
    )
    print(open(save_result(args.out, args.name, result, write_markdown)).read())
    return result


if __name__ == "__main__":
    main()
