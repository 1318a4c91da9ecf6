"""``LoRAExpertsASR`` as a SpeechBrain ``WhisperASR`` user knows it.

``(words, tokens)`` from ``transcribe_batch``, long files in chunks,
language detection among the model's languages, loading through
``foreign_class`` from a folder, a hub id (an offline hub cache) and a URL,
hub paths for audio, and one interface shared by threads.
"""

import functools
import http.server
import inspect
import os
import shutil
import threading

import numpy as np
import pytest
import soundfile as sf
import torch
from interface_fixtures import (
    LANGUAGES,
    RATE,
    as_batch,
    base_language,
    export,
    load,
    tone,
    write_clips,
)

from speechbrain.inference.ASR import ASRWhisperSegment, WhisperASR
from speechbrain.inference.interfaces import foreign_class
from speechbrain_lora_experts import decoding
from speechbrain_lora_experts.data.audio import load_audio
from speechbrain_lora_experts.inference import LoRAExpertsASR

HUB_ID = "someone/tiny-lora-experts"


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return write_clips(tmp_path_factory.mktemp("clips"))


@pytest.fixture(scope="module")
def pool(tmp_path_factory, tiny_whisper_dir):
    folder, _ = export(tmp_path_factory, tiny_whisper_dir, "expert", "pool")
    return folder, load(folder, tmp_path_factory)


@pytest.fixture(scope="module")
def six_seconds(tmp_path_factory):
    """A 6 s file: two chunks of the 4 s models."""
    path = str(tmp_path_factory.mktemp("long") / "six.wav")
    sf.write(path, tone(6.0, freq=180.0, seed=3), RATE)
    return path


def test_transcribe_batch_returns_words_and_tokens(pool, clips):
    _, asr = pool
    assert isinstance(asr, WhisperASR)
    wavs, lens = as_batch(clips + clips[:1])
    words, tokens = asr.transcribe_batch(wavs, lens)
    assert len(words) == len(tokens) == 3
    tokenizer = asr.whisper.tokenizer
    for text, ids in zip(words, tokens):
        assert isinstance(text, str) and ids
        assert all(isinstance(i, int) for i in ids)
        assert text == tokenizer.decode(ids, skip_special_tokens=True).strip()
    detailed = asr.transcribe_batch_detailed(wavs, lens)
    assert [d.text for d in detailed] == words
    assert [d.tokens for d in detailed] == tokens
    assert asr(wavs, lens) == (words, tokens)
    # The language keyword is the experts' extra: aware decoding.
    aware_words, _ = asr.transcribe_batch(wavs, lens, languages="es")
    aware = asr.transcribe_batch_detailed(wavs, lens, languages="es")
    assert aware_words == [d.text for d in aware]


def test_long_file_is_transcribed_in_chunks(tmp_path_factory, tiny_whisper_dir):
    folder, _ = export(
        tmp_path_factory, tiny_whisper_dir, "expert", "long", window_s=30.0
    )
    asr = load(folder, tmp_path_factory)
    path = str(tmp_path_factory.mktemp("forty") / "forty.wav")
    sf.write(path, tone(40.0, freq=150.0, seed=4), RATE)
    audio = load_audio(path)

    segments = asr.transcribe_file(path)  # chunk_size=30, as WhisperASR
    assert [(s.start, s.end) for s in segments] == [(0.0, 30.0), (30.0, 40.0)]
    for segment in segments:
        assert isinstance(segment, ASRWhisperSegment)
        piece = audio[int(segment.start * RATE) : int(segment.end * RATE)]
        assert torch.equal(segment.chunk[0].cpu(), piece)
        assert segment.words and segment.tokens and segment.detected
        _, probs = asr.detect_language_batch(piece)
        assert segment.lang_id == max(probs[0], key=probs[0].get)


