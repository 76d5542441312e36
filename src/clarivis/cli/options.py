"""Flags that set a field of a config model (TrainConfig, PretrainConfig): each is named after
its field, its help shows the field's default read from the model (so help and config cannot
drift apart), and the values a user gave become the settings passed on. A flag not given is
None, so the YAML file's value or the config's default stands."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from clarivis.config import parse_kwargs


def default_text(config: type[BaseModel], field: str) -> str:
    """`field`'s default as help text shows it: 30, 0.05, 0 (not 0.0), adamw, on/off."""
    value = config.model_fields[field].default
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def given_settings(config: type[BaseModel], params: Mapping[str, Any]) -> dict[str, Any]:
    """The command's parameters (click's ctx.params) that name a field of `config` and were
    given: the settings for `config`. Others (--resume, --config) are the command's own."""
    return {name: value for name, value in params.items()
            if name in config.model_fields and value is not None}


def parse_model_kwargs(text: str) -> dict[str, Any] | None:
    """--model-kwargs 'patch_size=8,drop_path_rate=0.1' -> a dict (None for '': not given)."""
    return parse_kwargs(text) or None
