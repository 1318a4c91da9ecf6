"""Model folders and clips for the pretrained-interface tests.

The folders are built like a training run leaves them (experts attached to
the tiny Whisper, random LoRA and gate weights, written by ``export_model``)
and then loaded as a user would.

Authors
 * speechbrain-lora-experts developers 2026
"""

import numpy as np
import soundfile as sf
import torch

from speechbrain_lora_experts import decoding
from speechbrain_lora_experts.attach import WhisperLoRAExperts
from speechbrain_lora_experts.data.audio import load_audio
from speechbrain_lora_experts.export import export_model
from speechbrain_lora_experts.gate import UtteranceGate
from speechbrain_lora_experts.inference import LoRAExpertsASR
from speechbrain_lora_experts.whisper import Whisper

LANGUAGES = ["de", "es"]
# A short window keeps the tiny encoder cheap; clips stay below it.
WINDOW_S = 4.0
RATE = 16000


def tiny_whisper(hub, tmp, window_s=WINDOW_S):
    """The tiny Whisper with a ``window_s`` encoder window."""
    return Whisper(hub, str(tmp / "hub_cache"), encoder_window_s=window_s)


def randomise(module, seed, std=0.1):
    """Gives every parameter of ``module`` seeded random values."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.normal_(0, std)


def attach(whisper, names, seed, parts=("encoder", "decoder")):
    """A pool of random experts on ``whisper`` (encoder and decoder)."""
    experts = WhisperLoRAExperts(
        whisper,
        expert_names=names,
        rank=4,
        alpha=8,
        targets=["q_proj", "v_proj", "fc1", "fc2"],
        parts=parts,
    )
    randomise(experts, seed)
    return experts


def export(tmp_path_factory, hub, system, name, window_s=WINDOW_S, **kwargs):
    """Exports a model folder of ``system``; returns it and its objects."""
    tmp = tmp_path_factory.mktemp(name)
    whisper = tiny_whisper(hub, tmp, window_s)
    objects = {"whisper": whisper}
    if system != "full_finetune":
        names = {
            "multilingual_lora": ["multilingual"],
            "distill": ["student"],
        }.get(system, LANGUAGES)
        objects["experts"] = attach(
            whisper,
            names,
            seed=len(name),
            parts=kwargs.pop("parts", ("encoder", "decoder")),
        )
    if kwargs.pop("gate", False):
        objects["gate"] = UtteranceGate.for_whisper(
            whisper,
            len(LANGUAGES),
            hidden_size=16,
            language_aware=kwargs.pop("gate_language_aware", False),
            base_pass_bucket_s=kwargs.pop("gate_base_pass_bucket_s", None),
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
        encoder_window_s=window_s,
        experts=objects.get("experts"),
        gate=objects.get("gate"),
        whisper=whisper if system == "full_finetune" else None,
        **kwargs,
    )
    return folder, objects


def load(folder, tmp_path_factory, **kwargs):
    """``LoRAExpertsASR.from_hparams`` with a fresh savedir."""
    savedir = tmp_path_factory.mktemp("savedir")
    return LoRAExpertsASR.from_hparams(
        source=str(folder), savedir=str(savedir), **kwargs
    )


def tone(seconds, rate=RATE, freq=220.0, seed=0):
    """A tone with a little noise, float32 ``[samples]``."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    wav = 0.3 * np.sin(2 * np.pi * freq * t * (1 + 0.05 * t))
    return (wav + 0.05 * rng.standard_normal(t.size)).astype("float32")


def write_clips(folder):
    """A 16 kHz mono clip and a 44.1 kHz stereo one, as files."""
    mono = tone(1.0)
    left = tone(1.5, rate=44100, freq=330.0, seed=1)
    stereo = np.stack([left, 0.5 * left], axis=1)
    paths = [str(folder / "a.wav"), str(folder / "b.wav")]
    sf.write(paths[0], mono, RATE)
    sf.write(paths[1], stereo, 44100)
    return paths


def as_batch(paths):
    """Padded ``[B, T]`` batch and relative lengths of audio files."""
    wavs = [load_audio(p) for p in paths]
    longest = max(w.numel() for w in wavs)
    batch = torch.zeros(len(wavs), longest)
    for i, wav in enumerate(wavs):
        batch[i, : wav.numel()] = wav
    lens = torch.tensor([w.numel() / longest for w in wavs])
    return batch, lens


def base_language(asr, wavs, routing=None):
    """Language Whisper's decoder names with ``routing`` (None: base)."""
    scope = asr.experts.scope(**(routing or {}))
    with torch.no_grad(), scope:
        enc = asr.whisper.forward_encoder(asr.whisper._get_mel(wavs))
        codes, _ = decoding.detect_language(asr.whisper, enc, LANGUAGES)
    return codes
