#!/usr/bin/env python3
"""Recipe: multilingual Whisper with LoRA language experts (Common Voice).

One script, five systems chosen by the hparams file:

    python train.py hparams/expert.yaml --language=de --data_folder=...
    python train.py hparams/multilingual_lora.yaml --languages=[de,es,it] ...
    python train.py hparams/full_finetune.yaml --languages=[de,es,it] ...
    python train.py hparams/fuse.yaml --languages=[de,es,it] ...
    python train.py hparams/distill.yaml --languages=[de,es,it] ...

``--language_aware=False`` switches to the language-agnostic scenario.
``--dataset=fleurs`` trains on FLEURS instead; ``--fleurs_folder=...`` adds
an out-of-domain FLEURS test to a Common Voice run. Runs on CPU with
``--device=cpu --precision=fp32`` and under ``torchrun`` with
``--distributed_backend=gloo``.

The Brains of the five systems share one base class (Whisper forward,
masked cross-entropy, decoding with per-utterance language prompts,
per-language metrics, early stopping on the dev loss, gradient averaging
under DDP); each system only says how experts are routed and what it adds
to the loss:

=====================  ==============================================
``ExpertBrain``        one LoRA on one language (route everything to it)
``MultilingualBrain``  one LoRA on all target languages (the baseline)
``FullFinetuneBrain``  every Whisper weight trains (the other baseline)
``FusionBrain``        frozen experts mixed by a trained gate
``DistillBrain``       expert teachers, one multilingual LoRA student
=====================  ==============================================

``language_aware: True`` gives the language token in the decoder prompt;
``False`` makes the model predict it (taught as a target during training,
detected at evaluation).

Authors
 * speechbrain-lora-experts developers 2026
"""

import contextlib
import json
import logging
import os
import sys

import torch
from common_voice_prepare import prepare_common_voice
from fleurs_prepare import prepare_fleurs
from hyperpyyaml import load_hyperpyyaml
from torch.utils.data import DataLoader

import speechbrain as sb
from speechbrain.dataio.dataloader import LoopedLoader
from speechbrain.utils.distributed import run_on_main
from speechbrain_lora_experts import decoding
from speechbrain_lora_experts.attach import WhisperLoRAExperts
from speechbrain_lora_experts.checkpointing import (
    quarantine_incomplete_checkpoints,
)
from speechbrain_lora_experts.data.batching import train_loader_options
from speechbrain_lora_experts.data.pipeline import build_dataset, target_mask
from speechbrain_lora_experts.distill import (
    MULTILINGUAL_TEACHER,
    STUDENT,
    check_distill_options,
    check_teacher_soup,
    distillation_loss,
    masked_cross_entropy,
    prepare_distill_pool,
    soup_teacher_mix,
)
from speechbrain_lora_experts.export import export_run
from speechbrain_lora_experts.frozen_prefix import build_prefix_cache
from speechbrain_lora_experts.gate import GateTap
from speechbrain_lora_experts.language_rescoring import (
    check_confidence,
    check_top_k,
    is_sure,
    rescore_languages,
)
from speechbrain_lora_experts.metrics import MultilingualScorer
from speechbrain_lora_experts.peft_io import attach_pool
from speechbrain_lora_experts.shared_adapter import (
    has_language_step_weights,
    language_step_weights,
)

logger = logging.getLogger(__name__)


class DevCurve:
    """Dev loss and error rate of every epoch so far, for ``run.json``.

    Kept in ``<output_folder>/dev_curve.json``, written at every epoch end,
    rather than in the checkpoints: checkpoints of runs started before the
    curve existed still resume. A resumed run drops the points of epochs
    after the checkpoint it resumed from (a run killed between writing the
    curve and saving the checkpoint redoes that epoch).

    Arguments
    ---------
    path : str or None
        The JSON file (None: in memory only).

    Example
    -------
    >>> path = str(getfixture("tmp_path") / "dev_curve.json")
    >>> curve = DevCurve(path)
    >>> curve.append(1, 2.5, None)
    >>> curve.append(2, 2.0, 40.0)
    >>> again = DevCurve(path)
    >>> again.load(up_to_epoch=1)
    >>> again.points
    [{'epoch': 1, 'loss': 2.5, 'error_rate': None}]
    """

    def __init__(self, path):
        self.path = path
        self.points = []

    def load(self, up_to_epoch):
        """Reads the curve written so far, up to an epoch.

        Arguments
        ---------
        up_to_epoch : int
            The epoch training resumes after (points beyond it are
            dropped).
        """
        if self.path and os.path.isfile(self.path):
            with open(self.path, encoding="utf-8") as f:
                points = json.load(f)
            self.points = [p for p in points if p["epoch"] <= up_to_epoch]

    def append(self, epoch, loss, error_rate):
        """Records one epoch's dev results and writes the curve.

        Arguments
        ---------
        epoch : int
            The epoch.
        loss : float
            Its dev loss.
        error_rate : float or None
            Its macro dev error rate, None when the dev set was not decoded
            (``valid_search_interval``).
        """
        self.points = [p for p in self.points if p["epoch"] < epoch]
        self.points.append(
            {"epoch": epoch, "loss": float(loss), "error_rate": error_rate}
        )
        if self.path and sb.utils.distributed.if_main_process():
            with open(self.path, "w", encoding="utf-8") as f:
                json.dump(self.points, f, indent=1)


