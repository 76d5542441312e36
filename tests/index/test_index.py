"""clarivis.index_images / clarivis.search: building an index, updating it in place (add, move,
change, delete), resuming after a kill, unreadable files, metadata filters and CLIP text
queries. Tiny timm test_resnet with seeded random weights at 32 px, generated images."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from tests.tiny import CNN, VIT, random_weights, tiny_classifier, write_image, write_images

import clarivis
from clarivis.errors import ClarivisError
from clarivis.index import build, encoder
from clarivis.index.ann import ExactStore, UsearchStore, exact_search
from clarivis.index.store import ImageRow, MetaDB
from clarivis.models.bundle import save_bundle

pytest.importorskip("usearch")


@pytest.fixture(scope="module")
def cnn_weights(tmp_path_factory) -> Path:
    return random_weights(tmp_path_factory.mktemp("w") / "cnn.safetensors", CNN)


@pytest.fixture
def photos(tmp_path) -> Path:
    return write_images(tmp_path / "photos", per_class=4)  # 9 images: 4 red, 5 blue


def build_index(images, out, weights, **kwargs):
    return clarivis.index_images(images, out=out, model=CNN, weights=weights, img_size=32,
                                 batch_size=4, **kwargs)


def keys_by_path(index: Path) -> dict[str, int]:
    with sqlite3.connect(index / "meta.sqlite") as conn:
        return {p: k for k, p in conn.execute("SELECT key, path FROM images")}


@pytest.fixture
def embedded(monkeypatch) -> list[str]:
    """Every path the encoder embeds, in order (to tell re-embedding from a kept vector)."""
    seen: list[str] = []
    real = encoder.embed_batches

    def counting(clf, paths, **kwargs):
        for item in real(clf, paths, **kwargs):
            seen.extend(getattr(item, "paths", []))
            yield item

    monkeypatch.setattr(encoder, "embed_batches", counting)
    return seen


def test_an_image_finds_itself_then_its_copy(photos, tmp_path, cnn_weights):
    copy = tmp_path / "elsewhere" / "copy.png"
    copy.parent.mkdir()
    shutil.copy(photos / "red" / "r1.png", copy)
    summary = build_index([photos, copy], tmp_path / "idx", cnn_weights)
    assert (summary.added, summary.total, summary.skipped) == (10, 10, [])
    assert {p.name for p in (tmp_path / "idx").iterdir()} == {"index.json", "meta.sqlite", "vectors.usearch",
                                                           ".lock"}
    [result] = clarivis.search(tmp_path / "idx", image=photos / "red" / "r1.png", k=3)
    top = [Path(h.path) for h in result.results[:2]]
    assert set(top) == {(photos / "red" / "r1.png").resolve(), copy.resolve()}
    assert result.results[0].score == pytest.approx(1.0, abs=1e-4)
    assert result.results[1].score == pytest.approx(1.0, abs=1e-4)


def test_usearch_answers_as_exact_search_does(photos, tmp_path, cnn_weights):
    build_index(photos, tmp_path / "ann", cnn_weights)
    build_index(photos, tmp_path / "exact", cnn_weights, backend="exact")
    assert (tmp_path / "exact" / "vectors.npz").is_file()
    queries = [photos / "red" / "r0.png", photos / "blue"]
    ann = clarivis.search(tmp_path / "ann", image=queries, k=5)
    exact = clarivis.search(tmp_path / "exact", image=queries, k=5)
    assert len(ann) == 1 + 5  # one result list per query image (a folder gives each of its images)
    for a, e in zip(ann, exact, strict=True):  # near-ties may swap places: compare the scores
        assert a.results[0].path == e.results[0].path == a.query
        np.testing.assert_allclose([h.score for h in a.results], [h.score for h in e.results], atol=1e-4)


def test_stores_agree_on_add_remove_and_get(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    keys = np.arange(100, 150, dtype=np.uint64)
    for store in (UsearchStore(8), ExactStore(8)):
        store.add(keys, vectors)
        store.remove(keys[:10])
        assert len(store) == 40
        got_keys, dists = store.search(vectors[10:12], 3)
        assert got_keys[:, 0].tolist() == [110, 111]
        np.testing.assert_allclose(dists[:, 0], 0.0, atol=1e-5)
        np.testing.assert_allclose(store.get(keys[20:22]), vectors[20:22], atol=1e-6)
        ref_keys, _ = exact_search(keys[10:], vectors[10:], vectors[30:31], 5)
        assert store.search(vectors[30:31], 5)[0].tolist() == ref_keys.tolist()


def test_update_in_place_adds_moves_changes_and_deletes(photos, tmp_path, cnn_weights, embedded):
    idx = tmp_path / "idx"
    build_index(photos, idx, cnn_weights)
    before = keys_by_path(idx)
    embedded.clear()

    write_image(photos / "red" / "new.png", (250, 0, 0))  # added
    moved_from = (photos / "blue" / "b1.png").resolve()
    (photos / "archive").mkdir()
    shutil.move(moved_from, photos / "archive" / "b1.png")  # moved: same content, new path
    changed = (photos / "red" / "r2.png").resolve()
    write_image(changed, (0, 250, 0), size=(30, 30))  # changed: same path, new content
    (photos / "blue" / "b3.png").unlink()  # deleted

    s = clarivis.index_images(photos, out=idx, batch_size=4)  # no --model: the index's own
    assert (s.added, s.moved, s.changed, s.removed, s.unchanged, s.total) == (1, 1, 1, 1, 6, 9)
    assert sorted(Path(p).name for p in embedded) == ["new.png", "r2.png"]  # the move is not re-embedded
    after = keys_by_path(idx)
    assert after[str((photos / "archive" / "b1.png").resolve())] == before[str(moved_from)]
    assert after[str(changed)] != before[str(changed)]
    assert str((photos / "blue" / "b3.png").resolve()) not in after

    [hit] = clarivis.search(idx, image=changed, k=1)[0].results  # the new content is what is indexed
    assert hit.path == str(changed) and hit.score == pytest.approx(1.0, abs=1e-4)
    embedded.clear()
    again = clarivis.index_images(photos, out=idx)
    assert (again.added, again.unchanged, embedded) == (0, 9, [])


def test_files_outside_the_roots_given_are_kept(photos, tmp_path, cnn_weights):
    idx = tmp_path / "idx"
    build_index(photos, idx, cnn_weights)
    s = clarivis.index_images(photos / "red", out=idx)  # another root: blue/ is not looked at
    assert (s.removed, s.total) == (0, 9)
    (photos / "red" / "r0.png").unlink()
    kept = clarivis.index_images(photos, out=idx, prune=False)
    assert (kept.removed, kept.total) == (0, 9)
    pruned = clarivis.index_images(photos, out=idx)
    assert (pruned.removed, pruned.total) == (1, 8)


def test_resume_after_a_kill_indexes_every_image_once(photos, tmp_path, cnn_weights, monkeypatch,
                                                      embedded):
    real = encoder.embed_batches  # the `embedded` fixture's counting wrapper

    def killed_after_two_batches(clf, paths, **kwargs):
        for n, item in enumerate(real(clf, paths, **kwargs)):
            if n == 2:
                raise KeyboardInterrupt  # the kill arrives while the 3rd batch is embedded
            yield item

    monkeypatch.setattr(encoder, "embed_batches", killed_after_two_batches)
    with pytest.raises(KeyboardInterrupt):
        build_index(photos, tmp_path / "idx", cnn_weights)
    assert len(keys_by_path(tmp_path / "idx")) == 8  # two batches of 4 were saved

    monkeypatch.setattr(encoder, "embed_batches", real)
    embedded.clear()
    s = clarivis.index_images(photos, out=tmp_path / "idx", resume=True)
    assert (s.added, s.unchanged, s.total) == (1, 8, 9)
    assert len(embedded) == 1  # only the image of the lost batch
    paths = keys_by_path(tmp_path / "idx")
    assert len(paths) == len(set(paths.values())) == 9
    store = UsearchStore(96)
    store.load(tmp_path / "idx" / "vectors.usearch")
    assert sorted(store.keys().tolist()) == sorted(paths.values())


def test_vectors_saved_without_their_rows_are_removed_on_the_next_run(photos, tmp_path, cnn_weights,
                                                                      monkeypatch):
    """A kill between the checkpoint's vector save and its SQLite commit."""
    real = build.MetaDB.commit
    calls = {"n": 0}

    def commit_then_die(self):
        calls["n"] += 1
        if calls["n"] == 3:  # the 2nd batch's checkpoint: vectors saved, rows not committed
            raise KeyboardInterrupt
        real(self)

    monkeypatch.setattr(build.MetaDB, "commit", commit_then_die)
    with pytest.raises(KeyboardInterrupt):
        build_index(photos, tmp_path / "idx", cnn_weights)
    monkeypatch.setattr(build.MetaDB, "commit", real)
    s = clarivis.index_images(photos, out=tmp_path / "idx")
    assert s.total == 9
    store = UsearchStore(96)
    store.load(tmp_path / "idx" / "vectors.usearch")
    assert sorted(store.keys().tolist()) == sorted(keys_by_path(tmp_path / "idx").values())


