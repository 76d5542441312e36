"""`clarivis index` and `clarivis search` as a user runs them: the summary line, exit codes,
table/JSON/HTML outputs and one-line errors. The Python side is tests/index/test_index.py."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from tests.e2e.test_cli import assert_one_line_error, run_cli
from tests.tiny import CNN, VIT, random_weights, write_images

import clarivis

pytest.importorskip("usearch")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(photos, index, weights): 9 images indexed by test_resnet."""
    base = tmp_path_factory.mktemp("cli-index")
    photos = write_images(base / "photos", per_class=4)
    weights = random_weights(base / "cnn.safetensors", CNN)
    clarivis.index_images(photos, out=base / "idx", model=CNN, weights=weights, img_size=32)
    return photos, base / "idx", weights


def test_cli_index_prints_what_it_did_and_updates_in_place(tmp_path, capsys, built):
    photos, _, weights = built
    copy = tmp_path / "photos"
    shutil.copytree(photos, copy)
    code, out, _ = run_cli(["index", copy, "--model", CNN, "--weights", weights, "--img-size", "32",
                            "--out", tmp_path / "idx"], capsys)
    assert code == 0 and "9 images (9 added, 0 re-embedded, 0 moved, 0 deleted, 0 unchanged)" in out
    (copy / "red" / "r0.png").unlink()
    code, out, _ = run_cli(["index", copy, "--out", tmp_path / "idx", "--resume"], capsys)
    assert code == 0 and "8 images (0 added, 0 re-embedded, 0 moved, 1 deleted, 8 unchanged)" in out


def test_cli_index_exits_1_and_names_unreadable_files(tmp_path, capsys, built):
    photos, _, weights = built
    copy = tmp_path / "photos"
    shutil.copytree(photos, copy)
    (copy / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    code, out, err = run_cli(["index", copy, "--model", CNN, "--weights", weights, "--img-size", "32",
                              "--out", tmp_path / "idx"], capsys)
    assert code == 1 and "9 images" in out and "broken.jpg" in err and "1 input(s) could not be read" in err


def test_cli_search_json_gives_one_object_per_query(capsys, built):
    photos, idx, _ = built
    code, out, _ = run_cli(["search", idx, "--image", photos / "red" / "r0.png", photos / "blue" / "b0.png",
                            "-k", "3", "--format", "json"], capsys)
    assert code == 0
    data = json.loads(out)
    assert [Path(d["query"]).name for d in data] == ["r0.png", "b0.png"]
    for d in data:
        assert len(d["results"]) == 3 and set(d["results"][0]) == {"path", "score", "metadata"}
        assert d["results"][0]["path"] == str(Path(d["query"]).resolve())
        assert d["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_cli_search_table_and_folder_queries(capsys, built):
    photos, idx, _ = built
    code, out, _ = run_cli(["search", idx, "--image", photos / "red", "-k", "2"], capsys)
    assert code == 0 and out.count("score") == 4  # one table per image of the folder
    assert re.search(r"1 │ 1\.000", out)  # each image is its own nearest neighbour


def test_cli_search_html_is_a_self_contained_page(tmp_path, capsys, built):
    photos, idx, _ = built
    page = tmp_path / "page.html"
    code, _, err = run_cli(["search", idx, "--image", photos / "red" / "r1.png", "-k", "4",
                            "--format", "html", "--out", page], capsys)
    assert code == 0 and "page.html" in err
    html = page.read_text()
    assert html.count("data:image/jpeg;base64,") == 5  # the query and its 4 results
    assert "http" not in html.replace("http-equiv", "") and html.count("class='score'") == 4


@pytest.mark.parametrize("args, fragment", [
    (["search", "{tmp}/none", "--image", "{photos}"], "is not a clarivis index"),
    (["search", "{idx}", "--text", "a dog"], "--text needs an index built with a CLIP model"),
    (["search", "{idx}", "--image", "{photos}", "--format", "xml"], "--format must be one of"),
    (["search", "{idx}", "--image", "{photos}", "--where", "colour"], "--where takes COLUMN=VALUE"),
    (["search", "{idx}", "{photos}"], "query images follow --image"),
    (["index", "{photos}", "--model", VIT, "--weights", "{weights}", "--out", "{idx}"], "was built with"),
    (["index", "{photos}", "--out", "{tmp}/new"], "a new index needs --model"),
])
def test_cli_index_and_search_errors_are_one_line(tmp_path, capsys, built, args, fragment):
    photos, idx, weights = built
    fill = {"tmp": tmp_path, "photos": photos, "idx": idx, "weights": weights}
    code, _, err = run_cli([a.format(**fill) for a in args], capsys)
    assert_one_line_error(code, err, fragment)


def test_cli_text_search_on_a_clip_index(tmp_path, capsys, tiny_clip, colour_data):
    pytest.importorskip("open_clip")
    code, out, _ = run_cli(["index", colour_data, "--model", f"open_clip:{tiny_clip.config}",
                            "--weights", tiny_clip.weights, "--out", tmp_path / "idx"], capsys)
    assert code == 0 and "30 images (30 added" in out
    code, out, _ = run_cli(["search", tmp_path / "idx", "--text", "a red square", "-k", "5",
                            "--format", "json"], capsys)
    [result] = json.loads(out)
    assert code == 0 and result["query"] == "a red square" and len(result["results"]) == 5
    scores = [r["score"] for r in result["results"]]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
