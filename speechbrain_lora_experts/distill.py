"""Multi-teacher distillation loss for the multilingual LoRA student.

For every utterance the teacher is Whisper with the expert of its language;
the student is one LoRA shared by all languages. Over the target tokens::

    loss = (1 - lambda) * CE
           + lambda * T^2 * KL(teacher || student)
           + mu * T^2 * KL(base || student)

with every distribution softened by the temperature T (Hinton et al., 2015):

* ``lambda`` (``distill_weight``) shares the loss between the reference
  tokens and the teachers;
* ``teacher`` is the expert of the utterance's language, or, with a
  multilingual teacher of weight ``beta`` (``multilingual_teacher_weight``),
  the mixture ``(1 - beta) * p_expert + beta * p_multilingual`` taken in
  probability space at temperature T (``mix_teacher_log_probs``): the
  multilingual LoRA has seen every language and smooths what a single
  expert overfits;
* with ``teacher_soup = (a, b)`` the teacher is instead the *expert soup*
  ``W + a * dW_multilingual + b * dW_expert`` of the utterance's language
  (weight space, one pass: ``soup_teacher_mix``), the model
  ``fuse.yaml``'s expert soup decodes with; the student learns the soups of
  every language in one LoRA that names the language itself (no router);
* ``base`` is the frozen Whisper with no adapter routed (with a merged
  ``shared_adapter``: that Whisper + shared adapter), and ``mu``
  (``distill_anchor_weight``, default 0: no anchor, no extra pass) keeps
  the student close to it, so that it forgets less of what zero-shot
  Whisper does well on speech unlike the training data.

The pool helpers (``prepare_distill_pool``) fill the frozen multilingual
teacher's slot and the optional initial student from PEFT adapter folders.

Authors
 * speechbrain-lora-experts developers 2026
"""

import logging
import math
import numbers
import os

import torch

from speechbrain_lora_experts.peft_io import (
    Adapter,
    AdapterError,
    load_expert,
    read_adapter,
)

logger = logging.getLogger(__name__)

#: Pool slot of the distillation student.
STUDENT = "student"
#: Pool slot of the frozen multilingual teacher (never exported).
MULTILINGUAL_TEACHER = "multilingual_teacher"


def check_distill_options(
    weight=0.5, temperature=2.0, anchor_weight=0.0, multilingual_weight=0.5
):
    """Refuses loss weights outside their range, naming the hparam.

    Arguments
    ---------
    weight : float
        lambda (``distill_weight``), in [0, 1].
    temperature : float
        T (``distill_temperature``), > 0.
    anchor_weight : float
        mu (``distill_anchor_weight``), >= 0 and finite.
    multilingual_weight : float
        beta (``multilingual_teacher_weight``), in [0, 1].

    Example
    -------
    >>> check_distill_options(weight=0.5, anchor_weight=0.1)
    >>> check_distill_options(anchor_weight=-1.0)
    Traceback (most recent call last):
    ...
    ValueError: distill_anchor_weight (mu) must be >= 0 (finite), got -1.0
    """
    checks = [
        ("distill_weight (lambda)", weight, "in [0, 1]", _unit),
        ("distill_temperature (T)", temperature, "> 0 (finite)", _positive),
        (
            "distill_anchor_weight (mu)",
            anchor_weight,
            ">= 0 (finite)",
            _non_negative,
        ),
        (
            "multilingual_teacher_weight (beta)",
            multilingual_weight,
            "in [0, 1]",
            _unit,
        ),
    ]
    for name, value, text, test in checks:
        if not _is_real(value) or not test(float(value)):
            raise ValueError(f"{name} must be {text}, got {value!r}")


def check_teacher_soup(value, has_multilingual_teacher):
    """Refuses a ``teacher_soup`` that is not two weights >= 0.

    Arguments
    ---------
    value : sequence of float or None
        ``(a, b)``: the multilingual LoRA's and the expert's weight in each
        teacher; None: no soup (the expert, or the probability mixture).
    has_multilingual_teacher : bool
        Whether the pool has the multilingual teacher's slot.

    Returns
    -------
    tuple of float or None
        ``(a, b)``.

    Example
    -------
    >>> check_teacher_soup([0.65, 0.5], True)
    (0.65, 0.5)
    >>> check_teacher_soup([0.5], True)
    Traceback (most recent call last):
    ...
    ValueError: teacher_soup must be two weights [a, b] >= 0, not both 0 ...
    >>> check_teacher_soup([0.5, 0.5], False)
    Traceback (most recent call last):
    ...
    ValueError: teacher_soup mixes in the multilingual LoRA: set ...
    """
    if value is None:
        return None
    try:
        pair = tuple(value)
    except TypeError:
        pair = ()
    if (
        len(pair) != 2
        or not all(_is_real(v) and _non_negative(float(v)) for v in pair)
        or not any(pair)
    ):
        raise ValueError(
            "teacher_soup must be two weights [a, b] >= 0, not both 0 (the "
            f"multilingual LoRA's and the expert's), got {value!r}"
        )
    if not has_multilingual_teacher:
        raise ValueError(
            "teacher_soup mixes in the multilingual LoRA: set "
            "multilingual_teacher to its adapter folder"
        )
    return tuple(float(v) for v in pair)