def test_unreadable_files_are_listed_and_stored_never_fatal(photos, tmp_path, cnn_weights):
    (photos / "red" / "broken.jpg").write_bytes(b"not a jpeg")
    s = build_index(photos, tmp_path / "idx", cnn_weights)
    assert s.total == 9
    assert [Path(x["path"]).name for x in s.skipped] == ["broken.jpg"]
    with sqlite3.connect(tmp_path / "idx" / "meta.sqlite") as conn:
        rows = conn.execute("SELECT path, reason FROM skipped").fetchall()
    assert [Path(p).name for p, _ in rows] == ["broken.jpg"] and rows[0][1]


def test_manifest_columns_are_metadata_and_filter_results(photos, tmp_path, cnn_weights):
    manifest = tmp_path / "photos.csv"
    lines = ["path,colour,shop"]
    for p in sorted(photos.rglob("*.png")):
        colour = "red" if p.parent.name == "red" else "blue"
        lines.append(f"{p.relative_to(tmp_path)},{colour},{'north' if p.stem.endswith('1') else 'south'}")
    manifest.write_text("\n".join(lines) + "\n")
    build_index(manifest, tmp_path / "idx", cnn_weights)
    [result] = clarivis.search(tmp_path / "idx", image=photos / "red" / "r0.png", k=10,
                               where={"colour": "blue"})
    assert len(result.results) == 5 and all(h.metadata["colour"] == "blue" for h in result.results)
    [both] = clarivis.search(tmp_path / "idx", image=photos / "red" / "r0.png", k=10,
                             where={"colour": "red", "shop": "north"})
    assert [Path(h.path).name for h in both.results] == ["r1.png"]
    with pytest.raises(ClarivisError, match="no metadata column 'size'; the index has: colour, shop"):
        clarivis.search(tmp_path / "idx", image=photos / "red" / "r0.png", where={"size": "1"})


