"""SpeechBrain's Whisper wrapper: per-utterance features, window options.

Changes to ``speechbrain.integrations.huggingface.whisper.Whisper``:

* the log-mel floor (``max - 8``) is taken per utterance, as OpenAI's
  Whisper does. SpeechBrain 1.1.2 takes it over the whole batch, so an
  utterance's features (and transcript) depend on what it is batched with;
  a mixed-language batch must give each utterance what it gets alone.
* ``encoder_window_s`` optionally shortens the encoder's fixed 30 s window
  (the positional table is sliced), which divides the encoder cost on CPU.
  30 s (the default) is Whisper's behaviour; shorter windows trim longer
  clips, so data preparation must drop clips over the window.
* ``window_bucket_s`` optionally cuts each batch's window to its longest
  clip, rounded up to a multiple of the bucket (at most the window): a
  batch of 4 s clips pays for 4 s, not 30. Off by default: Whisper was
  trained on 30 s windows only (measured on synthetic speech the cut left
  a trained expert's WER unchanged within noise and lowered zero-shot
  WER: ``bench/results/cut_windows.md``). A clip's encoding then depends
  on the longest clip of its batch, to the bucket.
* a ``source`` that is a local path but no folder (moved, misspelled) is
  refused with the option to fix, instead of the hub client's
  "Repo id must be in the form ..." error.

Authors
 * speechbrain-lora-experts developers 2026
"""

import difflib
import functools
import math
import os

import torch
import torch.nn as nn
from transformers.modeling_outputs import BaseModelOutput

from speechbrain.integrations.huggingface.whisper import Whisper as SBWhisper

FULL_WINDOW_S = 30.0
FRAMES_PER_SECOND = 100

_FIX_SOURCE = (
    "Fix the `whisper_hub` option (train.py / quickstart: "
    "--whisper_hub=<folder or hub id>); for a model folder loaded with "
    "LoRAExpertsASR.from_hparams, pass "
    'overrides={"whisper_hub": "<folder>"}.'
)


def _looks_like_path(source):
    # A hub id is "name" or "owner/name"; anything else is a path.
    return (
        os.path.isabs(source)
        or source.startswith((".", "~"))
        or source.count("/") > 1
        or "\\" in source
        or os.path.isdir(os.path.dirname(source) or "\0")
    )


def _near_misses(path):
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        return f" (its parent folder {parent} does not exist either)"
    close = difflib.get_close_matches(
        os.path.basename(path), sorted(os.listdir(parent)), n=3
    )
    if close:
        return f" (similar names in {parent}: {', '.join(close)})"
    return ""


def check_whisper_source(source):
    """Refuse a Whisper ``source`` that is a missing or foreign folder.

    A hub id (``openai/whisper-small``) passes; what the hub client does
    with it is checked by :class:`Whisper`.

    Arguments
    ---------
    source : str
        Local folder or hub id.

    Raises
    ------
    FileNotFoundError
        A local path that is no folder, or a folder without a
        ``config.json``; the message names the option to fix.

    Example
    -------
    >>> check_whisper_source("openai/whisper-small")
    >>> check_whisper_source("/models/whisper-base")
    Traceback (most recent call last):
    ...
    FileNotFoundError: Whisper folder /models/whisper-base does not exist...
    """
    source = os.fspath(source)
    path = os.path.expanduser(source)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise FileNotFoundError(
                f"Whisper folder {path} has no config.json: it is not a "
                "Hugging Face Whisper model folder. " + _FIX_SOURCE
            )
        return
    if _looks_like_path(source):
        raise FileNotFoundError(
            f"Whisper folder {path} does not exist{_near_misses(path)}. "
            + _FIX_SOURCE
        )


