"""The command table of clarivis.cli: `clarivis --help` lists every command without importing any,
a command imports its own area only, and the listed summaries are the commands' own."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
from tests.e2e.test_cli import run_cli

from clarivis.cli import COMMANDS
from clarivis.cli.lazy import load_command


@pytest.mark.parametrize("name", list(COMMANDS))
def test_summary_is_the_commands_own(name):
    entry = COMMANDS[name]
    command = load_command(name, entry)
    listed = click.Command(name, help=entry.summary)
    for limit in (45, 64, 500):  # 64: the widest `clarivis --help` gives (80 columns)
        assert listed.get_short_help_str(limit) == command.get_short_help_str(limit)


def modules_after(*args: str) -> set[str]:
    """clarivis.cli modules, torch and timm in sys.modules after `clarivis ARGS` (a fresh process)."""
    code = ("import sys\nfrom clarivis.cli import main\nsys.argv = ['clarivis', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('loaded:', *sorted(m for m in sys.modules "
            "if m.startswith('clarivis.cli.') or m in ('torch', 'timm')))")
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return set(proc.stdout.splitlines()[-1].split()[1:])  # after the help


def test_top_level_help_imports_no_command():
    assert modules_after("--help") == {"clarivis.cli.lazy", "clarivis.cli.output"}


def test_a_command_imports_its_own_area_only():
    loaded = modules_after("datasets", "--help")
    assert "clarivis.cli.datasets" in loaded
    assert not loaded & {"clarivis.cli.train", "clarivis.cli.evaluate", "clarivis.cli.predict", "torch"}


# What a command's --help must not import: the torch stack and the heavy extras (a 2-core box:
# torch alone 2 s; the area modules importing them made `train --help` 11 s, now ~0.3-0.5 s).
HEAVY = ("torch", "torchvision", "timm", "fastapi", "scipy", "sklearn", "onnxruntime", "open_clip",
         "lightly", "cleanlab", "matplotlib")


@pytest.mark.parametrize("args", [[name, "--help"] for name in COMMANDS] + [["datasets", "make", "--help"]],
                         ids=lambda args: " ".join(args))
def test_a_commands_help_imports_no_torch(args):
    code = ("import sys\nfrom clarivis.cli import main\nsys.argv = ['clarivis', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
            f"print('heavy:', *sorted(m for m in {HEAVY!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout and proc.stdout.splitlines()[-1] == "heavy:"


def test_a_mistyped_command_gets_suggestions(capsys):
    code, _, err = run_cli(["trian"], capsys)
    assert code == 2 and "No such command 'trian'. Did you mean 'train', 'pretrain'?" in err
