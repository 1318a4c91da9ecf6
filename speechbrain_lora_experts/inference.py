"""Pretrained interface: transcribe with a model folder written by a run.

``LoRAExpertsASR`` is a SpeechBrain ``Pretrained`` subclass. It loads the
``<output_folder>/model/`` folder a training run writes (see ``export``):
``hyperparams.yaml`` builds SpeechBrain's Whisper, attaches the experts
from their PEFT adapter folders and the fusion gate; every weight is read
from safetensors.

* a local folder is used in place (``source`` may be relative; ``savedir``
  then only receives links); a hub id or URL is fetched file by file into
  ``savedir`` (the list is in ``model.json``);
* ``transcribe_batch(wavs, wav_lens, languages=None)``: given languages,
  the decoder prompt carries them (and a language-aware gate sees them);
  without, the model names the language among its own languages: the
  utterance gate's LID logits (fusion), else Whisper's decoder;
* routing per system: an expert model routes every utterance to its
  language's expert (a pool of several experts routes by language; without
  languages, base Whisper names the language first, which costs a second
  encoder pass when experts adapt the encoder); multilingual and distilled
  models use their single LoRA; fusion mixes the experts with the gate fed
  inside the encoder (``gate.GateTap``, no extra pass) or with per-token
  gates (fusion without a gate: ``oracle`` routes like an expert pool,
  ``linear``/``ties`` merge all experts into the weights at load); full
  finetuning has no experts;
* ``merge_language("de")`` merges that language's expert (or the single
  LoRA) into the weights: language-aware decoding at base-model cost,
  identical to routed decoding. ``unmerge()`` restores the weights.

Clips longer than the model's encoder window (30 s unless the model was
trained with a shorter ``encoder_window_s``) raise ``ValueError``: no
chunking is done, because Whisper would otherwise silently drop the rest of
the clip. Split long recordings first (e.g. with a VAD).

Authors
 * speechbrain-lora-experts developers 2026
"""

import contextlib
import json
import os
import posixpath
import re
from dataclasses import dataclass
from typing import Optional

import torch
from speechbrain.inference.interfaces import Pretrained
from speechbrain.utils.fetching import FetchConfig, LocalStrategy, fetch

from speechbrain_lora_experts import decoding
from speechbrain_lora_experts.data.audio import load_audio
from speechbrain_lora_experts.export import (
    EXPERTS_DIR,
    GATE_WEIGHTS,
    HPARAMS_FILE,
    MODEL_INFO,
    TOKEN_GATE_WEIGHTS,
    WHISPER_DIR,
)
from speechbrain_lora_experts.languages import (
    UnknownLanguageError,
    canonical_language,
)

# owner/name: what SpeechBrain's fetch would look up on the HF hub.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class Transcription:
    """What ``LoRAExpertsASR`` returns for one utterance.

    Attributes
    ----------
    text : str
        The transcript.
    language : str
        Whisper code of the language in the decoder prompt: the one given,
        or the one the model named.
    gate_weights : dict or None
        Utterance-gate fusion: ``{language: weight}`` (sums to 1); None for
        other models, token-level gates and merged decoding.
    detected : bool
        Whether ``language`` was named by the model (not given).
    """

    text: str
    language: str
    gate_weights: Optional[dict] = None
    detected: bool = False