class WhisperExpertsBrain(sb.Brain):
    """What every system shares. Subclasses override ``set_routing``.

    Hparams read: ``whisper``, ``experts`` (may be None), ``languages``,
    ``language_aware``, ``label_smoothing``, ``decoding`` (greedy/beam),
    ``beam_size``, ``valid_search_interval``, ``epoch_counter`` (an
    ``EpochCounterWithStopper``: early stopping on the dev loss),
    ``train_logger``, ``output_folder``; optionally ``lr_annealing`` and
    ``validate_before_training`` (True: the model as it starts is validated
    and checkpointed as epoch 0, so early stopping and the best-checkpoint
    selection can fall back to it) and ``lid_rescore_top_k`` (when the
    model names the language, i.e. agnostic: the k languages it names
    likeliest each transcribe, and the most probable (language, transcript)
    pair is kept; see ``language_rescoring``. Aware, the given language
    prompts, whatever k).

    Arguments
    ---------
    *args
        ``sb.Brain``'s arguments.
    **kwargs
        ``sb.Brain``'s keyword arguments.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Brains driven without an output folder (unit tests, benchmarks)
        # keep the curve in memory only.
        folder = getattr(self.hparams, "output_folder", None)
        self.dev_curve = DevCurve(
            os.path.join(folder, "dev_curve.json") if folder else None
        )
        if self.lid_rescore_top_k != 1:
            check_top_k(self.lid_rescore_top_k, self.languages)
        check_confidence(self.lid_rescore_confidence)

    @property
    def lid_rescore_top_k(self):
        """Languages transcribed per utterance when the model names it."""
        return getattr(self.hparams, "lid_rescore_top_k", 1)

    @property
    def lid_rescore_confidence(self):
        """Language-step probability from which nothing is rescored."""
        return getattr(self.hparams, "lid_rescore_confidence", None)

    def rescores(self):
        """Whether decoding rescores the likeliest languages."""
        return not self.language_aware and self.lid_rescore_top_k > 1

    @property
    def validates_start(self):
        """Whether the starting point is validated as epoch 0."""
        return bool(getattr(self.hparams, "validate_before_training", False))

    def fit(
        self,
        epoch_counter,
        train_set,
        valid_set=None,
        progressbar=None,
        train_loader_kwargs=None,
        valid_loader_kwargs=None,
    ):
        """``sb.Brain.fit``, validating the start first when asked.

        Arguments
        ---------
        epoch_counter : iterable
            As ``sb.Brain.fit``.
        train_set : Dataset or DataLoader
            As ``sb.Brain.fit``.
        valid_set : Dataset or DataLoader
            As ``sb.Brain.fit``.
        progressbar : bool
            As ``sb.Brain.fit``.
        train_loader_kwargs : dict
            As ``sb.Brain.fit``.
        valid_loader_kwargs : dict
            As ``sb.Brain.fit``.
        """
        if valid_set is not None and not isinstance(
            valid_set, (DataLoader, LoopedLoader)
        ):
            valid_set = self.make_dataloader(
                valid_set,
                stage=sb.Stage.VALID,
                ckpt_prefix=None,
                **(valid_loader_kwargs or {}),
            )
        self._start_valid_set = valid_set
        super().fit(
            epoch_counter,
            train_set,
            valid_set,
            progressbar=progressbar,
            train_loader_kwargs=train_loader_kwargs or {},
        )
        # What training did, before a test loads the best checkpoint (whose
        # counter and step count are those of its own epoch).
        self.fit_summary = self._progress(epoch_counter)

    def _validate_start(self):
        """Epoch 0: the dev set on the untrained starting point.

        Only in a fresh run: once any checkpoint exists (this one
        included), a resumed run has its epoch-0 result already.
        """
        valid_set = getattr(self, "_start_valid_set", None)
        if not self.validates_start or valid_set is None or self.test_only:
            return
        if (
            self.checkpointer is not None
            and self.checkpointer.find_checkpoint() is not None
        ):
            return
        logger.info("validating the starting point as epoch 0")
        enable = not self.noprogressbar and (
            sb.utils.distributed.if_main_process()
        )
        self._fit_valid(valid_set=valid_set, epoch=0, enable=enable)

    def set_routing(self, batch, stage):
        """Sets the experts' routing for this batch (before the encoder).

        Called inside ``routing_scope()``: the routing ends with the
        forward, also when it raises.
        """

    def routing_scope(self, route=None):
        """The experts' routing scope for one forward (a no-op without).

        ``route``: as ``experts.route`` takes it, or ``[B, N]`` float
        weights of a mix of experts.
        """
        if self.experts is None:
            return contextlib.nullcontext()
        if torch.is_tensor(route) and route.is_floating_point():
            return self.experts.scope(mix=route)
        return self.experts.scope(route=route)

    @property
    def whisper(self):
        """The (unwrapped) Whisper module."""
        return self.hparams.whisper

    @property
    def experts(self):
        """The expert pool, or None."""
        return getattr(self.hparams, "experts", None)

    @property
    def languages(self):
        """Target languages; their order is ``lang_id``."""
        return list(self.hparams.languages)

    @property
    def language_aware(self):
        """Whether the language is given to Whisper."""
        return bool(self.hparams.language_aware)

    def lang_ids(self, batch):
        """``[B]`` index of each utterance's language in ``languages``."""
        return torch.as_tensor(batch.lang_id, device=self.device)

    # Forward ----------------------------------------------------------------
    @property
    def prefix_cache(self):
        """The frozen-prefix cache (``prefix_cache`` hparams), or None.

        Built at the first forward, once the experts are attached and the
        trainable parameters are known.
        """
        if not hasattr(self, "_prefix_cache"):
            self._prefix_cache = build_prefix_cache(
                getattr(self.hparams, "prefix_cache", False),
                getattr(self.hparams, "prefix_cache_folder", None),
                self.whisper,
                self.experts,
                dtype=getattr(self.hparams, "prefix_cache_dtype", "float16"),
                augmentation=getattr(self.hparams, "wav_augment", None),
            )
        return self._prefix_cache

    def encoder_input(self, wavs):
        """What the encoder starts from: the log-mel, or the cached prefix.

        Computed once per batch, outside any routing: every route
        (student, teachers, the gate's base pass) starts from it.
        """
        if self.whisper.window_bucket_s is not None:
            # Tallied per stage (on_stage_start); a bare fit_batch too.
            window = self.whisper.batch_samples(wavs.shape[1])
            vars(self).setdefault("_windows", []).append(window)
        if self.prefix_cache is not None:
            return self.prefix_cache.hidden(wavs)
        return self.whisper._get_mel(wavs)

    def run_encoder(self, features):
        """The encoder output from ``encoder_input``, current routing."""
        if self.prefix_cache is not None:
            return self.prefix_cache.forward_rest(features)
        return self.whisper.forward_encoder(features)

    def compute_forward(self, batch, stage):
        """Teacher-forced logits, and hypotheses when evaluating."""
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        tokens_bos, _ = batch.tokens_bos
        features = self.encoder_input(wavs)
        self.before_routing(batch, features)
        with self.routing_scope():
            self.set_routing(batch, stage)
            enc = self.run_encoder(features)
            logits = self.whisper.forward_decoder(
                enc, tokens_bos, use_cache=False
            )
            predictions = {"logits": logits[0]}
            if stage != sb.Stage.TRAIN and self._decode_now(stage):
                predictions.update(self.decode(batch, enc))
        return predictions

    def before_routing(self, batch, features):
        """Work a batch needs before its routing is set (none here).

        Arguments
        ---------
        batch : PaddedBatch
            The batch, on the device.
        features : torch.Tensor
            What the encoder starts from (``encoder_input``).
        """

    def _decode_now(self, stage):
        if stage == sb.Stage.TEST:
            return True
        interval = getattr(self.hparams, "valid_search_interval", 1)
        epoch = self.hparams.epoch_counter.current
        return interval > 0 and epoch % interval == 0

    def predicted_languages(self, batch, enc):
        """Language codes used in the prompt, and whether they were given."""
        if self.language_aware:
            return list(batch.lang)
        codes, _ = decoding.detect_language(
            self.whisper, enc, candidates=self.languages
        )
        return codes

    def decode(self, batch, enc):
        """Greedy or beam decoding with one language prompt per utterance."""
        if self.rescores():
            return self.rescored_decode(batch, enc)
        languages = self.predicted_languages(batch, enc)
        tokens = self.decode_tokens(batch, enc, languages)
        return {
            "hyps": decoding.decode_text(self.whisper, tokens),
            "pred_langs": languages,
        }

    def language_step(self, batch, enc):
        """``[B, N]`` probabilities of ``languages`` (agnostic)."""
        _, probs = decoding.detect_language(
            self.whisper, enc, candidates=self.languages
        )
        return probs

    def candidate_encoder_out(self, enc, index, codes, stack):
        """The encoder output that transcribes in the candidate ``codes``.

        One model serves every language here: ``enc``. A pool routed by
        language routes ``index`` inside ``stack`` and encodes again.
        """
        return enc

    def rescored_decode(self, batch, enc):
        """``lid_rescore_top_k``: the most probable (language, transcript).

        Each candidate's transcript is scored under the model that wrote
        it (``candidate_encoder_out``'s routing).
        """

        def transcribe(index, codes, score):
            """Tokens (and their log-probability) in the ``codes``."""
            with contextlib.ExitStack() as stack:
                encoded = self.candidate_encoder_out(enc, index, codes, stack)
                tokens = self.decode_tokens(batch, encoded, codes)
                if not score:
                    return tokens, None
                prompts = decoding.prompt_tokens(
                    self.whisper, codes, device=encoded.device
                )
                total, _ = decoding.score_tokens(
                    self.whisper, encoded, prompts, tokens
                )
                return tokens, total

        probs = self.language_step(batch, enc)
        index, tokens, rank = rescore_languages(
            probs,
            self.languages,
            self.lid_rescore_top_k,
            transcribe,
            self.lid_rescore_confidence,
        )
        self.rescored["changed"] += int((rank > 0).sum())
        self.rescored["utterances"] += len(tokens)
        if self.lid_rescore_confidence is not None:
            sure = is_sure(probs, self.lid_rescore_confidence)
            self.rescored["unsure"] += int((~sure).sum())
        return {
            "hyps": decoding.decode_text(self.whisper, tokens),
            "pred_langs": [self.languages[i] for i in index.tolist()],
        }

    def decode_tokens(self, batch, enc, languages):
        """Text tokens per utterance, prompted with ``languages``."""
        prompts = decoding.prompt_tokens(self.whisper, languages)
        durations = torch.as_tensor(
            [float(d) for d in batch.duration], device=enc.device
        )
        limits = decoding.max_tokens_for(durations)
        if getattr(self.hparams, "decoding", "greedy") == "beam":
            return decoding.beam_decode(
                self.whisper,
                enc,
                prompts.to(enc.device),
                self.hparams.beam_size,
                limits,
            )
        return decoding.greedy_decode(
            self.whisper, enc, prompts.to(enc.device), limits
        )

    # Loss -------------------------------------------------------------------
    def loss_mask(self, batch):
        """``[B, T]`` target positions the scenario teaches."""
        tokens_eos, tokens_eos_lens = batch.tokens_eos
        return target_mask(
            tokens_eos_lens, tokens_eos.shape, self.language_aware
        )

    def token_loss(self, logits, batch):
        """Masked cross-entropy over the targets the scenario teaches."""
        return masked_cross_entropy(
            logits,
            batch.tokens_eos.data,
            self.loss_mask(batch),
            getattr(self.hparams, "label_smoothing", 0.0),
        )

    def compute_objectives(self, predictions, batch, stage):
        """Cross-entropy (+ what subclasses add); scores hypotheses."""
        loss = self.token_loss(predictions["logits"], batch)
        loss = loss + self.extra_loss(predictions, batch, stage)
        if "hyps" in predictions:
            self.scorer.append(
                ids=list(batch.id),
                languages=list(batch.lang),
                hypotheses=predictions["hyps"],
                references=list(batch.wrd),
                predicted_languages=(
                    None if self.language_aware else predictions["pred_langs"]
                ),
            )
        return loss

    def extra_loss(self, predictions, batch, stage):
        """Additional loss terms of a system (none by default)."""
        return torch.zeros((), device=self.device)

    def make_dataloader(self, dataset, stage, ckpt_prefix="dataloader-", **kw):
        """SpeechBrain's loaders, with a private generator.

        A DataLoader iterator draws a seed from the global random stream when
        it is created. A run resumed mid-epoch creates its iterator at another
        point of that stream than an uninterrupted run, which would shift
        every later dropout mask; a private generator keeps resume exact.
        """
        kw.setdefault("generator", torch.Generator().manual_seed(0))
        loader = super().make_dataloader(dataset, stage, ckpt_prefix, **kw)
        batch_sampler = kw.get("batch_sampler")
        if (
            stage == sb.Stage.TRAIN
            and self.train_sampler is None
            and hasattr(batch_sampler, "set_epoch")
        ):
            # SpeechBrain tells a batch sampler the epoch only under DDP;
            # without it DynamicBatchSampler draws the same batches in every
            # epoch.
            self.train_sampler = batch_sampler
        return loader

    # DDP: gradients are averaged by hand, because the Brain calls Whisper's
    # encoder and decoder methods directly, never a DDP-wrapped forward.
    def _wrap_distributed(self):
        if self.distributed_launch:
            for param in self.trainable_parameters():
                torch.distributed.broadcast(param.data, src=0)

    def trainable_parameters(self):
        """Parameters the optimiser updates, in a fixed order."""
        return [p for p in self.modules.parameters() if p.requires_grad]

    def optimizers_step(self):
        """Averages gradients across processes, then steps."""
        if self.distributed_launch:
            world = torch.distributed.get_world_size()
            for param in self.trainable_parameters():
                if param.grad is None:
                    param.grad = torch.zeros_like(param)
                torch.distributed.all_reduce(param.grad)
                param.grad /= world
        super().optimizers_step()

    # Stages -----------------------------------------------------------------
    def on_stage_start(self, stage, epoch=None):
        """Fresh scorer and window and rescoring tallies per stage."""
        self.scorer = MultilingualScorer()
        self._windows = []
        self.rescored = {"changed": 0, "utterances": 0, "unsure": 0}

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs, anneals, checkpoints, and writes metrics."""
        if getattr(self, "rescored", {}).get("utterances"):
            logger.info(
                "%s: lid_rescore_top_k=%d: %d of %d utterances took another "
                "language than the language step's first",
                stage.name.lower(),
                self.lid_rescore_top_k,
                self.rescored["changed"],
                self.rescored["utterances"],
            )
            if self.lid_rescore_confidence is not None:
                logger.info(
                    "%s: lid_rescore_confidence=%g: %d of %d utterances were "
                    "rescored (the others' first language was at least that "
                    "probable)",
                    stage.name.lower(),
                    self.lid_rescore_confidence,
                    self.rescored["unsure"],
                    self.rescored["utterances"],
                )
        cache = getattr(self, "_prefix_cache", None)
        if cache is not None:
            logger.info(
                "%s: frozen-prefix cache computed %d clips, read %d",
                stage.name.lower(),
                cache.counts["computed"],
                cache.counts["loaded"],
            )
            cache.counts = dict.fromkeys(cache.counts, 0)
        if getattr(self, "_windows", None):
            rate = self.hparams.sample_rate
            logger.info(
                "%s: encoder windows cut to the batch: %.2f s on average "
                "over %d batches (fixed window %g s)",
                stage.name.lower(),
                sum(self._windows) / len(self._windows) / rate,
                len(self._windows),
                self.whisper.window_samples / rate,
            )
        stats = {"loss": stage_loss}
        if stage == sb.Stage.TRAIN:
            self.train_stats = stats
            return
        if self.scorer.stats:
            summary = self.scorer.summary()
            stats["macro_error_rate"] = summary["macro"]
            for lang, row in summary["per_language"].items():
                stats[f"{row['metric']}_{lang}"] = row["error_rate"]
            if summary.get("lid_accuracy") is not None:
                stats["lid_accuracy"] = summary["lid_accuracy"]
        if stage == sb.Stage.VALID:
            lr = self._anneal(stage_loss, epoch)
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr": lr},
                train_stats=getattr(self, "train_stats", None),
                valid_stats=stats,
            )
            self.dev_curve.append(
                epoch, stage_loss, stats.get("macro_error_rate")
            )
            # Early stopping: the counter ends the epoch loop after
            # `patience` epochs without a lower dev loss. Updated before the
            # save so that a resumed run keeps counting from here; the test
            # still uses the best checkpoint (min dev loss), not the last.
            counter = self.hparams.epoch_counter
            if epoch == 0:
                self._record_start(counter, stage_loss)
            else:
                counter.update_metric(stage_loss)
            meta = {k: v for k, v in stats.items() if _is_number(v)}
            self.checkpointer.save_and_keep_only(
                meta=meta,
                min_keys=["loss"],
                num_to_keep=getattr(self.hparams, "ckpts_to_keep", 1),
            )
        elif stage == sb.Stage.TEST:
            self.hparams.train_logger.log_stats(
                stats_meta={"epochs": self.hparams.epoch_counter.current},
                test_stats=stats,
            )
            if sb.utils.distributed.if_main_process():
                self.write_metrics(stats)

    @staticmethod
    def _record_start(counter, stage_loss):
        record = getattr(counter, "update_start_metric", None)
        if record is None:
            logger.warning(
                "%s cannot record the starting point's dev loss: early "
                "stopping ignores it (use speechbrain_lora_experts."
                "checkpointing.EpochCounterWithStopper)",
                type(counter).__name__,
            )
        else:
            record(float(stage_loss))

    def _anneal(self, stage_loss, epoch):
        scheduler = getattr(self.hparams, "lr_annealing", None)
        if scheduler is None or self.optimizer is None:
            return self.optimizer.param_groups[0]["lr"] if self.optimizer else 0
        old_lr, new_lr = scheduler(stage_loss)
        sb.nnet.schedulers.update_learning_rate(self.optimizer, new_lr)
        return old_lr

    def write_metrics(self, stats):
        """Writes ``metrics.json`` and wer files into the output folder."""
        folder = self.hparams.output_folder
        prefix = getattr(self, "metrics_prefix", "")
        if self.scorer.stats:
            self.scorer.write(folder, prefix=prefix)
        path = os.path.join(folder, f"{prefix}run.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(
                {
                    "system": type(self).__name__,
                    "languages": self.languages,
                    "language_aware": self.language_aware,
                    "test_loss": stats["loss"],
                    **self._training_summary(),
                    "best_epoch": self.hparams.epoch_counter.current,
                    "dev_curve": self.dev_curve.points,
                    "train_loss_history": getattr(self, "loss_history", []),
                },
                f,
                indent=2,
            )

    def _progress(self, counter):
        """Epochs, early stop and optimizer steps as they stand now."""
        return {
            "epochs": counter.current,
            "stopped_early": bool(getattr(counter, "should_stop", 0)),
            "optimizer_steps": self.optimizer_step,
        }

    def _training_summary(self):
        """Epochs, early stop and optimizer steps of the training run.

        From ``fit`` when it ran in this process; otherwise (test only) from
        the checkpoint the test loaded.
        """
        summary = getattr(self, "fit_summary", None)
        if summary is not None:
            return dict(summary)
        return self._progress(self.hparams.epoch_counter)

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        """Keeps the training loss curve (shown in run.json)."""
        if should_step:
            history = getattr(self, "loss_history", [])
            history.append(float(loss.detach()))
            self.loss_history = history

    def on_fit_start(self):
        """Logs the parameter report before training."""
        super().on_fit_start()  # recovers the checkpoint, if any
        self.dev_curve.load(up_to_epoch=self.hparams.epoch_counter.current)
        self._validate_start()
        if self.experts is not None:
            logger.info("expert pool: %s", self.experts.parameter_report())


class ExpertBrain(WhisperExpertsBrain):
    """Trains one language expert (a LoRA) on its language's data."""

    def set_routing(self, batch, stage):
        """Everything goes through expert 0."""
        self.experts.route(0)