def test_chunks_never_exceed_the_encoder_window(pool, six_seconds):
    _, asr = pool  # a 4 s encoder window
    segments = asr.transcribe_file(six_seconds, language="de")
    assert [(s.start, s.end) for s in segments] == [(0.0, 4.0), (4.0, 6.0)]
    audio = load_audio(six_seconds)
    for segment in segments:
        piece = audio[int(segment.start * RATE) : int(segment.end * RATE)]
        # Each chunk is what the batch interface gives for it alone.
        alone = asr.transcribe_batch_detailed(piece, languages="de")[0]
        assert (segment.words, segment.tokens) == (alone.text, alone.tokens)
    three = asr.transcribe_file(six_seconds, chunk_size=3, task="lang_id")
    assert [(s.start, s.end) for s in three] == [(0.0, 3.0), (3.0, 6.0)]
    window = asr.transcribe_file(six_seconds, chunk_size=None, task="lang_id")
    assert [s.end for s in window] == [4.0, 6.0]
    with pytest.raises(ValueError, match="chunk_size"):
        asr.transcribe_file(six_seconds, chunk_size=0)


def test_streaming_lang_id_and_refused_options(pool, six_seconds):
    _, asr = pool
    stream = asr.transcribe_file_streaming(six_seconds)
    assert inspect.isgenerator(stream)
    streamed = [(s.lang_id, s.words, s.tokens) for s in stream]
    whole = asr.transcribe_file(six_seconds)
    assert streamed == [(s.lang_id, s.words, s.tokens) for s in whole]

    lang_id = asr.transcribe_file(six_seconds, task="lang_id")
    assert [s.lang_id for s in lang_id] == [s.lang_id for s in whole]
    assert all(s.words is None for s in lang_id)
    for segment in lang_id:
        _, probs = asr.detect_language_batch(segment.chunk)
        assert segment.lang_id == max(probs[0], key=probs[0].get)

    with pytest.raises(ValueError, match="translate"):
        asr.transcribe_file(six_seconds, task="translate")
    import torchaudio

    if not hasattr(torchaudio, "io"):
        with pytest.raises(ValueError, match="StreamReader"):
            asr.transcribe_file(six_seconds, use_torchaudio_streaming=True)


def test_previous_text_prompts_the_next_chunk(pool, six_seconds):
    _, asr = pool
    tokenizer = asr.whisper.tokenizer
    initial = tokenizer.encode(" hallo welt", add_special_tokens=False)
    segments = asr.transcribe_file(
        six_seconds,
        initial_prompt="hallo welt",
        condition_on_previous_text=True,
        no_speech_threshold=None,
        language="de",
    )
    assert segments[0].prompt == initial
    assert segments[1].prompt == initial + segments[0].tokens
    # The prompt reaches the decoder: <|startofprev|> text, then the task.
    with torch.no_grad(), asr.experts.scope(route=0):
        enc = asr.whisper.forward_encoder(
            asr.whisper._get_mel(segments[0].chunk)
        )
        task = decoding.prompt_tokens(asr.whisper, ["de"])
        head = torch.tensor([[asr.whisper.bos_prev] + initial])
        tokens = decoding.greedy_decode(
            asr.whisper,
            enc,
            torch.cat([head, task], dim=1),
            decoding.max_tokens_for([4.0]),
        )
    assert segments[0].tokens == tokens[0]
    plain = asr.transcribe_file(six_seconds, initial_prompt="hallo welt")
    assert plain[0].prompt == initial and plain[1].prompt == []


def test_no_speech_test_skips_chunks(pool, six_seconds):
    _, asr = pool
    kept = asr.transcribe_file(six_seconds, language="es")
    assert all(0 < s.no_speech_prob < 0.6 for s in kept)
    assert all(s.avg_log_probs < 0 for s in kept)
    skipped = asr.transcribe_file(
        six_seconds,
        language="es",
        no_speech_threshold=0.0,
        logprob_threshold=None,
    )
    assert [(s.words, s.tokens) for s in skipped] == [("", [])] * 2
    assert [s.no_speech_prob for s in skipped] == [
        s.no_speech_prob for s in kept
    ]


