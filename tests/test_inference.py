"""The pretrained interface on model folders exported from tiny models.

Routing, fusion, merging and language naming, each checked against the
same computation done by hand on the loaded model (``interface_fixtures``
builds the folders as a training run leaves them).
"""

import json
import os
import shutil

import pytest
import torch
from interface_fixtures import (
    LANGUAGES,
    WINDOW_S,
    as_batch,
    base_language,
    export,
    load,
    write_clips,
)

from speechbrain_lora_experts import decoding
from speechbrain_lora_experts.data.audio import load_audio
from speechbrain_lora_experts.inference import (
    CorruptModelFileError,
    LoRAExpertsASR,
)
from speechbrain_lora_experts.languages import UnknownLanguageError


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return write_clips(tmp_path_factory.mktemp("clips"))


@pytest.fixture(scope="module")
def pool(tmp_path_factory, tiny_whisper_dir):
    folder, objects = export(
        tmp_path_factory, tiny_whisper_dir, "expert", "pool"
    )
    return folder, objects, load(folder, tmp_path_factory)


@pytest.fixture(scope="module")
def multilingual(tmp_path_factory, tiny_whisper_dir):
    folder, objects = export(
        tmp_path_factory,
        tiny_whisper_dir,
        "multilingual_lora",
        "multilingual",
        language_aware=False,
    )
    return folder, objects, load(folder, tmp_path_factory)


@pytest.fixture(scope="module")
def fusion(tmp_path_factory, tiny_whisper_dir):
    folder, objects = export(
        tmp_path_factory,
        tiny_whisper_dir,
        "fuse",
        "fuse",
        gate=True,
        language_aware=False,
    )
    return folder, objects, load(folder, tmp_path_factory)


def same_state(loaded, original):
    ours, theirs = loaded.state_dict(), original.state_dict()
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert torch.equal(ours[key].cpu(), value.cpu()), key


def alone(asr, path, **kwargs):
    """Detailed transcription of one file, transcribed alone."""
    wav = load_audio(path).unsqueeze(0)
    return asr.transcribe_batch_detailed(wav, **kwargs)[0]


def assert_same(result, other):
    """Equal transcripts; gate weights equal up to float batching noise."""
    assert (result.text, result.language, result.detected) == (
        other.text,
        other.language,
        other.detected,
    )
    assert result.tokens == other.tokens
    if result.gate_weights is None:
        assert other.gate_weights is None
    else:
        assert result.gate_weights == pytest.approx(
            other.gate_weights, abs=1e-6
        )


def encoder_out(asr, wavs, **routing):
    """Encoder output of ``wavs`` with the experts routed by hand."""
    with torch.no_grad(), asr.experts.scope(**routing):
        return asr.whisper.forward_encoder(asr.whisper._get_mel(wavs))


@pytest.mark.parametrize("model", ["pool", "multilingual"])
def test_expert_models_transcribe_aware_and_agnostic(model, clips, request):
    folder, objects, asr = request.getfixturevalue(model)
    same_state(asr.experts, objects["experts"])
    wavs, lens = as_batch(clips)

    aware = asr.transcribe_batch_detailed(wavs, lens, languages=["de", "es"])
    assert [r.language for r in aware] == ["de", "es"]
    assert not any(r.detected for r in aware)
    # Each utterance gets what it gets alone, whatever it is batched with.
    for path, lang, result in zip(clips, ["de", "es"], aware):
        assert alone(asr, path, languages=lang) == result

    # Without languages a pool's base Whisper names them (routing needs
    # them first); a single LoRA names them with the LoRA applied.
    routing = {} if model == "pool" else {"route": 0}
    expected = base_language(asr, wavs, routing)
    agnostic = asr.transcribe_batch_detailed(wavs, lens)
    assert [r.language for r in agnostic] == expected
    assert all(r.detected for r in agnostic)
    _, probs = asr.detect_language_batch(wavs, lens)
    assert [max(p, key=p.get) for p in probs] == expected
    for path, lang, result in zip(clips, expected, agnostic):
        assert alone(asr, path) == result
        # Naming the language then decoding is aware decoding in it.
        named = alone(asr, path, languages=lang)
        assert (named.text, named.tokens) == (result.text, result.tokens)


