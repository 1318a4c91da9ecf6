"""The README's bad-input table is the matrix, and the matrix is tested."""

import ast
import os

from matrix import CASES, markdown_table

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(os.path.dirname(TESTS), "README.md")
SECTION = "## What happens with bad input"


def readme_table():
    with open(README, encoding="utf-8") as f:
        text = f.read()
    assert SECTION in text, f"README lacks the section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return "\n".join(
        line for line in section.splitlines() if line.startswith("|")
    )


def test_readme_table_is_the_matrix():
    # Regenerate with: python tests/faults/matrix.py
    assert readme_table() == markdown_table()


def test_every_case_names_an_existing_test():
    defined = {}
    for case in CASES:
        path, name = case.test.split("::")
        full = os.path.join(TESTS, path)
        assert os.path.isfile(full), case.test
        if full not in defined:
            with open(full, encoding="utf-8") as f:
                tree = ast.parse(f.read())
            defined[full] = {
                node.name
                for node in ast.walk(tree)
                if isinstance(node, ast.FunctionDef)
            }
        assert name in defined[full], case.test


def test_every_fault_test_is_in_the_matrix():
    named = {case.test for case in CASES}
    here = os.path.dirname(os.path.abspath(__file__))
    for module in sorted(os.listdir(here)):
        if not module.startswith("test_") or module == os.path.basename(
            __file__
        ):
            continue
        with open(os.path.join(here, module), encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith(
                "test_"
            ):
                assert f"faults/{module}::{node.name}" in named, node.name