class MultilingualBrain(ExpertBrain):
    """One LoRA trained on all target languages mixed (the baseline)."""


class FullFinetuneBrain(WhisperExpertsBrain):
    """All Whisper weights train; no experts."""


class FusionBrain(WhisperExpertsBrain):
    """Frozen experts combined per utterance.

    ``fusion`` selects how:

    * ``gate`` (trained): the utterance-level gate reads the hidden states
      entering the first encoder layer the experts adapt (or the encoder
      output when they adapt none), so it always sees base-model features
      and costs no extra encoder pass; ``gate_level: token`` uses per-layer
      token gates instead;
    * ``oracle``: each utterance goes through one language's expert:
      with ``oracle_routing: label`` its true language's (in the agnostic
      scenario an upper bound, not a deployable system); with ``lid``, in
      the agnostic scenario, the language the model names with its
      experts off (Whisper plus any shared adapter), which also prompts
      the decoder: what the pretrained interface does with no language
      given, at the cost of a second encoder pass. Aware, both route by
      the given language. ``lid_rescore_top_k: k`` (agnostic, ``lid``)
      transcribes with the k likeliest languages' experts and keeps the
      most probable (language, transcript) pair
      (``language_rescoring``): k encoder passes and decodings;
    * ``linear`` / ``ties``: a static, training-free merge of all experts
      into the weights (``ties_density``).

    Hparams: ``gate``, ``gate_level``, ``lid_loss_weight``, ``lid_source``
    (gate/decoder, agnostic scenario), ``fusion``, ``oracle_routing``
    (label/lid), ``lid_rescore_top_k``, ``ties_density``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        routing = self.oracle_routing
        if routing not in ("label", "lid"):
            raise ValueError(
                f"oracle_routing must be label or lid, got {routing!r}"
            )
        if routing == "lid" and self.fusion != "oracle":
            raise ValueError(
                f"oracle_routing: lid routes fusion: oracle; with fusion: "
                f"{self.fusion} set oracle_routing: label"
            )
        lid_scale = getattr(self.whisper, "shared_adapter_lid_scale", None)
        if lid_scale is not None and (
            self.fusion != "oracle" or routing != "lid"
        ):
            raise ValueError(
                f"shared_adapter_lid_scale={lid_scale} weighs the shared "
                "adapter in the step that names the routing language: set "
                "fusion: oracle and oracle_routing: lid, or leave it null"
            )
        top_k = self.lid_rescore_top_k
        if top_k != 1 and (self.fusion != "oracle" or routing != "lid"):
            raise ValueError(
                f"lid_rescore_top_k={top_k} rescores the languages that "
                "route fusion: oracle with oracle_routing: lid; set those, "
                "or lid_rescore_top_k: 1"
            )
        # Token gates must exist before the optimiser and checkpoint recovery.
        if self.token_level and not self.experts.token_gates:
            self.experts.add_token_gates(
                getattr(self.hparams, "gate_temperature", 1.0)
            )

    @property
    def fusion(self):
        """How the experts are combined."""
        return getattr(self.hparams, "fusion", "gate")

    @property
    def oracle_routing(self):
        """What routes ``fusion: oracle`` (``label`` or ``lid``)."""
        return getattr(self.hparams, "oracle_routing", "label")

    @property
    def routes_by_lid(self):
        """Whether the experts-off model names the language that routes."""
        return (
            self.fusion == "oracle"
            and self.oracle_routing == "lid"
            and not self.language_aware
        )

    @property
    def token_level(self):
        """Whether per-layer token gates mix the experts."""
        level = getattr(self.hparams, "gate_level", "utterance")
        return self.fusion == "gate" and level == "token"

    @property
    def uses_tap(self):
        """Whether the utterance gate routes."""
        return self.fusion == "gate" and not self.token_level

    def on_fit_start(self):
        """Installs the gate tap or merges statically."""
        self._prepare_fusion()
        super().on_fit_start()

    def on_evaluate_start(self, max_key=None, min_key=None):
        """Installs the gate tap or merges (when only evaluating)."""
        super().on_evaluate_start(max_key=max_key, min_key=min_key)
        self._prepare_fusion()

    def _prepare_fusion(self):
        if self.fusion in ("linear", "ties"):
            if not self.experts.merged:
                kwargs = {}
                if self.fusion == "ties":
                    kwargs["density"] = self.hparams.ties_density
                self.experts.merge_static(self.fusion, **kwargs)
            return
        if self.fusion not in ("gate", "oracle"):
            raise ValueError(
                f"fusion must be gate, oracle, linear or ties; got "
                f"{self.fusion!r}"
            )
        if self.uses_tap and getattr(self, "_tap", None) is None:
            self._tap = GateTap(self.whisper, self.experts, self.hparams.gate)

    def before_routing(self, batch, features):
        """``oracle_routing: lid``: names each utterance's language.

        The model with its experts off (Whisper plus any merged shared
        adapter, weighed ``shared_adapter_lid_scale`` when set) encodes the
        batch and its decoder's language step picks among the target
        languages; ``set_routing`` and the prompt use it.
        """
        self._named_languages = self._language_probs = None
        if not self.routes_by_lid:
            return
        if (
            has_language_step_weights(self.whisper)
            and self.prefix_cache is not None
        ):
            # The cached prefix holds the shared adapter at its merged
            # weight, not at the language step's.
            raise ValueError(
                "shared_adapter_lid_scale needs the whole encoder recomputed "
                "for the language step: set prefix_cache: False"
            )
        with torch.no_grad(), self.experts.scope():
            with language_step_weights(self.whisper):
                enc = self.run_encoder(features)
                codes, probs = decoding.detect_language(
                    self.whisper, enc, candidates=self.languages
                )
        self._named_languages = list(codes)
        if self.rescores():
            self._language_probs, self._lid_features = probs, features

    def set_routing(self, batch, stage):
        """Gate (utterance or token), oracle routing, or nothing (merged)."""
        if self.fusion == "oracle":
            named = getattr(self, "_named_languages", None)
            if named is None:
                self.experts.route(self.lang_ids(batch))
            else:
                self.experts.route(
                    torch.as_tensor(
                        [self.languages.index(code) for code in named],
                        device=self.device,
                    )
                )
        elif self.token_level:
            self.experts.use_token_gates()
        elif self.uses_tap:
            wavs, wav_lens = batch.sig
            self._tap.prepare(
                valid_fraction=self.whisper.window_share(
                    wav_lens * wavs.shape[1], wavs.shape[1]
                ),
                language=self.lang_ids(batch) if self.language_aware else None,
            )
        else:
            self.experts.off()

    def run_encoder(self, features):
        """Also routes by the gate when the cache skips the encoder.

        A gate tapped on the encoder output (decoder-only experts) hooks
        ``encoder.forward``, which the cached path does not call.
        """
        enc = super().run_encoder(features)
        tap = getattr(self, "_tap", None)
        if self.prefix_cache is not None and tap is not None:
            if tap.layer is None:
                tap.route_encoder_output(enc)
        return enc

    def compute_forward(self, batch, stage):
        """Adds the gate's weights and logits to the predictions."""
        predictions = super().compute_forward(batch, stage)
        if self.uses_tap:
            predictions["gate_logits"] = self._tap.logits
            predictions["gate_weights"] = self._tap.weights
        return predictions

    def predicted_languages(self, batch, enc):
        """In the agnostic scenario the gate can name the language.

        With ``oracle_routing: lid`` the language that routed the batch
        prompts it.
        """
        named = getattr(self, "_named_languages", None)
        if named is not None:
            return list(named)
        source = getattr(self.hparams, "lid_source", "gate")
        if self.language_aware or not self.uses_tap or source != "gate":
            return super().predicted_languages(batch, enc)
        best = self._tap.logits.argmax(dim=-1).tolist()
        return [self.languages[i] for i in best]

    def rescores(self):
        """Only ``oracle_routing: lid`` rescores (agnostic)."""
        return self.routes_by_lid and self.lid_rescore_top_k > 1

    def language_step(self, batch, enc):
        """The experts-off step's probabilities (``before_routing``)."""
        return self._language_probs

    def candidate_encoder_out(self, enc, index, codes, stack):
        """Routes the candidate languages' experts and encodes again."""
        if codes == self._named_languages:  # routed so already
            return enc
        stack.enter_context(self.experts.scope(route=index.to(self.device)))
        return self.run_encoder(self._lid_features)

    def extra_loss(self, predictions, batch, stage):
        """Auxiliary language-identification loss (agnostic gates only).

        An aware gate is told the language: a loss towards that same label
        would only teach it to copy it and never to borrow another
        language's expert, so its mix is learned from the ASR loss alone.
        """
        weight = getattr(self.hparams, "lid_loss_weight", 0.0)
        if not self.uses_tap or not weight or self.language_aware:
            return super().extra_loss(predictions, batch, stage)
        return weight * torch.nn.functional.cross_entropy(
            predictions["gate_logits"], self.lang_ids(batch)
        )

    def on_stage_start(self, stage, epoch=None):
        """Collects gate weights per true language for the report."""
        super().on_stage_start(stage, epoch)
        self.gate_sums = {}

    def compute_objectives(self, predictions, batch, stage):
        """Also accumulates mean gate weights per language."""
        if "gate_weights" in predictions and stage != sb.Stage.TRAIN:
            weights = predictions["gate_weights"].detach().cpu()
            for lang, row in zip(batch.lang, weights):
                total, count = self.gate_sums.get(lang, (0, 0))
                self.gate_sums[lang] = (total + row, count + 1)
        return super().compute_objectives(predictions, batch, stage)

    def write_metrics(self, stats):
        """Adds the mean gate weights per true language."""
        super().write_metrics(stats)
        if not self.gate_sums:
            return
        table = {
            lang: dict(zip(self.languages, (total / count).tolist()))
            for lang, (total, count) in self.gate_sums.items()
        }
        prefix = getattr(self, "metrics_prefix", "")
        path = os.path.join(
            self.hparams.output_folder, f"{prefix}gate_weights.json"
        )
        with open(path, "w", encoding="utf-8") as f:
            json.dump(table, f, indent=2)


