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
    assert config.resize_mode == "pad" and config.val_fraction == 0.1  # untouched defaults


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