def test_detect_language_file_names_a_model_language(
    pool, clips, six_seconds, tmp_path_factory, tiny_whisper_dir
):
    folder, _ = export(
        tmp_path_factory,
        tiny_whisper_dir,
        "fuse",
        "fuse",
        gate=True,
        language_aware=False,
    )
    fusion = load(folder, tmp_path_factory)
    for asr, paths in ((pool[1], clips + [six_seconds]), (fusion, clips)):
        for path in paths:
            tokens, probs = asr.detect_language_file(path)
            assert set(probs[0]) == set(LANGUAGES)
            lang = max(probs[0], key=probs[0].get)
            assert lang in LANGUAGES
            token = asr.whisper.tokenizer.convert_tokens_to_ids(f"<|{lang}|>")
            assert tokens.tolist() == [token]
            # The first window decides, as transcription names it.
            wav = load_audio(path)[: 4 * RATE]
            assert asr.transcribe_batch_detailed(wav)[0].language == lang
    # A pool names it with base Whisper.
    wavs, _ = as_batch(clips)
    _, probs = pool[1].detect_language_batch(wavs)
    named = [max(p, key=p.get) for p in probs]
    assert named == base_language(pool[1], wavs)


def test_foreign_class_loads_the_model_folder(pool, clips, tmp_path):
    folder, asr = pool
    loaded = foreign_class(
        source=str(folder),
        pymodule_file="custom_interface.py",
        classname="LoRAExpertsASR",
        savedir=str(tmp_path / "savedir"),
    )
    assert isinstance(loaded, LoRAExpertsASR)
    wavs, lens = as_batch(clips)
    assert loaded.transcribe_batch(wavs, lens) == asr.transcribe_batch(
        wavs, lens
    )
    # No path in the yaml: the folder loads from wherever it is.
    moved = tmp_path / "moved"
    shutil.copytree(folder, moved)
    assert "model_folder" not in (moved / "hyperparams.yaml").read_text()
    again = foreign_class(
        source=str(moved),
        pymodule_file="custom_interface.py",
        classname="LoRAExpertsASR",
    )
    assert again.model_folder == str(moved)
    assert again.transcribe_batch(wavs, lens) == asr.transcribe_batch(
        wavs, lens
    )


def fake_hub(cache, repo_id, files):
    """An offline hub cache holding ``files`` ({path in repo: local file})."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    for name, source in files.items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, snapshot / name)
    return snapshot


def test_hub_id_and_hub_audio_without_savedir(
    pool, clips, tmp_path, monkeypatch
):
    import huggingface_hub

    folder, asr = pool
    files = {
        os.path.relpath(os.path.join(root, name), folder): os.path.join(
            root, name
        )
        for root, _, names in os.walk(folder)
        for name in names
    }
    files["clip.wav"] = clips[1]
    cache = tmp_path / "hub"
    snapshot = fake_hub(cache, HUB_ID, files)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))

    loaded = foreign_class(
        source=HUB_ID,
        pymodule_file="custom_interface.py",
        classname="LoRAExpertsASR",
    )
    assert loaded.model_folder == str(snapshot)
    assert LoRAExpertsASR.from_hparams(source=HUB_ID).model_folder == str(
        snapshot
    )
    hub_audio = loaded.load_audio(f"{HUB_ID}/clip.wav")
    assert torch.equal(hub_audio.cpu(), load_audio(clips[1]))
    ours = loaded.transcribe_file(f"{HUB_ID}/clip.wav", language="de")
    theirs = asr.transcribe_file(clips[1], language="de")
    assert [s.tokens for s in ours] == [s.tokens for s in theirs]
    with pytest.raises(FileNotFoundError, match="no local file"):
        loaded.load_audio(f"{HUB_ID}/missing.wav")


def test_url_source_is_fetched_into_savedir(pool, clips, tmp_path):
    folder, asr = pool
    handler = functools.partial(QuietHandler, directory=os.path.dirname(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/model"
        savedir = tmp_path / "fetched"
        loaded = LoRAExpertsASR.from_hparams(source=url, savedir=str(savedir))
    finally:
        server.shutdown()
        server.server_close()
    assert loaded.model_folder == str(savedir)
    assert (savedir / "experts" / "es" / "adapter_model.safetensors").exists()
    wavs, lens = as_batch(clips)
    assert loaded.transcribe_batch(wavs, lens) == asr.transcribe_batch(
        wavs, lens
    )


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder without logging every request."""

    def log_message(self, *args):
        pass


