"""``lid_rescore_top_k``: the likeliest (language, transcript) pair.

Exported models (a fuse oracle pool, one multilingual LoRA) and the
recipe's one-LoRA Brain, each checked against the same choice made by
hand; the recipe's oracle pool is in ``test_oracle_routing``.
"""

import json
import os
from types import SimpleNamespace

import pytest
import torch
from interface_fixtures import (
    LANGUAGES,
    as_batch,
    attach,
    export,
    load,
    write_clips,
)

from speechbrain_lora_experts import decoding
from speechbrain_lora_experts.language_rescoring import (
    check_confidence,
    rescore_languages,
)
from speechbrain_lora_experts.recipe_runner import load_recipe_script


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return write_clips(tmp_path_factory.mktemp("clips"))


def _oracle(tmp_path_factory, hub, top_k, parts=("encoder", "decoder")):
    folder, _ = export(
        tmp_path_factory,
        hub,
        "fuse",
        f"oracle{top_k}",
        fusion="oracle",
        language_aware=False,
        lid_rescore_top_k=top_k,
        parts=parts,
    )
    return folder, load(folder, tmp_path_factory)


def _by_hand(asr, wavs, lens, lid):
    """Each language's transcript and score; the joint choice per clip."""
    tokens, totals = [], []
    for code in LANGUAGES:
        results = asr.transcribe_batch_detailed(
            wavs, lens, languages=[code] * len(wavs)
        )
        route = torch.tensor([LANGUAGES.index(code)] * len(wavs))
        with torch.no_grad(), asr.experts.scope(route=route):
            enc = asr.whisper.forward_encoder(asr.whisper._get_mel(wavs))
            prompts = decoding.prompt_tokens(asr.whisper, [code] * len(wavs))
            found = [r.tokens for r in results]
            total, _ = decoding.score_tokens(asr.whisper, enc, prompts, found)
        tokens.append(found)
        totals.append(total)
    joint = lid.log() + torch.stack(totals, 1)
    best = joint.argmax(-1).tolist()
    return best, [tokens[i][row] for row, i in enumerate(best)], totals


# Decoder-only experts reuse the named languages' encoding.
@pytest.mark.parametrize("parts", [("encoder", "decoder"), ("decoder",)])
def test_interface_keeps_the_likeliest_language_and_transcript(
    parts, clips, tmp_path_factory, tiny_whisper_dir, monkeypatch
):
    folder, asr = _oracle(tmp_path_factory, tiny_whisper_dir, 2, parts)
    with open(os.path.join(folder, "model.json"), encoding="utf-8") as f:
        assert json.load(f)["lid_rescore_top_k"] == 2
    assert asr.hparams.lid_rescore_top_k == 2
    wavs, lens = as_batch(clips)
    # A hesitant language step: the transcripts' scores decide.
    lid = torch.tensor([[0.45, 0.55], [0.6, 0.4]])
    monkeypatch.setattr(
        decoding,
        "detect_language",
        lambda *a, **k: ([LANGUAGES[i] for i in lid.argmax(-1)], lid),
    )
    results = asr.transcribe_batch_detailed(wavs, lens)
    best, tokens, totals = _by_hand(asr, wavs, lens, lid)
    assert [r.language for r in results] == [LANGUAGES[i] for i in best]
    assert [r.tokens for r in results] == tokens
    assert all(r.detected for r in results)
    # Live: one clip follows the language step, the other its transcript.
    changed = [b != f for b, f in zip(best, lid.argmax(-1).tolist())]
    assert sorted(changed) == [False, True]
    # Long-form decoding reads the kept transcript's scores.
    out = asr._run(wavs, lens, None, score=True)
    kept = torch.stack([totals[i][row] for row, i in enumerate(best)])
    assert torch.allclose(out.sum_logprobs.cpu(), kept.cpu(), atol=1e-4)
    assert out.no_speech_probs.shape == (len(best),)

    # k = 1 (the default export): the language step alone routes.
    _, plain = _oracle(tmp_path_factory, tiny_whisper_dir, 1)
    assert plain.hparams.lid_rescore_top_k == 1
    named = [r.language for r in plain.transcribe_batch_detailed(wavs, lens)]
    assert named == [LANGUAGES[i] for i in lid.argmax(-1)]


