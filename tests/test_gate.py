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


@pytest.mark.parametrize("features", ["whisper_lid", "base_encoder"])
def test_base_pass_over_the_audio_only(sb_whisper, features):
    """The gate's frozen pass keeps the longest clip, rounded up to the
    bucket: frozen layers over those frames, the clips' shares rescaled."""
    experts = _pool(sb_whisper)
    gate = UtteranceGate.for_whisper(
        sb_whisper, 2, features=features, base_pass_bucket_s=1.0
    )
    gate.eval()
    mel = sb_whisper._get_mel(torch.randn(2, 16000) * 0.1)
    encoder = sb_whisper.model.encoder
    n_frames = encoder.embed_positions.num_embeddings
    # 1.5 s and 0.9 s of the window: two 1 s buckets, 100 frames.
    fraction = torch.tensor([75.0, 45.0]) / n_frames
    seen = []
    count = encoder.layers[-1].register_forward_pre_hook(
        lambda module, args: seen.append(args[0].shape[1])
    )
    try:
        with torch.no_grad():
            experts.off()
            captured = {}
            hook = encoder.layers[0].register_forward_pre_hook(
                lambda module, args: captured.update(layer0=args[0])
            )
            sb_whisper.forward_encoder(mel)
            hook.remove()
            cut = captured["layer0"][:, :100]
            for layer in encoder.layers:
                cut = layer(cut, None)
                cut = cut[0] if isinstance(cut, tuple) else cut
            cut = encoder.layer_norm(cut)
            prior = None
            if features == "whisper_lid":
                _, probs = detect_language(sb_whisper, cut, ["de", "es"])
                prior = probs.log()
            expected, _ = gate(cut, fraction * n_frames / 100, lid_prior=prior)
            seen.clear()
            tap = GateTap(sb_whisper, experts, gate)
            tap.prepare(valid_fraction=fraction)
            sb_whisper.forward_encoder(mel)
            tap.remove()
            # The frozen pass over 100 frames, then the fused one over all.
            assert seen == [100, n_frames]
            torch.testing.assert_close(
                tap.weights, expected, atol=1e-5, rtol=1e-5
            )
            # A bucket as long as the window is the whole-window pass.
            whole = {}
            for bucket in (None, n_frames / 50):
                gate.base_pass_bucket_s = bucket
                tap = GateTap(sb_whisper, experts, gate)
                tap.prepare(valid_fraction=fraction)
                sb_whisper.forward_encoder(mel)
                tap.remove()
                whole[bucket] = tap.weights
            assert torch.equal(whole[None], whole[n_frames / 50])
            assert not torch.allclose(whole[None], expected, atol=1e-6)
    finally:
        count.remove()


def test_base_pass_bucket_is_checked():
    for bucket in (0, -2.0, 0.015):
        with pytest.raises(ValueError, match="base_pass_bucket_s"):
            UtteranceGate(8, 2, base_pass_bucket_s=bucket)
    assert UtteranceGate(8, 2, base_pass_bucket_s=0.02).base_pass_bucket_s


def test_gate_features_are_checked(sb_whisper):
    with pytest.raises(ValueError, match="gate features"):
        UtteranceGate(8, 2, features="decoder")
    gate = UtteranceGate(8, 2)
    with pytest.raises(ValueError, match="lid_prior"):
        gate(torch.randn(1, 4, 8), torch.ones(1))
    experts = _pool(sb_whisper)
    with pytest.raises(TypeError, match="wrapper"):
        GateTap(sb_whisper.model, experts, gate)


def test_top_k_keeps_the_k_largest_renormalised():
    gate = UtteranceGate(4, 4, hidden_size=8, top_k=2)
    logits = torch.tensor([[2.0, 0.0, 1.0, -1.0], [0.0, 3.0, 0.0, 2.5]])
    weights = gate.weights_from_logits(logits)
    dense = torch.softmax(logits, dim=-1)
    assert (weights > 0).sum(dim=1).tolist() == [2, 2]
    assert weights[0, 1] == 0 and weights[0, 3] == 0
    assert weights[1, 0] == 0 and weights[1, 2] == 0
    # The kept experts keep their relative weight, renormalised to 1.
    torch.testing.assert_close(
        weights[0, [0, 2]], dense[0, [0, 2]] / dense[0, [0, 2]].sum()
    )
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(2))
    hard = UtteranceGate(4, 4, top_k=1).weights_from_logits(logits)
    assert hard.tolist() == [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match="top_k"):
        UtteranceGate(4, 4, top_k=5)


def test_temperature_softens_the_weights():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    weights = {
        t: UtteranceGate(4, 3, temperature=t).weights_from_logits(logits)
        for t in (0.5, 1.0, 4.0)
    }
    torch.testing.assert_close(weights[4.0], torch.softmax(logits / 4, -1))
    torch.testing.assert_close(weights[0.5], torch.softmax(logits * 2, -1))
    assert weights[0.5][0, 0] > weights[1.0][0, 0] > weights[4.0][0, 0]
    with pytest.raises(ValueError, match="temperature"):
        UtteranceGate(4, 3, temperature=0)


