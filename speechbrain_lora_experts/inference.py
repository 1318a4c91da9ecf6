"""Pretrained interface: SpeechBrain's ``WhisperASR`` with LoRA experts.

``LoRAExpertsASR`` is a ``speechbrain.inference.ASR.WhisperASR``: the
methods a SpeechBrain user knows keep their signatures and return types
(``transcribe_batch`` gives ``(words, tokens)``, ``transcribe_file`` splits
long recordings into ``chunk_size`` chunks and returns their segments,
``transcribe_file_streaming``, ``detect_language_file/batch``,
``encode_batch``, ``load_audio`` with hub paths). The experts' extras are
keyword arguments (``languages=``/``language=``: language-aware decoding;
``beam_size=``) and methods of their own (``transcribe_batch_detailed``
returns text, language and gate weights per utterance; ``merged(lang)``).

It loads the ``<output_folder>/model/`` folder a training run writes (see
``export``), from a local folder, a hub id or a URL, with
``LoRAExpertsASR.from_hparams(source=...)`` or SpeechBrain's
``foreign_class(source=..., pymodule_file="custom_interface.py",
classname="LoRAExpertsASR")``: ``hyperparams.yaml`` builds SpeechBrain's
Whisper with empty expert slots (and the fusion gate), then its
``ModelFolderPretrainer`` reads every weight, from safetensors only, from
paths relative to the source.

* Without languages the model names each utterance's language among its
  own: the utterance gate's LID logits (fusion), else Whisper's decoder.
* An expert model routes every utterance to its language's expert (a pool
  of several experts routes by language; without languages, base Whisper
  names the language first, which costs a second encoder pass when experts
  adapt the encoder); multilingual and distilled models use their single
  LoRA; fusion mixes the experts with the gate fed inside the encoder
  (``gate.GateTap``, no extra pass) or with per-token gates (fusion
  without a gate: ``oracle`` routes like an expert pool, ``linear``/``ties``
  merge all experts into the weights at load); full finetuning has no
  experts.
* ``merge_language("de")`` merges that language's expert (or the single
  LoRA) into the weights: language-aware decoding at base-model cost,
  identical to routed decoding. ``unmerge()`` takes it out again.

Every call routes the experts inside ``WhisperLoRAExperts.scope``, which
holds the pool's lock: threads sharing one interface take turns (a call
waits for the one in progress; an uncontended lock costs microseconds), so
none decodes with another's experts, and the routing is restored even when
a call raises.

Authors
 * speechbrain-lora-experts developers 2026
"""

import contextlib
import json
import os
import posixpath
import re
from dataclasses import dataclass, field
from typing import Optional

import torch

from speechbrain.inference.ASR import ASRWhisperSegment, WhisperASR
from speechbrain.utils.autocast import AMPConfig, TorchAutocast
from speechbrain.utils.data_utils import split_path
from speechbrain.utils.fetching import (
    FetchConfig,
    FetchFrom,
    LocalStrategy,
    fetch,
    guess_source,
)
from speechbrain.utils.parameter_transfer import Pretrainer
from speechbrain_lora_experts import decoding
from speechbrain_lora_experts.data.audio import load_audio as read_audio
from speechbrain_lora_experts.export import (
    EXPERTS_DIR,
    GATE_WEIGHTS,
    HPARAMS_FILE,
    MODEL_INFO,
    TOKEN_GATE_WEIGHTS,
    WHISPER_DIR,
)
from speechbrain_lora_experts.language_rescoring import rescore_languages
from speechbrain_lora_experts.languages import (
    UnknownLanguageError,
    canonical_language,
)
from speechbrain_lora_experts.shared_adapter import (
    has_language_step_weights,
    language_step_weights,
)

# owner/name: what SpeechBrain's fetch would look up on the HF hub.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_UPGRADE = (
    "python -c 'from speechbrain_lora_experts.export import "
    'write_hyperparams; write_hyperparams("{folder}")\''
)


class CorruptModelFileError(ValueError):
    """A model file that cannot be read: truncated, corrupt or not JSON.

    Arguments
    ---------
    path : str
        The file.
    detail : str
        What the reader said.

    Example
    -------
    >>> err = CorruptModelFileError("m/gate.safetensors", "header too small")
    >>> err.path
    'm/gate.safetensors'
    """

    def __init__(self, path, detail):
        self.path = os.fspath(path)
        real = os.path.realpath(self.path)
        where = self.path if real == self.path else f"{self.path} (-> {real})"
        super().__init__(
            f"model file {where} is truncated or corrupt ({detail}). Copy "
            "it again from the model folder the training run wrote "
            "(<output_folder>/model/), or re-export that run; a file "
            "fetched into a savedir is fetched again once you delete it"
        )


@dataclass
class Transcription:
    """What ``transcribe_batch_detailed`` returns for one utterance.

    Attributes
    ----------
    text : str
        The transcript.
    language : str
        Whisper code of the language in the decoder prompt: the one given,
        or the one the model named.
    gate_weights : dict or None
        Utterance-gate fusion: ``{language: weight}``; None for other
        models, token-level gates and merged decoding.
    detected : bool
        Whether ``language`` was named by the model (not given).
    tokens : list of int
        The decoded token ids (no prompt, no end token).

    Example
    -------
    >>> t = Transcription("hallo welt", "de", detected=True)
    >>> t.text, t.language, t.gate_weights
    ('hallo welt', 'de', None)
    """

    text: str
    language: str
    gate_weights: Optional[dict] = None
    detected: bool = False
    tokens: list = field(default_factory=list)


@dataclass
class LoRAExpertsSegment(ASRWhisperSegment):
    """A ``transcribe_file`` segment, with what the experts add.

    Attributes
    ----------
    gate_weights : dict or None
        Utterance-gate fusion: ``{language: weight}`` for this chunk.
    detected : bool
        Whether ``lang_id`` was named by the model (not given).

    Example
    -------
    >>> segment = LoRAExpertsSegment(0.0, 2.5, torch.zeros(1, 40000))
    >>> isinstance(segment, ASRWhisperSegment)  # what transcribe_file gives
    True
    >>> segment.lang_id, segment.words, segment.gate_weights, segment.detected
    (None, None, None, False)
    >>> segment = LoRAExpertsSegment(
    ...     0.0, 2.5, None, lang_id="de", gate_weights={"de": 0.9, "es": 0.1}
    ... )
    >>> max(segment.gate_weights, key=segment.gate_weights.get)
    'de'
    """

    gate_weights: Optional[dict] = None
    detected: bool = False


@dataclass
class _Pass:
    """One locked pass over a batch (see ``LoRAExpertsASR._run``)."""

    encoder_out: torch.Tensor
    languages: list
    detected: bool
    gate_weights: Optional[torch.Tensor] = None
    language_probs: Optional[torch.Tensor] = None
    tokens: Optional[list] = None
    sum_logprobs: Optional[torch.Tensor] = None
    no_speech_probs: Optional[torch.Tensor] = None


