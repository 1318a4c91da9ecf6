"""Distillation loss, the target mask, and the Brains' use of the routing."""

from types import SimpleNamespace

import pytest
import torch

from speechbrain_lora_experts.attach import WhisperLoRAExperts
from speechbrain_lora_experts.data.pipeline import target_mask
from speechbrain_lora_experts.distill import (
    distillation_kl,
    distillation_loss,
    masked_cross_entropy,
)
from speechbrain_lora_experts.recipe_runner import load_recipe_script

# The Brains live in the recipe script, as in SpeechBrain recipes.
DistillBrain = load_recipe_script().DistillBrain
ExpertBrain = load_recipe_script().ExpertBrain

SOT, DE, ES, TRANSCRIBE, NOTS = 50258, 50261, 50262, 50359, 50363


def train_stage():
    """``sb.Stage.TRAIN`` (imported here: the two linters' isort settings
    disagree on whether speechbrain is first-party)."""
    import speechbrain as sb

    return sb.Stage.TRAIN


def test_target_mask_teaches_text_and_the_language_only_when_unknown():
    lens = torch.tensor([1.0, 5 / 7])
    aware = target_mask(lens, (2, 7), language_aware=True)
    agnostic = target_mask(lens, (2, 7), language_aware=False)
    # Targets: language, task, notimestamps, text..., eot; then padding.
    assert aware.tolist() == [
        [0, 0, 0, 1, 1, 1, 1],
        [0, 0, 0, 1, 1, 0, 0],
    ]
    assert agnostic.tolist() == [
        [1, 0, 0, 1, 1, 1, 1],
        [1, 0, 0, 1, 1, 0, 0],
    ]


def test_masked_cross_entropy_ignores_masked_tokens():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5)
    targets = torch.randint(5, (2, 3))
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    loss = masked_cross_entropy(logits, targets, mask)
    kept = [(0, 0), (0, 1), (1, 0)]
    expected = sum(
        torch.nn.functional.cross_entropy(logits[b, t], targets[b, t])
        for b, t in kept
    ) / len(kept)
    torch.testing.assert_close(loss, expected)
    # Whatever sits at masked positions does not matter.
    noisy = logits.clone()
    noisy[0, 2] += 100
    noisy[1, 1:] -= 50
    torch.testing.assert_close(masked_cross_entropy(noisy, targets, mask), loss)


def test_distillation_kl_is_tempered_and_zero_only_at_the_teacher():
    torch.manual_seed(1)
    teacher = torch.randn(1, 4, 6)
    student = torch.randn(1, 4, 6)
    mask = torch.ones(1, 4)
    t = 2.0
    p = torch.softmax(teacher / t, -1)
    q = torch.log_softmax(student / t, -1)
    expected = t * t * (p * (p.log() - q)).sum(-1).mean()
    torch.testing.assert_close(
        distillation_kl(student, teacher, mask, temperature=t), expected
    )
    assert distillation_kl(student, teacher, mask) > 0
    assert distillation_kl(teacher, teacher, mask).abs() < 1e-6


def test_distillation_loss_mixes_ce_and_kl_and_trains_only_the_student():
    torch.manual_seed(2)
    student = torch.randn(2, 3, 5, requires_grad=True)
    teacher = torch.randn(2, 3, 5, requires_grad=True)
    targets = torch.randint(5, (2, 3))
    mask = torch.ones(2, 3)
    loss, ce, kl = distillation_loss(
        student, teacher, targets, mask, weight=0.25, temperature=3.0
    )
    torch.testing.assert_close(loss, 0.75 * ce + 0.25 * kl)
    torch.testing.assert_close(ce, masked_cross_entropy(student, targets, mask))
    torch.testing.assert_close(
        kl, distillation_kl(student, teacher, mask, temperature=3.0)
    )
    loss.backward()
    assert student.grad.abs().sum() > 0
    assert teacher.grad is None  # the teacher is a constant target
    only_ce, _, _ = distillation_loss(
        student, teacher, targets, mask, weight=0.0
    )
    torch.testing.assert_close(only_ce, ce)


class Batch(SimpleNamespace):
    """What ``compute_forward`` reads of a SpeechBrain ``PaddedBatch``."""

    def to(self, device):
        return self


