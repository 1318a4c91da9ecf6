"""Batched greedy/beam decoding with per-utterance prompts and bounds."""

import pytest
import torch

from speechbrain_lora_experts.decoding import (
    _begin_suppress_ids,
    _step_scores,
    _suppress_mask,
    beam_decode,
    decode_text,
    detect_language,
    greedy_decode,
    max_tokens_for,
    prompt_tokens,
)

SOT, EN, ZH, DE, ES, TRANSCRIBE, NOTS = (
    50258,
    50259,
    50260,
    50261,
    50262,
    50359,
    50363,
)
LANGS = ["de", "zh", "en", "es", "de"]


def make_lively(whisper, seed=0):
    """Rescale the random weights so the output depends on audio and prompt.

    HF's init (std 0.02) gives near-uniform logits: every utterance then
    repeats the same token and equality tests prove nothing. A larger eot
    embedding makes some hypotheses end before their bound.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in whisper.model.named_parameters():
            if p.dim() >= 2 and "embed_positions" not in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        whisper.model.decoder.embed_tokens.weight[whisper.eos] *= 3
    return whisper.eval()


def load(tiny_whisper_dir, folder):
    from speechbrain_lora_experts.whisper import Whisper

    return make_lively(Whisper(tiny_whisper_dir, str(folder), language="de"))


@pytest.fixture(scope="module")
def lively(tiny_whisper_dir, tmp_path_factory):
    """(whisper, mel, enc_states) for five 2 s noise clips."""
    whisper = load(tiny_whisper_dir, tmp_path_factory.mktemp("save"))
    g = torch.Generator().manual_seed(1)
    wav = torch.randn(len(LANGS), 32000, generator=g) * 0.1
    with torch.no_grad():
        mel = whisper._get_mel(wav)
        enc = whisper.forward_encoder(mel)
    return whisper, mel, enc


def test_prompt_tokens_ids_and_errors(sb_whisper):
    prompts = prompt_tokens(sb_whisper, ["de", "zh-CN", "en", "es_419"])
    assert prompts.dtype == torch.long
    assert prompts.tolist() == [
        [SOT, DE, TRANSCRIBE, NOTS],
        [SOT, ZH, TRANSCRIBE, NOTS],
        [SOT, EN, TRANSCRIBE, NOTS],
        [SOT, ES, TRANSCRIBE, NOTS],
    ]
    # The fixture has the 99 languages of v1/v2: no Cantonese token.
    with pytest.raises(ValueError, match="yue"):
        prompt_tokens(sb_whisper, ["de", "yue"])
    with pytest.raises(ValueError, match="Unknown language"):
        prompt_tokens(sb_whisper, ["klingon"])


def test_greedy_mixed_batch_equals_each_alone(lively):
    whisper, _, enc = lively
    prompts = prompt_tokens(whisper, LANGS)
    bound = torch.tensor([12, 12, 12, 12, 5])
    batch = greedy_decode(whisper, enc, prompts, bound)
    alone = [
        greedy_decode(whisper, enc[i : i + 1], prompts[i : i + 1], bound[i])[0]
        for i in range(len(LANGS))
    ]
    assert batch == alone
    # The test means something: outputs differ, and one ended with eot.
    assert len({tuple(t) for t in batch}) == len(LANGS)
    assert any(len(t) < 12 for t in batch[:4])
    # The language prompt matters: utterance 0 with another language.
    other = greedy_decode(whisper, enc[:1], prompts[2:3], 12)[0]
    assert other != batch[0]


def test_greedy_matches_hf_generate(lively, tiny_whisper_dir):
    from transformers import WhisperForConditionalGeneration

    whisper, mel, enc = lively
    hf = WhisperForConditionalGeneration.from_pretrained(tiny_whisper_dir)
    hf.model.load_state_dict(whisper.model.state_dict())
    hf.eval()
    assert torch.equal(
        hf.proj_out.weight, whisper.model.decoder.embed_tokens.weight
    )
    langs = LANGS[:3]
    ours = greedy_decode(whisper, enc[:3], prompt_tokens(whisper, langs), 10)
    suppress = _suppress_mask(whisper, hf.config.vocab_size, "cpu")
    with torch.no_grad():
        theirs = hf.generate(
            input_features=mel[:3],
            language=langs,
            task="transcribe",
            return_timestamps=False,
            max_new_tokens=10,
            suppress_tokens=suppress.nonzero().squeeze(1).tolist(),
            begin_suppress_tokens=_begin_suppress_ids(whisper),
            do_sample=False,
            num_beams=1,
        )
    theirs = [[t for t in row if t < whisper.eos] for row in theirs.tolist()]
    assert ours == theirs


def test_max_length_respected_per_utterance(lively):
    whisper, _, enc = lively
    prompts = prompt_tokens(whisper, LANGS)
    free = greedy_decode(whisper, enc, prompts, 12)
    bound = torch.tensor([0, 1, 3, 12, 2])
    for decode in (greedy_decode, lambda *a: beam_decode(*a[:3], 3, a[3])):
        out = decode(whisper, enc, prompts, bound)
        assert all(len(t) <= b for t, b in zip(out, bound.tolist()))
        assert out[0] == []
    # Greedy is a prefix process: a bound truncates the free hypothesis.
    out = greedy_decode(whisper, enc, prompts, bound)
    assert out == [t[:b] for t, b in zip(free, bound.tolist())]


def test_beam_size_one_is_greedy(lively):
    whisper, _, enc = lively
    prompts = prompt_tokens(whisper, LANGS)
    bound = torch.tensor([12, 4, 12, 12, 7])
    greedy = greedy_decode(whisper, enc, prompts, bound)
    assert beam_decode(whisper, enc, prompts, 1, bound) == greedy


def test_beam_mixed_batch_equals_each_alone(lively):
    whisper, _, enc = lively
    prompts = prompt_tokens(whisper, LANGS)
    bound = torch.tensor([10, 10, 10, 10, 6])
    batch = beam_decode(whisper, enc, prompts, 3, bound)
    alone = [
        beam_decode(whisper, enc[i : i + 1], prompts[i : i + 1], 3, bound[i])[0]
        for i in range(len(LANGS))
    ]
    assert batch == alone
    assert len({tuple(t) for t in batch}) == len(LANGS)


def naive_beam(whisper, enc, prompt, beam_size, bound):
    """Whisper's beam search for one utterance: no cache, Python lists."""
    suppress = _suppress_mask(whisper, whisper.model.config.vocab_size, "cpu")
    begin = _begin_suppress_ids(whisper)
    eos, n_prompt = whisper.eos, len(prompt)
    alive, finished = [(list(prompt), 0.0)], {}
    for step in range(bound):
        tokens = torch.tensor([seq for seq, _ in alive])
        logits = whisper.forward_decoder(
            enc.expand(len(alive), -1, -1), tokens, use_cache=False
        )[0]
        logp = _step_scores(whisper, logits[:, -1], suppress, begin, step == 0)
        candidates = []
        for (seq, score), row in zip(alive, logp):
            top = row.topk(beam_size + 1)
            for lp, token in zip(top.values.tolist(), top.indices.tolist()):
                candidates.append((score + lp, seq + [token]))
        candidates.sort(key=lambda c: -c[0])
        alive = []
        for score, seq in candidates:
            if seq[-1] == eos:
                if len(finished) < beam_size:
                    finished[tuple(seq[n_prompt:-1])] = score
            else:
                alive.append((seq, score))
                if len(alive) == beam_size:
                    break
        if len(finished) >= beam_size:
            break
    for seq, score in alive[: beam_size - len(finished)]:
        finished[tuple(seq[n_prompt:])] = score
    best = max(finished, key=lambda s: finished[s] / max(len(s), 1))
    return list(best)


