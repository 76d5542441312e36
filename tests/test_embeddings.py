"""clarivis.embed: rows per readable image, labels from labeled datasets, .npy/.parquet files,
unreadable inputs listed. `clarivis embed` is tested in tests/e2e/test_cli_embed.py."""

from __future__ import annotations

import csv

import numpy as np
import pyarrow.parquet as pq
import pytest
from tests.tiny import CNN, VIT

import clarivis
from clarivis.embeddings import embed_images, load_encoder


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
