"""Names for committed results: hub ids as given, local folders by name.

Results under ``bench/results`` record which Whisper and which data they
used, never a path of the machine that measured them.

Authors
 * speechbrain-lora-experts developers 2026
"""

import json
import os
import subprocess


def public_name(path):
    """A hub id or relative name as given; a local path by its last part.

    Arguments
    ---------
    path : str or None
        A hub id (``openai/whisper-small``) or a folder.

    Returns
    -------
    str or None

    Example
    -------
    >>> public_name("/root/.cache/lora-experts/whisper-base")
    'whisper-base'
    >>> public_name("~/corpus/cv-corpus-17.0/")
    'cv-corpus-17.0'
    >>> public_name("openai/whisper-small"), public_name(None)
    ('openai/whisper-small', None)
    """
    if path is None:
        return None
    if not os.path.isabs(os.path.expanduser(path)):
        return path
    return os.path.basename(os.path.normpath(os.path.expanduser(path)))


def add_run_options(parser, name, collect_help):
    """Adds where the result goes and what is run to a bench's parser.

    ``--out`` (results folder, default ``bench/results``), ``--name`` (the
    result files' name), ``--dry_run`` and ``--collect_only``.

    Arguments
    ---------
    parser : argparse.ArgumentParser
        The benchmark's parser.
    name : str or None
        Default ``--name`` (None: the benchmark derives one).
    collect_help : str
        What ``--collect_only`` reports.

    Example
    -------
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> add_run_options(parser, "demo", "report what ran")
    >>> args = parser.parse_args(["--collect_only"])
    >>> args.name, args.collect_only, args.dry_run
    ('demo', True, False)
    """
    results = os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results"
    )
    parser.add_argument("--out", default=results)
    parser.add_argument("--name", default=name)
    parser.add_argument("--dry_run", action="store_true")
    parser.add_argument(
        "--collect_only",
        action="store_true",
        help=f"{collect_help}; run nothing",
    )


def save_result(out, name, result, write_markdown):
    """Writes ``<out>/<name>.json`` and, through ``write_markdown``, ``.md``.

    Arguments
    ---------
    out : str
        The results folder (made if missing).
    name : str
        The files' name without extension.
    result : dict
        What the JSON holds (and the markdown is made from).
    write_markdown : callable
        ``write_markdown(path, result)``.

    Returns
    -------
    str
        The markdown file's path.

    Example
    -------
    >>> out = str(getfixture("tmp_path"))
    >>> def table(path, result):
    ...     with open(path, "w") as f:
    ...         f.write(f"| x | {result['x']} |")
    >>> md = save_result(out, "demo", {"x": 1}, table)
    >>> open(md).read(), sorted(os.listdir(out))
    ('| x | 1 |', ['demo.json', 'demo.md'])
    """
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{name}.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    path = os.path.join(out, f"{name}.md")
    write_markdown(path, result)
    return path


# What a result depends on: the package, the benchmarks, the recipe.
CODE_PATHS = (
    "speechbrain_lora_experts",
    "bench",
    "recipes",
    ":(exclude)bench/results",
    ":(exclude)bench/work",
)


def git_state(root=None):
    """Commit of the checkout and its code files that differ from it.

    Arguments
    ---------
    root : str
        The repository (default: the one holding this file).

    Returns
    -------
    dict
        ``commit`` (None outside a git checkout) and ``modified``: changed
        or untracked files under ``CODE_PATHS``, so that a result measured
        with uncommitted code says so.

    Example
    -------
    >>> state = git_state()
    >>> sorted(state), isinstance(state["modified"], list)
    (['commit', 'modified'], True)
    """
    root = root or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--", *CODE_PATHS],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return dict(commit=None, modified=[])
    return dict(commit=commit, modified=[ln[3:] for ln in status.splitlines()])
