"""Per-utterance errors of recipe runs and bootstrap intervals over them.

A recipe run writes SpeechBrain ``ErrorRateStats`` files,
``<prefix>wer_<lang>.txt``, whose alignment section has one header per
utterance::

    de_common_voice_de_123, %WER 25.00 [ 1 / 4, 0 ins, 0 del, 1 sub ]

followed by the reference, operation and hypothesis lines.
:func:`read_alignments` reads them back into per-utterance edit and unit
counts (units are words, or characters for CER languages) and the
reference tokens.

:class:`Bootstrap` resamples a test set and gives every system the same
resamples, so that intervals of paired differences are paired:

* per language, the units of resampling are the test sentences: the
  utterances of one reference text move together (a corpus that reads a
  sentence twice, by two voices, does not count it as two independent
  draws). Without repeated sentences this is the plain bootstrap over
  utterances.
* a resample's error rate of a language is its edits over its reference
  units (a corpus rate, as ``metrics.json`` has it); the macro average is
  the mean over languages; with several training seeds, the mean over the
  seeds of the macro (the test set is one for all seeds, so every seed
  sees the same resample).
* the paired relative gain of a system over a baseline is computed on
  each resample from both systems' macros: ``100 (base - system) / base``.

Intervals are percentiles of the resampled values. They measure how much
the numbers would move with another test set of the same size; training
seeds' spread is reported separately.

Authors
 * speechbrain-lora-experts developers 2026
"""

import glob
import math
import os
import re

import numpy as np

_HEADER = re.compile(
    r"^(?P<uid>.+), %WER (?P<wer>\S+) \[ (?P<edits>\d+) / (?P<units>\d+), "
    r"(?P<ins>\d+) ins, (?P<dels>\d+) del, (?P<subs>\d+) sub \]\s*$"
)
EMPTY = "<eps>"


def read_alignments(path):
    """Per-utterance counts of one ``wer_<lang>.txt`` file.

    Arguments
    ---------
    path : str
        A file written by SpeechBrain's ``ErrorRateStats.write_stats``.

    Returns
    -------
    dict
        ``utterance id -> (edits, reference units, reference tokens)``;
        the tokens (a tuple, without SpeechBrain's ``<eps>`` fillers) tell
        which utterances read the same sentence.

    Example
    -------
    >>> import tempfile
    >>> text = '''%WER 20.00 [ 1 / 5, 0 ins, 0 del, 1 sub ]
    ... ================================================================
    ... a1, %WER 50.00 [ 1 / 2, 0 ins, 0 del, 1 sub ]
    ... guten ; tag
    ...   =   ;  S
    ... guten ; tat
    ... ================================================================
    ... a2, %WER 0.00 [ 0 / 3, 0 ins, 0 del, 0 sub ]
    ... wie ; geht ; es
    ...  =  ;  =   ; =
    ... wie ; geht ; es
    ... '''
    >>> with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
    ...     _ = f.write(text)
    ...     f.flush()
    ...     read_alignments(f.name)["a1"]
    (1, 2, ('guten', 'tag'))
    """
    out = {}
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        match = _HEADER.match(line)
        if not match:
            continue
        ref = lines[i + 1] if i + 1 < len(lines) else ""
        tokens = tuple(
            t.strip() for t in ref.split(";") if t.strip() not in ("", EMPTY)
        )
        uid = match["uid"]
        if uid in out:
            raise ValueError(f"{path}: utterance {uid!r} listed twice")
        out[uid] = (int(match["edits"]), int(match["units"]), tokens)
    return out


def read_run(folder, prefix=""):
    """Every language's per-utterance counts of one run and test set.

    Arguments
    ---------
    folder : str
        The run's output folder.
    prefix : str
        ``""`` for the in-domain test, ``"fleurs_"`` for the FLEURS one.

    Returns
    -------
    dict
        ``language -> {utterance id -> (edits, units, tokens)}``; empty
        when the run wrote no such files.
    """
    out = {}
    for path in sorted(glob.glob(os.path.join(folder, f"{prefix}wer_*.txt"))):
        lang = os.path.basename(path)[len(f"{prefix}wer_") : -len(".txt")]
        if "_" in lang:  # another prefix's file, e.g. fleurs_wer_de
            continue
        out[lang] = read_alignments(path)
    return out


def select(run, keep):
    """The utterances of ``run`` whose id passes ``keep(uid)``.

    Example
    -------
    >>> run = {"de": {"x1": (0, 2, ()), "y1": (1, 2, ())}}
    >>> select(run, lambda uid: uid.startswith("x"))
    {'de': {'x1': (0, 2, ())}}
    """
    out = {}
    for lang, utts in run.items():
        kept = {uid: v for uid, v in utts.items() if keep(uid)}
        if kept:
            out[lang] = kept
    return out


def error_rates(run):
    """Per-language corpus error rates (%) and their macro average.

    Example
    -------
    >>> error_rates({"de": {"a": (1, 4, ())}, "it": {"b": (0, 2, ())}})
    ({'de': 25.0, 'it': 0.0}, 12.5)
    """
    rates = {}
    for lang, utts in sorted(run.items()):
        units = sum(u for _, u, _ in utts.values())
        if units:
            rates[lang] = 100.0 * sum(e for e, _, _ in utts.values()) / units
    macro = sum(rates.values()) / len(rates) if rates else None
    return rates, macro