def test_beam_matches_naive_reference(lively):
    """Cache reordering, finishing and length normalisation vs a plain loop."""
    whisper, _, enc = lively
    prompts = prompt_tokens(whisper, LANGS)
    bound = [10, 10, 10, 10, 6]
    batch = beam_decode(whisper, enc, prompts, 4, torch.tensor(bound))
    reference = [
        naive_beam(whisper, enc[i : i + 1], prompts[i].tolist(), 4, bound[i])
        for i in range(len(LANGS))
    ]
    assert batch == reference


def test_suppression(tiny_whisper_dir, tmp_path):
    """No special token but eot is emitted; no eot/blank as first token."""
    whisper = load(tiny_whisper_dir, tmp_path)
    suppress = _suppress_mask(whisper, whisper.model.config.vocab_size, "cpu")
    tokenizer = whisper.tokenizer
    specials = [
        SOT,
        DE,
        TRANSCRIBE,
        NOTS,
        tokenizer.convert_tokens_to_ids("<|0.00|>"),
    ]
    assert suppress[specials].all() and not suppress[whisper.eos]
    assert suppress[list(whisper.get_suppress_tokens)].all()
    assert not suppress[
        tokenizer.encode("Hallo", add_special_tokens=False)
    ].any()
    # Make eot and some special tokens by far the most likely outputs.
    bias = torch.zeros(whisper.model.config.vocab_size)
    bias[specials] = 1000.0
    bias[whisper.eos] = 500.0
    forward_decoder = whisper.forward_decoder

    def biased(*args, **kwargs):
        logits, attn, cache = forward_decoder(*args, **kwargs)
        return logits + bias, attn, cache

    whisper.forward_decoder = biased
    g = torch.Generator().manual_seed(5)
    wav = torch.randn(3, 16000, generator=g) * 0.1
    with torch.no_grad():
        enc = whisper.forward_encoder(whisper._get_mel(wav))
    prompts = prompt_tokens(whisper, ["de", "zh", "en"])
    for out in (
        greedy_decode(whisper, enc, prompts, 5),
        beam_decode(whisper, enc, prompts, 2, 5),
    ):
        # One text token (eot is banned at the first step), then eot.
        assert [len(t) for t in out] == [1, 1, 1]
        assert all(t[0] < whisper.eos for t in out)


