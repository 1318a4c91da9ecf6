"""Run the Common Voice recipe as a subprocess, resumably.

Used by the quickstart and the benchmarks: each run gets its own output
folder and is skipped when that folder holds a finished run (its
``metrics.json`` and an export at least as new: :func:`run_finished`).
The recipe lives in the source tree (``recipes/CommonVoice/ASR/
lora_experts``), so this needs an editable install or a source checkout.
A failed run raises :class:`RecipeRunError`, which shows the run's last
lines of output and names its log, instead of a bare exit status.

Authors
 * speechbrain-lora-experts developers 2026
"""

import importlib.util
import json
import os
import subprocess
import sys
import time

RECIPE_PARTS = ("recipes", "CommonVoice", "ASR", "lora_experts")
TAIL_LINES = 15


class RecipeRunError(subprocess.CalledProcessError):
    """A recipe run that failed, with the end of its output.

    A ``CalledProcessError`` (callers catching that keep working) whose
    message is the failing step, its last lines and its log file.

    Arguments
    ---------
    returncode : int
        Exit status of ``train.py``.
    cmd : list of str
        The command.
    hparams : str
        The hparams file, naming the step.
    log_path : str or None
        Where the whole output is.
    tail : str
        Its last lines.

    Example
    -------
    >>> err = RecipeRunError(
    ...     1, ["python", "train.py"], "expert.yaml", tail="boom"
    ... )
    >>> print(err)
    The expert.yaml run failed (exit status 1). Its last lines:
    boom
    """

    def __init__(self, returncode, cmd, hparams, log_path=None, tail=""):
        super().__init__(returncode, cmd)
        self.hparams = hparams
        self.log_path = log_path
        self.tail = tail

    def __str__(self):
        text = f"The {self.hparams} run failed (exit status {self.returncode})."
        if self.tail:
            text += " Its last lines:\n" + self.tail
        if self.log_path:
            text += f"\nFull output: {self.log_path}"
        return text


def read_tail(path, start=0, lines=TAIL_LINES):
    """The last ``lines`` lines of a text file from byte ``start`` on.

    Arguments
    ---------
    path : str or pathlib.Path
        The file.
    start : int
        Byte offset to read from.
    lines : int
        How many lines.

    Returns
    -------
    str
        The lines, joined by newlines.

    Example
    -------
    >>> path = getfixture("tmp_path") / "log.txt"
    >>> _ = path.write_text("a\\nb\\nc\\n")
    >>> read_tail(path, lines=2)
    'b\\nc'
    """
    with open(path, "rb") as f:
        f.seek(start)
        text = f.read().decode("utf-8", errors="replace")
    # Progress bars redraw with carriage returns: keep their last state.
    kept = [line.split("\r")[-1] for line in text.split("\n")]
    kept = [line for line in kept if line.strip()]
    return "\n".join(kept[-lines:])


def recipe_folder():
    """The recipe folder of this source tree, or a clear error.

    Returns
    -------
    str
        ``recipes/CommonVoice/ASR/lora_experts`` of the source tree.

    Example
    -------
    >>> recipe_folder().endswith("lora_experts")
    True
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    folder = os.path.join(root, *RECIPE_PARTS)
    if not os.path.isfile(os.path.join(folder, "train.py")):
        raise FileNotFoundError(
            f"recipe not found at {folder}; install from a source checkout "
            "with `pip install -c constraints.txt -e .`"
        )
    return folder


def load_recipe_script():
    """The recipe's ``train.py`` as a module (its Brains, ``dataio_prepare``).

    The Brains live in the recipe script, as in SpeechBrain recipes; tests
    and benchmarks that drive a Brain directly import the script this way.
    Its folder goes on ``sys.path`` first: the script imports its
    ``common_voice_prepare`` and ``fleurs_prepare`` neighbours.

    Returns
    -------
    module
        ``train.py``, imported once (``__name__`` is not ``__main__``, so
        nothing runs).

    Example
    -------
    >>> recipe = load_recipe_script()
    >>> sorted(recipe.BRAINS)
    ['distill', 'expert', 'full_finetune', 'fuse', 'multilingual_lora']
    """
    name = "lora_experts_recipe_train"
    if name in sys.modules:
        return sys.modules[name]
    folder = recipe_folder()
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(folder, "train.py")
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def yaml_value(value):
    """A HyperPyYAML command-line override value.

    Arguments
    ---------
    value : object
        A Python value.

    Returns
    -------
    str
        Its command-line spelling.

    Example
    -------
    >>> yaml_value(["de", "es"]), yaml_value(False), yaml_value(3)
    ('[de,es]', 'False', '3')
    >>> yaml_value(None)  # YAML reads "None" as a string
    'null'
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(str(v) for v in value) + "]"
    return str(value)


