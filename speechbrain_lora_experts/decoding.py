"""Batched Whisper decoding with a per-utterance language prompt.

A mixed-language batch is decoded in one pass: every utterance carries its
own prompt ``[sot, <|lang|>, transcribe, notimestamps]`` and its own length
bound, and gets exactly the tokens it gets when decoded alone. The LoRA
expert routing (``experts.ExpertRouting``) is set by the caller before
decoding; the batch seen by the model is always ``B`` (greedy) or
``B * beam_size`` with each utterance's beams contiguous (beam search), which
is what the expert layers inflate their per-utterance routing to. For that
reason finished utterances are never dropped from the batch: they keep
being fed ``eot`` and their outputs are ignored.

Why not SpeechBrain's ``S2SWhisperGreedySearcher``/``S2SWhisperBeamSearcher``:
their prompt is read from the tokenizer's mutable prefix state at
construction (per-utterance languages go through ``set_lang_tokens``, which
is never reset), and their only length bound is ``max_decode_ratio`` times
the encoder length, which for Whisper is always the fixed window, i.e. the
same for every utterance. Here prompts and length bounds are explicit
per-utterance tensors, so a looping hypothesis on a short clip stops early.

Suppression follows Whisper: non-speech symbols
(``whisper.get_suppress_tokens``) and every special token except ``eot`` are
never emitted (so no timestamps, language or task tokens), and the first
generated token may be neither a blank nor ``eot``.

Authors
 * speechbrain-lora-experts developers 2026
"""

import math

import torch

from speechbrain_lora_experts.languages import canonical_language
from speechbrain_lora_experts.lid_step import language_logits

#: Default duration bound: ``minimum + per_second * seconds`` new tokens.
#: Whisper text is rarely above ~6 tokens/s for alphabetic languages; CJK
#: and scripts the byte-level BPE splits finely (Thai, Hindi, ...) reach
#: ~10-12. 15/s + 8 never cuts a genuine transcript but stops a loop after
#: a few seconds' worth of tokens instead of Whisper's 224.
TOKENS_PER_SECOND = 15.0
MIN_NEW_TOKENS = 8
#: Whisper's own cap on sampled tokens (``n_text_ctx // 2``).
MAX_NEW_TOKENS = 224


def _token_id(tokenizer, token):
    """Id of ``token``, or None if the tokenizer does not know it."""
    index = tokenizer.convert_tokens_to_ids(token)
    if index is None or tokenizer.convert_ids_to_tokens(index) != token:
        return None
    return index


def _language_id(whisper, code):
    """Id of ``<|code|>`` with an explicit error if the model lacks it."""
    code = canonical_language(code)
    index = _token_id(whisper.tokenizer, f"<|{code}|>")
    if index is None:
        raise ValueError(
            f"Language {code!r} has no token <|{code}|> in this Whisper "
            "tokenizer (v1/v2 multilingual models know 99 languages; 'yue' "
            "needs a v3 model). Use a model that knows the language or drop "
            "it from the language list."
        )
    return index


