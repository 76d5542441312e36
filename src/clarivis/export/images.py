"""Which real images calibrate the int8 model and which check the export (held out from both
training and calibration)."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from clarivis import runs
from clarivis.data.io import is_image_file
from clarivis.errors import DataError

# Calibration images: MinMax ranges of a few hundred real images are stable. Measured on resnet18
# CIFAR-10 bundles (benchmarks/README.md, "Export"): 512 or 1,000 images gave the same int8
# agreement within 1 point, at 2-4x the time and the memory (onnxruntime holds every
# calibration image's activations until the end).
CALIBRATION_IMAGES = 256
# Check images: 1,000 resolve agreement to 0.1 %, the fp32 bar.
CHECK_IMAGES = 1000
_SEED = 0  # split files list images class by class: a seeded shuffle gives every class a share


@dataclass
class ImageSets:
    check: list[str]
    check_source: str  # where they came from, for the report ("run val split", a folder)
    calibration: list[str]
    calibration_source: str | None


def choose_images(bundle_dir: Path, *, int8: bool, calibration_data: str | Path | None,
                  check_data: str | Path | None) -> ImageSets:
    """Calibration: `calibration_data`, else the run's val split. Check: `check_data`, else the
    run's test split, else the val images calibration did not use. Raises DataError when a
    needed set has no source."""
    split = _read_split(bundle_dir.parent / runs.SPLIT)
    calibration, calibration_source = [], None
    if int8:
        if calibration_data is not None:
            calibration, calibration_source = _folder_images(calibration_data), str(calibration_data)
        elif split.get("val"):
            calibration, calibration_source = split["val"], "run val split"
        else:
            raise DataError(f"{bundle_dir} is not in a run folder with a validation split; "
                            "pass --calibration-data DIR (a few hundred real images) for --int8")
    if check_data is not None:
        check, check_source = _folder_images(check_data), str(check_data)
    elif split.get("test"):
        check, check_source = split["test"], "run test split"
    elif split.get("val"):
        check, check_source = split["val"], "run val split"
    elif calibration:
        check, check_source = calibration, calibration_source
    else:
        raise DataError(f"{bundle_dir} is not in a run folder with a split.json; pass --check-data DIR "
                        "(held-out images) so the export can be checked against PyTorch")
    if calibration and check_source == calibration_source:
        # One source for both: calibration takes at most half, the check the images it did not see.
        shuffled = _sample(calibration, len(calibration))
        cut = min(CALIBRATION_IMAGES, len(shuffled) // 2)
        if cut == 0:
            raise DataError(f"{check_source} has too few images to both calibrate and check; "
                            "pass --check-data DIR")
        return ImageSets(shuffled[cut:cut + CHECK_IMAGES], check_source, shuffled[:cut], calibration_source)
    return ImageSets(_sample(check, CHECK_IMAGES), check_source,
                     _sample(calibration, CALIBRATION_IMAGES), calibration_source)


def _read_split(path: Path) -> dict[str, list[str]]:
    if not path.is_file():
        return {}
    raw = json.loads(path.read_text())
    return {name: [str(_resolve(path.parent, e["path"])) for e in raw.get(name, [])]
            for name in ("val", "test")}


def _resolve(run_dir: Path, p: str) -> Path:
    path = Path(p)
    return path if path.is_absolute() or path.exists() else run_dir / path


def _folder_images(folder: str | Path) -> list[str]:
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataError(f"{folder} is not a folder; pass a folder of images")
    files = sorted(str(p) for p in root.rglob("*") if p.is_file() and is_image_file(p))
    if not files:
        raise DataError(f"{folder} holds no images; pass a folder of real images")
    return files


def _sample(paths: list[str], n: int) -> list[str]:
    paths = sorted(paths)
    random.Random(_SEED).shuffle(paths)
    return paths[:n]
