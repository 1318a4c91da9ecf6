"""A linear layer carrying a pool of LoRA experts.

``LoRAExpertsLinear`` wraps one frozen ``nn.Linear`` with N low-rank experts
(``delta_n = s_n * B_n @ A_n``, B initialised to zero as in LoRA). What the
layer adds to the base output is decided per batch by an ``ExpertRouting``
object shared by every layer of a model, so one call sets the behaviour of the
whole network:

* ``route(index)``: one expert per utterance (``-1`` = base only), a mixed
  language batch in one pass; costs one LoRA whatever N is;
* ``mix(weights)``: a weighted sum of experts per utterance ``[B, N]`` (the
  fusion gate), computed as one rank ``N*r`` LoRA on the experts that carry
  any weight in the batch;
* ``token_gate()``: each layer mixes with weights from its own token-level
  gate ``[B, T, N]``;
* ``off()``: base only.

``routing.scope(route=..., mix=..., token=...)`` sets one of these for a
``with`` block and restores the previous routing after it, also on errors,
holding a lock so threads sharing a model take turns. The layers keep no
state derived from their weights: what inference reuses between calls lives
in the scope and goes with it.

A fixed expert or weighted mix can also be merged into the base weight
(zero inference overhead) and unmerged by subtracting the same update (no
weight copy is kept unless asked). The math knows nothing of Whisper,
SpeechBrain or file formats.

Authors
 * speechbrain-lora-experts developers 2026
"""

import contextlib
import math
import threading

import torch
import torch.nn as nn
from torch.optim.optimizer import register_optimizer_step_post_hook

BASE_ONLY = -1

# Optimizer steps taken in this process. Some writes leave a parameter's
# version counter untouched (``AdamW(fused=True)``, verified on torch 2.11),
# so the inference caches also key on this count.
_OPTIMIZER_STEPS = [0]


def _count_optimizer_step(optimizer, args, kwargs):
    _OPTIMIZER_STEPS[0] += 1


register_optimizer_step_post_hook(_count_optimizer_step)