class DistillBrain(WhisperExpertsBrain):
    """Expert teachers (frozen) distilled into one multilingual LoRA.

    The pool holds the language experts, a ``student`` slot and, with
    ``multilingual_teacher``, a frozen ``multilingual_teacher`` slot (filled
    by ``distill.prepare_distill_pool`` when the pool attaches; never
    exported, left out of the optimiser). When training, the loss over the
    target tokens is::

        (1 - lambda) * CE
        + lambda * T^2 * KL(teacher || student)
        + mu * T^2 * KL(base || student)

    The teacher of an utterance is Whisper + its language's expert (with
    ``teacher_soup = [a, b]``: the expert soup ``W + a * dW_multilingual +
    b * dW_expert``, in one pass), or its mixture ``(1 - beta) * p_teacher
    + beta * p_multilingual`` at temperature T; the base is Whisper with no
    adapter routed (Whisper + the merged ``shared_adapter`` when one is
    set). Teacher, multilingual teacher and base run in eval mode (no
    dropout) under ``no_grad``, each in its own routing scope, and the mode
    and routing come back also when a pass raises; when the experts adapt
    no encoder layer, all passes and the student share one encoder pass. The
    base runs only when mu > 0, the multilingual teacher only when beta > 0.
    Evaluation scores the student with plain CE.

    Hparams: ``distill_weight`` (lambda, in [0, 1]), ``distill_temperature``
    (T), ``distill_anchor_weight`` (mu >= 0, default 0),
    ``multilingual_teacher`` / ``multilingual_teacher_weight`` (beta, in
    [0, 1], default 0.5), ``teacher_soup`` ([a, b] or null; needs
    ``multilingual_teacher``), ``student_init`` (read when the pool
    attaches; it also turns ``validate_before_training`` on unless that is
    set). The weights are checked when the Brain is made.

    Arguments
    ---------
    *args
        ``sb.Brain``'s arguments.
    **kwargs
        ``sb.Brain``'s keyword arguments.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        check_distill_options(**distill_options(vars(self.hparams)))
        if getattr(self.hparams, "multilingual_teacher", None) and (
            self.multilingual_slot is None
        ):
            raise ValueError(
                "multilingual_teacher is set but the pool has no "
                f"{MULTILINGUAL_TEACHER!r} slot: attach the pool with "
                "attach_experts()"
            )
        check_teacher_soup(
            getattr(self.hparams, "teacher_soup", None),
            self.multilingual_slot is not None,
        )

    @property
    def student(self):
        """Index of the student slot."""
        return self.experts.index_of(STUDENT)

    @property
    def multilingual_slot(self):
        """Index of the multilingual teacher's slot, or None."""
        names = self.experts.expert_names
        if MULTILINGUAL_TEACHER not in names:
            return None
        return names.index(MULTILINGUAL_TEACHER)

    @property
    def teacher_soup(self):
        """``(a, b)``: each teacher is the expert soup (None: the expert)."""
        value = getattr(self.hparams, "teacher_soup", None)
        return None if value is None else tuple(float(v) for v in value)

    def teacher_route(self, batch):
        """Each utterance's teacher: its expert, or its expert soup."""
        lang_ids = self.lang_ids(batch)
        soup = self.teacher_soup
        if soup is None:
            return lang_ids
        return soup_teacher_mix(
            lang_ids,
            len(self.experts.expert_names),
            self.multilingual_slot,
            soup,
        )

    @property
    def anchor_weight(self):
        """mu, the weight of ``KL(base || student)`` (0: no base pass)."""
        return float(getattr(self.hparams, "distill_anchor_weight", 0.0))

    @property
    def multilingual_weight(self):
        """beta, the multilingual teacher's share (0 without one)."""
        if self.multilingual_slot is None:
            return 0.0
        return float(getattr(self.hparams, "multilingual_teacher_weight", 0.5))

    @property
    def validates_start(self):
        """Validates the start as epoch 0 (by default: with student_init)."""
        value = getattr(self.hparams, "validate_before_training", None)
        if value is None:
            return bool(getattr(self.hparams, "student_init", None))
        return bool(value)

    def set_routing(self, batch, stage):
        """The student is what trains and what is evaluated."""
        self.experts.route(self.student)

    def init_optimizers(self):
        """SpeechBrain's optimiser, without the multilingual teacher."""
        super().init_optimizers()
        if self.multilingual_slot is None or self.optimizer is None:
            return
        frozen = {
            id(p)
            for p in self.experts.expert_parameters(self.multilingual_slot)
        }
        for group in self.optimizer.param_groups:
            group["params"] = [
                p for p in group["params"] if id(p) not in frozen
            ]

    def frozen_logits(self, features, tokens_bos, routes, shares_encoder):
        """Logits of frozen models: eval mode, no graph, one scope each.

        Arguments
        ---------
        features : torch.Tensor
            The batch's ``encoder_input``.
        tokens_bos : torch.LongTensor
            ``[B, T]`` decoder inputs.
        routes : dict
            ``{name: route}``; a route as ``routing_scope`` takes it (None:
            no adapter, the base).
        shares_encoder : bool
            Whether one encoder pass serves every route (no adapted
            encoder layer).

        Returns
        -------
        logits : dict
            ``{name: [B, T, V] logits}``.
        enc : torch.Tensor
            The last encoder output.
        """
        # Fixed targets: no dropout, no graph; the mode comes back after.
        was_training = self.whisper.training
        self.whisper.eval()
        logits, enc = {}, None
        try:
            with torch.no_grad():
                for name, route in routes.items():
                    with self.routing_scope(route):
                        if enc is None or not shares_encoder:
                            enc = self.run_encoder(features)
                        logits[name] = self.whisper.forward_decoder(
                            enc, tokens_bos, use_cache=False
                        )[0]
        finally:
            self.whisper.train(was_training)
        return logits, enc

    def compute_forward(self, batch, stage):
        """Student forward; teacher (and base) logits too when training."""
        if stage != sb.Stage.TRAIN:
            return super().compute_forward(batch, stage)
        batch = batch.to(self.device)
        wavs, _ = batch.sig
        tokens_bos, _ = batch.tokens_bos
        features = self.encoder_input(wavs)
        shares_encoder = not any(
            name.startswith("encoder.") for name in self.experts.layers
        )
        routes = {"teacher_logits": self.teacher_route(batch)}
        if self.multilingual_weight > 0:
            routes["multilingual_logits"] = self.multilingual_slot
        if self.anchor_weight > 0:
            routes["base_logits"] = None  # every adapter off
        frozen, enc = self.frozen_logits(
            features, tokens_bos, routes, shares_encoder
        )
        with self.routing_scope():
            self.set_routing(batch, stage)
            if not shares_encoder:
                enc = self.run_encoder(features)
            logits = self.whisper.forward_decoder(
                enc, tokens_bos, use_cache=False
            )
        return {"logits": logits[0], **frozen}

    def compute_objectives(self, predictions, batch, stage):
        """Distillation loss when training, plain CE when evaluating."""
        if "teacher_logits" not in predictions:
            return super().compute_objectives(predictions, batch, stage)
        loss, _, _ = distillation_loss(
            predictions["logits"],
            predictions["teacher_logits"],
            batch.tokens_eos.data,
            self.loss_mask(batch),
            weight=self.hparams.distill_weight,
            temperature=self.hparams.distill_temperature,
            label_smoothing=getattr(self.hparams, "label_smoothing", 0.0),
            anchor_logits=predictions.get("base_logits"),
            anchor_weight=self.anchor_weight,
            multilingual_logits=predictions.get("multilingual_logits"),
            multilingual_weight=self.multilingual_weight,
        )
        return loss


