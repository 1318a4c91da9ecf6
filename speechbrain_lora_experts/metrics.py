"""Per-language WER/CER, macro and micro averages, and LID accuracy.

``MultilingualScorer`` keeps one SpeechBrain ``ErrorRateStats`` per
language, fed with the units of ``text.scoring_units`` (normalised words,
or characters for languages written without spaces), so the per-language
files keep SpeechBrain's Kaldi-style ``wer.txt`` format and alignments.

Averages:

* ``macro``: mean of the per-language error rates, every language weighs
  the same; the number to compare multilingual systems on.
* ``micro``: all edits over all reference units. It pools words and
  characters when WER and CER languages are mixed, so ``micro_by_metric``
  also gives the pooled rate within each metric.

Per language, ``median_utt_error_rate`` sits beside the corpus rate: one
looping hypothesis can push a corpus WER far above 100 %, the median shows
whether that is one utterance or the whole set.

A reference with nothing left after normalisation (``"..."``) has no unit
to score: it would count as ``0 / 0``, or its hypothesis as pure
insertions. Such utterances are skipped and counted
(``skipped_empty_references``), never scored.

Authors
 * speechbrain-lora-experts developers 2026
"""

import json
import logging
import os
import statistics

from speechbrain.utils.metric_stats import ErrorRateStats
from speechbrain_lora_experts.languages import canonical_language
from speechbrain_lora_experts.text import error_rate_name, scoring_units

logger = logging.getLogger(__name__)


