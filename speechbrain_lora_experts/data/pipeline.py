"""SpeechBrain data pipeline: audio, Whisper prompts and targets per utterance.

Every utterance becomes (SpeechBrain dynamic items):

* ``sig``: mono 16 kHz audio (stereo and 44.1/48 kHz clips converted here);
* ``tokens_bos``: decoder input ``[sot, <|lang|>, transcribe, notimestamps]
  + text``;
* ``tokens_eos``: the targets, shifted by one (``... + text + [eot]``);
* ``lang_id``: the index of the utterance's language among the run's target
  languages (expert index, gate label).

The first target is the language token: the language-agnostic systems learn
it, the language-aware ones mask it (see ``target_mask``). Transcripts keep
casing and punctuation; a leading space is added for languages written with
spaces, as Whisper's own outputs start.

Authors
 * speechbrain-lora-experts developers 2026
"""

import logging

import torch

import speechbrain as sb
from speechbrain_lora_experts.data.audio import load_audio
from speechbrain_lora_experts.data.manifest import KeepUnknownVariables
from speechbrain_lora_experts.languages import language_token, uses_cer

logger = logging.getLogger(__name__)

PROMPT_LENGTH = 4  # sot, language, task, notimestamps
MAX_TARGET_POSITIONS = 448  # Whisper's decoder length


class NoDataError(ValueError):
    """A target language has no utterances in a data split.

    Example
    -------
    >>> issubclass(NoDataError, ValueError)
    True
    """


def text_tokens(tokenizer, text, lang):
    """Token ids of a transcript (no special tokens).

    Arguments
    ---------
    tokenizer : transformers.WhisperTokenizer
        Whisper's tokenizer.
    text : str
        The transcript.
    lang : str
        Its language: a leading space is added unless it is scored by
        character (Whisper's own outputs start so).

    Returns
    -------
    list of int
        The token ids.

    Example
    -------
    >>> from speechbrain_lora_experts.testing.tiny_whisper import (
    ...     build_whisper_tokenizer,
    ... )
    >>> tok = build_whisper_tokenizer()
    >>> tok.decode(text_tokens(tok, "Hallo Welt", "de"))
    ' Hallo Welt'
    """
    text = text.strip()
    if not uses_cer(lang):
        text = " " + text
    return tokenizer.encode(text, add_special_tokens=False)


def prompt_ids(tokenizer, lang, task="transcribe"):
    """``[sot, <|lang|>, <|task|>, notimestamps]`` for one language.

    Arguments
    ---------
    tokenizer : transformers.WhisperTokenizer
        Whisper's tokenizer.
    lang : str
        The language of the prompt.
    task : str
        ``transcribe`` or ``translate``.

    Returns
    -------
    list of int
        The four prompt token ids.

    Example
    -------
    >>> from speechbrain_lora_experts.testing.tiny_whisper import (
    ...     build_whisper_tokenizer,
    ... )
    >>> tok = build_whisper_tokenizer()
    >>> tok.convert_ids_to_tokens(prompt_ids(tok, "de"))
    ['<|startoftranscript|>', '<|de|>', '<|transcribe|>', '<|notimestamps|>']
    """
    tokens = [
        "<|startoftranscript|>",
        language_token(lang),
        f"<|{task}|>",
        "<|notimestamps|>",
    ]
    ids = tokenizer.convert_tokens_to_ids(tokens)
    if ids[1] == tokenizer.unk_token_id or ids[1] is None:
        raise ValueError(
            f"this Whisper's tokenizer has no {tokens[1]} token; it cannot "
            f"transcribe language {lang!r}"
        )
    return ids


