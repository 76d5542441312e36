"""The run-folder contract (runs.py): the names it gives are the files training writes, a run is
found from its folder or its model/ folder, --out never overwrites a run, and a metrics JSON's
confusion matrix is named beside it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from clarivis import runs
from clarivis.errors import ClarivisError
from clarivis.spec import CONFIG_NAME


def test_training_writes_the_files_runs_names(tiny_bundle):
    run = tiny_bundle.parent
    assert tiny_bundle == run / runs.BUNDLE_DIR
    for name in (runs.CHECKPOINT, runs.RUN_CONFIG, runs.METRICS_LOG, runs.SPLIT, runs.SKIPPED,
                 runs.DATA_REPORT, runs.VAL_METRICS, runs.VAL_CONFUSION, runs.VAL_CALIBRATION,
                 runs.REPORT):
        assert (run / name).is_file(), name
    assert runs.VAL_CONFUSION == runs.confusion_png(runs.VAL_METRICS).name


def test_find_run_dir_from_the_run_or_its_model_folder(tiny_bundle):
    run = tiny_bundle.parent
    assert runs.find_run_dir(run) == run
    assert runs.find_run_dir(tiny_bundle) == run
    assert runs.find_run_dir(str(tiny_bundle)) == run


def _empty(folder: Path) -> Path:
    folder.mkdir()
    return folder


def _bundle_only(folder: Path) -> Path:
    """A bundle folder outside any run: config.json but no metrics log beside its parent."""
    folder.mkdir(parents=True)
    (folder / CONFIG_NAME).write_text("{}")
    return folder


@pytest.mark.parametrize("make", [
    lambda tmp: tmp / "missing",
    lambda tmp: _empty(tmp / "empty"),
    lambda tmp: _bundle_only(tmp / "exported" / "model"),
], ids=["missing", "empty-folder", "bundle-outside-a-run"])
def test_what_is_not_a_run_folder_is_one_line_error(tmp_path, make):
    with pytest.raises(ClarivisError, match="is not a run folder") as err:
        runs.find_run_dir(make(tmp_path))
    assert "\n" not in str(err.value) and "runs/NAME" in str(err.value)


def test_new_run_dir_refuses_an_out_that_holds_a_run(tmp_path):
    out = tmp_path / "run"
    assert runs.new_run_dir("data", str(out)) == out  # new folder: taken as given
    out.mkdir()
    (out / "model").mkdir()
    assert runs.new_run_dir("data", str(out)) == out  # a folder without a checkpoint is fine
    (out / runs.CHECKPOINT).write_bytes(b"")
    with pytest.raises(ClarivisError, match="already holds a run") as err:
        runs.new_run_dir("data", str(out))
    message = str(err.value)
    assert f"--resume {out}" in message and "another --out" in message and "\n" not in message


@pytest.mark.parametrize("data, tag, prefix", [
    ("photos/shapes", "", "shapes-"),
    ("photos/shapes/", "", "shapes-"),  # a trailing slash names the same folder
    ("labels.csv", "", "labels-"),
    ("photos/shapes", "simclr", "shapes-simclr-"),  # pretraining tags its runs with the method
])
def test_default_run_dir_is_the_data_name_and_the_time(data, tag, prefix):
    path = runs.new_run_dir(data, None, tag=tag)
    assert path.parent == Path("runs")
    assert re.fullmatch(re.escape(prefix) + r"\d{8}-\d{6}", path.name), path.name


@pytest.mark.parametrize("metrics, png", [
    ("m.json", "m_confusion.png"),
    ("out/val_metrics.json", "out/val_metrics_confusion.png"),
    ("out/test.v2.json", "out/test.v2_confusion.png"),  # only the last suffix goes
])
def test_confusion_png_is_named_beside_its_metrics(metrics, png):
    assert runs.confusion_png(metrics) == Path(png)
    assert runs.confusion_png(Path(metrics)) == Path(png)


def test_runs_imports_without_torch():
    """Readers of run folders (report, serve) need no torch to find the files."""
    code = "import sys, clarivis.runs; assert 'torch' not in sys.modules, 'torch imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
