"""A shared multilingual LoRA merged into the frozen base (shared + expert).

The shared + expert design (LoRA-Whisper, arXiv:2406.06619; HLoRA,
arXiv:2601.00557) first trains one multilingual LoRA on every language, then
trains each language expert as a *residual* on top of it, the shared LoRA
frozen. A frozen LoRA is just a fixed weight update, so it is merged into
the Whisper weights (``W <- W + s * B @ A``) before the experts attach:
residual experts, fusion and distillation then run over that pool exactly as
over plain experts, and cost nothing extra at inference.

The shared adapter stays a standard PEFT adapter folder (the multilingual
LoRA recipe writes one); a PEFT user reproduces the base with
``PeftModel.from_pretrained(whisper, shared).merge_and_unload()`` before
loading a residual expert.

Authors
 * speechbrain-lora-experts developers 2026
"""

import os

import torch

from speechbrain_lora_experts.attach import whisper_model
from speechbrain_lora_experts.experts import lora_scaling
from speechbrain_lora_experts.peft_io import (
    AdapterError,
    adapter_scale,
    read_adapter,
)


def adapter_delta(adapter, name):
    """The dense update ``[out, in]`` an adapter adds to layer ``name``.

    Arguments
    ---------
    adapter : peft_io.Adapter
        An adapter read with ``read_adapter``.
    name : str
        WhisperModel layer name, e.g. ``decoder.layers.0.fc1``.

    Returns
    -------
    torch.Tensor
        ``scaling * B @ A`` with PEFT's scaling (``alpha / r``, or
        ``alpha / sqrt(r)`` with rsLoRA).

    Example
    -------
    >>> from speechbrain_lora_experts.peft_io import Adapter
    >>> a, b = torch.ones(2, 3), torch.ones(4, 2)
    >>> adapter = Adapter("x", {"l": (a, b)}, {"l": 2}, {"l": 4})
    >>> adapter_delta(adapter, "l")[0, 0].item()  # (4 / 2) * 2
    4.0
    """
    lora_a, lora_b = adapter.weights[name]
    scaling = lora_scaling(
        adapter.alphas[name], adapter.ranks[name], adapter.use_rslora
    )
    return scaling * (lora_b.float() @ lora_a.float())


def merge_shared_adapter(whisper, adapter=None, scale=1.0):
    """Merges a shared LoRA adapter into ``whisper``'s weights, in place.

    Call it before experts attach (the recipes' yamls wrap the Whisper
    with it). Merging twice is refused: the second merge would double the
    update.

    Arguments
    ---------
    whisper : torch.nn.Module
        SpeechBrain's Whisper (or a HF Whisper model).
    adapter : str or None
        PEFT LoRA adapter folder (e.g. the multilingual LoRA run's
        ``model/experts/multilingual``). None leaves ``whisper`` untouched.
    scale : float
        Multiplier of the adapter's update, > 0 (``shared_adapter_scale``):
        e.g. 0.5, with the experts at 0.5 (``attach_pool(scale=)``), makes
        each language's model the average of the multilingual LoRA and
        its expert.

    Returns
    -------
    torch.nn.Module
        ``whisper``, with ``shared_adapter`` set to the folder merged (None
        when nothing was merged) and ``shared_adapter_scale`` to ``scale``.

    Example
    -------
    >>> import tempfile
    >>> from speechbrain_lora_experts.testing.tiny_whisper import (
    ...     make_tiny_whisper,
    ... )
    >>> from speechbrain_lora_experts.whisper import Whisper
    >>> whisper = Whisper(
    ...     make_tiny_whisper(tempfile.mkdtemp()), tempfile.mkdtemp()
    ... )
    >>> merge_shared_adapter(whisper, None).shared_adapter is None
    True
    >>> merge_shared_adapter(whisper, None, scale=-1.0)
    Traceback (most recent call last):
    ...
    ValueError: shared_adapter_scale must be a finite number > 0, got -1.0; ...
    >>> merge_shared_adapter(whisper, None, scale=0.5)
    Traceback (most recent call last):
    ...
    ValueError: shared_adapter_scale=0.5 scales a shared adapter, but none ...
    """
    if getattr(whisper, "shared_adapter", None) is not None:
        raise AdapterError(
            f"a shared adapter ({whisper.shared_adapter}) is already merged "
            "into this Whisper; load a fresh Whisper to merge another"
        )
    scale = adapter_scale(scale, "shared_adapter_scale")
    whisper.shared_adapter = None
    whisper.shared_adapter_scale = 1.0
    if adapter is None:
        if scale != 1.0:
            raise ValueError(
                f"shared_adapter_scale={scale} scales a shared adapter, but "
                "none is given: set shared_adapter, or leave the scale at 1"
            )
        return whisper
    adapter = os.fspath(adapter)
    read = read_adapter(adapter)
    model = whisper_model(whisper)
    modules = dict(model.named_modules())
    missing = [n for n in read.layer_names if n not in modules]
    if missing:
        raise AdapterError(
            f"shared adapter {adapter} adapts layers this Whisper lacks: "
            f"{missing[:4]}; it was trained on another Whisper size"
        )
    deltas = {}
    for name in read.layer_names:
        weight = _linear(modules[name]).weight
        delta = adapter_delta(read, name) * scale
        if delta.shape != weight.shape:
            raise AdapterError(
                f"shared adapter {adapter}: {name} updates a "
                f"{tuple(delta.shape)} weight, this Whisper's is "
                f"{tuple(weight.shape)}; it was trained on another Whisper"
            )
        deltas[name] = delta
    # Every shape is checked before the first write: a refused adapter
    # leaves the model as it was.
    with torch.no_grad():
        for name, delta in deltas.items():
            weight = _linear(modules[name]).weight
            weight.add_(delta.to(device=weight.device, dtype=weight.dtype))
    whisper.shared_adapter = adapter
    whisper.shared_adapter_scale = scale
    return whisper


def _linear(module):
    """The ``nn.Linear`` itself, also when experts already wrap it."""
    return getattr(module, "base", module)
