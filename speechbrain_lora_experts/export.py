"""What a finished training run leaves behind.

* the expert recipe adds its expert to the pool: ``<expert_pool>/<lang>/``
  (a PEFT adapter folder);
* every run writes a model folder, ``<output_folder>/model/``: its experts
  (or student) as PEFT folders under ``experts/``, the fusion gate as
  safetensors, fully finetuned weights as an HF Whisper folder,
  ``model.json`` saying how to assemble them, ``hyperparams.yaml``, the
  HyperPyYAML that ``speechbrain_lora_experts.inference.LoRAExpertsASR
  .from_hparams`` builds the model from, and ``custom_interface.py``, the
  module SpeechBrain's ``foreign_class`` imports the interface from (what a
  model card on the hub uses). The yaml holds no path: its pretrainer reads
  every file relative to the source it is loaded from, so the folder can be
  moved, copied or uploaded as it is.

``export_model`` writes a model folder from the objects themselves (no
Brain needed); ``export_run`` calls it with a finished run's hparams. The
``hyperparams.yaml`` is one of the templates of the top-level ``hparams/``
folder with the values of its "filled by export" block replaced by the
run's (``write_hyperparams``), so it stays a readable SpeechBrain yaml.

Authors
 * speechbrain-lora-experts developers 2026
"""

import json
import logging
import os
import re
import shutil

from speechbrain_lora_experts.language_rescoring import (
    check_confidence,
    check_top_k,
)
from speechbrain_lora_experts.languages import canonical_language
from speechbrain_lora_experts.peft_io import save_expert
from speechbrain_lora_experts.shared_adapter import (
    LANGUAGE_STEP_FILE,
    write_language_step,
)

logger = logging.getLogger(__name__)
MODEL_INFO = "model.json"
HPARAMS_FILE = "hyperparams.yaml"
GATE_WEIGHTS = "gate.safetensors"
TOKEN_GATE_WEIGHTS = "token_gates.safetensors"
EXPERTS_DIR = "experts"
WHISPER_DIR = "whisper"
SHARED_ADAPTER_DIR = "shared_adapter"
CUSTOM_INTERFACE = "custom_interface.py"
FORMAT_VERSION = 1
#: ``model.json["lora"]`` entries, written to the yaml as ``lora_<key>``.
LORA_KEYS = (
    "rank",
    "alpha",
    "use_rslora",
    "targets",
    "parts",
    "layers",
    "layer_names",
)
SYSTEMS = ("expert", "multilingual_lora", "full_finetune", "fuse", "distill")
FUSIONS = ("gate", "oracle", "linear", "ties")


