"""Attach a pool of LoRA experts to SpeechBrain's (or HF's) Whisper.

``WhisperLoRAExperts`` freezes the base model with ``requires_grad_(False)``
(SpeechBrain's ``freeze=True`` runs the forward under ``no_grad``, which would
starve LoRA of gradients), swaps the targeted ``nn.Linear`` layers for
``LoRAExpertsLinear`` and keeps a handle on them. The handle is an
``nn.Module`` whose state dict holds only the adapter weights (and token
gates), so a SpeechBrain checkpointer saves megabytes, not the whole Whisper.

Layer names are those of ``transformers.WhisperModel``:
``{encoder,decoder}.layers.{i}.{self_attn,encoder_attn}.{q,k,v,out}_proj``,
``{encoder,decoder}.layers.{i}.{fc1,fc2}``.

Authors
 * speechbrain-lora-experts developers 2026
"""

import re

import torch
import torch.nn as nn

from speechbrain_lora_experts.experts import ExpertRouting, LoRAExpertsLinear

ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
_LAYER_NAME = re.compile(
    r"^(?P<part>encoder|decoder)\.layers\.(?P<layer>\d+)\."
    r"(?:(?P<attn>self_attn|encoder_attn)\.)?(?P<proj>[qkv]_proj|out_proj|fc1|fc2)$"
)


def whisper_model(model):
    """The ``transformers.WhisperModel`` inside ``model``.

    Accepts SpeechBrain's ``Whisper`` wrapper (``.model``), a
    ``WhisperForConditionalGeneration`` (``.model``), a ``WhisperModel``, or a
    DDP-wrapped one of these.

    Arguments
    ---------
    model : torch.nn.Module
        A Whisper in one of these wrappers.

    Returns
    -------
    transformers.WhisperModel
        The inner model.

    Example
    -------
    >>> from speechbrain_lora_experts.testing.tiny_whisper import (
    ...     tiny_whisper_model,
    ... )
    >>> model = tiny_whisper_model()
    >>> whisper_model(model) is model
    True
    """
    from transformers import WhisperModel

    for _ in range(4):
        if isinstance(model, WhisperModel):
            return model
        model = getattr(model, "module", None) or getattr(model, "model", None)
        if model is None:
            break
    raise TypeError(
        "could not find a transformers WhisperModel; pass SpeechBrain's "
        "Whisper, a WhisperForConditionalGeneration or a WhisperModel"
    )


def parse_layers(spec):
    """Layer selection: None (all), ``"0-3"``, ``"4,5"``, or a list of ints.

    Arguments
    ---------
    spec : None, int, str or list of int
        The selection.

    Returns
    -------
    list of int or None
        Sorted layer indices, None for all layers.

    Example
    -------
    >>> parse_layers("0-2,5")
    [0, 1, 2, 5]
    >>> parse_layers(None) is None
    True
    """
    if spec is None or spec == "all":
        return None
    if isinstance(spec, int):
        return [spec]
    if isinstance(spec, str):
        layers = []
        for chunk in spec.split(","):
            chunk = chunk.strip()
            if "-" in chunk:
                start, end = chunk.split("-")
                layers.extend(range(int(start), int(end) + 1))
            elif chunk:
                layers.append(int(chunk))
        return layers
    return [int(i) for i in spec]


def select_targets(
    model, targets=ALL_TARGETS, parts=("encoder", "decoder"), layers=None
):
    """Names of the linear layers to adapt, in module order.

    Arguments
    ---------
    model : transformers.WhisperModel
        The model to search.
    targets : list of str
        Projection names (``q_proj``, ``fc1``, ...), optionally qualified by
        the attention block (``encoder_attn.q_proj``) or the part
        (``decoder.fc1``).
    parts : list of str
        ``encoder`` and/or ``decoder``.
    layers : None, str, list or dict
        Layer indices (see ``parse_layers``), or a dict per part
        (``{"encoder": "4-5", "decoder": None}``).

    Returns
    -------
    list of str
        Names of the matching ``nn.Linear`` layers, in module order.

    Example
    -------
    >>> from speechbrain_lora_experts.testing.tiny_whisper import (
    ...     tiny_whisper_model,
    ... )
    >>> model = tiny_whisper_model(encoder_layers=2)
    >>> select_targets(model, ["q_proj"], parts="encoder", layers="1")
    ['encoder.layers.1.self_attn.q_proj']
    >>> select_targets(
    ...     model,
    ...     ["encoder_attn.q_proj", "encoder.fc1"],
    ...     layers={"encoder": "0", "decoder": None},
    ... )
    ['encoder.layers.0.fc1', 'decoder.layers.0.encoder_attn.q_proj']
    >>> select_targets(model, ["query"])
    Traceback (most recent call last):
    ...
    ValueError: no Whisper layer matches targets=['query'], ...
    """
    parts = [parts] if isinstance(parts, str) else list(parts)
    for part in parts:
        if part not in ("encoder", "decoder"):
            raise ValueError(f"unknown part {part!r}: use encoder/decoder")
    layer_sets = {
        part: parse_layers(
            layers.get(part) if isinstance(layers, dict) else layers
        )
        for part in parts
    }
    names = []
    for name, module in model.named_modules():
        match = _LAYER_NAME.match(name)
        if match is None or not isinstance(module, nn.Linear):
            continue
        part, proj = match["part"], match["proj"]
        if part not in parts:
            continue
        chosen = layer_sets[part]
        if chosen is not None and int(match["layer"]) not in chosen:
            continue
        qualified = {proj, f"{match['attn']}.{proj}", f"{part}.{proj}"}
        qualified.add(f"{part}.{match['attn']}.{proj}")
        if qualified & set(targets):
            names.append(name)
    if not names:
        raise ValueError(
            f"no Whisper layer matches targets={list(targets)}, "
            f"parts={parts}, layers={layers}; valid targets: {ALL_TARGETS}"
        )
    return names


