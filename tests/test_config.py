"""One typed config: defaults, then YAML, then flags; errors are one line."""

from __future__ import annotations

import pytest

from clarivis.config import build_config, parse_kwargs
from clarivis.errors import ConfigError


def test_yaml_overrides_defaults_and_flags_override_yaml(tmp_path):
    (tmp_path / "c.yaml").write_text("epochs: 7\nlr: 0.01\nmodel: resnet18\n")
    config = build_config(tmp_path / "c.yaml", data="d", lr=0.5, patience=None)
    assert config.epochs == 7 and config.lr == 0.5 and config.model == "resnet18"
    assert config.patience is None  # None given explicitly turns early stopping off
    assert config.resize_mode is None and config.val_fraction == 0.1  # untouched defaults


@pytest.mark.parametrize(
    "yaml_text, message",
    [("epochs: [1, 2\n", "not valid YAML"), ("- a\n- b\n", "mapping"),
     ("epoch: 3\n", "unknown setting 'epoch'"), ("epochs: 0\n", "--epochs")],
)
def test_bad_config_files_are_one_line_errors(tmp_path, yaml_text, message):
    (tmp_path / "c.yaml").write_text(yaml_text)
    with pytest.raises(ConfigError, match=message) as info:
        build_config(tmp_path / "c.yaml", data="d")
    assert "\n" not in str(info.value)


def test_model_kwargs_parse_typed_values():
    assert parse_kwargs("patch_size=8, drop_path_rate=0.1,global_pool=avg") == {
        "patch_size": 8, "drop_path_rate": 0.1, "global_pool": "avg"}
    with pytest.raises(ConfigError, match="key=value"):
        parse_kwargs("patch_size")


def test_recipe_sets_defaults_below_yaml_and_flags(tmp_path):
    fast = build_config(data="d", recipe="fast")
    assert fast.optimizer == "sgd" and fast.patience is None and fast.batch_size is None
    (tmp_path / "c.yaml").write_text("recipe: fast\nepochs: 3\n")
    assert build_config(tmp_path / "c.yaml", data="d", label_smoothing=0.0).epochs == 3
    assert build_config(tmp_path / "c.yaml", data="d", label_smoothing=0.0).label_smoothing == 0.0
    with pytest.raises(ConfigError, match="unknown recipe 'turbo'"):
        build_config(data="d", recipe="turbo")


def test_model_kwargs_may_not_repeat_a_setting():
    with pytest.raises(ConfigError, match="model_kwargs may not set img_size; it comes from --img-size"):
        build_config(data="d", model_kwargs={"img_size": 32, "patch_size": 4})