def prompt_tokens(whisper, languages, device=None):
    """Decoder prompts ``[sot, <|lang|>, transcribe, notimestamps]``.

    Arguments
    ---------
    whisper : speechbrain_lora_experts.whisper.Whisper
        Provides the tokenizer and special-token ids.
    languages : list of str
        One language per utterance (Whisper codes, or any name accepted by
        ``languages.canonical_language``).
    device : torch.device, optional
        Where to put the result.

    Returns
    -------
    torch.LongTensor
        ``[B, 4]``.

    Raises
    ------
    ValueError
        If the tokenizer has no token for a language.

    Example
    -------
    >>> import shutil, tempfile
    >>> from speechbrain_lora_experts.testing.tiny_whisper import (
    ...     make_tiny_whisper,
    ... )
    >>> from speechbrain_lora_experts.whisper import Whisper
    >>> tmp = tempfile.mkdtemp()
    >>> hub = make_tiny_whisper(tmp + "/hub", d_model=8, layers=1, ffn_dim=8)
    >>> whisper = Whisper(hub, tmp + "/save", encoder_window_s=0.1)
    >>> prompts = prompt_tokens(whisper, ["de", "Spanish"])
    >>> prompts.shape
    torch.Size([2, 4])
    >>> whisper.tokenizer.convert_ids_to_tokens(prompts[1].tolist())
    ['<|startoftranscript|>', '<|es|>', '<|transcribe|>', '<|notimestamps|>']
    >>> prompt_tokens(whisper, ["yue"])  # a v3 language: v1/v2 lack it
    Traceback (most recent call last):
    ...
    ValueError: Language 'yue' has no token <|yue|> in this Whisper ...
    >>> shutil.rmtree(tmp)
    """
    lang_ids = [_language_id(whisper, code) for code in languages]
    prompts = torch.tensor(
        [
            [whisper.bos, i, whisper.transcribe, whisper.no_timestamps]
            for i in lang_ids
        ],
        dtype=torch.long,
    ).view(-1, 4)
    return prompts.to(device) if device is not None else prompts


def language_codes(whisper):
    """Whisper language codes the model's tokenizer has tokens for.

    Arguments
    ---------
    whisper : speechbrain_lora_experts.whisper.Whisper
        SpeechBrain's Whisper.

    Returns
    -------
    list of str
        The codes, in the tokenizer's order.

    Example
    -------
    >>> import shutil, tempfile
    >>> from speechbrain_lora_experts.testing.tiny_whisper import (
    ...     make_tiny_whisper,
    ... )
    >>> from speechbrain_lora_experts.whisper import Whisper
    >>> tmp = tempfile.mkdtemp()
    >>> hub = make_tiny_whisper(tmp + "/hub", d_model=8, layers=1, ffn_dim=8)
    >>> whisper = Whisper(hub, tmp + "/save", encoder_window_s=0.1)
    >>> codes = language_codes(whisper)
    >>> len(codes), codes[:3], "yue" in codes  # v1/v2: 99 languages
    (99, ['en', 'zh', 'de'], False)
    >>> shutil.rmtree(tmp)
    """
    return [
        code
        for code in whisper.all_language_codes
        if _token_id(whisper.tokenizer, f"<|{code}|>") is not None
    ]


@torch.no_grad()
def detect_language(whisper, enc_states, candidates=None):
    """Spoken-language identification from one decoder step after ``sot``.

    Arguments
    ---------
    whisper : speechbrain_lora_experts.whisper.Whisper
        The model (with any expert routing already set).
    enc_states : torch.Tensor
        Encoder output ``[B, frames, d_model]``.
    candidates : list of str, optional
        Languages to choose from; default: every language token of the
        tokenizer. Restricting to the languages of an experiment keeps a
        bad detection from picking a language nobody speaks.

    Returns
    -------
    codes : list of str
        Most probable candidate per utterance.
    probs : torch.Tensor
        ``[B, len(candidates)]``, softmax over the candidates only.

    Example
    -------
    >>> import shutil, tempfile
    >>> from speechbrain_lora_experts.testing.tiny_whisper import (
    ...     make_tiny_whisper,
    ... )
    >>> from speechbrain_lora_experts.whisper import Whisper
    >>> tmp = tempfile.mkdtemp()
    >>> hub = make_tiny_whisper(tmp + "/hub", d_model=8, layers=1, ffn_dim=8)
    >>> whisper = Whisper(hub, tmp + "/save", encoder_window_s=0.1)
    >>> _ = torch.manual_seed(0)
    >>> enc = whisper.forward_encoder(whisper._get_mel(torch.randn(2, 1600)))
    >>> codes, probs = detect_language(whisper, enc, ["de", "es", "it"])
    >>> probs.shape, bool(probs.sum(dim=-1).allclose(torch.ones(2)))
    (torch.Size([2, 3]), True)
    >>> codes == [["de", "es", "it"][i] for i in probs.argmax(-1).tolist()]
    True
    >>> detect_language(whisper, enc[:1], ["de"])  # one candidate: certain
    (['de'], tensor([[1.]]))
    >>> shutil.rmtree(tmp)
    """
    if candidates is None:
        candidates = language_codes(whisper)
    candidates = [canonical_language(code) for code in candidates]
    if not candidates:
        raise ValueError("detect_language needs at least one candidate")
    ids = torch.tensor(
        [_language_id(whisper, code) for code in candidates],
        device=enc_states.device,
    )
    logits = language_logits(whisper, enc_states, ids, whisper.bos)
    if logits is None:  # experts routed in the cross-attention
        sot = torch.full(
            (enc_states.shape[0], 1), whisper.bos, device=enc_states.device
        )
        logits, _, _ = whisper.forward_decoder(enc_states, sot, use_cache=False)
        logits = logits[:, -1, ids]
    probs = logits.float().softmax(dim=-1)
    codes = [candidates[i] for i in probs.argmax(dim=-1).tolist()]
    return codes, probs


