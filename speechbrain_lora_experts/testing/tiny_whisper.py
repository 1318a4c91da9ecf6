"""A tiny, randomly initialised multilingual Whisper built offline.

The folder it writes looks exactly like an ``openai/whisper-*`` hub folder
(config, safetensors weights, feature extractor, Whisper tokenizer with the
special, language and timestamp tokens at their real ids), so every code path
that loads ``openai/whisper-small`` from the hub can be exercised without a
network. The byte-level BPE is trained on a handful of sentences and padded
with unreachable placeholder tokens up to Whisper's 50257 text tokens: ids of
the special tokens then match the real multilingual models (vocabulary 51865).

Authors
 * speechbrain-lora-experts developers 2026
"""

import json
import os

import torch

# Whisper v1/v2 multilingual models know 99 languages; v3 added "yue" (and one
# more id). Keeping 99 makes the fixture id-compatible with whisper-base/small.
N_TEXT_TOKENS = 50257
N_TIMESTAMPS = 1501

_SEED_TEXT = [
    "Hallo Welt, wie geht es dir heute?",
    "Hola mundo, ¿cómo estás hoy?",
    "Ciao mondo, come stai oggi?",
    "Bonjour le monde, comment vas-tu ?",
    "Привет, мир! Как дела сегодня?",
    "你好，世界。今天你好吗？",
    "Hello world, how are you today?",
    "Hallo wereld, hoe gaat het vandaag?",
]


def _languages(n_languages):
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return list(LANGUAGES)[:n_languages]


