"""clarivis.embed and `clarivis embed`: rows per readable image, labels from labeled datasets,
.npy/.parquet files, unreadable inputs listed, one-line errors."""

from __future__ import annotations

import csv

import numpy as np
import pyarrow.parquet as pq
import pytest
from tests.e2e.test_cli import assert_one_line_error, run_cli
from tests.tiny import CNN, VIT, write_image

import clarivis
from clarivis.embeddings import embed_images, load_encoder


@pytest.fixture
def flat_folder(tmp_path):
    folder = tmp_path / "unlabeled"
    for i in range(5):
        write_image(folder / f"img{i}.png", (40 * i, 90, 160), size=(40, 30))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return folder


@pytest.mark.parametrize("model", [CNN, VIT])
def test_timm_backbone_embeds_readable_images_and_lists_the_rest(flat_folder, model):
    result = clarivis.embed(flat_folder, model=model, img_size=32, batch_size=2)
    assert len(result.paths) == 5 and result.vectors.shape == (5, result.dim)
    assert result.vectors.dtype == np.float32 and np.isfinite(result.vectors).all()
    assert result.labels is None
    assert [s["path"].endswith("broken.jpg") for s in result.skipped] == [True]
    # Batching does not change the numbers (one encoder: a weightless timm model is random).
    encoder = load_encoder(model, img_size=32)
    one, many = (embed_images(encoder, flat_folder, batch_size=n).vectors for n in (1, 64))
    np.testing.assert_allclose(one, many, atol=1e-4)


def test_labeled_dataset_keeps_labels_and_writes_npy_and_parquet(tiny_folder, tmp_path):
    npy = tmp_path / "out" / "emb.npy"
    result = clarivis.embed(tiny_folder, model=CNN, img_size=32, out=npy)
    assert sorted(set(result.labels)) == ["blue", "red"] and len(result.labels) == 24
    np.testing.assert_array_equal(np.load(npy), result.vectors)
    with open(npy.with_suffix(".rows.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == result.paths and rows[0]["label"] in ("red", "blue")

    parquet = tmp_path / "emb.parquet"
    clarivis.embeddings.save_embeddings(result, parquet)
    table = pq.read_table(parquet)
    assert table.num_rows == 24 and table.column_names == ["path", "label", "embedding"]
    np.testing.assert_allclose(np.stack(table["embedding"].to_numpy(zero_copy_only=False)),
                               result.vectors)


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
