"""Fusion gates that weigh frozen language experts per utterance.

``UtteranceGate`` pools encoder features over the valid frames of each
utterance (mean and standard deviation), and maps them to one logit per
expert. Because experts are languages, the logits double as language
identification: an optional auxiliary cross-entropy teaches them, and the
language-agnostic scenario can read the language off them. In the
language-aware scenario the gate also sees the known language (a learned
embedding added to the pooled features), so it can still learn to borrow
from related languages' experts.

The token/layer-level variant lives in ``LoRAExpertsLinear.add_token_gate``
(every adapted layer mixes experts per token from its own input).

Authors
 * speechbrain-lora-experts developers 2026
"""

import math

import torch
import torch.nn as nn

from speechbrain_lora_experts.whisper import (
    FRAMES_PER_SECOND,
    run_encoder_layers,
)

GATE_FEATURES = ("whisper_lid", "base_encoder", "first_adapted")
# Whisper's convolutions halve the mel frame rate.
ENCODER_FRAMES_PER_SECOND = FRAMES_PER_SECOND // 2


def audio_frames(n_frames, valid_fraction, bucket_s):
    """Encoder frames a pass over the batch's audio only has to keep.

    The longest clip of the batch, rounded up to a multiple of the bucket,
    at most the window.

    Arguments
    ---------
    n_frames : int
        Encoder frames of the (padded) window.
    valid_fraction : torch.Tensor
        ``[B]`` fraction of the window covered by each utterance.
    bucket_s : float or None
        Bucket in seconds (50 encoder frames per second); None: the whole
        window.

    Returns
    -------
    int
        Frames to keep, from the start of the window.

    Example
    -------
    >>> audio_frames(1500, torch.tensor([0.1, 0.21]), bucket_s=2.0)
    400
    >>> audio_frames(1500, torch.tensor([0.1, 0.21]), bucket_s=None)
    1500
    """
    if bucket_s is None:
        return n_frames
    bucket = round(bucket_s * ENCODER_FRAMES_PER_SECOND)
    longest = float(valid_fraction.max()) * n_frames
    # The tolerance keeps float noise from adding a whole bucket.
    buckets = max(1, math.ceil(longest / bucket - 1e-6))
    return min(n_frames, buckets * bucket)


def valid_frame_mask(n_frames, valid_fraction):
    """``[B, n_frames]`` mask of frames that hold audio.

    Arguments
    ---------
    n_frames : int
        Encoder frames of the (padded) window.
    valid_fraction : torch.Tensor
        ``[B]`` fraction of the window covered by each utterance.

    Returns
    -------
    torch.Tensor
        ``[B, n_frames]`` boolean mask.

    Example
    -------
    >>> valid_frame_mask(4, torch.tensor([0.5, 1.0])).int().tolist()
    [[1, 1, 0, 0], [1, 1, 1, 1]]
    """
    frames = (valid_fraction.clamp(0, 1) * n_frames).ceil().clamp(min=1)
    positions = torch.arange(n_frames, device=valid_fraction.device)
    return positions.unsqueeze(0) < frames.unsqueeze(1)


def masked_stats_pool(features, mask):
    """Mean and standard deviation over valid frames, ``[B, 2 * D]``.

    Arguments
    ---------
    features : torch.Tensor
        ``[B, T, D]`` frame features.
    mask : torch.Tensor
        ``[B, T]`` valid frames.

    Returns
    -------
    torch.Tensor
        ``[B, 2 * D]``: mean, then standard deviation.

    Example
    -------
    >>> features = torch.tensor([[[1.0], [3.0], [100.0]]])
    >>> mask = torch.tensor([[True, True, False]])
    >>> masked_stats_pool(features, mask)
    tensor([[2., 1.]])
    """
    weights = mask.unsqueeze(-1).to(features.dtype)
    count = weights.sum(dim=1).clamp(min=1)
    mean = (features * weights).sum(dim=1) / count
    var = ((features - mean.unsqueeze(1)) ** 2 * weights).sum(dim=1) / count
    return torch.cat([mean, var.clamp(min=1e-8).sqrt()], dim=-1)


