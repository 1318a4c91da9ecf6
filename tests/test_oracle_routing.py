"""fuse.yaml's ``oracle_routing``: by label, or by the experts-off LID."""

from types import SimpleNamespace

import pytest
import torch

from speechbrain_lora_experts.attach import WhisperLoRAExperts
from speechbrain_lora_experts.decoding import detect_language
from speechbrain_lora_experts.recipe_runner import load_recipe_script

LANGUAGES = ["de", "es"]


def _brain(sb_whisper, routing, aware):
    """A FusionBrain over a two-expert pool, without the Brain machinery."""
    experts = WhisperLoRAExperts(
        sb_whisper, expert_names=LANGUAGES, rank=4, alpha=8
    )
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in experts.layers.values():
            for e in layer.experts:
                e.lora_B.copy_(torch.randn(e.lora_B.shape, generator=g))
    brain = object.__new__(load_recipe_script().FusionBrain)
    brain.hparams = SimpleNamespace(
        whisper=sb_whisper,
        experts=experts,
        languages=LANGUAGES,
        language_aware=aware,
        fusion="oracle",
        oracle_routing=routing,
        prefix_cache=False,
    )
    brain.device = "cpu"
    return brain


def _route(brain, mel, labels):
    """The experts' routing and the prompt languages of one forward."""
    batch = SimpleNamespace(
        lang_id=[LANGUAGES.index(x) for x in labels], lang=labels
    )
    brain.before_routing(batch, mel)
    with brain.routing_scope():
        brain.set_routing(batch, None)
        index = brain.experts.routing.index.tolist()
        enc = brain.run_encoder(mel)
        prompts = brain.predicted_languages(batch, enc)
    return index, prompts


def test_lid_routing_follows_the_experts_off_model(sb_whisper):
    torch.manual_seed(0)
    mel = sb_whisper._get_mel(torch.randn(4, 16000))
    with torch.no_grad():
        base, _ = detect_language(
            sb_whisper, sb_whisper.forward_encoder(mel), LANGUAGES
        )
    brain = _brain(sb_whisper, "lid", aware=False)
    # Labels that disagree with the base model everywhere: a label route
    # would pick the other expert for every utterance.
    labels = [LANGUAGES[1 - LANGUAGES.index(code)] for code in base]
    index, prompts = _route(brain, mel, labels)
    assert index == [LANGUAGES.index(code) for code in base]
    assert prompts == list(base)
    assert brain.experts.routing.mode == "off"  # restored after the scope

    # The oracle proper routes by the true language.
    brain.hparams.oracle_routing = "label"
    index, _ = _route(brain, mel, labels)
    assert index == [LANGUAGES.index(code) for code in labels]

    # Aware, the given language routes and prompts whatever the option.
    brain.hparams.oracle_routing = "lid"
    brain.hparams.language_aware = True
    index, prompts = _route(brain, mel, labels)
    assert index == [LANGUAGES.index(code) for code in labels]
    assert prompts == labels


@pytest.mark.parametrize(
    "fusion, routing, message",
    [
        ("oracle", "gate", "must be label or lid"),
        ("gate", "lid", "set oracle_routing: label"),
    ],
)
def test_oracle_routing_is_checked(sb_whisper, fusion, routing, message):
    FusionBrain = load_recipe_script().FusionBrain
    hparams = dict(fusion=fusion, oracle_routing=routing)
    with pytest.raises(ValueError, match=message):
        FusionBrain(hparams=hparams, run_opts={"device": "cpu"})
