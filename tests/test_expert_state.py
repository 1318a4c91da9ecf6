"""What an expert pool keeps between calls: scoped routing, locks, caches.

Routing set for one call and restored after it (also on exceptions), one
thread at a time; tensors derived from the weights never outliving their
scope nor surviving a write to the weights; routing inputs refused with a
clear error; no host sync per layer.
"""

import os
import sys
import threading

import pytest
import torch
import torch.nn as nn

from speechbrain_lora_experts.attach import WhisperLoRAExperts
from speechbrain_lora_experts.experts import ExpertRouting, LoRAExpertsLinear

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

SOT, DE, TRANSCRIBE, NOTS = 50258, 50261, 50359, 50363


def stack(n_layers=2, n=3, width=12, seed=0):
    """Layers sharing one routing, with non-zero experts."""
    torch.manual_seed(seed)
    routing = ExpertRouting()
    layers = nn.Sequential(
        *[
            LoRAExpertsLinear(nn.Linear(width, width), n, 4, 8, routing=routing)
            for _ in range(n_layers)
        ]
    )
    for layer in layers:
        for expert in layer.experts:
            nn.init.normal_(expert.lora_B)
    return layers, routing


def reference(layers, x, weights):
    """The update computed from scratch: base + sum_n w_n B_n A_n."""
    for layer in layers:
        out = layer.base(x)
        for n, expert in enumerate(layer.experts):
            w = weights[:, n].view(-1, *([1] * (x.dim() - 1)))
            out = out + w * expert(x)
        x = out
    return x


def pool(sb_whisper, names=("de", "es"), seed=0):
    experts = WhisperLoRAExperts(
        sb_whisper, expert_names=list(names), rank=4, alpha=8
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in experts.layers.values():
            for e in layer.experts:
                e.lora_B.copy_(torch.randn(e.lora_B.shape, generator=g) * 0.5)
    return experts


# Scopes ---------------------------------------------------------------------
def test_scope_restores_the_previous_routing_also_on_exceptions():
    layers, routing = stack()
    routing.route(torch.tensor([2, 0]))
    with routing.scope(mix=torch.full((2, 3), 1 / 3)):
        assert routing.mode == "mix"
        with routing.scope(route=1):  # nested in one thread (RLock)
            assert routing.uniform == 1
        assert routing.mode == "mix"
    assert routing.mode == "route" and routing.index.tolist() == [2, 0]
    with pytest.raises(ZeroDivisionError):
        with routing.scope(token=True):
            raise ZeroDivisionError("inside the block")
    assert routing.mode == "route" and routing.index.tolist() == [2, 0]
    # A refused routing leaves the previous one in place too.
    with pytest.raises(IndexError):
        with routing.scope(route=7):
            pass
    assert routing.mode == "route" and routing.index.tolist() == [2, 0]
    with routing.scope():
        assert routing.mode == "off"
    with pytest.raises(ValueError, match="at most one"):
        with routing.scope(route=0, token=True):
            pass
    assert not routing.lock._is_owned()


def test_scope_makes_other_threads_wait():
    layers, routing = stack()
    entered, release = threading.Event(), threading.Event()
    seen = []

    def holder():
        with routing.scope(route=0):
            entered.set()
            release.wait(5)
            seen.append(("holder", routing.uniform))

    def other():
        with routing.scope(route=2):
            seen.append(("other", routing.uniform))

    first = threading.Thread(target=holder)
    first.start()
    assert entered.wait(5)
    second = threading.Thread(target=other)
    second.start()
    second.join(0.3)
    # The second thread cannot route while the first one decodes.
    assert second.is_alive() and seen == []
    # Nor can a plain route() call from it (or merge()).
    blocked = threading.Thread(target=routing.route, args=(1,))
    blocked.start()
    blocked.join(0.2)
    assert blocked.is_alive() and routing.uniform == 0
    release.set()
    for thread in (first, second, blocked):
        thread.join(5)
    assert seen[0] == ("holder", 0) and ("other", 2) in seen


def test_two_threads_with_different_experts_get_sequential_results(
    sb_whisper,
):
    experts = pool(sb_whisper, names=("de", "es", "it"))
    wavs = torch.randn(2, 8000) * 0.1
    tokens = torch.tensor([[SOT, DE, TRANSCRIBE, NOTS, 400, 401]] * 2)
    choices = {"de": 0, "it": 2}

    def run(name):
        with experts.scope(route=name), torch.no_grad():
            return sb_whisper(wavs, tokens)[1]

    sequential = {name: run(name) for name in choices}
    assert not torch.allclose(sequential["de"], sequential["it"], atol=1e-3)
    results, errors = {name: [] for name in choices}, []

    def worker(name):
        try:
            for _ in range(4):
                results[name].append(run(name))
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(n,)) for n in choices]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    for name in choices:
        assert len(results[name]) == 4
        for out in results[name]:
            assert torch.equal(out, sequential[name])


