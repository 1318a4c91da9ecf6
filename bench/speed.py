"""Decoding, training and memory cost of the expert systems vs baselines.

One run measures, against baselines measured in the same run (interleaved
rounds, so machine load hits every system alike; medians reported), at each
encoder window of ``--window``:

* decoding, per utterance: log-mel, encoder and greedy decoding with the KV
  cache (``decoding.greedy_decode``). End-of-text is masked out so every
  system decodes exactly ``--new-tokens`` tokens. Systems: plain Whisper
  (the baseline); N experts fused by the default utterance gate
  (``UtteranceGate`` fed by ``GateTap``: dense softmax weights over the
  frozen encoder's output with Whisper's LID as a prior, the LID step from
  ``lid_step``), and at the largest N the same gate without the LID
  prior, its top-1 form and the free gate on the input of the first
  adapted layer; one expert merged
  into the weights (``WhisperLoRAExperts.merge``); one routed expert
  (unmerged, for reference). Each with the experts on encoder+decoder, on
  the encoder from layer k plus the decoder (``enck+dec``: the gate taps
  layer k), and on the decoder only (the gate reads the encoder output);
* training, per utterance: one ``Brain.fit_batch`` (forward, backward,
  optimiser step, as the recipes run it) of ``FullFinetuneBrain`` (the
  baseline), ``ExpertBrain`` (one LoRA) and ``DistillBrain`` (teachers
  routed per language under ``no_grad``, then the student LoRA), on a
  mixed-language batch, with the LoRA on encoder+decoder and on the decoder
  only (``--train-placements``); PEFT's LoRA on the same layers as a second
  baseline; each LoRA also with the frozen-prefix cache (``--prefix-cache``)
  and with windows cut to the batch (``--cut-bucket``: the batch's window
  is its longest clip rounded up to the bucket instead of the whole
  window);
* memory, in one subprocess per phase and window (systems one after the
  other): the tensors a system keeps beyond the base model after a warm
  step (adapters, gate, optimiser state, merge records, anything cached:
  every tensor storage reachable from it, ``memory.reachable_storages``),
  counted, plus the growth of the peak RSS (and of
  ``torch.cuda.max_memory_allocated`` on a GPU) during one warm decode or
  training step: what a decode builds and drops (folded weights) counts
  there.

Experts are LoRA r=16 on q/v/fc1/fc2 with random (non-zero) weights, the
gate is untrained: timing does not depend on the values. By default the
model has whisper-base's shape with random weights; ``--whisper DIR`` loads
a real checkpoint and ``--corpus DIR`` (a Common Voice release) supplies
real clips and transcripts instead of random 4-8 s audio.

On CPU the default is one torch thread: on a 2-core machine shared with
other jobs, two threads made greedy decoding of whisper-base ~9x slower
(13.8 s instead of 1.6 s per utterance) through OpenMP waits, far more than
any difference between systems.

Usage:
    python bench/speed.py --whisper ~/.cache/lora-experts/whisper-base \
        [--window 30,10] [--repeats 3] [--device cpu] [--out bench/results]

A focused decode run in its own file (``bench/results/speed_dec.md``)::

    python bench/speed.py --whisper ~/.cache/lora-experts/whisper-base \
        --phases decode --memory off --placements dec --repeats 9 \
        --name speed_dec

Authors
 * speechbrain-lora-experts developers 2026
"""

import argparse
import concurrent.futures
import contextlib
import copy
import csv
import functools
import gc
import itertools
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # the benchmark's helper modules

from provenance import git_state, public_name  # noqa: E402

SAMPLE_RATE = 16000
LANGUAGES = ("de", "es", "it", "ru", "fr", "zh")
TARGETS = ("q_proj", "v_proj", "fc1", "fc2")
EXPERT_LANGUAGES = ("de", "es", "fr", "it", "ru", "pt", "nl", "pl")
FUSED_GOAL = 1.10
# The recipes' and the interface's default gate (fuse.yaml: dense,
# gate_features: whisper_lid, gate_base_pass_bucket_s: 2.0).
DEFAULT_GATE_LABEL = "dense gate with Whisper LID over the audio"
# The same gate with its frozen pass over the whole window (the default
# before base_pass_bucket_s; models exported without it).
WINDOW_GATE_LABEL = "dense gate with Whisper LID"
LORA_GOAL = 1 / 3
DISTILL_GOAL = 1.6


def parse_args(argv=None):
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--whisper",
        default=None,
        help="Whisper folder (default: whisper-base shape, random weights)",
    )
    parser.add_argument("--window", default="30,10", help="encoder windows, s")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument(
        "--name",
        default="speed",
        help="results file name: <out>/<name>.json and .md (a run compares "
        "with, and replaces, the file of its own name)",
    )
    parser.add_argument(
        "--corpus",
        default=None,
        help="Common Voice release for real clips (default: random audio)",
    )
    parser.add_argument("--experts", default="2,4,6,8", help="fused N")
    parser.add_argument(
        "--placements",
        default="enc+dec,enc2+dec,dec",
        help="where the experts sit: enc+dec, enc<k>+dec, dec",
    )
    parser.add_argument(
        "--train-placements",
        default="enc+dec,enc4+dec,dec",
        help="placements of the trained LoRA",
    )
    parser.add_argument(
        "--prefix-cache",
        choices=("on", "off"),
        default="on",
        help="also train with the frozen-prefix cache where the LoRA "
        "leaves encoder layers frozen (steady state: entries on disk)",
    )
    parser.add_argument(
        "--cut-bucket",
        type=float,
        default=2.0,
        help="also train the LoRAs with windows cut to the batch, this "
        "bucket (s); 0: not",
    )
    parser.add_argument(
        "--top1",
        choices=("max", "all"),
        default="max",
        help="top-1 gate at the largest N only (its cost does not grow "
        "with N at batch 1) or at every N",
    )
    parser.add_argument(
        "--gate-bucket",
        type=float,
        default=2.0,
        help="base_pass_bucket_s of the default gate (fuse.yaml's)",
    )
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument(
        "--lora-dropout",
        type=float,
        default=0.05,
        help="dropout of the trained LoRA (the recipes' 0.05)",
    )
    parser.add_argument(
        "--decode-pairing",
        choices=("adjacent", "rounds"),
        default="adjacent",
        help="decode ratios: each run against the baseline runs just "
        "before and after it (adjacent), or ratio of the rounds' medians",
    )
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--decode-batch", type=int, default=1)
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--target-tokens", type=int, default=20)
    parser.add_argument(
        "--phases", default="decode,train", help="decode and/or train"
    )
    parser.add_argument(
        "--memory",
        choices=("key", "all", "off"),
        default="key",
        help="which systems get a memory probe",
    )
    parser.add_argument(
        "--memory-jobs", type=int, default=0, help="parallel probes (0: auto)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (0: 1 on CPU, robust to other load; torch's "
        "default on GPU)",
    )
    parser.add_argument("--precision", default="fp32", help="training")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.03,
        help="merged counts as 1.00x up to this excess",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--render",
        action="store_true",
        help="rewrite <out>/<name>.md from <out>/<name>.json; measure nothing",
    )
    parser.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cache-folder", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.windows = [float(w) for w in args.window.split(",") if w.strip()]
    args.expert_counts = [int(n) for n in args.experts.split(",") if n]
    args.placement_names = [p for p in args.placements.split(",") if p]
    args.train_placement_names = [
        p for p in args.train_placements.split(",") if p
    ]
    args.phase_names = [p for p in args.phases.split(",") if p]
    if not args.threads:
        cuda = torch.device(args.device).type == "cuda"
        args.threads = torch.get_num_threads() if cuda else 1
    return args


