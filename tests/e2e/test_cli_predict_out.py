"""`clarivis predict --out FILE [--resume]` as a user runs it, alone and under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from tests.e2e.test_cli import assert_one_line_error, run_cli
from tests.tiny import train_bundle, write_image, write_images

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


def test_files_that_are_not_predicted_are_reported(bundle, tmp_path, capsys):
    # Issue 14: a .ico in the folder gave no row and no message.
    images = write_images(tmp_path / "images")
    write_image(images / "icon.ico", fmt="ICO")
    (images / "notes.txt").write_text("not a photo")
    (images / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    out = tmp_path / "preds.csv"
    code, stdout, stderr = run_cli(["predict", bundle, images, "--out", out], capsys)
    assert code == 1  # the icon is an image the user gets no label for: an error row
    assert stdout.strip() == f"13 predicted, 1 error, 1 non-image skipped; wrote {out}"
    assert stderr.strip().splitlines()[-2:] == [
        "skipped 1 file that is not an image (and 1 hidden or system file):",
        f"  {images / 'notes.txt'}: not an image (extension .txt)"]
    errors = {r[0]: r[4] for r in read_csv_rows(out) if r[4]}
    assert list(errors) == [str(images / "icon.ico")]
    assert errors[str(images / "icon.ico")].startswith("ICO image: clarivis reads JPEG, PNG")
    # Printed rather than streamed: the same rows and report; notes alone change no exit code.
    (images / "icon.ico").unlink()
    code, stdout, stderr = run_cli(["predict", bundle, images, "--format", "json"], capsys)
    assert code == 0 and len(json.loads(stdout)) == 13
    assert stderr.strip().splitlines() == [
        "skipped 1 file that is not an image (and 1 hidden or system file):",
        f"  {images / 'notes.txt'}: not an image (extension .txt)"]


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
