"""Experts attached to SpeechBrain's Whisper wrapper."""

import pytest
import torch

from speechbrain_lora_experts.attach import (
    WhisperLoRAExperts,
    parse_layers,
    select_targets,
)
from speechbrain_lora_experts.experts import LoRAExpertsLinear

SOT, DE, ES, TRANSCRIBE, NOTS = 50258, 50261, 50262, 50359, 50363


def randomize(experts, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in experts.layers.values():
            for e in layer.experts:
                e.lora_B.copy_(torch.randn(e.lora_B.shape, generator=g) * 0.5)


def test_select_targets_by_pattern(sb_whisper):
    model = sb_whisper.model
    names = select_targets(model, ["q_proj", "fc2"], ["decoder"], "1")
    assert names == [
        "decoder.layers.1.self_attn.q_proj",
        "decoder.layers.1.encoder_attn.q_proj",
        "decoder.layers.1.fc2",
    ]
    names = select_targets(model, ["encoder_attn.v_proj"], ["decoder"])
    assert names == [f"decoder.layers.{i}.encoder_attn.v_proj" for i in (0, 1)]
    names = select_targets(
        model, ["out_proj"], ["encoder", "decoder"], {"encoder": [0]}
    )
    assert names[0] == "encoder.layers.0.self_attn.out_proj"
    assert len(names) == 1 + 4
    assert parse_layers("0-1,3") == [0, 1, 3]
    with pytest.raises(ValueError, match="valid targets"):
        select_targets(model, ["query"], ["decoder"])
    with pytest.raises(ValueError, match="unknown part"):
        select_targets(model, ["q_proj"], ["middle"])


def test_attach_freezes_base_and_reports_parameters(sb_whisper):
    experts = WhisperLoRAExperts(
        sb_whisper,
        expert_names=["de", "es"],
        rank=4,
        alpha=8,
        targets=["q_proj", "v_proj", "fc1", "fc2"],
    )
    assert len(experts.layers) == 2 * 4 + 2 * 6
    assert all(
        isinstance(sb_whisper.model.get_submodule(n), LoRAExpertsLinear)
        for n in experts.layers
    )
    trainable = {n for n, p in sb_whisper.named_parameters() if p.requires_grad}
    assert trainable and all(".experts." in n for n in trainable)
    report = experts.parameter_report()
    # r * (in + out) per layer; d_model 64, ffn 128, rank 4.
    qv, ffn = 4 * (64 + 64), 4 * (64 + 128)
    enc = 2 * (2 * qv + 2 * ffn)
    dec = 2 * (4 * qv + 2 * ffn)
    assert report["per_expert"] == [enc + dec, enc + dec]
    assert report["trainable"] == 2 * (enc + dec)
    assert report["base"] == sum(
        p.numel()
        for n, p in sb_whisper.model.named_parameters()
        if ".experts." not in n
    )
    # The checkpointable state is adapters only.
    keys = list(experts.state_dict())
    assert keys and all("lora_" in k for k in keys)
    experts.set_trainable(["es"])
    assert experts.parameter_report()["trainable"] == enc + dec


def test_mixed_language_batch_routes_each_utterance(sb_whisper):
    experts = WhisperLoRAExperts(
        sb_whisper,
        expert_names=["de", "es", "it"],
        rank=4,
        alpha=8,
        targets=["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    )
    randomize(experts)
    torch.manual_seed(0)
    wavs = torch.randn(4, 8000) * 0.1
    tokens = torch.tensor([[SOT, DE, TRANSCRIBE, NOTS, 400, 401]] * 4)
    index = torch.tensor([0, 2, -1, 1])
    experts.route(index)
    with torch.no_grad():
        _, batch_logits, _ = sb_whisper(wavs, tokens)
        for b, e in enumerate(index.tolist()):
            experts.route(e)
            _, alone, _ = sb_whisper(wavs[b : b + 1], tokens[b : b + 1])
            torch.testing.assert_close(
                batch_logits[b : b + 1], alone, atol=1e-4, rtol=1e-4
            )
        # Experts really change the output.
        experts.off()
        _, base, _ = sb_whisper(wavs, tokens)
    assert (base[0] - batch_logits[0]).abs().max() > 1e-2
    torch.testing.assert_close(base[2], batch_logits[2], atol=1e-4, rtol=1e-4)


def test_lora_trains_through_sb_whisper(sb_whisper):
    experts = WhisperLoRAExperts(
        sb_whisper, n_experts=1, rank=2, targets=["q_proj", "v_proj"]
    )
    experts.route(0)
    sb_whisper.train()
    tokens = torch.tensor([[SOT, DE, TRANSCRIBE, NOTS, 400]])
    _, logits, _ = sb_whisper(torch.randn(1, 4000), tokens)
    logits.logsumexp(-1).sum().backward()
    layer = experts.layers["encoder.layers.0.self_attn.q_proj"]
    assert layer.experts[0].lora_A.grad is not None
    assert layer.base.weight.grad is None


def test_merge_whole_model_matches_routing(sb_whisper):
    experts = WhisperLoRAExperts(sb_whisper, expert_names=["de", "es"], rank=4)
    randomize(experts, seed=3)
    wavs = torch.randn(1, 8000) * 0.1
    tokens = torch.tensor([[SOT, ES, TRANSCRIBE, NOTS, 300]])
    state = {
        k: v.clone()
        for k, v in sb_whisper.model.state_dict().items()
        if "experts" not in k
    }
    with torch.no_grad():
        experts.route(1)
        routed = sb_whisper(wavs, tokens)[1]
        experts.merge("es")
        assert experts.merged
        # Merged, Whisper holds plain Linear layers again (no overhead).
        assert not any(
            isinstance(m, LoRAExpertsLinear) for m in sb_whisper.modules()
        )
        with pytest.raises(RuntimeError, match="unmerge"):
            experts.route(0)
        merged = sb_whisper(wavs, tokens)[1]
        experts.unmerge()
    assert all(
        sb_whisper.model.get_submodule(name) is layer
        for name, layer in experts.layers.items()
    )
    torch.testing.assert_close(merged, routed, atol=1e-4, rtol=1e-4)
    after = sb_whisper.model.state_dict()
    changed = [k for k, v in state.items() if not torch.equal(after[k], v)]
    # Only the adapted weights moved, and back within PEFT's tolerance.
    assert changed and all(
        k.replace(".base.weight", "") in experts.layers for k in changed
    )
    for k in changed:
        torch.testing.assert_close(after[k], state[k], atol=1e-4, rtol=1e-4)
    # Asked for, a backup makes the round trip bit-exact.
    experts.merge("de", keep_backup=True)
    experts.unmerge()
    again = sb_whisper.model.state_dict()
    assert all(torch.equal(again[k], after[k]) for k in state)


def test_scope_routes_by_name_and_restores(sb_whisper):
    experts = WhisperLoRAExperts(sb_whisper, expert_names=["de", "es"], rank=2)
    experts.route("es")
    with experts.scope(route=["de", "es", -1]) as routing:
        assert routing.index.tolist() == [0, 1, -1]
        with experts.scope():
            assert experts.routing.mode == "off"
        assert routing.index.tolist() == [0, 1, -1]
    assert experts.routing.mode == "route" and experts.routing.uniform == 1
    with pytest.raises(KeyError, match="no expert named 'fr'"):
        experts.scope(route="fr")
    with pytest.raises(RuntimeError, match="add_token_gates"):
        experts.scope(token=True)
    experts.off()
    experts.merge("de")
    with pytest.raises(RuntimeError, match="unmerge"):
        experts.scope(route="de")
    with experts.scope():  # base only is what a merged model runs
        pass
    experts.unmerge()
    with experts.scope(route="de"):
        with pytest.raises(RuntimeError, match="inside a routing scope"):
            experts.merge("de")


def test_unknown_layer_and_expert_names(sb_whisper):
    with pytest.raises(ValueError, match="does not exist"):
        WhisperLoRAExperts(sb_whisper, layer_names=["decoder.layers.7.fc1"])
    experts = WhisperLoRAExperts(sb_whisper, expert_names=["de"], rank=2)
    with pytest.raises(KeyError, match="experts: \\['de'\\]"):
        experts.index_of("fr")
    with pytest.raises(ValueError, match="duplicate"):
        WhisperLoRAExperts(sb_whisper, expert_names=["a", "a"])
