"""Experts <-> standard PEFT LoRA adapter folders.

Every expert is stored as a folder that ``peft.PeftModel.from_pretrained(
WhisperForConditionalGeneration.from_pretrained(base), folder)`` loads:
``adapter_config.json`` (written by PEFT's own ``LoraConfig``) and
``adapter_model.safetensors`` with PEFT's key names. A third file,
``lora_experts.json``, records the language and a fingerprint of the base
model (architecture numbers and a hash of a few frozen base tensors); PEFT
ignores it. An expert is refused on a Whisper with another fingerprint: the
same shapes with other weights would load silently and decode nonsense
(``strict=False`` loads it anyway, with a warning). Adapters trained
elsewhere with PEFT import the same way. Weights are read from safetensors
only: pickled ``.bin`` adapters are refused rather than unpickled.

Authors
 * speechbrain-lora-experts developers 2026
"""

import hashlib
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field

import torch

from speechbrain_lora_experts.attach import WhisperLoRAExperts, whisper_model

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
META_NAME = "lora_experts.json"
# Key prefix of a PeftModel over WhisperForConditionalGeneration.
PEFT_PREFIX = "base_model.model.model."
_KEY = re.compile(
    r"^(?:.*?\.)?(?P<layer>(?:encoder|decoder)\.layers\.\d+\.\S+?)"
    r"\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$"
)
_FINGERPRINT_KEYS = (
    "d_model",
    "encoder_layers",
    "decoder_layers",
    "encoder_attention_heads",
    "decoder_attention_heads",
    "encoder_ffn_dim",
    "decoder_ffn_dim",
    "vocab_size",
    "num_mel_bins",
)
# Base tensors no expert adapts, no merge changes and the Whisper wrapper
# does not slice: they identify the pretrained weights.
_WEIGHT_FINGERPRINT_TENSORS = (
    "encoder.conv1.weight",
    "encoder.conv2.weight",
    "encoder.layer_norm.weight",
    "decoder.embed_tokens.weight",
    "decoder.embed_positions.weight",
    "decoder.layer_norm.weight",
)
_WEIGHT_SAMPLES = 1024

logger = logging.getLogger(__name__)


class AdapterError(ValueError):
    """An adapter folder that cannot serve as an expert here.

    Example
    -------
    >>> issubclass(AdapterError, Exception)
    True
    """


@dataclass
class Adapter:
    """A LoRA adapter read from disk.

    Attributes
    ----------
    folder : str
        Where it was read from.
    weights : dict
        ``{layer_name: (A [r, in], B [out, r])}`` with WhisperModel names.
    ranks, alphas : dict
        Per-layer rank and alpha.
    use_rslora : bool
        Rank-stabilised scaling.
    dropout : float
        LoRA dropout it was trained with.
    metadata : dict
        Contents of ``lora_experts.json`` (empty for foreign adapters).

    Example
    -------
    >>> layers = ["decoder.layers.10.fc1", "decoder.layers.2.fc1"]
    >>> adapter = Adapter(
    ...     "experts/de",
    ...     weights={
    ...         layers[0]: (torch.zeros(4, 8), torch.zeros(8, 4)),
    ...         layers[1]: (torch.zeros(2, 8), torch.zeros(8, 2)),
    ...     },
    ...     ranks={layers[0]: 4, layers[1]: 2},
    ...     alphas={layers[0]: 8, layers[1]: 4},
    ...     metadata={"language": "de"},
    ... )
    >>> adapter.layer_names  # numeric layer order
    ['decoder.layers.2.fc1', 'decoder.layers.10.fc1']
    >>> adapter.rank, adapter.language
    (4, 'de')
    """

    folder: str
    weights: dict
    ranks: dict
    alphas: dict
    use_rslora: bool = False
    dropout: float = 0.0
    metadata: dict = field(default_factory=dict)

    @property
    def layer_names(self):
        """Adapted layers, in a stable order.

        Returns
        -------
        list of str
            Layer names, sorted.
        """
        return sorted(self.weights, key=_layer_sort_key)

    @property
    def rank(self):
        """The rank, when every layer has the same one (else the max).

        Returns
        -------
        int
            The LoRA rank.
        """
        return max(self.ranks.values())

    @property
    def language(self):
        """The language recorded with the expert, if any.

        Returns
        -------
        str or None
            The language code.
        """
        return self.metadata.get("language")