def load_safetensors(module, path):
    """Loads a safetensors state dict into ``module`` (strict).

    The Pretrainer load hook of the gates: weights never go through pickle.

    Arguments
    ---------
    module : torch.nn.Module
        Receives the weights.
    path : str or os.PathLike
        A safetensors file (whatever its name: the Pretrainer links it as
        ``<key>.ckpt``).
    """
    from safetensors.torch import load_file

    module.load_state_dict(load_file(os.fspath(path)), strict=True)


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
    """Raises ``FileNotFoundError`` naming what the folder lacks.

    Arguments
    ---------
    folder : str
        A model folder.
    hparams_file : str
        Name of its HyperPyYAML file.
    """
    info = _read_info(folder)
    if not os.path.isfile(os.path.join(folder, hparams_file)):
        raise FileNotFoundError(
            f"{folder} has no {hparams_file} (exported before the "
            "pretrained interface existed?). Write it with: python -c "
            "'from speechbrain_lora_experts.export import write_hyperparams;"
            f' write_hyperparams("{folder}")\''
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
    hparams_file=HPARAMS_FILE,
    local_strategy=LocalStrategy.SYMLINK,
    fetch_config=FetchConfig(),
):
    """The local folder ``hyperparams.yaml``'s ``model_folder`` points to.

    A local folder is used where it is (nothing is copied). A hub id, URL
    or ``FetchSource`` is fetched into ``savedir``, keeping the folder
    layout, with SpeechBrain's ``fetch`` (cache, links, offline mode).

    Arguments
    ---------
    source : str, os.PathLike or FetchSource
        The model folder, a hub id (``owner/name``) or a URL.
    savedir : str
        Where remote files go (required for them).
    hparams_file : str
        Name of the HyperPyYAML file.
    local_strategy : LocalStrategy
        Passed to ``fetch``.
    fetch_config : FetchConfig
        Passed to ``fetch``.

    Returns
    -------
    str
        Absolute path of the model folder.
    """
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isdir(path):
            folder = os.path.abspath(path)
            check_model_folder(folder, hparams_file)
            return folder
        if not path.startswith(("http://", "https://")) and (
            not _HUB_ID.match(path) or os.path.exists(os.path.dirname(path))
        ):
            raise FileNotFoundError(
                f"model folder {path} does not exist (and is no hub id)"
            )
    if savedir is None:
        raise ValueError(
            f"savedir= is needed to load {source}: its files are fetched there"
        )
    savedir = os.path.abspath(os.fspath(savedir))

    def get(name):
        return fetch(
            filename=name,
            source=source,
            savedir=os.path.join(savedir, posixpath.dirname(name)),
            save_filename=posixpath.basename(name),
            local_strategy=local_strategy,
            fetch_config=fetch_config,
        )

    get(MODEL_INFO)
    get(hparams_file)
    for name in model_files(_read_info(savedir)):
        get(name)
    check_model_folder(savedir, hparams_file)
    return savedir