class MultilingualScorer:
    """Collects hypotheses and references of many languages and scores them.

    Arguments
    ---------
    english_spelling : str, optional
        ``normalizer.json`` (or its folder) for the English normaliser's
        British/American spelling map; see ``text.evaluation_scheme``.

    Example
    -------
    >>> scorer = MultilingualScorer()
    >>> scorer.append(
    ...     ids=["a", "b"],
    ...     languages=["de", "zh"],
    ...     hypotheses=["Guten Morgen", "你好世间"],
    ...     references=["Guten Abend!", "你好，世界。"],
    ...     predicted_languages=["de", "ja"],
    ... )
    >>> summary = scorer.summary()
    >>> summary["per_language"]["de"]["error_rate"]
    50.0
    >>> summary["per_language"]["zh"]["metric"]
    'CER'
    >>> summary["macro"], round(summary["micro"], 2), summary["lid_accuracy"]
    (37.5, 33.33, 0.5)
    """

    def __init__(self, english_spelling=None):
        self.english_spelling = english_spelling
        self.clear()

    def clear(self):
        """Forget everything appended so far."""
        self.stats = {}
        self._ids = set()
        # language -> [correct, total] over utterances with a prediction.
        self._lid = {}
        # language -> utterances whose reference normalises to nothing.
        self.skipped_empty = {}

    def append(
        self,
        ids,
        languages,
        hypotheses,
        references,
        predicted_languages=None,
    ):
        """Adds a batch of utterances.

        Arguments
        ---------
        ids : list of str
            Utterance ids (unique over everything appended).
        languages : list of str
            True language per utterance; decides normaliser and metric.
        hypotheses, references : list of str
            Raw texts; both are normalised here.
        predicted_languages : list of str, optional
            Detected language per utterance (language-agnostic decoding);
            ``None`` entries mean no prediction.
        """
        n = len(ids)
        if predicted_languages is None:
            predicted_languages = [None] * n
        lengths = {
            len(languages),
            len(hypotheses),
            len(references),
            len(predicted_languages),
        }
        if lengths != {n}:
            raise ValueError(
                "ids, languages, hypotheses, references and "
                "predicted_languages must have the same length"
            )
        for uid, lang, hyp, ref, pred in zip(
            ids, languages, hypotheses, references, predicted_languages
        ):
            uid = str(uid)
            if uid in self._ids:
                raise ValueError(f"utterance id {uid!r} appended twice")
            self._ids.add(uid)
            lang = canonical_language(lang)
            units = [
                scoring_units(text, lang, self.english_spelling)
                for text in (hyp, ref)
            ]
            if not units[1]:
                self._skip_empty(uid, lang, ref)
                continue
            if lang not in self.stats:
                self.stats[lang] = ErrorRateStats()
                self._lid[lang] = [0, 0]
            self.stats[lang].append([uid], [units[0]], [units[1]])
            if pred is not None:
                self._lid[lang][0] += canonical_language(pred) == lang
                self._lid[lang][1] += 1

    def _skip_empty(self, uid, lang, ref):
        n = self.skipped_empty.get(lang, 0) + 1
        self.skipped_empty[lang] = n
        if n <= 3:
            logger.warning(
                "not scoring %s (%s): its reference %r has nothing left "
                "after normalisation; counted in skipped_empty_references",
                uid,
                lang,
                ref,
            )

    def _language_summary(self, lang):
        stats = self.stats[lang]
        summary = stats.summarize()
        n_units = summary["num_scored_tokens"]
        utt_rates = [
            100.0 * s["num_edits"] / s["num_ref_tokens"]
            for s in stats.scores
            if s["num_ref_tokens"] > 0
        ]
        correct, total = self._lid[lang]
        return {
            "metric": error_rate_name(lang),
            # SpeechBrain reports 0 for a language without reference
            # units; None keeps it out of the macro average instead.
            "error_rate": summary["error_rate"] if n_units else None,
            "n_utts": summary["num_ref_sents"],
            "n_units": n_units,
            "n_edits": summary["num_edits"],
            "insertions": summary["insertions"],
            "deletions": summary["deletions"],
            "substitutions": summary["substitutions"],
            "median_utt_error_rate": (
                statistics.median(utt_rates) if utt_rates else None
            ),
            "lid_accuracy": correct / total if total else None,
        }

    def summary(self):
        """All numbers as a JSON-serialisable dict.

        Returns
        -------
        dict
            ``per_language`` (language -> ``metric``, ``error_rate`` in %,
            ``n_utts``, ``n_units``, ``n_edits``, ``insertions``,
            ``deletions``, ``substitutions``, ``median_utt_error_rate``,
            ``lid_accuracy``), ``macro``, ``micro``, ``micro_by_metric``,
            ``n_languages``, ``n_utts``, ``n_units``, ``lid_accuracy``
            (over utterances with a predicted language; None if none),
            ``skipped_empty_references`` (language -> utterances not
            scored because their reference normalises to nothing).
        """
        per_language = {
            lang: self._language_summary(lang) for lang in sorted(self.stats)
        }
        rates = [
            s["error_rate"]
            for s in per_language.values()
            if s["error_rate"] is not None
        ]
        by_metric = {}
        for s in per_language.values():
            pooled = by_metric.setdefault(s["metric"], [0, 0])
            pooled[0] += s["n_edits"]
            pooled[1] += s["n_units"]
        edits = sum(p[0] for p in by_metric.values())
        units = sum(p[1] for p in by_metric.values())
        correct = sum(c for c, _ in self._lid.values())
        predicted = sum(t for _, t in self._lid.values())
        return {
            "per_language": per_language,
            "macro": sum(rates) / len(rates) if rates else None,
            "micro": 100.0 * edits / units if units else None,
            "micro_by_metric": {
                metric: 100.0 * e / u if u else None
                for metric, (e, u) in sorted(by_metric.items())
            },
            "n_languages": len(per_language),
            "n_utts": sum(s["n_utts"] for s in per_language.values()),
            "n_units": units,
            "lid_accuracy": correct / predicted if predicted else None,
            "skipped_empty_references": dict(
                sorted(self.skipped_empty.items())
            ),
        }

    def write(self, folder, prefix=""):
        """Writes ``<prefix>metrics.json`` and ``<prefix>wer_<lang>.txt``.

        The wer files are SpeechBrain's ``ErrorRateStats.write_stats``
        output (its header says ``%WER`` also for CER languages, whose
        units are characters; ``metrics.json`` names the metric).

        Arguments
        ---------
        folder : str
            Output folder, created if missing.
        prefix : str
            Prepended to every file name (e.g. ``"test_"``).

        Returns
        -------
        dict
            The summary that was written.
        """
        os.makedirs(folder, exist_ok=True)
        summary = self.summary()
        with open(
            os.path.join(folder, f"{prefix}metrics.json"), "w", encoding="utf-8"
        ) as f:
            json.dump(summary, f, indent=2, ensure_ascii=False)
            f.write("\n")
        for lang, stats in self.stats.items():
            path = os.path.join(folder, f"{prefix}wer_{lang}.txt")
            with open(path, "w", encoding="utf-8") as f:
                stats.write_stats(f)
        return summary
