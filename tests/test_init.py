"""The package's top level: what the lazy ``__getattr__`` serves is what mypy and IDEs are shown."""

import ast
from pathlib import Path

import sweep


def _type_checking_imports() -> dict[str, str]:
    tree = ast.parse(Path(sweep.__file__).read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")
    return {a.name: node.module for node in block.body if isinstance(node, ast.ImportFrom) for a in node.names}


def test_type_checking_imports_match_the_lazy_table():
    assert _type_checking_imports() == sweep._LAZY


def test_every_public_name_resolves():
    for name in sweep.__all__:
        assert getattr(sweep, name).__name__ == name