def build_whisper_tokenizer(n_languages=99, bpe_vocab_size=600):
    """Returns a Whisper tokenizer whose special tokens sit at real ids.

    Arguments
    ---------
    n_languages : int
        99 for the v1/v2 models (vocabulary 51865), 100 for v3 (51866).
    bpe_vocab_size : int
        Size of the learned byte-level BPE before padding.

    Returns
    -------
    transformers.WhisperTokenizer

    Example
    -------
    >>> tok = build_whisper_tokenizer()
    >>> tok.convert_tokens_to_ids(["<|startoftranscript|>", "<|de|>"])
    [50258, 50261]
    >>> len(tok)
    51865
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import WhisperTokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_SEED_TEXT * 20, trainer)
    model = json.loads(bpe.to_str())["model"]
    vocab = dict(model["vocab"])
    merges = [
        tuple(m) if isinstance(m, list) else tuple(m.split(" "))
        for m in model["merges"]
    ]
    # Placeholders keep the special tokens at the ids real checkpoints use.
    index = 0
    while len(vocab) < N_TEXT_TOKENS:
        vocab[f"<|unused{index}|>"] = len(vocab)
        index += 1
    tokenizer = WhisperTokenizer(vocab=vocab, merges=merges)
    specials = (
        ["<|startoftranscript|>"]
        + [f"<|{code}|>" for code in _languages(n_languages)]
        + ["<|translate|>", "<|transcribe|>", "<|startoflm|>"]
        + ["<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"]
        + [f"<|{i * 0.02:.2f}|>" for i in range(N_TIMESTAMPS)]
    )
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    return tokenizer


def tiny_whisper_model(
    d_model=8,
    encoder_layers=1,
    decoder_layers=1,
    ffn_dim=None,
    vocab_size=64,
    seed=None,
    **config,
):
    """An in-memory random ``transformers.WhisperModel`` of toy size.

    For examples and tests that need Whisper's module layout but no
    tokenizer or files (see :func:`make_tiny_whisper` for a hub folder).

    Arguments
    ---------
    d_model : int
        Width (2 attention heads).
    encoder_layers, decoder_layers : int
        Depths.
    ffn_dim : int, optional
        Feed-forward width (default ``d_model``).
    vocab_size : int
        Vocabulary size.
    seed : int, optional
        ``torch.manual_seed`` before the random initialisation.
    **config
        Other ``WhisperConfig`` fields (e.g. ``num_mel_bins``).

    Returns
    -------
    transformers.WhisperModel

    Example
    -------
    >>> model = tiny_whisper_model(encoder_layers=2, seed=0)
    >>> len(model.encoder.layers), model.config.d_model
    (2, 8)
    >>> same = tiny_whisper_model(encoder_layers=2, seed=0)
    >>> torch.equal(
    ...     model.decoder.layers[0].fc1.weight,
    ...     same.decoder.layers[0].fc1.weight,
    ... )
    True
    """
    from transformers import WhisperConfig, WhisperModel

    if seed is not None:
        torch.manual_seed(seed)
    ffn_dim = ffn_dim or d_model
    fields = dict(
        d_model=d_model,
        encoder_layers=encoder_layers,
        decoder_layers=decoder_layers,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=ffn_dim,
        decoder_ffn_dim=ffn_dim,
        vocab_size=vocab_size,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
        decoder_start_token_id=1,
    )
    fields.update(config)
    return WhisperModel(WhisperConfig(**fields))


def make_tiny_whisper(
    folder,
    d_model=64,
    layers=2,
    heads=2,
    ffn_dim=128,
    n_languages=99,
    seed=0,
):
    """Writes a tiny random multilingual Whisper in hub layout to ``folder``.

    Arguments
    ---------
    folder : str or os.PathLike
        Output folder; created if missing. Reused when already complete.
    d_model, layers, heads, ffn_dim : int
        Size of the encoder and decoder (both get ``layers`` layers).
    n_languages : int
        99 (vocabulary 51865, like whisper-base/small) or 100 (v3 layout).
    seed : int
        Seed of the random weights.

    Returns
    -------
    str
        The folder, usable as ``source`` of SpeechBrain's Whisper wrapper or
        in ``WhisperForConditionalGeneration.from_pretrained``.

    Example
    -------
    >>> import tempfile
    >>> folder = make_tiny_whisper(tempfile.mkdtemp())
    >>> sorted(os.listdir(folder))[:3]
    ['config.json', 'generation_config.json', 'model.safetensors']
    """
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

    folder = os.fspath(folder)
    marker = os.path.join(folder, "tokenizer_config.json")
    if os.path.exists(marker):
        return folder
    os.makedirs(folder, exist_ok=True)
    tokenizer = build_whisper_tokenizer(n_languages)
    ids = dict(
        zip(
            ["sot", "eot", "transcribe", "translate", "notimestamps"],
            tokenizer.convert_tokens_to_ids(
                [
                    "<|startoftranscript|>",
                    "<|endoftext|>",
                    "<|transcribe|>",
                    "<|translate|>",
                    "<|notimestamps|>",
                ]
            ),
        )
    )
    config = WhisperConfig(
        vocab_size=len(tokenizer),
        num_mel_bins=80,
        d_model=d_model,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        encoder_ffn_dim=ffn_dim,
        decoder_ffn_dim=ffn_dim,
        max_source_positions=1500,
        max_target_positions=448,
        decoder_start_token_id=ids["sot"],
        bos_token_id=ids["eot"],
        eos_token_id=ids["eot"],
        pad_token_id=ids["eot"],
        begin_suppress_tokens=[220, ids["eot"]],
        suppress_tokens=[],
    )
    config.architectures = ["WhisperForConditionalGeneration"]
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config)
    languages = _languages(n_languages)
    lang_ids = tokenizer.convert_tokens_to_ids(
        [f"<|{code}|>" for code in languages]
    )
    model.generation_config = GenerationConfig(
        decoder_start_token_id=ids["sot"],
        eos_token_id=ids["eot"],
        pad_token_id=ids["eot"],
        bos_token_id=ids["eot"],
        max_length=448,
        is_multilingual=True,
        lang_to_id={f"<|{c}|>": i for c, i in zip(languages, lang_ids)},
        task_to_id={
            "transcribe": ids["transcribe"],
            "translate": ids["translate"],
        },
        no_timestamps_token_id=ids["notimestamps"],
    )
    model.save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
