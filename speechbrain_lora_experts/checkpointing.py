"""Checkpoints that resume exactly, and survive a save that was cut short.

SpeechBrain's checkpointer saves model, optimiser, scheduler and dataloader
position; with the random state saved too (:class:`RNGState`), a run
interrupted mid-epoch resumes to the same weights as an uninterrupted one
(dropout masks and any shuffling draw the same numbers).

SpeechBrain writes a checkpoint's ``CKPT.yaml`` before its files, so a run
killed during a save leaves a folder that looks complete and that every
resume then fails to load. :func:`quarantine_incomplete_checkpoints`,
called before recovery, moves such folders aside (with a warning) so the
run resumes from the previous complete checkpoint.

SpeechBrain 1.1.2's ``EpochCounterWithStopper`` checkpoints like a plain
``EpochCounter`` (its own hooks are not registered): a resumed run forgets
its best dev loss and its stop decision, trains past the point where it
had stopped and counts patience from zero. :class:`EpochCounterWithStopper`
here saves and recovers that state.

Authors
 * speechbrain-lora-experts developers 2026
"""

import logging
import os
import pathlib
import random
import zipfile

import numpy as np
import torch
import yaml

from speechbrain.utils import epoch_loop
from speechbrain.utils.checkpoints import (
    CKPT_PREFIX,
    METAFNAME,
    PARAMFILE_EXT,
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)

logger = logging.getLogger(__name__)


@register_checkpoint_hooks
class EpochCounterWithStopper(epoch_loop.EpochCounterWithStopper):
    """SpeechBrain's early-stopping epoch counter, with its state saved.

    Same arguments and behaviour as
    ``speechbrain.utils.epoch_loop.EpochCounterWithStopper``; a checkpoint
    also holds the best epoch, best score and stop decision, so a resumed
    run stops where the uninterrupted one would. Checkpoints of the plain
    counter (an epoch number only) still load, with the stopper reset.

    Arguments
    ---------
    limit : int
        Maximum number of epochs.
    limit_to_stop : int
        Patience: epochs without improvement before stopping.
    limit_warmup : int
        Epochs before the metric is tracked.
    direction : str
        ``min`` or ``max``.

    Example
    -------
    >>> import tempfile
    >>> from speechbrain.utils.checkpoints import Checkpointer
    >>> folder = tempfile.mkdtemp()
    >>> counter = EpochCounterWithStopper(5, 2, 0, "min")
    >>> for loss in [1.0, 1.2, 1.1]:
    ...     _ = next(counter)
    ...     counter.update_metric(loss)
    >>> counter.should_stop, counter.best_limit
    (True, 1)
    >>> _ = Checkpointer(folder, {"counter": counter}).save_checkpoint()
    >>> resumed = EpochCounterWithStopper(5, 2, 0, "min")
    >>> _ = Checkpointer(folder, {"counter": resumed}).recover_if_possible()
    >>> resumed.current, resumed.best_score, list(resumed)  # stops at once
    (3, 1.0, [])
    """

    def update_start_metric(self, metric):
        """Records the starting point's metric as epoch 0.

        Later epochs then count as improvements only when they beat it, so
        a run that starts from a trained model (a distillation student
        initialised from the multilingual LoRA) stops after ``patience``
        epochs that never got better than where it began; the best
        checkpoint is then the start's.

        Arguments
        ---------
        metric : float
            The dev metric before any training step.

        Example
        -------
        >>> counter = EpochCounterWithStopper(5, 2, 0, "min")
        >>> counter.update_start_metric(1.0)
        >>> for loss in [1.2, 1.1]:
        ...     _ = next(counter)
        ...     counter.update_metric(loss)
        >>> counter.should_stop, counter.best_limit, counter.best_score
        (True, 0, 1.0)
        """
        if self.current != 0:
            raise RuntimeError(
                "update_start_metric() is for the point before epoch 1; "
                f"the counter is at epoch {self.current}"
            )
        self.best_score = metric
        self.best_limit = 0

    @mark_as_saver
    def _save(self, path):
        super()._save(path)

    @mark_as_loader
    def _recover(self, path, end_of_epoch=True, device=None):
        with open(path, encoding="utf-8") as f:
            saved = yaml.safe_load(f)
        if isinstance(saved, int):  # a plain EpochCounter's checkpoint
            self.current = saved if end_of_epoch else saved - 1
            return
        super()._recover(path, end_of_epoch, device)


