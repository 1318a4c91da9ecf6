"""A disk cache of the frozen part of Whisper's encoder.

LoRA experts that start at encoder layer ``k`` (or adapt only the decoder)
leave the log-mel, the convolutions and encoder layers ``< k`` frozen: for a
given clip their output never changes, yet a plain training loop recomputes
it for every clip in every epoch, and again in every run that shares the
same Whisper (experts, multilingual LoRA, fusion, distillation teachers).
``FrozenPrefixCache`` computes the hidden states entering layer ``k`` once
per clip, stores them on disk (``.npy``, memory-mapped when read) and runs
only the encoder layers from ``k`` on.

Entries are keyed by

* the clip: a hash of its samples, padded or trimmed to the window (with
  windows cut to the batch, the batch's window: one entry per length), so
  a re-prepared or edited clip is a new entry;
* the frozen weights: a hash of every parameter and buffer below layer
  ``k`` (a merged shared adapter or another checkpoint is another folder),
  together with ``k``, the window and the stored dtype.

Exact only when nothing random or trainable acts below layer ``k``:
``FrozenPrefixCache.check`` names what prevents it (Whisper dropout or
layer drop, an augmentation, trainable parameters in the prefix). The value
a run uses is always the stored one (a freshly computed entry is rounded to
the stored dtype first), so a run gives the same result whether its entries
were computed now or by an earlier run.

Authors
 * speechbrain-lora-experts developers 2026
"""

import hashlib
import io
import json
import logging
import os
import tempfile

import numpy as np
import torch

from speechbrain_lora_experts.attach import whisper_model
from speechbrain_lora_experts.whisper import encoder_front, run_encoder_layers

logger = logging.getLogger(__name__)

DTYPES = {"float16": torch.float16, "float32": torch.float32}
_DROPOUTS = ("dropout", "attention_dropout", "activation_dropout")


def first_adapted_layer(experts, n_layers):
    """Index of the first encoder layer the experts adapt.

    Arguments
    ---------
    experts : WhisperLoRAExperts or None
        The pool (its ``layers`` maps WhisperModel layer names to wrappers).
    n_layers : int
        Encoder layers of the model.

    Returns
    -------
    int
        The lowest adapted encoder layer; ``n_layers`` when the experts
        adapt only the decoder (or there are none).

    Example
    -------
    >>> class Pool:
    ...     layers = {
    ...         "encoder.layers.3.fc1": None,
    ...         "decoder.layers.0.fc1": None,
    ...     }
    >>> first_adapted_layer(Pool(), 6)
    3
    >>> first_adapted_layer(None, 6)
    6
    """
    if experts is None:
        return n_layers
    adapted = [
        int(name.split(".")[2])
        for name in experts.layers
        if name.startswith("encoder.layers.")
    ]
    return min(adapted, default=n_layers)


def first_trainable_layer(encoder):
    """Where the encoder's trainable parameters start.

    Arguments
    ---------
    encoder : transformers WhisperEncoder
        The encoder.

    Returns
    -------
    int
        ``-1`` when the convolutions or the positional table train, else
        the lowest layer with a trainable parameter (``len(layers)``:
        none, or only the final layer norm).

    Example
    -------
    >>> from speechbrain_lora_experts.testing.tiny_whisper import (
    ...     tiny_whisper_model,
    ... )
    >>> encoder = tiny_whisper_model(encoder_layers=2).encoder
    >>> first_trainable_layer(encoder)
    -1
    >>> _ = encoder.requires_grad_(False)
    >>> _ = encoder.layers[1].fc1.weight.requires_grad_(True)
    >>> first_trainable_layer(encoder)
    1
    """
    front = (encoder.conv1, encoder.conv2, encoder.embed_positions)
    if any(p.requires_grad for m in front for p in m.parameters()):
        return -1
    for index, layer in enumerate(encoder.layers):
        if any(p.requires_grad for p in layer.parameters()):
            return index
    return len(encoder.layers)