# Loading ---------------------------------------------------------------------
def _safetensors(path):
    """``safetensors.torch.load_file`` naming a truncated or corrupt file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = os.fspath(path)
    try:
        return load_file(path)
    except (SafetensorError, OSError) as err:
        if not os.path.exists(path):
            raise FileNotFoundError(f"model file {path} is missing") from err
        raise CorruptModelFileError(path, err) from err


def load_shared_adapter(whisper, path):
    """Merges the model folder's shared LoRA into Whisper (pretrainer hook).

    Shared + expert models train their experts as residuals on a shared
    multilingual LoRA merged into the base; the model folder carries that
    adapter in ``shared_adapter/`` and this hook merges it again.

    Arguments
    ---------
    whisper : torch.nn.Module
        The Whisper the yaml built.
    path : str or os.PathLike
        The model folder's ``shared_adapter/`` (a PEFT adapter folder).

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
    >>> whisper = Whisper(hub, tempfile.mkdtemp())
    >>> before = whisper.model.decoder.layers[0].fc1.weight.clone()
    >>> load_shared_adapter(whisper, folder)
    >>> after = whisper.model.decoder.layers[0].fc1.weight
    >>> bool((after - before).abs().sum() > 0)
    True
    """
    from speechbrain_lora_experts.shared_adapter import (
        merge_shared_adapter,
        read_language_step,
    )

    path = os.fspath(path)
    merge_shared_adapter(whisper, path, lid_scale=read_language_step(path))


def load_safetensors(module, path):
    """Loads a safetensors state dict into ``module`` (strict).

    The pretrainer hook of the gates: weights never go through pickle.

    Arguments
    ---------
    module : torch.nn.Module
        Receives the weights.
    path : str or os.PathLike
        A safetensors file.

    Example
    -------
    >>> from safetensors.torch import save_file
    >>> path = str(getfixture("tmp_path") / "gate.safetensors")
    >>> save_file(torch.nn.Linear(2, 2).state_dict(), path)
    >>> load_safetensors(torch.nn.Linear(2, 2), path)
    >>> with open(path, "r+b") as f:
    ...     _ = f.truncate(40)
    >>> load_safetensors(torch.nn.Linear(2, 2), path)
    Traceback (most recent call last):
    ...
    speechbrain_lora_experts.inference.CorruptModelFileError: model file ...
    """
    module.load_state_dict(_safetensors(path), strict=True)


def load_whisper_weights(whisper, path):
    """Loads a finetuned Whisper's ``model.safetensors`` (strict).

    The pretrainer hook of full-finetuning models: the yaml builds the base
    Whisper, this puts the finetuned weights in it.

    Arguments
    ---------
    whisper : speechbrain_lora_experts.whisper.Whisper
        Receives the weights.
    path : str or os.PathLike
        ``whisper/model.safetensors`` of the model folder.

    Example
    -------
    >>> import tempfile
    >>> from safetensors.torch import save_file
    >>> from speechbrain_lora_experts.testing.tiny_whisper import (
    ...     make_tiny_whisper,
    ... )
    >>> from speechbrain_lora_experts.whisper import Whisper
    >>> whisper = Whisper(
    ...     make_tiny_whisper(tempfile.mkdtemp()), tempfile.mkdtemp()
    ... )
    >>> path = str(getfixture("tmp_path") / "model.safetensors")
    >>> state = {k: v.clone() for k, v in whisper.model.state_dict().items()}
    >>> save_file(state, path)
    >>> load_whisper_weights(whisper, path)
    """
    state = _safetensors(path)
    # The HF checkpoint may carry the prefix of a conditional-generation
    # model; SpeechBrain's wrapper holds the bare WhisperModel.
    state = {re.sub(r"^model\.", "", k): v for k, v in state.items()}
    whisper.model.load_state_dict(state, strict=True)


def load_experts(experts, path):
    """Fills the pool's expert slots from ``<path>/<expert name>/``.

    The pretrainer hook of the experts: each slot is read from its PEFT
    adapter folder (safetensors only) and checked against the pool.

    Arguments
    ---------
    experts : WhisperLoRAExperts
        The pool the yaml built (empty slots, named like the folders).
    path : str or os.PathLike
        The model folder's ``experts/`` folder.

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
    >>> def pool():
    ...     whisper = Whisper(hub, tempfile.mkdtemp())
    ...     return WhisperLoRAExperts(whisper, expert_names=["de"], rank=2)
    >>> trained, empty, folder = pool(), pool(), tempfile.mkdtemp()
    >>> _ = torch.nn.init.ones_(trained.expert_parameters("de")[1])
    >>> _ = save_expert(trained, "de", os.path.join(folder, "de"))
    >>> load_experts(empty, folder)
    >>> bool(empty.expert_parameters("de")[1].eq(1).all())
    True
    """
    from safetensors import SafetensorError

    from speechbrain_lora_experts.peft_io import (
        CONFIG_NAME,
        META_NAME,
        WEIGHTS_NAME,
        load_expert,
    )

    for name in experts.expert_names:
        folder = os.path.join(os.fspath(path), name)
        for json_name in (CONFIG_NAME, META_NAME):
            _check_json(os.path.join(folder, json_name))
        try:
            load_expert(experts, name, folder)
        except SafetensorError as err:
            weights = os.path.join(folder, WEIGHTS_NAME)
            raise CorruptModelFileError(weights, err) from err
    experts.set_trainable(experts=())


def _check_json(path):
    """Raises ``CorruptModelFileError`` for a file that is not JSON."""
    if not os.path.isfile(path):
        return
    try:
        with open(path, encoding="utf-8") as f:
            json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptModelFileError(path, err) from err


def add_token_gates(experts, temperature=1.0):
    """Adds the token-level gates to ``experts`` and returns them.

    Arguments
    ---------
    experts : WhisperLoRAExperts
        The pool (modified in place).
    temperature : float
        Softmax temperature of the gates.

    Returns
    -------
    torch.nn.ModuleDict
        The gates (their weights load afterwards).

    Example
    -------
    >>> from speechbrain_lora_experts.testing.tiny_whisper import (
    ...     tiny_whisper_model,
    ... )
    >>> from speechbrain_lora_experts.attach import WhisperLoRAExperts
    >>> hf = tiny_whisper_model(d_model=16, ffn_dim=32, vocab_size=100)
    >>> experts = WhisperLoRAExperts(hf, n_experts=2, targets=["fc1"])
    >>> len(add_token_gates(experts))
    2
    """
    experts.add_token_gates(temperature)
    return experts.token_gates


def _read_info(folder):
    path = os.path.join(folder, MODEL_INFO)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{folder} is not a model folder: {MODEL_INFO} is missing. A "
            "training run writes one into <output_folder>/model/ (see "
            "speechbrain_lora_experts.export.export_model)"
        )
    _check_json(path)
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def model_files(info):
    """Files (relative paths) a model folder must hold besides model.json.

    Arguments
    ---------
    info : dict
        Contents of ``model.json``.

    Returns
    -------
    list of str

    Example
    -------
    >>> model_files(
    ...     {
    ...         "system": "fuse",
    ...         "experts": ["de"],
    ...         "files": ["experts/de/adapter_config.json", "gate.safetensors"],
    ...     }
    ... )
    ['experts/de/adapter_config.json', 'gate.safetensors']
    """
    files = list(info.get("files") or [])
    if not files:  # exported before model.json listed its files
        for name in info.get("experts", []):
            files += [
                f"{EXPERTS_DIR}/{name}/adapter_config.json",
                f"{EXPERTS_DIR}/{name}/adapter_model.safetensors",
            ]
        if info.get("system") == "fuse":
            token = info.get("gate_level") == "token"
            files.append(TOKEN_GATE_WEIGHTS if token else GATE_WEIGHTS)
        if info.get("system") == "full_finetune":
            files += [f"{WHISPER_DIR}/config.json"]
    if info.get("system") == "full_finetune":
        # Weights only from safetensors: a pickled folder is refused.
        weights = f"{WHISPER_DIR}/model.safetensors"
        if weights not in files:
            files.append(weights)
    for name in files:
        parts = posixpath.normpath(name).split("/")
        if posixpath.isabs(name) or ".." in parts:
            raise ValueError(f"{MODEL_INFO} lists a file outside it: {name}")
    return files


def check_model_folder(folder, hparams_file=HPARAMS_FILE):
    """Raises naming what a local model folder lacks or what is outdated.

    Arguments
    ---------
    folder : str
        A model folder.
    hparams_file : str or None
        Name of its HyperPyYAML file; None: not checked.

    Example
    -------
    >>> check_model_folder(str(getfixture("tmp_path")))
    Traceback (most recent call last):
    ...
    FileNotFoundError: ... is not a model folder: model.json is missing...
    """
    info = _read_info(folder)
    if hparams_file is not None:
        yaml_path = os.path.join(folder, hparams_file)
        if not os.path.isfile(yaml_path):
            raise FileNotFoundError(
                f"{folder} has no {hparams_file} (exported before the "
                "pretrained interface existed?). Write it with: "
                + _UPGRADE.format(folder=folder)
            )
        with open(yaml_path, encoding="utf-8") as f:
            outdated = "!PLACEHOLDER" in f.read()
        if outdated:
            raise ValueError(
                f"{yaml_path} was written by an older version (its "
                "model_folder placeholder only that version filled). "
                "Upgrade the folder with: " + _UPGRADE.format(folder=folder)
            )
    missing = [
        name
        for name in model_files(info)
        if not os.path.isfile(os.path.join(folder, name))
    ]
    if missing:
        raise FileNotFoundError(
            f"model folder {folder} is incomplete: missing {missing}. Copy "
            "the whole <output_folder>/model/ folder a run wrote"
        )


def resolve_model_folder(
    source,
    savedir=None,
    local_strategy=LocalStrategy.SYMLINK,
    fetch_config=FetchConfig(),
):
    """The local model folder of ``source``, fetched when it is remote.

    A local folder is used where it is (nothing is copied). A hub id, URL
    or ``FetchSource`` is fetched with SpeechBrain's ``fetch`` (cache,
    links, offline mode), file by file as ``model.json`` lists them, into
    ``savedir`` (hub ids without one: the hub cache), keeping the layout.

    Arguments
    ---------
    source : str, os.PathLike or FetchSource
        The model folder, a hub id (``owner/name``) or a URL.
    savedir : str, optional
        Where remote files go (needed for URLs).
    local_strategy : LocalStrategy
        Passed to ``fetch``.
    fetch_config : FetchConfig
        Passed to ``fetch``.

    Returns
    -------
    str
        Absolute path of the model folder.

    Example
    -------
    >>> resolve_model_folder(str(getfixture("tmp_path") / "nowhere"))
    Traceback (most recent call last):
    ...
    FileNotFoundError: model folder ... does not exist (and is no hub id)
    """
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    kind, location = guess_source(source)
    if kind == FetchFrom.LOCAL:
        folder = os.path.abspath(os.fspath(location))
        check_model_folder(folder, hparams_file=None)
        return folder
    _refuse_missing_folder(source)
    if savedir is not None:
        savedir = os.path.abspath(os.fspath(savedir))

    def get(name):
        """Local path of the folder's file ``name``, fetched if needed."""
        target = None
        if savedir is not None:
            target = os.path.join(savedir, posixpath.dirname(name))
        return os.fspath(
            fetch(
                filename=name,
                source=source,
                savedir=target,
                save_filename=posixpath.basename(name),
                local_strategy=local_strategy,
                fetch_config=fetch_config,
            )
        )

    info_path = get(MODEL_INFO)
    folder = os.path.dirname(os.path.abspath(info_path))
    for name in model_files(_read_info(folder)):
        path = get(name)
        if os.path.abspath(path) != os.path.join(folder, *name.split("/")):
            raise RuntimeError(
                f"fetching {name} from {source} gave {path}, outside the "
                f"model folder {folder}"
            )
    check_model_folder(folder, hparams_file=None)
    return folder


