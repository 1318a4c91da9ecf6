"""The fault tests share the tiny corpus writers of ``tests/data``."""

import os
import sys

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(TESTS, "data"))
sys.path.insert(0, TESTS)  # recipe_rows: shared recipe-run helpers
