"""Installs that fit each use: what pyproject.toml declares, the one-line error of a missing
extra, and `pip install clarivis` without extras, emulated by hiding every package that only
the extras bring (a finder on sys.meta_path, installed by a sitecustomize in the subprocess)."""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.installs import ROOT, canonical, closure, core_names, extra_names, import_names, project
from tests.tiny import colour_images

from clarivis.extras import EXTRAS, MissingExtraError, available, needs, require

OPTIONAL = tuple(EXTRAS)  # the extras a user picks; `all` and `dev` are not features

# --- declarations -------------------------------------------------------------------------------


def test_pyproject_extras_are_the_features_and_all_holds_them():
    extras = project()["optional-dependencies"]
    assert set(extras) == {*OPTIONAL, "all", "dev"}
    (everything,) = extras["all"]
    assert everything == f"clarivis[{','.join(OPTIONAL)}]"


def test_every_optional_module_is_installed_here_and_its_extra_brings_it():
    # The dev install is the full one (make install: .[all,dev]).
    for extra, modules in EXTRAS.items():
        brought = import_names(closure(extra_names(extra)))
        for module in modules:
            assert available(module), module
            assert module in brought, f"{module} is not installed by the '{extra}' extra"


def _imported_top_level(path: Path) -> set[str]:
    """Top-level names of every import in a file, function-level ones included."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_every_imported_package_is_declared():
    declared = core_names().union(*(extra_names(e) for e in OPTIONAL))
    owners = {m: {canonical(d) for d in ds} for m, ds in md.packages_distributions().items()}
    imported = set().union(*map(_imported_top_level, (ROOT / "src" / "clarivis").rglob("*.py")))
    third_party = imported - set(sys.stdlib_module_names) - {"clarivis", "__future__"}
    undeclared = {m for m in third_party if not owners.get(m, set()) & declared}
    assert not undeclared, f"imported in src/ but in no dependency list: {sorted(undeclared)}"


# --- the error ----------------------------------------------------------------------------------


def test_a_missing_package_is_one_line_naming_the_extra():
    with pytest.raises(MissingExtraError) as info, needs("serve", "clarivis serve"):
        import clarivis_no_such_package  # noqa: F401
    assert str(info.value) == 'clarivis serve needs the \'serve\' extra: pip install "clarivis[serve]"'
    assert isinstance(info.value.__cause__, ModuleNotFoundError)


def test_needs_passes_other_errors_through():
    with pytest.raises(ValueError), needs("serve", "clarivis serve"):
        raise ValueError("not an import")


def test_require_checks_every_package_of_the_extra(monkeypatch):
    for extra in OPTIONAL:
        require(extra, "this")  # the full install has them all
    monkeypatch.setitem(EXTRAS, "ssl", (*EXTRAS["ssl"], "clarivis_no_such_package"))
    with pytest.raises(MissingExtraError, match=r"^clarivis pretrain needs the 'ssl' extra: pip install"):
        require("ssl", "clarivis pretrain")


# --- a core install -----------------------------------------------------------------------------

HIDER = """\
# Written by tests/test_extras.py: the packages that only clarivis' extras bring are not found,
# as if absent (import raises ModuleNotFoundError, importlib.util.find_spec answers None).
import sys

HIDDEN = frozenset({hidden})


class Hiding:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in HIDDEN or not hasattr(self.finder, "find_spec"):
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, attr):  # invalidate_caches, find_distributions, ...
        return getattr(self.finder, attr)


