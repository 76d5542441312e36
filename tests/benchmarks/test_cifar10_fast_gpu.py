"""benchmarks/cifar10_fast_gpu.py without a GPU: its arguments, the held-out split, the tensor
files airbench reads, parsing airbench's table, and (slow) the --smoke path end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests.benchmarks.scripts import BENCH, benchmark_script
from tests.tiny import write_image


@pytest.fixture(scope="module")
def bench():
    with benchmark_script("cifar10_fast_gpu") as module:
        yield module


def _folder(root: Path, per_class: int) -> Path:
    for name, colour in (("cat", (200, 30, 30)), ("dog", (30, 30, 200))):
        for i in range(per_class):
            write_image(root / name / f"{i}.png", colour, size=(32, 32))
    return root


def test_smoke_flags_pick_the_cpu_and_no_airbench(bench):
    args = bench.parse_args(["--data", "D", "--smoke", "--airbench", "A"])
    assert args.device == "cpu" and args.airbench is None and args.epoch_list == [1]
    assert bench.parse_args(["--data", "D", "--epochs", "20,10"]).epoch_list == [10, 20]


def test_the_test_split_is_held_out_seeded_and_stratified(bench, tmp_path):
    by_class = bench.common.class_folder_images(_folder(tmp_path / "d", 10))
    train, test = bench.split_rows(by_class, None, per_class=2, seed=0)
    assert len(test) == 4 and len(train) == 16 and not {p for p, _ in train} & {p for p, _ in test}
    assert sorted(c for _, c in test) == ["cat", "cat", "dog", "dog"]
    assert bench.split_rows(by_class, None, per_class=2, seed=0) == (train, test)


def test_airbench_tensor_file_has_its_loader_format(bench, tmp_path):
    by_class = bench.common.class_folder_images(_folder(tmp_path / "d", 3))
    rows = bench.common.stratified_first(by_class, None)
    bench.save_tensor_file(rows, ["cat", "dog"], tmp_path / "train.pt")
    data = torch.load(tmp_path / "train.pt")
    assert data["images"].shape == (6, 32, 32, 3) and data["images"].dtype == torch.uint8
    assert data["labels"].tolist() == [0, 0, 0, 1, 1, 1] and data["classes"] == ["cat", "dog"]


def test_airbench_time_comes_from_its_last_table_row(bench):
    table = ("|  run   |  epoch  |  train_acc  |  val_acc  |  tta_val_acc  |  time_seconds  |\n"
             "|      0 |       1 |      0.5000 |    0.6000 |               |         0.4000 |\n"
             "|        |    eval |      0.9000 |    0.9380 |        0.9410 |         2.6100 |\n")
    assert bench._last_time_seconds(table) == 2.61


@pytest.mark.slow
def test_smoke_run_writes_a_result(tmp_path):
    data = _folder(tmp_path / "d", 30)
    out = tmp_path / "r.json"
    subprocess.run([sys.executable, str(BENCH / "cifar10_fast_gpu.py"), "--data", str(data),
                    "--smoke", "--images", "60", "--json", str(out), "--work-dir", str(tmp_path)],
                   check=True, timeout=600)
    result = json.loads(out.read_text())
    tries = result["pipelines"]["clarivis-fast"]["tries"]
    assert len(tries) == 1 and tries[0]["test_accuracy"] is not None
    assert result["settings"]["train_images"] + result["settings"]["test_images"] == 60