def max_tokens_for(
    durations_s,
    per_second=TOKENS_PER_SECOND,
    minimum=MIN_NEW_TOKENS,
    maximum=MAX_NEW_TOKENS,
):
    """Per-utterance bound on new tokens from the audio duration.

    ``ceil(minimum + per_second * seconds)``, capped at ``maximum``
    (Whisper's 224). See ``TOKENS_PER_SECOND`` for the choice.

    Arguments
    ---------
    durations_s : float, list of float or torch.Tensor
        Durations in seconds.
    per_second : float
        Tokens allowed per second of audio.
    minimum : int
        Tokens allowed for any clip, however short.
    maximum : int
        Upper cap.

    Returns
    -------
    torch.LongTensor
        ``[B]``.

    Example
    -------
    >>> max_tokens_for([0.0, 2.0, 100.0])
    tensor([  8,  38, 224])
    """
    durations = torch.as_tensor(durations_s, dtype=torch.float64).reshape(-1)
    bound = torch.ceil(minimum + per_second * durations.clamp(min=0))
    return bound.clamp(max=maximum).long()


def decode_text(whisper, token_lists):
    """Text of token-id lists, special tokens skipped, whitespace stripped.

    Arguments
    ---------
    whisper : speechbrain_lora_experts.whisper.Whisper
        Provides the tokenizer.
    token_lists : list of list of int
        As returned by ``greedy_decode``/``beam_decode``.

    Returns
    -------
    list of str
        One text per token list.

    Example
    -------
    >>> import shutil, tempfile
    >>> from speechbrain_lora_experts.testing.tiny_whisper import (
    ...     make_tiny_whisper,
    ... )
    >>> from speechbrain_lora_experts.whisper import Whisper
    >>> tmp = tempfile.mkdtemp()
    >>> hub = make_tiny_whisper(tmp + "/hub", d_model=8, layers=1, ffn_dim=8)
    >>> whisper = Whisper(hub, tmp + "/save", encoder_window_s=0.1)
    >>> hallo = whisper.tokenizer.encode(
    ...     " Hallo Welt", add_special_tokens=False
    ... )
    >>> prompt = prompt_tokens(whisper, ["de"])[0].tolist()
    >>> decode_text(whisper, [hallo, prompt + hallo + [whisper.eos]])
    ['Hallo Welt', 'Hallo Welt']
    >>> shutil.rmtree(tmp)
    """
    texts = whisper.tokenizer.batch_decode(
        [list(tokens) for tokens in token_lists], skip_special_tokens=True
    )
    return [text.strip() for text in texts]


def _suppress_mask(whisper, vocab_size, device):
    """Bool ``[V]``: non-speech symbols and special tokens except eot."""
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    # Every id after eot is special in Whisper's vocabulary (sot, languages,
    # tasks, nospeech, notimestamps, timestamps).
    mask[whisper.eos + 1 :] = True
    ids = list(whisper.get_suppress_tokens)
    ids += list(whisper.tokenizer.all_special_ids)
    mask[torch.tensor([i for i in ids if 0 <= i < vocab_size])] = True
    mask[whisper.eos] = False
    return mask.to(device)


