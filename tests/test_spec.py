"""The torch-free bundle spec (spec.py): config.json's schema round trip, keys of other writers
kept, damaged or newer configs refused in one line, and the preprocessing arithmetic."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from clarivis.errors import ModelError
from clarivis.spec import (
    BUNDLE_DIR_NAME,
    CONFIG_NAME,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SCHEMA_VERSION,
    BundleConfig,
    Preprocess,
    bundle_config_text,
    read_bundle_config,
)

EXPORT_RECORD = {"fp32": {"file": "model.onnx", "agreement": 1.0}}  # what `clarivis export` adds


def _config(**values) -> BundleConfig:
    preprocess = Preprocess(img_size=32, resize_mode="crop", crop_pct=0.875, interpolation="bicubic")
    return BundleConfig.for_model(architecture="test_resnet", class_names=["cat", "dog"],
                                  preprocess=preprocess, **values)


def _write(folder, raw) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    text = raw if isinstance(raw, str) else json.dumps(raw)
    (folder / CONFIG_NAME).write_text(text)


def test_round_trip_keeps_the_keys_this_version_does_not_know():
    raw = {**_config(temperature=1.7).to_dict(), "export": EXPORT_RECORD, "written_by": "v9"}
    config = BundleConfig.from_dict(json.loads(json.dumps(raw)))
    assert config.extra == {"export": EXPORT_RECORD, "written_by": "v9"}
    assert config.extra["export"] == EXPORT_RECORD and config.temperature == 1.7
    assert config.to_dict() == raw  # nothing dropped, nothing added
    assert config.num_classes == 2 and config.input_size == (3, 32, 32)
    assert config.preprocess == Preprocess(img_size=32, resize_mode="crop", crop_pct=0.875,
                                           interpolation="bicubic")
    # updated(): schema fields change in place, other keys join `extra`; the original is untouched
    changed = config.updated(temperature=2.0, export={"int8": {}})
    assert changed.temperature == 2.0 and changed.extra["export"] == {"int8": {}}
    assert changed.extra["written_by"] == "v9" and config.extra["export"] == EXPORT_RECORD


def test_config_text_is_json_with_lists_for_tuples(tmp_path):
    config = _config()
    text = bundle_config_text(config)
    raw = json.loads(text)
    assert raw["input_size"] == [3, 32, 32] and raw["mean"] == list(IMAGENET_MEAN)
    assert raw["schema_version"] == SCHEMA_VERSION and "extra" not in raw
    _write(tmp_path / "run" / BUNDLE_DIR_NAME, text)
    assert read_bundle_config(tmp_path / "run") == config  # a run folder stands for its bundle


@pytest.mark.parametrize("raw", [
    "{not json",
    {"class_names": ["a"], "input_size": [3, 32, 32], "mean": [0, 0, 0], "std": [1, 1, 1]},  # no architecture
    {**_config().to_dict(), "input_size": [32, 32]},  # 2 values
    {**_config().to_dict(), "temperature": "warm"},
], ids=["not-json", "missing-key", "bad-shape", "bad-number"])
def test_damaged_config_is_one_line_model_error(tmp_path, raw):
    _write(tmp_path / "m", raw)
    with pytest.raises(ModelError) as err:
        read_bundle_config(tmp_path / "m")
    message = str(err.value)
    assert "damaged" in message and str(tmp_path / "m" / CONFIG_NAME) in message
    assert "\n" not in message and "retrain or restore" in message


def test_config_of_a_newer_schema_is_refused_in_one_line(tmp_path):
    _write(tmp_path / "m", {**_config().to_dict(), "schema_version": SCHEMA_VERSION + 1})
    with pytest.raises(ModelError, match="newer clarivis") as err:
        read_bundle_config(tmp_path / "m")
    assert "\n" not in str(err.value) and "upgrade" in str(err.value)


@pytest.mark.parametrize("img_size, crop_pct, resized", [
    (32, 1.0, 32),  # crops nothing more
    (32, 0.875, 36),  # floor(32 / 0.875) = floor(36.57)
    (224, 0.875, 256),  # timm's ImageNet evaluation: resize to 256, crop 224
    (224, 0.95, 235),  # floor(235.79)
])
def test_crop_resize_size(img_size, crop_pct, resized):
    assert Preprocess(img_size=img_size, resize_mode="crop", crop_pct=crop_pct).crop_resize_size == resized


def test_fill_is_the_mean_in_bytes_and_normalises_to_zero():
    preprocess = Preprocess(img_size=32)
    assert preprocess.fill == (124, 116, 104)  # 0.485, 0.456, 0.406 x 255, rounded
    for byte, mean, std in zip(preprocess.fill, IMAGENET_MEAN, IMAGENET_STD, strict=True):
        assert abs((byte / 255 - mean) / std) <= 0.5 / 255 / std  # within half a grey level
    assert Preprocess(img_size=32, mean=(0.0, 0.5, 1.0)).fill == (0, 128, 255)


def test_preprocess_from_dict_defaults_and_refusals():
    assert Preprocess.from_dict({"img_size": "48"}) == Preprocess(img_size=48)
    with pytest.raises(ValueError, match="unknown resize mode"):
        Preprocess(img_size=32, resize_mode="stretch")
    with pytest.raises(ValueError, match="unknown interpolation"):
        Preprocess(img_size=32, interpolation="lanczos")


def test_spec_imports_without_torch():
    """The runtime distribution ships spec.py: importing it must not import torch."""
    code = "import sys, clarivis.spec; assert 'torch' not in sys.modules, 'torch imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