def test_confident_utterances_keep_the_language_step_choice():
    """Scores that overrule the language step everywhere: only the unsure
    utterance follows them, and a sure batch is transcribed once."""
    languages = ["de", "es", "it"]
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7]])
    calls = []

    def transcribe(index, codes, score):
        calls.append((codes, score))
        # Each utterance's second language writes by far the likelier text.
        second = probs.topk(2, dim=-1).indices[:, 1]
        total = torch.where(index == second, 0.0, -50.0)
        return [[10 + i] for i in index.tolist()], total

    index, tokens, rank = rescore_languages(
        probs, languages, 2, transcribe, confidence=0.6
    )
    assert index.tolist() == [1, 2] and rank.tolist() == [1, 0]
    assert tokens == [[11], [12]]
    assert calls == [(["de", "it"], True), (["es", "es"], True)]
    calls.clear()
    index, tokens, rank = rescore_languages(probs, languages, 2, transcribe)
    assert index.tolist() == [1, 1] and rank.tolist() == [1, 1]
    calls.clear()
    index, tokens, rank = rescore_languages(
        probs, languages, 2, transcribe, confidence=0.5
    )
    assert calls == [(["de", "it"], False)]
    assert index.tolist() == [0, 2] and rank.tolist() == [0, 0]
    for bad in (0, -0.1, 1.01, True, "0.9"):
        with pytest.raises(ValueError, match="lid_rescore_confidence"):
            check_confidence(bad)


def test_export_refuses_more_candidates_than_languages(
    tmp_path_factory, tiny_whisper_dir
):
    with pytest.raises(ValueError, match="the pool has 2 languages"):
        _oracle(tmp_path_factory, tiny_whisper_dir, 3)


def _hesitant(monkeypatch, module, lid):
    monkeypatch.setattr(
        module,
        "detect_language",
        lambda *a, **k: ([LANGUAGES[i] for i in lid.argmax(-1)], lid),
    )


def test_interface_one_lora_changes_only_the_prompt(
    clips, tmp_path_factory, tiny_whisper_dir, monkeypatch
):
    folder, _ = export(
        tmp_path_factory,
        tiny_whisper_dir,
        "multilingual_lora",
        "multilingual_rescored",
        language_aware=False,
        lid_rescore_top_k=2,
    )
    asr = load(folder, tmp_path_factory)
    wavs, lens = as_batch(clips)
    lid = torch.tensor([[0.45, 0.55], [0.6, 0.4]])
    _hesitant(monkeypatch, decoding, lid)
    results = asr.transcribe_batch_detailed(wavs, lens)
    best, chosen = _one_lora_by_hand(asr, wavs, lens, lid)
    assert [r.language for r in results] == [LANGUAGES[i] for i in best]
    assert [r.tokens for r in results] == chosen


def test_interface_rescores_only_unsure_utterances(
    clips, tmp_path_factory, tiny_whisper_dir, monkeypatch
):
    folder, _ = export(
        tmp_path_factory,
        tiny_whisper_dir,
        "multilingual_lora",
        "multilingual_confident",
        language_aware=False,
        lid_rescore_top_k=2,
        lid_rescore_confidence=0.58,
    )
    with open(os.path.join(folder, "model.json"), encoding="utf-8") as f:
        assert json.load(f)["lid_rescore_confidence"] == 0.58
    asr = load(folder, tmp_path_factory)
    assert asr.hparams.lid_rescore_confidence == 0.58
    wavs, lens = as_batch(clips)
    overruled_sure = 0
    # The second clip's first language (0.6) is sure enough to keep.
    for lid in (
        torch.tensor([[0.45, 0.55], [0.6, 0.4]]),
        torch.tensor([[0.4, 0.6], [0.45, 0.55]]),
    ):
        _hesitant(monkeypatch, decoding, lid)
        results = asr.transcribe_batch_detailed(wavs, lens)
        best, _ = _one_lora_by_hand(asr, wavs, lens, lid)
        first = lid.argmax(-1).tolist()
        sure = (lid.max(-1).values >= 0.58).tolist()
        expected = [f if s else b for b, f, s in zip(best, first, sure)]
        assert [r.language for r in results] == [LANGUAGES[i] for i in expected]
        overruled_sure += sum(
            s and b != f for b, f, s in zip(best, first, sure)
        )
    # Live: rescoring every clip would have moved a sure one.
    assert overruled_sure > 0


