"""Training batches: fixed size, or SpeechBrain's dynamic batching.

With ``dynamic_batching: True`` the training loader draws its batches from
SpeechBrain's ``DynamicBatchSampler``: clips of similar duration together,
as many as fit ``max_batch_length`` seconds of audio. Together with windows
cut to the batch (``window_bucket_s``) a batch of short clips then pays for
a short encoder window, and a batch of long clips holds fewer of them.

Authors
 * speechbrain-lora-experts developers 2026
"""

import logging

from speechbrain.dataio.sampler import DynamicBatchSampler

logger = logging.getLogger(__name__)

# Loader options that a batch sampler replaces (PyTorch refuses both).
_SAMPLER_OWNS = ("batch_size", "shuffle", "sampler", "drop_last")


def train_loader_options(dataset, loader_opts, dynamic=False, sampler=None):
    """The training loader's options, with a dynamic batch sampler if asked.

    Arguments
    ---------
    dataset : speechbrain.dataio.dataset.DynamicItemDataset
        The training set; its ``duration`` (seconds) sizes the batches.
    loader_opts : dict
        The recipe's ``train_dataloader_opts``.
    dynamic : bool
        Use ``DynamicBatchSampler``.
    sampler : dict
        Its options (``max_batch_length`` in seconds, ``num_buckets`` or
        ``bucket_boundaries``, ``shuffle``, ``batch_ordering``,
        ``max_batch_ex`` ...).

    Returns
    -------
    dict
        ``loader_opts`` unchanged, or without the options the sampler
        owns and with ``batch_sampler`` set.

    Example
    -------
    >>> from speechbrain.dataio.dataset import DynamicItemDataset
    >>> data = {f"u{i}": {"duration": d} for i, d in enumerate([1, 9, 2, 8])}
    >>> dataset = DynamicItemDataset(data)
    >>> opts = train_loader_options(
    ...     dataset,
    ...     {"batch_size": 8, "num_workers": 2},
    ...     dynamic=True,
    ...     sampler={
    ...         "max_batch_length": 17,
    ...         "num_buckets": 2,
    ...         "shuffle": False,
    ...         "batch_ordering": "ascending",
    ...     },
    ... )
    >>> sorted(opts)
    ['batch_sampler', 'num_workers']
    >>> sorted(
    ...     sorted(dataset.data_ids[i] for i in b)
    ...     for b in opts["batch_sampler"]
    ... )
    [['u0', 'u2'], ['u1'], ['u3']]
    """
    if not dynamic:
        return loader_opts
    sampler = dict(sampler or {})
    if "max_batch_length" not in sampler:
        raise ValueError(
            "dynamic_batching needs dynamic_batch_sampler.max_batch_length "
            "(seconds of audio per batch)"
        )
    for key, value in dataset.data.items():
        if not isinstance(value.get("duration"), (int, float)):
            raise ValueError(
                f"dynamic batching sizes batches by duration; utterance "
                f"{key!r} has duration {value.get('duration')!r}. Give the "
                "training CSV a numeric duration column (data preparation "
                "writes one)"
            )
    batch_sampler = DynamicBatchSampler(
        dataset, length_func=lambda row: row["duration"], **sampler
    )
    dropped = sorted(k for k in loader_opts if k in _SAMPLER_OWNS)
    if dropped:
        logger.info(
            "dynamic batching: the batch sampler replaces %s of "
            "train_dataloader_opts",
            ", ".join(dropped),
        )
    options = {k: v for k, v in loader_opts.items() if k not in _SAMPLER_OWNS}
    options["batch_sampler"] = batch_sampler
    return options