def _begin_suppress_ids(whisper):
    """Tokens forbidden as the first generated token: blank and eot."""
    blank = whisper.tokenizer.encode(" ", add_special_tokens=False)
    return blank + [whisper.eos]


def _step_scores(whisper, logits, suppress, begin, first):
    """Log-probabilities of one step with Whisper's suppression."""
    logits = logits.float().masked_fill(suppress, -math.inf)
    if first:
        logits[:, begin] = -math.inf
    return logits.log_softmax(dim=-1)


def _length_bounds(whisper, max_new_tokens, batch, prompt_len, device):
    """``[B]`` bounds, clipped to what the decoder's positions allow."""
    bound = torch.as_tensor(max_new_tokens, dtype=torch.long).reshape(-1)
    if bound.numel() == 1:
        bound = bound.expand(batch)
    if bound.numel() != batch:
        raise ValueError(
            f"max_new_tokens has {bound.numel()} entries for {batch} utterances"
        )
    positions = whisper.model.config.max_target_positions
    return bound.clamp(min=0, max=positions - prompt_len).to(device)


def _strip(tokens, eos):
    """Rows of ``[N, T]`` cut at their first eos, as lists."""
    keep = (tokens != eos).long().cumprod(dim=1).sum(dim=1).tolist()
    return [row[:n] for row, n in zip(tokens.tolist(), keep)]


def _reorder_self_attention(cache, index):
    """Reorders the decoder's self-attention cache along the batch.

    Beams only ever move within their utterance, whose rows share the
    encoder states (and expert routing), so the cross-attention cache is
    identical for all of them and need not be copied each step.
    """
    self_cache = getattr(cache, "self_attention_cache", None)
    if self_cache is not None:
        self_cache.reorder_cache(index)
        return cache
    if hasattr(cache, "reorder_cache"):
        cache.reorder_cache(index)
        return cache
    # Legacy tuple cache (transformers < 4.40 style).
    return tuple(
        tuple(state.index_select(0, index) for state in layer)
        for layer in cache
    )


@torch.no_grad()
def greedy_decode(whisper, enc_states, prompts, max_new_tokens):
    """Batched greedy decoding with the KV cache.

    Arguments
    ---------
    whisper : speechbrain_lora_experts.whisper.Whisper
        The model (with any expert routing already set for ``B``).
    enc_states : torch.Tensor
        Encoder output ``[B, frames, d_model]``.
    prompts : torch.LongTensor
        ``[B, P]`` decoder prompts (see ``prompt_tokens``).
    max_new_tokens : int or torch.LongTensor
        Bound on generated tokens (eot not counted), per utterance ``[B]``
        or one for all; clipped to the decoder's position table.

    Returns
    -------
    list of list of int
        Generated text tokens per utterance (no prompt, no eot).

    Example
    -------
    >>> import shutil, tempfile
    >>> from speechbrain_lora_experts.testing.tiny_whisper import (
    ...     make_tiny_whisper,
    ... )
    >>> from speechbrain_lora_experts.whisper import Whisper
    >>> tmp = tempfile.mkdtemp()
    >>> hub = make_tiny_whisper(tmp + "/hub", d_model=8, layers=1, ffn_dim=8)
    >>> whisper = Whisper(hub, tmp + "/save", encoder_window_s=0.1)
    >>> _ = torch.manual_seed(0)
    >>> enc = whisper.forward_encoder(whisper._get_mel(torch.randn(2, 1600)))
    >>> prompts = prompt_tokens(whisper, ["de", "es"])
    >>> tokens = greedy_decode(whisper, enc, prompts, torch.tensor([3, 1]))
    >>> [len(t) for t in tokens]  # per-utterance bounds
    [3, 1]
    >>> max(max(t) for t in tokens) < whisper.eos  # text tokens only
    True
    >>> greedy_decode(whisper, enc[:1], prompts[:1], 3) == tokens[:1]
    True
    >>> shutil.rmtree(tmp)
    """
    batch, prompt_len = prompts.shape
    device = enc_states.device
    bound = _length_bounds(whisper, max_new_tokens, batch, prompt_len, device)
    steps = int(bound.max()) if batch else 0
    if steps == 0:
        return [[] for _ in range(batch)]
    eos = whisper.eos
    logits, _, cache = whisper.forward_decoder(enc_states, prompts.to(device))
    suppress = _suppress_mask(whisper, logits.shape[-1], device)
    begin = _begin_suppress_ids(whisper)
    out = torch.full((batch, steps), eos, dtype=torch.long, device=device)
    ended = bound == 0
    for step in range(steps):
        scores = _step_scores(
            whisper, logits[:, -1], suppress, begin, step == 0
        )
        token = scores.argmax(dim=-1).masked_fill(ended, eos)
        out[:, step] = token
        ended = ended | (token == eos) | (bound <= step + 1)
        if bool(ended.all()):
            break
        logits, _, cache = whisper.forward_decoder(
            enc_states, token[:, None], past_key_values=cache
        )
    return _strip(out, eos)