class UtteranceGate(nn.Module):
    """Utterance-level fusion gate with language-identification logits.

    Arguments
    ---------
    input_size : int
        Feature size (Whisper's ``d_model``).
    n_experts : int
        Number of experts (= languages, in the same order).
    hidden_size : int
        Width of the gate's hidden layer.
    temperature : float
        Softmax temperature of the mixing weights.
    top_k : int or None
        Keep the k largest weights (renormalised); k=1 routes hard, which
        makes fused decoding cost one LoRA. In training the backward pass
        uses the dense softmax's gradient (straight-through): the
        renormalised top-1 weight is a constant 1, which alone would give
        the gate no gradient from the ASR loss.
    language_aware : bool
        Condition on the known language (``forward(..., language=...)``):
        it enters as an embedding and as a learned prior on its own expert
        (``language_prior``), so an untrained aware gate is close to the
        oracle and training (by the ASR loss, never by a loss towards the
        given label) can move weight to a related language's expert.
    language_prior : float
        Initial logit bonus of the given language's expert (aware gates):
        4.0 gives it 0.95 of the weight among 4 experts.
    dropout : float
        Dropout before the output layer.
    features : str
        What ``GateTap`` feeds the gate. ``whisper_lid`` (default): the
        frozen encoder's output (one extra encoder pass without gradient)
        plus, as a prior added to the logits with a learned scale, frozen
        Whisper's own language identification over the experts' languages
        (one decoder step); the output layer starts at zero, so an
        untrained gate weighs experts by Whisper's LID. ``base_encoder``:
        the frozen encoder's output alone. ``first_adapted``: the hidden
        states entering the first adapted encoder layer (free). Measured
        on whisper-base: a gate trained on the input of encoder layer 0
        identified 42% of held-out utterances of 4 languages, one trained
        on the encoder output 80%; in fusion runs, gates without the prior
        learned too little LID (35-48%) for the agnostic scenario
        (``bench/results/quality_*.md``).
    base_pass_bucket_s : float, optional
        The frozen pass that feeds ``whisper_lid`` and ``base_encoder``
        gates runs over the batch's audio only: its longest clip rounded
        up to a multiple of this many seconds, instead of the whole
        encoder window (None). Whisper attends to the whole window, so
        the evidence changes a little (``bench/results/lid_evidence*.md``
        measures Whisper's LID both ways); the cost of that pass falls
        with the share of the window the clips fill. Unused without a
        pass: ``first_adapted`` gates, and experts that adapt no encoder
        layer (the encoder output is the base one).

    Example
    -------
    >>> gate = UtteranceGate(8, 3, hidden_size=16, top_k=2)
    >>> features, valid = torch.randn(2, 10, 8), torch.tensor([1.0, 0.5])
    >>> lid = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]).log()
    >>> weights, logits = gate(features, valid, lid_prior=lid)
    >>> weights.shape, logits.shape
    (torch.Size([2, 3]), torch.Size([2, 3]))
    >>> (weights > 0).sum(dim=1).tolist()
    [2, 2]
    >>> weights.argmax(dim=1).tolist()  # untrained: Whisper's LID decides
    [0, 2]
    """

    def __init__(
        self,
        input_size,
        n_experts,
        hidden_size=256,
        temperature=1.0,
        top_k=None,
        language_aware=False,
        language_prior=4.0,
        dropout=0.1,
        features="whisper_lid",
        base_pass_bucket_s=None,
    ):
        super().__init__()
        if base_pass_bucket_s is not None:
            frames = base_pass_bucket_s * ENCODER_FRAMES_PER_SECOND
            if not base_pass_bucket_s > 0 or abs(frames - round(frames)) > 1e-6:
                raise ValueError(
                    f"base_pass_bucket_s={base_pass_bucket_s} must be a "
                    "positive multiple of 0.02 s (one encoder frame); null "
                    "runs the gate's frozen pass over the whole window"
                )
        if features not in GATE_FEATURES:
            raise ValueError(
                f"gate features must be one of {GATE_FEATURES}, got "
                f"{features!r}"
            )
        if not temperature > 0:
            raise ValueError(f"gate temperature must be > 0, got {temperature}")
        if top_k is not None and not 1 <= top_k <= n_experts:
            raise ValueError(
                f"top_k must be in [1, {n_experts}] or None, got {top_k}"
            )
        self.input_size = input_size
        self.features = features
        self.base_pass_bucket_s = base_pass_bucket_s
        self.n_experts = n_experts
        self.temperature = temperature
        self.top_k = top_k
        self.norm = nn.LayerNorm(2 * input_size)
        self.hidden = nn.Linear(2 * input_size, hidden_size)
        self.language_embedding = (
            nn.Embedding(n_experts, hidden_size) if language_aware else None
        )
        self.language_prior = (
            nn.Parameter(torch.tensor(float(language_prior)))
            if language_aware
            else None
        )
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(hidden_size, n_experts)
        self.lid_scale = None
        if features == "whisper_lid":
            # Starts as Whisper's LID; training learns what to add.
            self.lid_scale = nn.Parameter(torch.ones(()))
        if features == "whisper_lid" or language_aware:
            # The priors alone decide until training learns what to add.
            nn.init.zeros_(self.output.weight)
            nn.init.zeros_(self.output.bias)

    @classmethod
    def for_whisper(cls, whisper, n_experts, **kwargs):
        """A gate sized for ``whisper``'s hidden size (for HyperPyYAML).

        Arguments
        ---------
        whisper : torch.nn.Module
            SpeechBrain's Whisper (gives the hidden size).
        n_experts : int
            Number of experts (languages).
        **kwargs
            The gate's other arguments.

        Returns
        -------
        UtteranceGate
            The gate.
        """
        from speechbrain_lora_experts.attach import whisper_model

        size = whisper_model(whisper).config.d_model
        return cls(size, n_experts, **kwargs)

    @property
    def language_aware(self):
        """Whether the gate is told the language.

        Returns
        -------
        bool
            The scenario.
        """
        return self.language_embedding is not None

    @property
    def uses_lid_prior(self):
        """Whether the logits add Whisper's language identification.

        Returns
        -------
        bool
            Whether ``lid_prior`` is needed.
        """
        return self.lid_scale is not None

    def logits(self, features, valid_fraction, language=None, lid_prior=None):
        """Expert/language logits ``[B, N]`` (arguments as ``forward``).

        Arguments
        ---------
        features : torch.Tensor
            ``[B, T, D]`` hidden states.
        valid_fraction : torch.Tensor
            ``[B]`` fraction of the window holding audio.
        language : torch.Tensor, optional
            ``[B]`` language indices (aware scenario).
        lid_prior : torch.Tensor, optional
            ``[B, N]`` Whisper's language log-probabilities.

        Returns
        -------
        torch.Tensor
            ``[B, N]`` logits.
        """
        self._check_inputs(features, valid_fraction, language, lid_prior)
        mask = valid_frame_mask(features.shape[1], valid_fraction)
        pooled = self.norm(masked_stats_pool(features, mask))
        hidden = self.hidden(pooled)
        if self.language_aware:
            if language is None:
                raise ValueError("a language-aware gate needs language=")
            hidden = hidden + self.language_embedding(language)
        logits = self.output(self.dropout(torch.relu(hidden)))
        if self.language_aware:
            given = nn.functional.one_hot(language, self.n_experts)
            logits = logits + self.language_prior * given.to(logits.dtype)
        if self.uses_lid_prior:
            if lid_prior is None:
                raise ValueError(
                    "a whisper_lid gate needs lid_prior= (Whisper's language "
                    "log-probabilities over the experts' languages)"
                )
            logits = logits + self.lid_scale * lid_prior.to(logits.dtype)
        return logits

    def _check_inputs(self, features, valid_fraction, language, lid_prior):
        if features.dim() != 3 or features.shape[-1] != self.input_size:
            raise ValueError(
                f"gate features must be [B, T, {self.input_size}], got "
                f"{tuple(features.shape)}"
            )
        batch = features.shape[0]
        if tuple(valid_fraction.shape) != (batch,):
            raise ValueError(
                f"valid_fraction must be [{batch}] (one per utterance), got "
                f"{tuple(valid_fraction.shape)}"
            )
        if language is not None:
            if tuple(language.shape) != (batch,) or (
                language.dtype.is_floating_point
            ):
                raise ValueError(
                    f"language must be [{batch}] expert indices, got "
                    f"{tuple(language.shape)} {language.dtype}"
                )
            low, high = language.min().item(), language.max().item()
            if low < 0 or high >= self.n_experts:
                raise IndexError(
                    f"language index {low if low < 0 else high} out of range "
                    f"for {self.n_experts} experts"
                )
        if lid_prior is not None and tuple(lid_prior.shape) != (
            batch,
            self.n_experts,
        ):
            raise ValueError(
                f"lid_prior must be [{batch}, {self.n_experts}], got "
                f"{tuple(lid_prior.shape)}"
            )

    def weights_from_logits(self, logits):
        """Softmax with temperature, then optional top-k renormalisation.

        Arguments
        ---------
        logits : torch.Tensor
            ``[B, N]`` logits.

        Returns
        -------
        torch.Tensor
            ``[B, N]`` mixing weights.
        """
        weights = torch.softmax(logits / self.temperature, dim=-1)
        if self.top_k is not None and self.top_k < self.n_experts:
            top = weights.detach().topk(self.top_k, dim=-1)
            sparse = torch.zeros_like(weights).scatter(
                -1, top.indices, top.values
            )
            sparse = sparse / sparse.sum(dim=-1, keepdim=True)
            if not weights.requires_grad:
                return sparse
            # Straight-through: the sparse mix forward, the dense softmax's
            # gradient backward (exactly zero stays zero: w - w == 0).
            return sparse + (weights - weights.detach())
        return weights

    def forward(self, features, valid_fraction, language=None, lid_prior=None):
        """Mixing weights ``[B, N]`` and logits ``[B, N]``.

        Arguments
        ---------
        features : torch.Tensor
            ``[B, T, D]`` encoder features.
        valid_fraction : torch.Tensor
            ``[B]`` fraction of the T frames holding audio.
        language : torch.LongTensor
            ``[B]`` expert index of the known language (aware gates only).
        lid_prior : torch.Tensor
            ``[B, N]`` log-probabilities of the experts' languages
            (``whisper_lid`` gates only).

        Returns
        -------
        tuple of torch.Tensor
            ``(weights, logits)``.
        """
        logits = self.logits(features, valid_fraction, language, lid_prior)
        return self.weights_from_logits(logits), logits


