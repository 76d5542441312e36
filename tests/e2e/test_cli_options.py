"""Flags named after config fields: every field has a flag or is deliberately YAML-only, the help
shows the field's default read from the config, and the flags given (only those) reach it."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest
import typer
from tests.e2e.test_cli import assert_one_line_error, run_cli

import clarivis
from clarivis.cli import pretrain as pretrain_cli
from clarivis.cli import train as train_cli
from clarivis.cli.options import default_text, given_settings, parse_model_kwargs
from clarivis.config import TrainConfig
from clarivis.ssl.config import PretrainConfig

# Fields with no flag, on purpose: they are set in the --config YAML file.
TRAIN_YAML_ONLY = {"drop_rate", "text_templates", "momentum", "min_lr_ratio", "grad_clip", "ema_decay", "amp"}
PRETRAIN_YAML_ONLY = {"weight_decay", "warmup_epochs"}
# Parameters of the command that are not settings of the run.
TRAIN_OWN = {"ctx", "resume", "config", "nproc"}
PRETRAIN_OWN = {"ctx", "resume", "config"}

COMMANDS = [(train_cli.train, TrainConfig, TRAIN_YAML_ONLY, TRAIN_OWN),
            (pretrain_cli.pretrain, PretrainConfig, PRETRAIN_YAML_ONLY, PRETRAIN_OWN)]


@pytest.mark.parametrize("command, config, yaml_only, own", COMMANDS, ids=["train", "pretrain"])
def test_every_field_has_a_flag_of_its_name_or_is_yaml_only(command, config, yaml_only, own):
    params = set(inspect.signature(command).parameters)
    fields = set(config.model_fields)
    assert params - own <= fields, "a flag that names no field would be dropped silently"
    assert fields - params == yaml_only, "a new field needs a flag, or a place in the YAML-only set"


def test_default_text_reads_like_the_help():
    assert [default_text(TrainConfig, f) for f in ("epochs", "weight_decay", "mixup", "optimizer")] == [
        str(TrainConfig.model_fields["epochs"].default), "0.05", "0", "adamw"]
    assert default_text(TrainConfig, "hflip") == "on" and default_text(TrainConfig, "ema") == "off"


def option_help(app: typer.Typer, command: str, flag: str) -> str:
    """The help of `flag`, built from the source as `clarivis COMMAND --help` builds it."""
    click_command = typer.main.get_group(app).commands[command]
    return next(p.help for p in click_command.params if flag in getattr(p, "opts", ()))


SHOWN = [("--epochs", "epochs"), ("--optimizer", "optimizer"), ("--layer-decay", "layer_decay"),
         ("--weight-decay", "weight_decay"), ("--val-fraction", "val_fraction"), ("--hflip", "hflip"),
         ("--mixup", "mixup"), ("--cutmix", "cutmix"), ("--label-smoothing", "label_smoothing"),
         ("--freeze-epochs", "freeze_epochs"), ("--ema", "ema"), ("--patience", "patience"),
         ("--balance", "balance"), ("--seed", "seed"), ("--channels-last", "channels_last"),
         ("--report", "report")]


@pytest.mark.parametrize("flag, field", SHOWN)
def test_train_help_shows_the_config_default(flag, field):
    assert f"[{default_text(TrainConfig, field)}" in option_help(train_cli.app, "train", flag)


def test_help_follows_a_changed_default(monkeypatch):
    """The help is read from TrainConfig when the command is built: it cannot drift."""
    monkeypatch.setattr(TrainConfig.model_fields["epochs"], "default", 31)
    monkeypatch.setattr(TrainConfig.model_fields["weight_decay"], "default", 0.02)
    assert option_help(train_cli.app, "train", "--epochs") == "maximum epochs [31]"
    assert option_help(train_cli.app, "train", "--weight-decay") == "[0.02]"
    monkeypatch.setattr(PretrainConfig.model_fields["method"], "default", "byol")
    assert option_help(pretrain_cli.app, "pretrain", "--method") == "simclr | byol | dino [byol]"


def test_given_settings_keeps_the_fields_given():
    params = {"data": "d", "out": None, "epochs": 3, "hflip": False, "resume": "r", "nproc": 2,
              "model_kwargs": {"patch_size": 8}}
    assert given_settings(TrainConfig, params) == {"data": "d", "epochs": 3, "hflip": False,
                                                   "model_kwargs": {"patch_size": 8}}
    assert parse_model_kwargs("patch_size=8,drop_path_rate=0.1") == {"patch_size": 8, "drop_path_rate": 0.1}
    assert parse_model_kwargs("") is None  # --model-kwargs '' is not given


def test_train_flags_reach_the_api(monkeypatch, capsys, tmp_path):
    calls = []

    def fake_train(**kwargs):
        calls.append(kwargs)
        return SimpleNamespace(best_val_accuracy=0.5, best_epoch=1, epochs_run=2,
                               bundle_dir=tmp_path / "run" / "model", run_dir=tmp_path / "run")

    monkeypatch.setattr(clarivis, "train", fake_train)  # the command calls clarivis.train
    code, out, err = run_cli(["train", "DATA", "--out", tmp_path / "run", "--epochs", "3", "--no-hflip",
                              "--model-kwargs", "patch_size=8", "--resume", "R", "--compile"], capsys)
    assert code == 0, err
    (kwargs,) = calls
    console = kwargs.pop("console")
    assert kwargs == {"data": "DATA", "out": str(tmp_path / "run"), "epochs": 3, "hflip": False,
                      "model_kwargs": {"patch_size": 8}, "compile": True, "resume": "R", "config": None}
    assert console.stderr and "best val accuracy 0.500 (epoch 1)" in err and "model:" in out


def test_bad_model_kwargs_is_one_line(capsys):
    code, _, err = run_cli(["train", "DATA", "--model-kwargs", "patch_size"], capsys)
    assert_one_line_error(code, err, "--model-kwargs expects key=value pairs, got 'patch_size'")
