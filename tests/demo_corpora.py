"""The small demo corpora the recipe tests train on.

Authors
 * speechbrain-lora-experts developers 2026
"""


def tiny_corpus(
    root, languages, seed, per_split=(4, 2, 2), formats=("common_voice",)
):
    """``root/corpus``: a few synthesized clips per language, two speakers.

    Returns ``root``.
    """
    from speechbrain_lora_experts.data.demo import build_demo_corpus

    build_demo_corpus(
        root / "corpus",
        languages,
        per_split=per_split,
        seed=seed,
        formats=formats,
        speakers=2,
        progress=False,
    )
    return root