@pytest.mark.parametrize("model", ["pool", "multilingual"])
def test_merged_equals_routed(model, clips, request):
    folder, objects, asr = request.getfixturevalue(model)
    wavs, lens = as_batch(clips)
    base = encoder_out(asr, wavs)
    for lang in LANGUAGES:
        route = 0 if model == "multilingual" else LANGUAGES.index(lang)
        routed_enc = asr.encode_batch(wavs, lens, languages=lang)
        # The interface routes through the right expert, not the base.
        assert torch.allclose(
            routed_enc, encoder_out(asr, wavs, route=route), atol=1e-6
        )
        assert not torch.allclose(routed_enc, base, atol=1e-3)
        routed = asr.transcribe_batch(wavs, lens, languages=lang)
        with asr.merged(lang):
            assert asr.merged_language == lang
            assert asr.experts.merged
            merged_enc = asr.encode_batch(wavs, lens)
            merged = asr.transcribe_batch(wavs, lens)
            other = [x for x in LANGUAGES if x != lang][0]
            with pytest.raises(ValueError, match="unmerge"):
                asr.transcribe_batch(wavs, lens, languages=other)
        assert not asr.experts.merged
        assert torch.allclose(merged_enc, routed_enc, atol=1e-5)
        assert merged == routed
    # Unmerging gives the base model back.
    assert torch.allclose(encoder_out(asr, wavs), base, atol=1e-6)
    assert asr.merged_language is None


def test_pool_experts_differ(pool):
    _, _, asr = pool
    wavs = torch.randn(1, 16000) * 0.1
    outputs = [encoder_out(asr, wavs, route=i) for i in (-1, 0, 1)]
    # The experts change the model, and differently: routing to the wrong
    # expert would show in the comparisons above.
    assert not torch.allclose(outputs[0], outputs[1], atol=1e-3)
    assert not torch.allclose(outputs[1], outputs[2], atol=1e-3)


def test_fusion_model_gate_weights_and_languages(fusion, clips):
    folder, objects, asr = fusion
    same_state(asr.gate, objects["gate"])
    wavs, lens = as_batch(clips)
    # The gate by hand: frozen encoder output and Whisper's LID over the
    # experts' languages (a whisper_lid gate, the experts adapt the encoder).
    base = encoder_out(asr, wavs)
    _, lid = decoding.detect_language(asr.whisper, base, LANGUAGES)
    valid = torch.tensor(
        [load_audio(p).numel() / asr.whisper.window_samples for p in clips]
    )
    with torch.no_grad():
        weights, logits = asr.gate(base, valid, None, lid.log())
    assert not torch.allclose(weights[0], weights[1], atol=1e-3)
    for languages in (None, ["de", "es"], ["es", "es"]):
        results = asr.transcribe_batch_detailed(wavs, lens, languages=languages)
        for i, (path, result) in enumerate(zip(clips, results)):
            assert [result.gate_weights[x] for x in LANGUAGES] == (
                pytest.approx(weights[i].tolist(), abs=1e-5)
            )
            if languages is None:
                # The gate names the language: its largest logit.
                assert result.language == LANGUAGES[logits[i].argmax()]
                assert result.detected
            else:
                assert result.language == languages[i]
            lang = None if languages is None else languages[i]
            assert_same(alone(asr, path, languages=lang), result)
    # Decoding runs with the gate's mix, as by hand.
    wav = load_audio(clips[0]).unsqueeze(0)
    result = alone(asr, clips[0])
    with torch.no_grad(), asr.experts.scope(mix=weights[:1]):
        enc = asr.whisper.forward_encoder(asr.whisper._get_mel(wav))
        prompts = decoding.prompt_tokens(asr.whisper, [result.language])
        limit = decoding.max_tokens_for([wav.shape[1] / 16000])
        tokens = decoding.greedy_decode(asr.whisper, enc, prompts, limit)
    assert result.tokens == tokens[0]
    with asr.merged("es"):
        merged = alone(asr, clips[0])
    assert merged.language == "es" and merged.gate_weights is None