#: Prefix of a quarantined checkpoint folder (SpeechBrain ignores it).
QUARANTINE_PREFIX = "incomplete-"
_ZIP_MAGIC = b"PK\x03\x04"


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
        """Writes the current random states.

        Arguments
        ---------
        path : str or pathlib.Path
            File the states are written to (inside the checkpoint folder).
        """
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
        """Restores the random states saved at ``path``.

        Arguments
        ---------
        path : str or pathlib.Path
            File written by :meth:`save`.
        end_of_epoch : bool
            Whether the checkpoint was saved at the end of an epoch (unused:
            the states are restored either way).
        """
        # The file holds Python/NumPy state tuples, which need full unpickling;
        # it is written by this class only, never taken from elsewhere.
        state = torch.load(path, weights_only=False)
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.set_rng_state(state["torch"])
        if state["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_problem(folder, expected=()):
    """Why a checkpoint folder is incomplete (a sentence), or None.

    A folder is incomplete when its ``CKPT.yaml`` does not parse into
    SpeechBrain's meta, a file is empty, a torch file is cut short (its
    zip directory, written last, is missing), or a file named in
    ``expected`` is absent.

    Arguments
    ---------
    folder : str or os.PathLike
        A ``CKPT+...`` folder.
    expected : iterable of str
        Recoverable names whose ``<name>.ckpt`` must be present.

    Returns
    -------
    str or None

    Example
    -------
    >>> folder = getfixture("tmp_path") / "CKPT+x"
    >>> folder.mkdir()
    >>> _ = (folder / "CKPT.yaml").write_text("end-of-epoch: true\\n")
    >>> checkpoint_problem(folder)
    'CKPT.yaml lacks unixtime/end-of-epoch'
    >>> _ = (folder / "CKPT.yaml").write_text(
    ...     "end-of-epoch: true\\nunixtime: 1.0\\n"
    ... )
    >>> torch.save({"w": torch.ones(3)}, folder / "model.ckpt")
    >>> checkpoint_problem(folder, expected=["model", "optimizer"])
    'optimizer.ckpt is missing'
    >>> data = (folder / "model.ckpt").read_bytes()
    >>> _ = (folder / "model.ckpt").write_bytes(data[: len(data) // 2])
    >>> checkpoint_problem(folder)
    'model.ckpt is cut short'
    """
    folder = pathlib.Path(folder)
    try:
        with open(folder / METAFNAME, encoding="utf-8") as f:
            meta = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as err:
        return f"{METAFNAME} is unreadable ({err})"
    if not isinstance(meta, dict) or not {"unixtime", "end-of-epoch"} <= set(
        meta
    ):
        return f"{METAFNAME} lacks unixtime/end-of-epoch"
    for name in sorted(expected):
        if not (folder / f"{name}{PARAMFILE_EXT}").is_file():
            return f"{name}{PARAMFILE_EXT} is missing"
    for path in sorted(folder.glob(f"*{PARAMFILE_EXT}")):
        problem = _file_problem(path)
        if problem:
            return f"{path.name} {problem}"
    return None


def _file_problem(path):
    if path.stat().st_size == 0:
        return "is empty"
    with open(path, "rb") as f:
        is_zip = f.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC
    if is_zip:
        try:
            # Opening reads the central directory at the end of the file.
            with zipfile.ZipFile(path):
                pass
        except (zipfile.BadZipFile, OSError):
            return "is cut short"
    return None


def _checkpoint_folders(save_folder):
    return sorted(
        p
        for p in pathlib.Path(save_folder).iterdir()
        if p.is_dir()
        and p.name.startswith(CKPT_PREFIX)
        and (p / METAFNAME).exists()
    )


def _required_names(checkpointer):
    names = set()
    for name in getattr(checkpointer, "recoverables", {}):
        optional = getattr(checkpointer, "optional_recoverables", {})
        # SpeechBrain itself tolerates a missing dataloader file.
        if not optional.get(name) and "dataloader" not in name:
            names.add(name)
    return names


def quarantine_incomplete_checkpoints(checkpointer):
    """Move aside checkpoints left incomplete by an interrupted save.

    Call it before ``recover_if_possible`` (on the main process only, e.g.
    with ``run_on_main``). Each incomplete ``CKPT+...`` folder is renamed
    ``incomplete-CKPT+...`` (kept for inspection, ignored by SpeechBrain)
    and a warning names it, why, and the checkpoint recovery will use
    instead.

    Arguments
    ---------
    checkpointer : speechbrain.utils.checkpoints.Checkpointer or str
        The run's checkpointer (its recoverables must all be saved), or
        its folder (every checkpoint must then hold the files the others
        hold).

    Returns
    -------
    list of str
        The quarantined folders (new names).

    Example
    -------
    >>> import os
    >>> from speechbrain.utils.checkpoints import Checkpointer
    >>> folder = getfixture("tmp_path")
    >>> checkpointer = Checkpointer(folder, {"state": RNGState()})
    >>> _ = checkpointer.save_checkpoint()
    >>> quarantine_incomplete_checkpoints(checkpointer)
    []
    >>> ckpt = next(p for p in os.listdir(folder) if p.startswith("CKPT"))
    >>> os.remove(folder / ckpt / "state.ckpt")  # killed before this file
    >>> [
    ...     os.path.basename(p)
    ...     for p in quarantine_incomplete_checkpoints(checkpointer)
    ... ] == ["incomplete-" + ckpt]
    True
    """
    if isinstance(checkpointer, (str, os.PathLike)):
        save_folder, required = pathlib.Path(checkpointer), set()
    else:
        save_folder = checkpointer.checkpoints_dir
        required = _required_names(checkpointer)
    if not os.path.isdir(save_folder):
        return []
    folders = _checkpoint_folders(save_folder)
    # A file another checkpoint holds must be in every checkpoint.
    present = {
        f: {p.stem for p in f.glob(f"*{PARAMFILE_EXT}")} for f in folders
    }
    problems = {
        f: checkpoint_problem(f, required | _seen_elsewhere(present, f))
        for f in folders
    }
    moved = []
    for folder in folders:
        if problems[folder] is None:
            continue
        target = _free_name(folder.with_name(QUARANTINE_PREFIX + folder.name))
        os.replace(folder, target)
        moved.append(str(target))
        logger.warning(
            "Checkpoint %s is incomplete (%s): a save was interrupted. "
            "Moved it to %s; %s.",
            folder,
            problems[folder],
            target,
            _fallback(folders, problems),
        )
    return moved


def _seen_elsewhere(present, folder):
    names = set()
    for other, stems in present.items():
        if other != folder:
            names |= stems
    # Dataloader positions exist only in intra-epoch checkpoints.
    return {n for n in names if "dataloader" not in n}


def _fallback(folders, problems):
    complete = [f for f in folders if problems[f] is None]
    if not complete:
        return "no complete checkpoint is left: training starts over"

    def unixtime(folder):
        """When the checkpoint in ``folder`` was saved (its CKPT.yaml)."""
        with open(folder / METAFNAME, encoding="utf-8") as f:
            return yaml.safe_load(f)["unixtime"]

    newest = max(complete, key=unixtime)
    return f"the newest complete checkpoint is {newest.name}"


def _free_name(path):
    candidate, n = path, 1
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.{n}")
        n += 1
    return candidate
