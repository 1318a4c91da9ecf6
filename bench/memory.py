"""Tensor memory an expert pool keeps after inference and after merging.

Counts the bytes of every tensor storage reachable from Whisper and its
expert pool (parameters, buffers, routing state, caches, merge records;
each storage once), then:

1. a routed and a mixed no-grad decode through the plain routing calls
   (``route``/``mix``), then ``off()``;
2. the same inside ``scope()`` (what the interface and the Brains use), the
   last one left by an exception, then ``off()``;
3. ``merge()`` + ``unmerge()`` of one expert, and of a TIES merge of all.

After each, the reachable bytes must equal those before: a pool keeps no
weight copy, folded weight or stacked expert beyond the call that made it.
The largest count seen inside a scope (the folded decoder weights it keeps
for decoding) and while merged (the LoRA-sized factors ``unmerge`` needs)
is reported too. Exits with status 1 when anything is left behind.

Usage:
    python bench/memory.py [--whisper DIR] [--experts 4] [--out DIR]

Without ``--whisper`` a tiny random Whisper is built in a temporary folder.

Authors
 * speechbrain-lora-experts developers 2026
"""

import argparse
import json
import os
import sys
import tempfile
import time
import types

import torch

TARGETS = ("q_proj", "v_proj", "fc1", "fc2")
# Objects whose contents are not the model's state: walking into them
# would count all of torch.
_OPAQUE = (
    types.ModuleType,
    type,
    types.BuiltinFunctionType,
    str,
    bytes,
    int,
    float,
    bool,
    complex,
    type(None),
)


def reachable_tensor_bytes(*roots):
    """Bytes of the distinct tensor storages reachable from ``roots``.

    Arguments
    ---------
    *roots : object
        Where to start (a model, its expert pool, ...).

    Returns
    -------
    int

    Example
    -------
    >>> layer = torch.nn.Linear(4, 2)
    >>> reachable_tensor_bytes(layer)  # 8 weights + 2 biases, fp32
    40
    >>> layer.extra = {"copy": layer.weight.detach().clone()}
    >>> reachable_tensor_bytes(layer)
    72
    """
    return sum(reachable_storages(*roots).values())


def reachable_storages(*roots):
    """The distinct tensor storages reachable from ``roots``.

    Walks containers, object attributes, bound methods (hooks) and closure
    cells, never module globals or classes.

    Arguments
    ---------
    *roots : object
        Where to start.

    Returns
    -------
    dict
        ``(device, data_ptr)`` of each storage -> its size in bytes.
    """
    seen, storages = set(), {}
    stack = list(roots)
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, _OPAQUE):
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            if obj.device.type != "meta":
                storage = obj.untyped_storage()
                storages[(storage.device, storage.data_ptr())] = (
                    storage.nbytes()
                )
            if obj.grad is not None:
                stack.append(obj.grad)
            continue
        if isinstance(obj, types.FunctionType):
            stack.extend(c.cell_contents for c in obj.__closure__ or ())
            stack.extend(obj.__defaults__ or ())
            continue
        if isinstance(obj, types.MethodType):
            stack.extend((obj.__self__, obj.__func__))
            continue
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
            continue
        if isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
            continue
        if hasattr(obj, "__dict__"):
            stack.append(vars(obj))
        for slot in getattr(type(obj), "__slots__", ()):
            if hasattr(obj, slot):
                stack.append(getattr(obj, slot))
    return storages


def build(whisper_dir, n_experts, seed=0):
    """SpeechBrain's Whisper with a pool of random (non-zero) experts."""
    from speechbrain_lora_experts.attach import WhisperLoRAExperts
    from speechbrain_lora_experts.whisper import Whisper

    torch.manual_seed(seed)
    save = tempfile.mkdtemp(prefix="memory_")
    whisper = Whisper(whisper_dir, save, language="de").eval()
    names = ["de", "es", "fr", "it", "ru", "pt", "nl", "pl"][:n_experts]
    experts = WhisperLoRAExperts(
        whisper, expert_names=names, rank=16, alpha=32, targets=TARGETS
    )
    with torch.no_grad():
        for layer in experts.layers.values():
            for expert in layer.experts:
                expert.lora_B.normal_(std=0.02)
    return whisper, experts


@torch.no_grad()
def decode(whisper, batch=2, seconds=1.0, tokens=4):
    """Log-mel, encoder and a few greedy decoding steps (KV cache)."""
    from speechbrain_lora_experts import decoding

    wavs = torch.randn(batch, int(16000 * seconds)) * 0.1
    enc = whisper.forward_encoder(whisper._get_mel(wavs))
    prompts = decoding.prompt_tokens(whisper, ["de"] * batch)
    return decoding.greedy_decode(whisper, enc, prompts, tokens)


