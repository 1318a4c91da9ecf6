"""Random-number state as a SpeechBrain checkpoint recoverable.

SpeechBrain's checkpointer saves model, optimiser, scheduler and dataloader
position; with the random state saved too, a run interrupted mid-epoch
resumes to the same weights as an uninterrupted one (dropout masks and any
shuffling draw the same numbers).

Authors
 * speechbrain-lora-experts developers 2026
"""

import random

import numpy as np
import torch
from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)


@register_checkpoint_hooks
class RNGState:
    """Saves and restores Python, NumPy and torch random states.

    Example
    -------
    >>> import tempfile, os
    >>> state = RNGState()
    >>> path = os.path.join(tempfile.mkdtemp(), "rng.ckpt")
    >>> state.save(path)
    >>> first = torch.rand(1)
    >>> state.load(path)
    >>> torch.equal(first, torch.rand(1))
    True
    """

    @mark_as_saver
    def save(self, path):
        """Writes the current random states."""
        torch.save(
            {
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": (
                    torch.cuda.get_rng_state_all()
                    if torch.cuda.is_available()
                    else None
                ),
            },
            path,
        )

    @mark_as_loader
    def load(self, path, end_of_epoch=False):
        """Restores the random states saved at ``path``."""
        # The file holds Python/NumPy state tuples, which need full unpickling;
        # it is written by this class only, never taken from elsewhere.
        state = torch.load(path, weights_only=False)
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.set_rng_state(state["torch"])
        if state["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