class Bootstrap:
    """Shared resamples of one test set (see the module docstring).

    Arguments
    ---------
    runs : list of dict
        Runs as :func:`read_run` returns them (after :func:`select`). The
        test set is the utterances that every run has, per language; an
        utterance missing from a run is left out for all of them.
    n_resamples : int
        Number of resamples.
    seed : int
        Seed of the resampling.
    by_sentence : bool
        Resample sentences (utterances with the same reference tokens move
        together) instead of single utterances.

    Example
    -------
    >>> run = {"de": {str(i): (i % 2, 1, (str(i),)) for i in range(100)}}
    >>> boot = Bootstrap([run], n_resamples=200, seed=0)
    >>> low, high = boot.interval(boot.macro([run]))
    >>> bool(30 < low < 50 < high < 70)
    True
    """

    def __init__(self, runs, n_resamples=1000, seed=0, by_sentence=True):
        self.n_resamples = n_resamples
        self.seed = seed
        self.by_sentence = by_sentence
        languages = set.intersection(*(set(run) for run in runs))
        self.dropped = {}
        self.uids, self.clusters, self.counts = {}, {}, {}
        rng = np.random.default_rng(seed)
        for lang in sorted(languages):
            common = set.intersection(*(set(run[lang]) for run in runs))
            union = set.union(*(set(run[lang]) for run in runs))
            if len(union) > len(common):
                self.dropped[lang] = len(union) - len(common)
            uids = sorted(common)
            if not uids:
                continue
            self.uids[lang] = uids
            first = runs[0][lang]
            if by_sentence:
                labels = {}
                cluster = [
                    labels.setdefault(first[uid][2] or (uid,), len(labels))
                    for uid in uids
                ]
            else:
                cluster = list(range(len(uids)))
            self.clusters[lang] = np.asarray(cluster)
            k = int(self.clusters[lang].max()) + 1
            # How often each sentence is drawn in each resample: drawing k
            # sentences with replacement is a multinomial draw of counts.
            self.counts[lang] = rng.multinomial(
                k, np.full(k, 1.0 / k), size=n_resamples
            ).astype(np.float64)

    @property
    def languages(self):
        """Languages of the test set, sorted."""
        return sorted(self.uids)

    def sizes(self):
        """Per language: utterances and resampling units (sentences)."""
        return {
            lang: dict(
                utterances=len(self.uids[lang]),
                sentences=int(self.clusters[lang].max()) + 1,
            )
            for lang in self.languages
        }

    def language_rates(self, run):
        """``language -> resampled error rates [n_resamples]`` of a run."""
        out = {}
        for lang in self.languages:
            utts = run[lang]
            k = self.counts[lang].shape[1]
            edits, units = np.zeros(k), np.zeros(k)
            for uid, c in zip(self.uids[lang], self.clusters[lang]):
                edits[c] += utts[uid][0]
                units[c] += utts[uid][1]
            total_units = self.counts[lang] @ units
            with np.errstate(divide="ignore", invalid="ignore"):
                out[lang] = 100.0 * (self.counts[lang] @ edits) / total_units
        return out

    def macro(self, seed_runs):
        """Resampled macro error rate, averaged over training seeds.

        Arguments
        ---------
        seed_runs : list of dict
            One run per training seed, all of one system.

        Returns
        -------
        numpy.ndarray
            ``[n_resamples]``.
        """
        per_seed = []
        for run in seed_runs:
            rates = self.language_rates(run)
            per_seed.append(np.mean([rates[lang] for lang in rates], axis=0))
        return np.mean(per_seed, axis=0)

    def paired_gain(self, system_runs, baseline_runs):
        """Resampled relative gain (%) of a system over a baseline.

        Arguments
        ---------
        system_runs, baseline_runs : list of dict
            Runs of the same training seeds, in the same order.

        Returns
        -------
        numpy.ndarray
            ``100 (baseline - system) / baseline`` per resample.
        """
        system = self.macro(system_runs)
        base = self.macro(baseline_runs)
        with np.errstate(divide="ignore", invalid="ignore"):
            return 100.0 * (base - system) / base

    @staticmethod
    def share_at_most(samples, value):
        """Share of the finite resampled values that are <= ``value``.

        For a gain, the share of resamples where the system is not better
        than the baseline: a one-sided bootstrap p-value.

        Example
        -------
        >>> Bootstrap.share_at_most(np.array([-1.0, 2.0, 3.0, np.nan]), 0.0)
        0.3333333333333333
        """
        samples = np.asarray(samples, dtype=float)
        samples = samples[np.isfinite(samples)]
        return float(np.mean(samples <= value)) if len(samples) else math.nan

    @staticmethod
    def interval(samples, level=0.95):
        """Percentile interval of finite resampled values.

        Example
        -------
        >>> [round(x, 6) for x in Bootstrap.interval(np.arange(101.0))]
        [2.5, 97.5]
        """
        samples = np.asarray(samples, dtype=float)
        samples = samples[np.isfinite(samples)]
        if not len(samples):
            return (math.nan, math.nan)
        tail = 50.0 * (1.0 - level)
        low, high = np.percentile(samples, [tail, 100.0 - tail])
        return (float(low), float(high))