class FrozenPrefixCache:
    """Hidden states entering the first adapted encoder layer, on disk.

    Arguments
    ---------
    folder : str
        Cache root; runs that share it share entries (one subfolder per
        frozen-weights fingerprint).
    whisper : speechbrain_lora_experts.whisper.Whisper
        The model (its ``window_samples`` and ``_get_mel`` are used).
    start_layer : int
        First encoder layer that runs live (``0 < start_layer <=`` the
        number of encoder layers; the layers below it are cached).
    dtype : str
        ``float16`` (half the disk) or ``float32`` (bit-exact).

    Example
    -------
    >>> import tempfile
    >>> from speechbrain_lora_experts.testing.tiny_whisper import (
    ...     make_tiny_whisper,
    ... )
    >>> from speechbrain_lora_experts.whisper import Whisper
    >>> whisper = Whisper(
    ...     make_tiny_whisper(tempfile.mkdtemp()),
    ...     tempfile.mkdtemp(),
    ...     encoder_window_s=1,
    ... )
    >>> _ = whisper.requires_grad_(False)
    >>> cache = FrozenPrefixCache(tempfile.mkdtemp(), whisper, 1, "float32")
    >>> wavs = torch.randn(2, 8000)
    >>> enc = cache.encode(wavs)
    >>> torch.allclose(enc, whisper.forward_encoder(whisper._get_mel(wavs)))
    True
    >>> cache.encode(wavs).shape, cache.counts
    (torch.Size([2, 50, 64]), {'computed': 2, 'loaded': 2})
    """

    def __init__(self, folder, whisper, start_layer, dtype="float16"):
        if dtype not in DTYPES:
            raise ValueError(
                f"prefix_cache_dtype must be one of {sorted(DTYPES)}, "
                f"got {dtype!r}"
            )
        self.whisper = whisper
        self.encoder = whisper_model(whisper).encoder
        n_layers = len(self.encoder.layers)
        if not 0 < start_layer <= n_layers:
            raise ValueError(
                f"start_layer={start_layer}: the cache needs at least one "
                f"frozen encoder layer below it and at most {n_layers}"
            )
        self.start_layer = start_layer
        self.dtype = dtype
        self.width = whisper_model(whisper).config.d_model
        self.counts = {"computed": 0, "loaded": 0}
        self.folder = os.path.join(folder, self.fingerprint())
        os.makedirs(self.folder, exist_ok=True)
        self._describe()

    # Setup ------------------------------------------------------------------
    @staticmethod
    def check(whisper, experts=None, augmentation=None):
        """Where the cache could start, or why it cannot be exact.

        Arguments
        ---------
        whisper : torch.nn.Module
            The model, experts attached, trainable flags set.
        experts : WhisperLoRAExperts or None
            The pool.
        augmentation : object
            The run's waveform augmentation (None: none).

        Returns
        -------
        start_layer : int
            First encoder layer to run live (0: nothing to cache).
        reason : str or None
            Why the cache would not be exact, else None.

        Example
        -------
        >>> from speechbrain_lora_experts.testing.tiny_whisper import (
        ...     tiny_whisper_model,
        ... )
        >>> model = tiny_whisper_model(encoder_layers=2)
        >>> FrozenPrefixCache.check(model)[1]
        'the convolutions or positional table train'
        >>> _ = model.requires_grad_(False)
        >>> FrozenPrefixCache.check(model)
        (2, None)
        >>> FrozenPrefixCache.check(model, augmentation=object())[1]
        'a waveform augmentation changes every epoch'
        """
        model = whisper_model(whisper)
        config = model.config
        start = min(
            first_adapted_layer(experts, config.encoder_layers),
            first_trainable_layer(model.encoder),
        )
        if augmentation is not None:
            return start, "a waveform augmentation changes every epoch"
        if start < 0:
            return 0, "the convolutions or positional table train"
        for name in _DROPOUTS:
            if getattr(config, name, 0.0):
                return start, f"Whisper's {name} is {getattr(config, name)}"
        if getattr(config, "encoder_layerdrop", 0.0):
            return start, (
                f"Whisper's encoder_layerdrop is {config.encoder_layerdrop}"
            )
        return start, None

    def fingerprint(self):
        """Hash of the frozen prefix: weights, ``k``, window and dtype."""
        digest = hashlib.blake2b(digest_size=12)
        digest.update(
            json.dumps(
                [self.start_layer, self.whisper.window_samples, self.dtype]
            ).encode()
        )
        for module in self._prefix_modules():
            for name, tensor in sorted(module.state_dict().items()):
                digest.update(name.encode())
                digest.update(
                    tensor.detach().to("cpu", torch.float32).numpy().tobytes()
                )
        return f"k{self.start_layer}-{digest.hexdigest()}"

    def _prefix_modules(self):
        encoder = self.encoder
        return [
            encoder.conv1,
            encoder.conv2,
            encoder.embed_positions,
            *encoder.layers[: self.start_layer],
        ]

    def _describe(self):
        path = os.path.join(self.folder, "about.json")
        if os.path.exists(path):
            return
        model = whisper_model(self.whisper)
        about = {
            "whisper": getattr(model.config, "_name_or_path", None),
            "start_layer": self.start_layer,
            "window_s": self.whisper.window_samples / 16000,
            "dtype": self.dtype,
            "entry_shape": [self.positions, self.width],
        }
        _write_atomic(path, json.dumps(about, indent=1).encode())

    @property
    def positions(self):
        """Encoder positions per clip (half the window's mel frames)."""
        return self.encoder.embed_positions.num_embeddings

    def batch_positions(self, n_samples):
        """Encoder positions of a batch padded to ``n_samples``.

        Arguments
        ---------
        n_samples : int
            The batch's padded length.

        Returns
        -------
        int
            ``positions``, or fewer when the model cuts windows.
        """
        hop = self.whisper._hop_length
        return self.whisper.batch_samples(n_samples) // (2 * hop)

    @property
    def bytes_per_clip(self):
        """Disk use of one entry (at most: cut windows store less)."""
        return self.positions * self.width * DTYPES[self.dtype].itemsize

    # Forward ----------------------------------------------------------------
    def clip_keys(self, wavs):
        """One key per clip: a hash of its samples in the window.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[B, samples]`` (zero padding past a clip's end is part of
            every key alike: the window pads with zeros too).

        Returns
        -------
        list of str
        """
        # The batch's window (cut windows: its longest clip, bucketed) is
        # in the hashed bytes: one clip has one entry per window length.
        window = self.whisper.pad_or_trim(
            wavs.detach(), length=self.whisper.batch_samples(wavs.shape[-1])
        )
        rows = window.to("cpu", torch.float32).contiguous().numpy()
        return [
            hashlib.blake2b(row.tobytes(), digest_size=16).hexdigest()
            for row in rows
        ]

    def hidden(self, wavs):
        """``[B, T, D]`` hidden states entering ``start_layer``.

        Entries on disk are read; missing ones are computed (no graph) and
        stored. Either way the value is the stored one, as float32 on the
        device of ``wavs``.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[B, samples]`` at 16 kHz.

        Returns
        -------
        torch.Tensor
        """
        keys = self.clip_keys(wavs)
        positions = self.batch_positions(wavs.shape[-1])
        rows = [self._load(key, positions) for key in keys]
        missing = [i for i, row in enumerate(rows) if row is None]
        if missing:
            fresh = self._compute(wavs[missing])
            stored = fresh.to("cpu", DTYPES[self.dtype])
            for i, row in zip(missing, stored):
                self._store(keys[i], row)
                rows[i] = row
            self.counts["computed"] += len(missing)
        self.counts["loaded"] += len(keys) - len(missing)
        return torch.stack(rows).to(wavs.device, torch.float32)

    def _path(self, key):
        return os.path.join(self.folder, key[:2], f"{key}.npy")

    def _load(self, key, positions):
        path = self._path(key)
        if not os.path.exists(path):
            return None
        try:
            array = np.load(path, mmap_mode="r")
            row = torch.from_numpy(np.array(array))
        except (OSError, ValueError) as err:
            logger.warning(
                "frozen-prefix cache entry %s is unreadable (%s); "
                "computing it again",
                path,
                err,
            )
            return None
        if tuple(row.shape) != (positions, self.width) or (
            row.dtype != DTYPES[self.dtype]
        ):
            logger.warning(
                "frozen-prefix cache entry %s has shape %s %s, expected "
                "%s %s; computing it again",
                path,
                tuple(row.shape),
                row.dtype,
                (positions, self.width),
                DTYPES[self.dtype],
            )
            return None
        return row

    def _store(self, key, row):
        path = self._path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        buffer = io.BytesIO()
        np.save(buffer, row.numpy())
        _write_atomic(path, buffer.getvalue())

    @torch.no_grad()
    def _compute(self, wavs):
        hidden = encoder_front(self.encoder, self.whisper._get_mel(wavs))
        return run_encoder_layers(
            self.encoder.layers[: self.start_layer], hidden
        )

    def forward_rest(self, hidden):
        """The encoder from ``start_layer`` on (live: adapters, gradients).

        Arguments
        ---------
        hidden : torch.Tensor
            ``[B, T, D]`` from :meth:`hidden`.

        Returns
        -------
        torch.Tensor
            The encoder output, as ``Whisper.forward_encoder`` returns it.
        """
        layers = self.encoder.layers[self.start_layer :]
        return self.encoder.layer_norm(run_encoder_layers(layers, hidden))

    def encode(self, wavs):
        """The encoder output of ``wavs``, the frozen prefix from disk."""
        return self.forward_rest(self.hidden(wavs))


