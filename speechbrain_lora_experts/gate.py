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

import torch
import torch.nn as nn

GATE_FEATURES = ("whisper_lid", "base_encoder", "first_adapted")


def valid_frame_mask(n_frames, valid_fraction):
    """``[B, n_frames]`` mask of frames that hold audio.

    Arguments
    ---------
    n_frames : int
        Encoder frames of the (padded) window.
    valid_fraction : torch.Tensor
        ``[B]`` fraction of the window covered by each utterance.

    Example
    -------
    >>> valid_frame_mask(4, torch.tensor([0.5, 1.0])).int().tolist()
    [[1, 1, 0, 0], [1, 1, 1, 1]]
    """
    frames = (valid_fraction.clamp(0, 1) * n_frames).ceil().clamp(min=1)
    positions = torch.arange(n_frames, device=valid_fraction.device)
    return positions.unsqueeze(0) < frames.unsqueeze(1)


def masked_stats_pool(features, mask):
    """Mean and standard deviation over valid frames, ``[B, 2 * D]``."""
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
        makes fused decoding cost one LoRA.
    language_aware : bool
        Condition on the known language (``forward(..., language=...)``).
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
        dropout=0.1,
        features="whisper_lid",
    ):
        super().__init__()
        if features not in GATE_FEATURES:
            raise ValueError(
                f"gate features must be one of {GATE_FEATURES}, got "
                f"{features!r}"
            )
        self.features = features
        self.n_experts = n_experts
        self.temperature = temperature
        self.top_k = top_k
        self.norm = nn.LayerNorm(2 * input_size)
        self.hidden = nn.Linear(2 * input_size, hidden_size)
        self.language_embedding = (
            nn.Embedding(n_experts, hidden_size) if language_aware else None
        )
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(hidden_size, n_experts)
        self.lid_scale = None
        if features == "whisper_lid":
            # Starts as Whisper's LID; training learns what to add.
            self.lid_scale = nn.Parameter(torch.ones(()))
            nn.init.zeros_(self.output.weight)
            nn.init.zeros_(self.output.bias)

    @classmethod
    def for_whisper(cls, whisper, n_experts, **kwargs):
        """A gate sized for ``whisper``'s hidden size (for HyperPyYAML)."""
        from speechbrain_lora_experts.attach import whisper_model

        size = whisper_model(whisper).config.d_model
        return cls(size, n_experts, **kwargs)

    @property
    def language_aware(self):
        """Whether the gate is told the language."""
        return self.language_embedding is not None

    @property
    def uses_lid_prior(self):
        """Whether the logits add Whisper's language identification."""
        return self.lid_scale is not None

    def logits(self, features, valid_fraction, language=None, lid_prior=None):
        """Expert/language logits ``[B, N]``."""
        mask = valid_frame_mask(features.shape[1], valid_fraction)
        pooled = self.norm(masked_stats_pool(features, mask))
        hidden = self.hidden(pooled)
        if self.language_aware:
            if language is None:
                raise ValueError("a language-aware gate needs language=")
            hidden = hidden + self.language_embedding(language)
        logits = self.output(self.dropout(torch.relu(hidden)))
        if self.uses_lid_prior:
            if lid_prior is None:
                raise ValueError(
                    "a whisper_lid gate needs lid_prior= (Whisper's language "
                    "log-probabilities over the experts' languages)"
                )
            logits = logits + self.lid_scale * lid_prior.to(logits.dtype)
        return logits

    def weights_from_logits(self, logits):
        """Softmax with temperature, then optional top-k renormalisation."""
        weights = torch.softmax(logits / self.temperature, dim=-1)
        if self.top_k is not None and self.top_k < self.n_experts:
            top = weights.topk(self.top_k, dim=-1)
            sparse = torch.zeros_like(weights).scatter(
                -1, top.indices, top.values
            )
            weights = sparse / sparse.sum(dim=-1, keepdim=True)
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
    languages (the expert names). When the experts adapt no encoder layer,
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

        Arguments
        ---------
        valid_fraction : torch.Tensor
            ``[B]`` fraction of the encoder window holding audio.
        language : torch.LongTensor
            ``[B]`` known language index (language-aware gates).
        """
        self.valid_fraction = valid_fraction
        self.language = language
        self.experts.off()

    def _route(self, hidden):
        if self.valid_fraction is None:
            raise RuntimeError("call GateTap.prepare() before the forward")
        prior = None
        if self.gate.features == "whisper_lid":
            prior = self._lid_prior(hidden)
        self.weights, self.logits = self.gate(
            hidden,
            self.valid_fraction.to(hidden.device),
            self.language,
            lid_prior=prior,
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
        if self.gate.features != "first_adapted":
            hidden = self._base_encoder_output(hidden)
        self._route(hidden)
        return None

    @torch.no_grad()
    def _base_encoder_output(self, hidden):
        # prepare() switched the experts off: these are the frozen layers.
        # The tapped layer runs again here; its hook must not re-enter.
        self._base_pass = True
        try:
            for layer in self.encoder.layers[self.layer :]:
                out = layer(hidden, attention_mask=None)
                hidden = out[0] if isinstance(out, tuple) else out
        finally:
            self._base_pass = False
        return self.encoder.layer_norm(hidden)

    def _after_encoder(self, module, args, output):
        self._route(output.last_hidden_state)

    def remove(self):
        """Detaches the hook."""
        self.handle.remove()