def measure(whisper, experts, tokens=4):
    """Reachable bytes before and after each sequence; see the docstring."""

    def count():
        return reachable_tensor_bytes(whisper, experts)

    n = experts.n_experts
    route = torch.arange(2) % n
    mix = torch.softmax(torch.randn(2, n), dim=-1)
    shared_mix = mix[:1].expand(2, n).clone()
    rows = {}
    before = count()
    rows["before"] = before

    experts.route(route)
    decode(whisper, tokens=tokens)
    experts.route(1)
    decode(whisper, tokens=tokens)
    experts.mix(mix)
    decode(whisper, tokens=tokens)
    experts.off()
    rows["route/mix calls, then off()"] = count()

    inside = []
    with experts.scope(route=route):
        decode(whisper, tokens=tokens)
    with experts.scope(route=1):
        decode(whisper, tokens=tokens)
        inside.append(count())
    with experts.scope(mix=shared_mix):
        decode(whisper, tokens=tokens)
        inside.append(count())
    try:
        with experts.scope(mix=mix):
            decode(whisper, tokens=tokens)
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    experts.off()
    rows["scoped route/mix (one raising), then off()"] = count()
    rows["largest inside a scope"] = max(inside)

    experts.merge(0)
    merged = count()
    experts.unmerge()
    rows["merge(0) + unmerge()"] = count()
    experts.merge_static("ties", density=0.5)
    merged = max(merged, count())
    experts.unmerge()
    rows["merge_static(ties) + unmerge()"] = count()
    rows["largest while merged"] = merged
    return rows


def scope_cost(experts, calls=20000):
    """Microseconds of one ``scope(route=...)`` enter + exit (no contention).

    What the lock and the save/restore add to each call of the pretrained
    interface (one scope per ``transcribe_batch``).
    """
    index = torch.arange(2) % experts.n_experts
    results = {}
    for name, kwargs in (("route=int", dict(route=0)), ("route=[B]", None)):
        kwargs = kwargs or dict(route=index)
        start = time.perf_counter()
        for _ in range(calls):
            with experts.scope(**kwargs):
                pass
        results[name] = 1e6 * (time.perf_counter() - start) / calls
    return results


def markdown(result):
    """The report as a markdown table."""
    mb = 2**20
    rows = result["bytes"]
    before = rows["before"]
    lines = [
        f"# Tensor memory held by an expert pool: {result['model']}",
        "",
        f"{result['experts']} experts, LoRA r=16 on {', '.join(TARGETS)}; "
        "bytes of distinct tensor storages reachable from Whisper and the "
        "pool (`bench/memory.py`), torch "
        f"{result['torch']}.",
        "",
        "| after | MB | vs before |",
        "|---|---|---|",
    ]
    for name, value in rows.items():
        lines.append(
            f"| {name} | {value / mb:.2f} | {(value - before) / mb:+.2f} |"
        )
    costs = result.get("scope_us", {})
    if costs:
        lines += [
            "",
            "One `scope()` enter + exit, uncontended (its lock, the routing "
            "set and restored), per call of the pretrained interface: "
            + ", ".join(f"{k}: {v:.1f} µs" for k, v in costs.items())
            + ".",
        ]
    lines += [
        "",
        "Left behind: "
        + ("nothing." if result["clean"] else "**yes** (see the table)."),
        "",
    ]
    return "\n".join(lines)


def main(argv=None):
    """Runs the measurement; returns the result dict."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--whisper", default=None, help="Whisper folder")
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=4)
    parser.add_argument("--out", default=None, help="write memory.{json,md}")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    folder = args.whisper
    model = "tiny random Whisper"
    if folder is None:
        from speechbrain_lora_experts.testing.tiny_whisper import (
            make_tiny_whisper,
        )

        folder = make_tiny_whisper(tempfile.mkdtemp(prefix="tiny_whisper_"))
    else:
        model = os.path.basename(os.path.normpath(folder))
    whisper, experts = build(folder, args.experts)
    rows = measure(whisper, experts, tokens=args.tokens)
    costs = scope_cost(experts)
    after = [
        value
        for name, value in rows.items()
        if name != "before" and not name.startswith("largest")
    ]
    result = dict(
        model=model,
        experts=args.experts,
        torch=torch.__version__,
        bytes=rows,
        scope_us=costs,
        clean=all(value == rows["before"] for value in after),
    )
    text = markdown(result)
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "memory.json"), "w") as f:
            json.dump(result, f, indent=2)
        with open(os.path.join(args.out, "memory.md"), "w") as f:
            f.write(text)
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["clean"] else 1)
