"""The lazy facade (src/clarivis/__init__.py): every name of its table resolves to what the
TYPE_CHECKING imports say it is, `__all__` lists them, none is also a clarivis module (importing
that module would rebind `clarivis.<name>`), and `import clarivis` imports no torch."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import clarivis

INIT = Path(clarivis.__file__)


def type_checking_imports() -> dict[str, str]:
    """name -> "module:attribute" of the imports under `if TYPE_CHECKING:`."""
    tree = ast.parse(INIT.read_text())
    block = next(node for node in tree.body if isinstance(node, ast.If)
                 and getattr(node.test, "id", None) == "TYPE_CHECKING")
    return {alias.asname or alias.name: f"{node.module}:{alias.name}"
            for node in block.body for alias in node.names}


def test_table_all_and_type_checking_imports_agree():
    names = set(clarivis._LAZY)
    assert set(clarivis.__all__) == names | {"__version__"}
    imported = type_checking_imports()
    assert set(imported) == names
    for name, where in clarivis._LAZY.items():
        module, _, attribute = where.partition(":")
        value = getattr(importlib.import_module(module), attribute or name)
        checked_module, _, checked_attribute = imported[name].partition(":")
        assert value is getattr(importlib.import_module(checked_module), checked_attribute), name


@pytest.mark.parametrize("name", sorted(clarivis._LAZY))
def test_name_resolves_and_is_no_module(name):
    modules = {m.name for m in pkgutil.iter_modules(clarivis.__path__)}
    assert name not in modules, f"clarivis.{name} is also a module: pick another name"
    where = clarivis._LAZY[name]
    module, _, attribute = where.partition(":")
    assert getattr(clarivis, name) is getattr(importlib.import_module(module), attribute or name)


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        clarivis.no_such_name  # noqa: B018


def test_import_clarivis_imports_no_torch():
    code = "import sys, clarivis; assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
