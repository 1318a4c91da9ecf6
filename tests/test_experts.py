"""The expert layer's math on plain tensors."""

import pytest
import torch
import torch.nn as nn

from speechbrain_lora_experts.experts import ExpertRouting, LoRAExpertsLinear


def make_layer(n=3, rank=4, alpha=8, in_f=12, out_f=10, seed=0):
    torch.manual_seed(seed)
    routing = ExpertRouting()
    layer = LoRAExpertsLinear(
        nn.Linear(in_f, out_f), n, rank, alpha, routing=routing
    )
    for expert in layer.experts:
        nn.init.normal_(expert.lora_B)
    return layer, routing


def manual(layer, x, expert):
    e = layer.experts[expert]
    w = layer.base.weight + e.scaling * e.lora_B @ e.lora_A
    return x @ w.t() + layer.base.bias


def test_base_is_frozen_and_b_starts_at_zero():
    layer = LoRAExpertsLinear(nn.Linear(6, 5), 2, 3, 6)
    assert not any(p.requires_grad for p in layer.base.parameters())
    assert all(e.lora_A.requires_grad for e in layer.experts)
    assert all(not e.lora_B.detach().any() for e in layer.experts)


def test_routing_mixed_batch_matches_each_expert_alone():
    layer, routing = make_layer()
    x = torch.randn(5, 7, 12)
    index = torch.tensor([2, 0, -1, 1, 2])
    routing.route(index)
    out = layer(x)
    for b, e in enumerate(index.tolist()):
        expected = layer.base(x[b]) if e < 0 else manual(layer, x[b], e)
        torch.testing.assert_close(out[b], expected, atol=1e-5, rtol=1e-5)


def test_uniform_route_and_off():
    layer, routing = make_layer()
    x = torch.randn(2, 3, 12)
    routing.route(1)
    torch.testing.assert_close(layer(x), manual(layer, x, 1))
    routing.route(torch.tensor([1, 1]))
    assert routing.uniform == 1
    torch.testing.assert_close(layer(x), manual(layer, x, 1))
    routing.off()
    torch.testing.assert_close(layer(x), layer.base(x))
    routing.route(-1)
    torch.testing.assert_close(layer(x), layer.base(x))


def test_route_inflates_for_beam_search():
    layer, routing = make_layer()
    x = torch.randn(2, 4, 12)
    routing.route(torch.tensor([0, 2]))
    beams = x.repeat_interleave(3, dim=0)
    out = layer(beams)
    torch.testing.assert_close(out[:3], manual(layer, beams[:3], 0))
    torch.testing.assert_close(out[3:], manual(layer, beams[3:], 2))
    routing.route(torch.tensor([0, 1, 2]))
    with pytest.raises(RuntimeError, match="routing was set for 3"):
        layer(torch.randn(4, 1, 12))


def test_mix_per_utterance_equals_weighted_sum():
    layer, routing = make_layer()
    x = torch.randn(2, 5, 12)
    weights = torch.tensor([[0.2, 0.5, 0.3], [0.0, 1.0, 0.0]])
    routing.mix(weights)
    out = layer(x)
    for b in range(2):
        expected = layer.base(x[b]) + sum(
            weights[b, n] * layer.experts[n](x[b]) for n in range(3)
        )
        torch.testing.assert_close(out[b], expected, atol=1e-5, rtol=1e-5)
    # A one-hot mix is routing.
    torch.testing.assert_close(out[1], manual(layer, x[1], 1))


def test_mix_skips_experts_without_weight():
    layer, routing = make_layer()
    x = torch.randn(2, 5, 12)
    weights = torch.tensor([[0.4, 0.0, 0.6], [1.0, 0.0, 0.0]])
    routing.mix(weights)
    out = layer(x)
    expected = layer.base(x[0]) + 0.4 * layer.experts[0](x[0])
    expected = expected + 0.6 * layer.experts[2](x[0])
    torch.testing.assert_close(out[0], expected, atol=1e-5, rtol=1e-5)