def make_batch():
    torch.manual_seed(0)
    tokens = torch.tensor(
        [[SOT, DE, TRANSCRIBE, NOTS, 400], [SOT, ES, TRANSCRIBE, NOTS, 401]]
    )
    return Batch(
        sig=(torch.randn(2, 8000) * 0.1, torch.ones(2)),
        tokens_bos=(tokens, torch.ones(2)),
        lang_id=[0, 1],
    )


def make_brain(cls, sb_whisper, names):
    experts = WhisperLoRAExperts(sb_whisper, expert_names=names, rank=4)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in experts.layers.values():
            for e in layer.experts:
                e.lora_B.copy_(torch.randn(e.lora_B.shape, generator=g) * 0.5)
    brain = object.__new__(cls)
    brain.hparams = SimpleNamespace(whisper=sb_whisper, experts=experts)
    brain.device = "cpu"
    return brain, experts


def record_calls(sb_whisper, experts, fail_on=None):
    """What each encoder/decoder pass ran under."""
    calls = []
    routing = experts.routing

    def hook(name):
        def record(module, args, kwargs):
            calls.append(
                dict(
                    part=name,
                    training=module.training,
                    grad=torch.is_grad_enabled(),
                    mode=routing.mode,
                    uniform=routing.uniform,
                    index=None
                    if routing.index is None
                    else routing.index.tolist(),
                )
            )
            if fail_on is not None and fail_on(calls[-1]):
                raise RuntimeError("simulated failure")

        return record

    model = sb_whisper.model
    return calls, [
        model.encoder.register_forward_pre_hook(hook("enc"), with_kwargs=True),
        model.decoder.register_forward_pre_hook(hook("dec"), with_kwargs=True),
    ]


def test_distill_teacher_runs_in_eval_without_grad(sb_whisper):
    brain, experts = make_brain(
        DistillBrain, sb_whisper, ["de", "es", "student"]
    )
    sb_whisper.train()
    batch = make_batch()
    calls, hooks = record_calls(sb_whisper, experts)
    try:
        out = brain.compute_forward(batch, train_stage())
    finally:
        for h in hooks:
            h.remove()
    teacher, student = calls[:2], calls[2:]
    for call in teacher:
        assert not call["training"] and not call["grad"]
        assert call["mode"] == "route" and call["index"] == [0, 1]
    assert student and all(c["training"] and c["grad"] for c in student)
    assert all(c["uniform"] == 2 for c in student)
    assert out["logits"].requires_grad
    assert not out["teacher_logits"].requires_grad
    # The teacher's logits are each language's expert, in eval mode.
    sb_whisper.eval()
    mel = sb_whisper._get_mel(batch.sig[0])
    with experts.scope(route=["de", "es"]), torch.no_grad():
        enc = sb_whisper.forward_encoder(mel)
        expected = sb_whisper.forward_decoder(
            enc, batch.tokens_bos[0], use_cache=False
        )[0]
    torch.testing.assert_close(
        out["teacher_logits"], expected, atol=1e-5, rtol=1e-5
    )
    assert experts.routing.mode == "off"


@pytest.mark.parametrize("fail", ["teacher", "student"])
def test_a_failed_step_leaves_no_routing_and_the_mode_as_it_was(
    sb_whisper, fail
):
    brain, experts = make_brain(
        DistillBrain, sb_whisper, ["de", "es", "student"]
    )
    sb_whisper.train()
    fail_on = {
        "teacher": lambda c: c["part"] == "dec" and not c["grad"],
        "student": lambda c: c["part"] == "dec" and c["grad"],
    }[fail]
    calls, hooks = record_calls(sb_whisper, experts, fail_on)
    try:
        with pytest.raises(RuntimeError, match="simulated"):
            brain.compute_forward(make_batch(), train_stage())
    finally:
        for h in hooks:
            h.remove()
    assert sb_whisper.training
    assert experts.routing.mode == "off"
    assert not experts.routing.lock._is_owned()


def test_brain_forward_restores_the_routing_on_failure(sb_whisper):
    brain, experts = make_brain(ExpertBrain, sb_whisper, ["de"])
    experts.route(-1)  # what the caller had set
    calls, hooks = record_calls(
        sb_whisper, experts, fail_on=lambda c: c["part"] == "dec"
    )
    try:
        with pytest.raises(RuntimeError, match="simulated"):
            brain.compute_forward(make_batch(), train_stage())
    finally:
        for h in hooks:
            h.remove()
    assert calls[0]["uniform"] == 0  # the expert was routed for the step
    assert experts.routing.mode == "route" and experts.routing.uniform == -1