def distill_options(hparams):
    """The loss weights of a distill run's hparams, defaults filled in.

    Arguments
    ---------
    hparams : dict
        The loaded hyperparameters.

    Returns
    -------
    dict
        Keyword arguments of ``distill.check_distill_options``.

    Example
    -------
    >>> distill_options({"distill_weight": 0.3})["anchor_weight"]
    0.0
    """
    return {
        "weight": hparams.get("distill_weight", 0.5),
        "temperature": hparams.get("distill_temperature", 2.0),
        "anchor_weight": hparams.get("distill_anchor_weight", 0.0),
        "multilingual_weight": hparams.get("multilingual_teacher_weight", 0.5),
    }


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


BRAINS = {
    "expert": ExpertBrain,
    "multilingual_lora": MultilingualBrain,
    "full_finetune": FullFinetuneBrain,
    "fuse": FusionBrain,
    "distill": DistillBrain,
}


# Prefix of the out-of-domain FLEURS test's CSV and metrics files.
FLEURS_TEST_PREFIX = "fleurs_"


def prepare_data(hparams):
    """Prepares the CSVs of the training corpus and the optional FLEURS test.

    Runs on the main process only (``run_on_main`` in ``__main__``); every
    argument is spelled out so the preparation is reproducible from the
    yaml alone.

    Arguments
    ---------
    hparams : dict
        The loaded hyperparameters.
    """
    prepare = {
        "common_voice": prepare_common_voice,
        "fleurs": prepare_fleurs,
    }
    if hparams["dataset"] not in prepare:
        raise ValueError(
            f"dataset must be one of {sorted(prepare)}, got "
            f"{hparams['dataset']!r}"
        )
    common = {
        "languages": hparams["languages"],
        "max_duration": hparams["encoder_window_s"],
        "skip_prep": hparams["skip_prep"],
        "audio_check": hparams["audio_check"],
        "max_chars_per_second": hparams["max_chars_per_second"],
    }
    run_on_main(
        prepare[hparams["dataset"]],
        kwargs={
            "data_folder": hparams["data_folder"],
            "save_folder": hparams["prep_folder"],
            "max_utterances": hparams["max_utterances"],
            "max_hours": hparams["max_hours"],
            **common,
        },
    )
    if hparams["fleurs_folder"]:
        run_on_main(
            prepare_fleurs,
            kwargs={
                "data_folder": hparams["fleurs_folder"],
                "save_folder": hparams["prep_folder"],
                "splits": ["test"],
                "csv_prefix": FLEURS_TEST_PREFIX,
                **common,
            },
        )


