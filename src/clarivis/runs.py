"""The run-folder contract: every file a run folder (`runs/NAME/`) may hold, named once, and how a
path given by a user is taken to be a run. Writers (training, pretraining, audit, check) and
readers (report, export, serve) import the names from here. Torch-free."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from clarivis.errors import ClarivisError
from clarivis.spec import BUNDLE_DIR_NAME, CONFIG_NAME

# Written by `clarivis train`
BUNDLE_DIR = BUNDLE_DIR_NAME  # the ModelBundle (spec.py says what it holds)
CHECKPOINT = "last.ckpt"  # resumable state (also written by pretraining)
RUN_CONFIG = "config.yaml"  # the resolved TrainConfig / PretrainConfig
METRICS_LOG = "metrics.jsonl"  # one JSON line per epoch
SPLIT = "split.json"  # {"train": [{path, label}], "val": [...]}: the held-out images
SKIPPED = "skipped_files.txt"  # unreadable images, one per line with the reason
DATA_REPORT = "data_report.json"  # class counts, image sizes, imbalance
VAL_METRICS = "val_metrics.json"  # the best model on the val split
VAL_CONFUSION = "val_metrics_confusion.png"  # beside VAL_METRICS (save_evaluation's naming)
VAL_CALIBRATION = "val_calibration.json"  # reliability bins on val
LINEAR_PROBE = "linear_probe.json"  # C, CV accuracy and times of a --linear-probe run
# Written by later commands into the run folder
AUDIT = "audit.json"  # `clarivis audit`, read by the report
DATA_CHECK = "data_check.json"  # `clarivis check DATA --json RUN/data_check.json`
REPORT = "report.html"  # `clarivis report`
# Written by `clarivis pretrain`
BACKBONE_WEIGHTS = "backbone.safetensors"
BACKBONE_INFO = "backbone.json"  # beside the weights: architecture, method, epochs


def confusion_png(metrics_json: str | Path) -> Path:
    """The confusion-matrix PNG written beside a metrics JSON (NAME.json -> NAME_confusion.png)."""
    path = Path(metrics_json)
    return path.with_name(path.stem + "_confusion.png")


def new_run_dir(data: str, out: str | None, *, tag: str = "") -> Path:
    """--out (refused when it already holds a run), or runs/<data folder name>[-tag]-<date-time>
    (pretraining tags its runs with the method)."""
    if out:
        if (Path(out) / CHECKPOINT).exists():
            raise ClarivisError(f"{out} already holds a run; continue it with --resume {out} "
                                "or choose another --out")
        return Path(out)
    name = Path(data.rstrip("/")).stem or "data"
    return Path("runs") / f"{name}{'-' + tag if tag else ''}-{datetime.now():%Y%m%d-%H%M%S}"


def find_run_dir(run: str | Path) -> Path:
    """A run folder, or the model/ folder of one (then its parent)."""
    path = Path(run).expanduser()
    if (path / CONFIG_NAME).is_file() and (path.parent / METRICS_LOG).is_file():
        path = path.parent  # given the model/ folder of a run
    if not path.is_dir() or not (path / BUNDLE_DIR).is_dir():
        raise ClarivisError(f"{path} is not a run folder (no model/ inside); pass runs/NAME, "
                            "the --out folder of `clarivis train`")
    return path