def soup_teacher_mix(lang_ids, n_experts, multilingual_slot, soup):
    """``[B, N]`` expert weights of each utterance's soup teacher.

    A LoRA's update is linear in its delta, so mixing the multilingual slot
    at ``a`` with the language's expert at ``b`` runs exactly the merged
    soup ``W + a * dW_ml + b * dW_expert``.

    Arguments
    ---------
    lang_ids : torch.LongTensor
        ``[B]`` each utterance's expert (its language's slot).
    n_experts : int
        Slots in the pool.
    multilingual_slot : int
        The multilingual teacher's slot.
    soup : tuple of float
        ``(a, b)`` (``check_teacher_soup``).

    Returns
    -------
    torch.Tensor
        ``[B, N]`` float weights for ``experts.scope(mix=)``.

    Example
    -------
    >>> soup_teacher_mix(torch.tensor([0, 1]), 4, 3, (0.65, 0.5))
    tensor([[0.5000, 0.0000, 0.0000, 0.6500],
            [0.0000, 0.5000, 0.0000, 0.6500]])
    """
    a, b = soup
    lang_ids = torch.as_tensor(lang_ids)
    weights = torch.zeros(lang_ids.shape[0], n_experts, device=lang_ids.device)
    weights[:, multilingual_slot] = a
    rows = torch.arange(lang_ids.shape[0], device=lang_ids.device)
    weights[rows, lang_ids] += b
    return weights


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _unit(value):
    return 0.0 <= value <= 1.0


def _positive(value):
    return 0.0 < value < math.inf


def _non_negative(value):
    return 0.0 <= value < math.inf


def masked_cross_entropy(logits, targets, mask, label_smoothing=0.0):
    """Mean token cross-entropy over ``mask``.

    Arguments
    ---------
    logits : torch.Tensor
        ``[B, T, V]``.
    targets : torch.LongTensor
        ``[B, T]``.
    mask : torch.Tensor
        ``[B, T]``, 1 where the token counts.
    label_smoothing : float
        As in ``torch.nn.functional.cross_entropy``.

    Returns
    -------
    torch.Tensor
        The scalar loss.

    Example
    -------
    >>> logits = torch.zeros(1, 2, 4)
    >>> loss = masked_cross_entropy(
    ...     logits, torch.tensor([[1, 2]]), torch.tensor([[1.0, 0.0]])
    ... )
    >>> round(loss.item(), 4) == round(float(torch.log(torch.tensor(4.0))), 4)
    True
    """
    per_token = torch.nn.functional.cross_entropy(
        logits.float().transpose(1, 2),
        targets,
        reduction="none",
        label_smoothing=label_smoothing,
    )
    mask = mask.to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def mix_teacher_log_probs(
    expert_logits, multilingual_logits, weight=0.5, temperature=1.0
):
    """Log-probabilities of the expert / multilingual teacher mixture.

    ``log((1 - weight) * p_expert + weight * p_multilingual)``, both
    distributions softened by the temperature T, mixed in probability space
    (``logaddexp``, no underflow). ``weight`` 0 gives the expert's tempered
    log-probabilities exactly, 1 the multilingual teacher's. Pass the result
    to ``distillation_kl(..., teacher_is_log_probs=True)``.

    Arguments
    ---------
    expert_logits, multilingual_logits : torch.Tensor
        ``[B, T, V]`` logits of the two teachers.
    weight : float
        beta, the multilingual teacher's share, in [0, 1].
    temperature : float
        Softening temperature T (> 0).

    Returns
    -------
    torch.Tensor
        ``[B, T, V]`` float32 log-probabilities at temperature T.

    Example
    -------
    >>> expert = torch.log(torch.tensor([[[0.8, 0.2]]]))
    >>> multilingual = torch.log(torch.tensor([[[0.2, 0.8]]]))
    >>> mixed = mix_teacher_log_probs(expert, multilingual, weight=0.25)
    >>> [round(p, 4) for p in mixed.exp().flatten().tolist()]
    [0.65, 0.35]
    >>> only_expert = mix_teacher_log_probs(expert, multilingual, weight=0.0)
    >>> torch.equal(only_expert, torch.log_softmax(expert, dim=-1))
    True
    """
    check_distill_options(temperature=temperature, multilingual_weight=weight)
    if expert_logits.shape != multilingual_logits.shape:
        raise ValueError(
            f"expert logits {tuple(expert_logits.shape)} and multilingual "
            f"teacher logits {tuple(multilingual_logits.shape)} differ in "
            "shape"
        )
    t = temperature
    log_expert = torch.log_softmax(expert_logits.float() / t, dim=-1)
    if weight == 0:
        return log_expert
    log_multilingual = torch.log_softmax(
        multilingual_logits.float() / t, dim=-1
    )
    if weight == 1:
        return log_multilingual
    return torch.logaddexp(
        log_expert + math.log1p(-weight), log_multilingual + math.log(weight)
    )


