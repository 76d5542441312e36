"""What pyproject.toml declares and what the installed distributions bring, for the tests of the
core install (tests/test_extras.py) and of the runtime distribution (tests/runtime)."""

from __future__ import annotations

import importlib.metadata as md
import re
import tomllib
from collections.abc import Iterable
from functools import cache
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


@cache
def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def requirement_names(lines: Iterable[str]) -> set[str]:
    """Canonical distribution names of requirement strings, clarivis' own extras left out."""
    return {canonical(Requirement(line).name) for line in lines} - {"clarivis"}


def core_names() -> set[str]:
    return requirement_names(project()["dependencies"])


def extra_names(extra: str) -> set[str]:
    return requirement_names(project()["optional-dependencies"][extra])


def closure(names: Iterable[str]) -> set[str]:
    """The installed distributions that `names` need, recursively (requirements without extras
    and whose markers hold here), by canonical name."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = canonical(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        for line in md.distribution(name).requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def import_names(dists: set[str]) -> set[str]:
    """Top-level import names that only `dists` provide (a namespace such as `google` that
    another installed distribution shares is left out)."""
    return {module for module, owners in md.packages_distributions().items()
            if {canonical(o) for o in owners} <= dists and module.isidentifier()}


def link_site(names: set[str], folder: Path) -> Path:
    """A folder of symlinks to exactly the top-level files and folders of the distributions
    `names` (packages, their .libs and .dist-info): what a .pth file puts on the fresh venv's
    path, without the network."""
    folder.mkdir()
    for dist in map(md.distribution, names):
        for top in {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            source = Path(dist.locate_file(top))
            if source.exists() and not (folder / top).exists():
                (folder / top).symlink_to(source)
    return folder
