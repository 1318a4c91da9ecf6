"""Static merges of expert updates (no training): linear and TIES.

Each expert's dense update ``delta_n = s_n * B_n @ A_n`` of a layer is a task
vector; a static merge folds them into one update added to the base weight,
as a training-free baseline to the learned fusion gate. TIES-Merging (Yadav
et al., NeurIPS 2023) trims each task vector to its largest entries, elects
a sign per entry, and averages only the values that agree with it.

Authors
 * speechbrain-lora-experts developers 2026
"""

import torch


def linear_merge(deltas, weights=None):
    """Weighted sum of updates (uniform average by default).

    Arguments
    ---------
    deltas : list of torch.Tensor
        Same-shaped updates (dense LoRA updates of one layer).
    weights : list of float, optional
        One weight per update; default: the uniform average.

    Returns
    -------
    torch.Tensor
        The weighted sum.

    Example
    -------
    >>> linear_merge([torch.ones(2), 3 * torch.ones(2)]).tolist()
    [2.0, 2.0]
    """
    if weights is None:
        weights = [1.0 / len(deltas)] * len(deltas)
    return sum(w * d for w, d in zip(weights, deltas))


def ties_merge(deltas, density=0.2, scale=1.0):
    """TIES-Merging of same-shaped updates.

    Arguments
    ---------
    deltas : list of torch.Tensor
        Task vectors (here: dense LoRA updates of one layer).
    density : float
        Fraction of entries of each task vector kept (largest magnitude).
    scale : float
        Multiplier of the merged update (lambda in the paper).

    Returns
    -------
    torch.Tensor

    Example
    -------
    >>> a = torch.tensor([1.0, -2.0, 0.1])
    >>> b = torch.tensor([3.0, 1.0, -0.1])
    >>> ties_merge([a, b], density=1.0).tolist()
    [2.0, -2.0, 0.0]
    """
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    stacked = torch.stack([d.float() for d in deltas])
    flat = stacked.reshape(len(deltas), -1)
    keep = max(1, int(round(density * flat.shape[1])))
    threshold = flat.abs().kthvalue(flat.shape[1] - keep + 1, dim=1).values
    trimmed = torch.where(
        flat.abs() >= threshold.unsqueeze(1), flat, torch.zeros_like(flat)
    )
    sign = torch.sign(trimmed.sum(dim=0))
    agree = (torch.sign(trimmed) == sign.unsqueeze(0)) & (trimmed != 0)
    total = (trimmed * agree).sum(dim=0)
    count = agree.sum(dim=0).clamp(min=1)
    merged = (total / count).reshape(stacked.shape[1:])
    return (scale * merged).to(deltas[0].dtype)


MERGES = {"linear": linear_merge, "ties": ties_merge}