@pytest.mark.parametrize(
    "system, options",
    [
        ("fuse", {"gate": True, "gate_language_aware": True}),
        ("fuse", {"token_gates": True}),
        ("fuse", {"fusion": "oracle"}),
        ("fuse", {"fusion": "ties", "ties_density": 0.5}),
        ("distill", {}),
        ("full_finetune", {}),
    ],
    ids=["aware_gate", "token_gates", "oracle", "ties", "distill", "full"],
)
def test_other_systems_load_and_transcribe(
    system, options, clips, tmp_path_factory, tiny_whisper_dir
):
    folder, objects = export(
        tmp_path_factory, tiny_whisper_dir, system, system, **options
    )
    asr = load(folder, tmp_path_factory)
    wavs, lens = as_batch(clips)
    agnostic = asr.transcribe_batch_detailed(wavs, lens)
    aware = asr.transcribe_batch_detailed(wavs, lens, languages=["es", "de"])
    assert [r.language for r in aware] == ["es", "de"]
    assert_same(alone(asr, clips[1], languages="de"), aware[1])
    if options.get("gate"):
        # An aware gate without languages: base Whisper names them first.
        assert [r.language for r in agnostic] == base_language(asr, wavs)
        for result in agnostic:
            assert set(result.gate_weights) == set(LANGUAGES)
    if options.get("token_gates"):
        with torch.no_grad(), asr.experts.scope(token=True):
            enc = asr.whisper.forward_encoder(asr.whisper._get_mel(wavs))
        assert torch.allclose(asr.encode_batch(wavs, lens), enc, atol=1e-6)
    if options.get("fusion") == "oracle":
        # Each utterance through its language's expert, as merged.
        with asr.merged("de"):
            assert alone(asr, clips[1]) == aware[1]
    if options.get("fusion") == "ties":
        assert asr.experts.merged
        with pytest.raises(ValueError, match="static"):
            asr.merge_language("de")
    if system == "distill":
        assert asr.experts.expert_names == ["student"]
        same_state(asr.experts, objects["experts"])
    if system == "full_finetune":
        assert asr.experts is None
        same_state(asr.whisper.model, objects["whisper"].model)
        with pytest.raises(ValueError, match="no experts"):
            asr.merge_language("de")


def test_beam_option_and_long_clip_error(pool, clips):
    _, _, asr = pool
    wav = load_audio(clips[0]).unsqueeze(0)
    greedy = asr.transcribe_batch_detailed(wav, languages="de")[0]
    again = asr.transcribe_batch_detailed(wav, languages="de", beam_size=1)
    assert again[0] == greedy
    beam = asr.transcribe_batch_detailed(wav, languages="de", beam_size=2)[0]
    with torch.no_grad(), asr.experts.scope(route=0):
        enc = asr.whisper.forward_encoder(asr.whisper._get_mel(wav))
        prompts = decoding.prompt_tokens(asr.whisper, ["de"])
        limit = decoding.max_tokens_for([wav.shape[1] / 16000])
        expected = decoding.beam_decode(asr.whisper, enc, prompts, 2, limit)
    assert beam.tokens == expected[0]
    long = torch.zeros(1, int(16000 * (WINDOW_S + 1)))
    with pytest.raises(ValueError, match="transcribe_file"):
        asr.transcribe_batch(long)
    # Padding beyond wav_lens is not audio: it may exceed the window.
    asr.transcribe_batch(long, torch.tensor([0.5]), languages="de")


def test_model_default_beam_size(pool, clips, tmp_path_factory):
    folder, _, asr = pool
    wav = load_audio(clips[1]).unsqueeze(0)
    beam2 = load(folder, tmp_path_factory, overrides={"beam_size": 2})
    assert beam2.transcribe_batch(wav, languages="es") == (
        asr.transcribe_batch(wav, languages="es", beam_size=2)
    )


def test_unknown_languages_are_refused(pool, multilingual, clips):
    wav = load_audio(clips[0]).unsqueeze(0)
    for _, _, asr in (pool, multilingual):
        # A language the model lacks is named as such, with the model's
        # languages; a name no language has is an unknown language.
        for bad, message in (("fr", "de', 'es"), ("klingon", "Unknown lang")):
            with pytest.raises(UnknownLanguageError, match=message):
                asr.transcribe_batch(wav, languages=bad)
            with pytest.raises(UnknownLanguageError):
                asr.transcribe_file(clips[0], language=bad)
            with pytest.raises(UnknownLanguageError):
                asr.merge_language(bad)
    # Other names of a model language are fine.
    assert alone(pool[2], clips[0], languages="German").language == "de"