def _refuse_missing_folder(source):
    """A path that is no folder, no URL and no hub id: not taken for one."""
    if not isinstance(source, str) or source.startswith(
        ("http://", "https://")
    ):
        return
    if not os.path.isdir(source) and (
        not _HUB_ID.match(source) or os.path.exists(os.path.dirname(source))
    ):
        raise FileNotFoundError(
            f"model folder {source} does not exist (and is no hub id)"
        )


class ModelFolderPretrainer(Pretrainer):
    """A ``Pretrainer`` whose ``paths`` are relative to the model folder.

    SpeechBrain's ``from_hparams`` and ``foreign_class`` call
    ``collect_files(default_source=<source>)``; this pretrainer resolves the
    source to a local folder (``resolve_model_folder``: used in place, or
    fetched with its layout into the ``savedir``, or the hub cache) and
    hands each loadable's hook ``<folder>/<path>``. A model folder
    therefore loads from wherever it is, with no path in its yaml.

    Arguments
    ---------
    collect_in : str, optional
        Where remote files go (``from_hparams`` sets it to ``savedir``).
    loadables : dict
        Key -> object to load.
    paths : dict
        Key -> path relative to the model folder (a file or a folder).
    custom_hooks : dict
        Key -> ``hook(obj, path)`` (see ``Pretrainer``).
    conditions : dict
        Key -> whether to load it (see ``Pretrainer``).

    Example
    -------
    >>> from safetensors.torch import save_file
    >>> folder = getfixture("tmp_path")
    >>> _ = (folder / "model.json").write_text('{"files": ["w.safetensors"]}')
    >>> save_file(
    ...     {"weight": torch.ones(1, 1), "bias": torch.ones(1)},
    ...     str(folder / "w.safetensors"),
    ... )
    >>> layer = torch.nn.Linear(1, 1)
    >>> pretrainer = ModelFolderPretrainer(
    ...     loadables={"layer": layer},
    ...     paths={"layer": "w.safetensors"},
    ...     custom_hooks={"layer": load_safetensors},
    ... )
    >>> _ = pretrainer.collect_files(default_source=str(folder))
    >>> pretrainer.load_collected()
    >>> layer.bias.item()
    1.0
    """

    def __init__(
        self,
        collect_in=None,
        loadables=None,
        paths=None,
        custom_hooks=None,
        conditions=None,
    ):
        super().__init__(collect_in, loadables, paths, custom_hooks, conditions)
        self.model_folder = None

    def collect_files(
        self,
        default_source=None,
        local_strategy=LocalStrategy.SYMLINK,
        fetch_config=FetchConfig(),
    ):
        """Finds (or fetches) the model folder and every loadable in it.

        Arguments
        ---------
        default_source : str, os.PathLike or FetchSource
            The model folder, hub id or URL (``from_hparams``' source).
        local_strategy : LocalStrategy
            Passed to ``fetch``.
        fetch_config : FetchConfig
            Passed to ``fetch``.

        Returns
        -------
        dict
            Loadable key -> local path.
        """
        if default_source is None:
            raise ValueError(
                "ModelFolderPretrainer reads paths relative to the model "
                "folder: collect_files needs default_source= (from_hparams "
                "and foreign_class pass their source)"
            )
        folder = resolve_model_folder(
            default_source, self.collect_in, local_strategy, fetch_config
        )
        self.model_folder = folder
        collected = {}
        for name in self.loadables:
            if not self.is_loadable(name):
                continue
            if name not in self.paths:
                raise ValueError(
                    f"loadable {name!r} has no path in the model folder"
                )
            path = os.path.join(folder, *self.paths[name].split("/"))
            if not os.path.exists(path):
                raise FileNotFoundError(
                    f"model folder {folder} has no {self.paths[name]} "
                    f"(needed for {name})"
                )
            self.paths[name] = path
            if name not in self.is_local:
                self.is_local.append(name)
            collected[name] = path
        return collected