def run_recipe(hparams, overrides, log=None, device="cpu", precision=None):
    """Runs ``train.py hparams/<hparams>`` with ``overrides``.

    Arguments
    ---------
    hparams : str
        File name in the recipe's ``hparams/`` folder.
    overrides : dict
        HyperPyYAML overrides; must include ``output_folder``.
    log : file
        Receives the command and the run's output (default: inherit).
    device : str
        ``cpu`` or e.g. ``cuda:0``.
    precision : str, optional
        SpeechBrain's ``--precision`` (fp32, fp16, bf16); default fp32 on
        CPU and SpeechBrain's own default elsewhere.

    Returns
    -------
    float or None
        Seconds the run took; None when it was already done.

    Raises
    ------
    RecipeRunError
        The run failed; the message holds its last lines and log path.

    Example
    -------
    >>> import shutil, tempfile
    >>> from unittest import mock
    >>> out = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(out, "model"))
    >>> for name in ("metrics.json", os.path.join("model", "model.json")):
    ...     with open(os.path.join(out, name), "w") as f:
    ...         _ = f.write("{}")
    >>> print(run_recipe("expert.yaml", {"output_folder": out}))  # done
    None

    A failing run (a stand-in for ``train.py``, which takes minutes);
    ``metrics.json`` without the export after it (a run stopped during a
    later test set) runs again, to resume:

    >>> os.remove(os.path.join(out, "model", "model.json"))
    >>> def failing_train(command, cwd, stdout, stderr):
    ...     stdout.write("ValueError: no utterances for de\\n")
    ...     stdout.flush()
    ...     return subprocess.CompletedProcess(command, returncode=1)
    >>> overrides = {"output_folder": out, "language": "de"}
    >>> with open(os.path.join(out, "runs.log"), "w") as log:
    ...     with mock.patch("subprocess.run", failing_train):
    ...         try:
    ...             run_recipe("expert.yaml", overrides, log=log)
    ...         except RecipeRunError as err:
    ...             print(err)
    ...             command = err.cmd
    The expert.yaml run failed (exit status 1). Its last lines:
    ValueError: no utterances for de
    Full output: .../runs.log
    >>> command[1:3]  # run in the recipe folder
    ['train.py', 'hparams/expert.yaml']
    >>> command[4:]  # after --output_folder: the overrides, the device
    ['--language=de', '--device=cpu', '--precision=fp32']
    >>> shutil.rmtree(out)
    """
    out = overrides["output_folder"]
    if run_finished(out):
        return None
    command = [sys.executable, "train.py", os.path.join("hparams", hparams)]
    command += [f"--{k}={yaml_value(v)}" for k, v in overrides.items()]
    command += [f"--device={device}"]
    if precision is None and device == "cpu":
        precision = "fp32"
    if precision is not None:
        command += [f"--precision={precision}"]
    if log is not None:
        log.write(" ".join(command) + "\n")
        log.flush()
    log_path = getattr(log, "name", None)
    offset = log.tell() if log_path else 0
    start = time.time()
    result = subprocess.run(
        command, cwd=recipe_folder(), stdout=log, stderr=log
    )
    if result.returncode:
        tail = read_tail(log_path, offset) if log_path else ""
        raise RecipeRunError(
            result.returncode, command, hparams, log_path, tail
        )
    return time.time() - start


def run_finished(out):
    """Whether the recipe run in ``out`` ran to its end.

    The recipe writes ``metrics.json`` after its first test and exports
    ``model/model.json`` after its last one: a run stopped during a later
    test set, or resumed for more epochs after an earlier export, has no
    export newer than its metrics, and must run (resume) again.

    Arguments
    ---------
    out : str
        The run's output folder.

    Returns
    -------
    bool
        The state.

    Example
    -------
    >>> import time
    >>> out = getfixture("tmp_path")
    >>> (out / "model").mkdir()
    >>> _ = (out / "model" / "model.json").write_text("{}")
    >>> time.sleep(0.01)
    >>> _ = (out / "metrics.json").write_text("{}")
    >>> run_finished(str(out))  # tested again after the last export
    False
    >>> time.sleep(0.01)
    >>> _ = (out / "model" / "model.json").write_text("{}")
    >>> run_finished(str(out))
    True
    """
    metrics = os.path.join(out, "metrics.json")
    model = os.path.join(out, "model", "model.json")
    return (
        os.path.isfile(metrics)
        and os.path.isfile(model)
        and os.path.getmtime(model) >= os.path.getmtime(metrics)
    )


def load_metrics(folder, prefix=""):
    """A run's ``<prefix>metrics.json``, or None when absent.

    Arguments
    ---------
    folder : str
        The run's output folder.
    prefix : str
        ``""``, or ``fleurs_`` for the out-of-domain test.

    Returns
    -------
    dict or None
        The metrics.

    Example
    -------
    >>> load_metrics(str(getfixture("tmp_path"))) is None
    True
    """
    path = os.path.join(folder, f"{prefix}metrics.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)