class Whisper(SBWhisper):
    """SpeechBrain's Whisper with per-utterance log-mel and a window option.

    Arguments
    ---------
    source : str
        Hub id (``openai/whisper-small``) or a local folder.
    save_path : str
        Download/cache folder.
    encoder_window_s : float
        Seconds of audio the encoder sees (<= 30, a multiple of 0.02).
    window_bucket_s : float, optional
        Cut each batch's window to its longest clip rounded up to a
        multiple of this many seconds (a multiple of 0.02); None: every
        batch pays for the whole ``encoder_window_s``.
    **kwargs
        Passed to SpeechBrain's ``Whisper`` (``language``, ``freeze`` ...).

    Example
    -------
    >>> import tempfile
    >>> from speechbrain_lora_experts.testing.tiny_whisper import (
    ...     make_tiny_whisper,
    ... )
    >>> folder = make_tiny_whisper(tempfile.mkdtemp())
    >>> whisper = Whisper(folder, tempfile.mkdtemp(), encoder_window_s=10)
    >>> whisper.forward_encoder(whisper._get_mel(torch.zeros(2, 16000))).shape
    torch.Size([2, 500, 64])
    >>> cut = Whisper(folder, tempfile.mkdtemp(), window_bucket_s=2)
    >>> cut.forward_encoder(cut._get_mel(torch.zeros(2, 16000))).shape
    torch.Size([2, 100, 64])
    """

    def __init__(
        self,
        source,
        save_path,
        encoder_window_s=FULL_WINDOW_S,
        window_bucket_s=None,
        **kwargs,
    ):
        check_whisper_source(source)
        if os.path.isdir(os.path.expanduser(os.fspath(source))):
            source = os.path.expanduser(os.fspath(source))
        try:
            super().__init__(source, save_path, **kwargs)
        except OSError as err:
            if os.path.isdir(source):
                raise
            raise OSError(
                f"Whisper {source!r} is no local folder, and the hub client "
                f"could not provide it ({err}). " + _FIX_SOURCE
            ) from err
        self.encoder_window_s = float(encoder_window_s)
        frames = round(self.encoder_window_s * FRAMES_PER_SECOND)
        if not 0 < frames <= FULL_WINDOW_S * FRAMES_PER_SECOND or frames % 2:
            raise ValueError(
                f"encoder_window_s={encoder_window_s} must be in (0, 30] and "
                "a multiple of 0.02 s (two mel frames per encoder position)"
            )
        self._n_samples = frames * self._hop_length
        positions = frames // 2
        encoder = self.model.encoder
        if positions != encoder.embed_positions.num_embeddings:
            table = encoder.embed_positions.weight.detach()[:positions].clone()
            encoder.embed_positions = nn.Embedding.from_pretrained(
                table, freeze=True
            )
            # HF's encoder checks the mel length against this number.
            self.model.config.max_source_positions = positions
        self.set_window_bucket(window_bucket_s)

    def set_window_bucket(self, window_bucket_s):
        """Turns windows cut to the batch on (a bucket, s) or off (None).

        Arguments
        ---------
        window_bucket_s : float or None
            See the class arguments.
        """
        bucket_samples = None
        if window_bucket_s is not None:
            bucket = round(float(window_bucket_s) * FRAMES_PER_SECOND)
            if bucket <= 0 or bucket % 2:
                raise ValueError(
                    f"window_bucket_s={window_bucket_s} must be positive and "
                    "a multiple of 0.02 s (two mel frames per encoder "
                    "position); null turns the cut windows off"
                )
            bucket_samples = bucket * self._hop_length
            encoder = self.model.encoder
            if not getattr(encoder, "takes_cut_windows", False):
                # Forward takes any window up to the table's: HF's checks
                # the mel length against one.
                encoder.__class__ = _cut_window_class(type(encoder))
        self.window_bucket_s = window_bucket_s
        self._bucket_samples = bucket_samples

    @property
    def window_samples(self):
        """Samples of audio the encoder sees.

        Returns
        -------
        int
            ``encoder_window_s`` times the sample rate.
        """
        return self._n_samples

    def batch_samples(self, n_samples):
        """Samples of the encoder window of a batch padded to ``n_samples``.

        Arguments
        ---------
        n_samples : int
            Length of the padded batch (its longest clip).

        Returns
        -------
        int
            ``window_samples``, or with ``window_bucket_s`` the batch
            length rounded up to a bucket, at most ``window_samples``.
        """
        if self._bucket_samples is None:
            return self._n_samples
        buckets = max(1, math.ceil(int(n_samples) / self._bucket_samples))
        return min(self._n_samples, buckets * self._bucket_samples)

    def window_share(self, lengths, n_samples):
        """Share of its batch's encoder window each clip fills.

        What the gate pools over: with cut windows the window is the
        batch's, not ``encoder_window_s``.

        Arguments
        ---------
        lengths : torch.Tensor
            ``[B]`` clip lengths in samples.
        n_samples : int
            Length of the padded batch.

        Returns
        -------
        torch.Tensor
            ``[B]`` floats in (0, 1].
        """
        return lengths.float() / self.batch_samples(n_samples)

    def _get_mel(self, wav):
        """Log-mel features of ``wav`` padded/trimmed to its window."""
        return self.log_mel_spectrogram(
            self.pad_or_trim(wav, length=self.batch_samples(wav.shape[-1]))
        )

    def log_mel_spectrogram(self, audio, padding: int = 0):
        """Whisper's log-mel, normalised per utterance.

        Arguments
        ---------
        audio : torch.Tensor
            ``[B, samples]`` at 16 kHz.
        padding : int
            Zero samples appended at the end.

        Returns
        -------
        torch.Tensor
            ``[B, n_mels, frames]``.
        """
        if padding > 0:
            audio = nn.functional.pad(audio, (0, padding))
        window = torch.hann_window(self._n_fft, device=audio.device)
        stft = torch.stft(
            audio,
            self._n_fft,
            self._hop_length,
            window=window,
            return_complex=True,
        )
        magnitudes = stft[..., :-1].abs() ** 2
        mel_spec = self._mel_filters @ magnitudes
        log_spec = torch.clamp(mel_spec, min=1e-10).log10()
        peak = log_spec.amax(dim=(-2, -1), keepdim=True)
        log_spec = torch.maximum(log_spec, peak - 8.0)
        return (log_spec + 4.0) / 4.0