@torch.no_grad()
def beam_decode(whisper, enc_states, prompts, beam_size, max_new_tokens):
    """Batched beam search with length-normalised scores and the KV cache.

    The search is Whisper's (``openai/whisper`` ``BeamSearchDecoder``
    without patience): each step ranks the ``2 * beam_size`` best
    extensions of an utterance's beams; those ending in eot that rank
    above the last kept beam become finished hypotheses, the others (up to
    ``beam_size``) stay alive. An utterance is done with ``beam_size``
    finished hypotheses or at its length bound (alive beams then fill the
    missing slots). The result is the finished hypothesis with the best
    sum of log-probabilities divided by its length. ``beam_size=1`` is
    exactly greedy decoding.

    Arguments
    ---------
    whisper : speechbrain_lora_experts.whisper.Whisper
        The model (with any expert routing already set for ``B``; it is
        inflated to ``B * beam_size`` rows by the expert layers).
    enc_states : torch.Tensor
        Encoder output ``[B, frames, d_model]``.
    prompts : torch.LongTensor
        ``[B, P]`` decoder prompts (see ``prompt_tokens``).
    beam_size : int
        Beams per utterance.
    max_new_tokens : int or torch.LongTensor
        As in ``greedy_decode``.

    Returns
    -------
    list of list of int
        Best hypothesis per utterance (no prompt, no eot).

    Example
    -------
    >>> import shutil, tempfile
    >>> from speechbrain_lora_experts.testing.tiny_whisper import (
    ...     make_tiny_whisper,
    ... )
    >>> from speechbrain_lora_experts.whisper import Whisper
    >>> tmp = tempfile.mkdtemp()
    >>> hub = make_tiny_whisper(tmp + "/hub", d_model=8, layers=1, ffn_dim=8)
    >>> whisper = Whisper(hub, tmp + "/save", encoder_window_s=0.1)
    >>> _ = torch.manual_seed(0)
    >>> enc = whisper.forward_encoder(whisper._get_mel(torch.randn(2, 1600)))
    >>> prompts = prompt_tokens(whisper, ["de", "es"])
    >>> greedy = greedy_decode(whisper, enc, prompts, 4)
    >>> beam_decode(whisper, enc, prompts, 1, 4) == greedy  # k=1: greedy
    True
    >>> tokens = beam_decode(whisper, enc, prompts, 3, torch.tensor([4, 2]))
    >>> [len(t) <= n for t, n in zip(tokens, [4, 2])]
    [True, True]
    >>> beam_decode(whisper, enc[1:], prompts[1:], 3, 2) == tokens[1:]
    True
    >>> shutil.rmtree(tmp)
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    batch, prompt_len = prompts.shape
    device = enc_states.device
    bound = _length_bounds(whisper, max_new_tokens, batch, prompt_len, device)
    steps = int(bound.max()) if batch else 0
    if steps == 0:
        return [[] for _ in range(batch)]
    eos, k = whisper.eos, beam_size
    rows = torch.arange(batch, device=device)
    # Contiguous beams per utterance, as the expert layers expect.
    enc_states = enc_states.repeat_interleave(k, dim=0)
    prompts = prompts.to(device).repeat_interleave(k, dim=0)
    logits, _, cache = whisper.forward_decoder(enc_states, prompts)
    vocab = logits.shape[-1]
    suppress = _suppress_mask(whisper, vocab, device)
    begin = _begin_suppress_ids(whisper)

    # Alive beams: tokens so far and summed log-probabilities. Only beam 0
    # starts alive so the first step does not pick k copies of one token.
    seqs = torch.full((batch, k, steps), eos, dtype=torch.long, device=device)
    score = torch.full((batch, k), -math.inf, device=device)
    score[:, 0] = 0.0
    # Finished hypotheses: tokens, raw scores, lengths, count.
    fin_seqs = torch.full_like(seqs, eos)
    fin_score = torch.full((batch, k), -math.inf, device=device)
    fin_len = torch.ones((batch, k), dtype=torch.long, device=device)
    n_fin = torch.zeros(batch, dtype=torch.long, device=device)
    done = bound == 0
    ranks = torch.arange(2 * k, device=device)

    for step in range(steps):
        logp = _step_scores(whisper, logits[:, -1], suppress, begin, step == 0)
        total = score[:, :, None] + logp.view(batch, k, vocab)
        best, flat = total.view(batch, k * vocab).topk(2 * k, dim=-1)
        src, token = flat // vocab, flat % vocab
        is_eos = token == eos
        # Keep the first k non-eot candidates; eot candidates ranked above
        # the last kept one finish. Each beam has one eot entry, so 2k
        # candidates hold at least k others.
        alive_rank = (~is_eos).long().cumsum(dim=1) - 1
        keep = ~is_eos & (alive_rank < k)
        last_kept = torch.where(keep, ranks, -1).amax(dim=1, keepdim=True)
        finish = is_eos & (ranks < last_kept) & (best > -math.inf)
        finish &= ~done[:, None]

        # Append finished hypotheses into free slots (Whisper stops
        # collecting at beam_size per utterance).
        slot = n_fin[:, None] + finish.long().cumsum(dim=1) - 1
        finish &= slot < k
        b_idx, c_idx = finish.nonzero(as_tuple=True)
        if b_idx.numel():
            s_idx = slot[b_idx, c_idx]
            fin_seqs[b_idx, s_idx] = seqs[b_idx, src[b_idx, c_idx]]
            fin_score[b_idx, s_idx] = best[b_idx, c_idx]
            fin_len[b_idx, s_idx] = max(step, 1)
            n_fin += finish.long().sum(dim=1)

        # New alive beams, in rank order.
        order = torch.where(keep, ranks, 2 * k).argsort(dim=1)[:, :k]
        src_k = src.gather(1, order)
        seqs = seqs[rows[:, None], src_k]
        seqs[:, :, step] = token.gather(1, order)
        score = best.gather(1, order)

        # At its bound an utterance's alive beams fill its missing slots.
        at_bound = ~done & (bound <= step + 1)
        if bool(at_bound.any()):
            free = (k - n_fin).clamp(min=0)
            fill = at_bound[:, None] & (ranks[None, :k] < free[:, None])
            fill &= score > -math.inf
            b_idx, j_idx = fill.nonzero(as_tuple=True)
            s_idx = n_fin[b_idx] + j_idx
            fin_seqs[b_idx, s_idx] = seqs[b_idx, j_idx]
            fin_score[b_idx, s_idx] = score[b_idx, j_idx]
            fin_len[b_idx, s_idx] = step + 1
            n_fin += fill.long().sum(dim=1)
        done = done | (n_fin >= k) | at_bound
        if bool(done.all()):
            break

        beam_rows = (rows[:, None] * k + src_k).reshape(-1)
        cache = _reorder_self_attention(cache, beam_rows)
        logits, _, cache = whisper.forward_decoder(
            enc_states, seqs[:, :, step].reshape(-1, 1), past_key_values=cache
        )

    pick = (fin_score / fin_len).argmax(dim=1)
    return _strip(fin_seqs[rows, pick], eos)


@torch.no_grad()
def score_tokens(whisper, enc_states, prompts, token_lists):
    """Log-probability of decoded tokens and Whisper's no-speech probability.

    One teacher-forced decoder pass over ``prompt + tokens + eot`` with the
    suppression the decoders apply, as Whisper scores a segment for its
    silence test (``avg_logprob``, ``no_speech_prob``).

    Arguments
    ---------
    whisper : speechbrain_lora_experts.whisper.Whisper
        The model (with the expert routing the tokens were decoded with).
    enc_states : torch.Tensor
        Encoder output ``[B, frames, d_model]``.
    prompts : torch.LongTensor
        ``[B, P]`` decoder prompts, ending with ``sot, <|lang|>, task,
        notimestamps``.
    token_lists : list of list of int
        Decoded text tokens per utterance (no prompt, no eot).

    Returns
    -------
    sum_logprobs : torch.Tensor
        ``[B]`` summed log-probabilities of the tokens and the final eot.
    no_speech_probs : torch.Tensor
        ``[B]`` probability of ``<|nospeech|>`` right after ``sot``.

    Example
    -------
    >>> import tempfile
    >>> from speechbrain_lora_experts.testing.tiny_whisper import (
    ...     make_tiny_whisper,
    ... )
    >>> from speechbrain_lora_experts.whisper import Whisper
    >>> whisper = Whisper(
    ...     make_tiny_whisper(tempfile.mkdtemp()),
    ...     tempfile.mkdtemp(),
    ...     encoder_window_s=2,
    ... )
    >>> enc = whisper.forward_encoder(whisper._get_mel(torch.zeros(1, 800)))
    >>> prompts = prompt_tokens(whisper, ["de"])
    >>> tokens = greedy_decode(whisper, enc, prompts, 3)
    >>> logp, no_speech = score_tokens(whisper, enc, prompts, tokens)
    >>> bool(logp[0] < 0), 0 <= float(no_speech[0]) <= 1
    (True, True)
    """
    batch, prompt_len = prompts.shape
    device = enc_states.device
    eos = whisper.eos
    longest = max((len(t) for t in token_lists), default=0) + 1
    targets = torch.full((batch, longest), eos, dtype=torch.long)
    for row, tokens in enumerate(token_lists):
        targets[row, : len(tokens)] = torch.as_tensor(tokens, dtype=torch.long)
    targets = targets.to(device)
    inputs = torch.cat([prompts.to(device), targets[:, :-1]], dim=1)
    logits, _, _ = whisper.forward_decoder(enc_states, inputs, use_cache=False)
    sot = (prompts[0] == whisper.bos).nonzero()[-1].item()
    no_speech = logits[:, sot].float().softmax(dim=-1)[:, whisper.no_speech]
    suppress = _suppress_mask(whisper, logits.shape[-1], device)
    begin = _begin_suppress_ids(whisper)
    total = torch.zeros(batch, device=device)
    lengths = torch.tensor([len(t) + 1 for t in token_lists], device=device)
    for step in range(longest):
        logp = _step_scores(
            whisper,
            logits[:, prompt_len - 1 + step],
            suppress,
            begin,
            step == 0,
        )
        picked = logp.gather(1, targets[:, step : step + 1]).squeeze(1)
        total += torch.where(step < lengths, picked, torch.zeros_like(picked))
    return total, no_speech
