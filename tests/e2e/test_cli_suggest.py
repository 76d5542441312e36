"""`clarivis suggest` as a user runs it: the table, the files, exit codes, one-line errors."""

from __future__ import annotations

import pytest
from tests.e2e.test_cli import assert_one_line_error, run_cli
from tests.tiny import make_pool


def test_suggest_prints_the_top_of_the_queue(active_run, pool, tmp_path, capsys):
    run, train = active_run
    code, out, err = run_cli(["suggest", pool, "--model", run, "--budget", "5", "--labeled", train,
                              "--out", tmp_path / "q", "--top", "3"], capsys)
    assert code == 0, err
    assert "labeling queue: 5 of 24" in out and "margin" in out
    first = (tmp_path / "q" / "queue.csv").read_text().splitlines()[1].split(",")
    assert first[0] == "1" and first[1].endswith(".png") and "/p" in first[1]  # a purple on top
    assert "queue.csv" in out and "queue.html" in out
    assert (tmp_path / "q" / "queue.csv").is_file() and (tmp_path / "q" / "queue.html").is_file()
    assert "labeled images" in err  # the note


def test_unreadable_inputs_exit_1_after_writing_the_queue(active_run, pool, tmp_path, capsys):
    run, _ = active_run
    (pool / "bad.png").write_bytes(b"nope")
    code, _, err = run_cli(["suggest", pool, "--model", run, "--budget", "2", "--out", tmp_path / "q"],
                           capsys)
    assert code == 1 and "bad.png" in err and "1 input(s) could not be read" in err
    assert (tmp_path / "q" / "queue.csv").is_file() and (tmp_path / "q" / "skipped.txt").is_file()


@pytest.mark.parametrize("case, fragment", [
    ("missing", "file not found"),
    ("empty", "folder holds no images"),
    ("budget", "--budget must be at least 1"),
    ("strategy", "unknown --strategy badge"),
    ("model", "does not exist"),
    ("not_a_bundle", "is not a ModelBundle"),
    ("labeled", "--labeled"),
])
def test_one_line_errors(case, fragment, active_run, tmp_path, capsys):
    run, _ = active_run
    good = make_pool(tmp_path / "pool", red=1, blue=1, purple=0)
    (tmp_path / "empty").mkdir()
    args = {"missing": [tmp_path / "nowhere", "--model", run],
            "empty": [tmp_path / "empty", "--model", run],
            "budget": [good, "--model", run, "--budget", "0"],
            "strategy": [good, "--model", run, "--strategy", "badge"],
            "model": [good, "--model", tmp_path / "no-run"],
            "not_a_bundle": [good, "--model", tmp_path / "empty"],
            "labeled": [good, "--model", run, "--labeled", tmp_path / "nothing.csv"]}[case]
    code, _, err = run_cli(["suggest", *args, "--out", tmp_path / "q"], capsys)
    assert_one_line_error(code, err, fragment)
