"""Synthesizes stand-ins for SpeechBrain's tiny English test clips.

The rows of ``tests/recipes/CommonVoice.csv`` train on
``tests/samples/ASR/spk{1,2}_snt{1..5}.wav``, the paths of SpeechBrain's
own recipe-test clips (upstream has the real recordings there). This
project does not ship third-party audio: the clips are read by espeak-ng
from the transcripts in ``annotation/`` and cut to the listed durations,
so the CSVs hold for either set. Existing clips are left alone.

Usage (from the project root)::

    python tests/samples/make_samples.py

Authors
 * speechbrain-lora-experts developers 2026
"""

import csv
import os
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
RATE = 16000
# One espeak-ng voice per sample speaker, so the two "languages" differ.
VOICES = {"spk1": ("en", 150, 40), "spk2": ("en+f3", 170, 60)}


def make_samples(folder=os.path.join(HERE, "ASR")):
    """Writes every clip the annotation CSVs list and ``folder`` lacks.

    Arguments
    ---------
    folder : str
        Where the clips go (``$data_root`` of the CSVs).

    Returns
    -------
    list of str
        The clips written.

    Example
    -------
    >>> out = make_samples(tempfile.mkdtemp())
    >>> len(out), sorted(os.path.basename(p) for p in out)[0]
    (10, 'spk1_snt1.wav')
    """
    import soundfile
    import torch
    import torchaudio

    os.makedirs(folder, exist_ok=True)
    written = []
    for row in _rows():
        path = os.path.join(folder, row["ID"] + ".wav")
        if os.path.isfile(path):
            continue
        voice, speed, pitch = VOICES[row["spk_id"]]
        with tempfile.TemporaryDirectory() as tmp:
            raw = os.path.join(tmp, "raw.wav")
            subprocess.run(
                [
                    "espeak-ng",
                    "-v",
                    voice,
                    "-s",
                    str(speed),
                    "-p",
                    str(pitch),
                    "-w",
                    raw,
                    row["wrd"].lower(),
                ],
                check=True,
                capture_output=True,
            )
            audio, rate = soundfile.read(raw, dtype="float32")
        audio = torchaudio.functional.resample(
            torch.from_numpy(audio), rate, RATE
        )
        # Cut or pad to the duration the CSVs list.
        length = round(float(row["duration"]) * RATE)
        audio = torch.nn.functional.pad(audio, (0, max(0, length - len(audio))))
        # Written aside and renamed: parallel test workers may both find the
        # clip missing, and neither may read a half-written file.
        partial = f"{path}.{os.getpid()}.partial.wav"
        soundfile.write(partial, audio[:length].numpy(), RATE, subtype="PCM_16")
        os.replace(partial, path)
        written.append(path)
    return written


def _rows():
    rows = []
    for name in ("lora_experts_train.csv", "lora_experts_dev.csv"):
        with open(os.path.join(HERE, "annotation", name), newline="") as f:
            rows += list(csv.DictReader(f))
    return rows


if __name__ == "__main__":
    for clip in make_samples():
        print(clip)
