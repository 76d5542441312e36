"""`clarivis train` as a user runs it, in its own process where it must be: a linear probe on
random weights warns; a run killed with SIGKILL mid-epoch loses at most that epoch; --nproc 2
runs torchrun and resumes. The Python side is tests/training/."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from tests.e2e.test_cli import run_cli
from tests.tiny import CNN

import clarivis


def test_cli_linear_probe_trains_a_bundle_and_warns_about_random_weights(tiny_folder, tmp_path, capsys):
    code, out, err = run_cli(["train", tiny_folder, "--model", CNN, "--linear-probe", "--img-size",
                              "32", "--out", tmp_path / "run", "--no-report"], capsys)
    assert code == 0, err
    assert "linear probe on" in err and "random weights" in err
    assert (tmp_path / "run" / "model" / "config.json").is_file()


@pytest.mark.slow
def test_sigkill_mid_epoch_loses_at_most_that_epoch(shapes_dir, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "clarivis", "train", str(shapes_dir), "--out", str(run),
           "--model", CNN, "--epochs", "30", "--batch-size", "4", "--workers", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not _epochs_logged(run, 2):
        time.sleep(0.2)
    time.sleep(0.5)  # now inside epoch 3
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = torch.load(run / "last.ckpt", weights_only=True)["epoch"]
    assert done >= 2
    config = (run / "config.yaml").read_text().replace("epochs: 30", f"epochs: {done + 1}")
    (run / "config.yaml").write_text(config)
    resumed = clarivis.train(shapes_dir, resume=run)
    assert resumed.epochs_run == done + 1
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == list(range(1, done + 2))


def _epochs_logged(run, n) -> bool:
    path = run / "metrics.jsonl"
    return path.exists() and len(path.read_text().splitlines()) >= n


@pytest.mark.slow
def test_cli_nproc_runs_torchrun_and_resumes(tmp_path, shapes_dir):
    run = tmp_path / "run"
    flags = ["--model", CNN, "--epochs", "2", "--batch-size", "16", "--device", "cpu"]
    _clarivis("train", str(shapes_dir / "train"), "--out", str(run), "--nproc", "2", *flags)
    assert (run / "model" / "model.safetensors").exists()
    summary = json.loads((run / "model" / "config.json").read_text())["training"]
    assert summary["processes"] == 2
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2  # rank 0 logs alone

    # The same run, as if cut off after epoch 2 of 3: both ranks resume from rank 0's checkpoint.
    ckpt = torch.load(run / "last.ckpt", weights_only=True)
    ckpt["finished"] = False
    torch.save(ckpt, run / "last.ckpt")
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("epochs: 2", "epochs: 3"))
    _clarivis("train", str(shapes_dir / "train"), "--resume", str(run), "--nproc", "2")
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]
    assert json.loads((run / "model" / "config.json").read_text())["training"]["processes"] == 2


def _clarivis(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "clarivis", *args], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
