"""`clarivis embed` as a user runs it: the file written (exit 1 when inputs were unreadable),
one-line errors. The Python side is tests/test_embeddings.py."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from tests.e2e.test_cli import assert_one_line_error, run_cli
from tests.tiny import CNN


def test_cli_embed_writes_the_file_and_exits_1_for_unreadable_inputs(flat_folder, tmp_path, capsys):
    out_file = tmp_path / "emb.parquet"
    code, out, err = run_cli(["embed", flat_folder, "--model", CNN, "--img-size", "32",
                              "--out", out_file], capsys)
    assert code == 1 and "5 embeddings" in out and "broken.jpg" in err
    assert pq.read_table(out_file).num_rows == 5  # the readable ones are written all the same


@pytest.mark.parametrize("args, fragment", [
    (["--model", CNN, "--out", "emb.txt"], "--out must end in .npy or .parquet"),
    (["--model", "no_such_net", "--out", "emb.npy"], "unknown model 'no_such_net'"),
    (["--model", CNN, "--weights", "missing.safetensors", "--out", "e.npy"], "weights file"),
])
def test_cli_embed_errors_are_one_line(flat_folder, tmp_path, capsys, args, fragment):
    code, _, err = run_cli(["embed", flat_folder, *args], capsys)
    assert_one_line_error(code, err, fragment)


def test_cli_embed_with_no_readable_image_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(["embed", tmp_path / "empty", "--model", CNN, "--out",
                            tmp_path / "e.npy"], capsys)
    assert_one_line_error(code, err, "no readable images")