def _one_lora_by_hand(asr, wavs, lens, lid):
    """One encoder output (the LoRA routed), each language's prompt."""
    with torch.no_grad(), asr.experts.scope(route=0):
        enc = asr.whisper.forward_encoder(asr.whisper._get_mel(wavs))
        seconds = lens * wavs.shape[1] / 16000
        return _each_prompt(asr.whisper, enc, seconds, lid)


def _each_prompt(whisper, enc, seconds, lid):
    """One model, every language's prompt: the joint choice and tokens."""
    limits = decoding.max_tokens_for(seconds)
    found, totals = [], []
    for code in LANGUAGES:
        prompts = decoding.prompt_tokens(whisper, [code] * len(enc))
        tokens = decoding.greedy_decode(whisper, enc, prompts, limits)
        total, _ = decoding.score_tokens(whisper, enc, prompts, tokens)
        found.append(tokens)
        totals.append(total)
    best = (lid.log() + torch.stack(totals, 1)).argmax(-1).tolist()
    return best, [found[i][row] for row, i in enumerate(best)]


def _multilingual_brain(
    sb_whisper, top_k, aware=False, experts=None, confidence=None
):
    hparams = dict(
        whisper=sb_whisper,
        experts=experts,
        languages=LANGUAGES,
        language_aware=aware,
        lid_rescore_top_k=top_k,
        lid_rescore_confidence=confidence,
    )
    Brain = load_recipe_script().MultilingualBrain
    return Brain(hparams=hparams, run_opts={"device": "cpu"})


def test_recipe_one_lora_keeps_the_likeliest_pair(sb_whisper, monkeypatch):
    torch.manual_seed(0)
    mel = sb_whisper._get_mel(torch.randn(6, 16000))
    lid = torch.tensor([[0.45, 0.55], [0.6, 0.4]]).repeat(3, 1)
    brain = _multilingual_brain(
        sb_whisper, 2, experts=attach(sb_whisper, ["multilingual"], 0)
    )
    _hesitant(monkeypatch, load_recipe_script().decoding, lid)
    brain.on_stage_start(None)
    batch = SimpleNamespace(duration=[1.0] * 6)
    with torch.no_grad(), brain.experts.scope(route=0):
        enc = brain.whisper.forward_encoder(mel)
        out = brain.decode(batch, enc)
        best, chosen = _each_prompt(sb_whisper, enc, torch.ones(6), lid)
    assert out["pred_langs"] == [LANGUAGES[i] for i in best]
    assert out["hyps"] == decoding.decode_text(sb_whisper, chosen)
    changed = sum(b != f for b, f in zip(best, lid.argmax(-1).tolist()))
    assert brain.rescored == {"changed": changed, "utterances": 6, "unsure": 0}
    assert 0 < changed < 6

    # Rows of 0.55 rescored, rows of 0.6 kept: the language step decides.
    brain.hparams.lid_rescore_confidence = 0.58
    brain.on_stage_start(None)
    with torch.no_grad(), brain.experts.scope(route=0):
        gated = brain.decode(batch, enc)
    first = lid.argmax(-1).tolist()
    expected = [
        b if p < 0.58 else f for b, f, p in zip(best, first, lid.max(-1).values)
    ]
    assert gated["pred_langs"] == [LANGUAGES[i] for i in expected]
    assert brain.rescored["unsure"] == 3
    # Live: rescoring every row moved some rows the gate now keeps.
    assert expected != best
    assert brain.rescored["changed"] == sum(
        e != f for e, f in zip(expected, first)
    )


def test_recipe_checks_rescoring(sb_whisper):
    with pytest.raises(ValueError, match="the pool has 2 languages"):
        _multilingual_brain(sb_whisper, 3)
    with pytest.raises(ValueError, match="lid_rescore_confidence=0"):
        _multilingual_brain(sb_whisper, 2, confidence=0)
    assert _multilingual_brain(sb_whisper, 2).rescores()
    # Aware, the given language prompts: nothing to rescore (one yaml
    # serves both scenarios, as oracle_routing does).
    assert not _multilingual_brain(sb_whisper, 2, aware=True).rescores()