def test_another_model_on_update_is_refused(photos, tmp_path, cnn_weights):
    build_index(photos, tmp_path / "idx", cnn_weights)
    vit = random_weights(tmp_path / "vit.safetensors", VIT)
    with pytest.raises(ClarivisError, match="was built with test_resnet with cnn.safetensors, not test_vit"):
        clarivis.index_images(photos, out=tmp_path / "idx", model=VIT, weights=vit, img_size=32)
    other = random_weights(tmp_path / "other.safetensors", CNN, seed=1)  # same name, other weights
    with pytest.raises(ClarivisError, match="was built with"):
        clarivis.index_images(photos, out=tmp_path / "idx", model=CNN, weights=other)


def test_random_weights_and_missing_index_are_refused(photos, tmp_path):
    with pytest.raises(ClarivisError, match="give its --weights file or --pretrained"):
        clarivis.index_images(photos, out=tmp_path / "idx", model=CNN)
    with pytest.raises(ClarivisError, match="not a clarivis index"):
        clarivis.search(tmp_path / "nothing", image=photos)
    with pytest.raises(ClarivisError, match="holds no index to resume"):
        clarivis.index_images(photos, out=tmp_path / "idx2", resume=True)


# ----------------------------------------------------------------------------- CLIP text queries


@pytest.fixture(scope="module")
def clip_index(tmp_path_factory, tiny_clip, colour_data) -> Path:
    out = tmp_path_factory.mktemp("clipidx") / "idx"
    clarivis.index_images(colour_data, out=out, model=f"open_clip:{tiny_clip.config}",
                          weights=tiny_clip.weights, batch_size=16)
    return out


def test_text_query_scores_are_cosines_of_the_text_and_image_vectors(clip_index, colour_data):
    pytest.importorskip("open_clip")
    results = clarivis.search(clip_index, text=["a red square", "a blue triangle"], k=4)
    assert [r.query for r in results] == ["a red square", "a blue triangle"]
    info = build.read_info(clip_index)
    text = encoder.text_vectors(info.encoder, ["a red square"])
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-5)  # unit vectors
    store = UsearchStore(info.dim)
    store.load(clip_index / "vectors.usearch")
    hits = results[0].results
    assert len(hits) == 4 and hits == sorted(hits, key=lambda h: -h.score)
    expected = store.get(np.array([h.key for h in hits], np.uint64)) @ text[0]
    np.testing.assert_allclose([h.score for h in hits], expected, atol=1e-4)


