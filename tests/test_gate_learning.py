"""What the fusion gate learns from the task loss (issue 9, item 1).

A toy fusion: one linear layer with two frozen experts, mixed by an
``UtteranceGate``; the targets are what one of the experts produces. The
gate trains on the regression loss only, as fusion trains on the ASR loss.
"""

import torch
import torch.nn as nn

from speechbrain_lora_experts.experts import ExpertRouting, LoRAExpertsLinear
from speechbrain_lora_experts.gate import UtteranceGate

DIM, FRAMES = 8, 6


def _pool():
    torch.manual_seed(0)
    routing = ExpertRouting()
    layer = LoRAExpertsLinear(nn.Linear(DIM, DIM), 2, 2, 4, routing=routing)
    for expert in layer.experts:
        nn.init.normal_(expert.lora_B, std=1.0)
    layer.requires_grad_(False)
    return routing, layer


def _batch(n):
    """Utterances of two acoustic kinds, told apart by their features."""
    torch.manual_seed(1)
    features = torch.randn(2 * n, FRAMES, DIM) * 0.3
    kind = torch.arange(2 * n) % 2
    features[:, :, 0] += torch.where(kind == 1, 2.0, -2.0).view(-1, 1)
    return features, kind


def _fusion_loss(gate, routing, layer, features, targets, language):
    weights, _ = gate(features, torch.ones(len(features)), language)
    with routing.scope(mix=weights):
        out = layer(features)
    return ((out - targets) ** 2).mean(), weights


def test_aware_gate_borrows_the_expert_that_fits():
    """All utterances are labelled language 0, but kind 1 is what expert 1
    produces: trained on the task loss, the aware gate moves those
    utterances' weight to expert 1 and keeps kind 0 on expert 0."""
    routing, layer = _pool()
    features, kind = _batch(16)
    with torch.no_grad(), routing.scope(route=kind):
        targets = layer(features)
    language = torch.zeros(len(kind), dtype=torch.long)
    gate = UtteranceGate(
        DIM,
        2,
        hidden_size=16,
        language_aware=True,
        dropout=0.0,
        features="base_encoder",
    )
    with torch.no_grad():
        start = gate(features, torch.ones(len(kind)), language)[0]
    # Untrained, the given language decides (close to the oracle).
    assert start[:, 0].min() > 0.95
    optimizer = torch.optim.Adam(gate.parameters(), lr=0.05)
    for _ in range(150):
        loss, _ = _fusion_loss(
            gate, routing, layer, features, targets, language
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        weights = gate(features, torch.ones(len(kind)), language)[0]
    assert weights[kind == 1, 1].mean() > 0.9
    assert weights[kind == 0, 0].mean() > 0.9


def test_hard_top1_gate_gets_the_dense_gradient():
    """Top-1 weights are a constant 1 forward; straight-through gives the
    gate the dense softmax's gradient, not the ~0 of the renormalised
    top-1 weight."""
    routing, layer = _pool()
    features, kind = _batch(4)
    with torch.no_grad(), routing.scope(route=kind):
        targets = layer(features)
    grads = {}
    for top_k in (None, 1):
        torch.manual_seed(2)
        gate = UtteranceGate(
            DIM,
            2,
            hidden_size=16,
            top_k=top_k,
            dropout=0.0,
            features="base_encoder",
        )
        loss, weights = _fusion_loss(
            gate, routing, layer, features, targets, None
        )
        if top_k == 1:
            # Forward: exactly one expert per utterance, weight exactly 1.
            assert sorted(weights.detach().unique().tolist()) == [0.0, 1.0]
        loss.backward()
        grads[top_k] = gate.output.weight.grad.norm().item()
    assert grads[1] > 0.1 * grads[None] > 0


def test_hard_top1_gate_decodes_with_one_expert():
    """Without gradients the top-1 mix is sparse: only the chosen expert
    is computed (no straight-through term, no dense pass)."""
    routing, layer = _pool()
    features, _ = _batch(2)
    gate = UtteranceGate(
        DIM, 2, hidden_size=16, top_k=1, dropout=0.0, features="base_encoder"
    )
    with torch.no_grad():
        weights, _ = gate(features, torch.ones(len(features)))
        assert not weights.requires_grad
        chosen = weights.argmax(dim=1)
        with routing.scope(mix=weights):
            mixed = layer(features)
        with routing.scope(route=chosen):
            routed = layer(features)
    assert torch.allclose(mixed, routed, atol=1e-5)