def _template_dir():
    """The installed copy of ``hparams/``, else a checkout's top level.

    ``setup.py`` ships the top-level folder as the package data
    ``speechbrain_lora_experts/hparams``; an editable install or a source
    tree reads the top-level folder itself.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    installed = os.path.join(here, "hparams")
    if os.path.isdir(installed):
        return installed
    return os.path.join(os.path.dirname(here), "hparams")


#: Where the hyperparams templates live (top-level ``hparams/``).
TEMPLATE_DIR = _template_dir()

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def export_model(
    folder,
    system,
    languages,
    whisper_hub,
    language_aware=True,
    encoder_window_s=30.0,
    window_bucket_s=None,
    experts=None,
    expert_names=None,
    gate=None,
    fusion="gate",
    ties_density=0.2,
    lid_source="gate",
    whisper=None,
    whisper_save_folder="pretrained_models",
    beam_size=1,
    metadata=None,
    shared_adapter=None,
    shared_adapter_scale=1.0,
    shared_adapter_lid_scale=None,
    lid_rescore_top_k=1,
    lid_rescore_confidence=None,
):
    """Writes a model folder that ``LoRAExpertsASR.from_hparams`` loads.

    Arguments
    ---------
    folder : str
        Output folder (created; files of an earlier export are replaced).
    system : str
        ``expert``, ``multilingual_lora``, ``distill``, ``fuse`` or
        ``full_finetune``. An ``expert`` model holding several experts is
        an expert pool: each utterance is routed to its language's expert.
    languages : list of str
        The model's languages (the fusion gate's order).
    whisper_hub : str
        The base Whisper: a hub id, kept as is, or a local folder, stored
        as an absolute path (the yaml is read from another directory).
    language_aware : bool
        The scenario the model was trained in (recorded).
    encoder_window_s : float
        Encoder window the model was trained with.
    window_bucket_s : float, optional
        Cut-window bucket the model was trained with (None: fixed
        windows); the interface decodes with the same.
    experts : WhisperLoRAExperts
        The pool (every system but ``full_finetune``). With token-level
        fusion its token gates are exported too.
    expert_names : list of str
        Experts to export (default: ``["student"]`` for ``distill``, every
        expert otherwise).
    gate : UtteranceGate
        The utterance-level fusion gate (``fuse`` without token gates).
    fusion : str
        How a ``fuse`` model combines its experts: ``gate`` (the trained
        utterance gate or token gates), ``oracle`` (each utterance through
        its language's expert) or a static merge of all experts into the
        weights, ``linear`` or ``ties`` (with ``ties_density``).
    ties_density : float
        Share of each expert update TIES keeps.
    lid_source : str
        Fusion, agnostic scenario: ``gate`` or ``decoder`` names the
        language.
    whisper : speechbrain_lora_experts.whisper.Whisper
        The finetuned model (``full_finetune`` only).
    whisper_save_folder : str
        Download cache for a hub ``whisper_hub``.
    beam_size : int
        Default beam size of the pretrained interface (1: greedy).
    metadata : dict
        Extra JSON-serialisable information stored with every expert.
    shared_adapter : str
        PEFT adapter folder merged into the base before the experts
        (shared + expert); shipped in ``shared_adapter/``.
    shared_adapter_scale : float
        The multiplier it was merged with; the shipped copy's alpha
        carries it.
    shared_adapter_lid_scale : float, optional
        Its multiplier in the step that names the language (an agnostic
        soup routed by the full multilingual LoRA); shipped beside the
        copy, relative to it, in ``language_step.json``.
    lid_rescore_top_k : int
        ``multilingual_lora``, ``distill`` and ``fuse`` with ``oracle``
        fusion: languages the interface transcribes per utterance when it
        names the language (the most probable language and transcript pair
        is kept; see ``language_rescoring``).
    lid_rescore_confidence : float, optional
        With ``lid_rescore_top_k`` > 1: utterances whose first language is
        at least this probable keep it (None: all are rescored).

    Returns
    -------
    str
        The folder.

    Example
    -------
    >>> import tempfile
    >>> from speechbrain_lora_experts.attach import WhisperLoRAExperts
    >>> from speechbrain_lora_experts.testing.tiny_whisper import (
    ...     make_tiny_whisper,
    ... )
    >>> from speechbrain_lora_experts.whisper import Whisper
    >>> hub = make_tiny_whisper(tempfile.mkdtemp())
    >>> whisper = Whisper(hub, tempfile.mkdtemp())
    >>> pool = WhisperLoRAExperts(whisper, expert_names=["de", "es"], rank=2)
    >>> out = export_model(
    ...     tempfile.mkdtemp(), "expert", ["de", "es"], hub, experts=pool
    ... )
    >>> sorted(os.listdir(out))
    ['custom_interface.py', 'experts', 'hyperparams.yaml', 'model.json']
    """
    if system not in SYSTEMS:
        raise ValueError(f"unknown system {system!r}; one of {SYSTEMS}")
    if system == "fuse" and fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}; got {fusion!r}")
    if gate is not None and (system != "fuse" or fusion != "gate"):
        raise ValueError(f"a {system} model with fusion={fusion} has no gate")
    languages = [canonical_language(lang) for lang in languages]
    if os.path.isdir(whisper_hub):
        whisper_hub = os.path.abspath(whisper_hub)
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    # Leftovers of an earlier export would not match the new model.json.
    for stale in (GATE_WEIGHTS, TOKEN_GATE_WEIGHTS):
        if os.path.exists(os.path.join(folder, stale)):
            os.remove(os.path.join(folder, stale))
    if os.path.isdir(os.path.join(folder, SHARED_ADAPTER_DIR)):
        shutil.rmtree(os.path.join(folder, SHARED_ADAPTER_DIR))
    info = {
        "format_version": FORMAT_VERSION,
        "system": system,
        "languages": languages,
        "language_aware": bool(language_aware),
        "whisper_hub": whisper_hub,
        "whisper_save_folder": os.fspath(whisper_save_folder),
        "encoder_window_s": float(encoder_window_s),
        "window_bucket_s": (
            None if window_bucket_s is None else float(window_bucket_s)
        ),
        "beam_size": int(beam_size),
        "experts": [],
    }
    files = []
    if system == "full_finetune":
        if whisper is None:
            raise ValueError("a full_finetune model needs whisper=")
        files += _save_whisper(whisper, os.path.join(folder, WHISPER_DIR))
        info["whisper_weights"] = WHISPER_DIR
    else:
        if experts is None:
            raise ValueError(f"a {system} model needs experts=")
        if expert_names is None:
            expert_names = (
                ["student"] if system == "distill" else experts.expert_names
            )
        for name in expert_names:
            if not _SAFE_NAME.match(str(name)):
                raise ValueError(f"expert name {name!r} is not a folder name")
            sub = os.path.join(folder, EXPERTS_DIR, name)
            save_expert(
                experts,
                name,
                sub,
                whisper_hub,
                language=_language_of(name, languages),
                metadata=metadata,
            )
            files += [
                f"{EXPERTS_DIR}/{name}/{f}" for f in sorted(os.listdir(sub))
            ]
            info["experts"].append(name)
        info["lora"] = lora_info(experts)
    if system == "fuse":
        info["fusion"] = fusion
        names = [_language_of(name, languages) for name in info["experts"]]
        if names != languages:
            raise ValueError(
                "a fuse model needs one expert per language, named like "
                f"the languages, in order (experts {info['experts']}, "
                f"languages {languages})"
            )
        if fusion == "gate":
            info["lid_source"] = lid_source
            files.append(_save_gates(folder, info, experts, gate))
        elif fusion == "ties":
            info["ties_density"] = float(ties_density)
    # Models that name the language and transcribe with it: one LoRA, or
    # a pool routed by it.
    names_language = system in ("multilingual_lora", "distill") or (
        system == "fuse" and fusion == "oracle"
    )
    if names_language and lid_rescore_top_k != 1:
        info["lid_rescore_top_k"] = check_top_k(lid_rescore_top_k, languages)
        if lid_rescore_confidence is not None:
            info["lid_rescore_confidence"] = check_confidence(
                lid_rescore_confidence
            )
    if shared_adapter is not None:
        # Residual experts only make sense on the base they were trained
        # on: the shared LoRA travels with them and is merged at load.
        files += _copy_shared_adapter(
            shared_adapter,
            folder,
            shared_adapter_scale,
            shared_adapter_lid_scale,
        )
        info["shared_adapter"] = SHARED_ADAPTER_DIR
    info["files"] = files + [CUSTOM_INTERFACE]
    with open(os.path.join(folder, MODEL_INFO), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
    write_hyperparams(folder, info)
    return folder


def _copy_shared_adapter(source, folder, scale=1.0, lid_scale=None):
    """Copies a PEFT adapter folder to ``<folder>/shared_adapter/``.

    A ``scale`` other than 1 is written into the copy's alpha, so the copy
    is the update that was merged: the interface, and PEFT's
    ``merge_and_unload``, merge it as it is. A ``lid_scale`` is recorded
    relative to the copy (``language_step.json``).
    """
    target = os.path.join(folder, SHARED_ADAPTER_DIR)
    if os.path.isdir(target):
        shutil.rmtree(target)
    os.makedirs(target)
    copied = []
    for name in sorted(os.listdir(source)):
        if name == LANGUAGE_STEP_FILE:
            continue  # a re-export records its own below
        if name.endswith((".json", ".safetensors")):
            shutil.copy2(os.path.join(source, name), target)
            copied.append(f"{SHARED_ADAPTER_DIR}/{name}")
    if scale != 1.0:
        config_path = os.path.join(target, "adapter_config.json")
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
        config["lora_alpha"] = config["lora_alpha"] * scale
        config["alpha_pattern"] = {
            k: v * scale for k, v in (config.get("alpha_pattern") or {}).items()
        }
        with open(config_path, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
    if lid_scale is not None and lid_scale != scale:
        write_language_step(target, lid_scale / scale)
        copied.append(f"{SHARED_ADAPTER_DIR}/{LANGUAGE_STEP_FILE}")
    return copied


def lora_info(experts):
    """The pool's shape, as ``hyperparams.yaml`` rebuilds it before loading.

    The adapted layers are written as ``targets``/``parts``/``layers`` (see
    ``attach.select_targets``) when those select exactly the pool's layers,
    else as the exact list ``layer_names``.

    Arguments
    ---------
    experts : WhisperLoRAExperts
        The pool.

    Returns
    -------
    dict
        ``rank``, ``alpha``, ``use_rslora``, ``targets``, ``parts``,
        ``layers``, ``layer_names`` (JSON-serialisable).

    Example
    -------
    >>> import tempfile
    >>> from speechbrain_lora_experts.attach import WhisperLoRAExperts
    >>> from speechbrain_lora_experts.testing.tiny_whisper import (
    ...     make_tiny_whisper,
    ... )
    >>> from speechbrain_lora_experts.whisper import Whisper
    >>> whisper = Whisper(
    ...     make_tiny_whisper(tempfile.mkdtemp()), tempfile.mkdtemp()
    ... )
    >>> pool = WhisperLoRAExperts(
    ...     whisper, rank=2, targets=["q_proj"], parts=["decoder"]
    ... )
    >>> info = lora_info(pool)
    >>> info["targets"], info["parts"], info["layers"], info["layer_names"]
    (['q_proj'], ['decoder'], None, None)
    """
    from speechbrain_lora_experts.attach import select_targets

    names = list(experts.layers)
    specs = _layer_specs(names)
    targets, parts, _ = specs[0]
    info = {
        "rank": int(experts.config["rank"]),
        "alpha": experts.config["alpha"],
        "use_rslora": bool(experts.config["use_rslora"]),
        # Unused beside layer_names, but valid for the pool's constructor.
        "targets": targets,
        "parts": parts,
        "layers": None,
        "layer_names": names,
    }
    # The pool's layers are wrapped now: select among the names they had.
    candidates = _LinearNames(experts.model)
    for targets, parts, layers in specs:
        try:
            chosen = select_targets(candidates, targets, parts, layers)
        except ValueError:
            continue
        if chosen == names:
            info.update(
                targets=targets, parts=parts, layers=layers, layer_names=None
            )
            break
    return info


class _LinearNames:
    """The linear layers of a Whisper, wrapped or not, as select_targets
    sees those of an unadapted one."""

    def __init__(self, model):
        from torch import nn

        from speechbrain_lora_experts.experts import LoRAExpertsLinear

        self._linear = nn.Linear(1, 1)
        self._names = [
            name
            for name, module in model.named_modules()
            if isinstance(module, (nn.Linear, LoRAExpertsLinear))
        ]

    def named_modules(self):
        """``(name, nn.Linear)`` pairs, in module order."""
        return ((name, self._linear) for name in self._names)


def _layer_specs(names):
    """Short ``(targets, parts, layers)`` candidates for ``names``."""
    plain, qualified, indices = set(), set(), {}
    for name in names:
        part, _, index, *rest = name.split(".")
        plain.add(rest[-1])
        qualified.add(".".join([part] + rest))
        indices.setdefault(part, set()).add(int(index))
    parts = [p for p in ("encoder", "decoder") if p in indices]
    layers = {part: _ranges(sorted(indices[part])) for part in parts}
    if len(set(layers.values())) == 1:
        layers = next(iter(layers.values()))
    specs = []
    for targets in (sorted(plain), sorted(qualified)):
        specs.append((targets, parts, None))
        specs.append((targets, parts, layers))
    return specs


def _ranges(indices):
    """``[0, 1, 2, 5]`` -> ``"0-2,5"`` (``attach.parse_layers`` syntax)."""
    runs = []
    for index in indices:
        if runs and index == runs[-1][1] + 1:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    return ",".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs)


def _save_whisper(whisper, whisper_dir):
    """HF folder of a finetuned Whisper (safetensors), listed."""
    whisper.model.save_pretrained(whisper_dir, safe_serialization=True)
    whisper.tokenizer.save_pretrained(whisper_dir)
    whisper.feature_extractor.save_pretrained(whisper_dir)
    return [f"{WHISPER_DIR}/{f}" for f in sorted(os.listdir(whisper_dir))]


def _save_gates(folder, info, experts, gate):
    """Writes the utterance gate or the token gates; returns the file."""
    from safetensors.torch import save_file

    if gate is not None:
        module, name = gate, GATE_WEIGHTS
        info["gate_level"] = "utterance"
        info["gate"] = {
            "hidden_size": gate.hidden.out_features,
            "temperature": gate.temperature,
            "top_k": gate.top_k,
            "language_aware": gate.language_aware,
            "features": gate.features,
            "base_pass_bucket_s": gate.base_pass_bucket_s,
        }
    elif experts.token_gates:
        module, name = experts.token_gates, TOKEN_GATE_WEIGHTS
        first = next(iter(experts.layers.values()))
        info["gate_level"] = "token"
        info["gate"] = {"temperature": first.token_gate_temperature}
    else:
        raise ValueError("a fuse model needs gate= or token gates")
    state = {
        k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()
    }
    save_file(state, os.path.join(folder, name))
    return name


def _language_of(name, languages):
    """The model language an expert name stands for, or None."""
    try:
        code = canonical_language(name)
    except ValueError:  # "student", "multilingual"
        return None
    return code if code in languages else None


def template_for(info):
    """Name of the ``hparams/`` template that builds the model of ``info``.

    Arguments
    ---------
    info : dict
        ``model.json`` of a run (``system``, ``fusion``, ...).

    Returns
    -------
    str
        A file name in ``hparams/``.

    Example
    -------
    >>> template_for({"system": "full_finetune"})
    'full_finetune_asr.yaml'
    """
    if info["system"] == "full_finetune":
        return "full_finetune_asr.yaml"
    if info["system"] == "fuse" and info.get("fusion", "gate") == "gate":
        if info.get("gate_level", "utterance") == "token":
            return "token_fusion_asr.yaml"
        return "fusion_asr.yaml"
    return "lora_experts_asr.yaml"


def hyperparams_values(info):
    """The values ``write_hyperparams`` fills into the template.

    Arguments
    ---------
    info : dict
        Contents of ``model.json``.

    Returns
    -------
    dict
        Template key -> YAML text of the value.

    Example
    -------
    >>> info = {
    ...     "system": "expert",
    ...     "languages": ["de", "es"],
    ...     "language_aware": True,
    ...     "whisper_hub": "openai/whisper-small",
    ...     "encoder_window_s": 30.0,
    ...     "experts": ["de", "es"],
    ...     "lora": {
    ...         "rank": 8,
    ...         "alpha": 16,
    ...         "use_rslora": False,
    ...         "targets": ["q_proj", "v_proj"],
    ...         "parts": ["decoder"],
    ...         "layers": None,
    ...         "layer_names": None,
    ...     },
    ... }
    >>> values = hyperparams_values(info)
    >>> values["languages"], values["lora_targets"], values["lora_layers"]
    ('["de", "es"]', '["q_proj", "v_proj"]', 'null')
    >>> values["beam_size"], values["shared_adapter"]  # defaults
    ('1', 'false')
    >>> del info["lora"]  # a model.json written by an older version
    >>> hyperparams_values(info)
    Traceback (most recent call last):
    ...
    ValueError: model.json has no 'lora' entry (exported by an older ...
    """
    values = {
        "system": info["system"],
        "languages": info["languages"],
        "language_aware": info["language_aware"],
        "whisper_hub": info["whisper_hub"],
        "whisper_save_folder": info.get(
            "whisper_save_folder", "pretrained_models"
        ),
        "encoder_window_s": info["encoder_window_s"],
        "window_bucket_s": info.get("window_bucket_s"),
        "beam_size": info.get("beam_size", 1),
    }
    if info["system"] != "full_finetune":
        values["shared_adapter"] = bool(info.get("shared_adapter"))
    values = {key: json.dumps(value) for key, value in values.items()}
    if info["system"] != "full_finetune":
        values["expert_names"] = json.dumps(info["experts"])
        lora = info.get("lora")
        if lora is None:
            raise ValueError(
                f"{MODEL_INFO} has no 'lora' entry (exported by an older "
                "version); write_hyperparams(folder) reads it from the "
                "experts' adapter folders"
            )
        for key in LORA_KEYS:
            values[f"lora_{key}"] = json.dumps(lora[key])
    fusion = info.get("fusion", "gate")
    if template_for(info) == "lora_experts_asr.yaml":
        values["lid_rescore_top_k"] = json.dumps(
            info.get("lid_rescore_top_k", 1)
        )
        values["lid_rescore_confidence"] = json.dumps(
            info.get("lid_rescore_confidence")
        )
    if info["system"] == "fuse" and fusion != "gate":
        values["fusion"] = json.dumps(fusion)
        values["ties_density"] = json.dumps(info.get("ties_density", 0.2))
    elif info["system"] == "fuse":
        gate = info["gate"]
        values["gate_temperature"] = json.dumps(gate["temperature"])
        lid_source = info.get("lid_source", "gate")
        if info.get("gate_level", "utterance") == "token":
            # Token gates give no utterance logits to name the language.
            lid_source = "decoder"
        values["lid_source"] = json.dumps(lid_source)
        if info.get("gate_level", "utterance") == "utterance":
            values["gate_hidden_size"] = json.dumps(gate["hidden_size"])
            values["gate_top_k"] = json.dumps(gate["top_k"])
            values["gate_language_aware"] = json.dumps(gate["language_aware"])
            # Models exported before the option existed read layer inputs.
            values["gate_features"] = json.dumps(
                gate.get("features", "first_adapted")
            )
            # Before the option: the pass covered the whole window.
            values["gate_base_pass_bucket_s"] = json.dumps(
                gate.get("base_pass_bucket_s")
            )
    return values


def fill_template(text, values):
    """Replaces the value of each top-level ``key:`` line of ``text``.

    Arguments
    ---------
    text : str
        A HyperPyYAML template; every key of ``values`` must appear exactly
        once as a top-level ``key: value`` line.
    values : dict
        Key -> YAML text (flow style, one line).

    Returns
    -------
    str

    Example
    -------
    >>> fill_template("a: 1\\nb: [x]  # note\\n", {"b": '["de", "es"]'})
    'a: 1\\nb: ["de", "es"]\\n'
    """
    for key, value in values.items():
        pattern = re.compile(rf"^{re.escape(key)}:[^\n]*$", re.MULTILINE)
        if len(pattern.findall(text)) != 1:
            raise ValueError(f"template needs exactly one line '{key}: ...'")
        text = pattern.sub(lambda _: f"{key}: {value}", text)
    return text


def write_hyperparams(folder, info=None):
    """Writes ``<folder>/hyperparams.yaml`` from ``model.json``.

    Also writes ``custom_interface.py`` (for ``foreign_class``), and
    upgrades a model folder exported by an older version (no yaml, or a
    yaml with a ``model_folder`` placeholder): ``write_hyperparams(folder)``
    reads its ``model.json`` and completes it.

    Arguments
    ---------
    folder : str
        The model folder.
    info : dict
        Contents of ``model.json`` (read from the folder when None).

    Returns
    -------
    str
        Path of the yaml.

    Example
    -------
    >>> import shutil, tempfile
    >>> info = {
    ...     "system": "expert",
    ...     "languages": ["de", "es"],
    ...     "language_aware": True,
    ...     "whisper_hub": "openai/whisper-small",
    ...     "encoder_window_s": 30.0,
    ...     "experts": ["de", "es"],
    ...     "lora": {
    ...         "rank": 8,
    ...         "alpha": 16,
    ...         "use_rslora": False,
    ...         "targets": ["q_proj", "v_proj"],
    ...         "parts": ["decoder"],
    ...         "layers": None,
    ...         "layer_names": None,
    ...     },
    ... }
    >>> folder = tempfile.mkdtemp()
    >>> path = write_hyperparams(folder, info)
    >>> sorted(os.listdir(folder))
    ['custom_interface.py', 'hyperparams.yaml']
    >>> with open(path, encoding="utf-8") as f:
    ...     lines = f.read().splitlines()
    >>> [line for line in lines if line.startswith(("languages:", "lora_r"))]
    ['languages: ["de", "es"]', 'lora_rank: 8']
    >>> with open(os.path.join(folder, MODEL_INFO), "w") as f:
    ...     json.dump(info, f)
    >>> write_hyperparams(folder) == path  # info read from model.json
    True
    >>> shutil.rmtree(folder)
    """
    if info is None:
        info = _upgrade_info(folder)
    name = template_for(info)
    path = os.path.join(TEMPLATE_DIR, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"hyperparams template {path} not found; it ships in the "
            "repository's top-level hparams/ folder and in the installed "
            "package (reinstall speechbrain-lora-experts)"
        )
    with open(path, encoding="utf-8") as f:
        text = fill_template(f.read(), hyperparams_values(info))
    header = (
        f"# Written by speechbrain_lora_experts.export from hparams/{name}.\n"
    )
    out = os.path.join(folder, HPARAMS_FILE)
    with open(out, "w", encoding="utf-8") as f:
        f.write(header + text)
    with open(
        os.path.join(folder, CUSTOM_INTERFACE), "w", encoding="utf-8"
    ) as f:
        f.write(_CUSTOM_INTERFACE_TEXT)
    return out


_CUSTOM_INTERFACE_TEXT = '''\
"""The pretrained interface of this model folder, for foreign_class.

A model card loads the folder (a local path or a hub id) with SpeechBrain's
own loader; it needs ``pip install speechbrain-lora-experts``::

    from speechbrain.inference.interfaces import foreign_class

    asr = foreign_class(
        source="<this folder or hub id>",
        pymodule_file="custom_interface.py",
        classname="LoRAExpertsASR",
    )
    words, tokens = asr.transcribe_batch(wavs, wav_lens)
"""

from speechbrain_lora_experts.inference import LoRAExpertsASR

__all__ = ["LoRAExpertsASR"]
'''


def _upgrade_info(folder):
    """``model.json`` of ``folder``, completed for this version.

    Folders exported before the yaml rebuilt the pool itself lack the
    ``lora`` entry (read back from the first expert's adapter) and the
    ``custom_interface.py`` file entry; both are added and saved.
    """
    path = os.path.join(folder, MODEL_INFO)
    with open(path, encoding="utf-8") as f:
        info = json.load(f)
    changed = False
    if info["system"] != "full_finetune" and "lora" not in info:
        from speechbrain_lora_experts.peft_io import read_adapter

        adapter = read_adapter(
            os.path.join(folder, EXPERTS_DIR, info["experts"][0])
        )
        targets, parts, _ = _layer_specs(adapter.layer_names)[0]
        info["lora"] = {
            "rank": adapter.rank,
            "alpha": adapter.alphas[adapter.layer_names[0]],
            "use_rslora": adapter.use_rslora,
            "targets": targets,
            "parts": parts,
            "layers": None,
            "layer_names": adapter.layer_names,
        }
        changed = True
    if info.get("files") and CUSTOM_INTERFACE not in info["files"]:
        info["files"].append(CUSTOM_INTERFACE)
        changed = True
    if changed:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(info, f, indent=2)
    return info


def export_run(brain):
    """Writes the pool entry (expert runs) and ``<output_folder>/model``.

    Arguments
    ---------
    brain : WhisperExpertsBrain (the recipe's train.py)
        A finished run.

    Returns
    -------
    str
        The model folder.

    Example
    -------
    >>> import shutil, tempfile
    >>> from types import SimpleNamespace
    >>> from speechbrain_lora_experts.testing.tiny_whisper import (
    ...     tiny_whisper_model,
    ... )
    >>> from speechbrain_lora_experts.attach import WhisperLoRAExperts
    >>> whisper = tiny_whisper_model()
    >>> tmp = tempfile.mkdtemp()
    >>> hparams = SimpleNamespace(  # what an expert run's yaml provides
    ...     system="expert",
    ...     languages=["de"],
    ...     whisper=whisper,
    ...     experts=WhisperLoRAExperts(whisper, expert_names=["de"], rank=2),
    ...     whisper_hub="openai/whisper-tiny",
    ...     expert_pool=os.path.join(tmp, "pool"),
    ...     output_folder=os.path.join(tmp, "run"),
    ...     language_aware=True,
    ...     encoder_window_s=30.0,
    ...     epoch_counter=SimpleNamespace(current=2),
    ... )
    >>> folder = export_run(SimpleNamespace(hparams=hparams))
    >>> folder == os.path.join(tmp, "run", "model")
    True
    >>> sorted(os.listdir(os.path.join(tmp, "pool", "de")))
    ['adapter_config.json', 'adapter_model.safetensors', 'lora_experts.json']
    >>> with open(os.path.join(folder, MODEL_INFO), encoding="utf-8") as f:
    ...     info = json.load(f)
    >>> info["system"], info["experts"], info["lora"]["rank"]
    ('expert', ['de'], 2)
    >>> shutil.rmtree(tmp)
    """
    hparams = brain.hparams
    system = hparams.system
    experts = getattr(hparams, "experts", None)
    training = {
        "system": system,
        "epochs": hparams.epoch_counter.current,
        "data_folder": str(getattr(hparams, "data_folder", "")),
    }
    shared = getattr(hparams.whisper, "shared_adapter", None)
    shared_scale = getattr(hparams.whisper, "shared_adapter_scale", 1.0)
    lid_scale = getattr(hparams.whisper, "shared_adapter_lid_scale", None)
    if shared is not None:
        training["shared_adapter"] = shared
        training["shared_adapter_scale"] = shared_scale
        if lid_scale is not None:
            training["shared_adapter_lid_scale"] = lid_scale
    expert_scale = getattr(hparams, "expert_scale", 1.0)
    if expert_scale != 1.0:
        training["expert_scale"] = expert_scale
    if system == "expert":
        lang = hparams.languages[0]
        folder = os.path.join(hparams.expert_pool, lang)
        save_expert(
            experts,
            0,
            folder,
            hparams.whisper_hub,
            language=lang,
            metadata=training,
        )
        logger.info("expert for %s written to %s", lang, folder)
    fusion = getattr(hparams, "fusion", "gate")
    token_level = getattr(hparams, "gate_level", "utterance") == "token"
    beam = getattr(hparams, "decoding", "greedy") == "beam"
    return export_model(
        os.path.join(hparams.output_folder, "model"),
        system=system,
        languages=list(hparams.languages),
        whisper_hub=hparams.whisper_hub,
        language_aware=bool(hparams.language_aware),
        encoder_window_s=float(hparams.encoder_window_s),
        window_bucket_s=getattr(hparams, "window_bucket_s", None),
        experts=experts,
        gate=(
            getattr(hparams, "gate", None)
            if system == "fuse" and fusion == "gate" and not token_level
            else None
        ),
        fusion=fusion,
        ties_density=float(getattr(hparams, "ties_density", 0.2)),
        lid_source=getattr(hparams, "lid_source", "gate"),
        whisper=hparams.whisper if system == "full_finetune" else None,
        whisper_save_folder=getattr(
            hparams, "whisper_save_folder", "pretrained_models"
        ),
        beam_size=int(getattr(hparams, "beam_size", 1)) if beam else 1,
        metadata=training,
        shared_adapter=shared,
        shared_adapter_scale=shared_scale,
        shared_adapter_lid_scale=lid_scale,
        lid_rescore_top_k=getattr(hparams, "lid_rescore_top_k", 1),
        lid_rescore_confidence=getattr(hparams, "lid_rescore_confidence", None),
    )
