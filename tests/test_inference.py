"""The pretrained interface on model folders exported from tiny models.

The folders are built like a training run would leave them (experts
attached to the tiny Whisper, random LoRA and gate weights, written by
``export_model``), then loaded with ``LoRAExpertsASR.from_hparams``.
"""

import os
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from speechbrain_lora_experts.attach import WhisperLoRAExperts
from speechbrain_lora_experts.data.audio import load_audio
from speechbrain_lora_experts.export import export_model
from speechbrain_lora_experts.gate import UtteranceGate
from speechbrain_lora_experts.inference import LoRAExpertsASR
from speechbrain_lora_experts.languages import UnknownLanguageError
from speechbrain_lora_experts.whisper import Whisper

LANGUAGES = ["de", "es"]
# A short window keeps the tiny encoder cheap; clips stay below it.
WINDOW_S = 4.0


def tiny_whisper(hub, tmp):
    return Whisper(hub, str(tmp / "hub_cache"), encoder_window_s=WINDOW_S)


def randomise(module, seed, std=0.1):
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.normal_(0, std)


def attach(whisper, names, seed):
    experts = WhisperLoRAExperts(
        whisper,
        expert_names=names,
        rank=4,
        alpha=8,
        targets=["q_proj", "v_proj", "fc1", "fc2"],
    )
    randomise(experts, seed)
    return experts


def export(tmp_path_factory, hub, system, name, **kwargs):
    tmp = tmp_path_factory.mktemp(name)
    whisper = tiny_whisper(hub, tmp)
    objects = {"whisper": whisper}
    if system != "full_finetune":
        names = {
            "multilingual_lora": ["multilingual"],
            "distill": LANGUAGES + ["student"],
        }.get(system, LANGUAGES)
        objects["experts"] = attach(whisper, names, seed=len(name))
    if kwargs.pop("gate", False):
        objects["gate"] = UtteranceGate.for_whisper(
            whisper,
            len(LANGUAGES),
            hidden_size=16,
            language_aware=kwargs.pop("gate_language_aware", False),
        )
        randomise(objects["gate"], seed=7, std=0.5)
    if kwargs.pop("token_gates", False):
        objects["experts"].add_token_gates(temperature=2.0)
        randomise(objects["experts"].token_gates, seed=8, std=0.5)
    if system == "full_finetune":
        randomise(whisper.model.decoder.layers[0], seed=9, std=0.05)
    folder = export_model(
        tmp / "model",
        system=system,
        languages=LANGUAGES,
        whisper_hub=hub,
        encoder_window_s=WINDOW_S,
        experts=objects.get("experts"),
        gate=objects.get("gate"),
        whisper=whisper if system == "full_finetune" else None,
        **kwargs,
    )
    return folder, objects


def load(folder, tmp_path_factory, **kwargs):
    savedir = tmp_path_factory.mktemp("savedir")
    return LoRAExpertsASR.from_hparams(
        source=str(folder), savedir=str(savedir), **kwargs
    )


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """A 16 kHz mono clip and a 44.1 kHz stereo one, as files."""
    folder = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    mono = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(
        t.size
    )
    t2 = np.arange(int(1.5 * 44100)) / 44100
    left = 0.3 * np.sin(2 * np.pi * 330 * t2 * (1 + t2))
    stereo = np.stack([left, 0.5 * left], axis=1)
    stereo += 0.05 * rng.standard_normal(stereo.shape)
    paths = [str(folder / "a.wav"), str(folder / "b.wav")]
    sf.write(paths[0], mono.astype("float32"), 16000)
    sf.write(paths[1], stereo.astype("float32"), 44100)
    return paths


def as_batch(paths):
    wavs = [load_audio(p) for p in paths]
    longest = max(w.numel() for w in wavs)
    batch = torch.zeros(len(wavs), longest)
    for i, wav in enumerate(wavs):
        batch[i, : wav.numel()] = wav
    lens = torch.tensor([w.numel() / longest for w in wavs])
    return batch, lens


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


