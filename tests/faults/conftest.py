"""The fault tests share the tiny corpus writers of ``tests/data``."""

import os
import sys

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "data")
)
