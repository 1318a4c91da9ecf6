"""``lid_rescore_top_k`` in the pretrained interface (fuse, oracle).

The recipe's side is in ``test_oracle_routing``; here the exported model
is checked against the same choice made by hand on the loaded model.
"""

import json
import os

import pytest
import torch
from interface_fixtures import LANGUAGES, as_batch, export, load, write_clips

from speechbrain_lora_experts import decoding


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return write_clips(tmp_path_factory.mktemp("clips"))


def _oracle(tmp_path_factory, hub, top_k):
    folder, _ = export(
        tmp_path_factory,
        hub,
        "fuse",
        f"oracle{top_k}",
        fusion="oracle",
        language_aware=False,
        lid_rescore_top_k=top_k,
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


def test_interface_keeps_the_likeliest_language_and_transcript(
    clips, tmp_path_factory, tiny_whisper_dir, monkeypatch
):
    folder, asr = _oracle(tmp_path_factory, tiny_whisper_dir, 2)
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


def test_export_refuses_more_candidates_than_languages(
    tmp_path_factory, tiny_whisper_dir
):
    with pytest.raises(ValueError, match="the pool has 2 languages"):
        _oracle(tmp_path_factory, tiny_whisper_dir, 3)
