"""fuse.yaml's ``oracle_routing``: by label, or by the experts-off LID."""

from types import SimpleNamespace

import pytest
import torch

from speechbrain_lora_experts.attach import WhisperLoRAExperts
from speechbrain_lora_experts.decoding import (
    decode_text,
    detect_language,
    greedy_decode,
    max_tokens_for,
    prompt_tokens,
    score_tokens,
)
from speechbrain_lora_experts.peft_io import save_expert
from speechbrain_lora_experts.recipe_runner import load_recipe_script
from speechbrain_lora_experts.shared_adapter import merge_shared_adapter
from speechbrain_lora_experts.whisper import Whisper

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


def _shared_folder(whisper, folder):
    """A random LoRA on every linear layer, saved as a PEFT adapter."""
    pool = WhisperLoRAExperts(whisper, expert_names=["all"], rank=4, alpha=8)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in pool.expert_parameters("all"):
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return save_expert(pool, "all", folder)


def _lid(whisper, mel):
    with torch.no_grad():
        return detect_language(whisper, whisper.forward_encoder(mel), LANGUAGES)


def test_lid_scale_lets_the_full_shared_adapter_name_the_language(
    tiny_whisper_dir, tmp_path, monkeypatch
):
    torch.manual_seed(0)
    folder = _shared_folder(
        Whisper(tiny_whisper_dir, str(tmp_path / "s")), tmp_path / "shared"
    )

    def soup(name, scale, lid_scale=None):
        whisper = Whisper(tiny_whisper_dir, str(tmp_path / name)).eval()
        return merge_shared_adapter(whisper, folder, scale, lid_scale)

    full, half = soup("full", 1.0), soup("half", 0.5)
    mel = full._get_mel(torch.randn(4, 16000))
    (by_full, p_full), (_, p_half) = _lid(full, mel), _lid(half, mel)
    # The two weights give other language probabilities: the option
    # must matter (the tiny model names de either way).
    assert (p_full - p_half).abs().max() > 1e-3

    # Spy on the language step the recipe runs.
    module = load_recipe_script()
    seen = []

    def spy(*args, **kwargs):
        codes, probs = detect_language(*args, **kwargs)
        seen.append(probs)
        return codes, probs

    monkeypatch.setattr(module.decoding, "detect_language", spy)
    brain = _brain(soup("lid", 0.5, lid_scale=1.0), "lid", aware=False)
    labels = ["es"] * len(by_full)
    index, prompts = _route(brain, mel, labels)
    assert torch.allclose(seen[-1], p_full, atol=1e-5)
    assert prompts == list(by_full)
    assert index == [LANGUAGES.index(code) for code in by_full]
    # The soup itself is still merged at 0.5 after the language step.
    assert torch.allclose(_lid(brain.whisper, mel)[1], p_half, atol=1e-5)

    # Without lid_scale the soup names it at its own weight, as before.
    _route(_brain(soup("old", 0.5), "lid", aware=False), mel, labels)
    assert torch.allclose(seen[-1], p_half, atol=1e-5)


def test_lid_scale_without_lid_routing_is_refused(tiny_whisper_dir, tmp_path):
    torch.manual_seed(0)
    folder = _shared_folder(
        Whisper(tiny_whisper_dir, str(tmp_path / "s")), tmp_path / "shared"
    )
    whisper = merge_shared_adapter(
        Whisper(tiny_whisper_dir, str(tmp_path / "w")), folder, 0.5, 1.0
    )
    FusionBrain = load_recipe_script().FusionBrain
    hparams = dict(whisper=whisper, fusion="oracle", oracle_routing="label")
    with pytest.raises(ValueError, match="oracle_routing: lid"):
        FusionBrain(hparams=hparams, run_opts={"device": "cpu"})


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


def _transcribe(whisper, experts, mel, index, languages):
    """Tokens and their log-probability with ``index`` routed, by hand."""
    with torch.no_grad(), experts.scope(route=torch.tensor(index)):
        enc = whisper.forward_encoder(mel)
        prompts = prompt_tokens(whisper, languages)
        limits = max_tokens_for(torch.ones(len(index)))
        tokens = greedy_decode(whisper, enc, prompts, limits)
        total, _ = score_tokens(whisper, enc, prompts, tokens)
    return tokens, total


def test_rescoring_keeps_the_likeliest_language_and_transcript(
    sb_whisper, monkeypatch
):
    torch.manual_seed(0)
    mel = sb_whisper._get_mel(torch.randn(6, 16000))
    # A language step that hesitates (55/45, 60/40), so that the
    # transcripts' own probabilities decide some utterances.
    lid = torch.tensor([[0.45, 0.55], [0.6, 0.4]]).repeat(3, 1)
    module = load_recipe_script()
    monkeypatch.setattr(
        module.decoding,
        "detect_language",
        lambda *a, **k: ([LANGUAGES[i] for i in lid.argmax(-1)], lid),
    )
    brain = _brain(sb_whisper, "lid", aware=False)
    brain.hparams.lid_rescore_top_k = 2
    brain.rescored = {"changed": 0, "utterances": 0}
    batch = SimpleNamespace(
        lang_id=[0] * 6, lang=["de"] * 6, duration=[1.0] * 6
    )
    brain.before_routing(batch, mel)
    with torch.no_grad(), brain.routing_scope():
        brain.set_routing(batch, None)
        out = brain.decode(batch, brain.run_encoder(mel))
    assert brain.experts.routing.mode == "off"

    # Each language's expert and prompt for every utterance, by hand.
    experts = brain.experts
    by_language = [
        _transcribe(sb_whisper, experts, mel, [i] * 6, [code] * 6)
        for i, code in enumerate(LANGUAGES)
    ]
    joint = lid.log() + torch.stack([total for _, total in by_language], 1)
    best = joint.argmax(-1).tolist()
    assert out["pred_langs"] == [LANGUAGES[i] for i in best]
    tokens = [by_language[i][0][row] for row, i in enumerate(best)]
    assert out["hyps"] == decode_text(sb_whisper, tokens)
    changed = sum(b != f for b, f in zip(best, lid.argmax(-1).tolist()))
    assert brain.rescored == {"changed": changed, "utterances": 6}
    # The case is live: the transcripts overrule the language step on
    # some utterances and not on others.
    assert 0 < changed < 6


@pytest.mark.parametrize(
    "routing, top_k, message",
    [
        ("label", 2, "oracle_routing: lid"),
        ("lid", 3, "the pool has 2 languages"),
        ("lid", 0, "choose 1 to 2"),
        ("lid", "2", "must be an integer"),
    ],
)
def test_lid_rescoring_is_checked(sb_whisper, routing, top_k, message):
    FusionBrain = load_recipe_script().FusionBrain
    hparams = dict(
        whisper=sb_whisper,
        fusion="oracle",
        oracle_routing=routing,
        languages=LANGUAGES,
        language_aware=False,
        lid_rescore_top_k=top_k,
    )
    with pytest.raises(ValueError, match=message):
        FusionBrain(hparams=hparams, run_opts={"device": "cpu"})