def base_fingerprint(model):
    """The architecture numbers and weight digest an expert must agree with.

    Arguments
    ---------
    model : torch.nn.Module
        SpeechBrain's or HF's Whisper.

    Returns
    -------
    dict
        Architecture numbers and the base-weight digest.

    Example
    -------
    >>> from speechbrain_lora_experts.testing.tiny_whisper import (
    ...     make_tiny_whisper,
    ... )
    >>> from transformers import WhisperModel
    >>> folder = make_tiny_whisper(getfixture("tmp_path") / "w")
    >>> fingerprint = base_fingerprint(WhisperModel.from_pretrained(folder))
    >>> fingerprint["d_model"], len(fingerprint["weights"])
    (64, 16)
    """
    model = whisper_model(model)
    config = model.config
    fingerprint = {key: getattr(config, key) for key in _FINGERPRINT_KEYS}
    fingerprint["weights"] = base_weights_digest(model)
    return fingerprint


def base_weights_digest(model):
    """Hash of evenly spaced values of a few frozen base tensors.

    Cheap (a few thousand values, whatever the model size) and equal for
    the same pretrained weights loaded in float32 anywhere.

    Arguments
    ---------
    model : torch.nn.Module
        SpeechBrain's or HF's Whisper.

    Returns
    -------
    str
        Hex digest.

    Example
    -------
    >>> from speechbrain_lora_experts.testing.tiny_whisper import (
    ...     tiny_whisper_model,
    ... )
    >>> def tiny(seed=0):
    ...     return tiny_whisper_model(seed=seed)
    >>> model = tiny(seed=0)
    >>> digest = base_weights_digest(model)
    >>> len(digest), digest == base_weights_digest(tiny(seed=0))
    (16, True)
    >>> digest == base_weights_digest(tiny(seed=1))  # other weights
    False
    >>> experts = WhisperLoRAExperts(model, expert_names=["de"], rank=2)
    >>> base_weights_digest(experts.model) == digest  # experts leave it be
    True
    """
    params = dict(whisper_model(model).named_parameters())
    digest = hashlib.sha256()
    for name in _WEIGHT_FINGERPRINT_TENSORS:
        flat = params[name].detach().reshape(-1)
        steps = min(_WEIGHT_SAMPLES, flat.numel())
        index = sample_positions(flat.numel(), steps)
        values = flat[index.to(flat.device)].float().cpu().numpy()
        digest.update(name.encode())
        digest.update(values.tobytes())
    return digest.hexdigest()[:16]


def sample_positions(numel, steps):
    """``steps`` evenly spread indices into a flat tensor of ``numel``.

    Integer arithmetic: float32 positions (``torch.linspace``) overshoot
    the last index of tensors beyond 2**24 values, such as whisper-base's
    token embedding.

    Arguments
    ---------
    numel : int
        Size of the flat tensor.
    steps : int
        How many positions (at most ``numel``).

    Returns
    -------
    torch.LongTensor
        First and last positions included.

    Example
    -------
    >>> sample_positions(26554880, 1024)[-1].item()
    26554879
    >>> sample_positions(10, 4).tolist()
    [0, 3, 6, 9]
    """
    index = torch.arange(steps, dtype=torch.long) * (numel - 1)
    return index // max(steps - 1, 1)