def distillation_kl(
    student_logits,
    teacher_logits,
    mask,
    temperature=1.0,
    teacher_is_log_probs=False,
):
    """``T^2 * KL(teacher || student)`` averaged over masked tokens.

    Arguments
    ---------
    student_logits : torch.Tensor
        ``[B, T, V]`` student logits.
    teacher_logits : torch.Tensor
        ``[B, T, V]`` teacher logits, or, with ``teacher_is_log_probs``,
        log-probabilities already softened by T (``mix_teacher_log_probs``).
    mask : torch.Tensor
        ``[B, T]``, 1 where the token counts.
    temperature : float
        Softening temperature T (> 0).
    teacher_is_log_probs : bool
        Use ``teacher_logits`` as the teacher's tempered log-probabilities
        as they are.

    Returns
    -------
    torch.Tensor
        The scalar loss term.

    Example
    -------
    >>> teacher = torch.tensor([[[2.0, 0.0]]])
    >>> kl = distillation_kl(torch.zeros(1, 1, 2), teacher, torch.ones(1, 1))
    >>> round(kl.item(), 4)
    0.3278
    >>> log_probs = torch.log_softmax(teacher, dim=-1)
    >>> same = distillation_kl(
    ...     torch.zeros(1, 1, 2),
    ...     log_probs,
    ...     torch.ones(1, 1),
    ...     teacher_is_log_probs=True,
    ... )
    >>> round(same.item(), 4)
    0.3278
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher "
            f"logits {tuple(teacher_logits.shape)} differ in shape"
        )
    t = temperature
    log_student = torch.log_softmax(student_logits.float() / t, dim=-1)
    if teacher_is_log_probs:
        log_teacher = teacher_logits.float()
    else:
        log_teacher = torch.log_softmax(teacher_logits.float() / t, dim=-1)
    kl = (log_teacher.exp() * (log_teacher - log_student)).sum(dim=-1)
    mask = mask.to(kl.dtype)
    return t * t * (kl * mask).sum() / mask.sum().clamp(min=1)


def distillation_loss(
    student_logits,
    teacher_logits,
    targets,
    mask,
    weight=0.5,
    temperature=2.0,
    label_smoothing=0.0,
    anchor_logits=None,
    anchor_weight=0.0,
    multilingual_logits=None,
    multilingual_weight=0.5,
):
    """The student's loss (see the module docstring).

    ``(1 - weight) * CE + weight * T^2 * KL(teacher || student)
    + anchor_weight * T^2 * KL(base || student)``; the teacher is the
    expert, or its mixture with the multilingual teacher when
    ``multilingual_logits`` is given (``mix_teacher_log_probs``).

    Arguments
    ---------
    student_logits : torch.Tensor
        ``[B, T, V]``, the only input that gets gradients.
    teacher_logits : torch.Tensor
        ``[B, T, V]`` logits of each utterance's expert (constants).
    targets : torch.LongTensor
        ``[B, T]`` reference tokens.
    mask : torch.Tensor
        ``[B, T]`` tokens that count.
    weight : float
        lambda, the share of the distillation term, in [0, 1].
    temperature : float
        Softening temperature T.
    label_smoothing : float
        For the CE term.
    anchor_logits : torch.Tensor
        ``[B, T, V]`` logits of the frozen base (constants); needed when
        ``anchor_weight`` > 0, ignored otherwise.
    anchor_weight : float
        mu, the weight of the anchor term (>= 0; 0: no anchor).
    multilingual_logits : torch.Tensor
        ``[B, T, V]`` logits of the multilingual teacher (constants), or
        None for the expert teacher alone.
    multilingual_weight : float
        beta, the multilingual teacher's share of the teacher mixture, in
        [0, 1]; used only with ``multilingual_logits``.

    Returns
    -------
    loss, ce, kl : torch.Tensor
        The loss, its CE term and its (unweighted) teacher KL term; the
        anchor term is ``loss - (1 - weight) * ce - weight * kl``.

    Example
    -------
    >>> s = torch.randn(2, 3, 5)
    >>> targets, mask = torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3)
    >>> loss, ce, kl = distillation_loss(s, s.clone(), targets, mask)
    >>> abs(kl.item()) < 1e-6
    True
    >>> anchored, _, _ = distillation_loss(
    ...     s, s.clone(), targets, mask, anchor_logits=s, anchor_weight=2.0
    ... )
    >>> abs(anchored.item() - loss.item()) < 1e-6  # the student is the base
    True
    """
    check_distill_options(
        weight=weight,
        temperature=temperature,
        anchor_weight=anchor_weight,
        multilingual_weight=multilingual_weight,
    )
    ce = masked_cross_entropy(student_logits, targets, mask, label_smoothing)
    if multilingual_logits is None:
        kl = distillation_kl(
            student_logits, teacher_logits.detach(), mask, temperature
        )
    else:
        teacher = mix_teacher_log_probs(
            teacher_logits.detach(),
            multilingual_logits.detach(),
            multilingual_weight,
            temperature,
        )
        kl = distillation_kl(student_logits, teacher, mask, temperature, True)
    loss = (1 - weight) * ce + weight * kl
    if anchor_weight > 0:
        if anchor_logits is None:
            raise ValueError(
                f"anchor_weight={anchor_weight} needs anchor_logits (the "
                "frozen base's logits)"
            )
        anchor = distillation_kl(
            student_logits, anchor_logits.detach(), mask, temperature
        )
        loss = loss + anchor_weight * anchor
    return loss, ce, kl


# The pool ------------------------------------------------------------------
def prepare_distill_pool(
    experts, multilingual_teacher=None, student_init=None, shared_adapter=None
):
    """Fills the distillation pool's extra slots; only the student trains.

    Call it when the pool attaches, before the optimiser exists and before
    the checkpointer recovers: a resumed run then gets its trained student
    back from the checkpoint, over ``student_init``.

    Arguments
    ---------
    experts : WhisperLoRAExperts
        The language experts, the ``student`` slot and, with a
        multilingual teacher, the ``multilingual_teacher`` slot.
    multilingual_teacher : str
        PEFT adapter folder (e.g. a multilingual_lora run's
        ``model/experts/multilingual``) loaded into the frozen
        ``multilingual_teacher`` slot; it must adapt the pool's layers
        with the pool's rank.
    student_init : str
        PEFT adapter folder the student starts from (its rank, alpha and
        layers must be the student's: see ``load_student_init``).
    shared_adapter : str
        The shared adapter merged into the Whisper, if any: an adapter
        trained without it warns (its update adds to the merged one), the
        shared adapter itself is refused (it would count twice).

    Returns
    -------
    WhisperLoRAExperts
        ``experts``, with every slot but the student frozen.

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
    >>> whisper = Whisper(hub, tempfile.mkdtemp())
    >>> names = ["de", STUDENT, MULTILINGUAL_TEACHER]
    >>> pool = WhisperLoRAExperts(whisper, expert_names=names, rank=2)
    >>> folder = save_expert(pool, "de", tempfile.mkdtemp())
    >>> pool = prepare_distill_pool(pool, multilingual_teacher=folder)
    >>> [p.requires_grad for p in pool.expert_parameters(STUDENT)][:2]
    [True, True]
    >>> any(p.requires_grad for p in pool.expert_parameters(2))
    False
    """
    if multilingual_teacher:
        if MULTILINGUAL_TEACHER not in experts.expert_names:
            raise ValueError(
                f"multilingual_teacher={multilingual_teacher} needs a "
                f"{MULTILINGUAL_TEACHER!r} slot in the pool (experts: "
                f"{experts.expert_names})"
            )
        adapter = _read(multilingual_teacher, "multilingual_teacher")
        _check_base(adapter, shared_adapter, "multilingual_teacher")
        try:
            load_expert(experts, MULTILINGUAL_TEACHER, adapter, strict=True)
        except AdapterError as e:
            raise AdapterError(
                f"multilingual_teacher: {e}\nThe teacher slot takes the "
                "expert pool's layers and rank: give a multilingual LoRA "
                "trained with the experts' lora_rank, lora_targets and "
                "lora_layers."
            ) from None
    if student_init:
        adapter = _read(student_init, "student_init")
        _check_base(adapter, shared_adapter, "student_init")
        load_student_init(experts, adapter)
    experts.set_trainable(experts=[STUDENT])
    return experts


def load_student_init(experts, adapter, student=STUDENT):
    """Copies a PEFT adapter into the student slot, refusing another shape.

    The student keeps the pool's shape: the adapter must adapt exactly its
    layers with its rank, alpha and scaling (a silent change of alpha would
    rescale the initial update).

    Arguments
    ---------
    experts : WhisperLoRAExperts
        The pool holding the student.
    adapter : str or Adapter
        Adapter folder, or an adapter already read.
    student : str or int
        The student's slot.

    Returns
    -------
    Adapter
        The adapter loaded.

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
    >>> whisper = Whisper(hub, tempfile.mkdtemp())
    >>> pool = WhisperLoRAExperts(whisper, expert_names=["de", STUDENT], rank=2)
    >>> folder = save_expert(pool, "de", tempfile.mkdtemp())
    >>> _ = load_student_init(pool, folder)
    >>> a = [p for p in pool.expert_parameters("de")]
    >>> all(torch.equal(x, y) for x, y in zip(a, pool.expert_parameters(1)))
    True
    """
    if not isinstance(adapter, Adapter):
        adapter = _read(adapter, "student_init")
    index = experts.index_of(student) if isinstance(student, str) else student
    slots = {
        name: layer.experts[index] for name, layer in experts.layers.items()
    }
    problems = []
    extra = sorted(set(adapter.weights) - set(slots))
    missing = sorted(set(slots) - set(adapter.weights))
    if extra:
        problems.append(f"adapts layers the student lacks: {_few(extra)}")
    if missing:
        problems.append(f"does not adapt student layers: {_few(missing)}")
    for what, theirs, ours in (
        ("rank", adapter.ranks, {n: s.rank for n, s in slots.items()}),
        ("alpha", adapter.alphas, {n: s.alpha for n, s in slots.items()}),
    ):
        differ = sorted(
            n for n in set(theirs) & set(ours) if theirs[n] != ours[n]
        )
        if differ:
            name = differ[0]
            problems.append(
                f"has lora {what} {theirs[name]} where the student has "
                f"{ours[name]} ({_few(differ)})"
            )
    rslora = {s.use_rslora for s in slots.values()}
    if rslora != {adapter.use_rslora}:
        problems.append(
            f"use_rslora={adapter.use_rslora}, the student's is "
            f"{sorted(rslora)}"
        )
    if problems:
        first = next(iter(slots.values()))
        raise AdapterError(
            f"student_init {adapter.folder} does not match the student:\n"
            "  - " + "\n  - ".join(problems) + "\nThe student takes the "
            f"expert pool's shape (rank {first.rank}, alpha {first.alpha}, "
            f"{len(slots)} layers: {_few(sorted(slots))}). Give an adapter "
            "trained with the same lora_rank, lora_alpha, lora_targets and "
            "lora_layers (e.g. a multilingual_lora run with the experts' "
            "settings), or set student_init: null."
        )
    try:
        load_expert(experts, index, adapter, strict=True)
    except AdapterError as e:
        raise AdapterError(f"student_init: {e}") from None
    return adapter


def _read(folder, option):
    try:
        return read_adapter(folder)
    except AdapterError as e:
        raise AdapterError(f"{option}: {e}") from None


def _check_base(adapter, shared_adapter, option):
    """Warns when an adapter was trained on another base than this one.

    The base is Whisper with ``shared_adapter`` merged (if any); adapters
    written by the recipes record the shared adapter they were trained on
    (``lora_experts.json``), foreign adapters record none.
    """
    here = os.path.realpath(shared_adapter) if shared_adapter else None
    if here is not None and os.path.realpath(adapter.folder) == here:
        raise AdapterError(
            f"{option} {adapter.folder} is the shared_adapter already merged "
            "into this Whisper: its update would count twice. With a shared "
            "adapter, the frozen base (distill_anchor_weight) is already "
            f"Whisper + that adapter; set {option}: null."
        )
    recorded = adapter.metadata.get("shared_adapter")
    recorded = os.path.realpath(recorded) if recorded else None
    if recorded != here:
        logger.warning(
            "%s %s was trained on Whisper + shared adapter %s, but this run's "
            "base is Whisper + shared adapter %s: its update lands on "
            "another base than the one it learned",
            option,
            adapter.folder,
            adapter.metadata.get("shared_adapter"),
            shared_adapter,
        )


def _few(names, limit=3):
    shown = ", ".join(names[:limit])
    return shown + (
        f" (+{len(names) - limit} more)" if len(names) > limit else ""
    )