class GateTap:
    """Feeds an ``UtteranceGate`` from inside Whisper's encoder.

    The tap sits before the first encoder layer the experts adapt:
    everything before it is the frozen base, so the gate's features never
    depend on its own decision. With ``gate.features == "first_adapted"``
    the gate reads those hidden states (free); with ``"base_encoder"`` the
    tap runs the remaining encoder layers once with the experts off (no
    gradient) and the gate reads the frozen encoder's output; with
    ``"whisper_lid"`` it also runs one decoder step of frozen Whisper on
    that output for its language log-probabilities over the experts'
    languages (the expert names); with the gate's ``base_pass_bucket_s``
    that frozen pass keeps only the frames of the batch's longest clip,
    rounded up to the bucket. When the experts adapt no encoder layer,
    the encoder output is the base one and costs nothing. The tap sets the
    experts' mixing weights in place, before any adapted layer runs.

    Arguments
    ---------
    whisper : torch.nn.Module
        Whisper carrying ``experts``: SpeechBrain's wrapper (any gate) or
        the HF model (gates without the LID prior).
    experts : WhisperLoRAExperts
        The frozen expert pool.
    gate : UtteranceGate
        The gate.

    Example
    -------
    >>> from speechbrain_lora_experts.testing.tiny_whisper import (
    ...     tiny_whisper_model,
    ... )
    >>> from speechbrain_lora_experts.attach import WhisperLoRAExperts
    >>> model = tiny_whisper_model(
    ...     encoder_layers=2, num_mel_bins=8, max_source_positions=4
    ... )
    >>> experts = WhisperLoRAExperts(
    ...     model, expert_names=["de", "es", "it"], rank=2, layers="1"
    ... )
    >>> gate = UtteranceGate(
    ...     8, 3, hidden_size=4, top_k=1, features="base_encoder"
    ... )
    >>> tap = GateTap(model, experts, gate)
    >>> tap.layer  # hooked before encoder layer 1, the first adapted one
    1
    >>> tap.prepare(valid_fraction=torch.tensor([1.0, 0.5]))
    >>> _ = model.encoder(torch.randn(2, 8, 8))  # mel [B, n_mels, frames]
    >>> tap.weights.shape, (tap.weights > 0).sum(dim=1).tolist()  # top-1
    (torch.Size([2, 3]), [1, 1])
    >>> experts.routing.mode  # set before the adapted layer 1 ran
    'mix'
    >>> model.encoder(torch.randn(2, 8, 8))  # no prepare(): refused
    Traceback (most recent call last):
    ...
    RuntimeError: call GateTap.prepare() before each forward of the encoder
    >>> tap.remove()
    """

    def __init__(self, whisper, experts, gate):
        from speechbrain_lora_experts.attach import whisper_model

        encoder = whisper_model(whisper).encoder
        self.encoder = encoder
        self.whisper = whisper
        if gate.features == "whisper_lid" and not hasattr(
            whisper, "forward_decoder"
        ):
            raise TypeError(
                "a whisper_lid gate needs SpeechBrain's Whisper wrapper "
                "(speechbrain_lora_experts.whisper.Whisper) for its LID step"
            )
        adapted = sorted(
            int(name.split(".")[2])
            for name in experts.layers
            if name.startswith("encoder.")
        )
        self.experts = experts
        self.gate = gate
        self.layer = adapted[0] if adapted else None
        if self.layer is None:
            self.handle = encoder.register_forward_hook(self._after_encoder)
        else:
            self.handle = encoder.layers[self.layer].register_forward_pre_hook(
                self._before_layer, with_kwargs=True
            )
        self._base_pass = False
        self.valid_fraction = None
        self.language = None
        self.weights = None
        self.logits = None

    def prepare(self, valid_fraction, language=None):
        """Sets what the next encoder pass needs, and routes base-only.

        Serves one forward: the pass consumes it, so a forward without a
        new ``prepare()`` is refused instead of reusing a past batch.
        ``weights`` and ``logits`` are those of the last pass.

        Arguments
        ---------
        valid_fraction : torch.Tensor
            ``[B]`` fraction of the encoder window holding audio.
        language : torch.LongTensor
            ``[B]`` known language index (language-aware gates).
        """
        valid_fraction = torch.as_tensor(valid_fraction)
        if valid_fraction.dim() != 1:
            raise ValueError(
                f"valid_fraction must be [B], got {tuple(valid_fraction.shape)}"
            )
        if self.gate.language_aware and language is None:
            raise ValueError("a language-aware gate needs language=")
        if language is not None and tuple(language.shape) != tuple(
            valid_fraction.shape
        ):
            raise ValueError(
                f"language {tuple(language.shape)} and valid_fraction "
                f"{tuple(valid_fraction.shape)} must both be [B]"
            )
        self.valid_fraction = valid_fraction
        self.language = language
        self.weights = None
        self.logits = None
        self.experts.off()

    def _route(self, hidden, base_pass=False):
        valid_fraction, language = self.valid_fraction, self.language
        if valid_fraction is None:
            raise RuntimeError(
                "call GateTap.prepare() before each forward of the encoder"
            )
        self.valid_fraction = self.language = None
        if valid_fraction.shape[0] != hidden.shape[0]:
            raise ValueError(
                f"GateTap.prepare() was given {valid_fraction.shape[0]} "
                f"utterances, the encoder got {hidden.shape[0]}"
            )
        valid_fraction = valid_fraction.to(hidden.device)
        if base_pass:
            hidden, valid_fraction = self._base_encoder_output(
                hidden, valid_fraction
            )
        prior = None
        if self.gate.features == "whisper_lid":
            prior = self._lid_prior(hidden)
        self.weights, self.logits = self.gate(
            hidden, valid_fraction, language, lid_prior=prior
        )
        self.experts.mix(self.weights)

    @torch.no_grad()
    def _lid_prior(self, enc_states):
        """Frozen Whisper's log-probabilities of the experts' languages."""
        from speechbrain_lora_experts.decoding import detect_language

        # The experts are off (prepare()): this is the base decoder.
        _, probs = detect_language(
            self.whisper, enc_states, candidates=self.experts.expert_names
        )
        return probs.clamp_min(1e-8).log()

    def _before_layer(self, module, args, kwargs):
        if self._base_pass:
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        self._route(hidden, base_pass=self.gate.features != "first_adapted")
        return None

    @torch.no_grad()
    def _base_encoder_output(self, hidden, valid_fraction):
        """The frozen encoder's output and each clip's share of it."""
        n_frames = hidden.shape[1]
        keep = audio_frames(
            n_frames, valid_fraction, self.gate.base_pass_bucket_s
        )
        # prepare() switched the experts off: these are the frozen layers.
        # The tapped layer runs again here; its hook must not re-enter.
        self._base_pass = True
        try:
            hidden = run_encoder_layers(
                self.encoder.layers[self.layer :], hidden[:, :keep]
            )
        finally:
            self._base_pass = False
        share = (valid_fraction * (n_frames / keep)).clamp(max=1.0)
        return self.encoder.layer_norm(hidden), share

    def _after_encoder(self, module, args, output):
        self._route(output.last_hidden_state)

    def route_encoder_output(self, enc):
        """Routes from an encoder output computed without ``forward``.

        For a tap on the encoder output (``layer`` is None) when the
        caller ran the encoder layers itself (the frozen-prefix cache).

        Arguments
        ---------
        enc : torch.Tensor
            ``[B, T, D]`` encoder output.
        """
        if self.layer is not None:
            raise RuntimeError(
                f"this tap routes before encoder layer {self.layer}, from "
                "its hook; it has no encoder-output step"
            )
        self._route(enc)

    def remove(self):
        """Detaches the hook."""
        self.handle.remove()