def save_expert(
    experts,
    expert,
    folder,
    base_model_name_or_path=None,
    language=None,
    metadata=None,
):
    """Writes one expert of ``experts`` as a PEFT LoRA adapter folder.

    Arguments
    ---------
    experts : WhisperLoRAExperts
        The pool holding the expert.
    expert : int or str
        Index or name of the expert.
    folder : str
        Output folder (created).
    base_model_name_or_path : str
        Recorded in ``adapter_config.json`` for PEFT users.
    language : str
        Language code recorded in ``lora_experts.json``.
    metadata : dict
        Extra JSON-serialisable information (training data, epochs, ...).

    Returns
    -------
    str
        The folder.

    Example
    -------
    >>> import tempfile
    >>> from speechbrain_lora_experts.testing.tiny_whisper import (
    ...     tiny_whisper_model,
    ... )
    >>> def tiny(seed=0):
    ...     return tiny_whisper_model(seed=seed)
    >>> experts = WhisperLoRAExperts(
    ...     tiny(), expert_names=["de", "es"], rank=2, targets=["q_proj"]
    ... )
    >>> tmp = tempfile.mkdtemp()
    >>> folder = save_expert(
    ...     experts,
    ...     "es",
    ...     os.path.join(tmp, "es"),
    ...     "openai/whisper-tiny",
    ...     language="es",
    ...     metadata={"epochs": 3},
    ... )
    >>> sorted(os.listdir(folder))
    ['adapter_config.json', 'adapter_model.safetensors', 'lora_experts.json']
    >>> with open(os.path.join(folder, CONFIG_NAME)) as f:
    ...     config = json.load(f)
    >>> config["r"], config["base_model_name_or_path"]
    (2, 'openai/whisper-tiny')
    >>> len(config["target_modules"])  # the q_proj of 3 attention blocks
    3
    >>> with open(os.path.join(folder, META_NAME)) as f:
    ...     meta = json.load(f)
    >>> meta["language"], meta["expert_name"], meta["epochs"]
    ('es', 'es', 3)
    >>> import shutil
    >>> shutil.rmtree(tmp)
    """
    from peft import LoraConfig
    from safetensors.torch import save_file

    index = experts._index(expert)
    tensors, ranks, alphas = {}, {}, {}
    for name, layer in experts.layers.items():
        lora = layer.experts[index]
        key = PEFT_PREFIX + name
        tensors[key + ".lora_A.weight"] = lora.lora_A.detach().cpu()
        tensors[key + ".lora_B.weight"] = lora.lora_B.detach().cpu()
        ranks["model." + name] = lora.rank
        alphas["model." + name] = lora.alpha
    rank = max(ranks.values(), key=list(ranks.values()).count)
    alpha = max(alphas.values(), key=list(alphas.values()).count)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=experts.config["dropout"],
        use_rslora=experts.config["use_rslora"],
        target_modules=sorted(ranks, key=_layer_sort_key),
        rank_pattern={k: v for k, v in ranks.items() if v != rank},
        alpha_pattern={k: v for k, v in alphas.items() if v != alpha},
        bias="none",
        base_model_name_or_path=base_model_name_or_path,
    )
    os.makedirs(folder, exist_ok=True)
    config.save_pretrained(folder)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, os.path.join(folder, WEIGHTS_NAME), {"format": "pt"})
    info = dict(metadata or {})
    info.update(
        format_version=1,
        language=language,
        expert_name=experts.expert_names[index],
        base_model=base_model_name_or_path,
        base_fingerprint=base_fingerprint(experts.model),
    )
    with open(os.path.join(folder, META_NAME), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2, sort_keys=True)
    return folder