def test_beam_mixed_batch_with_routed_experts(tiny_whisper_dir, tmp_path):
    """Per-utterance experts are inflated over beams by the expert layers."""
    from speechbrain_lora_experts.attach import WhisperLoRAExperts

    whisper = load(tiny_whisper_dir, tmp_path)
    experts = WhisperLoRAExperts(
        whisper,
        expert_names=["de", "zh"],
        rank=4,
        targets=["q_proj", "k_proj", "v_proj", "fc1"],
        parts=["decoder"],
    )
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in experts.layers.values():
            for expert in layer.experts:
                expert.lora_B.copy_(
                    torch.randn(expert.lora_B.shape, generator=g)
                )
    wav = torch.randn(3, 16000, generator=g) * 0.1
    with torch.no_grad():
        enc = whisper.forward_encoder(whisper._get_mel(wav))
    langs = ["de", "zh", "de"]
    route = torch.tensor([0, 1, -1])
    prompts = prompt_tokens(whisper, langs)
    experts.routing.route(route)
    batch = beam_decode(whisper, enc, prompts, 2, 8)
    alone = []
    for i in range(3):
        experts.routing.route(route[i : i + 1])
        alone.append(
            beam_decode(whisper, enc[i : i + 1], prompts[i : i + 1], 2, 8)[0]
        )
    assert batch == alone
    # The experts change the output (else routing is not being tested).
    experts.routing.off()
    assert beam_decode(whisper, enc[:2], prompts[:2], 2, 8) != batch[:2]


def test_detect_language_restricted_to_candidates(lively):
    whisper, _, enc = lively
    candidates = ["de", "zh", "en"]
    codes, probs = detect_language(whisper, enc, candidates)
    assert probs.shape == (len(LANGS), 3)
    assert set(codes) <= set(candidates)
    assert torch.allclose(probs.sum(dim=1), torch.ones(len(LANGS)))
    assert codes == [candidates[i] for i in probs.argmax(dim=1).tolist()]
    # Default: every language the tokenizer knows (99 here, no "yue"),
    # and the restricted distribution is the renormalised full one.
    all_codes, all_probs = detect_language(whisper, enc)
    assert all_probs.shape == (len(LANGS), 99)
    assert torch.allclose(all_probs.sum(dim=1), torch.ones(len(LANGS)))
    from speechbrain_lora_experts.languages import WHISPER_LANGUAGES

    order = list(WHISPER_LANGUAGES)[:99]
    sub = all_probs[:, [order.index(c) for c in candidates]]
    assert torch.allclose(probs, sub / sub.sum(dim=1, keepdim=True), atol=1e-6)
    assert all_codes == [order[i] for i in all_probs.argmax(dim=1).tolist()]


def test_max_tokens_for_duration_bound():
    bound = max_tokens_for(torch.tensor([0.0, 1.0, 2.5, 60.0]))
    assert bound.dtype == torch.long
    assert bound.tolist() == [8, 23, 46, 224]
    assert max_tokens_for(3.0, per_second=10, minimum=2).tolist() == [32]


def test_decode_text_skips_special_tokens(sb_whisper):
    tokenizer = sb_whisper.tokenizer
    ids = tokenizer.encode(" Hallo Welt", add_special_tokens=False)
    texts = decode_text(sb_whisper, [ids + [sb_whisper.eos], [SOT, DE], []])
    assert texts == ["Hallo Welt", "", ""]