class ExpertRouting:
    """Per-batch instructions shared by all ``LoRAExpertsLinear`` layers.

    A batch dimension that differs from the layer input's is inflated with
    ``repeat_interleave`` (beam search keeps each utterance's hypotheses
    contiguous, as SpeechBrain's ``inflate_tensor`` does).

    ``scope()`` sets a routing for one call and always restores the previous
    one, also on exceptions; it holds a per-routing lock for the whole
    block, so threads sharing one model take turns instead of decoding with
    each other's experts. Tensors derived from the weights (stacked experts,
    folded weights) are cached only inside a scope and dropped when it ends,
    when the routing changes, and by ``release()``.

    Arguments
    ---------
    n_experts : int
        Pool size, to refuse out-of-range routing; None: not checked here
        (the layers set it when they attach).

    Example
    -------
    >>> routing = ExpertRouting(n_experts=2)
    >>> with routing.scope(route=torch.tensor([0, 1, -1])):
    ...     routing.mode
    'route'
    >>> routing.mode
    'off'
    >>> routing.route(2)
    Traceback (most recent call last):
    ...
    IndexError: expert index 2 out of range for 2 experts (-1: base only)
    """

    def __init__(self, n_experts=None):
        self.n_experts = n_experts
        self._lock = threading.RLock()
        self._scopes = 0
        self.generation = 0
        self._set("off")

    def _set(self, mode, index=None, weights=None, uniform=None):
        self.mode = mode
        self.index = index
        self.weights = weights
        self.uniform = uniform
        # Every adapted layer asks for the same inflated, device-placed
        # routing tensors; computing them once per batch keeps a host to
        # device copy (and a sync) out of each of the model's LoRA layers.
        self._per_batch = {}
        # Tensors derived from the weights, kept only inside a scope.
        self._cache = {}
        self.generation += 1

    @property
    def lock(self):
        """The ``threading.RLock`` a scope holds (merging takes it too).

        Returns
        -------
        threading.RLock
            The lock.
        """
        return self._lock

    @property
    def caching(self):
        """Whether layers may keep tensors derived from their weights.

        Returns
        -------
        bool
            The state.
        """
        return self._scopes > 0

    def release(self):
        """Drops every cached tensor derived from the weights."""
        self._cache = {}

    def cached(self, key, version, build):
        """``build()``, reused while ``version`` is unchanged in a scope.

        Arguments
        ---------
        key : hashable
            What is cached (e.g. the layer and the kind of tensor).
        version : hashable
            Everything the result depends on; a new value rebuilds it.
        build : callable
            Makes the tensor(s).

        Returns
        -------
        The result of ``build()``.
        """
        if not self.caching:
            return build()
        cache = self._cache
        entry = cache.get(key)
        if entry is None or entry[0] != version:
            entry = (version, build())
            cache[key] = entry
        return entry[1]

    @contextlib.contextmanager
    def scope(self, route=None, mix=None, token=False):
        """Routing for the ``with`` block, restored after it.

        At most one of the arguments; none means base only. Inside the
        block ``route``/``mix``/``off`` may change the routing (e.g. a gate
        that decides inside the encoder); the state before the block comes
        back at its end, also when it raises. The lock is held throughout.

        Arguments
        ---------
        route : torch.LongTensor or int
            As ``route()``.
        mix : torch.Tensor
            As ``mix()``.
        token : bool
            As ``token_gate()``.

        Yields
        ------
        ExpertRouting
            self
        """
        given = (route is not None) + (mix is not None) + bool(token)
        if given > 1:
            raise ValueError("give at most one of route=, mix=, token=")
        with self._lock:
            saved = (self.mode, self.index, self.weights, self.uniform)
            self._scopes += 1
            try:
                if route is not None:
                    self.route(route)
                elif mix is not None:
                    self.mix(mix)
                elif token:
                    self.token_gate()
                else:
                    self.off()
                yield self
            finally:
                self._scopes -= 1
                self._set(*saved)

    def off(self):
        """Base model only."""
        with self._lock:
            self._set("off")

    def route(self, index):
        """Routes utterance ``b`` through expert ``index[b]`` (-1: none).

        Arguments
        ---------
        index : torch.LongTensor or int
            Shape ``[B]``, or one int for the whole batch.
        """
        if isinstance(index, torch.Tensor) and index.dim() == 0:
            index = index.item()
        if isinstance(index, bool) or (
            isinstance(index, float) and not index.is_integer()
        ):
            raise TypeError(f"expert index must be an int, got {index!r}")
        if isinstance(index, (int, float)):
            index = int(index)
            self._check_range(index, index)
            with self._lock:
                self._set("route", uniform=index)
            return
        index = torch.as_tensor(index)
        if index.dtype.is_floating_point or index.dtype == torch.bool:
            raise TypeError(
                f"routing index must hold integers, got {index.dtype}"
            )
        if index.dim() != 1 or index.numel() == 0:
            raise ValueError(
                f"routing index must be [B] with B >= 1, got "
                f"{tuple(index.shape)}"
            )
        index = index.long()
        # One host sync per batch (not per layer) for the checks and the
        # all-same test.
        low, high, first, same = torch.stack(
            [
                index.min(),
                index.max(),
                index[0],
                (index == index[0]).all().long(),
            ]
        ).tolist()
        self._check_range(low, high)
        with self._lock:
            # One int makes the common all-same batch a plain LoRA matmul.
            self._set(
                "route", index=index, uniform=int(first) if same else None
            )

    def _check_range(self, low, high):
        n = self.n_experts
        if low < BASE_ONLY or (n is not None and high >= n):
            bad = low if low < BASE_ONLY else high
            limit = "" if n is None else f" for {n} experts"
            raise IndexError(
                f"expert index {bad} out of range{limit} (-1: base only)"
            )

    def mix(self, weights):
        """Mixes experts with weights ``[B, N]`` (per utterance).

        Arguments
        ---------
        weights : torch.Tensor
            Non-negative mixing weights, usually a softmax over experts.
        """
        if not isinstance(weights, torch.Tensor):
            raise TypeError(
                f"mix weights must be a tensor, got {type(weights).__name__}"
            )
        if not weights.dtype.is_floating_point:
            raise TypeError(
                f"mix weights must be floating point, got {weights.dtype}"
            )
        n = self.n_experts
        if (
            weights.dim() != 2
            or weights.shape[0] == 0
            or (n is not None and weights.shape[1] != n)
        ):
            expected = "[B, N]" if n is None else f"[B, {n}]"
            raise ValueError(
                f"mix weights must be {expected} with B >= 1, got "
                f"{tuple(weights.shape)}"
            )
        with self._lock:
            self._set("mix", weights=weights)

    def token_gate(self):
        """Every layer mixes experts with its own token-level gate."""
        with self._lock:
            self._set("token")

    def shared_update(self):
        """What every utterance of the batch gets, when they all get the same.

        Returns
        -------
        tuple or None
            ``("base",)``, ``("expert", n)`` or ``("weights", w [N],
            experts with weight)`` when the routing is the same for the
            whole batch; None otherwise (per-utterance routing, per-token
            gates). Computed once per routing change.
        """
        per_batch = self._per_batch
        if "shared" not in per_batch:
            per_batch["shared"] = self._shared_update()
        return per_batch["shared"]

    def _shared_update(self):
        if self.mode == "off":
            return ("base",)
        if self.mode == "route" and self.uniform is not None:
            if self.uniform == BASE_ONLY:
                return ("base",)
            return ("expert", self.uniform)
        if self.mode == "mix":
            weights = self.weights.detach()
            if weights.shape[0] == 1 or bool((weights == weights[:1]).all()):
                used = tuple(weights[0].nonzero().flatten().tolist())
                return ("weights", weights[0], used)
        return None

    def active_experts(self, device):
        """Indices of the experts with weight anywhere in the mix, or None.

        None means all of them. Found once per routing (one host sync per
        batch, not one per layer).

        Arguments
        ---------
        device : torch.device
            Where the indices are wanted.

        Returns
        -------
        torch.Tensor or None
            The indices, None when every expert may be used.
        """
        per_batch = self._per_batch
        key = ("active", device)
        if key not in per_batch:
            if "active" not in per_batch:
                used = (self.weights.detach() != 0).any(dim=0).cpu()
                # A straight-through top-k gate's zero weights still carry
                # a gradient, which needs every expert's output.
                dense = self.weights.requires_grad or bool(used.all())
                per_batch["active"] = (
                    None if dense else used.nonzero().flatten()
                )
            active = per_batch["active"]
            per_batch[key] = None if active is None else active.to(device)
        return per_batch[key]

    def index_for(self, batch, device):
        """The per-utterance expert index inflated to ``batch`` rows.

        Arguments
        ---------
        batch : int
            Rows of the input (utterances, or beams x utterances).
        device : torch.device
            Where the index is wanted.

        Returns
        -------
        torch.Tensor
            ``[batch]`` expert indices.
        """
        key = ("index", batch, device)
        if key not in self._per_batch:
            self._per_batch[key] = _inflate(self.index, batch).to(device)
        return self._per_batch[key]

    def weights_for(self, batch, device=None, dtype=None):
        """The ``[batch, N]`` mixing weights inflated to ``batch`` rows.

        Arguments
        ---------
        batch : int
            Rows of the input (utterances, or beams x utterances).
        device : torch.device
            Where the weights are wanted.
        dtype : torch.dtype
            Their type.

        Returns
        -------
        torch.Tensor
            ``[batch, N]`` weights.
        """
        key = ("weights", batch, device, dtype)
        if key not in self._per_batch:
            self._per_batch[key] = _inflate(self.weights, batch).to(
                device=device, dtype=dtype
            )
        return self._per_batch[key]