def read_adapter(folder):
    """Reads a PEFT LoRA adapter folder (safetensors only).

    Arguments
    ---------
    folder : str
        Folder with ``adapter_config.json`` and ``adapter_model.safetensors``.

    Returns
    -------
    Adapter
        Its weights, ranks, alphas and metadata.

    Raises
    ------
    AdapterError
        Not a PEFT LoRA folder, a pickled ``.bin`` adapter, unsupported
        LoRA options or inconsistent shapes.

    Example
    -------
    >>> import shutil, tempfile
    >>> from speechbrain_lora_experts.testing.tiny_whisper import (
    ...     tiny_whisper_model,
    ... )
    >>> def tiny(seed=0):
    ...     return tiny_whisper_model(seed=seed)
    >>> experts = WhisperLoRAExperts(
    ...     tiny(), expert_names=["de"], rank=2, targets=["fc1"]
    ... )
    >>> tmp = tempfile.mkdtemp()
    >>> _ = save_expert(experts, "de", os.path.join(tmp, "de"), language="de")
    >>> adapter = read_adapter(os.path.join(tmp, "de"))
    >>> adapter.layer_names
    ['decoder.layers.0.fc1', 'encoder.layers.0.fc1']
    >>> adapter.rank, adapter.alphas["decoder.layers.0.fc1"], adapter.language
    (2, 32, 'de')
    >>> lora_a, lora_b = adapter.weights["decoder.layers.0.fc1"]
    >>> lora_a.shape, lora_b.shape
    (torch.Size([2, 8]), torch.Size([8, 2]))
    >>> read_adapter(tmp)
    Traceback (most recent call last):
    ...
    speechbrain_lora_experts.peft_io.AdapterError: .../adapter_config.json ...
    >>> shutil.rmtree(tmp)
    """
    from safetensors.torch import load_file

    folder = os.fspath(folder)
    config_path = os.path.join(folder, CONFIG_NAME)
    weights_path = os.path.join(folder, WEIGHTS_NAME)
    if not os.path.isfile(config_path):
        raise AdapterError(
            f"{config_path} not found: {folder} is not a PEFT adapter folder "
            "(expected adapter_config.json + adapter_model.safetensors)"
        )
    if not os.path.isfile(weights_path):
        if os.path.isfile(os.path.join(folder, "adapter_model.bin")):
            raise AdapterError(
                f"{folder} holds a pickled adapter_model.bin; pickles are "
                "never loaded. Re-save it with PeftModel.save_pretrained("
                "..., safe_serialization=True)"
            )
        raise AdapterError(f"{weights_path} not found")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    _check_supported(config, config_path)
    weights = _layer_weights(load_file(weights_path), weights_path)
    ranks, alphas = {}, {}
    for name, (lora_a, lora_b) in weights.items():
        rank = int(lora_a.shape[0])
        if lora_b.shape[1] != rank:
            raise AdapterError(
                f"{weights_path}: {name} has lora_A rank {rank} but lora_B "
                f"rank {lora_b.shape[1]}"
            )
        expected = _pattern_value(
            config.get("rank_pattern") or {}, name, config["r"]
        )
        if rank != expected:
            raise AdapterError(
                f"{weights_path}: {name} has rank {rank} but "
                f"{CONFIG_NAME} says r={expected}"
            )
        ranks[name] = rank
        alphas[name] = _pattern_value(
            config.get("alpha_pattern") or {}, name, config["lora_alpha"]
        )
    metadata = {}
    meta_path = os.path.join(folder, META_NAME)
    if os.path.isfile(meta_path):
        with open(meta_path, encoding="utf-8") as f:
            metadata = json.load(f)
    return Adapter(
        folder=folder,
        weights=weights,
        ranks=ranks,
        alphas=alphas,
        use_rslora=bool(config.get("use_rslora", False)),
        dropout=float(config.get("lora_dropout") or 0.0),
        metadata=metadata,
    )