# Model ---------------------------------------------------------------------
def base_shaped_folder(folder):
    """A random Whisper with whisper-base's shape, in hub layout."""
    from speechbrain_lora_experts.testing.tiny_whisper import make_tiny_whisper

    return make_tiny_whisper(
        folder, d_model=512, layers=6, heads=8, ffn_dim=2048
    )


def load_whisper(folder, window, device):
    """SpeechBrain's Whisper (ours) with the given encoder window."""
    from speechbrain_lora_experts.whisper import Whisper

    with tempfile.TemporaryDirectory(prefix="speed_hub_") as save:
        whisper = Whisper(folder, save, encoder_window_s=window)
    return whisper.to(device)


def share_clone(whisper):
    """A new module tree over the same parameter and buffer tensors.

    Every system gets its own modules (hooks, LoRA layers, routing) without
    another copy of the frozen weights.
    """
    memo = {}
    for tensor in itertools.chain(whisper.parameters(), whisper.buffers()):
        memo[id(tensor)] = tensor
    return full_copy(whisper, memo)


def full_copy(whisper, memo=None):
    """A deep copy that shares only the tokenizer and feature extractor."""
    memo = {} if memo is None else memo
    for name in ("tokenizer", "feature_extractor"):
        obj = getattr(whisper, name, None)
        if obj is not None:
            memo[id(obj)] = obj
    return copy.deepcopy(whisper, memo)


def placement(name, n_encoder_layers):
    """``WhisperLoRAExperts`` arguments of a placement name."""
    if name == "enc+dec":
        return dict(parts=("encoder", "decoder"), layers=None)
    if name == "dec":
        return dict(parts=("decoder",), layers=None)
    match = re.fullmatch(r"enc(\d+)\+dec", name)
    if match is None:
        raise ValueError(f"unknown placement {name!r}: enc+dec, enc2+dec, dec")
    first = int(match[1])
    if not 0 <= first < n_encoder_layers:
        raise ValueError(
            f"placement {name!r}: the encoder has {n_encoder_layers} layers"
        )
    last = n_encoder_layers - 1
    return dict(
        parts=("encoder", "decoder"),
        layers={"encoder": f"{first}-{last}", "decoder": None},
    )