def target_mask(tokens_eos_lens, shape, language_aware):
    """``[B, T]`` mask of target positions that carry loss.

    Padding never counts; the task and notimestamps targets (fixed) never
    count; the language target counts only when the language is not given.

    Arguments
    ---------
    tokens_eos_lens : torch.Tensor
        Relative lengths of the targets (SpeechBrain convention).
    shape : tuple
        ``(B, T)`` of the padded targets.
    language_aware : bool
        Scenario of the system being trained.

    Returns
    -------
    torch.Tensor
        ``[B, T]`` float mask, 1 where the target carries loss.

    Example
    -------
    >>> lens = torch.tensor([1.0, 0.5])
    >>> target_mask(lens, (2, 6), language_aware=True)
    tensor([[0., 0., 0., 1., 1., 1.],
            [0., 0., 0., 0., 0., 0.]])
    >>> target_mask(lens, (2, 6), language_aware=False)[0]
    tensor([1., 0., 0., 1., 1., 1.])
    """
    batch, steps = shape
    lengths = torch.round(tokens_eos_lens * steps).long()
    positions = torch.arange(steps, device=tokens_eos_lens.device)
    mask = positions.unsqueeze(0) < lengths.unsqueeze(1)
    first_text = PROMPT_LENGTH - 1
    fixed = positions < first_text
    if not language_aware:
        fixed = fixed & (positions != 0)
    return (mask & ~fixed.unsqueeze(0)).float()