def load_expert(experts, expert, adapter, strict=True):
    """Copies an adapter's weights into expert slot ``expert``.

    Arguments
    ---------
    experts : WhisperLoRAExperts
        The pool to fill.
    expert : int or str
        Target slot.
    adapter : str or Adapter
        Adapter folder or an already read ``Adapter``.
    strict : bool
        Require the adapter's layers, rank and base weights to equal the
        pool's; when False, pool layers the adapter lacks get a zero
        update and other base weights only warn.

    Returns
    -------
    Adapter
        The adapter that was loaded.

    Example
    -------
    >>> import shutil, tempfile
    >>> from speechbrain_lora_experts.testing.tiny_whisper import (
    ...     tiny_whisper_model,
    ... )
    >>> def tiny(seed=0):
    ...     return tiny_whisper_model(seed=seed)
    >>> trained = WhisperLoRAExperts(
    ...     tiny(), expert_names=["de"], rank=2, targets=["q_proj"]
    ... )
    >>> _ = [torch.nn.init.ones_(p) for p in trained.expert_parameters(0)]
    >>> tmp = tempfile.mkdtemp()
    >>> folder = save_expert(trained, "de", tmp)
    >>> pool = WhisperLoRAExperts(
    ...     tiny(), expert_names=["es", "de"], rank=2, targets=["q_proj"]
    ... )
    >>> load_expert(pool, "de", folder).rank
    2
    >>> loaded = pool.expert_parameters("de")
    >>> all(bool((p == 1).all()) for p in loaded)
    True
    >>> bool(pool.expert_parameters("es")[1].any())  # other slots untouched
    False
    >>> shutil.rmtree(tmp)
    """
    if not isinstance(adapter, Adapter):
        adapter = read_adapter(adapter)
    index = experts._index(expert)
    check_compatible(experts, adapter, strict=strict)
    with torch.no_grad():
        for name, layer in experts.layers.items():
            slot = layer.experts[index]
            if name not in adapter.weights:
                slot.lora_B.zero_()
                continue
            lora_a, lora_b = adapter.weights[name]
            if slot.rank != lora_a.shape[0]:
                # Non-strict import of another rank: resize the slot.
                slot.rank = int(lora_a.shape[0])
                slot.lora_A = torch.nn.Parameter(lora_a.clone())
                slot.lora_B = torch.nn.Parameter(lora_b.clone())
                slot.to(layer.base.weight)
            else:
                slot.lora_A.copy_(lora_a)
                slot.lora_B.copy_(lora_b)
            slot.alpha = adapter.alphas[name]
            slot.use_rslora = adapter.use_rslora
    return adapter


def check_compatible(experts, adapter, strict=True):
    """Raises ``AdapterError`` naming every mismatch with the pool.

    With ``strict=False`` other base weights (same architecture) and
    missing layers or another rank are accepted; other weights are then
    logged as a warning.

    Arguments
    ---------
    experts : WhisperLoRAExperts
        The pool the adapter would join.
    adapter : Adapter
        The adapter read from disk.
    strict : bool
        Refuse other base weights (else warn).

    Raises
    ------
    AdapterError
        Listing every mismatch.

    Example
    -------
    >>> import shutil, tempfile
    >>> from speechbrain_lora_experts.testing.tiny_whisper import (
    ...     tiny_whisper_model,
    ... )
    >>> def tiny(seed=0):
    ...     return tiny_whisper_model(seed=seed)
    >>> experts = WhisperLoRAExperts(
    ...     tiny(seed=0), expert_names=["de"], rank=2, targets=["q_proj"]
    ... )
    >>> tmp = tempfile.mkdtemp()
    >>> adapter = read_adapter(save_expert(experts, "de", tmp))
    >>> check_compatible(experts, adapter)  # its own pool: no error
    >>> other = WhisperLoRAExperts(
    ...     tiny(seed=1), expert_names=["de"], rank=4, targets=["q_proj"]
    ... )
    >>> try:
    ...     check_compatible(other, adapter)
    ... except AdapterError as err:
    ...     print(*str(err).splitlines()[1:], sep="\\n")
      - was trained on other base weights than this Whisper (same ...
      - has rank 2 but the pool expects lora_rank=4
    >>> check_compatible(other, adapter, strict=False)  # a warning only
    >>> shutil.rmtree(tmp)
    """
    problems = []
    recorded = adapter.metadata.get("base_fingerprint")
    if recorded:
        here = base_fingerprint(experts.model)
        diff = {
            k: (recorded[k], here[k])
            for k in here
            if k != "weights" and k in recorded and recorded[k] != here[k]
        }
        if diff:
            problems.append(
                "trained on another base model (expert vs this Whisper: "
                + ", ".join(f"{k} {a} vs {b}" for k, (a, b) in diff.items())
                + f"; expert base: {adapter.metadata.get('base_model')})"
            )
        elif recorded.get("weights") not in (None, here["weights"]):
            message = (
                "was trained on other base weights than this Whisper (same "
                f"architecture; weight fingerprint {recorded['weights']} vs "
                f"{here['weights']}; expert base: "
                f"{adapter.metadata.get('base_model')}). Load the Whisper "
                "it was trained on (fix whisper_hub), or pass strict=False "
                "to use it anyway"
            )
            if strict:
                problems.append(message)
            else:
                logger.warning("adapter %s %s", adapter.folder, message)
    extra = sorted(set(adapter.weights) - set(experts.layers))
    missing = sorted(set(experts.layers) - set(adapter.weights))
    if extra:
        problems.append(
            f"adapts layers the pool lacks: {_short(extra)}; attach with "
            "the adapter's targets (see attach_from_adapters)"
        )
    if missing and strict:
        problems.append(
            f"does not adapt pool layers: {_short(missing)} (targets differ)"
        )
    pool_rank = experts.config["rank"]
    if strict and adapter.rank != pool_rank:
        problems.append(
            f"has rank {adapter.rank} but the pool expects lora_rank="
            f"{pool_rank}"
        )
    for name in sorted(set(adapter.weights) & set(experts.layers)):
        layer = experts.layers[name]
        lora_a, lora_b = adapter.weights[name]
        if lora_a.shape[1] != layer.in_features:
            problems.append(
                f"{name}: lora_A expects {lora_a.shape[1]} inputs, the base "
                f"layer has {layer.in_features}"
            )
        if lora_b.shape[0] != layer.out_features:
            problems.append(
                f"{name}: lora_B gives {lora_b.shape[0]} outputs, the base "
                f"layer has {layer.out_features}"
            )
    if problems:
        raise AdapterError(
            f"adapter {adapter.folder} does not fit this expert pool:\n  - "
            + "\n  - ".join(problems)
        )