sys.meta_path[:] = [Hiding(finder) for finder in sys.meta_path]
"""


def hidden_modules() -> set[str]:
    """Import names of the distributions the extras bring and the core does not."""
    extras = set().union(*(extra_names(e) for e in OPTIONAL))
    return import_names(closure(extras) - closure(core_names()))


@pytest.fixture(scope="module")
def core_env(tmp_path_factory) -> dict[str, str]:
    hidden = hidden_modules()
    assert {"fastapi", "lightly", "open_clip", "cleanlab", "pytorch_grad_cam", "tensorboard"} <= hidden
    assert not hidden & {"torch", "timm", "onnxruntime", "sklearn", "matplotlib", "captum"}
    folder = tmp_path_factory.mktemp("core-install")
    (folder / "sitecustomize.py").write_text(HIDER.format(hidden=sorted(hidden)))
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "COLUMNS": "200"}


def clarivis_cli(env: dict[str, str], *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clarivis", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=600)


def ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def core_run(core_env, tmp_path_factory) -> tuple[Path, Path]:
    """(data, run folder): one epoch of test_resnet at 32 px trained in the core install."""
    base = tmp_path_factory.mktemp("core-run")
    data = colour_images(base / "data", per_class=10, seed=0)
    done = ok(clarivis_cli(core_env, "train", data, "--out", base / "run", "--model", "test_resnet",
                           "--epochs", 1, "--img-size", 32, "--batch-size", 8, "--workers", 0,
                           "--device", "cpu"))
    # the events file is skipped with one note; the report (Grad-CAM through captum) is written
    assert done.stderr.count("pip install \"clarivis[tensorboard]\"") == 1
    assert not (base / "run" / "tensorboard").exists() and (base / "run" / "report.html").is_file()
    return data, base / "run"


@pytest.mark.slow
def test_hidden_packages_are_hidden(core_env):
    code = "import importlib.util, torch; assert importlib.util.find_spec('pandas') is None; import fastapi"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=core_env)
    assert done.returncode == 1 and "ModuleNotFoundError: No module named 'fastapi'" in done.stderr


@pytest.mark.slow
def test_core_install_trains_evaluates_predicts_audits_explains_and_exports(core_env, core_run, tmp_path):
    data, run = core_run
    model = run / "model"
    ok(clarivis_cli(core_env, "evaluate", model, data, "--json", tmp_path / "metrics.json"))
    assert json.loads((tmp_path / "metrics.json").read_text())["num_samples"] == 40
    assert (tmp_path / "metrics_confusion.png").is_file()  # matplotlib, core
    assert "red" in ok(clarivis_cli(core_env, "predict", model, data / "red", "--top-k", 2)).stdout
    ok(clarivis_cli(core_env, "predict", model, data, "--out", tmp_path / "preds.parquet"))
    assert (tmp_path / "preds.parquet").is_file()
    ok(clarivis_cli(core_env, "export", model, "--int8"))
    assert "red" in ok(clarivis_cli(core_env, "predict", model, data / "red", "--backend", "onnx")).stdout
    ok(clarivis_cli(core_env, "audit", model, data))
    ok(clarivis_cli(core_env, "explain", model, data / "red" / "0.png", "--out", tmp_path / "maps"))
    assert list((tmp_path / "maps").glob("*.png"))


def _missing_extra_commands(data: Path, model: Path, image: Path) -> list[tuple[str, list]]:
    return [
        ("serve", ["serve", model]),
        ("serve", ["monitor", model]),
        ("trust", ["check", data, "--model", model]),
        ("trust", ["explain", model, image, "--method", "gradcam++"]),
        ("ssl", ["pretrain", data, "--epochs", 1, "--workers", 0]),
        ("zeroshot", ["zeroshot", image, "--labels", "a cat,a dog"]),
        ("zeroshot", ["train", data, "--model", "open_clip:ViT-B-32", "--epochs", 1]),
    ]


@pytest.mark.slow
def test_commands_of_a_missing_extra_stop_with_one_line_naming_it(core_env, core_run):
    data, run = core_run
    for extra, args in _missing_extra_commands(data, run / "model", data / "red" / "0.png"):
        done = clarivis_cli(core_env, *args)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2 and "Traceback" not in done.stderr, (args, done.stderr[-3000:])
        assert [line for line in lines if line.startswith("error:")] == lines[-1:], (args, lines)
        hint = f"needs the '{extra}' extra: pip install \"clarivis[{extra}]\""
        assert lines[-1].endswith(hint), (args, lines)
