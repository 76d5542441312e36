"""`clarivis pretrain` as a user runs it: the backbone and the next command printed, then
`clarivis train --weights` on it; one-line errors for the mistakes a user makes."""

from __future__ import annotations

import shlex

from tests.e2e.test_cli import assert_one_line_error, run_cli
from tests.tiny import CNN, write_image


def test_pretrain_then_train_with_the_printed_command(tiny_folder, tmp_path, capsys):
    flat = tmp_path / "flat"
    for i in range(10):
        write_image(flat / f"{i}.png", (30 * i, 100, 200 - 15 * i), size=(32, 32))
    code, out, err = run_cli(["pretrain", flat, "--model", CNN, "--method", "byol", "--epochs", "1",
                              "--batch-size", "4", "--img-size", "32", "--workers", "0",
                              "--out", tmp_path / "ssl"], capsys)
    assert code == 0, err
    assert f"backbone: {tmp_path / 'ssl' / 'backbone.safetensors'}" in out
    command = shlex.split(next(line for line in out.splitlines() if line.startswith("next:"))[5:])
    assert command[:5] == ["clarivis", "train", "LABELED_DIR", "--model", CNN]
    args = [tiny_folder, *command[3:], "--epochs", "1", "--workers", "0", "--no-report",
            "--out", tmp_path / "fine"]
    code, out, err = run_cli(["train", *args], capsys)
    assert code == 0, err


def test_pretrain_errors_are_one_line(tmp_path, capsys):
    code, _, err = run_cli(["pretrain", tmp_path / "missing"], capsys)
    assert_one_line_error(code, err, "does not exist")
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(["pretrain", tmp_path / "empty", "--out", tmp_path / "run"], capsys)
    assert_one_line_error(code, err, "holds no images")
    assert not (tmp_path / "run").exists()
    code, _, err = run_cli(["pretrain", tmp_path / "empty", "--method", "moco"], capsys)
    assert_one_line_error(code, err, "unknown method 'moco'; choose one of simclr, byol, dino")
    code, _, err = run_cli(["pretrain", tmp_path / "empty", "--resume", tmp_path / "nowhere"], capsys)
    assert_one_line_error(code, err, "does not exist")