# Validation -------------------------------------------------------------------
def test_routing_inputs_are_checked():
    layers, routing = stack(n=3)
    for bad in (-2, 3, torch.tensor([0, -2]), torch.tensor([3, 0])):
        with pytest.raises(IndexError, match="out of range for 3 experts"):
            routing.route(bad)
    for bad in (True, 1.5, torch.tensor([0.0, 1.0]), torch.tensor([True])):
        with pytest.raises(TypeError, match="int"):
            routing.route(bad)
    for bad in (torch.tensor([[0, 1]]), torch.tensor([], dtype=torch.long)):
        with pytest.raises(ValueError, match=r"\[B\]"):
            routing.route(bad)
    assert routing.mode == "off"  # nothing refused was applied
    routing.route(torch.tensor(2))  # a 0-d tensor is one index
    assert routing.uniform == 2
    with pytest.raises(ValueError, match=r"\[B, 3\]"):
        routing.mix(torch.ones(2, 4) / 4)
    with pytest.raises(ValueError, match=r"\[B, 3\]"):
        routing.mix(torch.ones(3) / 3)
    with pytest.raises(TypeError, match="floating"):
        routing.mix(torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="tensor"):
        routing.mix([[1.0, 0.0, 0.0]])
    layer = layers[0]
    with pytest.raises(IndexError, match="out of range"):
        layer.merge(expert=3)
    with pytest.raises(ValueError, match=r"merge weights must be \[3\]"):
        layer.merge(weights=[0.5, 0.5])
    assert not layer.merged
    with pytest.raises(ValueError, match="steers pools of 3"):
        LoRAExpertsLinear(nn.Linear(12, 12), 2, 4, 8, routing=routing)


def test_pool_routing_checks_names_and_range(sb_whisper):
    experts = pool(sb_whisper)
    with pytest.raises(IndexError, match="out of range for 2 experts"):
        experts.route(torch.tensor([0, 2]))
    with pytest.raises(KeyError, match="no expert named"):
        experts.route(["de", "fr"])
    experts.route(["es", "de"])
    assert experts.routing.index.tolist() == [1, 0]


# Caches ----------------------------------------------------------------------
def test_caches_live_only_inside_a_scope():
    layers, routing = stack()
    x = torch.randn(2, 1, 12)
    weights = torch.tensor([[0.2, 0.0, 0.8]]).expand(2, 3).clone()
    with torch.no_grad():
        routing.mix(weights)
        for _ in range(3):
            layers(x)
        assert not routing._cache  # plain route/mix: stateless, as PEFT
        with routing.scope(mix=weights):
            for _ in range(3):
                out = layers(x)
            kinds = {key[1] for key in routing._cache}
            assert "fold" in kinds
            layers.train()  # switching mode drops them
            assert not routing._cache
            layers.eval()
            layers(x)
            layers(x)
            assert routing._cache
            routing.off()  # so does any routing change
            assert not routing._cache
            routing.mix(weights)
            layers(x)
            layers(x)
        assert not routing._cache
    torch.testing.assert_close(out, reference(layers, x, weights))


@pytest.mark.parametrize("write", ["data_copy", "alpha", "load_state_dict"])
def test_any_weight_write_invalidates_the_caches(write):
    layers, routing = stack()
    x = torch.randn(2, 1, 12)
    weights = torch.tensor([[0.3, 0.7, 0.0]]).expand(2, 3).clone()
    with torch.no_grad():
        for expert in (layers[0].experts[0], layers[1].experts[1]):
            if write == "data_copy":
                # Bypasses the version counter: seen at the next scope.
                with routing.scope(mix=weights):
                    before = [layers(x) for _ in range(2)][-1]
                expert.lora_B.data.copy_(expert.lora_B.data * 3 + 1)
                with routing.scope(mix=weights):
                    after = [layers(x) for _ in range(2)][-1]
            else:
                with routing.scope(mix=weights):
                    before = [layers(x) for _ in range(2)][-1]
                    if write == "alpha":
                        expert.alpha *= 3
                    else:
                        layers.load_state_dict(
                            {
                                k: v + 0.5 if "lora_B" in k else v
                                for k, v in layers.state_dict().items()
                            }
                        )
                    after = layers(x)
            assert not torch.allclose(after, before, atol=1e-3)
            torch.testing.assert_close(
                after, reference(layers, x, weights), atol=1e-5, rtol=1e-5
            )


