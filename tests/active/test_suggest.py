"""clarivis.suggest end to end on a tiny model: ranking, queue files, exclusions, errors."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import pytest
import torch
from tests.tiny import BLUE, CNN, SIDE, VIT, make_pool, tiny_classifier, write_image

import clarivis
from clarivis.active import queue
from clarivis.active.features import forward_both
from clarivis.active.queue import CSV_COLUMNS
from clarivis.data.sources import index_dataset

IMG = re.compile(r'<img src="data:image/jpeg;base64,[A-Za-z0-9+/=]+"')


def names(result) -> list[str]:
    return [Path(r.path).name for r in result.rows]


def test_uncertain_purple_images_rank_first(active_run, pool, tmp_path):
    run, train = active_run
    everything = clarivis.suggest(pool, model=run, budget=100, strategy="margin", out=tmp_path / "m")
    assert sorted(names(everything)[:4]) == ["p0.png", "p1.png", "p2.png", "p3.png"], everything.rows
    hybrid = clarivis.suggest(pool, model=run / "model", budget=4, labeled=train, out=tmp_path / "h")
    purple = [n.startswith("p") for n in names(hybrid)]
    assert purple[0] and purple == sorted(purple, reverse=True)  # the uncertain ones rank first
    assert all(a.margin <= b.margin for a, b in zip(hybrid.rows, hybrid.rows[1:], strict=False))
    # Only the 3 x 4 most uncertain are candidates; k-center spreads the 4 picks among them
    # (the purples are near-copies of each other, so not necessarily all four).
    assert set(names(hybrid)) <= set(names(everything)[:12])
    assert hybrid.pool == 24 and hybrid.strategy == "hybrid" and not hybrid.skipped
    alone = clarivis.suggest(pool, model=run, budget=1, out=tmp_path / "a")  # no labeled seeds:
    assert names(alone)[0] == names(everything)[0]  # k-center starts at the most uncertain


def test_queue_csv_and_html(active_run, pool, tmp_path):
    run, _ = active_run
    result = clarivis.suggest(pool, model=run, budget=6, out=tmp_path / "q")
    with result.csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0].keys()) == CSV_COLUMNS
    assert [int(r["rank"]) for r in rows] == list(range(1, 7))
    assert all(Path(r["path"]).is_absolute() and Path(r["path"]).is_file() for r in rows)
    assert all(r["label"] == "" and r["predicted"] in ("red", "blue") and r["reason"] for r in rows)
    assert float(rows[0]["margin"]) <= float(rows[-1]["margin"])
    html = result.html_path.read_text()
    assert len(IMG.findall(html)) == 6 and html.count("<img") == 6
    assert "<script" not in html and "http://" not in html and "https://" not in html
    assert "#1" in html and "margin" in html


def test_a_filled_in_queue_is_a_manifest_and_the_next_labeled_set(active_run, pool, tmp_path):
    run, _ = active_run
    first = clarivis.suggest(pool, model=run, budget=5, out=tmp_path / "r1")
    lines = first.csv_path.read_text().splitlines()
    filled = [lines[0]] + [line + ("red" if n % 2 else "blue") for n, line in enumerate(lines[1:4])]
    first.csv_path.write_text("\n".join(filled + lines[4:]) + "\n")  # 3 of 5 labeled
    index = index_dataset(first.csv_path)
    assert len(index.all_samples) == 3 and index.class_names == ["blue", "red"]
    second = clarivis.suggest(pool, model=run, budget=100, labeled=first.csv_path, out=tmp_path / "r2")
    labeled_names = {Path(s.path).name for s in index.all_samples}
    assert len(second.rows) == 21 and not labeled_names & set(names(second))
    assert sorted(Path(p).name for p in second.excluded) == sorted(labeled_names)


def test_labeled_images_are_left_out_by_path_and_by_content(active_run, pool, tmp_path):
    run, train = active_run
    shutil.copy(train / "red" / "r0.png", pool / "copy-of-r0.png")  # same bytes, new name
    result = clarivis.suggest([pool, train / "blue" / "b1.png"], model=run, budget=100,
                              labeled=train, out=tmp_path / "q")
    assert sorted(Path(p).name for p in result.excluded) == ["b1.png", "copy-of-r0.png"]
    assert len(result.rows) == 24
    assert any("labeled images" in n for n in result.notes)


def test_unreadable_files_are_skipped_and_listed(active_run, pool, tmp_path):
    run, _ = active_run
    (pool / "bad.jpg").write_bytes(b"not a jpeg")
    (pool / "cut.png").write_bytes((pool / "r0.png").read_bytes()[:60])
    result = clarivis.suggest([pool, tmp_path / "missing.png"], model=run, budget=3, out=tmp_path / "q")
    skipped = {Path(s["path"]).name: s["reason"] for s in result.skipped}
    assert set(skipped) == {"bad.jpg", "cut.png", "missing.png"}
    assert skipped["missing.png"] == "file not found"
    assert len(result.rows) == 3 and result.pool == 24
    listed = (result.out_dir / "skipped.txt").read_text()
    assert "bad.jpg" in listed and "cut.png" in listed


def test_budget_beyond_the_pool_takes_everything(active_run, tmp_path):
    run, _ = active_run
    small = make_pool(tmp_path / "small", red=2, blue=2, purple=1)
    for strategy in ("hybrid", "kcenter", "entropy", "random"):
        result = clarivis.suggest(small, model=run, budget=50, strategy=strategy, out=tmp_path / strategy)
        assert sorted(names(result)) == sorted(p.name for p in small.iterdir()), strategy
        assert "all of them are in the queue" in result.notes[0]


def test_a_model_trained_on_few_labels_gets_a_note(active_run, pool, tmp_path, monkeypatch):
    from clarivis.active import suggest as module

    run, _ = active_run
    monkeypatch.setattr(module, "FEW_LABELS_PER_CLASS", 20)  # the tiny model saw 12 a class
    notes = clarivis.suggest(pool, model=run, budget=2, out=tmp_path / "a").notes
    assert any("12.0 per class" in n and "--strategy random" in n for n in notes)
    assert not any("per class" in n for n in clarivis.suggest(pool, model=run, budget=2, strategy="random",
                                                              out=tmp_path / "b").notes)


def test_thumbnails_are_capped(active_run, pool, tmp_path, monkeypatch):
    run, _ = active_run
    monkeypatch.setattr(queue, "MAX_THUMBNAILS", 3)
    result = clarivis.suggest(pool, model=run, budget=8, out=tmp_path / "q")
    html = result.html_path.read_text()
    assert len(IMG.findall(html)) == 3 and "showing the first 3 of 8" in html
    assert len(result.csv_path.read_text().splitlines()) == 9


def test_default_out_folder(active_run, pool, tmp_path, monkeypatch):
    run, _ = active_run
    monkeypatch.chdir(tmp_path)
    result = clarivis.suggest(str(pool / "*.png"), model=run, budget=2)
    assert result.out_dir.parent == Path("runs") and result.out_dir.name.startswith("pool-queue-")
    assert result.csv_path.is_file() and result.html_path.is_file()


@pytest.mark.parametrize("arch", [CNN, VIT])
def test_one_forward_pass_gives_the_models_logits_and_embeddings(arch):
    clf = tiny_classifier(arch, classes=["a", "b", "c"])
    pixels = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    emb, logits = forward_both(clf, pixels)
    assert torch.allclose(logits, clf.logits(clf.normalize(pixels)), atol=1e-5)
    assert torch.allclose(emb, clf.pixel_embeddings(pixels), atol=1e-5)


def test_queue_page_renders_in_chromium(active_run, pool, tmp_path):
    from tests.browser import BROKEN_IMAGES_JS, chromium_page

    run, _ = active_run
    write_image(pool / "wide.png", BLUE, size=(SIDE[0] * 3, SIDE[1]))
    result = clarivis.suggest(pool, model=run, budget=7, out=tmp_path / "q")
    with chromium_page() as page:
        page.goto(result.html_path.as_uri())
        assert page.evaluate("document.images.length") == 7
        assert page.evaluate(BROKEN_IMAGES_JS) == 0
        assert page.locator("figure").count() == 7


def test_multilabel_models_rank_by_diversity_only(pool, tmp_path):
    from tests.tiny import multilabel_bundle

    from clarivis.errors import ClarivisError

    bundle = multilabel_bundle(tmp_path / "ml")
    with pytest.raises(ClarivisError, match="--strategy kcenter"):
        clarivis.suggest(pool, model=bundle, budget=3)
    result = clarivis.suggest(pool, model=bundle, budget=3, strategy="kcenter")
    assert len(result.rows) == 3
