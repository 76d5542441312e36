"""Optional dependencies: which extra brings them, and the one-line error when one is missing.

`pip install clarivis` trains, evaluates, predicts, audits, reports and exports; the extras in
pyproject.toml add the rest. A feature behind an extra imports its packages inside
`with needs(EXTRA, FEATURE):` (or its package calls `require(EXTRA, FEATURE)` once), so that a
missing package stops the command with one line naming the extra, never a traceback:

    clarivis serve needs the 'serve' extra: pip install "clarivis[serve]"

Torch-free (layer 0): importing this module imports nothing heavy."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager

from clarivis.errors import ClarivisError

# extra -> the top-level import names of the packages it brings (pyproject.toml lists the
# distributions; a test checks that every name here is importable in the full install).
EXTRAS: dict[str, tuple[str, ...]] = {
    "serve": ("fastapi", "starlette", "uvicorn", "python_multipart", "prometheus_client", "sqlalchemy",
              "scipy"),
    "trust": ("cleanlab", "fairlearn", "imagehash", "pytorch_grad_cam"),
    "ssl": ("lightly",),
    "zeroshot": ("open_clip",),
    "tensorboard": ("tensorboard",),
    "medical": ("pydicom", "pylibjpeg", "libjpeg"),
    "search": ("usearch",),
}


class MissingExtraError(ClarivisError):
    """An optional dependency is not installed; the message names the extra that brings it."""


def install_hint(extra: str) -> str:
    """The command that installs `extra`, quoted for every shell (zsh globs the brackets)."""
    return f'pip install "clarivis[{extra}]"'


def missing_extra(extra: str, feature: str) -> MissingExtraError:
    """The error for `feature` (what the user asked for, e.g. "clarivis serve") without `extra`."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}")  # a programming error, not a user's
    return MissingExtraError(f"{feature} needs the '{extra}' extra: {install_hint(extra)}")


def available(module: str) -> bool:
    """Whether the top-level `module` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or half-removed install counts as missing
        return False


def require(extra: str, feature: str) -> None:
    """Raise MissingExtraError unless every package of `extra` is installed (a package's
    __init__ calls this once, before any of its modules imports them)."""
    if not all(available(m) for m in EXTRAS[extra]):
        raise missing_extra(extra, feature)


@contextmanager
def needs(extra: str, feature: str) -> Iterator[None]:
    """Wrap the imports of an optional dependency: a ModuleNotFoundError inside becomes
    MissingExtraError naming `extra`. Other errors pass through unchanged."""
    try:
        yield
    except ModuleNotFoundError as err:
        raise missing_extra(extra, feature) from err