def encoder_front(encoder, features):
    """HF ``WhisperEncoder.forward`` up to its first layer's dropout.

    Convolutions and the first positions of the table, as many as the
    features give (a cut or shortened window takes the table's start).

    Arguments
    ---------
    encoder : transformers WhisperEncoder
        The encoder.
    features : torch.Tensor
        ``[B, n_mels, frames]`` log-mel.

    Returns
    -------
    torch.Tensor
        ``[B, frames / 2, D]``, the input of encoder layer 0.
    """
    hidden = nn.functional.gelu(encoder.conv1(features))
    hidden = nn.functional.gelu(encoder.conv2(hidden)).permute(0, 2, 1)
    positions = torch.arange(hidden.shape[1], device=hidden.device)
    return hidden + encoder.embed_positions(positions)


def run_encoder_layers(layers, hidden):
    """``hidden`` through Whisper encoder ``layers``, no attention mask.

    Layers return a tensor or, in older transformers, a tuple.

    Arguments
    ---------
    layers : iterable of WhisperEncoderLayer
        Consecutive encoder layers.
    hidden : torch.Tensor
        ``[B, T, D]`` input of the first of them.

    Returns
    -------
    torch.Tensor
        The output of the last.
    """
    for layer in layers:
        out = layer(hidden, None)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


@functools.cache
def _cut_window_class(encoder_class):
    """``encoder_class`` whose forward takes windows shorter than its table.

    A subclass rather than a wrapper keeps the module tree, the state dict
    and hooks on the encoder as they are. Positions are the table's first
    rows, as for a shortened ``encoder_window_s``; dropout and layer drop
    follow HF's ``WhisperEncoder.forward``.
    """

    class CutWindowEncoder(encoder_class):
        """The encoder; its forward takes windows up to its table's."""

        takes_cut_windows = True

        def forward(self, input_features, attention_mask=None, **kwargs):
            """HF's encoder forward over ``input_features``' own length.

            Arguments
            ---------
            input_features : torch.Tensor
                ``[B, n_mels, frames]``, frames even and at most twice
                the positional table.
            attention_mask : None
                Unused, as in HF (Whisper attends to the whole window).
            **kwargs
                ``output_hidden_states`` is honoured; the rest ignored.

            Returns
            -------
            BaseModelOutput
                ``last_hidden_state`` ``[B, frames / 2, D]``.
            """
            positions = input_features.shape[-1] // 2
            table = self.embed_positions.num_embeddings
            if input_features.shape[-1] % 2 or positions > table:
                raise ValueError(
                    f"the encoder takes an even number of mel frames, at "
                    f"most {2 * table}; got {input_features.shape[-1]}"
                )
            hidden = encoder_front(self, input_features)
            hidden = nn.functional.dropout(
                hidden, p=self.dropout, training=self.training
            )
            states = [hidden]
            for layer in self.layers:
                if self.training and self.layerdrop > 0.0:
                    if torch.rand([]) < self.layerdrop:
                        states.append(hidden)
                        continue
                hidden = run_encoder_layers([layer], hidden)
                states.append(hidden)
            hidden = self.layer_norm(hidden)
            states[-1] = hidden
            return BaseModelOutput(
                last_hidden_state=hidden,
                hidden_states=tuple(states)
                if kwargs.get("output_hidden_states")
                else None,
            )

    CutWindowEncoder.__name__ = f"CutWindow{encoder_class.__name__}"
    CutWindowEncoder.__qualname__ = CutWindowEncoder.__name__
    return CutWindowEncoder
