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

import contextlib
import json
import os

import torch

from speechbrain_lora_experts.attach import whisper_model
from speechbrain_lora_experts.experts import lora_scaling
from speechbrain_lora_experts.peft_io import (
    AdapterError,
    adapter_scale,
    read_adapter,
)

# Beside a model folder's shared adapter copy: the multiplier, relative to
# the copy, of the step that names the language (PEFT ignores the file).
LANGUAGE_STEP_FILE = "language_step.json"


def write_language_step(folder, lid_scale):
    """Records ``lid_scale`` (relative to the adapter in ``folder``).

    Arguments
    ---------
    folder : str
        A PEFT adapter folder (a model folder's ``shared_adapter/``).
    lid_scale : float
        Multiplier of that adapter while the model names the language.

    Returns
    -------
    str
        The file written.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> _ = write_language_step(folder, 2.0)
    >>> read_language_step(folder)
    2.0
    """
    path = os.path.join(folder, LANGUAGE_STEP_FILE)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"lid_scale": float(lid_scale)}, f)
    return path


def read_language_step(folder):
    """The language step's multiplier ``write_language_step`` recorded.

    Arguments
    ---------
    folder : str
        A PEFT adapter folder.

    Returns
    -------
    float or None
        None when nothing is recorded (the adapter names the language at
        the weight it is merged with).

    Example
    -------
    >>> import tempfile
    >>> read_language_step(tempfile.mkdtemp()) is None
    True
    """
    path = os.path.join(folder, LANGUAGE_STEP_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)["lid_scale"]
    except (ValueError, KeyError, TypeError) as err:
        raise AdapterError(
            f"{path} is not a language-step record ({err}); export the "
            "model again"
        ) from err
    return adapter_scale(value, f"{path} lid_scale")


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


def merge_shared_adapter(whisper, adapter=None, scale=1.0, lid_scale=None):
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
    lid_scale : float or None
        The adapter's multiplier while the model names the language
        (``shared_adapter_lid_scale``; None: ``scale``). An expert soup
        merges the shared LoRA at 0.5, which blurs the language step the
        multilingual LoRA learned at 1; with ``lid_scale=1.0`` the
        routing language comes from the multilingual LoRA itself. Those
        weights are kept beside the merged ones and swapped in by
        ``language_step_weights`` (exact, no re-merge).

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
    >>> merge_shared_adapter(whisper, None, lid_scale=1.0)
    Traceback (most recent call last):
    ...
    ValueError: shared_adapter_lid_scale=1.0 scales a shared adapter, but ...
    """
    if getattr(whisper, "shared_adapter", None) is not None:
        raise AdapterError(
            f"a shared adapter ({whisper.shared_adapter}) is already merged "
            "into this Whisper; load a fresh Whisper to merge another"
        )
    scale = adapter_scale(scale, "shared_adapter_scale")
    if lid_scale is not None:
        lid_scale = adapter_scale(lid_scale, "shared_adapter_lid_scale")
    whisper.shared_adapter = None
    whisper.shared_adapter_scale = 1.0
    whisper.shared_adapter_lid_scale = None
    whisper.shared_lid_weights = {}
    if adapter is None:
        if scale != 1.0:
            raise ValueError(
                f"shared_adapter_scale={scale} scales a shared adapter, but "
                "none is given: set shared_adapter, or leave the scale at 1"
            )
        if lid_scale is not None:
            raise ValueError(
                f"shared_adapter_lid_scale={lid_scale} scales a shared "
                "adapter, but none is given: set shared_adapter, or leave "
                "the scale at null"
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
    lid_weights = {}
    with torch.no_grad():
        for name, delta in deltas.items():
            weight = _linear(modules[name]).weight
            if lid_scale is not None and lid_scale != scale:
                # From the unmerged weight: W + lid_scale * dW exactly as a
                # model merged at lid_scale would hold it.
                lid_weights[name] = weight.detach() + (
                    delta * (lid_scale / scale)
                ).to(device=weight.device, dtype=weight.dtype)
            weight.add_(delta.to(device=weight.device, dtype=weight.dtype))
    whisper.shared_adapter = adapter
    whisper.shared_adapter_scale = scale
    whisper.shared_adapter_lid_scale = lid_scale
    whisper.shared_lid_weights = lid_weights
    return whisper


def has_language_step_weights(whisper):
    """Whether ``whisper`` names the language with other shared weights.

    True after ``merge_shared_adapter(..., lid_scale=)`` with a
    ``lid_scale`` other than ``scale``: then a pass inside
    ``language_step_weights`` does not compute what the merged model does
    (its encoder output, a cached prefix).

    Arguments
    ---------
    whisper : torch.nn.Module
        Any Whisper.

    Returns
    -------
    bool

    Example
    -------
    >>> has_language_step_weights(torch.nn.Module())
    False
    """
    return bool(getattr(whisper, "shared_lid_weights", None))


@contextlib.contextmanager
def language_step_weights(whisper):
    """Within it, the shared adapter weighs ``lid_scale``, not ``scale``.

    For the pass that names the language (experts off) of a model merged
    with ``merge_shared_adapter(..., lid_scale=)``; a no-op otherwise. The
    weights are swapped, not re-merged, so leaving restores them bit for
    bit. Gradients are off inside: naming a language trains nothing.

    Arguments
    ---------
    whisper : torch.nn.Module
        A Whisper ``merge_shared_adapter`` was applied to (or any other).

    Yields
    ------
    torch.nn.Module
        ``whisper``.

    Example
    -------
    >>> import tempfile
    >>> from speechbrain_lora_experts.attach import WhisperLoRAExperts
    >>> from speechbrain_lora_experts.peft_io import save_expert
    >>> from speechbrain_lora_experts.testing.tiny_whisper import (
    ...     make_tiny_whisper,
    ... )
    >>> from speechbrain_lora_experts.whisper import Whisper
    >>> hub = make_tiny_whisper(tempfile.mkdtemp())
    >>> pool = WhisperLoRAExperts(
    ...     Whisper(hub, tempfile.mkdtemp()), expert_names=["all"], rank=2
    ... )
    >>> _ = [torch.nn.init.ones_(p) for p in pool.expert_parameters("all")]
    >>> folder = save_expert(pool, "all", tempfile.mkdtemp())
    >>> full = merge_shared_adapter(Whisper(hub, tempfile.mkdtemp()), folder)
    >>> soup = merge_shared_adapter(
    ...     Whisper(hub, tempfile.mkdtemp()), folder, scale=0.5, lid_scale=1.0
    ... )
    >>> fc1 = lambda w: w.model.decoder.layers[0].fc1.weight
    >>> before = fc1(soup).clone()
    >>> with language_step_weights(soup):
    ...     torch.allclose(fc1(soup), fc1(full))
    True
    >>> torch.equal(fc1(soup), before)
    True
    """
    if not has_language_step_weights(whisper):
        yield whisper
        return
    lid_weights = whisper.shared_lid_weights
    modules = dict(whisper_model(whisper).named_modules())
    saved = {}
    try:
        with torch.no_grad():
            for name, lid in lid_weights.items():
                weight = _linear(modules[name]).weight
                if lid.device != weight.device or lid.dtype != weight.dtype:
                    # The Brain moves the model after the yaml merged it.
                    lid = lid_weights[name] = lid.to(
                        weight.device, weight.dtype
                    )
                saved[name] = weight.data
                weight.data = lid
            yield whisper
    finally:
        for name, data in saved.items():
            _linear(modules[name]).weight.data = data


def _linear(module):
    """The ``nn.Linear`` itself, also when experts already wrap it."""
    return getattr(module, "base", module)
