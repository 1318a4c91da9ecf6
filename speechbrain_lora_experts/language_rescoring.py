"""Routing by the best transcript among the likeliest languages.

An agnostic pool of per-language models (experts, expert soups) is routed
by a language-identification step that runs before any expert. That step
decides from one decoder position, and when it errs the utterance is
transcribed by the wrong language's expert with the wrong language prompt:
the whole transcript is lost, not a word. Rescoring keeps the ``k``
likeliest languages of that step, transcribes the utterance with each of
their experts and prompts, and keeps the language whose pair (language,
transcript) is most probable:

``log p_lid(lang | audio) + log p_lang(transcript, eot | audio, lang)``

the first term from the language step, the second from the routed model
that wrote the transcript (``decoding.score_tokens``). It is the joint
probability Whisper itself maximises, one token at a time, when it writes
the language token and then the text, with each language's text scored by
that language's expert. It costs ``k`` encoder passes and decodings
instead of one. With a ``confidence``, an utterance whose first language
has at least that probability keeps it, and a batch of only such
utterances is transcribed once: the cost falls to the unsure batches.

Authors
 * speechbrain-lora-experts developers 2026
"""

import torch


def check_top_k(top_k, languages):
    """The number of languages to rescore, checked.

    Arguments
    ---------
    top_k : int
        Languages kept from the language step (1: no rescoring).
    languages : list of str
        The pool's languages.

    Returns
    -------
    int
        ``top_k``.

    Example
    -------
    >>> check_top_k(2, ["de", "es", "it"])
    2
    >>> check_top_k(4, ["de", "es"])
    Traceback (most recent call last):
    ...
    ValueError: lid_rescore_top_k=4 but the pool has 2 languages ['de', 'es']; choose 1 to 2
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int):
        raise ValueError(
            f"lid_rescore_top_k must be an integer (1: no rescoring), got "
            f"{top_k!r}"
        )
    if not 1 <= top_k <= len(languages):
        raise ValueError(
            f"lid_rescore_top_k={top_k} but the pool has {len(languages)} "
            f"languages {list(languages)}; choose 1 to {len(languages)}"
        )
    return top_k


def check_confidence(confidence):
    """The language step's probability above which nothing is rescored.

    Arguments
    ---------
    confidence : float or None
        In (0, 1]; None: every utterance is rescored.

    Returns
    -------
    float or None
        ``confidence``.

    Example
    -------
    >>> check_confidence(0.9)
    0.9
    >>> check_confidence(1.5)
    Traceback (most recent call last):
    ...
    ValueError: lid_rescore_confidence=1.5 must be in (0, 1] or null (rescore every utterance)
    """
    if confidence is None:
        return None
    if isinstance(confidence, bool) or not (
        isinstance(confidence, (int, float)) and 0 < confidence <= 1
    ):
        raise ValueError(
            f"lid_rescore_confidence={confidence!r} must be in (0, 1] or "
            "null (rescore every utterance)"
        )
    return float(confidence)


def is_sure(language_probs, confidence):
    """Utterances whose first language keeps without rescoring.

    Arguments
    ---------
    language_probs : torch.Tensor
        ``[B, N]`` probabilities from the language step.
    confidence : float or None
        See ``check_confidence``; None: no utterance is sure.

    Returns
    -------
    torch.Tensor
        ``[B]`` booleans, on the CPU.

    Example
    -------
    >>> probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7]])
    >>> is_sure(probs, 0.6).tolist(), is_sure(probs, None).tolist()
    ([False, True], [False, False])
    """
    if confidence is None:
        return torch.zeros(language_probs.shape[0], dtype=torch.bool)
    return (language_probs.max(dim=-1).values >= confidence).cpu()


def pick(lid_log_probs, sum_logprobs):
    """Index of the most probable (language, transcript) pair per utterance.

    Arguments
    ---------
    lid_log_probs : torch.Tensor
        ``[B, k]`` log-probabilities of the candidate languages.
    sum_logprobs : torch.Tensor
        ``[B, k]`` log-probabilities of each candidate's transcript (with
        its end of text) under that candidate's model.

    Returns
    -------
    torch.LongTensor
        ``[B]`` chosen candidate; ties go to the likelier language (lower
        index).

    Example
    -------
    >>> lid = torch.tensor([[0.9, 0.1], [0.6, 0.4]]).log()
    >>> text = torch.tensor([[-9.0, -4.0], [-3.0, -5.0]])
    >>> pick(lid, text).tolist()  # -9.1 < -6.3; -3.5 > -5.9
    [1, 0]
    """
    if lid_log_probs.shape != sum_logprobs.shape:
        raise ValueError(
            f"{tuple(lid_log_probs.shape)} language scores for "
            f"{tuple(sum_logprobs.shape)} transcript scores"
        )
    joint = lid_log_probs.float() + sum_logprobs.float().to(
        lid_log_probs.device
    )
    return joint.argmax(dim=-1)


def rescore_languages(
    language_probs, languages, top_k, transcribe, confidence=None
):
    """Transcribes with the ``top_k`` likeliest languages, keeps the best.

    Arguments
    ---------
    language_probs : torch.Tensor
        ``[B, N]`` probabilities of ``languages`` from the language step.
    languages : list of str
        The pool's languages, in ``language_probs``' order.
    top_k : int
        Candidates per utterance (see ``check_top_k``).
    transcribe : callable
        ``transcribe(index, codes, score) -> (tokens, sum_logprobs)``:
        routes utterance ``b`` through expert ``index[b]`` (``[B]``, into
        ``languages``), encodes, decodes with the ``codes`` prompts and,
        when ``score``, scores the tokens under that same routing
        (``decoding.score_tokens``; else ``sum_logprobs`` may be None).
    confidence : float, optional
        Utterances whose first language has at least this probability
        keep it; when all of a batch's do, only that language transcribes
        it (see ``check_confidence``). None: every utterance is rescored.

    Returns
    -------
    index : torch.LongTensor
        ``[B]`` chosen language per utterance (into ``languages``).
    tokens : list of list of int
        The chosen transcripts.
    rank : torch.LongTensor
        ``[B]`` the chosen language's rank in the language step (0: its
        first choice).

    Example
    -------
    >>> import shutil, tempfile
    >>> from speechbrain_lora_experts import decoding
    >>> from speechbrain_lora_experts.testing.tiny_whisper import (
    ...     make_tiny_whisper,
    ... )
    >>> from speechbrain_lora_experts.whisper import Whisper
    >>> tmp = tempfile.mkdtemp()
    >>> hub = make_tiny_whisper(tmp + "/hub", d_model=8, layers=1, ffn_dim=8)
    >>> whisper = Whisper(hub, tmp + "/save", encoder_window_s=0.1)
    >>> _ = torch.manual_seed(0)
    >>> enc = whisper.forward_encoder(whisper._get_mel(torch.randn(2, 1600)))
    >>> def transcribe(index, codes, score):  # no experts: prompts differ
    ...     prompts = decoding.prompt_tokens(whisper, codes)
    ...     tokens = decoding.greedy_decode(whisper, enc, prompts, 3)
    ...     if not score:
    ...         return tokens, None
    ...     return tokens, decoding.score_tokens(whisper, enc, prompts, tokens)[
    ...         0
    ...     ]
    >>> probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7]])
    >>> languages = ["de", "es", "it"]
    >>> index, tokens, rank = rescore_languages(probs, languages, 1, transcribe)
    >>> index.tolist(), rank.tolist()  # k = 1: the language step's choice
    ([0, 2], [0, 0])
    >>> index, tokens, rank = rescore_languages(probs, languages, 2, transcribe)
    >>> [i in top for i, top in zip(index.tolist(), [[0, 1], [2, 1]])]
    [True, True]
    >>> calls = []
    >>> def counted(index, codes, score):
    ...     calls.append(codes)
    ...     return transcribe(index, codes, score)
    >>> index, _, rank = rescore_languages(
    ...     probs, languages, 2, counted, confidence=0.5
    ... )
    >>> calls, rank.tolist()  # both sure enough: one transcription
    ([['de', 'it']], [0, 0])
    >>> shutil.rmtree(tmp)
    """
    k = check_top_k(top_k, languages)
    confidence = check_confidence(confidence)
    top = language_probs.topk(k, dim=-1).indices
    sure = is_sure(language_probs, confidence)
    if confidence is not None and k > 1 and bool(sure.all()):
        k = 1
    top = top[:, :k]
    scores, transcripts = [], []
    for rank in range(k):
        index = top[:, rank]
        codes = [languages[i] for i in index.tolist()]
        tokens, total = transcribe(index, codes, k > 1)
        transcripts.append(tokens)
        scores.append(total)
    top = top.cpu()
    if k == 1:
        return top[:, 0], transcripts[0], torch.zeros_like(top[:, 0])
    lid = language_probs.gather(1, top.to(language_probs.device))
    choice = pick(lid.clamp_min(1e-30).log(), torch.stack(scores, 1)).cpu()
    choice = choice.masked_fill(sure, 0)
    tokens = [transcripts[c][b] for b, c in enumerate(choice.tolist())]
    index = top.gather(1, choice[:, None]).squeeze(1)
    return index, tokens, choice
