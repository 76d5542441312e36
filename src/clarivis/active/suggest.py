"""`clarivis suggest`: rank unlabeled images by how much labeling them should help the model
(uncertainty and diversity, select.py) and write the labeling queue (queue.py)."""

from __future__ import annotations

import glob
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from clarivis.active.features import PoolFeatures, pool_features
from clarivis.active.labeled import LabeledSet, read_labeled
from clarivis.active.queue import CSV_NAME, HTML_NAME, QueueRow, write_csv, write_html
from clarivis.active.scores import entropy, margin
from clarivis.active.select import (
    DEFAULT_STRATEGY,
    NEEDS_EMBEDDINGS,
    NEEDS_PROBS,
    POOL_FACTOR,
    STRATEGIES,
    Selection,
    select,
)
from clarivis.classifier import Classifier
from clarivis.data.expand import ImageInput
from clarivis.data.scan import write_skipped
from clarivis.errors import ClarivisError, DataError
from clarivis.spec import resolve_bundle_path

SKIPPED_NAME = "skipped.txt"
# Below this many training labels per class the model's uncertainty is a poor guide: on CIFAR-10
# from 2 labels a class every uncertainty strategy lost to random picks in the first round, from
# 20 a class hybrid won every round (benchmarks/README.md, active_labeling.py).
FEW_LABELS_PER_CLASS = 10


@dataclass
class SuggestResult:
    rows: list[QueueRow]  # the queue, rank 1 first
    strategy: str
    budget: int  # as asked; len(rows) is smaller when the pool is
    pool: int  # readable, unlabeled images scored
    out_dir: Path | None = None  # holds queue.csv, queue.html (and skipped.txt)
    skipped: list[dict] = field(default_factory=list)  # {path, reason} of unreadable inputs
    excluded: list[str] = field(default_factory=list)  # inputs already labeled
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def csv_path(self) -> Path | None:
        return self.out_dir / CSV_NAME if self.out_dir else None

    @property
    def html_path(self) -> Path | None:
        return self.out_dir / HTML_NAME if self.out_dir else None


@dataclass(frozen=True)
class SuggestOptions:
    """How suggest ranks and where it writes: one typed object (suggest also takes its fields
    by keyword, as `clarivis.suggest(pool, model=..., budget=...)` is documented)."""

    budget: int = 100  # images in the queue
    strategy: str = DEFAULT_STRATEGY  # one of select.STRATEGIES
    labeled: str | Path | None = None  # folder or CSV of images already labeled
    out: str | Path | None = None  # None: runs/<name>-queue-<time>
    batch_size: int = 64  # images per forward pass
    device: str | None = None  # None: the best available
    pool_factor: int = POOL_FACTOR  # hybrid: k-center among budget x this most uncertain
    seed: int = 0  # ties and the random strategy

    def __post_init__(self) -> None:
        if self.budget < 1:
            raise ClarivisError(f"--budget must be at least 1 image (got {self.budget})")
        if self.strategy not in STRATEGIES:
            raise ClarivisError(f"unknown --strategy {self.strategy}; choose one of {', '.join(STRATEGIES)}")
        if self.batch_size < 1:
            raise ClarivisError(f"--batch-size must be at least 1 (got {self.batch_size})")
        if self.pool_factor < 1:
            raise ClarivisError(f"pool_factor must be at least 1 (got {self.pool_factor})")


def suggest(unlabeled: ImageInput | Iterable[ImageInput], *, model: str | Path,
            options: SuggestOptions | None = None, console: Console | None = None,
            **fields: Any) -> SuggestResult:
    """Rank unlabeled files, folders or globs for labeling with a ModelBundle (or its run
    folder) and write OUT/queue.csv and OUT/queue.html (OUT: runs/<name>-queue-<time> when
    None). `fields`: SuggestOptions' fields by keyword (budget, strategy, labeled, out,
    batch_size, device, pool_factor, seed), over `options`. `labeled`: a folder or CSV of
    images already labeled, left out of the queue and used to spread it away from them."""
    opts = replace(options or SuggestOptions(), **fields)
    console = console or Console(stderr=True, quiet=True)
    started = time.perf_counter()
    clf = Classifier.load(resolve_bundle_path(model), device=opts.device, reject=False)
    if clf.config.multilabel and opts.strategy not in ("kcenter", "random"):
        # margin and entropy rank one softmax distribution; a multi-label model has C sigmoids
        raise ClarivisError(f"--strategy {opts.strategy} ranks a single-label model's uncertainty; "
                            "for this multi-label model use --strategy kcenter (diversity) or random")
    known = read_labeled(opts.labeled) if opts.labeled is not None else None
    pool = _score_pool(clf, unlabeled, known, opts, console)
    seeds = _labeled_embeddings(clf, known, opts, console)
    choice = select(opts.budget, strategy=opts.strategy, probs=pool.probs, embeddings=pool.embeddings,
                    labeled=seeds, pool_factor=opts.pool_factor, seed=opts.seed)
    result = SuggestResult(queue_rows(pool, choice, clf.class_names), opts.strategy, opts.budget,
                           len(pool.paths), skipped=pool.skipped, excluded=pool.excluded,
                           notes=_notes(opts.budget, pool, choice, known, seeds)
                           + _cold_start(clf, opts.strategy))
    result.seconds = round(time.perf_counter() - started, 2)
    out_dir = Path(opts.out) if opts.out is not None else _default_out(unlabeled)
    write_queue(result, out_dir, model=str(model))
    return result