def dataio_prepare(hparams):
    """Builds the train, dev and test datasets of the prepared CSVs.

    Arguments
    ---------
    hparams : dict
        The loaded hyperparameters (``train_csv``, ``valid_csv``,
        ``test_csv``, ``fleurs_test_csv``, ``languages``, ``whisper``).

    Returns
    -------
    dict
        ``{"train": ds, "valid": ds, "test": {metrics prefix: ds}}``: the
        Common Voice (or FLEURS) test has prefix ``""``, the out-of-domain
        FLEURS test ``"fleurs_"``.
    """
    # `$data_root` in a CSV's wav column is the data folder (hand-written
    # CSVs such as the recipe tests'); prepared CSVs hold full paths.
    replacements = {"data_root": hparams["data_folder"]}

    def make(csv_path, name, sort):
        """Builds one split's dataset."""
        return build_dataset(
            csv_path,
            hparams["whisper"].tokenizer,
            hparams["languages"],
            sample_rate=hparams["sample_rate"],
            sort=sort,
            replacements=replacements,
            name=name,
        )

    datasets = {
        "train": make(hparams["train_csv"], "train", hparams["sorting"]),
        "valid": make(hparams["valid_csv"], "valid", "ascending"),
        "test": {"": make(hparams["test_csv"], "test", "ascending")},
    }
    if hparams["fleurs_folder"]:
        datasets["test"][FLEURS_TEST_PREFIX] = make(
            hparams["fleurs_test_csv"], "fleurs test", "ascending"
        )
    return datasets