def attach_from_adapters(
    whisper, adapters, names=None, extra_experts=(), strict=True
):
    """Attaches a pool mirroring existing adapters and loads them.

    Arguments
    ---------
    whisper : torch.nn.Module
        SpeechBrain's Whisper (or an HF Whisper), modified in place.
    adapters : list of str or Adapter
        Adapter folders; all must adapt the same layers with the same rank.
    names : list of str
        Expert names (default: the recorded language, else the folder name).
    extra_experts : list of str
        Names of additional fresh (trainable) experts appended after the
        loaded ones, e.g. a distillation student.
    strict : bool
        Refuse experts recorded with other base weights (see
        :func:`check_compatible`).

    Returns
    -------
    WhisperLoRAExperts
        Loaded experts are frozen; extra experts are trainable.

    Example
    -------
    >>> import shutil, tempfile
    >>> from speechbrain_lora_experts.testing.tiny_whisper import (
    ...     tiny_whisper_model,
    ... )
    >>> def tiny(seed=0):
    ...     return tiny_whisper_model(seed=seed)
    >>> trained = WhisperLoRAExperts(
    ...     tiny(), expert_names=["de", "es"], rank=2, targets=["fc1"]
    ... )
    >>> tmp = tempfile.mkdtemp()
    >>> folders = [
    ...     save_expert(trained, lang, os.path.join(tmp, lang), language=lang)
    ...     for lang in ("de", "es")
    ... ]
    >>> pool = attach_from_adapters(tiny(), folders, extra_experts=["student"])
    >>> pool.expert_names, pool.config["rank"]
    (['de', 'es', 'student'], 2)
    >>> sorted(pool.layers)  # the adapters' layers
    ['decoder.layers.0.fc1', 'encoder.layers.0.fc1']
    >>> [pool.expert_parameters(n)[0].requires_grad for n in pool.expert_names]
    [False, False, True]
    >>> shutil.rmtree(tmp)
    """
    adapters = [
        a if isinstance(a, Adapter) else read_adapter(a) for a in adapters
    ]
    if not adapters:
        raise ValueError("attach_from_adapters needs at least one adapter")
    first = adapters[0]
    for other in adapters[1:]:
        if set(other.weights) != set(first.weights) or other.rank != first.rank:
            raise AdapterError(
                f"experts {first.folder} and {other.folder} differ in targets "
                f"or rank ({first.rank} vs {other.rank}); train all experts "
                "of a pool with the same lora_rank and targets"
            )
    if names is None:
        names = [
            a.language or os.path.basename(os.path.normpath(a.folder))
            for a in adapters
        ]
    experts = WhisperLoRAExperts(
        whisper,
        expert_names=list(names) + list(extra_experts),
        rank=first.rank,
        alpha=first.alphas[first.layer_names[0]],
        dropout=first.dropout,
        use_rslora=first.use_rslora,
        layer_names=first.layer_names,
    )
    for index, adapter in enumerate(adapters):
        load_expert(experts, index, adapter, strict=strict)
    experts.set_trainable(experts=range(len(adapters), experts.n_experts))
    return experts


