"""Shared fixtures: a tiny random multilingual Whisper built offline."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Tiny models run fastest single-threaded on a shared 2-core machine.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_whisper_dir(tmp_path_factory):
    """Folder of a tiny Whisper in hub layout (vocabulary 51865)."""
    from speechbrain_lora_experts.testing.tiny_whisper import make_tiny_whisper

    return make_tiny_whisper(tmp_path_factory.mktemp("tiny_whisper"))


@pytest.fixture
def sb_whisper(tiny_whisper_dir, tmp_path):
    """SpeechBrain's Whisper wrapper over the tiny model."""
    from speechbrain_lora_experts.whisper import Whisper

    torch.manual_seed(0)
    whisper = Whisper(tiny_whisper_dir, str(tmp_path / "save"), language="de")
    return whisper.eval()


def pytest_sessionstart(session):
    """The recipe rows' sample clips (SpeechBrain's paths), made once."""
    import importlib.util

    if hasattr(session.config, "workerinput"):
        return  # an xdist worker: the controller made them before it started

    path = os.path.join(os.path.dirname(__file__), "samples", "make_samples.py")
    spec = importlib.util.spec_from_file_location("make_samples", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.make_samples()
