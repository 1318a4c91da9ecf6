"""Names for committed results: hub ids as given, local folders by name.

Results under ``bench/results`` record which Whisper and which data they
used, never a path of the machine that measured them.

Authors
 * speechbrain-lora-experts developers 2026
"""

import os


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