@pytest.mark.parametrize("inside_scope", [True, False])
def test_fused_adamw_step_is_seen_by_the_no_grad_path(
    sb_whisper, tiny_whisper_dir, tmp_path, inside_scope
):
    """After a fused-AdamW step, inference equals a fresh pool's."""
    from speechbrain_lora_experts.whisper import Whisper

    experts = pool(sb_whisper)
    wavs = torch.randn(1, 8000) * 0.1
    tokens = torch.tensor([[SOT, DE, TRANSCRIBE, NOTS, 400, 401]])
    weights = torch.tensor([[0.6, 0.4]])
    params = [p for p in experts.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2, fused=True)

    def infer():
        # Decoding-like: the same routing, several no-grad calls.
        with torch.no_grad():
            return [sb_whisper(wavs, tokens)[1] for _ in range(2)][-1]

    def train_step():
        # Under the routing already set: a scope would drop the caches.
        sb_whisper(wavs, tokens)[1].logsumexp(-1).mean().backward()
        versions = [p._version for p in params]
        optimizer.step()
        # The write this test is about leaves no version trace.
        assert [p._version for p in params] == versions

    with experts.scope(mix=weights):
        stale = infer()
        if inside_scope:
            with torch.enable_grad():
                train_step()
            updated = infer()
    if not inside_scope:
        experts.mix(weights)
        train_step()
        experts.off()
        with experts.scope(mix=weights):
            updated = infer()

    fresh_whisper = Whisper(
        tiny_whisper_dir, str(tmp_path / "fresh"), language="de"
    ).eval()
    fresh = WhisperLoRAExperts(
        fresh_whisper, expert_names=["de", "es"], rank=4, alpha=8
    )
    fresh.load_state_dict(experts.state_dict())
    with fresh.scope(mix=weights), torch.no_grad():
        expected = fresh_whisper(wavs, tokens)[1]
    assert (updated - stale).abs().max() > 1e-3
    assert (updated - expected).abs().max() <= 1e-5


def test_nothing_derived_is_reachable_after_off_or_unmerge(sb_whisper):
    """bench/memory.py's check: no tensor bytes left behind."""
    import memory

    experts = pool(sb_whisper, names=("de", "es", "it"))
    rows = memory.measure(sb_whisper, experts, tokens=3)
    before = rows["before"]
    for name, value in rows.items():
        if not name.startswith("largest"):
            assert value == before, name
    # A scope did hold folded weights while decoding, released after it.
    assert rows["largest inside a scope"] > before
    # Merged, only LoRA-sized factors are kept, never a weight copy.
    adapter_bytes = sum(p.numel() * 4 for p in experts.parameters())
    assert before < rows["largest while merged"] <= before + adapter_bytes


# Host syncs ------------------------------------------------------------------
SYNCS = ("__bool__", "__int__", "__float__", "item", "tolist", "cpu")


@pytest.mark.parametrize("mode", ["mix_train", "mix_no_grad", "token"])
def test_no_host_sync_per_layer(monkeypatch, mode):
    """Syncs per forward do not grow with the number of layers."""
    counts = []
    for n_layers in (2, 6):
        layers, routing = stack(n_layers=n_layers)
        for layer in layers:
            layer.add_token_gate()
        x = torch.randn(3, 2, 12)
        weights = torch.tensor([[0.5, 0.0, 0.5], [0.2, 0.0, 0.8]] * 2)[:3]
        calls = [0]
        for name in SYNCS:
            original = getattr(torch.Tensor, name)

            def counted(self, *args, _original=original, **kwargs):
                calls[0] += 1
                return _original(self, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)
        grad = mode != "mix_no_grad"
        with torch.set_grad_enabled(grad):
            if mode == "token":
                scope = routing.scope(token=True)
            else:
                scope = routing.scope(mix=weights)
            with scope:
                layers(x)
                layers(x)
        monkeypatch.undo()
        expected = reference(layers, x, weights) if mode != "token" else None
        if expected is not None:
            with routing.scope(mix=weights), torch.no_grad():
                torch.testing.assert_close(
                    layers(x), expected, atol=1e-5, rtol=1e-5
                )
        counts.append(calls[0])
    assert counts[0] == counts[1], counts


# Mixed precision -------------------------------------------------------------
@pytest.mark.parametrize("mode", ["route", "uniform", "mix", "token"])
def test_bf16_autocast_matches_fp32(mode):
    layers, routing = stack()
    for layer in layers:
        layer.add_token_gate()
        nn.init.normal_(layer.token_gate.weight, std=0.1)
    x = torch.randn(2, 3, 12)
    set_routing = {
        "route": lambda: routing.scope(route=torch.tensor([2, -1])),
        "uniform": lambda: routing.scope(route=1),
        "mix": lambda: routing.scope(mix=torch.tensor([[0.3, 0.7, 0.0]] * 2)),
        "token": lambda: routing.scope(token=True),
    }[mode]
    with set_routing():
        expected = layers(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layers(x)
            with torch.no_grad():
                fast = [layers(x[:, :1]) for _ in range(2)]
        assert out.dtype == torch.bfloat16
        scale = float(expected.detach().abs().max())
        torch.testing.assert_close(
            out.float(), expected, atol=0.05 * scale, rtol=0.05
        )
        torch.testing.assert_close(
            fast[-1].float(), expected[:, :1], atol=0.05 * scale, rtol=0.05
        )
        out.float().pow(2).sum().backward()
    trained = layers[0].experts[2 if mode == "route" else 1].lora_B
    assert trained.grad is not None and trained.grad.dtype == torch.float32
    assert trained.grad.abs().sum() > 0