def attach(whisper, names, args, place, dropout=0.0, seed=0):
    """A pool of LoRA experts with random non-zero weights."""
    from speechbrain_lora_experts.attach import WhisperLoRAExperts

    n_encoder_layers = whisper.model.config.encoder_layers
    pool = WhisperLoRAExperts(
        whisper,
        expert_names=names,
        rank=args.rank,
        alpha=2 * args.rank,
        dropout=dropout,
        targets=TARGETS,
        **placement(place, n_encoder_layers),
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in pool.layers.values():
            for expert in layer.experts:
                noise = torch.randn(expert.lora_B.shape, generator=generator)
                expert.lora_B.copy_(0.01 * noise)
    return pool


# Inputs --------------------------------------------------------------------
def corpus_clips(root, count):
    """Up to ``count`` clips per language of a Common Voice release."""
    from speechbrain_lora_experts.data.audio import load_audio
    from speechbrain_lora_experts.languages import canonical_language

    clips = {}
    for locale in sorted(os.listdir(root)):
        tsv = os.path.join(root, locale, "train.tsv")
        if not os.path.isfile(tsv):
            continue
        with open(tsv, encoding="utf-8", newline="") as f:
            rows = list(
                csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            )
        lang = canonical_language(locale)
        for row in rows[:count]:
            wav = load_audio(os.path.join(root, locale, "clips", row["path"]))
            clips.setdefault(lang, []).append((wav, row["sentence"]))
    if not clips:
        raise ValueError(f"no <locale>/train.tsv under {root}")
    return clips


def make_utterances(args, count, tokenizer):
    """``count`` utterances cycling over the languages.

    Each is a dict with ``wav`` (at most the shortest window), ``lang`` and
    exactly ``--target-tokens`` text tokens.
    """
    from speechbrain_lora_experts.data.pipeline import text_tokens

    window = int(min(args.windows) * SAMPLE_RATE)
    generator = torch.Generator().manual_seed(args.seed)
    clips = corpus_clips(args.corpus, count) if args.corpus else None
    languages = list(clips) if clips else list(LANGUAGES)
    utterances = []
    for i in range(count):
        lang = languages[i % len(languages)]
        if clips:
            wav, sentence = clips[lang][
                (i // len(languages)) % len(clips[lang])
            ]
            text = text_tokens(tokenizer, sentence, lang)
        else:
            seconds = 4 + 4 * torch.rand((), generator=generator).item()
            wav = 0.1 * torch.randn(
                int(seconds * SAMPLE_RATE), generator=generator
            )
            text = torch.randint(
                0, 50000, (args.target_tokens,), generator=generator
            ).tolist()
        # Same number of tokens for every system and window.
        text = (text * args.target_tokens)[: args.target_tokens]
        utterances.append(dict(wav=wav[:window], lang=lang, text=text))
    return utterances


def training_batch(utterances, whisper, teachers):
    """A SpeechBrain ``PaddedBatch`` as the recipes' pipeline makes it."""
    from speechbrain.dataio.batch import PaddedBatch
    from speechbrain_lora_experts.data.pipeline import prompt_ids

    eot = whisper.eos
    examples = []
    for i, utt in enumerate(utterances):
        prompt = prompt_ids(whisper.tokenizer, utt["lang"])
        examples.append(
            dict(
                id=f"utt{i}",
                sig=utt["wav"],
                lang=utt["lang"],
                lang_id=teachers.index(utt["lang"]),
                wrd="",
                duration=len(utt["wav"]) / SAMPLE_RATE,
                tokens_bos=torch.LongTensor(prompt + utt["text"]),
                tokens_eos=torch.LongTensor(prompt[1:] + utt["text"] + [eot]),
            )
        )
    return PaddedBatch(examples)


def decoding_inputs(utterances, whisper, device):
    """Padded audio ``[B, L]``, gate valid fractions ``[B]`` and prompts."""
    from speechbrain_lora_experts.decoding import prompt_tokens

    length = max(len(u["wav"]) for u in utterances)
    wav = torch.zeros(len(utterances), length)
    for row, utt in zip(wav, utterances):
        row[: len(utt["wav"])] = utt["wav"]
    valid = whisper.window_share(
        torch.tensor([len(u["wav"]) for u in utterances]), length
    )
    prompts = prompt_tokens(whisper, [u["lang"] for u in utterances])
    return wav.to(device), valid.to(device), prompts.to(device)


# Systems -------------------------------------------------------------------
def decode_specs(args):
    """Decoding systems in measuring order; the first is the baseline.

    Per placement: N experts fused by the default gate (dense, Whisper's
    LID as a prior, its frozen pass over the batch's audio only) at every
    N, and, when experts adapt the encoder (else nothing differs), the
    same gate with its frozen pass over the whole window; at the largest N
    the gate without the LID prior (frozen encoder output only: what the
    LID step costs), its top-1 form, and, when experts adapt the encoder,
    the free gate on the first adapted layer's input; one expert routed
    and merged.
    """
    specs = [dict(kind="plain", name="plain Whisper")]
    top = max(args.expert_counts)

    def fused(place, n, features, top_k, label, bucket=None):
        return dict(
            kind="fused",
            place=place,
            n=n,
            top_k=top_k,
            features=features,
            bucket=bucket,
            name=f"fused {n}, {label} [{place}]",
        )

    for place in args.placement_names:
        for n in args.expert_counts:
            specs.append(
                fused(
                    place,
                    n,
                    "whisper_lid",
                    None,
                    DEFAULT_GATE_LABEL,
                    args.gate_bucket,
                )
            )
        for n in args.expert_counts if place != "dec" else ():
            specs.append(
                fused(place, n, "whisper_lid", None, WINDOW_GATE_LABEL)
            )
        for n in args.expert_counts:
            if n == top or args.top1 == "all":
                specs.append(fused(place, n, "base_encoder", 1, "top-1 gate"))
        specs.append(fused(place, top, "base_encoder", None, "dense gate"))
        if place != "dec":
            # With decoder-only experts the layer input is the encoder
            # output: the dense gate's row already.
            specs.append(
                fused(
                    place,
                    top,
                    "first_adapted",
                    None,
                    "dense gate on layer input",
                )
            )
        for kind in ("routed", "merged"):
            specs.append(
                dict(
                    kind=kind,
                    place=place,
                    n=top,
                    name=f"{kind} 1 of {top} [{place}]",
                )
            )
    return specs


def train_specs(args, teachers):
    """Training systems in measuring order; the first is the baseline."""
    specs = [dict(kind="full", name="full finetune")]
    for place in args.train_placement_names:
        caching = [False]
        if args.prefix_cache == "on" and place != "enc+dec":
            caching.append(True)  # enc+dec adapts layer 0: nothing to cache
        for cache in caching:
            tag = ", cached prefix" if cache else ""
            for cut in (False, True) if args.cut_bucket else (False,):
                cut_tag = ", cut windows" if cut else ""
                for kind, label in (
                    ("peft", "PEFT LoRA"),
                    ("lora", "expert LoRA"),
                ):
                    specs.append(
                        dict(
                            kind=kind,
                            place=place,
                            cache=cache,
                            cut=cut,
                            name=f"{label} [{place}]{tag}{cut_tag}",
                        )
                    )
            specs.append(
                dict(
                    kind="distill",
                    place=place,
                    cache=cache,
                    n=len(teachers),
                    name=f"distill, {len(teachers)} teachers [{place}]{tag}",
                )
            )
    return specs


def is_key(spec, args):
    """Systems probed for memory under ``--memory key``."""
    kind = spec["kind"]
    if kind in ("plain", "full", "peft", "lora", "distill"):
        return True
    if kind == "fused":
        return spec["n"] == max(args.expert_counts)
    return spec["place"] == args.placement_names[0]


def force_length(whisper):
    """Masks end-of-text so greedy decoding runs all its steps."""
    original = whisper.forward_decoder
    eos = whisper.eos

    def forward_decoder(*args, **kwargs):
        logits, attn, cache = original(*args, **kwargs)
        logits[..., eos] = -math.inf
        return logits, attn, cache

    whisper.forward_decoder = forward_decoder


class DecodeSystem:
    """A Whisper set up as one decoding system.

    Arguments
    ---------
    spec : dict
        From ``decode_specs``.
    whisper : Whisper
        Its own module tree (modified in place).
    args : argparse.Namespace
        Benchmark settings.

    Merging works on private copies of the adapted weights (the module tree
    may share its tensors with other systems); ``replaced`` holds them.
    """

    def __init__(self, spec, whisper, args):
        from speechbrain_lora_experts.gate import GateTap, UtteranceGate

        self.spec = spec
        self.whisper = whisper.eval()
        self.tap = None
        self.pool = None
        self.mode = None
        self.replaced = []
        kind = spec["kind"]
        if kind != "plain":
            # Language names, so a gate with Whisper's LID prior can run.
            names = list(EXPERT_LANGUAGES[: spec["n"]])
            self.pool = attach(whisper, names, args, spec["place"])
        if kind == "fused":
            gate = UtteranceGate.for_whisper(
                whisper,
                spec["n"],
                top_k=spec["top_k"],
                features=spec["features"],
                base_pass_bucket_s=spec.get("bucket"),
            )
            gate.to(args.device).eval()
            self.tap = GateTap(whisper, self.pool, gate)
        elif kind == "merged":
            for layer in self.pool.layers.values():
                private = layer.base.weight.detach().clone()
                layer.base.weight = torch.nn.Parameter(private, False)
                self.replaced.append(private)
            self.pool.merge(0)
        force_length(whisper)

    def run(self, wav, valid, prompts, new_tokens):
        """Encoder + greedy decoding; returns the token lists."""
        from speechbrain_lora_experts.decoding import greedy_decode

        kind = self.spec["kind"]
        # As the pretrained interface decodes: routing scoped to the call.
        scope = (
            self.pool.scope()
            if kind in ("fused", "routed")
            else contextlib.nullcontext()
        )
        with torch.no_grad(), scope:
            mel = self.whisper._get_mel(wav)
            if kind == "fused":
                self.tap.prepare(valid_fraction=valid)
            elif kind == "routed":
                index = torch.arange(wav.shape[0]) % self.pool.n_experts
                self.pool.route(index)
            enc = self.whisper.forward_encoder(mel)
            tokens = greedy_decode(self.whisper, enc, prompts, new_tokens)
            if self.pool is not None:
                self.mode = self.pool.routing.mode
        synchronize(wav.device)
        return tokens

    def check(self, tokens, new_tokens):
        """The system ran as intended (all steps, experts active)."""
        if any(len(t) != new_tokens for t in tokens):
            raise RuntimeError(f"{self.spec['name']}: not {new_tokens} tokens")
        kind = self.spec["kind"]
        if kind == "fused":
            active = int((self.tap.weights[0] > 0).sum())
            wanted = self.spec["top_k"] or self.spec["n"]
            if self.mode != "mix" or active != wanted:
                raise RuntimeError(f"{self.spec['name']}: gate did not mix")
        if kind == "routed" and self.mode != "route":
            raise RuntimeError(f"{self.spec['name']}: not routed")
        if kind == "merged" and not self.pool.merged:
            raise RuntimeError(f"{self.spec['name']}: not merged")


def build_trainer(spec, whisper, args, teachers):
    """A recipe Brain training ``whisper`` as system ``spec``."""
    from speechbrain_lora_experts.recipe_runner import load_recipe_script

    recipe = load_recipe_script()  # the Brains live in the recipe script
    DistillBrain = recipe.DistillBrain
    ExpertBrain = recipe.ExpertBrain
    FullFinetuneBrain = recipe.FullFinetuneBrain

    hparams = dict(
        whisper=whisper,
        experts=None,
        languages=list(teachers),
        language_aware=True,
        label_smoothing=0.0,
    )
    kind = spec["kind"]
    if kind == "full":
        whisper.requires_grad_(True)
        brain_class, lr = FullFinetuneBrain, 1e-5
    elif kind == "peft":
        # PEFT's own LoRA layers on the same linear layers, same shape.
        from peft import LoraConfig, inject_adapter_in_model

        from speechbrain_lora_experts.attach import select_targets

        names = select_targets(
            whisper.model,
            TARGETS,
            **placement(spec["place"], whisper.model.config.encoder_layers),
        )
        whisper.requires_grad_(False)
        config = LoraConfig(
            r=args.rank,
            lora_alpha=2 * args.rank,
            lora_dropout=args.lora_dropout,
            target_modules=names,
        )
        inject_adapter_in_model(config, whisper.model)
        brain_class, lr = recipe.WhisperExpertsBrain, 1e-3
    elif kind == "lora":
        hparams["experts"] = attach(
            whisper, [teachers[0]], args, spec["place"], args.lora_dropout
        )
        brain_class, lr = ExpertBrain, 1e-3
    elif kind == "distill":
        pool = attach(
            whisper,
            list(teachers) + ["student"],
            args,
            spec["place"],
            args.lora_dropout,
        )
        pool.set_trainable(["student"])
        hparams.update(
            experts=pool, distill_weight=0.5, distill_temperature=2.0
        )
        brain_class, lr = DistillBrain, 1e-3
    else:
        raise ValueError(f"unknown training system {kind!r}")
    if spec.get("cut"):
        whisper.set_window_bucket(args.cut_bucket)
    if spec.get("cache"):
        hparams.update(
            prefix_cache=True,
            prefix_cache_folder=args.cache_folder,
            prefix_cache_dtype="float16",
        )
    brain = brain_class(
        modules={"whisper": whisper},
        opt_class=functools.partial(
            torch.optim.AdamW, lr=lr, weight_decay=0.01
        ),
        hparams=hparams,
        run_opts=dict(device=args.device, precision=args.precision),
    )
    brain.init_optimizers()
    brain.modules.train()
    return brain


def synchronize(device):
    """Waits for queued GPU work (timing)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


# Timing --------------------------------------------------------------------
def timed_rounds(systems, run, repeats, log, warm_up=True, baseline=None):
    """Warm-up, then ``repeats`` interleaved rounds (rotated order).

    With ``baseline`` (one of ``systems``), each round runs the baseline
    before every other system and once more at its end, and pairs each run
    of a system with the mean of the two baseline runs around it: a drift
    of the machine's speed (other tenants, clock) over a round that lasts
    minutes then hits both sides of a ratio alike.

    Returns
    -------
    times : dict
        name -> list of seconds.
    pairs : dict
        name -> list of paired ratios (empty without ``baseline``).
    """
    times = {name: [] for name in systems}
    pairs = {name: [] for name in systems}
    if warm_up:
        for system in systems.values():
            run(system)

    def timed(name):
        start = time.perf_counter()
        run(systems[name])
        seconds = time.perf_counter() - start
        times[name].append(seconds)
        return seconds

    names = [name for name in systems if name != baseline]
    for round_index in range(repeats):
        start_at = round_index % len(names)
        order = names[start_at:] + names[:start_at]
        if baseline is None:
            for name in order:
                timed(name)
        else:
            before = timed(baseline)
            for name in order:
                seconds = timed(name)
                after = timed(baseline)
                pairs[name].append(2 * seconds / (before + after))
                before = after
        log(f"  round {round_index + 1}/{repeats} done")
    return times, pairs


def measure_decoding(args, folder, window, utterances, log):
    """Decode timing rows of one window."""
    base = load_whisper(folder, window, args.device)
    batch = utterances[: args.decode_batch]
    wav, valid, prompts = decoding_inputs(batch, base, args.device)
    systems = {}
    for spec in decode_specs(args):
        systems[spec["name"]] = DecodeSystem(spec, share_clone(base), args)
    for system in systems.values():  # the warm-up
        system.check(
            system.run(wav, valid, prompts, args.new_tokens), args.new_tokens
        )
    log(f"decode, {window:g} s window: {len(systems)} systems")
    paired = args.decode_pairing == "adjacent"
    times, pairs = timed_rounds(
        systems,
        lambda s: s.run(wav, valid, prompts, args.new_tokens),
        args.repeats,
        log,
        warm_up=False,
        baseline="plain Whisper" if paired else None,
    )
    rows = []
    for spec in decode_specs(args):
        row = timing_row(spec, times, args.decode_batch)
        row.update(decode_goal(spec, args))
        rows.append(row)
    add_ratios(rows, "plain Whisper", pairs if paired else None)
    del systems, base
    gc.collect()
    return rows


def measure_training(args, folder, window, utterances, teachers, log):
    """Training-step timing rows of one window."""
    base = load_whisper(folder, window, args.device)
    batch = training_batch(utterances[: args.train_batch], base, teachers)
    specs = train_specs(args, teachers)
    systems = {}
    for spec in specs:
        clone = full_copy(base) if spec["kind"] == "full" else share_clone(base)
        systems[spec["name"]] = build_trainer(spec, clone, args, teachers)
    log(f"train, {window:g} s window: {len(systems)} systems")
    times, _ = timed_rounds(
        systems, lambda brain: brain.fit_batch(batch), args.repeats, log
    )
    rows = []
    for spec in specs:
        row = timing_row(spec, times, args.train_batch)
        row.update(train_goal(spec))
        rows.append(row)
    add_ratios(rows, "full finetune")
    by_name = {row["system"]: row for row in rows}
    for row in rows:
        row["ratio_vs_full_finetune"] = row["ratio"]
        if row["kind"] == "distill":
            tag = ", cached prefix" if row["cache"] else ""
            lora = by_name[f"expert LoRA [{row['place']}]{tag}"]
            row["baseline"] = lora["system"]
            row["ratio"] = row["seconds"] / lora["seconds"]
        if row["kind"] == "lora":
            tag = ", cached prefix" if row["cache"] else ""
            tag += ", cut windows" if row["cut"] else ""
            peft = by_name.get(f"PEFT LoRA [{row['place']}]{tag}")
            if peft is not None:
                row["ratio_vs_peft"] = row["seconds"] / peft["seconds"]
    for row in rows:
        row["met"] = goal_met(row)
    del systems, base
    gc.collect()
    return rows


def timing_row(spec, times, batch):
    """Median seconds per utterance of one system."""
    per_utt = [t / batch for t in times[spec["name"]]]
    return dict(
        system=spec["name"],
        kind=spec["kind"],
        place=spec.get("place"),
        cache=bool(spec.get("cache")),
        cut=bool(spec.get("cut")),
        n_experts=spec.get("n"),
        seconds=statistics.median(per_utt),
        all_seconds=per_utt,
    )


def add_ratios(rows, baseline, pairs=None):
    """Ratio against the baseline row.

    The ratio of the medians; with ``pairs`` (``timed_rounds``'s paired
    ratios), the median of a system's paired ratios instead, and the
    ratio of medians kept as ``ratio_of_medians``.
    """
    base = next(row for row in rows if row["system"] == baseline)
    for row in rows:
        row["baseline"] = baseline
        row["ratio"] = row["seconds"] / base["seconds"]
        if pairs is not None:
            row["ratio_of_medians"] = row["ratio"]
            row["paired_ratios"] = pairs.get(row["system"], [])
            if row["paired_ratios"]:
                row["ratio"] = statistics.median(row["paired_ratios"])
        row["met"] = goal_met(row)


def decode_goal(spec, args):
    """Goal of a decoding system."""
    if spec["kind"] == "fused":
        return dict(goal=f"<= {FUSED_GOAL:.2f}", goal_max=FUSED_GOAL)
    if spec["kind"] == "merged":
        return dict(goal="= 1.00", goal_max=1.0 + args.tolerance)
    return dict(goal=None, goal_max=None)


def train_goal(spec):
    """Goal of a training system."""
    if spec["kind"] == "lora":
        return dict(goal="<= 1/3", goal_max=LORA_GOAL)
    if spec["kind"] == "distill":
        return dict(goal=f"<= {DISTILL_GOAL:.2f}", goal_max=DISTILL_GOAL)
    return dict(goal=None, goal_max=None)


def goal_met(row):
    """Whether the ratio meets the goal (None without one)."""
    if row.get("goal_max") is None:
        return None
    return bool(row["ratio"] <= row["goal_max"])


# Memory --------------------------------------------------------------------
def current_rss():
    """Resident set size in bytes (Linux), else the peak so far."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return peak_rss()


def peak_rss():
    """Peak resident set size in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def reset_peak_rss():
    """Resets the kernel's peak RSS to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_since_reset():
    """``VmHWM`` (Linux, resettable), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return peak_rss()


def storage_key(tensor):
    """Identity of a tensor's storage (as ``memory.reachable_storages``)."""
    storage = tensor.untyped_storage()
    return (storage.device, storage.data_ptr())


def system_state_bytes(
    whisper, base_storages, gate=None, optimizer=None, pool=None
):
    """Bytes a system keeps beyond the base model's own tensors.

    Adapters, gate, optimiser state, merge records, and anything else a
    system holds on to (caches, weight copies): every tensor storage
    reachable from the system (``memory.reachable_storages``) that is not
    one of the base model's. ``pool`` reaches the expert layers a merge
    swapped out of the module tree.
    """
    from memory import reachable_storages

    roots = [r for r in (whisper, gate, optimizer, pool) if r is not None]
    storages = reachable_storages(*roots)
    return sum(
        size for key, size in storages.items() if key not in base_storages
    )


def run_probe(args):
    """Memory of several systems of one phase and window (own process).

    The base model is loaded once. Each system gets its own module tree
    over the base tensors, is built and runs a warm-up step (code paths,
    caches, optimiser state; two utterances when training). What it keeps
    beyond the base model is counted tensor by tensor (``state``); the next
    step is measured as the growth of the peak RSS over the RSS before it
    (``step``: activations, gradients, temporaries), and of the CUDA
    allocator's peak on a GPU. The RSS only means this when freed large
    buffers go back to the system: ``measure_memory`` fixes glibc's mmap
    threshold for these processes.

    Returns
    -------
    list of dict
        One per system, in the order given.
    """
    probe = json.loads(args.probe)
    window, phase, teachers = probe["window"], probe["phase"], probe["teachers"]
    torch.manual_seed(args.seed)
    base = load_whisper(probe["folder"], window, args.device)
    base_storages = {
        storage_key(t)
        for t in itertools.chain(base.parameters(), base.buffers())
    }
    utterances = make_utterances(args, probe["count"], base.tokenizer)
    if phase == "decode":
        inputs = decoding_inputs(
            utterances[: args.decode_batch], base, args.device
        )
    else:
        batch = training_batch(utterances[: args.train_batch], base, teachers)
        warm = training_batch(utterances[:2], base, teachers)
    results = []
    for spec in probe["specs"]:
        gate = optimizer = None
        if phase == "decode":
            whisper = share_clone(base)
            system = DecodeSystem(spec, whisper, args)
            if system.tap is not None:
                gate = system.tap.gate
            replaced = system.replaced

            def step(system=system):
                tokens = system.run(*inputs, args.new_tokens)
                system.check(tokens, args.new_tokens)

            step()  # warm-up
        else:
            full = spec["kind"] == "full"
            whisper = full_copy(base) if full else share_clone(base)
            # A full finetune's own weights stand in for the base model's.
            replaced = list(whisper.parameters()) if full else []
            system = build_trainer(spec, whisper, args, teachers)
            optimizer = system.optimizer

            def step(brain=system):
                brain.fit_batch(batch)

            system.fit_batch(warm)
        gc.collect()
        known = base_storages | {storage_key(t) for t in replaced}
        state = system_state_bytes(
            whisper, known, gate, optimizer, getattr(system, "pool", None)
        )
        results.append(measure_step(step, state, args.device))
        del system, whisper, step, replaced, gate, optimizer
        gc.collect()
    return results


def measure_step(step, state, device):
    """Peak growth over one call of ``step`` (RSS, and CUDA on a GPU)."""
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        alloc0 = torch.cuda.memory_allocated()
    reset_peak_rss()
    rss0 = current_rss()
    step()
    mb = 2**20
    result = dict(
        state_mb=state / mb,
        step_mb=(peak_rss_since_reset() - rss0) / mb,
        process_peak_rss_mb=peak_rss() / mb,
    )
    result["total_mb"] = result["state_mb"] + result["step_mb"]
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - alloc0
        result["cuda_step_mb"] = peak / mb
        result["cuda_total_mb"] = result["state_mb"] + result["cuda_step_mb"]
    return result


def probe_command(args, phase, window, specs, folder, count, teachers):
    """Command line of one memory probe process."""
    probe = dict(
        phase=phase,
        window=window,
        specs=specs,
        folder=folder,
        count=count,
        teachers=teachers,
    )
    return [
        sys.executable,
        os.path.abspath(__file__),
        *args.argv,
        f"--threads={args.threads}",
        "--probe",
        json.dumps(probe),
    ]


def measure_memory(args, folder, count, teachers, log):
    """Memory rows per phase and window: one probe process for each."""
    jobs = args.memory_jobs
    if jobs <= 0:
        cuda = torch.device(args.device).type == "cuda"
        cpus = os.cpu_count() or 1
        jobs = 1 if cuda else max(1, min(2, cpus // args.threads))
    tasks = []
    for phase in args.phase_names:
        if phase == "decode":
            specs = decode_specs(args)
        else:
            specs = train_specs(args, teachers)
        if args.memory == "key":
            specs = [spec for spec in specs if is_key(spec, args)]
        for window in args.windows:
            command = probe_command(
                args, phase, window, specs, folder, count, teachers
            )
            tasks.append((phase, window, specs, command))
    # Longest first (training at the widest window), for the job pool.
    order = sorted(
        range(len(tasks)),
        key=lambda i: (tasks[i][0] != "train", -tasks[i][1]),
    )
    log(f"memory: {len(tasks)} probe processes, {jobs} at a time")
    # Freed buffers above 128 KiB go back to the system at once (glibc's
    # threshold otherwise adapts and keeps them in the heap).
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")

    def run(index):
        phase, window, _, command = tasks[index]
        out = subprocess.run(
            command, capture_output=True, text=True, check=False, env=env
        )
        lines = [
            line[len("PROBE ") :]
            for line in out.stdout.splitlines()
            if line.startswith("PROBE ")
        ]
        if out.returncode or not lines:
            raise RuntimeError(
                f"memory probe ({phase}, {window:g} s) failed:\n"
                f"{out.stderr[-3000:]}"
            )
        log(f"  memory of {phase} at {window:g} s done")
        return index, json.loads(lines[-1])

    with concurrent.futures.ThreadPoolExecutor(jobs) as executor:
        results = dict(executor.map(run, order))
    memory = {}
    for index, (phase, window, specs, _) in enumerate(tasks):
        rows = [
            dict(system=spec["name"], kind=spec["kind"], **result)
            for spec, result in zip(specs, results[index])
        ]
        base = rows[0]
        for row in rows:
            row["baseline"] = base["system"]
            row["ratio"] = ratio_or_none(row["total_mb"], base["total_mb"])
            if "cuda_total_mb" in row:
                row["cuda_ratio"] = ratio_or_none(
                    row["cuda_total_mb"], base["cuda_total_mb"]
                )
        memory.setdefault(phase, {})[window_key(window)] = rows
    return memory


def ratio_or_none(value, base):
    """``value / base`` where the base is measurable."""
    return value / base if base > 0 else None


# Report --------------------------------------------------------------------
def window_key(window):
    """JSON key of a window (``30``, ``10``, ``2.5``)."""
    return f"{window:g}"


def compare_with_previous(result, previous, args):
    """Adds the previous results file's numbers to this run's.

    Rows measured again get the previous ratio (``previous_ratio``) and,
    for memory, the previous total (``previous_total_mb``); phases this
    run skipped (``--phases``) are carried over as they were, and named in
    ``carried_over``.
    """
    for phase in ("decode", "train"):
        for window, rows in result.get(phase, {}).items():
            old = {
                r["system"]: r for r in previous.get(phase, {}).get(window, [])
            }
            for row in rows:
                if row["system"] in old:
                    row["previous_ratio"] = old[row["system"]]["ratio"]
    for phase, windows in result.get("memory", {}).items():
        for window, rows in windows.items():
            old = previous.get("memory", {}).get(phase, {}).get(window, [])
            old = {r["system"]: r for r in old}
            for row in rows:
                if row["system"] in old:
                    row["previous_total_mb"] = old[row["system"]]["total_mb"]
                    row["previous_state_mb"] = old[row["system"]]["state_mb"]
    carried = [
        phase
        for phase in ("decode", "train")
        if phase not in args.phase_names and phase in previous
    ]
    for phase in carried:
        result[phase] = previous[phase]
        old_memory = previous.get("memory", {}).get(phase)
        if old_memory and phase not in result.get("memory", {}):
            result.setdefault("memory", {})[phase] = old_memory
    if carried:
        # Rows the previous file had carried over keep their own origin.
        origin = previous.get("carried_over") or {}
        if not set(carried) <= set(origin.get("phases", ())):
            origin = previous
        result["carried_over"] = dict(
            phases=carried,
            git=origin.get("git"),
            wall_s=origin.get("wall_s"),
        )
    result["previous"] = dict(
        git=previous.get("git"), audio=previous["settings"].get("audio")
    )


def fmt_ratio(ratio):
    """Markdown cell of a ratio that may be undefined."""
    return "—" if ratio is None else f"{ratio:.2f}"


def fmt_met(met):
    """Markdown cell of a goal check."""
    return "—" if met is None else ("yes" if met else "**no**")


def ratio_kind(result):
    """How the report's ratios were formed, in words.

    Example
    -------
    >>> paired = {"30": [{"paired_ratios": [1.0]}]}
    >>> ratio_kind({"decode": paired, "train": {"30": []}})
    'decoding ratios paired (see its tables), training ratios of medians'
    >>> ratio_kind({"decode": paired})
    'decoding ratios paired (see its tables)'
    >>> ratio_kind({"decode": {"30": [{}]}, "train": {}})
    'ratios of medians'
    """
    paired = any(
        row.get("paired_ratios")
        for rows in result.get("decode", {}).values()
        for row in rows
    )
    if not paired:
        return "ratios of medians"
    kind = "decoding ratios paired (see its tables)"
    if result.get("train"):
        kind += ", training ratios of medians"
    return kind


def markdown(result):
    """The report as markdown tables."""
    s = result["settings"]
    lines = [
        f"# Speed: {result['model']}",
        "",
        f"Device {result['device']}, torch threads {result['threads']} "
        f"(see the script's docstring), torch {result['torch']}; median "
        f"of {result['repeats']} interleaved rounds after a warm-up; "
        f"{ratio_kind(result)} against the baseline "
        f"of the same table. Experts: LoRA r={s['rank']} on "
        f"{'/'.join(TARGETS)}; `enck+dec` = encoder layers from k on plus "
        f"the decoder (the gate taps layer k); `dec` = decoder only (the "
        f"gate reads the encoder output). Audio: {s['audio']}. Wall time "
        f"{result['wall_s']:.0f} s.",
        "",
    ]
    carried = result.get("carried_over")
    if carried:
        commit = (carried.get("git") or {}).get("commit") or "unknown"
        lines += [
            f"Not measured in this run, carried over from the previous "
            f"results (commit {commit[:10]}): "
            f"{', '.join(carried['phases'])} timing and memory.",
            "",
        ]
    if result.get("previous"):
        commit = (result["previous"].get("git") or {}).get("commit")
        lines += [
            "*previous*: the same row in the results this run replaced "
            f"(commit {(commit or 'unknown')[:10]}; audio: "
            f"{result['previous'].get('audio')}).",
            "",
        ]
    for window, rows in result.get("decode", {}).items():
        lines += [
            f"## Decoding, {window} s encoder window",
            "",
            f"Per utterance (batch {s['decode_batch']}): log-mel, encoder, "
            f"greedy decoding with the KV cache, {s['new_tokens']} new tokens "
            f"(end-of-text masked). Baseline: plain Whisper. Merged counts "
            f"as 1.00x up to +{s['tolerance']:.2f}.",
            "",
        ]
        if any(row.get("paired_ratios") for row in rows):
            lines += [
                "Paired: every run of a system sits between two runs of "
                "the baseline; its ratio is the median over the rounds of "
                "its time over the mean of those two (range over the rounds "
                "in brackets), so a drift of the machine's speed during a "
                "round cancels.",
                "",
            ]
        lines += timing_table(rows)
    for window, rows in result.get("train", {}).items():
        lines += [
            f"## Training, {window} s encoder window",
            "",
            f"Per utterance: one `Brain.fit_batch` (forward, backward, AdamW "
            f"step) on a batch of {s['train_batch']} mixed-language "
            f"utterances, {s['target_tokens']} text tokens each, LoRA "
            f"dropout {s['lora_dropout']:g}. Baseline: "
            "full finetuning; distillation rows are against the plain LoRA "
            "of the same placement (and cache). *cached prefix*: the "
            "frozen-prefix cache (`prefix_cache`) on, its fp16 entries on "
            "disk (every epoch after a clip's first). *cut windows*: the "
            "batch's encoder window is its longest clip rounded up to "
            f"{s.get('cut_bucket', 0):g} s (`window_bucket_s`), here "
            f"{cut_window(s, window):g} s; its WER effect is in "
            "`cut_windows.md`. *x PEFT alike*: against PEFT's LoRA given "
            "the same cache and cut (the LoRA layers compared); *x plain "
            "PEFT*: against PEFT's LoRA as HF Whisper + `peft` runs it "
            "(fixed window, no cache), what a user of this plugin gains.",
            "",
        ]
        lines += timing_table(rows)
    for phase, windows in result.get("memory", {}).items():
        step = "decode" if phase == "decode" else "training step"
        for window, rows in windows.items():
            cuda = any("cuda_total_mb" in row for row in rows)
            old = any("previous_total_mb" in row for row in rows)
            lines += [
                f"## Peak memory, {phase}, {window} s encoder window",
                "",
                "Memory over the loaded base model: *state* = tensors the "
                "system keeps after a warm step (adapters, gate, optimiser "
                "state, merge records, caches: every tensor reachable from "
                f"it), counted; *{step}* = growth of the peak RSS over the RSS "
                f"before one warm {step}"
                + (" (and of the CUDA allocator's peak)" if cuda else "")
                + "; ratio of the totals.",
                "",
                f"| system | state (MB) | {step} (MB) | total (MB) | ratio vs "
                f"{rows[0]['system']} |"
                + (" previous state / total (MB) |" if old else "")
                + (" CUDA total (MB) | CUDA ratio |" if cuda else ""),
                "|---|---|---|---|---|"
                + ("---|" if old else "")
                + ("---|---|" if cuda else ""),
            ]
            for row in rows:
                line = (
                    f"| {row['system']} | {row['state_mb']:.1f} | "
                    f"{row['step_mb']:.0f} | {row['total_mb']:.0f} | "
                    f"{fmt_ratio(row['ratio'])} |"
                )
                if old:
                    line += (
                        f" {row['previous_state_mb']:.1f} / "
                        f"{row['previous_total_mb']:.0f} |"
                        if "previous_total_mb" in row
                        else " — |"
                    )
                if cuda:
                    line += (
                        f" {row['cuda_total_mb']:.0f} | "
                        f"{fmt_ratio(row['cuda_ratio'])} |"
                    )
                lines.append(line)
            lines.append("")
    return "\n".join(lines)


def cut_window(settings, window):
    """Seconds of the training batch's cut window (0: no cut rows).

    Example
    -------
    >>> s = {
    ...     "cut_bucket": 2.0,
    ...     "clip_seconds": [5.9, 7.3, 4.0],
    ...     "train_batch": 2,
    ... }
    >>> cut_window(s, "30"), cut_window(s, "6")
    (8.0, 6.0)
    """
    bucket = settings.get("cut_bucket") or 0
    if not bucket:
        return 0
    longest = max(settings["clip_seconds"][: settings["train_batch"]])
    return min(float(window), math.ceil(longest / bucket) * bucket)


def plain_peft_ratio(row, rows):
    """An expert row with the cache or cut windows against plain PEFT.

    PEFT has neither: a user of HF Whisper + ``peft`` runs the row
    ``PEFT LoRA [<placement>]`` (fixed window, every layer recomputed).
    The ``x PEFT`` ratio beside it compares the LoRA layers alone (PEFT
    given the project's cache and cut windows); this one what a user
    gains. None for other rows.

    Example
    -------
    >>> rows = [
    ...     dict(system="PEFT LoRA [dec]", seconds=2.0),
    ...     dict(
    ...         system="expert LoRA [dec], cached prefix",
    ...         kind="lora",
    ...         place="dec",
    ...         cache=True,
    ...         cut=False,
    ...         seconds=0.5,
    ...     ),
    ... ]
    >>> plain_peft_ratio(rows[1], rows)
    0.25
    """
    if row.get("kind") != "lora" or not (row.get("cache") or row.get("cut")):
        return None
    name = f"PEFT LoRA [{row['place']}]"
    peft = next((r for r in rows if r["system"] == name), None)
    return None if peft is None else row["seconds"] / peft["seconds"]


def timing_table(rows):
    """Markdown lines of a timing table."""
    old = any("previous_ratio" in row for row in rows)
    lines = [
        "| system | seconds | ratio vs baseline | goal | met? |"
        + (" previous ratio |" if old else ""),
        "|---|---|---|---|---|" + ("---|" if old else ""),
    ]
    for row in rows:
        base = row["baseline"]
        ratio = f"{row['ratio']:.3f}"
        paired = row.get("paired_ratios") or []
        if len(paired) > 1:
            ratio += f" [{min(paired):.2f}-{max(paired):.2f}]"
        if row["kind"] == "distill":
            ratio += f" (vs {base})"
        plain = plain_peft_ratio(row, rows)
        if "ratio_vs_peft" in row and plain is not None:
            ratio += (
                f" ({row['ratio_vs_peft']:.2f}x PEFT alike, "
                f"{plain:.2f}x plain PEFT)"
            )
        elif "ratio_vs_peft" in row:
            ratio += f" ({row['ratio_vs_peft']:.2f}x PEFT)"
        line = (
            f"| {row['system']} | {row['seconds']:.3f} | {ratio} | "
            f"{row['goal'] or '—'} | {fmt_met(row['met'])} |"
        )
        if old:
            previous = row.get("previous_ratio")
            line += " — |" if previous is None else f" {previous:.3f} |"
        lines.append(line)
    base = rows[0]
    low, high = min(base["all_seconds"]), max(base["all_seconds"])
    spread = 100 * (high - low) / base["seconds"]
    lines += [
        "",
        f"Baseline rounds: {low:.3f}-{high:.3f} s ({spread:.0f} % of its "
        "median): the noise a ratio has to beat.",
    ]
    return lines + [""]


def main(argv=None):
    """Runs the benchmark; returns the result dict."""
    args = parse_args(argv)
    if args.render:
        with open(os.path.join(args.out, f"{args.name}.json")) as f:
            result = json.load(f)
        with open(os.path.join(args.out, f"{args.name}.md"), "w") as f:
            f.write(markdown(result))
        return result
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.probe is not None:
        print("PROBE " + json.dumps(run_probe(args)), flush=True)
        return None
    started = time.time()

    def log(message):
        print(f"[{time.time() - started:6.0f} s] {message}", flush=True)

    with tempfile.TemporaryDirectory(prefix="speed_") as tmp:
        if args.cache_folder is None:  # memory probes inherit it
            args.cache_folder = os.path.join(tmp, "prefix_cache")
            args.argv.append(f"--cache-folder={args.cache_folder}")
        folder = args.whisper
        if folder is None:
            folder = base_shaped_folder(os.path.join(tmp, "whisper"))
            model = "whisper-base shape, random weights"
        else:
            model = os.path.basename(os.path.normpath(folder))
        count = max(args.decode_batch, args.train_batch)
        tokenizer = load_whisper(folder, args.windows[0], "cpu").tokenizer
        utterances = make_utterances(args, count, tokenizer)
        train_utts = utterances[: args.train_batch]
        teachers = list(dict.fromkeys(u["lang"] for u in train_utts))
        result = dict(
            benchmark="speed",
            model=model,
            # Names, not machine paths: results are committed.
            whisper=public_name(args.whisper),
            device=args.device,
            threads=torch.get_num_threads(),
            repeats=args.repeats,
            machine=platform.processor() or platform.machine(),
            torch=torch.__version__,
            git=git_state(),
            settings=dict(
                windows=args.windows,
                experts=args.expert_counts,
                placements=args.placement_names,
                train_placements=args.train_placement_names,
                top1=args.top1,
                gate_bucket=args.gate_bucket,
                rank=args.rank,
                lora_dropout=args.lora_dropout,
                targets=list(TARGETS),
                new_tokens=args.new_tokens,
                decode_batch=args.decode_batch,
                train_batch=args.train_batch,
                target_tokens=args.target_tokens,
                teachers=teachers,
                precision=args.precision,
                tolerance=args.tolerance,
                cut_bucket=args.cut_bucket,
                audio=(
                    f"clips of {public_name(args.corpus)}"
                    if args.corpus
                    else "random 4-8 s noise"
                ),
                clip_seconds=[len(u["wav"]) / SAMPLE_RATE for u in utterances],
            ),
        )
        if "decode" in args.phase_names:
            result["decode"] = {
                window_key(w): measure_decoding(
                    args, folder, w, utterances, log
                )
                for w in args.windows
            }
        if "train" in args.phase_names:
            result["train"] = {
                window_key(w): measure_training(
                    args, folder, w, utterances, teachers, log
                )
                for w in args.windows
            }
        if args.memory != "off":
            result["memory"] = measure_memory(
                args, folder, count, teachers, log
            )
    result["wall_s"] = time.time() - started
    os.makedirs(args.out, exist_ok=True)
    previous = os.path.join(args.out, f"{args.name}.json")
    if os.path.exists(previous):
        with open(previous) as f:
            compare_with_previous(result, json.load(f), args)
    with open(os.path.join(args.out, f"{args.name}.json"), "w") as f:
        json.dump(result, f, indent=2)
    report = markdown(result)
    with open(os.path.join(args.out, f"{args.name}.md"), "w") as f:
        f.write(report)
    print(report)
    return result


if __name__ == "__main__":
    main()