def test_language_embedding_conditions_an_aware_gate():
    torch.manual_seed(0)
    gate = UtteranceGate(
        8, 3, hidden_size=16, language_aware=True, features="base_encoder"
    )
    nn_init = torch.nn.init
    # The output layer starts at zero (the language prior alone decides);
    # a trained gate's is not.
    nn_init.normal_(gate.output.weight)
    nn_init.normal_(gate.language_embedding.weight)
    features, valid = torch.randn(1, 6, 8).expand(3, 6, 8), torch.ones(3)
    logits = gate.logits(features, valid, language=torch.tensor([0, 1, 2]))
    # Same audio, three languages: three different decisions.
    assert not torch.allclose(logits[0], logits[1])
    assert not torch.allclose(logits[1], logits[2])
    logits.sum().backward()
    assert gate.language_embedding.weight.grad.abs().sum(dim=1).gt(0).all()
    with pytest.raises(ValueError, match="needs language"):
        gate.logits(features, valid)
    with pytest.raises(IndexError, match="language index 3"):
        gate.logits(features, valid, language=torch.tensor([0, 1, 3]))


def test_gate_inputs_are_checked():
    gate = UtteranceGate(8, 2, features="base_encoder")
    features = torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match=r"\[B, T, 8\]"):
        gate(torch.randn(2, 5, 6), torch.ones(2))
    with pytest.raises(ValueError, match=r"valid_fraction must be \[2\]"):
        gate(features, torch.ones(3))
    lid = UtteranceGate(8, 2)
    with pytest.raises(ValueError, match=r"lid_prior must be \[2, 2\]"):
        lid(features, torch.ones(2), lid_prior=torch.zeros(2, 3))


def test_lid_loss_teaches_the_gate_the_language():
    """FusionBrain's auxiliary loss: CE of the gate logits on the language."""
    from types import SimpleNamespace

    from speechbrain_lora_experts.recipe_runner import load_recipe_script

    FusionBrain = load_recipe_script().FusionBrain

    brain = object.__new__(FusionBrain)
    brain.hparams = SimpleNamespace(
        fusion="gate",
        gate_level="utterance",
        lid_loss_weight=0.5,
        language_aware=False,
    )
    brain.device = "cpu"
    batch = SimpleNamespace(lang_id=[1, 0])
    logits = torch.tensor([[0.0, 2.0], [1.0, 0.0]], requires_grad=True)
    loss = brain.extra_loss({"gate_logits": logits}, batch, None)
    expected = 0.5 * torch.nn.functional.cross_entropy(
        logits, torch.tensor([1, 0])
    )
    torch.testing.assert_close(loss, expected)
    loss.backward()
    # Descending the loss raises the true language's logit.
    assert logits.grad[0, 1] < 0 and logits.grad[1, 0] < 0
    brain.hparams.lid_loss_weight = 0.0
    assert brain.extra_loss({"gate_logits": logits}, batch, None) == 0
    # An aware gate is told the language: no loss towards that label, so
    # the ASR loss alone decides when it borrows another expert.
    brain.hparams.lid_loss_weight = 0.5
    brain.hparams.language_aware = True
    assert brain.extra_loss({"gate_logits": logits}, batch, None) == 0


def test_tap_state_serves_one_forward(sb_whisper):
    experts = _pool(sb_whisper)
    gate = UtteranceGate.for_whisper(sb_whisper, 2, features="base_encoder")
    gate.eval()
    mel = sb_whisper._get_mel(torch.randn(2, 16000) * 0.1)
    tap = GateTap(sb_whisper, experts, gate)
    try:
        with torch.no_grad():
            tap.prepare(valid_fraction=torch.tensor([0.03, 0.05]))
            sb_whisper.forward_encoder(mel)
            first = tap.weights
            assert first.shape == (2, 2)
            # A second pass without prepare() reuses nothing.
            with pytest.raises(RuntimeError, match="prepare"):
                sb_whisper.forward_encoder(mel)
            # A batch that does not match what was prepared is refused.
            tap.prepare(valid_fraction=torch.tensor([0.03]))
            assert tap.weights is None
            with pytest.raises(ValueError, match="given 1 utterances"):
                sb_whisper.forward_encoder(mel)
            with pytest.raises(ValueError, match=r"\[B\]"):
                tap.prepare(valid_fraction=torch.ones(2, 1))
            tap.prepare(valid_fraction=torch.tensor([0.05]))
            sb_whisper.forward_encoder(mel[1:])
            torch.testing.assert_close(
                tap.weights, first[1:], atol=1e-5, rtol=1e-5
            )
    finally:
        tap.remove()