def _write_atomic(path, data):
    # A reader (another process, a resumed run) never sees half a file, and
    # two processes storing one entry write the same bytes.
    with tempfile.NamedTemporaryFile(
        dir=os.path.dirname(path), suffix=".tmp", delete=False
    ) as f:
        f.write(data)
    os.replace(f.name, path)


def build_prefix_cache(mode, folder, whisper, experts=None, **kwargs):
    """The cache a run asked for, or None (and why, in the log).

    Arguments
    ---------
    mode : str or bool
        ``auto``: on when exact and at least one encoder layer is frozen
        below the adapters; True: on, refused where it is not exact or
        the experts adapt encoder layer 0; False: off.
    folder : str
        Cache root.
    whisper : speechbrain_lora_experts.whisper.Whisper
        The model, experts attached, trainable flags set.
    experts : WhisperLoRAExperts or None
        The pool.
    **kwargs
        ``dtype`` and ``augmentation``.

    Returns
    -------
    FrozenPrefixCache or None

    Raises
    ------
    ValueError
        ``mode`` True where the cache cannot be exact.

    Example
    -------
    >>> build_prefix_cache(False, "unused", whisper=None) is None
    True
    """
    if mode in (False, None, "false", "False", "off"):
        return None
    if mode not in (True, "true", "True", "on", "auto"):
        raise ValueError(
            f"prefix_cache must be auto, True or False; got {mode!r}"
        )
    start, reason = FrozenPrefixCache.check(
        whisper, experts, kwargs.get("augmentation")
    )
    forced = mode != "auto"
    if reason is not None or start == 0:
        why = reason or (
            "the experts adapt encoder layer 0 (only the front-end is frozen)"
        )
        if forced:
            raise ValueError(
                f"prefix_cache=True, but the frozen-prefix cache would not "
                f"be exact: {why}. Set prefix_cache: auto or False."
            )
        logger.info("frozen-prefix cache off: %s", why)
        return None
    cache = FrozenPrefixCache(
        folder, whisper, start, kwargs.get("dtype", "float16")
    )
    logger.info(
        "frozen-prefix cache on: encoder layers < %d from %s (%.2f MiB per "
        "clip)",
        start,
        cache.folder,
        cache.bytes_per_clip / 2**20,
    )
    return cache