def _score_pool(clf, unlabeled, known: LabeledSet | None, opts: SuggestOptions,
                console: Console) -> PoolFeatures:
    with console.status("scoring the unlabeled images...") as status:
        pool = pool_features(clf, unlabeled, batch_size=opts.batch_size, labeled=known,
                             embeddings=opts.strategy in NEEDS_EMBEDDINGS,
                             on_batch=lambda n: status.update(f"scored {n} unlabeled images..."))
    if not pool.paths:
        if pool.excluded:
            raise DataError(f"all {len(pool.excluded)} images given are already labeled "
                            f"(in --labeled); nothing left to suggest")
        reasons = "; ".join(f"{s['path']}: {s['reason']}" for s in pool.skipped[:3])
        raise DataError(f"no readable images to rank ({reasons}); check the path")
    console.print(f"scored {len(pool.paths)} unlabeled images"
                  + (f", left out {len(pool.excluded)} already labeled" if pool.excluded else ""))
    return pool


def _labeled_embeddings(clf, known: LabeledSet | None, opts: SuggestOptions,
                        console: Console) -> torch.Tensor | None:
    """(M, D) embeddings of the labeled images, which seed k-center; None when not needed."""
    if known is None or opts.strategy not in NEEDS_EMBEDDINGS:
        return None
    with console.status(f"embedding {len(known.paths)} labeled images..."):
        features = pool_features(clf, known.paths, batch_size=opts.batch_size)
    return features.embeddings if features.paths else None


def queue_rows(pool: PoolFeatures, choice: Selection, class_names: list[str]) -> list[QueueRow]:
    """The selection as queue rows, with each image's prediction and uncertainty."""
    idx = torch.tensor(choice.indices, dtype=torch.long)
    probs = pool.probs[idx]  # (k, C)
    top2 = probs.topk(min(2, probs.shape[1]), dim=1)
    margins, entropies = margin(probs).tolist(), entropy(probs).tolist()
    rows = []
    for n, i in enumerate(choice.indices):
        classes = top2.indices[n].tolist()
        rows.append(QueueRow(
            rank=n + 1, path=pool.paths[i], predicted=class_names[classes[0]],
            confidence=float(top2.values[n, 0]),
            runner_up=class_names[classes[1]] if len(classes) > 1 else "",
            margin=margins[n], entropy=entropies[n], score=choice.scores[n], reason=choice.reasons[n]))
    return rows


def _notes(budget: int, pool: PoolFeatures, choice: Selection, known: LabeledSet | None,
           seeds: torch.Tensor | None) -> list[str]:
    notes = []
    if budget > len(pool.paths):
        notes.append(f"the budget of {budget} is more than the {len(pool.paths)} unlabeled images: "
                     "all of them are in the queue")
    if known is not None:
        spread = " and spread the queue away from them" if seeds is not None else ""
        notes.append(f"{len(known.paths)} labeled images ({known.source}) kept out of the queue"
                     f"{spread}")
    if choice.candidates < len(pool.paths):
        notes.append(f"chosen among the {choice.candidates} most uncertain images")
    return notes


def _cold_start(clf, strategy: str) -> list[str]:
    """A note when the model learned from so few labels that uncertainty misleads."""
    trained_on = (clf.config.training or {}).get("train_images")
    classes = len(clf.class_names)
    if strategy not in NEEDS_PROBS or not trained_on or trained_on >= FEW_LABELS_PER_CLASS * classes:
        return []
    return [f"the model was trained on {trained_on} images ({trained_on / classes:.1f} per class): "
            f"below ~{FEW_LABELS_PER_CLASS} a class its uncertainty is a poor guide and a random "
            "batch (--strategy random) does as well"]


def write_queue(result: SuggestResult, out_dir: Path, *, model: str) -> Path:
    """OUT/queue.csv, OUT/queue.html and, when some inputs were unreadable, OUT/skipped.txt."""
    out_dir.mkdir(parents=True, exist_ok=True)
    result.out_dir = out_dir
    write_csv(result.rows, out_dir / CSV_NAME)
    summary = {"title": out_dir.name, "model": model, "strategy": result.strategy,
               "pool": result.pool, "excluded": len(result.excluded),
               "skipped": len(result.skipped), "notes": result.notes}
    write_html(result.rows, out_dir / HTML_NAME, summary=summary)
    if result.skipped:
        write_skipped([(s["path"], s["reason"]) for s in result.skipped], out_dir / SKIPPED_NAME)
    return out_dir


def _default_out(unlabeled) -> Path:
    name = "images"
    if isinstance(unlabeled, (str, Path)):
        path = Path(unlabeled).expanduser()
        name = (path.parent if glob.has_magic(str(unlabeled)) else path).resolve().name or name
    return Path("runs") / f"{name}-queue-{datetime.now():%Y%m%d-%H%M%S}"