def _check_supported(config, path):
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterError(
            f"{path}: peft_type {config.get('peft_type')} is not LoRA"
        )
    unsupported = {
        "use_dora": bool(config.get("use_dora")),
        "fan_in_fan_out": bool(config.get("fan_in_fan_out")),
        "bias": config.get("bias", "none") not in ("none", None),
        "modules_to_save": bool(config.get("modules_to_save")),
    }
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise AdapterError(
            f"{path}: unsupported LoRA options {bad}; experts are plain LoRA "
            "on Whisper's linear layers"
        )


def _layer_weights(tensors, path):
    pairs = {}
    for key, value in tensors.items():
        match = _KEY.match(key)
        if match is None:
            raise AdapterError(
                f"{path}: unexpected tensor {key!r}; only lora_A/lora_B "
                "weights of Whisper encoder/decoder layers are supported"
            )
        pairs.setdefault(match["layer"], {})[match["ab"]] = value
    weights = {}
    for name, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise AdapterError(f"{path}: {name} lacks lora_A or lora_B")
        weights[name] = (ab["A"].float(), ab["B"].float())
    if not weights:
        raise AdapterError(f"{path} holds no LoRA weights")
    return weights


def _pattern_value(pattern, name, default):
    # PEFT matches pattern keys as suffixes (or regexes) of module names.
    full = "model." + name
    for key, value in pattern.items():
        if full == key or full.endswith("." + key.lstrip(".")):
            return value
        if re.fullmatch(rf"(.*\.)?{key}", full):
            return value
    return default


def _layer_sort_key(name):
    parts = re.split(r"(\d+)", name)
    return [int(p) if p.isdigit() else p for p in parts]


def _short(names, limit=4):
    text = ", ".join(names[:limit])
    return text + (
        f" (+{len(names) - limit} more)" if len(names) > limit else ""
    )


def pool_folders(expert_pool, languages):
    """Adapter folders ``<expert_pool>/<language>`` for ``languages``.

    Raises ``AdapterError`` naming every language without an expert and the
    command that trains it.

    Arguments
    ---------
    expert_pool : str
        Folder holding one adapter folder per language.
    languages : list of str
        The languages needed.

    Returns
    -------
    list of str
        The folders, in ``languages`` order.

    Example
    -------
    >>> try:
    ...     pool_folders(str(getfixture("tmp_path")), ["de"])
    ... except AdapterError as e:
    ...     print("no expert for ['de']" in str(e))
    True
    """
    folders = [os.path.join(expert_pool, lang) for lang in languages]
    missing = [
        lang
        for lang, folder in zip(languages, folders)
        if not os.path.isfile(os.path.join(folder, CONFIG_NAME))
    ]
    if missing:
        present = (
            sorted(os.listdir(expert_pool))
            if os.path.isdir(expert_pool)
            else []
        )
        raise AdapterError(
            f"expert pool {expert_pool} has no expert for {missing} "
            f"(present: {present}); train one per language with "
            "`python train.py hparams/expert.yaml --language=<code>`"
        )
    return folders


