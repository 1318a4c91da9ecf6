"""Multi-teacher distillation loss for the multilingual LoRA student.

For every utterance the teacher is Whisper with the expert of its language;
the student is one LoRA shared by all languages. The loss over target tokens
is ``(1 - lambda) * CE + lambda * T^2 * KL(teacher || student)``, with both
distributions softened by the temperature T (Hinton et al., 2015).

Authors
 * speechbrain-lora-experts developers 2026
"""

import torch


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


def distillation_kl(student_logits, teacher_logits, mask, temperature=1.0):
    """``T^2 * KL(teacher || student)`` averaged over masked tokens.

    Arguments
    ---------
    student_logits, teacher_logits : torch.Tensor
        ``[B, T, V]``.
    mask : torch.Tensor
        ``[B, T]``, 1 where the token counts.
    temperature : float
        Softening temperature T (> 0).

    Returns
    -------
    torch.Tensor

    Example
    -------
    >>> teacher = torch.tensor([[[2.0, 0.0]]])
    >>> kl = distillation_kl(torch.zeros(1, 1, 2), teacher, torch.ones(1, 1))
    >>> round(kl.item(), 4)
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
):
    """``(1 - weight) * CE + weight * T^2 * KL(teacher || student)``.

    Arguments
    ---------
    student_logits, teacher_logits : torch.Tensor
        ``[B, T, V]``; the teacher's are used as constants.
    targets : torch.LongTensor
        ``[B, T]`` reference tokens.
    mask : torch.Tensor
        ``[B, T]`` tokens that count.
    weight : float
        lambda, the share of the distillation term.
    temperature : float
        Softening temperature T.
    label_smoothing : float
        For the CE term.

    Returns
    -------
    loss, ce, kl : torch.Tensor

    Example
    -------
    >>> s = torch.randn(2, 3, 5)
    >>> loss, ce, kl = distillation_loss(
    ...     s, s.clone(), torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3)
    ... )
    >>> abs(kl.item()) < 1e-6
    True
    """
    if not 0 <= weight <= 1:
        raise ValueError(f"distillation weight must be in [0, 1]: {weight}")
    ce = masked_cross_entropy(student_logits, targets, mask, label_smoothing)
    kl = distillation_kl(
        student_logits, teacher_logits.detach(), mask, temperature
    )
    return (1 - weight) * ce + weight * kl, ce, kl