def _inflate(tensor, batch):
    if tensor.shape[0] == batch:
        return tensor
    if batch % tensor.shape[0]:
        raise RuntimeError(
            f"routing was set for {tensor.shape[0]} utterances but the layer "
            f"received a batch of {batch}; call routing.route/mix with the "
            "current batch before the forward pass"
        )
    return tensor.repeat_interleave(batch // tensor.shape[0], dim=0)


def lora_scaling(alpha, rank, use_rslora=False):
    """PEFT's LoRA multiplier of ``B @ A``.

    Arguments
    ---------
    alpha : float
        LoRA alpha.
    rank : int
        LoRA rank.
    use_rslora : bool
        Rank-stabilised scaling (``alpha / sqrt(rank)``).

    Returns
    -------
    float
        ``alpha / rank``, or ``alpha / sqrt(rank)`` with rsLoRA.

    Example
    -------
    >>> lora_scaling(32, 16), lora_scaling(32, 16, use_rslora=True)
    (2.0, 8.0)
    """
    return alpha / (math.sqrt(rank) if use_rslora else rank)


class LoRAExpert(nn.Module):
    """One low-rank update ``scaling * B @ A`` of a linear layer.

    Arguments
    ---------
    in_features, out_features : int
        Shape of the adapted linear layer.
    rank : int
        LoRA rank r.
    alpha : float
        LoRA alpha; ``scaling = alpha / r`` (``alpha / sqrt(r)`` with
        ``use_rslora``), as in PEFT.
    use_rslora : bool
        Rank-stabilised scaling.

    Example
    -------
    >>> expert = LoRAExpert(8, 4, rank=2, alpha=4)
    >>> expert.delta_weight().abs().sum().item()  # B starts at zero
    0.0
    """

    def __init__(
        self, in_features, out_features, rank, alpha, use_rslora=False
    ):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.rank = rank
        self.alpha = alpha
        self.use_rslora = use_rslora
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        # PEFT's default initialisation, so both start from the same place.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    @property
    def scaling(self):
        """Multiplier of ``B @ A``.

        Returns
        -------
        float
            ``alpha / rank`` (``alpha / sqrt(rank)`` with rsLoRA).
        """
        return lora_scaling(self.alpha, self.rank, self.use_rslora)

    def delta_weight(self):
        """The dense update ``[out, in]`` this expert adds to the weight.

        Returns
        -------
        torch.Tensor
            ``[out, in]``.
        """
        return self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, x):
        """Low-rank update of ``x`` (without the base output).

        Arguments
        ---------
        x : torch.Tensor
            ``[..., in]`` input.

        Returns
        -------
        torch.Tensor
            ``[..., out]`` update.
        """
        return (x @ self.lora_A.t()) @ self.lora_B.t() * self.scaling