def attach_experts(hparams):
    """Attaches the pool's experts (fusion, distillation) to Whisper.

    Done here, when training starts, rather than in the yaml, so that the
    yaml loads without a trained pool. The experts join the checkpoint.

    Arguments
    ---------
    hparams : dict
        The loaded hyperparameters (``expert_pool``, ``languages``,
        ``untrained_experts`` and the ``lora_*`` shape of untrained
        experts, optional ``extra_experts``: fresh trainable slots such as
        the distillation student, optional ``expert_scale``: multiplier of
        the pool's updates, fuse.yaml's expert soup). Distillation also reads
        ``multilingual_teacher`` (one more slot, loaded and frozen) and
        ``student_init`` (loaded into the student here, so that a resumed
        run's checkpoint, recovered when training starts, wins over it).

    Returns
    -------
    WhisperLoRAExperts
        Frozen language experts followed by the trainable extra slots.
    """
    languages = list(hparams["languages"])
    extra = list(hparams.get("extra_experts") or [])
    distill = hparams.get("system") == "distill"
    if distill and hparams.get("multilingual_teacher"):
        extra.append(MULTILINGUAL_TEACHER)
    if hparams["untrained_experts"]:
        if hparams.get("expert_scale", 1.0) != 1.0:
            raise ValueError(
                "expert_scale multiplies the pool's trained experts; with "
                "untrained_experts=True there are none to scale: leave it at 1"
            )
        experts = WhisperLoRAExperts(
            hparams["whisper"],
            expert_names=languages + extra,
            rank=hparams["lora_rank"],
            alpha=hparams["lora_alpha"],
            dropout=hparams["lora_dropout"],
            targets=hparams["lora_targets"],
            parts=hparams["lora_parts"],
            layers=hparams["lora_layers"],
        )
        experts.set_trainable(
            experts=range(len(languages), len(languages) + len(extra))
        )
    else:
        experts = attach_pool(
            hparams["whisper"],
            hparams["expert_pool"],
            languages,
            extra_experts=extra,
            scale=hparams.get("expert_scale", 1.0),
        )
    if distill:
        prepare_distill_pool(
            experts,
            multilingual_teacher=hparams.get("multilingual_teacher"),
            student_init=hparams.get("student_init"),
            shared_adapter=getattr(hparams["whisper"], "shared_adapter", None),
        )
    hparams["checkpointer"].add_recoverable("experts", experts)
    return experts