def assert_same(result, other):
    """Equal transcripts; gate weights equal up to float batching noise."""
    assert (result.text, result.language, result.detected) == (
        other.text,
        other.language,
        other.detected,
    )
    if result.gate_weights is None:
        assert other.gate_weights is None
    else:
        assert result.gate_weights == pytest.approx(
            other.gate_weights, abs=1e-6
        )


def same_state(loaded, original):
    ours, theirs = loaded.state_dict(), original.state_dict()
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert torch.equal(ours[key].cpu(), value.cpu()), key


@pytest.mark.parametrize("model", ["pool", "multilingual"])
def test_expert_models_transcribe_aware_and_agnostic(model, clips, request):
    folder, objects, asr = request.getfixturevalue(model)
    same_state(asr.experts, objects["experts"])
    wavs, lens = as_batch(clips)

    aware = asr.transcribe_batch(wavs, lens, languages=["de", "es"])
    assert [r.language for r in aware] == ["de", "es"]
    assert not any(r.detected for r in aware)
    assert all(r.gate_weights is None for r in aware)
    # Each utterance gets what it gets alone, whatever it is batched with.
    for path, lang, result in zip(clips, ["de", "es"], aware):
        assert asr.transcribe_file(path, language=lang) == result

    agnostic = asr.transcribe_batch(wavs, lens)
    for path, result in zip(clips, agnostic):
        assert result.language in LANGUAGES and result.detected
        assert asr.transcribe_file(path) == result


@pytest.mark.parametrize("model", ["pool", "multilingual"])
def test_merged_equals_routed(model, clips, request):
    folder, objects, asr = request.getfixturevalue(model)
    wavs, lens = as_batch(clips)
    layer = next(iter(asr.experts.layers.values()))
    before = layer.base.weight.clone()
    for lang in LANGUAGES:
        routed = asr.transcribe_batch(wavs, lens, languages=lang)
        with asr.merged(lang):
            assert asr.merged_language == lang
            assert not torch.equal(layer.base.weight, before)
            merged = asr.transcribe_batch(wavs, lens)
            assert merged == asr.transcribe_batch(wavs, lens, lang)
            other = [x for x in LANGUAGES if x != lang][0]
            with pytest.raises(ValueError, match="unmerge"):
                asr.transcribe_batch(wavs, lens, languages=other)
        assert [r.text for r in merged] == [r.text for r in routed]
        assert all(r.language == lang for r in merged)
        assert torch.equal(layer.base.weight, before)
    assert asr.merged_language is None


def test_pool_routes_each_utterance_to_its_expert(pool):
    _, _, asr = pool
    mel = asr.whisper._get_mel(torch.randn(1, 16000) * 0.1)
    outputs = []
    for index in (-1, 0, 1):  # base, de, es
        asr.experts.route(index)
        outputs.append(asr.whisper.forward_encoder(mel))
    asr.experts.off()
    # The experts change the model, and differently.
    assert not torch.allclose(outputs[0], outputs[1])
    assert not torch.allclose(outputs[1], outputs[2])