def test_image_query_on_a_clip_index_finds_itself(clip_index, colour_data):
    query = sorted((colour_data / "red_square").glob("*.png"))[3]
    [result] = clarivis.search(clip_index, image=query, k=1)
    assert result.results[0].path == str(query.resolve())


def test_text_query_on_an_image_only_index_is_refused(photos, tmp_path, cnn_weights):
    build_index(photos, tmp_path / "idx", cnn_weights)
    with pytest.raises(ClarivisError, match="--text needs an index built with a CLIP model"):
        clarivis.search(tmp_path / "idx", text="a dog")


def test_a_bundle_index_refuses_updates_after_the_bundle_changed(photos, tmp_path):
    bundle = save_bundle(tmp_path / "model", *_parts(tiny_classifier(CNN)))
    s = clarivis.index_images(photos, out=tmp_path / "idx", model=bundle)
    [result] = clarivis.search(tmp_path / "idx", image=photos / "blue" / "b2.png", k=1)
    assert s.total == 9 and result.results[0].path == str((photos / "blue" / "b2.png").resolve())
    clf = tiny_classifier(CNN)
    for p in clf.model.parameters():
        p.data.normal_()
    save_bundle(bundle, *_parts(clf))  # retrained in place
    with pytest.raises(ClarivisError, match="changed since this index was built"):
        clarivis.index_images(photos, out=tmp_path / "idx")


def _parts(clf):
    return clf.model, clf.config


def test_a_second_writer_is_refused_while_one_updates(photos, tmp_path, cnn_weights):
    build_index(photos, tmp_path / "idx", cnn_weights)
    with build._writer_lock(tmp_path / "idx"):
        with pytest.raises(ClarivisError, match="another clarivis index is updating"):
            clarivis.index_images(photos, out=tmp_path / "idx")
    assert clarivis.index_images(photos, out=tmp_path / "idx").unchanged == 9  # released


def test_skipped_files_that_are_gone_leave_the_skipped_table(photos, tmp_path, cnn_weights):
    broken = photos / "red" / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    build_index(photos, tmp_path / "idx", cnn_weights)
    broken.unlink()
    assert clarivis.index_images(photos, out=tmp_path / "idx").skipped == []
    with sqlite3.connect(tmp_path / "idx" / "meta.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*) FROM skipped").fetchone()[0] == 0


@pytest.mark.parametrize("oversample", [10, 1])  # 1: too few candidates pass, exact fallback
def test_filtered_ann_candidates_give_the_exact_filtered_answer(photos, tmp_path, cnn_weights, monkeypatch,
                                                                 oversample):
    from clarivis.index import query

    manifest = tmp_path / "m.csv"
    files = sorted(photos.rglob("*.png"))
    manifest.write_text("path,half\n" + "".join(f"{p},{i % 2}\n" for i, p in enumerate(files)))
    build_index(manifest, tmp_path / "idx", cnn_weights)
    expected = clarivis.search(tmp_path / "idx", image=files[0], k=3, where={"half": "1"})[0]
    monkeypatch.setattr(query, "EXACT_ROWS", 0)  # force the ANN-candidates path
    monkeypatch.setattr(query, "EXACT_SHARE", 0.0)
    monkeypatch.setattr(query, "OVERSAMPLE", oversample)
    got = clarivis.search(tmp_path / "idx", image=files[0], k=3, where={"half": "1"})[0]
    assert all(h.metadata["half"] == "1" for h in got.results) and len(got.results) == 3
    np.testing.assert_allclose([h.score for h in got.results], [h.score for h in expected.results], atol=1e-4)


@pytest.mark.parametrize("paths", [
    ["/data/x/1.jpg", "/data/x-y/2.jpg", "/data/x/3.jpg"],  # '-' sorts before '/'
    ["/data/shop/a/1.jpg", "/data/shop/a/b/2.jpg", "/data/shop/ab.jpg"],
    ["/data/one.jpg"],
    ["/p/b.jpg", "/p/b.jpg.png"],
    [],
])
def test_common_folder_from_two_rows_is_the_common_path_of_all(tmp_path, paths):
    db = MetaDB(tmp_path)
    for key, path in enumerate(paths):
        db.insert(ImageRow(key, path, str(key), 1, 0, "test", {}))
    expected = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0]) if paths else ""
    assert db.common_folder() == expected