if __name__ == "__main__":
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:])
    sb.utils.distributed.ddp_init_group(run_opts)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    if hparams["system"] == "distill":
        # Wrong loss weights fail now, not after the data preparation.
        check_distill_options(**distill_options(hparams))
        check_teacher_soup(
            hparams.get("teacher_soup"),
            bool(hparams.get("multilingual_teacher")),
        )
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )

    prepare_data(hparams)
    datasets = dataio_prepare(hparams)
    if hparams["system"] in ("fuse", "distill"):
        hparams["experts"] = attach_experts(hparams)
    # A run killed while saving leaves a checkpoint that looks complete;
    # set it aside so recovery resumes from the previous one.
    run_on_main(
        quarantine_incomplete_checkpoints, args=[hparams["checkpointer"]]
    )

    brain = BRAINS[hparams["system"]](
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    brain.fit(
        brain.hparams.epoch_counter,
        datasets["train"],
        datasets["valid"],
        train_loader_kwargs=train_loader_options(
            datasets["train"],
            hparams["train_dataloader_opts"],
            dynamic=hparams.get("dynamic_batching", False),
            sampler=hparams.get("dynamic_batch_sampler"),
        ),
        valid_loader_kwargs=hparams["valid_dataloader_opts"],
    )
    for prefix, test_set in datasets["test"].items():
        brain.metrics_prefix = prefix
        brain.evaluate(
            test_set,
            min_key="loss",
            test_loader_kwargs=hparams["test_dataloader_opts"],
        )
    run_on_main(export_run, kwargs={"brain": brain})