class LoRAExpertsLinear(nn.Module):
    """An ``nn.Linear`` with N LoRA experts, steered by ``ExpertRouting``.

    The layer keeps no state derived from its weights: what inference
    reuses across calls (the stacked experts, the weight with a batch-wide
    update folded in) lives in the routing's scope and goes with it.

    Arguments
    ---------
    base : torch.nn.Linear
        The layer to adapt. Its parameters are frozen.
    n_experts : int
        Number of experts.
    rank : int or list of int
        LoRA rank (one per expert allowed: they are zero-padded to the
        largest rank when stacked, which is exact).
    alpha : float or list of float
        LoRA alpha per expert.
    dropout : float
        Dropout on the LoRA input (training only), as in PEFT.
    routing : ExpertRouting
        The shared routing object; a private one is made if None.
    use_rslora : bool
        Rank-stabilised scaling.

    Example
    -------
    >>> routing = ExpertRouting()
    >>> layer = LoRAExpertsLinear(nn.Linear(8, 4), 3, 2, 4, routing=routing)
    >>> _ = [nn.init.normal_(e.lora_B) for e in layer.experts]
    >>> x = torch.randn(2, 5, 8)
    >>> with routing.scope(route=torch.tensor([2, -1])):
    ...     y = layer(x)
    >>> torch.allclose(y[1], layer.base(x[1]))
    True
    >>> torch.allclose(y[0], layer.base(x[0]) + layer.experts[2](x[0]))
    True
    """

    def __init__(
        self,
        base,
        n_experts,
        rank,
        alpha,
        dropout=0.0,
        routing=None,
        use_rslora=False,
    ):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"expected nn.Linear, got {type(base).__name__}")
        if n_experts < 1:
            raise ValueError(f"need at least one expert, got {n_experts}")
        self.base = base
        self.base.requires_grad_(False)
        ranks = _per_expert(rank, n_experts, "rank")
        alphas = _per_expert(alpha, n_experts, "alpha")
        self.experts = nn.ModuleList(
            LoRAExpert(
                base.in_features, base.out_features, r, a, use_rslora
            ).to(device=base.weight.device, dtype=base.weight.dtype)
            for r, a in zip(ranks, alphas)
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.routing = routing if routing is not None else ExpertRouting()
        if self.routing.n_experts is None:
            self.routing.n_experts = n_experts
        elif self.routing.n_experts != n_experts:
            raise ValueError(
                f"this routing steers pools of {self.routing.n_experts} "
                f"experts, not {n_experts}"
            )
        self.token_gate = None
        self.token_gate_temperature = 1.0
        # How to take a merged update back out: (weight backup or None,
        # a function recomputing the exact update added).
        self._merged = None

    @property
    def in_features(self):
        """Input size of the base layer.

        Returns
        -------
        int
            The size.
        """
        return self.base.in_features

    @property
    def out_features(self):
        """Output size of the base layer.

        Returns
        -------
        int
            The size.
        """
        return self.base.out_features

    @property
    def n_experts(self):
        """Number of experts in the pool.

        Returns
        -------
        int
            The number.
        """
        return len(self.experts)

    @property
    def merged(self):
        """Whether an expert update currently lives inside the base weight.

        Returns
        -------
        bool
            The state.
        """
        return self._merged is not None

    def train(self, mode=True):
        """Switches train/eval mode and drops the inference caches.

        Arguments
        ---------
        mode : bool
            Training mode.

        Returns
        -------
        LoRAExpertsLinear
            Itself.
        """
        self.routing.release()
        return super().train(mode)

    def add_token_gate(self, temperature=1.0):
        """Adds a trainable token-level gate ``x -> softmax(Wx / T)``.

        Arguments
        ---------
        temperature : float
            Softmax temperature ``T``.
        """
        if not temperature > 0:
            raise ValueError(f"gate temperature must be > 0: {temperature}")
        self.token_gate = nn.Linear(self.in_features, self.n_experts).to(
            device=self.base.weight.device, dtype=self.base.weight.dtype
        )
        nn.init.zeros_(self.token_gate.weight)
        nn.init.zeros_(self.token_gate.bias)
        self.token_gate_temperature = temperature

    def stacked(self):
        """Experts as ``A [N, R, in]`` and ``B [N, out, R]`` (scaling in B).

        Without a graph to build, reused inside a routing scope while no
        expert parameter changes, so decoding does not restack each step.

        Returns
        -------
        tuple of torch.Tensor
            ``(A, B)``.
        """
        needs_graph = torch.is_grad_enabled() and any(
            p.requires_grad for p in self.experts.parameters()
        )
        if needs_graph or not self.routing.caching:
            return self._stack()
        experts = range(self.n_experts)
        return self.routing.cached(
            (id(self), "stack"), self._weights_key(experts), self._stack
        )

    def _stack(self):
        max_rank = max(e.rank for e in self.experts)
        a_list, b_list = [], []
        for expert in self.experts:
            pad = max_rank - expert.rank
            a_list.append(nn.functional.pad(expert.lora_A, (0, 0, 0, pad)))
            b_list.append(
                nn.functional.pad(expert.lora_B * expert.scaling, (0, pad))
            )
        return torch.stack(a_list), torch.stack(b_list)

    def _weights_key(self, experts):
        """What a tensor derived from these experts and the base depends on.

        Identity and in-place version of each tensor (writes through the
        parameter, ``load_state_dict``), the scaling (alpha or rank set
        afterwards) and the optimizer steps taken (writes that bypass the
        version counter, as fused AdamW's). Writes through ``.data`` bypass
        all three: they are seen when the routing scope ends.
        """
        # Reads the modules' dicts directly: this runs at every decoding
        # step of every adapted layer, where nn.Module.__getattr__ and
        # ModuleList indexing cost more than the rest of the key.
        weight = self._modules["base"]._parameters["weight"]
        key = [_OPTIMIZER_STEPS[0], weight.data_ptr(), weight._version]
        modules = list(self.experts._modules.values())
        for n in experts:
            expert = modules[n]
            a = expert._parameters["lora_A"]
            b = expert._parameters["lora_B"]
            key += (
                a.data_ptr(),
                a._version,
                b.data_ptr(),
                b._version,
                expert.alpha,
                expert.rank,
                expert.use_rslora,
            )
        return tuple(key)

    def forward(self, x):
        """Base output plus the expert update the routing asks for.

        Arguments
        ---------
        x : torch.Tensor
            ``[..., in]`` input.

        Returns
        -------
        torch.Tensor
            ``[..., out]`` output.
        """
        routing = self.routing
        mode = routing.mode
        if mode == "off":
            return self.base(x)
        if self.merged:
            raise RuntimeError(
                "an expert is merged into this layer's weight; call "
                "unmerge() before routing or mixing experts"
            )
        # Without gradients, and unless LoRA dropout is active, the update
        # can be prepared once for the whole batch (inference).
        dropping = self.training and isinstance(self.dropout, nn.Dropout)
        if not dropping and not torch.is_grad_enabled():
            out = self._shared_forward(x)
            if out is not None:
                return out
        out = self.base(x)
        x = self.dropout(x)
        if mode == "route":
            return out + self._routed(x)
        if mode == "mix":
            weights = routing.weights_for(x.shape[0], x.device, x.dtype)
            shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (self.n_experts,)
            active = routing.active_experts(x.device)
            return out + self._mixed(x, weights.view(shape), active)
        if mode == "token":
            if self.token_gate is None:
                raise RuntimeError("token routing needs add_token_gate()")
            logits = self.token_gate(x) / self.token_gate_temperature
            return out + self._mixed(x, logits.softmax(dim=-1))
        raise ValueError(f"unknown routing mode {mode!r}")

    def _shared_forward(self, x):
        """Inference when the whole batch shares one update, else None.

        Folding the update into a copy of the weight (``W + BA``) makes the
        call one plain linear. For a large input (the encoder: more rows
        than ``in * out / (in + out)``) folding costs less than the
        low-rank path, so the copy is made for the call and dropped. Decoding
        calls each layer once per token with the same routing: inside a
        routing scope, the copy of a small input's layer is kept for the
        scope (measured on whisper-base, CPU, 1 thread, 8 experts mixed, 24
        tokens: 1.14x plain Whisper, against 1.21x for the low-rank path).
        Outside a scope nothing is kept: small inputs take the low-rank
        path, as in PEFT.
        """
        routing = self.routing
        shared = routing.shared_update()
        if shared is None:
            return None
        base = self._modules["base"]
        if shared[0] == "base":
            return base(x)
        out_features, in_features = base.weight.shape
        rows = x.numel() // in_features
        if rows * (in_features + out_features) >= in_features * out_features:
            return nn.functional.linear(x, self._fold(shared), base.bias)
        if routing._scopes == 0:
            return None
        experts = (shared[1],) if shared[0] == "expert" else shared[2]
        key = self._weights_key(experts)
        cache = routing._cache
        entry = cache.get((id(self), "fold"))
        if entry is None or entry[0] != key:
            entry = (key, self._fold(shared))
            cache[(id(self), "fold")] = entry
        return nn.functional.linear(x, entry[1], base.bias)

    @torch.no_grad()
    def _fold(self, shared):
        """``W + update`` in a private copy: what ``merge`` adds, unsaved."""
        kind, value = shared[:2]
        left, right = self._factors(
            expert=value if kind == "expert" else None,
            weights=value if kind == "weights" else None,
            used=shared[2] if kind == "weights" else None,
        )
        weight = self.base.weight
        if left.dtype == weight.dtype:
            # One pass and one weight-sized allocation, not two: the copy
            # is made per utterance, and on CPU each fresh allocation of
            # this size is paid again in page faults.
            return torch.addmm(weight, left, right)
        return weight + (left @ right).to(weight.dtype)

    def _routed(self, x):
        uniform = self.routing.uniform
        if uniform is not None:
            if uniform == BASE_ONLY:
                return torch.zeros_like(x[..., :1]).expand(
                    *x.shape[:-1], self.out_features
                )
            return self.experts[uniform](x)
        index = self.routing.index_for(x.shape[0], x.device)
        a, b = self.stacked()
        a, b = a[index.clamp(min=0)], b[index.clamp(min=0)]
        flat = x.reshape(x.shape[0], -1, x.shape[-1])
        hidden = torch.bmm(flat, a.transpose(1, 2))
        delta = torch.bmm(hidden, b.transpose(1, 2))
        # In the matmuls' dtype, so autocast's bf16 stays bf16.
        keep = (index != BASE_ONLY).to(delta.dtype)
        delta = delta * keep.view(-1, 1, 1)
        return delta.reshape(*x.shape[:-1], self.out_features)

    def _mixed(self, x, weights, active=None):
        """``sum_n w_n B_n A_n x`` as one LoRA of rank N*R.

        ``active``: indices of the experts with any weight in the batch
        (top-k gates leave the others out at no cost), found once per
        routing, so no layer waits for the device to say which.
        """
        a, b = self.stacked()
        if active is not None:
            a, b = a.index_select(0, active), b.index_select(0, active)
            weights = weights.index_select(-1, active)
        n, rank = a.shape[0], a.shape[1]
        hidden = x @ a.reshape(n * rank, -1).t()
        hidden = hidden.unflatten(-1, (n, rank)) * weights.unsqueeze(-1)
        b_cat = b.permute(1, 0, 2).reshape(self.out_features, n * rank)
        return hidden.flatten(-2) @ b_cat.t()

    def delta_weight(self, expert=None, weights=None):
        """Dense update of one expert, or of a fixed mix ``weights [N]``.

        Arguments
        ---------
        expert : int, optional
            One expert's index.
        weights : torch.Tensor, optional
            ``[N]`` fixed mix instead.

        Returns
        -------
        torch.Tensor
            ``[out, in]`` update.
        """
        left, right = self._factors(expert=expert, weights=weights)
        return left @ right

    def _factors(self, expert=None, weights=None, used=None):
        """``left [out, K]`` and ``right [K, in]``, the update their product.

        One product of rank K = the summed ranks of the experts with weight
        (top-k mixes leave most out), rather than N dense updates summed.
        ``used``: those experts' indices when the caller knows them (no
        device sync to find them).
        """
        if (expert is None) == (weights is None):
            raise ValueError("give exactly one of expert= or weights=")
        experts = self.experts
        if expert is not None:
            if isinstance(expert, bool) or not (
                0 <= int(expert) < self.n_experts
            ):
                raise IndexError(
                    f"expert {expert!r} out of range for {self.n_experts} "
                    "experts"
                )
            chosen = experts[int(expert)]
            return chosen.lora_B * chosen.scaling, chosen.lora_A
        w = torch.as_tensor(weights)
        if w.shape != (self.n_experts,):
            raise ValueError(
                f"merge weights must be [{self.n_experts}], got "
                f"{tuple(w.shape)}"
            )
        if used is None:
            used = [n for n, v in enumerate(w.tolist()) if v != 0]
        b = experts[0].lora_B
        w = w.to(device=b.device, dtype=b.dtype)
        if not used:
            zeros = b.new_zeros(self.out_features, 1)
            return zeros, zeros.new_zeros(1, self.in_features)
        left = torch.cat(
            [experts[n].lora_B * (experts[n].scaling * w[n]) for n in used],
            dim=1,
        )
        right = torch.cat([experts[n].lora_A for n in used], dim=0)
        return left, right

    @torch.no_grad()
    def merge(self, expert=None, weights=None, keep_backup=False):
        """Adds one expert (or a fixed mix ``weights [N]``) into the weight.

        ``unmerge`` subtracts the same update again, recomputed from a copy
        of the low-rank factors kept here (LoRA-sized), as PEFT does: the
        round trip is exact up to one rounding of the weight's dtype.

        Arguments
        ---------
        expert : int
            The expert to merge.
        weights : list of float
            A fixed mix ``[N]`` to merge instead.
        keep_backup : bool
            Also keep a full copy of the weight, so ``unmerge`` restores it
            bit-exactly (costs the weight's size until then).
        """
        left, right = self._factors(expert=expert, weights=weights)
        left, right = left.detach().clone(), right.detach().clone()
        self.merge_delta(lambda: left @ right, keep_backup=keep_backup)

    @torch.no_grad()
    def merge_combined(self, combine, keep_backup=False, **kwargs):
        """Adds ``combine(deltas, **kwargs)`` to the weight.

        ``deltas`` are the experts' dense updates, in expert order.

        For training-free merges of all experts (``merging.py``). The
        experts' low-rank factors are copied (LoRA-sized), so ``unmerge``
        recomputes the same update without keeping a dense one.

        Arguments
        ---------
        combine : callable
            Maps the experts' dense updates to one ``[out, in]`` update.
        keep_backup : bool
            As in ``merge``.
        **kwargs
            Passed to ``combine``.
        """
        factors = [
            (e.lora_B.detach() * e.scaling, e.lora_A.detach().clone())
            for e in self.experts
        ]

        def delta():
            """The combined update, recomputed from the copied factors."""
            return combine([left @ right for left, right in factors], **kwargs)

        self.merge_delta(delta, keep_backup=keep_backup)

    @torch.no_grad()
    def merge_delta(self, delta, keep_backup=False):
        """Adds any dense update ``[out, in]`` (e.g. a TIES merge).

        Arguments
        ---------
        delta : torch.Tensor or callable
            The update, or a function returning the same update each time
            it is called (then only the function is kept for ``unmerge``;
            a tensor is kept as it is).
        keep_backup : bool
            As in ``merge``.
        """
        if self.merged:
            raise RuntimeError("already merged; call unmerge() first")
        make = delta if callable(delta) else (lambda: delta)
        update = make()
        if update.shape != self.base.weight.shape:
            raise ValueError(
                f"update of shape {tuple(update.shape)} does not fit weight "
                f"{tuple(self.base.weight.shape)}"
            )
        backup = self.base.weight.detach().clone() if keep_backup else None
        self.routing.release()
        self.base.weight.add_(update.to(self.base.weight.dtype))
        self._merged = (backup, make)

    @torch.no_grad()
    def unmerge(self):
        """Takes the merged update back out of the base weight."""
        if not self.merged:
            raise RuntimeError("nothing is merged into this layer")
        backup, make = self._merged
        self.routing.release()
        if backup is not None:
            self.base.weight.copy_(backup)
        else:
            self.base.weight.sub_(make().to(self.base.weight.dtype))
        self._merged = None

    def extra_repr(self):
        """Shown by ``print(model)``.

        Returns
        -------
        str
            Sizes, experts and rank.
        """
        ranks = sorted({e.rank for e in self.experts})
        return f"n_experts={self.n_experts}, rank={ranks}"


def _per_expert(value, n_experts, name):
    if isinstance(value, (list, tuple)):
        if len(value) != n_experts:
            raise ValueError(
                f"{name} has {len(value)} entries for {n_experts} experts"
            )
        return list(value)
    return [value] * n_experts
