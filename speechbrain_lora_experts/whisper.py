"""SpeechBrain's Whisper wrapper with batch-independent features.

Two changes to ``speechbrain.integrations.huggingface.whisper.Whisper``:

* the log-mel floor (``max - 8``) is taken per utterance, as OpenAI's
  Whisper does. SpeechBrain 1.1.2 takes it over the whole batch, so an
  utterance's features (and transcript) depend on what it is batched with;
  a mixed-language batch must give each utterance what it gets alone.
* ``encoder_window_s`` optionally shortens the encoder's fixed 30 s window
  (the positional table is sliced), which divides the encoder cost on CPU.
  30 s (the default) is Whisper's behaviour; shorter windows trim longer
  clips, so data preparation must drop clips over the window.

Authors
 * speechbrain-lora-experts developers 2026
"""

import torch
import torch.nn as nn
from speechbrain.integrations.huggingface.whisper import Whisper as SBWhisper

FULL_WINDOW_S = 30.0
FRAMES_PER_SECOND = 100


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
    **kwargs
        Passed to SpeechBrain's ``Whisper`` (``language``, ``freeze`` ...).

    Example
    -------
    >>> import tempfile
    >>> from speechbrain_lora_experts.testing.tiny_whisper import (
    ...     make_tiny_whisper)
    >>> folder = make_tiny_whisper(tempfile.mkdtemp())
    >>> whisper = Whisper(folder, tempfile.mkdtemp(), encoder_window_s=10)
    >>> whisper.forward_encoder(whisper._get_mel(torch.zeros(2, 16000))).shape
    torch.Size([2, 500, 64])
    """

    def __init__(
        self, source, save_path, encoder_window_s=FULL_WINDOW_S, **kwargs
    ):
        super().__init__(source, save_path, **kwargs)
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

    @property
    def window_samples(self):
        """Samples of audio the encoder sees."""
        return self._n_samples

    def _get_mel(self, wav):
        """Log-mel features of ``wav`` padded/trimmed to the window."""
        return self.log_mel_spectrogram(
            self.pad_or_trim(wav, length=self._n_samples)
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
