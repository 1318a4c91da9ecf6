"""How the expert soup's update relates to its two ingredients (issue 9).

The expert soup (``expert_soup`` in ``bench/quality.py``) gives each
language the weight update ``(d_ml + d_lang) / 2``: the mean of the
multilingual LoRA's update and that language's expert's. This script reads
the two PEFT adapters of every language of a finished ``quality.py`` work
folder and reports, per language and over the adapted layers (Frobenius
norms, summed over layers):

* ``cos``: the cosine between ``d_ml`` and ``d_lang`` (1: the same
  direction, 0: unrelated);
* ``soup / ml`` and ``soup / expert``: the soup update's norm relative to
  each ingredient's: below 1, the soup sits closer to the frozen Whisper
  than that ingredient.

No audio is read and nothing is decoded.

Usage::

    python bench/soup_geometry.py --work bench/work/quality_small \\
        --seeds 1,2 [--out bench/results] [--name soup_geometry]

Authors
 * speechbrain-lora-experts developers 2026
"""

import argparse
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from provenance import git_state, save_result  # noqa: E402

# Where quality.py keeps the multilingual LoRA's adapter and the pool.
MULTILINGUAL = os.path.join(
    "multilingual_lora_aware", "model", "experts", "multilingual"
)
POOL = "pool"


def update_geometry(ml, expert):
    """Cosine and norm ratios of two adapters' updates over shared layers.

    Arguments
    ---------
    ml, expert : peft_io.Adapter
        The multilingual LoRA and one language's expert.

    Returns
    -------
    dict
        ``cos``, ``soup_over_ml``, ``soup_over_expert``, ``layers``.

    Example
    -------
    >>> import torch
    >>> from speechbrain_lora_experts.peft_io import Adapter
    >>> a = torch.eye(2)
    >>> one = Adapter("a", {"l": (a, a)}, {"l": 2}, {"l": 2})
    >>> other = Adapter("b", {"l": (a, -a)}, {"l": 2}, {"l": 2})
    >>> same = update_geometry(one, one)
    >>> round(same["cos"], 6), round(same["soup_over_ml"], 6)
    (1.0, 1.0)
    >>> opposite = update_geometry(one, other)
    >>> round(opposite["cos"], 6), opposite["soup_over_ml"]
    (-1.0, 0.0)
    """
    from speechbrain_lora_experts.shared_adapter import adapter_delta

    layers = sorted(set(ml.layer_names) & set(expert.layer_names))
    if not layers:
        raise ValueError(
            f"{ml.folder} and {expert.folder} adapt no layer in common"
        )
    dot = ml_sq = ex_sq = 0.0
    for name in layers:
        d_ml = adapter_delta(ml, name).double()
        d_ex = adapter_delta(expert, name).double()
        dot += float((d_ml * d_ex).sum())
        ml_sq += float((d_ml * d_ml).sum())
        ex_sq += float((d_ex * d_ex).sum())
    # ||(a + b) / 2||^2 = (||a||^2 + ||b||^2 + 2 a.b) / 4
    soup_sq = max(0.0, (ml_sq + ex_sq + 2 * dot) / 4)
    return dict(
        cos=dot / math.sqrt(ml_sq * ex_sq),
        soup_over_ml=math.sqrt(soup_sq / ml_sq),
        soup_over_expert=math.sqrt(soup_sq / ex_sq),
        layers=len(layers),
    )


def measure(work, seeds):
    """Every language's geometry in each seed folder of ``work``."""
    from speechbrain_lora_experts.peft_io import read_adapter

    rows = []
    for seed in seeds:
        folder = os.path.join(work, f"seed{seed}")
        ml = read_adapter(os.path.join(folder, MULTILINGUAL))
        pool = os.path.join(folder, POOL)
        for lang in sorted(os.listdir(pool)):
            expert = read_adapter(os.path.join(pool, lang))
            rows.append(
                dict(seed=seed, language=lang, **update_geometry(ml, expert))
            )
    if not rows:
        raise ValueError(f"no expert found under {work} for seeds {seeds}")
    return rows


def write_markdown(path, result):
    """The rows as a table, with the command and commit."""
    lines = [
        "# The expert soup's update against its ingredients",
        "",
        "Per language: cosine between the multilingual LoRA's weight update "
        "and the expert's, and the soup update's norm (their mean) over "
        "each one's (Frobenius, all adapted layers). Below 1: the soup is "
        "closer to the frozen Whisper than that ingredient.",
        "",
        "| seed | language | cos(ml, expert) | soup / ml | soup / expert |",
        "|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['seed']} | {row['language']} | {row['cos']:.3f} | "
            f"{row['soup_over_ml']:.3f} | {row['soup_over_expert']:.3f} |"
        )
    lines += [
        "",
        f"Command: `{result['command']}`; commit "
        f"{(result['git']['commit'] or 'unknown')[:10]}"
        + (" (uncommitted changes)" if result["git"]["modified"] else "")
        + f"; {result['rows'][0]['layers']} adapted layers.",
    ]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", required=True, help="quality.py --work")
    parser.add_argument("--seeds", default="1")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--name", default="soup_geometry")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    result = dict(
        benchmark="soup_geometry",
        command="python bench/soup_geometry.py --work '<work>' "
        f"--seeds {args.seeds}",
        git=git_state(),
        rows=measure(args.work, seeds),
    )
    return save_result(args.out, args.name, result, write_markdown)


if __name__ == "__main__":
    print(main())