def test_threads_give_the_sequential_transcripts(pool, clips):
    _, asr = pool
    wavs, lens = as_batch(clips)
    expected = {
        lang: asr.transcribe_batch(wavs, lens, languages=lang)
        for lang in LANGUAGES
    }
    # Decoding German with the Spanish expert gives something else, so a
    # routing leaking between the threads would show.
    with torch.no_grad(), asr.experts.scope(route=1):
        enc = asr.whisper.forward_encoder(asr.whisper._get_mel(wavs[:1]))
        crossed = decoding.greedy_decode(
            asr.whisper,
            enc,
            decoding.prompt_tokens(asr.whisper, ["de"]),
            decoding.max_tokens_for([lens[0].item() * wavs.shape[1] / RATE]),
        )
    assert crossed[0] != expected["de"][1][0]

    results = {lang: [] for lang in LANGUAGES}
    errors = []
    start = threading.Barrier(len(LANGUAGES))

    def work(lang):
        try:
            start.wait()
            for _ in range(3):
                results[lang].append(
                    asr.transcribe_batch(wavs, lens, languages=lang)
                )
        except Exception as err:  # reported below, with the thread's name
            errors.append((lang, err))

    threads = [threading.Thread(target=work, args=(x,)) for x in LANGUAGES]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors
    for lang in LANGUAGES:
        assert results[lang] == [expected[lang]] * 3


def test_an_exception_restores_the_routing(pool, clips, monkeypatch):
    _, asr = pool
    wavs, lens = as_batch(clips)
    expected = asr.transcribe_batch(wavs, lens, languages="es")

    def broken(*args, **kwargs):
        assert asr.experts.routing.mode == "route"
        raise RuntimeError("decoder failed")

    monkeypatch.setattr(decoding, "greedy_decode", broken)
    with pytest.raises(RuntimeError, match="decoder failed"):
        asr.transcribe_batch(wavs, lens, languages="es")
    monkeypatch.undo()
    assert asr.experts.routing.mode == "off"
    # The lock is free for another thread.
    free = []

    def probe():
        lock = asr.experts.routing.lock
        free.append(lock.acquire(blocking=False))
        if free[-1]:
            lock.release()

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    assert free == [True]
    assert asr.transcribe_batch(wavs, lens, languages="es") == expected


def test_non_finite_audio_is_refused(pool, clips, tmp_path):
    _, asr = pool
    clean = load_audio(clips[0])
    for bad in (float("nan"), float("inf")):
        wav = clean.clone()
        wav[100] = bad
        with pytest.raises(ValueError, match="NaN or infinite"):
            asr.transcribe_batch(wav.unsqueeze(0))
    # Beyond wav_lens it is padding, not audio.
    padded = torch.cat([clean, torch.full((800,), float("nan"))])
    lens = torch.tensor([clean.numel() / padded.numel()])
    assert asr.transcribe_batch(padded.unsqueeze(0), lens, languages="de") == (
        asr.transcribe_batch(clean.unsqueeze(0), languages="de")
    )
    path = tmp_path / "nan.wav"
    data = clean.numpy().copy()
    data[5] = np.nan
    sf.write(str(path), data, RATE, subtype="FLOAT")
    with pytest.raises(Exception) as caught:
        asr.transcribe_file(str(path))
    assert str(path) in str(caught.value)
    assert "NaN or infinite" in str(caught.value)