def build_dataset(
    csv_path,
    tokenizer,
    languages,
    sample_rate=16000,
    sort="ascending",
    replacements=None,
    name="data",
    require_all_languages=True,
):
    """A ``DynamicItemDataset`` over a prepared CSV for the given languages.

    Arguments
    ---------
    csv_path : str
        CSV with columns ``ID, duration, wav, spk_id, wrd, lang``.
    tokenizer : transformers.WhisperTokenizer
        Whisper's tokenizer.
    languages : list of str
        Target languages (canonical codes); their order defines ``lang_id``.
        Rows of other languages are left out (counted in the log).
    sample_rate : int
        Audio is resampled to this rate.
    sort : str
        ``ascending``, ``descending`` or ``random`` (by duration).
    replacements : dict
        ``$placeholders`` in the CSV.
    name : str
        Used in messages (train/valid/test).
    require_all_languages : bool
        Raise ``NoDataError`` when a target language has no rows.

    Returns
    -------
    speechbrain.dataio.dataset.DynamicItemDataset
        Items with ``id``, ``sig``, ``wrd``, ``lang``, ``lang_id``,
        ``duration``, ``tokens_bos`` and ``tokens_eos``.

    Raises
    ------
    NoDataError
        A target language has no rows (with ``require_all_languages``).

    Example
    -------
    >>> import shutil, tempfile
    >>> import numpy as np
    >>> import soundfile as sf
    >>> from speechbrain_lora_experts.testing.tiny_whisper import (
    ...     build_whisper_tokenizer,
    ... )
    >>> tmp = tempfile.mkdtemp()
    >>> sf.write(f"{tmp}/a.wav", np.zeros(8000, dtype="float32"), 8000)
    >>> csv_path = f"{tmp}/test.csv"
    >>> with open(csv_path, "w", encoding="utf-8") as f:
    ...     _ = f.write(
    ...         "ID,duration,wav,spk_id,wrd,lang\\n"
    ...         "es1,2.0,$root/a.wav,s2,Hola mundo,es\\n"
    ...         "de1,1.0,$root/a.wav,s1,Hallo Welt,de\\n"
    ...         "fr1,0.5,$root/a.wav,s3,Bonjour,fr\\n"
    ...     )
    >>> tok = build_whisper_tokenizer()
    >>> data = build_dataset(
    ...     csv_path, tok, ["es", "de"], replacements={"root": tmp}
    ... )
    >>> [item["id"] for item in data]  # no fr, shortest first
    ['de1', 'es1']
    >>> item = data[0]
    >>> item["lang_id"], item["sig"].shape  # 1 s at 8 kHz, read at 16 kHz
    (1, torch.Size([16000]))
    >>> tok.decode(item["tokens_bos"])
    '<|startoftranscript|><|de|><|transcribe|><|notimestamps|> Hallo Welt'
    >>> tok.decode(item["tokens_eos"])  # shifted by one, then eot
    '<|de|><|transcribe|><|notimestamps|> Hallo Welt<|endoftext|>'
    >>> build_dataset(csv_path, tok, ["de", "it"], replacements={"root": tmp})
    Traceback (most recent call last):
    ...
    speechbrain_lora_experts.data.pipeline.NoDataError: data ... for ['it'] ...
    >>> with open(csv_path, "w", encoding="utf-8") as f:  # header only
    ...     _ = f.write("ID,duration,wav,spk_id,wrd,lang\\n")
    >>> build_dataset(csv_path, tok, ["de"], name="test")
    Traceback (most recent call last):
    ...
    speechbrain_lora_experts.data.pipeline.NoDataError: test data ... has no utterances: ...
    >>> shutil.rmtree(tmp)
    """
    languages = list(languages)
    with open(csv_path, encoding="utf-8") as f:
        has_rows = sum(1 for line in f if line.strip()) > 1
    if not has_rows:
        # SpeechBrain fails on an empty CSV with a bare IndexError.
        raise NoDataError(
            f"{name} data {csv_path} has no utterances: preparation kept "
            "no row of this split (its log says why, e.g. clips longer "
            "than encoder_window_s); fix the data or the options, or give "
            "this split a CSV of your own"
        )
    dataset = sb.dataio.dataset.DynamicItemDataset.from_csv(
        # Transcripts may contain "$5": keep unknown $names as text.
        csv_path,
        replacements=KeepUnknownVariables(replacements or {}),
    )
    counts = {}
    for row in dataset.data.values():
        counts[row["lang"]] = counts.get(row["lang"], 0) + 1
    missing = [lang for lang in languages if not counts.get(lang)]
    if missing and require_all_languages:
        raise NoDataError(
            f"{name} data {csv_path} has no utterances for {missing} "
            f"(languages present: {sorted(counts)}); prepare data for these "
            "languages or drop them from `languages`"
        )
    others = {k: v for k, v in counts.items() if k not in languages}
    if others:
        logger.info(
            "%s: leaving out %d utterances of non-target languages %s",
            name,
            sum(others.values()),
            others,
        )
    dataset = dataset.filtered_sorted(
        key_test={"lang": lambda lang: lang in languages},
        sort_key=None if sort == "random" else "duration",
        reverse=sort == "descending",
    )
    index = {lang: i for i, lang in enumerate(languages)}
    prompts = {lang: prompt_ids(tokenizer, lang) for lang in languages}
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    max_text = MAX_TARGET_POSITIONS - PROMPT_LENGTH

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav):
        """Loads the clip as mono audio at ``sample_rate``."""
        return load_audio(wav, sample_rate)

    @sb.utils.data_pipeline.takes("wrd", "lang")
    @sb.utils.data_pipeline.provides(
        "lang_id", "tokens_list", "tokens_bos", "tokens_eos"
    )
    def text_pipeline(wrd, lang):
        """Yields the expert index, text tokens, decoder inputs, targets."""
        yield index[lang]
        tokens = text_tokens(tokenizer, wrd, lang)
        if len(tokens) > max_text:
            logger.warning(
                "transcript truncated to Whisper's %d tokens: %r",
                max_text,
                wrd[:60],
            )
            tokens = tokens[:max_text]
        yield tokens
        yield torch.LongTensor(prompts[lang] + tokens)
        yield torch.LongTensor(prompts[lang][1:] + tokens + [eot])

    sb.dataio.dataset.add_dynamic_item([dataset], audio_pipeline)
    sb.dataio.dataset.add_dynamic_item([dataset], text_pipeline)
    sb.dataio.dataset.set_output_keys(
        [dataset],
        ["id", "sig", "wrd", "lang", "lang_id", "duration"]
        + ["tokens_bos", "tokens_eos"],
    )
    return dataset