# The interface ---------------------------------------------------------------
class LoRAExpertsASR(WhisperASR):
    """Whisper with LoRA experts (routed, fused or merged), ready to use.

    A ``speechbrain.inference.ASR.WhisperASR``: build it with
    ``from_hparams(source=<model folder or hub id>)`` or SpeechBrain's
    ``foreign_class``. See the module docstring for routing, language
    handling and threads.

    Arguments
    ---------
    *args, **kwargs
        Forwarded to ``Pretrained`` (``modules``, ``hparams``,
        ``run_opts``, ...).

    Example
    -------
    >>> import tempfile
    >>> from speechbrain_lora_experts.attach import WhisperLoRAExperts
    >>> from speechbrain_lora_experts.export import export_model
    >>> from speechbrain_lora_experts.testing.tiny_whisper import (
    ...     make_tiny_whisper,
    ... )
    >>> from speechbrain_lora_experts.whisper import Whisper
    >>> hub = make_tiny_whisper(tempfile.mkdtemp())
    >>> whisper = Whisper(hub, tempfile.mkdtemp(), encoder_window_s=4)
    >>> pool = WhisperLoRAExperts(whisper, expert_names=["de", "es"], rank=2)
    >>> folder = export_model(
    ...     tempfile.mkdtemp(),
    ...     "expert",
    ...     ["de", "es"],
    ...     hub,
    ...     encoder_window_s=4,
    ...     experts=pool,
    ... )
    >>> asr = LoRAExpertsASR.from_hparams(source=folder)
    >>> wavs, wav_lens = torch.zeros(2, 16000), torch.tensor([1.0, 0.5])
    >>> words, tokens = asr.transcribe_batch(wavs, wav_lens)
    >>> len(words), len(tokens)
    (2, 2)
    >>> out = asr.transcribe_batch_detailed(wavs, languages=["es", "de"])
    >>> [r.language for r in out]
    ['es', 'de']
    >>> with asr.merged("de"):
    ...     asr.transcribe_batch_detailed(wavs[:1])[0].language
    'de'
    """

    HPARAMS_NEEDED = [
        "system",
        "languages",
        "sample_rate",
        "beam_size",
        "experts",
        "whisper",
    ]
    MODULES_NEEDED = ["whisper"]
    TASKS = ["transcribe", "lang_id"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.languages = [canonical_language(x) for x in self.hparams.languages]
        self._merged_language = None
        experts = self.experts
        fusion = getattr(self.hparams, "fusion", None) or "gate"
        if experts is None:
            self._mode = "none"
        elif self.hparams.system == "fuse" and fusion in ("linear", "ties"):
            self._mode = "static"
            options = {}
            if fusion == "ties":
                options["density"] = self.hparams.ties_density
            experts.merge_static(fusion, **options)
        elif self.hparams.system == "fuse" and fusion == "oracle":
            self._mode = "pool"
        elif self.hparams.system == "fuse":
            self._mode = "token" if experts.token_gates else "gate"
        elif self.hparams.system == "expert" and experts.n_experts > 1:
            self._mode = "pool"
        else:
            self._mode = "single"
        if self._mode in ("pool", "gate", "token"):
            # The experts are the languages, in the same order (export
            # checks it for fusion, whose gate uses language indices).
            names = [canonical_language(n) for n in experts.expert_names]
            missing = sorted(set(self.languages) - set(names))
            if missing:
                raise ValueError(
                    f"the model has no expert for {missing} (experts: "
                    f"{experts.expert_names})"
                )
            self._expert_of = {lang: names.index(lang) for lang in names}

    @classmethod
    def from_hparams(cls, source, hparams_file=HPARAMS_FILE, **kwargs):
        """Loads a model folder (local, hub id or URL).

        Arguments
        ---------
        source : str, os.PathLike or FetchSource
            The model folder a run wrote (``<output_folder>/model``), or
            where a copy of it lives (hub id ``owner/name``, URL).
        hparams_file : str
            Its HyperPyYAML file.
        **kwargs
            As SpeechBrain's ``from_hparams``: ``savedir`` (where remote
            files go; optional for hub ids, which otherwise stay in the hub
            cache; a local folder is used in place), ``overrides`` (e.g.
            ``{"whisper_hub": "<folder>"}`` when the base model moved, or
            ``{"beam_size": 5}``), ``run_opts={"device": "cuda"}``,
            ``local_strategy``, ``fetch_config``.

        Returns
        -------
        LoRAExpertsASR
        """
        if isinstance(source, os.PathLike):
            source = os.fspath(source)
        if isinstance(source, str) and os.path.isdir(source):
            # Named errors before the yaml runs (a missing file, an old
            # export).
            check_model_folder(source, hparams_file)
        else:
            _refuse_missing_folder(source)
        return super().from_hparams(
            source=source, hparams_file=hparams_file, **kwargs
        )

    # What the yaml built -----------------------------------------------------
    @property
    def whisper(self):
        """SpeechBrain's Whisper (``speechbrain_lora_experts.whisper``).

        Returns
        -------
        speechbrain_lora_experts.whisper.Whisper
            The model.
        """
        return self.mods.whisper

    @property
    def experts(self):
        """The ``WhisperLoRAExperts`` pool, or None (full finetune).

        Returns
        -------
        WhisperLoRAExperts or None
            The pool.
        """
        return self.hparams.experts

    @property
    def gate(self):
        """The utterance-level fusion gate, or None.

        Returns
        -------
        UtteranceGate or None
            The gate.
        """
        return self.mods["gate"] if "gate" in self.mods else None

    @property
    def model_folder(self):
        """The local folder the weights were read from.

        Returns
        -------
        str
            The folder.
        """
        return getattr(self.hparams.pretrainer, "model_folder", None)

    @property
    def window_s(self):
        """Longest clip (seconds) one encoder pass transcribes.

        Returns
        -------
        float
            Seconds.
        """
        return self.whisper.window_samples / self.hparams.sample_rate

    @property
    def merged_language(self):
        """Language whose expert is merged into the weights, or None.

        Returns
        -------
        str or None
            The language code.
        """
        return self._merged_language

    # Audio -------------------------------------------------------------------
    def load_audio(self, path, savedir=None):
        """Reads an audio file as 16 kHz mono, as ``Pretrained`` does.

        Local files, URLs and hub paths (``owner/repo/clip.wav``) are
        fetched with SpeechBrain's ``fetch``; wav, flac, mp3 and ogg at any
        rate and channel count are decoded, downmixed and resampled.
        Unreadable or non-finite audio raises an error naming the file.

        Arguments
        ---------
        path : str
            Local path, URL or hub path.
        savedir : str, optional
            Where a remote file is saved.

        Returns
        -------
        torch.Tensor
            ``[samples]`` on this interface's device.
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            source, name = split_path(path)
            try:
                path = os.fspath(fetch(name, source=source, savedir=savedir))
            except Exception as err:
                raise FileNotFoundError(
                    f"audio {path} is no local file, and fetching it "
                    f"({name} from {source}) failed: {err}"
                ) from err
        wav = read_audio(path, self.hparams.sample_rate)
        return wav.to(self.device)

    def _batch(self, wavs, wav_lens):
        """Validated ``[B, T]`` CPU audio and ``[B]`` lengths in samples."""
        wavs = torch.as_tensor(wavs)
        if wavs.dim() == 1:
            wavs = wavs.unsqueeze(0)
        if wavs.dim() != 2 or wavs.shape[1] == 0:
            raise ValueError(
                "wavs must be [batch, samples] mono with samples > 0, got "
                f"{tuple(wavs.shape)}"
            )
        batch, total = wavs.shape
        if wav_lens is None:
            wav_lens = torch.ones(batch)
        wav_lens = torch.as_tensor(wav_lens).reshape(-1).double().cpu()
        if wav_lens.numel() != batch:
            raise ValueError(f"{wav_lens.numel()} wav_lens for {batch} wavs")
        lengths = (wav_lens * total).round().long().clamp(1, total)
        keep = torch.arange(total)[None, :] < lengths[:, None]
        wavs = wavs.float().cpu()
        bad = (~torch.isfinite(wavs) & keep).any(dim=1).nonzero().flatten()
        if bad.numel():
            raise ValueError(
                f"audio of utterance(s) {bad.tolist()} holds NaN or infinite "
                "samples; Whisper would decode noise from it. Check how it "
                "was read or computed (e.g. a division by a zero peak)"
            )
        too_long = [
            (i, n / self.hparams.sample_rate)
            for i, n in enumerate(lengths.tolist())
            if n > self.whisper.window_samples
        ]
        if too_long:
            clips = ", ".join(f"#{i}: {s:.2f} s" for i, s in too_long)
            raise ValueError(
                f"clips longer than this model's {self.window_s:g} s encoder "
                f"window ({clips}); Whisper would drop the rest. "
                "transcribe_file(path, chunk_size=...) splits long "
                "recordings into chunks"
            )
        # Padding is silence, as when the clip is transcribed alone; padding
        # past the longest clip would only widen a cut window.
        wavs = torch.where(keep, wavs, torch.zeros(()))
        return wavs[:, : int(lengths.max())], lengths

    # Whisper's interface -----------------------------------------------------
    @torch.no_grad()
    def transcribe_batch(
        self, wavs, wav_lens=None, *, languages=None, beam_size=None
    ):
        """Transcribes a padded batch of 16 kHz mono waveforms.

        Each utterance gets what it gets alone (per-utterance features,
        routing, prompt and length bound), whatever it is batched with.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[B, samples]`` (or ``[samples]``) at ``sample_rate``, each at
            most ``window_s`` long (``transcribe_file`` chunks longer ones).
        wav_lens : torch.Tensor
            ``[B]`` relative lengths (SpeechBrain convention); None: all 1.
        languages : str or list of str
            One per utterance (a string applies to all): language-aware
            decoding. None: the model names each utterance's language.
        beam_size : int
            Beam search width; default: the model's (1 = greedy).

        Returns
        -------
        list of str
            Each waveform in the batch transcribed.
        list of list of int
            Each utterance's predicted token ids.
        """
        out = self._run(wavs, wav_lens, languages, beam_size=beam_size)
        return decoding.decode_text(self.whisper, out.tokens), out.tokens

    def forward(self, wavs, wav_lens=None):
        """Same as ``transcribe_batch``.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[B, samples]``.
        wav_lens : torch.Tensor
            ``[B]`` relative lengths.

        Returns
        -------
        tuple
            ``(words, tokens)``.
        """
        return self.transcribe_batch(wavs, wav_lens)

    @torch.no_grad()
    def encode_batch(self, wavs, wav_lens=None, *, languages=None):
        """Encoder output with the experts routed as for transcription.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[B, samples]`` at ``sample_rate``.
        wav_lens : torch.Tensor
            ``[B]`` relative lengths; None: all 1.
        languages : str or list of str
            As ``transcribe_batch``.

        Returns
        -------
        torch.Tensor
            ``[B, frames, d_model]``.
        """
        return self._run(wavs, wav_lens, languages, decode=False).encoder_out

    @torch.no_grad()
    def detect_language_batch(self, wav, wav_lens=None):
        """Names each utterance's language, among the model's languages.

        The model decides as it does when transcribing without a language:
        the utterance gate (fusion), else Whisper's decoder (with the
        experts a single-LoRA or merged model applies).

        Arguments
        ---------
        wav : torch.Tensor
            ``[B, samples]`` at ``sample_rate``, at most ``window_s`` long.
        wav_lens : torch.Tensor
            ``[B]`` relative lengths; None: all 1.

        Returns
        -------
        language_tokens : torch.Tensor
            ``[B]`` ids of the detected languages' tokens (``<|de|>``).
        language_probs : list of dict
            Per utterance, ``{language: probability}`` over the model's
            languages.
        """
        out = self._run(wav, wav_lens, None, decode=False, detect=True)
        probs = out.language_probs.float().cpu()
        # The language token is the second of the decoder prompt.
        tokens = decoding.prompt_tokens(self.whisper, out.languages)[:, 1]
        return tokens, [
            dict(zip(self.languages, row.tolist())) for row in probs
        ]

    @torch.no_grad()
    def detect_language_file(self, path: str):
        """Names the language of an audio file, among the model's languages.

        The first ``window_s`` seconds decide (Whisper's language
        identification reads one window).

        Arguments
        ---------
        path : str
            Local path, URL or hub path of the audio.

        Returns
        -------
        language_tokens : torch.Tensor
            ``[1]`` id of the detected language's token.
        language_probs : list of dict
            ``[{language: probability}]`` over the model's languages.
        """
        wav = self.load_audio(path)[: self.whisper.window_samples]
        return self.detect_language_batch(wav.unsqueeze(0))

    @torch.no_grad()
    def transcribe_file_streaming(
        self,
        path: str,
        task: Optional[str] = None,
        initial_prompt: Optional[str] = None,
        logprob_threshold: Optional[float] = -1.0,
        no_speech_threshold=0.6,
        condition_on_previous_text: bool = False,
        verbose: bool = False,
        use_torchaudio_streaming: bool = False,
        chunk_size: int = 30,
        *,
        language=None,
        beam_size=None,
        **kwargs,
    ):
        """Transcribes an audio file chunk by chunk, yielding segments.

        As ``WhisperASR``: the audio is cut into ``chunk_size``-second
        chunks (at most the model's encoder window: a larger ``chunk_size``
        is reduced to it, so no audio is dropped), each transcribed with
        its own language (given, or named by the model), optionally
        prompted with the previous chunks' text. A chunk is skipped (empty
        words) when Whisper finds no speech: ``no_speech_prob`` above
        ``no_speech_threshold`` and ``avg_log_probs`` not above
        ``logprob_threshold``.

        Arguments
        ---------
        path : str
            Local path, URL or hub path of the audio.
        task : str, optional
            ``transcribe`` (default) or ``lang_id`` (segments carry only the
            language). The experts are transcription experts:
            ``translate`` is refused.
        initial_prompt : str, optional
            Text the first chunk is conditioned on.
        logprob_threshold : float, optional
            See above.
        no_speech_threshold : float, optional
            See above; None never skips.
        condition_on_previous_text : bool
            Prompt each chunk with the text decoded so far (the last 223
            tokens).
        verbose : bool
            Unused here (``transcribe_file`` prints the segments).
        use_torchaudio_streaming : bool
            Read the file with ``torchaudio.io.StreamReader`` (ffmpeg)
            instead of loading it whole; needs a torchaudio that has it.
        chunk_size : int
            Seconds per chunk (None: the encoder window).
        language : str, optional
            Language-aware decoding of every chunk in this language.
        beam_size : int, optional
            Beam search width; default: the model's.
        **kwargs
            Passed to ``load_audio`` (``savedir``).

        Yields
        ------
        LoRAExpertsSegment
            An ``ASRWhisperSegment`` with ``gate_weights`` and ``detected``.
        """
        task = self._check_task(task)
        rate = self.hparams.sample_rate
        if chunk_size is None:
            chunk_size = self.window_s
        if not chunk_size > 0:
            raise ValueError(f"chunk_size must be > 0 s, got {chunk_size}")
        samples = min(
            self.whisper.window_samples, max(1, round(chunk_size * rate))
        )
        languages = None
        if language is not None:
            languages = self._check_languages([language], 1)
        chunks = self._chunks(path, samples, use_torchaudio_streaming, kwargs)
        history = []
        if initial_prompt is not None:
            history = self.whisper.tokenizer.encode(
                " " + initial_prompt.strip(), add_special_tokens=False
            )
        start = 0.0
        for chunk in chunks:
            chunk = chunk.reshape(1, -1)
            end = start + chunk.shape[1] / rate
            segment = LoRAExpertsSegment(start=start, end=end, chunk=chunk)
            start = end
            if task == "lang_id":
                out = self._run(chunk, None, languages, decode=False)
                self._describe(segment, out)
                yield segment
                continue
            prompt = history[-self._max_previous_tokens() :]
            out = self._run(
                chunk,
                None,
                languages,
                beam_size=beam_size,
                previous=prompt,
                score=True,
            )
            self._describe(segment, out)
            tokens = out.tokens[0]
            segment.prompt = prompt
            segment.avg_log_probs = out.sum_logprobs[0].item() / (
                len(tokens) + 1
            )
            segment.no_speech_prob = out.no_speech_probs[0].item()
            silent = (
                no_speech_threshold is not None
                and segment.no_speech_prob > no_speech_threshold
                and not (
                    logprob_threshold is not None
                    and segment.avg_log_probs > logprob_threshold
                )
            )
            if silent:
                segment.words, segment.tokens = "", []
            else:
                segment.tokens = tokens
                segment.words = decoding.decode_text(self.whisper, [tokens])[0]
            yield segment
            if silent:
                continue
            history = history + tokens if condition_on_previous_text else []

    def transcribe_file(
        self,
        path: str,
        task: Optional[str] = None,
        initial_prompt: Optional[str] = None,
        logprob_threshold: Optional[float] = -1.0,
        no_speech_threshold=0.6,
        condition_on_previous_text: bool = False,
        verbose: bool = False,
        use_torchaudio_streaming: bool = False,
        chunk_size: Optional[int] = 30,
        *,
        language=None,
        beam_size=None,
        **kwargs,
    ):
        """Transcribes an audio file of any length, as ``WhisperASR`` does.

        See ``transcribe_file_streaming`` for the arguments and chunking.

        Arguments
        ---------
        path : str
            Local path, URL or hub path of the audio.
        task : str, optional
            ``transcribe`` (default) or ``lang_id``.
        initial_prompt : str, optional
            Text the first chunk is conditioned on.
        logprob_threshold : float, optional
            Skip test, with ``no_speech_threshold``.
        no_speech_threshold : float, optional
            Skip test; None never skips.
        condition_on_previous_text : bool
            Prompt each chunk with the text decoded so far.
        verbose : bool
            Print each segment.
        use_torchaudio_streaming : bool
            Read the file with ``torchaudio.io.StreamReader``.
        chunk_size : int, optional
            Seconds per chunk (None: the encoder window).
        language : str, optional
            Language-aware decoding in this language.
        beam_size : int, optional
            Beam search width; default: the model's.
        **kwargs
            Passed to ``load_audio`` (``savedir``).

        Returns
        -------
        list of LoRAExpertsSegment
            One per chunk; ``" ".join(s.words for s in segments)`` is the
            transcript.
        """
        segments = []
        for segment in self.transcribe_file_streaming(
            path,
            task=task,
            initial_prompt=initial_prompt,
            logprob_threshold=logprob_threshold,
            no_speech_threshold=no_speech_threshold,
            condition_on_previous_text=condition_on_previous_text,
            verbose=verbose,
            use_torchaudio_streaming=use_torchaudio_streaming,
            chunk_size=chunk_size,
            language=language,
            beam_size=beam_size,
            **kwargs,
        ):
            segments.append(segment)
            if verbose:
                said = segment.lang_id if task == "lang_id" else segment.words
                print(f"[{segment.start:g}s --> {segment.end:g}s] {said}")
        return segments

    # The experts' extras -----------------------------------------------------
    @torch.no_grad()
    def transcribe_batch_detailed(
        self, wavs, wav_lens=None, *, languages=None, beam_size=None
    ):
        """``transcribe_batch`` with each utterance's language and gate.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[B, samples]`` (or ``[samples]``) at ``sample_rate``.
        wav_lens : torch.Tensor
            ``[B]`` relative lengths; None: all 1.
        languages : str or list of str
            As ``transcribe_batch``.
        beam_size : int
            Beam search width; default: the model's (1 = greedy).

        Returns
        -------
        list of Transcription
            Text, language (given or named), gate weights, tokens.
        """
        out = self._run(wavs, wav_lens, languages, beam_size=beam_size)
        texts = decoding.decode_text(self.whisper, out.tokens)
        return [
            Transcription(
                text=text,
                language=lang,
                gate_weights=self._gate_dict(out.gate_weights, i),
                detected=out.detected,
                tokens=out.tokens[i],
            )
            for i, (text, lang) in enumerate(zip(texts, out.languages))
        ]

    def merge_language(self, language):
        """Merges ``language``'s expert into the weights (zero overhead).

        Fusion models merge the language's own expert (the gate is
        bypassed); multilingual and distilled models merge their single
        LoRA. Until ``unmerge()``, transcription is language-aware in this
        language (``languages=None`` means it). Waits for calls in other
        threads to finish; calls made while merged use the merged weights.

        Arguments
        ---------
        language : str
            One of the model's languages.
        """
        experts = self.experts
        if experts is None:
            raise ValueError(
                f"a {self.hparams.system} model has no experts to merge"
            )
        if self._mode == "static":
            raise ValueError(
                f"this model is a static {self.hparams.fusion} merge of all "
                "experts, already in the weights"
            )
        (code,) = self._check_languages([language], 1)
        expert = 0 if self._mode == "single" else self._expert_of[code]
        with experts.routing.lock:
            self.unmerge()
            experts.merge(expert)
            self._merged_language = code

    def unmerge(self):
        """Takes the merged expert out of the weights (no-op if none)."""
        if self.experts is None:
            return
        with self.experts.routing.lock:
            if self._merged_language is not None:
                self.experts.unmerge()
                self._merged_language = None

    @contextlib.contextmanager
    def merged(self, language):
        """Context manager: ``merge_language`` inside, ``unmerge`` after.

        Arguments
        ---------
        language : str
            One of the model's languages.

        Yields
        ------
        LoRAExpertsASR
            self
        """
        self.merge_language(language)
        try:
            yield self
        finally:
            self.unmerge()

    # Internals ---------------------------------------------------------------
    def _check_task(self, task):
        task = task or "transcribe"
        if task not in self.TASKS:
            raise ValueError(
                f"task {task!r} is not supported: the LoRA experts are "
                f"trained to transcribe; tasks: {self.TASKS}"
            )
        return task

    def _chunks(self, path, samples, streaming, load_kwargs):
        """Mono chunks of at most ``samples`` samples."""
        if not streaming:
            return self.load_audio(path, **load_kwargs).split(samples)
        import torchaudio

        reader = getattr(getattr(torchaudio, "io", None), "StreamReader", None)
        if reader is None:
            raise ValueError(
                "use_torchaudio_streaming=True needs torchaudio.io."
                f"StreamReader, which torchaudio {torchaudio.__version__} "
                "lacks; use the default (the file is read whole, then "
                "transcribed chunk by chunk)"
            )
        return self._get_audio_stream(reader(path), samples)

    def _max_previous_tokens(self):
        # Whisper keeps half the decoder's context for the previous text.
        return self.whisper.model.config.max_target_positions // 2 - 1

    def _describe(self, segment, out):
        segment.lang_id = out.languages[0]
        segment.detected = out.detected
        segment.gate_weights = self._gate_dict(out.gate_weights, 0)

    def _gate_dict(self, weights, row):
        if weights is None:
            return None
        return dict(zip(self.languages, weights[row].float().tolist()))

    def _check_languages(self, languages, batch):
        """Canonical codes of the given languages, or None."""
        if languages is None:
            return None
        if isinstance(languages, str):
            languages = [languages] * batch
        languages = list(languages)
        if len(languages) != batch:
            raise ValueError(
                f"{len(languages)} languages for a batch of {batch}"
            )
        codes = []
        for lang in languages:
            # An unknown name raises canonical_language's own "unknown
            # language" error; a known one outside the model gets this one.
            code = canonical_language(lang)
            if code not in self.languages:
                raise UnknownLanguageError(
                    f"language {lang!r} is not one of this model's "
                    f"languages {self.languages}; pass one of them, or "
                    "languages=None to let the model name it"
                )
            codes.append(code)
        return codes

    def _exclusive(self):
        """Holds the experts' lock (base routing) for one call."""
        if self.experts is None:
            return contextlib.nullcontext()
        return self.experts.scope()

    def _autocast(self):
        # One per call: a shared autocast object is not re-entrant.
        dtype = AMPConfig.from_name(self.precision).dtype
        return TorchAutocast(device_type=self.device_type, dtype=dtype)

    def _run(
        self,
        wavs,
        wav_lens,
        languages,
        beam_size=None,
        decode=True,
        detect=False,
        previous=None,
        score=False,
    ):
        """Encodes (and decodes) one batch inside the experts' scope.

        ``detect`` names the languages even of a merged model;
        ``previous`` is the previous text's tokens (long-form prompting);
        ``score`` adds the log-probabilities and no-speech probabilities.
        """
        wavs, lengths = self._batch(wavs, wav_lens)
        given = self._check_languages(languages, wavs.shape[0])
        valid = self.whisper.window_share(lengths, wavs.shape[-1])
        valid = valid.to(self.device)
        durations = lengths.double() / self.hparams.sample_rate
        wavs = wavs.to(self.device)
        with contextlib.ExitStack() as stack:
            stack.enter_context(self._exclusive())
            # Read under the lock: merging waits for it.
            merged = self._merged_language
            if merged is not None and not detect:
                if given is None:
                    given = [merged] * wavs.shape[0]
                elif set(given) != {merged}:
                    raise ValueError(
                        f"the {merged!r} expert is merged into the weights; "
                        f"call unmerge() to transcribe {given}"
                    )
            stack.enter_context(self._autocast())
            mel = self.whisper._get_mel(wavs)
            out = self._encode(mel, valid, given, stack)
            if decode and self._rescores(out):
                self._rescore(mel, out, durations, beam_size, previous)
            elif decode:
                prompts = self._prompts(out.languages, previous, mel.device)
                out.tokens = self._decode(
                    out.encoder_out, prompts, durations, beam_size
                )
                if score:
                    out.sum_logprobs, out.no_speech_probs = (
                        decoding.score_tokens(
                            self.whisper, out.encoder_out, prompts, out.tokens
                        )
                    )
        return out

    def _prompts(self, languages, previous, device):
        """Decoder prompts, after the previous text's tokens if any."""
        prompts = decoding.prompt_tokens(self.whisper, languages, device=device)
        if previous:
            head = [self.whisper.bos_prev] + list(previous)
            head = torch.tensor(head, device=device)
            head = head.expand(prompts.shape[0], -1)
            prompts = torch.cat([head, prompts], dim=1)
        return prompts

    def _rescores(self, out):
        """Whether the likeliest named languages each transcribe."""
        top_k = getattr(self.hparams, "lid_rescore_top_k", 1)
        return (
            top_k > 1
            and self._mode in ("pool", "single")
            and self._merged_language is None
            and out.detected
            and out.language_probs is not None
        )

    def _experts_adapt_encoder(self):
        """Whether routing the experts changes the encoder output."""
        return any(name.startswith("encoder.") for name in self.experts.layers)

    def _rescore(self, mel, out, durations, beam_size, previous):
        """``lid_rescore_top_k``: the best (language, transcript) pair.

        ``out`` was routed (and encoded) for the named languages; in a pool
        each other candidate is routed (and, when experts adapt the
        encoder, encoded) in its own scope, while one LoRA only changes the
        prompt. Sets the languages, tokens and their scores of ``out``.
        """
        scores = []
        pool = self._mode == "pool"
        encodes = pool and self._experts_adapt_encoder()

        def transcribe(index, codes, score):
            """Tokens and log-probability, routed by the ``codes``."""
            with contextlib.ExitStack() as scope:
                enc = out.encoder_out
                if pool and codes != out.languages:
                    route = [self._expert_of[code] for code in codes]
                    scope.enter_context(
                        self.experts.scope(route=torch.tensor(route))
                    )
                    if encodes:
                        enc = self.whisper.forward_encoder(mel)
                prompts = self._prompts(codes, previous, mel.device)
                tokens = self._decode(enc, prompts, durations, beam_size)
                total, speechless = decoding.score_tokens(
                    self.whisper, enc, prompts, tokens
                )
            scores.append((total, speechless))
            return tokens, total

        index, out.tokens, rank = rescore_languages(
            out.language_probs,
            self.languages,
            self.hparams.lid_rescore_top_k,
            transcribe,
            getattr(self.hparams, "lid_rescore_confidence", None),
        )
        out.languages = [self.languages[i] for i in index.tolist()]
        pick = rank.to(mel.device)[:, None]
        out.sum_logprobs, out.no_speech_probs = (
            torch.stack(column, 1).gather(1, pick).squeeze(1)
            for column in zip(*scores)
        )

    def _named(self, enc, languages):
        """``_Pass`` of ``enc``; the decoder names missing languages."""
        if languages is not None:
            return _Pass(enc, languages, detected=False)
        codes, probs = decoding.detect_language(
            self.whisper, enc, candidates=self.languages
        )
        return _Pass(enc, codes, detected=True, language_probs=probs)

    def _encode(self, mel, valid, languages, stack):
        """Routes the experts (kept in ``stack`` for the decoder), encodes.

        Returns
        -------
        _Pass
            Encoder output, languages (given or named), gate weights.
        """
        whisper, experts, mode = self.whisper, self.experts, self._mode
        if mode in ("none", "static") or self._merged_language is not None:
            return self._named(whisper.forward_encoder(mel), languages)
        if mode == "single":
            stack.enter_context(experts.scope(route=0))
            return self._named(whisper.forward_encoder(mel), languages)
        if mode == "token":
            stack.enter_context(experts.scope(token=True))
            return self._named(whisper.forward_encoder(mel), languages)
        base = None
        if languages is None and (mode == "pool" or self.gate.language_aware):
            # Routing (or an aware gate) needs the language before the
            # adapted layers run: base Whisper (with the shared adapter
            # at its language-step weight, if one is recorded) names it.
            with experts.scope(), language_step_weights(whisper):
                base = self._named(whisper.forward_encoder(mel), None)
            languages = base.languages
        if mode == "pool":
            stack.enter_context(
                experts.scope(
                    route=torch.tensor(
                        [self._expert_of[lang] for lang in languages]
                    )
                )
            )
            # The base pass's encoder output serves decoder-only experts,
            # unless it ran with the shared adapter re-weighed.
            if (
                base is not None
                and not self._experts_adapt_encoder()
                and not has_language_step_weights(whisper)
            ):
                return base
            enc = whisper.forward_encoder(mel)
            if base is None:
                return _Pass(enc, languages, detected=False)
            base.encoder_out = enc
            return base
        out = self._fuse(mel, valid, languages, stack)
        if base is not None:
            out.detected, out.language_probs = True, base.language_probs
        return out

    def _fuse(self, mel, valid, languages, stack):
        """Utterance-gate fusion, the gate fed inside the encoder."""
        from speechbrain_lora_experts.gate import GateTap

        experts, gate = self.experts, self.gate
        lang_ids = None
        if gate.language_aware:
            lang_ids = torch.tensor(
                [self.languages.index(lang) for lang in languages],
                device=mel.device,
            )
        tap = GateTap(self.whisper, experts, gate)
        try:
            with experts.scope():
                # The tap sets the mix inside the encoder.
                tap.prepare(valid, lang_ids)
                enc = self.whisper.forward_encoder(mel)
        finally:
            tap.remove()
        weights = tap.weights
        stack.enter_context(experts.scope(mix=weights))
        if languages is not None:
            return _Pass(enc, languages, False, gate_weights=weights)
        if self.hparams.lid_source == "gate":
            probs = tap.logits.float().softmax(dim=-1)
            codes = [self.languages[i] for i in probs.argmax(-1).tolist()]
            return _Pass(enc, codes, True, weights, language_probs=probs)
        # The experts' mix is set: the fused model names the language.
        out = self._named(enc, None)
        out.gate_weights = weights
        return out

    def _decode(self, enc, prompts, durations, beam_size):
        limits = decoding.max_tokens_for(durations).to(enc.device)
        beam = self.hparams.beam_size if beam_size is None else beam_size
        if int(beam) > 1:
            return decoding.beam_decode(
                self.whisper, enc, prompts, int(beam), limits
            )
        return decoding.greedy_decode(self.whisper, enc, prompts, limits)
