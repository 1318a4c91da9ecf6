"""The fusion gate and the tap that feeds it from inside the encoder."""

import pytest
import torch

from speechbrain_lora_experts.attach import WhisperLoRAExperts
from speechbrain_lora_experts.decoding import detect_language
from speechbrain_lora_experts.gate import GateTap, UtteranceGate


def _pool(sb_whisper):
    experts = WhisperLoRAExperts(
        sb_whisper,
        expert_names=["de", "es"],
        rank=4,
        alpha=8,
        targets=["q_proj", "v_proj", "fc1", "fc2"],
    )
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in experts.layers.values():
            for e in layer.experts:
                e.lora_B.copy_(torch.randn(e.lora_B.shape, generator=g))
    return experts


@pytest.mark.parametrize(
    "features", ["whisper_lid", "base_encoder", "first_adapted"]
)
def test_tap_feeds_the_gate_frozen_features(sb_whisper, features):
    """The gate sees base-model features, never its own experts' output."""
    experts = _pool(sb_whisper)
    gate = UtteranceGate.for_whisper(sb_whisper, 2, features=features)
    gate.eval()
    mel = sb_whisper._get_mel(torch.randn(2, 16000) * 0.1)
    fraction = torch.tensor([0.05, 0.03])
    encoder = sb_whisper.model.encoder
    with torch.no_grad():
        experts.off()
        captured = {}

        def capture(module, args):
            captured["layer0"] = args[0]

        hook = encoder.layers[0].register_forward_pre_hook(capture)
        base_out = sb_whisper.forward_encoder(mel)
        hook.remove()
        expected_input = (
            captured["layer0"] if features == "first_adapted" else base_out
        )
        prior = None
        if features == "whisper_lid":
            _, probs = detect_language(sb_whisper, base_out, ["de", "es"])
            prior = probs.log()
        expected, _ = gate(expected_input, fraction, lid_prior=prior)

        tap = GateTap(sb_whisper, experts, gate)
        tap.prepare(valid_fraction=fraction)
        fused_out = sb_whisper.forward_encoder(mel)
        tap.remove()
    torch.testing.assert_close(tap.weights, expected, atol=1e-5, rtol=1e-5)
    if features == "whisper_lid":
        # Untrained, the gate weighs the experts by Whisper's own LID.
        torch.testing.assert_close(tap.weights, probs, atol=1e-5, rtol=1e-5)
    # The experts did act on the fused pass (the tap mixed them in).
    assert not torch.allclose(fused_out, base_out)
    assert experts.routing.mode == "mix"


def test_gate_features_are_checked(sb_whisper):
    with pytest.raises(ValueError, match="gate features"):
        UtteranceGate(8, 2, features="decoder")
    gate = UtteranceGate(8, 2)
    with pytest.raises(ValueError, match="lid_prior"):
        gate(torch.randn(1, 4, 8), torch.ones(1))
    experts = _pool(sb_whisper)
    with pytest.raises(TypeError, match="wrapper"):
        GateTap(sb_whisper.model, experts, gate)