def test_token_gate_gives_per_token_mixture_and_trains():
    layer, routing = make_layer()
    layer.add_token_gate(temperature=0.5)
    nn.init.normal_(layer.token_gate.weight)
    routing.token_gate()
    x = torch.randn(2, 4, 12)
    out = layer(x)
    w = (layer.token_gate(x) / 0.5).softmax(-1)
    deltas = torch.stack([e(x) for e in layer.experts], dim=-1)
    expected = layer.base(x) + (deltas * w.unsqueeze(-2)).sum(-1)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    out.sum().backward()
    assert layer.token_gate.weight.grad.abs().sum() > 0


def test_per_expert_ranks_are_zero_padded_exactly():
    torch.manual_seed(1)
    routing = ExpertRouting()
    layer = LoRAExpertsLinear(
        nn.Linear(8, 6), 2, [2, 5], [4, 3], routing=routing
    )
    for e in layer.experts:
        nn.init.normal_(e.lora_B)
    x = torch.randn(3, 2, 8)
    routing.route(torch.tensor([0, 1, 0]))
    out = layer(x)
    torch.testing.assert_close(out[1], manual(layer, x[1], 1))
    torch.testing.assert_close(out[2], manual(layer, x[2], 0))


def test_gradients_reach_only_routed_trainable_experts():
    layer, routing = make_layer()
    layer.experts[0].requires_grad_(False)
    routing.route(torch.tensor([0, 1]))
    layer(torch.randn(2, 3, 12)).sum().backward()
    assert layer.experts[0].lora_A.grad is None
    assert layer.experts[1].lora_B.grad.abs().sum() > 0
    assert layer.experts[2].lora_B.grad.abs().sum() == 0
    assert layer.base.weight.grad is None


def test_stack_cache_follows_parameter_updates():
    layer, routing = make_layer()
    x = torch.randn(2, 3, 12)
    with routing.scope(route=torch.tensor([0, 1])), torch.no_grad():
        layer(x)
        assert (id(layer), "stack") in routing._cache
        layer.experts[1].lora_B.add_(1.0)
        second = layer(x)
    torch.testing.assert_close(second[0], manual(layer, x[0], 0))
    torch.testing.assert_close(second[1], manual(layer, x[1], 1))
    # Nothing derived from the weights outlives the scope.
    assert not routing._cache


# PEFT's tolerance for merge/unmerge round trips (tests/testing_common.py).
PEFT_TOL = dict(atol=1e-4, rtol=1e-4)


def test_merge_and_unmerge_round_trip():
    layer, routing = make_layer()
    x = torch.randn(2, 3, 12)
    original = layer.base.weight.detach().clone()
    routing.route(2)
    routed = layer(x)
    layer.merge(expert=2)
    routing.off()
    torch.testing.assert_close(layer(x), routed, atol=1e-5, rtol=1e-5)
    routing.route(1)
    with pytest.raises(RuntimeError, match="unmerge"):
        layer(x)
    # No copy of the weight is kept: unmerge subtracts the same update.
    assert not any(
        isinstance(t, torch.Tensor) and t.shape == original.shape
        for t in _tensors_in(layer._merged)
    )
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, original, **PEFT_TOL)
    assert not torch.equal(layer.base.weight, original + 1e-3)
    # A fixed weighted mix merges like the per-utterance mix computes.
    routing.mix(torch.tensor([[0.1, 0.6, 0.3]]))
    mixed = layer(x[:1])
    layer.merge(weights=[0.1, 0.6, 0.3])
    routing.off()
    torch.testing.assert_close(layer(x[:1]), mixed, atol=1e-5, rtol=1e-5)
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, original, **PEFT_TOL)
    with pytest.raises(RuntimeError, match="nothing is merged"):
        layer.unmerge()


def test_merge_with_backup_restores_bit_exactly():
    layer, routing = make_layer()
    original = layer.base.weight.detach().clone()
    layer.merge(expert=0, keep_backup=True)
    assert not torch.equal(layer.base.weight, original)
    layer.unmerge()
    assert torch.equal(layer.base.weight, original)