def test_missing_files_are_named(pool, fusion, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LoRAExpertsASR.from_hparams(source=str(tmp_path / "no" / "model"))
    for (folder, _, _), victim in (
        (fusion, "gate.safetensors"),
        (pool, "experts/es/adapter_model.safetensors"),
        (pool, "model.json"),
        (pool, "custom_interface.py"),
    ):
        copy = tmp_path / victim.replace("/", "_")
        shutil.copytree(folder, copy)
        os.remove(copy / victim)
        with pytest.raises(FileNotFoundError, match=victim.split("/")[-1]):
            LoRAExpertsASR.from_hparams(source=str(copy))
    copy = tmp_path / "old_export"
    shutil.copytree(pool[0], copy)
    os.remove(copy / "hyperparams.yaml")
    with pytest.raises(FileNotFoundError, match="write_hyperparams"):
        LoRAExpertsASR.from_hparams(source=str(copy))


@pytest.mark.parametrize(
    "victim, model",
    [
        ("gate.safetensors", "fusion"),
        ("experts/de/adapter_model.safetensors", "fusion"),
        ("experts/es/adapter_config.json", "pool"),
        ("model.json", "pool"),
    ],
)
def test_truncated_files_are_named(victim, model, request, tmp_path):
    folder = request.getfixturevalue(model)[0]
    copy = tmp_path / "model"
    shutil.copytree(folder, copy)
    path = copy / victim
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptModelFileError) as caught:
        LoRAExpertsASR.from_hparams(source=str(copy))
    assert caught.value.path.endswith(victim)
    assert str(path) in str(caught.value)
    assert "Copy it again" in str(caught.value)


def test_the_gate_base_pass_bucket_travels_with_the_model(
    fusion, clips, tmp_path_factory, tiny_whisper_dir
):
    from speechbrain_lora_experts.export import hyperparams_values

    folder, _ = export(
        tmp_path_factory,
        tiny_whisper_dir,
        "fuse",
        "fuse_bucket",
        gate=True,
        language_aware=False,
        gate_base_pass_bucket_s=1.0,
    )
    with open(os.path.join(folder, "model.json"), encoding="utf-8") as f:
        info = json.load(f)
    assert info["gate"]["base_pass_bucket_s"] == 1.0
    asr = load(folder, tmp_path_factory)
    assert asr.mods["gate"].base_pass_bucket_s == 1.0
    # The fixture's gate ran its frozen pass over the whole window.
    assert fusion[2].mods["gate"].base_pass_bucket_s is None
    wav = load_audio(clips[0]).unsqueeze(0)  # 1 s of a 4 s window
    cut = alone(asr, clips[0]).gate_weights
    asr.mods["gate"].base_pass_bucket_s = None
    whole = asr.transcribe_batch_detailed(wav)[0].gate_weights
    assert cut != pytest.approx(whole, abs=1e-4)
    # A model exported before the option ran the whole window.
    del info["gate"]["base_pass_bucket_s"]
    assert hyperparams_values(info)["gate_base_pass_bucket_s"] == "null"


def test_older_export_is_upgraded(pool, clips, tmp_path):
    """A folder whose yaml needs a model_folder only the old loader set."""
    from speechbrain_lora_experts.export import write_hyperparams

    folder, _, asr = pool
    copy = tmp_path / "old"
    shutil.copytree(folder, copy)
    info = json.loads((copy / "model.json").read_text())
    del info["lora"]
    info["files"].remove("custom_interface.py")
    (copy / "model.json").write_text(json.dumps(info))
    os.remove(copy / "custom_interface.py")
    (copy / "hyperparams.yaml").write_text("model_folder: !PLACEHOLDER\n")
    with pytest.raises(ValueError, match="write_hyperparams"):
        LoRAExpertsASR.from_hparams(source=str(copy))
    write_hyperparams(str(copy))
    upgraded = LoRAExpertsASR.from_hparams(source=str(copy))
    wav = load_audio(clips[0]).unsqueeze(0)
    assert upgraded.transcribe_batch(wav, languages="es") == (
        asr.transcribe_batch(wav, languages="es")
    )
    # The layers were read back from the adapters as an exact list.
    text = (copy / "hyperparams.yaml").read_text()
    assert "lora_layer_names: [" in text
