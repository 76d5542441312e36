"""`clarivis predict --out FILE [--resume]` as a user runs it, alone and under torchrun."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from tests.e2e.test_cli import assert_one_line_error, run_cli
from tests.tiny import train_bundle, write_images

from clarivis.batch_predict.writers import read_csv_rows


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return train_bundle(tmp_path_factory.mktemp("bundle"))


def test_out_writes_the_file_and_one_summary_line(bundle, tmp_path, capsys):
    images = write_images(tmp_path / "images")
    (images / "red" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "preds.csv"
    code, stdout, stderr = run_cli(["predict", bundle, images, "--out", out, "--batch-size", "4"],
                                   capsys)
    assert code == 1 and "Traceback" not in stderr  # one error row, as without --out
    assert stdout.strip() == f"13 predicted, 1 error; wrote {out}"
    rows = list(read_csv_rows(out))
    assert len(rows) == 14 and len({r[0] for r in rows}) == 14
    assert [r[0] for r in rows if r[4]] == [str(images / "red" / "broken.png")]


def test_existing_out_needs_resume(bundle, tmp_path, capsys):
    images = write_images(tmp_path / "images")
    out = tmp_path / "preds.jsonl"
    code, _, _ = run_cli(["predict", bundle, images, "--out", out], capsys)
    assert code == 0
    code, _, err = run_cli(["predict", bundle, images, "--out", out], capsys)
    assert_one_line_error(code, err, "pass --resume to continue it or choose another --out")
    write_images(tmp_path / "images" / "new", per_class=1)  # 3 more images
    code, stdout, _ = run_cli(["predict", bundle, images, "--out", out, "--resume"], capsys)
    assert code == 0 and stdout.startswith("3 predicted, 0 errors, 13 already done")
    assert len(out.read_text().splitlines()) == 16


@pytest.mark.parametrize("args, fragment", [
    (["--resume"], "add --out FILE"),
    (["--out", "preds.xlsx"], "unknown format"),
    (["--out", "preds.csv", "--format", "json"], "suffix"),
])
def test_out_option_errors(bundle, tmp_path, capsys, args, fragment):
    args = [str(tmp_path / a) if a.startswith("preds") else a for a in args]
    code, _, err = run_cli(["predict", bundle, tmp_path, *args], capsys)
    assert_one_line_error(code, err, fragment)


@pytest.mark.slow
def test_two_processes_split_the_files_and_merge_the_parts(bundle, tmp_path):
    images = write_images(tmp_path / "images")
    expected = sorted(str(p) for p in images.rglob("*.png"))
    # Rank 1 of an earlier 2-process run was killed after two rows and a torn third one.
    out = tmp_path / "preds.csv"
    part = tmp_path / "preds.part-1-of-2.csv"
    part.write_text("path,label,confidence,top_k,error\n"
                    f"{expected[1]},red,0.5,red:0.5,\n{expected[3]},red,0.5,red:0.5,\n{expected[5]},re")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "clarivis", "predict", str(bundle), str(images), "--out", str(out), "--resume",
         "--batch-size", "3", "--device", "cpu"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "11 predicted, 0 errors, 2 already done (2 processes)" in proc.stdout
    paths = [row[0] for row in read_csv_rows(out)]
    assert sorted(paths) == expected  # every file exactly once
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "preds.csv"]  # parts merged