def test_unmerge_removes_the_merged_update_even_if_experts_changed():
    """The update is recomputed from the factors as they were merged."""
    layer, routing = make_layer()
    original = layer.base.weight.detach().clone()
    layer.merge(expert=1)
    with torch.no_grad():
        layer.experts[1].lora_B.mul_(3.0)
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, original, **PEFT_TOL)


def _tensors_in(obj):
    """Tensors held by a tuple of tensors/closures (a merge record)."""
    found = []
    for item in obj if isinstance(obj, tuple) else (obj,):
        if isinstance(item, torch.Tensor):
            found.append(item)
        for cell in getattr(item, "__closure__", None) or ():
            found.extend(_tensors_in(cell.cell_contents))
    return found


def test_static_merges():
    from speechbrain_lora_experts.merging import linear_merge, ties_merge

    layer, routing = make_layer()
    x = torch.randn(2, 3, 12)
    deltas = [e.delta_weight().detach() for e in layer.experts]
    routing.mix(torch.full((2, 3), 1 / 3))
    mixed = layer(x)
    layer.merge_combined(linear_merge)
    routing.off()
    torch.testing.assert_close(layer(x), mixed, atol=1e-5, rtol=1e-5)
    layer.unmerge()
    layer.merge_delta(linear_merge(deltas))
    torch.testing.assert_close(layer(x), mixed, atol=1e-5, rtol=1e-5)
    layer.unmerge()
    merged = ties_merge(deltas, density=0.5)
    # Kept entries agree in sign with the elected sign; half are trimmed.
    elected = torch.sign(
        sum(
            torch.where(
                d.abs()
                >= d.abs()
                .flatten()
                .kthvalue(d.numel() - d.numel() // 2 + 1)
                .values,
                d,
                torch.zeros_like(d),
            )
            for d in deltas
        )
    )
    assert bool(((torch.sign(merged) == elected) | (merged == 0)).all())
    with pytest.raises(ValueError, match="does not fit"):
        layer.merge_delta(torch.zeros(3, 3))


@pytest.mark.parametrize(
    "setting",
    ["expert", "base", "per_utterance", "shared_mix", "varying_mix"],
)
def test_inference_fast_path_matches_the_lora_path(setting):
    """Eval + no_grad prepares a batch-wide update once, exactly."""
    layer, routing = make_layer(n=3)
    layer.eval()
    x = torch.randn(2, 5, 12)
    shared = torch.tensor([[0.2, 0.5, 0.3]]).expand(2, 3)
    set_routing = {
        "expert": lambda: routing.scope(route=torch.tensor([1, 1])),
        "base": lambda: routing.scope(route=-1),
        "per_utterance": lambda: routing.scope(route=torch.tensor([0, 2])),
        "shared_mix": lambda: routing.scope(mix=shared.clone()),
        "varying_mix": lambda: routing.scope(
            mix=torch.softmax(x[:, 0, :3], -1)
        ),
    }[setting]
    with set_routing():
        with torch.enable_grad():
            reference = layer(x).detach()
        with torch.no_grad():
            # A large input (an encoder pass) folds for the call only.
            fast = layer(x)
            assert (id(layer), "fold") not in routing._cache
            # Decoding steps: the second one on reuses the folded weight.
            steps = [layer(x[:, t : t + 1]) for t in range(3)]
        torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            torch.cat(steps, dim=1), reference[:, :3], atol=1e-5, rtol=1e-5
        )
        folded = setting in ("expert", "shared_mix")
        assert ((id(layer), "fold") in routing._cache) == folded
        # An expert changed in place is seen at once (no stale fold).
        with torch.no_grad():
            for expert in layer.experts:
                expert.lora_B.add_(1.0)
            changed = layer(x[:, :1])
        with torch.enable_grad():
            expected = layer(x[:, :1]).detach()
        torch.testing.assert_close(changed, expected, atol=1e-5, rtol=1e-5)
        if setting != "base":
            assert not torch.allclose(changed, steps[0], atol=1e-3)
        # A new routing call invalidates the fold.
        routing.route(0)
        with torch.no_grad():
            torch.testing.assert_close(
                layer(x), manual(layer, x, 0), atol=1e-5, rtol=1e-5
            )
    assert not routing._cache and routing.mode == "off"
