"""Run the Common Voice recipe as a subprocess, resumably.

Used by the quickstart and the benchmarks: each run gets its own output
folder and is skipped when that folder already holds ``metrics.json``.
The recipe lives in the source tree (``recipes/CommonVoice/ASR/
lora_experts``), so this needs an editable install or a source checkout.

Authors
 * speechbrain-lora-experts developers 2026
"""

import json
import os
import subprocess
import sys
import time

RECIPE_PARTS = ("recipes", "CommonVoice", "ASR", "lora_experts")


def recipe_folder():
    """The recipe folder of this source tree, or a clear error."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    folder = os.path.join(root, *RECIPE_PARTS)
    if not os.path.isfile(os.path.join(folder, "train.py")):
        raise FileNotFoundError(
            f"recipe not found at {folder}; install from a source checkout "
            "with `pip install -c constraints.txt -e .`"
        )
    return folder


def yaml_value(value):
    """A HyperPyYAML command-line override value.

    Example
    -------
    >>> yaml_value(["de", "es"]), yaml_value(False), yaml_value(3)
    ('[de,es]', 'False', '3')
    """
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
    """
    out = overrides["output_folder"]
    if os.path.isfile(os.path.join(out, "metrics.json")):
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
    start = time.time()
    subprocess.run(
        command, cwd=recipe_folder(), check=True, stdout=log, stderr=log
    )
    return time.time() - start


def load_metrics(folder, prefix=""):
    """A run's ``<prefix>metrics.json``, or None when absent."""
    path = os.path.join(folder, f"{prefix}metrics.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)