def attach_pool(
    whisper, expert_pool, languages, extra_experts=(), strict=True, scale=1.0
):
    """Attaches the pool's experts for ``languages`` (frozen, in order).

    Arguments
    ---------
    whisper : torch.nn.Module
        SpeechBrain's Whisper, modified in place.
    expert_pool : str
        Folder holding one adapter folder per language.
    languages : list of str
        Target languages; expert i serves ``languages[i]``.
    extra_experts : list of str
        Fresh trainable slots appended (e.g. ``["student"]``).
    strict : bool
        Refuse experts recorded with other base weights.
    scale : float
        Multiplier of each language expert's update (its alpha), > 0: with
        a shared adapter merged at ``1 - scale`` (``merge_shared_adapter``)
        each language's model is a weight average of the two (an expert
        soup). A pool exported afterwards carries the scaled alpha.

    Returns
    -------
    WhisperLoRAExperts
        The pool, expert i loaded from ``<expert_pool>/<languages[i]>``.

    Example
    -------
    >>> import shutil, tempfile
    >>> from speechbrain_lora_experts.testing.tiny_whisper import (
    ...     tiny_whisper_model,
    ... )
    >>> def tiny(seed=0):
    ...     return tiny_whisper_model(seed=seed)
    >>> trained = WhisperLoRAExperts(
    ...     tiny(), expert_names=["de", "es"], rank=2, targets=["fc1"]
    ... )
    >>> _ = [torch.nn.init.ones_(p) for p in trained.expert_parameters("es")]
    >>> expert_pool = tempfile.mkdtemp()
    >>> for lang in ("de", "es"):
    ...     _ = save_expert(
    ...         trained, lang, os.path.join(expert_pool, lang), language=lang
    ...     )
    >>> pool = attach_pool(tiny(), expert_pool, ["es", "de"])
    >>> pool.expert_names
    ['es', 'de']
    >>> [
    ...     all(bool((p == 1).all()) for p in pool.expert_parameters(lang))
    ...     for lang in pool.expert_names
    ... ]
    [True, False]
    >>> _ = shutil.copytree(
    ...     os.path.join(expert_pool, "de"), os.path.join(expert_pool, "it")
    ... )
    >>> halved = attach_pool(tiny(), expert_pool, ["es"], scale=0.5)
    >>> layer = next(iter(halved.layers.values()))
    >>> full = next(iter(pool.layers.values()))
    >>> torch.allclose(layer.delta_weight(0), full.delta_weight(0) / 2)
    True
    >>> attach_pool(tiny(), expert_pool, ["it"])
    Traceback (most recent call last):
    ...
    speechbrain_lora_experts.peft_io.AdapterError: ... for 'de', not 'it'
    >>> shutil.rmtree(expert_pool)
    """
    scale = adapter_scale(scale, "expert_scale")
    adapters = [read_adapter(f) for f in pool_folders(expert_pool, languages)]
    for lang, adapter in zip(languages, adapters):
        if adapter.language not in (None, lang):
            raise AdapterError(
                f"{adapter.folder} holds an expert for {adapter.language!r}, "
                f"not {lang!r}"
            )
    experts = attach_from_adapters(
        whisper,
        adapters,
        names=list(languages),
        extra_experts=extra_experts,
        strict=strict,
    )
    if scale != 1.0:
        for layer in experts.layers.values():
            for slot in list(layer.experts)[: len(languages)]:
                slot.alpha = slot.alpha * scale
    return experts


def adapter_scale(value, option):
    """``value`` as a multiplier of an adapter's update, or a clear error.

    Arguments
    ---------
    value : float
        The multiplier asked for.
    option : str
        Its name, for the message (e.g. ``shared_adapter_scale``).

    Returns
    -------
    float
        ``value``, finite and > 0.

    Example
    -------
    >>> adapter_scale(0.5, "expert_scale")
    0.5
    >>> adapter_scale(0, "expert_scale")
    Traceback (most recent call last):
    ...
    ValueError: expert_scale must be a finite number > 0, got 0; ...
    """
    try:
        scale = float(value)
    except (TypeError, ValueError):
        scale = math.nan
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(
            f"{option} must be a finite number > 0, got {value!r}; 1.0 "
            "applies the adapter as trained (to leave it out, do not load it)"
        )
    return scale