class WhisperLoRAExperts(nn.Module):
    """A pool of LoRA experts attached to a frozen Whisper.

    Arguments
    ---------
    whisper : torch.nn.Module
        SpeechBrain's ``Whisper`` (or an HF Whisper model). Modified in place.
    n_experts : int
        Number of experts (ignored when ``expert_names`` is given).
    rank, alpha, dropout, use_rslora
        LoRA hyperparameters, as in PEFT.
    targets, parts, layers
        Which linear layers get experts (see ``select_targets``).
    expert_names : list of str
        Optional names (usually language codes) for the experts.
    freeze_base : bool
        Freeze every base parameter (default). The experts stay trainable
        until ``set_trainable`` says otherwise.
    layer_names : list of str
        Exact layer names to adapt (overrides targets/parts/layers); used to
        mirror the layers of existing adapters.

    Example
    -------
    >>> from speechbrain_lora_experts.testing.tiny_whisper import (
    ...     tiny_whisper_model,
    ... )
    >>> hf = tiny_whisper_model(d_model=16, ffn_dim=32, vocab_size=100)
    >>> experts = WhisperLoRAExperts(
    ...     hf,
    ...     expert_names=["de", "es"],
    ...     rank=4,
    ...     targets=["q_proj", "v_proj"],
    ...     parts=["decoder"],
    ... )
    >>> len(experts.layers)
    4
    >>> experts.index_of("es")
    1
    """

    def __init__(
        self,
        whisper,
        n_experts=1,
        rank=16,
        alpha=32,
        dropout=0.0,
        targets=("q_proj", "v_proj", "fc1", "fc2"),
        parts=("encoder", "decoder"),
        layers=None,
        expert_names=None,
        use_rslora=False,
        freeze_base=True,
        layer_names=None,
    ):
        super().__init__()
        model = whisper_model(whisper)
        if expert_names is not None:
            expert_names = [str(n) for n in expert_names]
            if len(set(expert_names)) != len(expert_names):
                raise ValueError(f"duplicate expert names: {expert_names}")
            n_experts = len(expert_names)
        else:
            expert_names = [str(i) for i in range(n_experts)]
        self.expert_names = expert_names
        self.config = dict(
            rank=rank,
            alpha=alpha,
            dropout=dropout,
            targets=list(targets),
            parts=[parts] if isinstance(parts, str) else list(parts),
            layers=layers,
            use_rslora=use_rslora,
        )
        if freeze_base:
            model.requires_grad_(False)
        self.routing = ExpertRouting(n_experts=n_experts)
        # Not a registered submodule: the checkpoint keeps adapters only.
        object.__setattr__(self, "_model", model)
        self.layers = {}
        adapters = {}
        if layer_names is None:
            layer_names = select_targets(model, targets, parts, layers)
        else:
            # Module order whatever order the names come in (adapter files
            # list them sorted): one layout, parameter order and export
            # form for a pool attached by targets or rebuilt from files.
            given = set(layer_names)
            order = [n for n, _ in model.named_modules() if n in given]
            layer_names = order + [n for n in layer_names if n not in order]
        for name in layer_names:
            try:
                parent, attr = _parent(model, name)
                base = getattr(parent, attr)
            except AttributeError:
                raise ValueError(
                    f"layer {name!r} does not exist in this Whisper "
                    f"({model.config.encoder_layers} encoder and "
                    f"{model.config.decoder_layers} decoder layers)"
                ) from None
            layer = LoRAExpertsLinear(
                base,
                n_experts,
                rank,
                alpha,
                dropout=dropout,
                routing=self.routing,
                use_rslora=use_rslora,
            )
            setattr(parent, attr, layer)
            self.layers[name] = layer
            adapters[_safe(name)] = layer.experts
        self.adapters = nn.ModuleDict(adapters)
        self.token_gates = nn.ModuleDict()

    @property
    def model(self):
        """The adapted ``transformers.WhisperModel``.

        Returns
        -------
        transformers.WhisperModel
            The model.
        """
        return self._model

    @property
    def n_experts(self):
        """Number of experts in the pool.

        Returns
        -------
        int
            The number.
        """
        return len(self.expert_names)

    def train(self, mode=True):
        """Switches train/eval mode and drops the inference caches.

        Arguments
        ---------
        mode : bool
            Training mode.

        Returns
        -------
        WhisperLoRAExperts
            Itself.
        """
        self.routing.release()
        return super().train(mode)

    def index_of(self, name):
        """Index of the expert called ``name``.

        Arguments
        ---------
        name : str
            An expert name.

        Returns
        -------
        int
            Its index.
        """
        try:
            return self.expert_names.index(str(name))
        except ValueError:
            raise KeyError(
                f"no expert named {name!r}; experts: {self.expert_names}"
            ) from None

    # Routing ----------------------------------------------------------------
    def scope(self, route=None, mix=None, token=False):
        """Routing for one call, restored after it (see ``ExpertRouting``).

        Holds the pool's lock for the ``with`` block: threads sharing the
        model take turns. At most one of the arguments; none: base only.

        Arguments
        ---------
        route : int, str, list or torch.LongTensor
            Per-utterance experts ``[B]`` (-1: base only) or one for the
            batch, by index or name.
        mix : torch.Tensor
            Per-utterance mixing weights ``[B, N]``.
        token : bool
            Let every layer's token-level gate mix the experts.

        Returns
        -------
        context manager

        Example
        -------
        >>> from speechbrain_lora_experts.testing.tiny_whisper import (
        ...     tiny_whisper_model,
        ... )
        >>> hf = tiny_whisper_model(d_model=16, ffn_dim=32, vocab_size=100)
        >>> experts = WhisperLoRAExperts(hf, expert_names=["de", "es"])
        >>> with experts.scope(route=["es", "de"]):
        ...     experts.routing.index.tolist()
        [1, 0]
        >>> experts.routing.mode
        'off'
        """
        if route is not None or mix is not None or token:
            self._check_not_merged()
        if route is not None:
            route = self._route_index(route)
        if token and not self.token_gates:
            raise RuntimeError("call add_token_gates() first")
        return self.routing.scope(route=route, mix=mix, token=token)

    def _route_index(self, route):
        """Expert names (one, or one per utterance) as indices."""
        if isinstance(route, str):
            return self.index_of(route)
        if isinstance(route, (list, tuple)):
            return torch.tensor(
                [
                    self.index_of(r) if isinstance(r, str) else int(r)
                    for r in route
                ],
                dtype=torch.long,
            )
        return route

    def route(self, index):
        """Per-utterance expert ``[B]`` (-1: base only), or one for all.

        Prefer ``scope(route=...)``, which restores the routing after use.

        Arguments
        ---------
        index : int or torch.Tensor
            One expert for the whole batch, or ``[B]`` per utterance.
        """
        self._check_not_merged()
        self.routing.route(self._route_index(index))

    def mix(self, weights):
        """Per-utterance mixing weights ``[B, N]``.

        Arguments
        ---------
        weights : torch.Tensor
            ``[B, N]`` weights (rows usually sum to 1).
        """
        self._check_not_merged()
        self.routing.mix(weights)

    def off(self):
        """Run the base model only."""
        self.routing.off()

    def use_token_gates(self):
        """Let every layer's token-level gate mix the experts."""
        if not self.token_gates:
            raise RuntimeError("call add_token_gates() first")
        self._check_not_merged()
        self.routing.token_gate()

    def add_token_gates(self, temperature=1.0):
        """Adds a trainable token-level gate to every adapted layer.

        Arguments
        ---------
        temperature : float
            Softmax temperature of the gates.
        """
        for name, layer in self.layers.items():
            layer.add_token_gate(temperature)
            self.token_gates[_safe(name)] = layer.token_gate

    # Parameters -------------------------------------------------------------
    def expert_parameters(self, expert):
        """Parameters of one expert (index or name) across all layers.

        Arguments
        ---------
        expert : int or str
            Index or name of the expert.

        Returns
        -------
        list of torch.nn.Parameter
            Its ``lora_A`` and ``lora_B`` of every layer.
        """
        index = self._index(expert)
        return [
            p
            for layer in self.layers.values()
            for p in layer.experts[index].parameters()
        ]

    def set_trainable(self, experts=(), token_gates=False):
        """Makes only the given experts (and optionally token gates) train.

        Arguments
        ---------
        experts : iterable of int or str
            The experts that train; the others are frozen.
        token_gates : bool
            Whether the token gates train.
        """
        chosen = {self._index(e) for e in experts}
        for layer in self.layers.values():
            for i, expert in enumerate(layer.experts):
                expert.requires_grad_(i in chosen)
        self.token_gates.requires_grad_(token_gates)

    def parameter_report(self):
        """Counts of base, per-expert and trainable parameters.

        Returns
        -------
        dict
            ``base``, ``per_expert`` (list), ``token_gates``, ``trainable``,
            ``trainable_percent`` (of the base model).
        """
        base = sum(p.numel() for p in self._model.parameters())
        base -= sum(p.numel() for p in self.parameters())
        per_expert = [
            sum(p.numel() for p in self.expert_parameters(i))
            for i in range(self.n_experts)
        ]
        trainable = sum(
            p.numel() for p in self._model.parameters() if p.requires_grad
        )
        return dict(
            base=base,
            per_expert=per_expert,
            token_gates=sum(p.numel() for p in self.token_gates.parameters()),
            trainable=trainable,
            trainable_percent=100.0 * trainable / max(base, 1),
        )

    # Merging ------------------------------------------------------------------
    def merge(self, expert=None, weights=None, keep_backup=False):
        """Merges one expert (or a fixed mix ``weights [N]``) into Whisper.

        No copy of the weights is kept unless ``keep_backup`` (see
        ``LoRAExpertsLinear.merge``).

        Arguments
        ---------
        expert : int or str, optional
            The expert to merge.
        weights : torch.Tensor, optional
            ``[N]`` fixed mix instead of one expert.
        keep_backup : bool
            Keep a copy of the base weights (exact unmerge).
        """
        if expert is not None:
            expert = self._index(expert)
        # Not while another thread decodes with the experts.
        with self.routing.lock:
            self._check_can_merge()
            for layer in self.layers.values():
                layer.merge(
                    expert=expert, weights=weights, keep_backup=keep_backup
                )
            self.routing.off()
            self._swap_wrappers(merged=True)

    def merge_static(self, method="linear", **kwargs):
        """Merges all experts into Whisper without training.

        Arguments
        ---------
        method : str
            ``linear`` (uniform average, or ``weights=[...]``) or ``ties``
            (``density=``, ``scale=``); see ``merging.py``.
        **kwargs
            Passed to the merge function.
        """
        from speechbrain_lora_experts.merging import MERGES

        if method not in MERGES:
            raise ValueError(f"method must be one of {sorted(MERGES)}")
        with self.routing.lock:
            self._check_can_merge()
            for layer in self.layers.values():
                layer.merge_combined(MERGES[method], **kwargs)
            self.routing.off()
            self._swap_wrappers(merged=True)

    def unmerge(self):
        """Takes the merged update back out of the base weights."""
        with self.routing.lock:
            for layer in self.layers.values():
                layer.unmerge()
            self._swap_wrappers(merged=False)

    def _check_can_merge(self):
        if self.merged:
            raise RuntimeError("already merged; call unmerge() first")
        if self.routing.caching:
            raise RuntimeError(
                "cannot merge inside a routing scope: the scope's layers "
                "would be swapped out under it"
            )

    def _swap_wrappers(self, merged):
        """Puts each plain ``nn.Linear`` (merged) or its wrapper in Whisper.

        A merged model needs no wrapper: swapping it out removes the last
        per-layer Python overhead, so merged decoding costs what plain
        Whisper costs. The wrappers stay in ``self.layers`` for unmerge.
        """
        for name, layer in self.layers.items():
            parent, attr = _parent(self._model, name)
            setattr(parent, attr, layer.base if merged else layer)

    def _check_not_merged(self):
        if self.merged:
            raise RuntimeError(
                "an expert is merged into the weights; call unmerge() "
                "before routing or mixing experts"
            )

    @property
    def merged(self):
        """Whether an expert is merged into the weights.

        Returns
        -------
        bool
            The state.
        """
        return any(layer.merged for layer in self.layers.values())

    def _index(self, expert):
        if isinstance(expert, str):
            return self.index_of(expert)
        if not 0 <= int(expert) < self.n_experts:
            raise IndexError(
                f"expert {expert} out of range for {self.n_experts} experts"
            )
        return int(expert)


def _parent(model, name):
    """The module holding submodule ``name``, and its attribute name."""
    parent_name, _, attr = name.rpartition(".")
    return model.get_submodule(parent_name), attr


def _safe(name):
    # ModuleDict keys cannot contain dots.
    return name.replace(".", "__")
