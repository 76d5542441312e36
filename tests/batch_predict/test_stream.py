"""Sources, sharding and per-batch prediction of clarivis.batch_predict.stream (the walk itself:
tests/data/test_expand.py)."""

from __future__ import annotations

from tests.tiny import write_image

from clarivis.api import Classifier
from clarivis.batch_predict.stream import Source, iter_sources, predict_batch, shard, skip_done
from clarivis.data.expand import walk_images


def test_inputs_that_hold_no_image_are_error_sources(tmp_path):
    (tmp_path / "empty").mkdir()
    write_image(tmp_path / "g" / "1.png")
    write_image(tmp_path / "g" / "2.png")
    sources = list(iter_sources([tmp_path / "missing.png", tmp_path / "empty",
                                 str(tmp_path / "nothing*.png"), str(tmp_path / "g" / "*.png")]))
    assert [s.error for s in sources] == ["file not found", "folder holds no images",
                                          "no files match this pattern", None, None]


def test_shards_split_every_source_exactly_once():
    sources = [Source(f"{i}.png") for i in range(11)]
    shards = [list(shard(sources, rank, 3)) for rank in range(3)]
    assert sorted(s.path for part in shards for s in part) == sorted(s.path for s in sources)
    assert [len(part) for part in shards] == [4, 4, 3]
    assert list(shard(sources, 0, 1)) == sources


def test_skip_done_skips_known_and_repeated_paths():
    skipped = []
    done = {"a.png"}
    sources = [Source("a.png"), Source("b.png"), Source("b.png"), Source("c.png")]
    kept = list(skip_done(sources, done, on_skip=lambda: skipped.append(1)))
    assert [s.path for s in kept] == ["b.png", "c.png"] and len(skipped) == 2


def test_predict_batch_matches_classifier_predict(tiny_bundle, images, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    clf = Classifier.load(tiny_bundle, device="cpu")
    files = [path for path, _ in walk_images(str(images))][:4]
    batch = [Source(files[0]), Source(str(tmp_path / "bad.png")), Source("gone.png", "file not found"),
             *map(Source, files[1:])]
    rows = predict_batch(clf, batch, top_k=2)
    assert [r.source for r in rows] == [s.path for s in batch]
    assert rows[1].error.startswith("not an image") and rows[2].error == "file not found"
    expected = clf.predict(files, top_k=2)
    good = [rows[0], *rows[3:]]
    assert [r.top_k for r in good] == [p.top_k for p in expected]
