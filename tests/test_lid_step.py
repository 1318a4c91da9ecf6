"""The language-ID step with projections on the query's side is exact."""

import pytest
import torch

from speechbrain_lora_experts.decoding import detect_language
from speechbrain_lora_experts.lid_step import language_logits

CANDIDATES = ["de", "es", "it", "ru", "fr", "zh", "en"]


@pytest.fixture(scope="module")
def lively(tiny_whisper_dir, tmp_path_factory):
    """(whisper, enc): random weights large enough to separate languages."""
    from speechbrain_lora_experts.whisper import Whisper

    save = tmp_path_factory.mktemp("save")
    whisper = Whisper(tiny_whisper_dir, str(save), language="de").eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in whisper.model.named_parameters():
            if p.dim() >= 2 and "embed_positions" not in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        wav = torch.randn(4, 32000, generator=g) * 0.1
        enc = whisper.forward_encoder(whisper._get_mel(wav))
    return whisper, enc


def decoder_logits(whisper, enc, ids):
    """The ordinary decoder call's logits of ``ids`` after ``sot``."""
    sot = torch.full((enc.shape[0], 1), whisper.bos)
    with torch.no_grad():
        logits, _, _ = whisper.forward_decoder(enc, sot, use_cache=False)
    return logits[:, -1, ids]


def ids_of(whisper, codes):
    token = whisper.tokenizer.convert_tokens_to_ids
    return torch.tensor([token(f"<|{code}|>") for code in codes])


def attach_pool(whisper):
    """Decoder experts, cross-attention v_proj included, non-zero."""
    from speechbrain_lora_experts.attach import WhisperLoRAExperts

    pool = WhisperLoRAExperts(
        whisper,
        expert_names=["de", "es"],
        rank=2,
        alpha=4,
        targets=("q_proj", "k_proj", "v_proj", "fc1"),
        parts=("decoder",),
    )
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for layer in pool.layers.values():
            for expert in layer.experts:
                expert.lora_B.copy_(
                    torch.randn(expert.lora_B.shape, generator=g)
                )
    return pool


def test_equals_the_decoder_call(lively):
    whisper, enc = lively
    ids = ids_of(whisper, CANDIDATES)
    with torch.no_grad():
        fast = language_logits(whisper, enc, ids, whisper.bos)
    slow = decoder_logits(whisper, enc, ids)
    assert fast.shape == (4, len(CANDIDATES))
    assert fast.dtype == torch.float32
    # Logits spread over several units: rounding is orders of magnitude less.
    assert slow.std() > 1.0
    assert torch.allclose(fast, slow, atol=1e-4, rtol=1e-5)
    # The utterances are told apart (the test is not comparing constants).
    assert not torch.allclose(fast[0], fast[1], atol=1e-2)
    codes, probs = detect_language(whisper, enc, CANDIDATES)
    assert torch.allclose(probs, slow.softmax(dim=-1), atol=1e-5)
    assert codes == [CANDIDATES[i] for i in slow.argmax(dim=-1).tolist()]


def test_experts_off_merged_and_routed(lively, tiny_whisper_dir, tmp_path):
    from speechbrain_lora_experts.whisper import Whisper

    whisper, enc = lively
    whisper = Whisper(tiny_whisper_dir, str(tmp_path), language="de").eval()
    whisper.model.load_state_dict(lively[0].model.state_dict())
    ids = ids_of(whisper, CANDIDATES)
    base = decoder_logits(whisper, enc, ids)
    pool = attach_pool(whisper)
    with torch.no_grad():
        # Experts off: the base step, fast.
        off = language_logits(whisper, enc, ids, whisper.bos)
        assert torch.allclose(off, base, atol=1e-4, rtol=1e-5)
        # Routed into the cross-attention projections: only the decoder
        # call is exact, so the step declines and detect_language falls
        # back to it.
        with pool.scope(route=torch.tensor([0, 1, 0, 1])):
            assert language_logits(whisper, enc, ids, whisper.bos) is None
            routed = decoder_logits(whisper, enc, ids)
            _, probs = detect_language(whisper, enc, CANDIDATES)
        assert torch.allclose(probs, routed.softmax(dim=-1), atol=1e-6)
        assert not torch.allclose(routed, base, atol=1e-2)
        # A merged expert lives in the weights: fast again, and it is the
        # merged model's step, not the base's.
        pool.merge(1)
        merged = language_logits(whisper, enc, ids, whisper.bos)
        merged_slow = decoder_logits(whisper, enc, ids)
        assert torch.allclose(merged, merged_slow, atol=1e-4, rtol=1e-5)
        assert torch.allclose(merged[1::2], routed[1::2], atol=1e-4, rtol=1e-5)
        assert not torch.allclose(merged, base, atol=1e-2)
        pool.unmerge()


def test_declines_under_training_dropout(lively, tiny_whisper_dir, tmp_path):
    from speechbrain_lora_experts.whisper import Whisper

    whisper = Whisper(tiny_whisper_dir, str(tmp_path), language="de")
    ids = ids_of(whisper, CANDIDATES)
    enc = lively[1]
    whisper.model.config.dropout = 0.1
    with torch.no_grad():
        assert language_logits(whisper.train(), enc, ids, whisper.bos) is None
        # In eval mode dropout is off: the step is exact again.
        fast = language_logits(whisper.eval(), enc, ids, whisper.bos)
        assert torch.allclose(
            fast, decoder_logits(whisper, enc, ids), atol=1e-4, rtol=1e-5
        )
        # Training without dropout: exact too.
        whisper.model.config.dropout = 0.0
        fast = language_logits(whisper.train(), enc, ids, whisper.bos)
        assert torch.allclose(
            fast, decoder_logits(whisper, enc, ids), atol=1e-4, rtol=1e-5
        )
