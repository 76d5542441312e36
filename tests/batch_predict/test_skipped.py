"""Files a folder walk does not predict (issue 14: a .ico gave no row and no message): which are
read anyway, which are error rows, which are left out and how that is reported."""

from __future__ import annotations

import pytest
from tests.tiny import write_image

from clarivis.batch_predict import predict_to_file
from clarivis.batch_predict.backends import predict_rows
from clarivis.batch_predict.writers import read_csv_rows
from clarivis.data.expand import SkippedFiles, expand_path, walk_images


@pytest.fixture
def mixed(tmp_path):
    """A photo folder as users have them: images, an icon, a phone HEIC (no plugin), a JPEG
    and a PNG behind odd names, notes, and the files operating systems drop there."""
    folder = tmp_path / "mixed"
    write_image(folder / "a.png")
    write_image(folder / "b.ico", fmt="ICO")  # Pillow reads ICO; clarivis' decoders do not
    (folder / "c.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    write_image(folder / "photo.jpg_large", fmt="JPEG")  # a browser's name for a saved JPEG
    write_image(folder / "IMG_0001", fmt="PNG")  # no extension at all
    (folder / "notes.txt").write_text("shot on the 3rd")
    (folder / "data.bin").write_bytes(bytes(range(256)))
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / "._a.png").write_bytes(b"\x00\x05\x16\x07")  # macOS AppleDouble metadata
    (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    return folder


def test_the_walk_reads_errors_or_reports_every_file(mixed):
    left_out = SkippedFiles()
    entries = list(walk_images(str(mixed), left_out))
    assert [(p.rsplit("/", 1)[1], e is None) for p, e in entries] == [
        ("IMG_0001", True), ("a.png", True), ("b.ico", False), ("c.heic", False),
        ("photo.jpg_large", True)]
    errors = dict(entries)
    assert errors[str(mixed / "b.ico")].startswith("ICO image: clarivis reads JPEG, PNG")
    assert errors[str(mixed / "c.heic")].startswith("HEIC image:")
    assert "convert it" in errors[str(mixed / "c.heic")]
    assert left_out.not_images == 2 and left_out.hidden == 3
    assert left_out.examples == [(str(mixed / "data.bin"), "not an image (extension .bin)"),
                                 (str(mixed / "notes.txt"), "not an image (extension .txt)")]
    assert left_out.lines() == [
        "skipped 2 files that are not images (and 3 hidden or system files):",
        f"  {mixed / 'data.bin'}: not an image (extension .bin)",
        f"  {mixed / 'notes.txt'}: not an image (extension .txt)"]


def test_a_file_named_outright_is_never_left_out(mixed):
    assert list(expand_path(str(mixed / "notes.txt"))) == [(str(mixed / "notes.txt"), None)]
    assert list(expand_path(str(mixed / "b.ico")))[0][1].startswith("ICO image:")
    # An .ico that is a PNG inside is read: the header decides, not the name.
    write_image(mixed / "renamed.ico", fmt="PNG")
    assert list(expand_path(str(mixed / "renamed.ico"))) == [(str(mixed / "renamed.ico"), None)]


def test_the_summary_names_the_first_few_and_counts_the_rest():
    left_out = SkippedFiles(keep=2)
    for i in range(7):
        left_out(f"f{i}.txt", "not an image (extension .txt)")
    left_out(".DS_Store", None)
    lines = left_out.lines()
    assert lines[0] == "skipped 7 files that are not images (and 1 hidden or system file):"
    assert lines[1:] == ["  f0.txt: not an image (extension .txt)",
                         "  f1.txt: not an image (extension .txt)", "  and 5 more"]
    hidden_only = SkippedFiles()
    hidden_only("Thumbs.db", None)
    assert hidden_only.lines() == [] and hidden_only.hidden == 1  # counted, not reported
    one = SkippedFiles()
    one("x", "not an image (no extension)")
    assert one.lines()[0] == "skipped 1 file that is not an image:"


def test_predict_to_file_rows_and_summary(tiny_bundle, mixed, tmp_path):
    summary = predict_to_file(tiny_bundle, mixed, tmp_path / "p.csv", batch_size=2)
    rows = {r[0].rsplit("/", 1)[1]: r for r in read_csv_rows(tmp_path / "p.csv")}
    assert sorted(rows) == ["IMG_0001", "a.png", "b.ico", "c.heic", "photo.jpg_large"]
    assert all(rows[n][1] for n in ("IMG_0001", "a.png", "photo.jpg_large"))  # labelled
    assert rows["b.ico"][4].startswith("ICO image") and not rows["b.ico"][1]
    assert (summary.predicted, summary.errors) == (3, 2)
    assert summary.left_out.not_images == 2 and summary.left_out.hidden == 3
    assert summary.line().startswith("3 predicted, 2 errors, 2 non-images skipped; wrote")


def test_predict_rows_reports_what_it_left_out(tiny_bundle, mixed):
    left_out = SkippedFiles()
    rows = list(predict_rows(tiny_bundle, [mixed, mixed / "missing.png"], on_skip=left_out))
    assert [r.source.rsplit("/", 1)[1] for r in rows] == [
        "IMG_0001", "a.png", "b.ico", "c.heic", "photo.jpg_large", "missing.png"]
    assert [bool(r.error) for r in rows] == [False, False, True, True, False, True]
    assert rows[-1].error == "file not found"
    assert left_out.not_images == 2 and left_out.hidden == 3
    without = list(predict_rows(tiny_bundle, mixed))  # the same rows without the hook
    def fields(rows):
        return [(r.source, r.label, r.error) for r in rows]

    assert fields(without) == fields(rows[:-1])