def test_fusion_model_gate_weights_and_languages(fusion, clips):
    folder, objects, asr = fusion
    same_state(asr.gate, objects["gate"])
    wavs, lens = as_batch(clips)
    for languages in (None, ["de", "es"], ["es", "es"]):
        results = asr.transcribe_batch(wavs, lens, languages=languages)
        for i, (path, result) in enumerate(zip(clips, results)):
            weights = result.gate_weights
            assert set(weights) == set(LANGUAGES)
            assert sum(weights.values()) == pytest.approx(1.0, abs=1e-5)
            if languages is None:
                # The gate names the language: its largest weight.
                assert result.language == max(weights, key=weights.get)
                assert result.detected
            else:
                assert result.language == languages[i]
            alone = asr.transcribe_file(
                path, language=None if languages is None else languages[i]
            )
            assert_same(alone, result)
    with asr.merged("es"):
        merged = asr.transcribe_file(clips[0])
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
    if options.get("fusion") == "ties" and not hasattr(
        WhisperLoRAExperts, "merge_static"
    ):
        pytest.skip("static merges are not available")
    folder, objects = export(
        tmp_path_factory, tiny_whisper_dir, system, system, **options
    )
    asr = load(folder, tmp_path_factory)
    wavs, lens = as_batch(clips)
    agnostic = asr.transcribe_batch(wavs, lens)
    assert all(r.language in LANGUAGES for r in agnostic)
    aware = asr.transcribe_batch(wavs, lens, languages=["es", "de"])
    assert [r.language for r in aware] == ["es", "de"]
    assert_same(asr.transcribe_file(clips[1], "de"), aware[1])
    if options.get("gate"):
        # An aware gate without languages: Whisper names them first.
        for result in agnostic:
            assert sum(result.gate_weights.values()) == pytest.approx(1.0)
    if options.get("fusion") == "oracle":
        # Each utterance through its language's expert, as merged.
        with asr.merged("de"):
            assert asr.transcribe_file(clips[1]) == aware[1]
    if options.get("fusion") == "ties":
        assert asr.experts.merged
        with pytest.raises(ValueError, match="static"):
            asr.merge_language("de")
    if system == "distill":
        assert asr.experts.expert_names == ["student"]
    if system == "full_finetune":
        assert asr.experts is None
        same_state(asr.whisper.model, objects["whisper"].model)
        with pytest.raises(ValueError, match="no experts"):
            asr.merge_language("de")


def test_beam_option_and_long_clip_error(pool, clips):
    _, _, asr = pool
    beam = asr.transcribe_file(clips[0], "de", beam_size=2)
    assert beam.language == "de" and isinstance(beam.text, str)
    with pytest.raises(ValueError, match="encoder"):
        asr.transcribe_batch(torch.zeros(1, int(16000 * (WINDOW_S + 1))))
    # Padding beyond wav_lens is not audio: it may exceed the window.
    long = torch.zeros(1, int(16000 * (WINDOW_S + 1)))
    asr.transcribe_batch(long, torch.tensor([0.5]), languages="de")


def test_unknown_languages_are_refused(pool, multilingual, clips):
    for _, _, asr in (pool, multilingual):
        for bad in ("fr", "klingon"):
            with pytest.raises(UnknownLanguageError, match="de', 'es"):
                asr.transcribe_file(clips[0], language=bad)
            with pytest.raises(UnknownLanguageError):
                asr.merge_language(bad)
    # Other names of a model language are fine.
    assert pool[2].transcribe_file(clips[0], "German").language == "de"


def test_missing_files_are_named(pool, fusion, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LoRAExpertsASR.from_hparams(source=str(tmp_path / "no" / "model"))
    for (folder, _, _), victim in (
        (fusion, "gate.safetensors"),
        (pool, "experts/es/adapter_model.safetensors"),
        (pool, "model.json"),
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


def test_fetched_copy_equals_local_folder(pool, clips, tmp_path):
    """A non-local source (here a FetchSource) is fetched into savedir."""
    from speechbrain.utils.fetching import FetchFrom, FetchSource

    folder, _, local = pool
    savedir = tmp_path / "fetched"
    asr = LoRAExpertsASR.from_hparams(
        source=FetchSource(FetchFrom.LOCAL, str(folder)), savedir=str(savedir)
    )
    assert asr.hparams.model_folder == str(savedir)
    assert (savedir / "experts" / "es" / "adapter_model.safetensors").exists()
    assert asr.transcribe_file(clips[1]) == local.transcribe_file(clips[1])
    # A local folder is used in place: savedir only gets links.
    assert local.hparams.model_folder == os.path.abspath(folder)