class LoRAExpertsASR(Pretrained):
    """Whisper with LoRA experts (routed, fused or merged), ready to use.

    Build it with ``from_hparams(source=<model folder>)``. See the module
    docstring for routing, language handling and long clips.

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
    ...     make_tiny_whisper)
    >>> from speechbrain_lora_experts.whisper import Whisper
    >>> hub = make_tiny_whisper(tempfile.mkdtemp())
    >>> whisper = Whisper(hub, tempfile.mkdtemp(), encoder_window_s=4)
    >>> pool = WhisperLoRAExperts(whisper, expert_names=["de", "es"], rank=2)
    >>> folder = export_model(tempfile.mkdtemp(), "expert", ["de", "es"],
    ...     hub, encoder_window_s=4, experts=pool)
    >>> asr = LoRAExpertsASR.from_hparams(source=folder)
    >>> wavs = torch.zeros(2, 16000)
    >>> out = asr.transcribe_batch(wavs, languages=["es", "de"])
    >>> [r.language for r in out]
    ['es', 'de']
    >>> with asr.merged("de"):
    ...     asr.transcribe_batch(torch.zeros(1, 16000))[0].language
    'de'
    """

    HPARAMS_NEEDED = [
        "system",
        "languages",
        "sample_rate",
        "beam_size",
        "experts",
    ]
    MODULES_NEEDED = ["whisper"]

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
    def from_hparams(
        cls,
        source,
        hparams_file=HPARAMS_FILE,
        savedir=None,
        overrides=None,
        local_strategy=LocalStrategy.SYMLINK,
        fetch_config=FetchConfig(),
        **kwargs,
    ):
        """Loads a model folder (local, hub id or URL).

        Arguments
        ---------
        source : str, os.PathLike or FetchSource
            The model folder a run wrote (``<output_folder>/model``), or
            where a copy of it lives (hub id ``owner/name``, URL).
        hparams_file : str
            Its HyperPyYAML file.
        savedir : str
            For remote sources: where the files are fetched (required).
            For a local folder: only receives links (optional).
        overrides : dict
            Changes to the yaml, e.g. ``{"whisper_hub": "<folder>"}`` when
            the base model moved, or ``{"beam_size": 5}``.
        local_strategy : LocalStrategy
            How fetched files are kept (see SpeechBrain's ``fetch``).
        fetch_config : FetchConfig
            Fetch options (offline mode, revision, ...).
        **kwargs
            Forwarded to ``Pretrained`` (``run_opts={"device": "cuda"}``,
            ...).

        Returns
        -------
        LoRAExpertsASR
        """
        folder = resolve_model_folder(
            source, savedir, hparams_file, local_strategy, fetch_config
        )
        overrides = {"model_folder": folder, **dict(overrides or {})}
        return super().from_hparams(
            source=source,
            hparams_file=hparams_file,
            savedir=savedir,
            overrides=overrides,
            local_strategy=local_strategy,
            fetch_config=fetch_config,
            **kwargs,
        )

    # What the yaml built ----------------------------------------------------
    @property
    def whisper(self):
        """SpeechBrain's Whisper (``speechbrain_lora_experts.whisper``)."""
        return self.mods.whisper

    @property
    def experts(self):
        """The ``WhisperLoRAExperts`` pool, or None (full finetune)."""
        return self.hparams.experts

    @property
    def gate(self):
        """The utterance-level fusion gate, or None."""
        return self.mods["gate"] if "gate" in self.mods else None

    @property
    def window_s(self):
        """Longest clip (seconds) the model transcribes."""
        return self.whisper.window_samples / self.hparams.sample_rate

    @property
    def merged_language(self):
        """Language whose expert is merged into the weights, or None."""
        return self._merged_language

    # Transcription --------------------------------------------------------
    def transcribe_file(self, path, language=None, beam_size=None):
        """Transcribes one audio file (any rate, mono or multichannel).

        Arguments
        ---------
        path : str or os.PathLike
            wav, flac, mp3 or ogg file, at most ``window_s`` long.
        language : str
            Language-aware decoding in this language (one of the model's);
            None: the model names the language.
        beam_size : int
            Beam search width; default: the model's (1 = greedy).

        Returns
        -------
        Transcription
        """
        wav = load_audio(path, self.hparams.sample_rate)
        languages = None if language is None else [language]
        return self.transcribe_batch(
            wav.unsqueeze(0), torch.ones(1), languages, beam_size
        )[0]

    @torch.no_grad()
    def transcribe_batch(
        self, wavs, wav_lens=None, languages=None, beam_size=None
    ):
        """Transcribes a padded batch of 16 kHz mono waveforms.

        Each utterance gets what it gets alone (per-utterance features,
        routing, prompt and length bound), whatever it is batched with.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[B, samples]`` (or ``[samples]``) at ``sample_rate``.
        wav_lens : torch.Tensor
            ``[B]`` relative lengths (SpeechBrain convention); None: all 1.
        languages : str or list of str
            One per utterance (a string applies to all): language-aware
            decoding. None: the model names each utterance's language.
        beam_size : int
            Beam search width; default: the model's (1 = greedy).

        Returns
        -------
        list of Transcription
        """
        wavs = torch.as_tensor(wavs)
        if wavs.dim() == 1:
            wavs = wavs.unsqueeze(0)
        if wavs.dim() != 2:
            raise ValueError(
                f"wavs must be [batch, samples] mono, got {tuple(wavs.shape)}"
            )
        batch, total = wavs.shape
        if wav_lens is None:
            wav_lens = torch.ones(batch)
        wav_lens = torch.as_tensor(wav_lens).reshape(-1).double().cpu()
        if wav_lens.numel() != batch:
            raise ValueError(f"{wav_lens.numel()} wav_lens for {batch} wavs")
        lengths = (wav_lens * total).round().long().clamp(1, total)
        self._check_lengths(lengths)
        given = self._check_languages(languages, batch)
        if self._merged_language is not None:
            if given is None:
                given = [self._merged_language] * batch
            elif set(given) != {self._merged_language}:
                raise ValueError(
                    f"the {self._merged_language!r} expert is merged into "
                    f"the weights; call unmerge() to transcribe {given}"
                )
        # Padding is silence, as when the clip is transcribed alone.
        keep = torch.arange(total)[None, :] < lengths[:, None]
        wavs = (wavs.float().cpu() * keep).to(self.device)
        valid = (lengths.float() / self.whisper.window_samples).to(self.device)
        durations = lengths.double() / self.hparams.sample_rate
        try:
            with self.inference_ctx:
                mel = self.whisper._get_mel(wavs)
                enc, used, weights = self._encode(mel, valid, given)
                tokens = self._decode(enc, used, durations, beam_size)
        finally:
            if self.experts is not None:
                # Routing state must not leak into the next call.
                self.experts.off()
        texts = decoding.decode_text(self.whisper, tokens)
        results = []
        for i, (text, lang) in enumerate(zip(texts, used)):
            gate = None
            if weights is not None:
                gate = dict(zip(self.languages, weights[i].float().tolist()))
            results.append(Transcription(text, lang, gate, given is None))
        return results

    def forward(self, wavs, wav_lens=None, languages=None):
        """Same as ``transcribe_batch``."""
        return self.transcribe_batch(wavs, wav_lens, languages)

    def _check_lengths(self, lengths):
        window = self.whisper.window_samples
        too_long = [
            (i, n / self.hparams.sample_rate)
            for i, n in enumerate(lengths.tolist())
            if n > window
        ]
        if too_long:
            clips = ", ".join(f"#{i}: {s:.2f} s" for i, s in too_long)
            raise ValueError(
                f"clips longer than this model's {self.window_s:g} s encoder "
                f"window ({clips}); LoRAExpertsASR does not chunk audio "
                "(Whisper would drop the rest): split long recordings first, "
                "e.g. with a VAD"
            )

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
            try:
                code = canonical_language(lang)
            except UnknownLanguageError:
                code = None
            if code not in self.languages:
                raise UnknownLanguageError(
                    f"language {lang!r} is not one of this model's "
                    f"languages {self.languages}; pass one of them, or "
                    "languages=None to let the model name it"
                )
            codes.append(code)
        return codes

    def _detect(self, enc):
        """Whisper's decoder names the language, among the model's."""
        codes, _ = decoding.detect_language(
            self.whisper, enc, candidates=self.languages
        )
        return codes

    def _encode(self, mel, valid, languages):
        """Sets the routing, runs the encoder, names missing languages.

        Returns
        -------
        enc : torch.Tensor
            Encoder output; the routing stays set for the decoder.
        languages : list of str
        gate_weights : torch.Tensor or None
            ``[B, N]`` (utterance-gate fusion).
        """
        whisper, experts, mode = self.whisper, self.experts, self._mode
        if mode in ("none", "static") or self._merged_language is not None:
            enc = whisper.forward_encoder(mel)
            return enc, languages or self._detect(enc), None
        if mode == "single":
            experts.route(0)
            enc = whisper.forward_encoder(mel)
            return enc, languages or self._detect(enc), None
        if mode == "token":
            experts.use_token_gates()
            enc = whisper.forward_encoder(mel)
            return enc, languages or self._detect(enc), None
        base_enc = None
        needs_language = languages is None and (
            mode == "pool" or self.gate.language_aware
        )
        if needs_language:
            # Routing (or an aware gate) needs the language before the
            # adapted layers run: base Whisper names it.
            experts.off()
            base_enc = whisper.forward_encoder(mel)
            languages = self._detect(base_enc)
        if mode == "pool":
            experts.route(
                torch.tensor([self._expert_of[lang] for lang in languages])
            )
            adapts_encoder = any(
                name.startswith("encoder.") for name in experts.layers
            )
            if base_enc is not None and not adapts_encoder:
                return base_enc, languages, None
            return whisper.forward_encoder(mel), languages, None
        return self._fuse(mel, valid, languages)

    def _fuse(self, mel, valid, languages):
        """Utterance-gate fusion, the gate fed inside the encoder."""
        from speechbrain_lora_experts.gate import GateTap

        gate = self.gate
        lang_ids = None
        if gate.language_aware:
            lang_ids = torch.tensor(
                [self.languages.index(lang) for lang in languages],
                device=mel.device,
            )
        tap = GateTap(self.whisper, self.experts, gate)
        try:
            tap.prepare(valid, lang_ids)
            enc = self.whisper.forward_encoder(mel)
        finally:
            tap.remove()
        if languages is None:
            if self.hparams.lid_source == "gate":
                best = tap.logits.argmax(dim=-1).tolist()
                languages = [self.languages[i] for i in best]
            else:
                # The experts' mix is still set: the fused model names it.
                languages = self._detect(enc)
        return enc, languages, tap.weights

    def _decode(self, enc, languages, durations, beam_size):
        prompts = decoding.prompt_tokens(
            self.whisper, languages, device=enc.device
        )
        limits = decoding.max_tokens_for(durations).to(enc.device)
        beam = self.hparams.beam_size if beam_size is None else beam_size
        if int(beam) > 1:
            return decoding.beam_decode(
                self.whisper, enc, prompts, int(beam), limits
            )
        return decoding.greedy_decode(self.whisper, enc, prompts, limits)

    # Merging ----------------------------------------------------------------
    def merge_language(self, language):
        """Merges ``language``'s expert into the weights (zero overhead).

        Fusion models merge the language's own expert (the gate is
        bypassed); multilingual and distilled models merge their single
        LoRA. Until ``unmerge()``, transcription is language-aware in this
        language (``languages=None`` means it).

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
        self.unmerge()
        expert = 0 if self._mode == "single" else self._expert_of[code]
        experts.merge(expert)
        self._merged_language = code

    def unmerge(self):
        """Restores the base weights exactly (no-op when nothing merged)."""
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
