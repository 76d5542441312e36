"""Sources from the lazy, deterministic walk of the inputs (files, folders, globs), rank sharding
and batching.

Every process of a torchrun job walks the same inputs in the same order and keeps every
WORLD_SIZE-th item, so the files are split without any process holding the whole list."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from clarivis.classifier import Classifier
from clarivis.data.expand import SkipHandler, expand_path
from clarivis.data.io import load_image
from clarivis.errors import ImageDecodeError
from clarivis.prediction import Prediction


@dataclass(frozen=True)
class Source:
    """One output row to be: an image path, or an input that yields no image (`error` set)."""

    path: str
    error: str | None = None


def iter_sources(inputs: Iterable[str | Path], on_skip: SkipHandler | None = None) -> Iterator[Source]:
    """Every image under the inputs, in the order `Classifier.predict` uses (the same lazy
    expansion, clarivis.data.expand); `on_skip` hears of the files a folder walk leaves out
    (not images, hidden or system files)."""
    for item in inputs:
        for path, error in expand_path(str(item), on_skip):
            yield Source(path, error)


def shard(sources: Iterable[Source], rank: int, world_size: int) -> Iterator[Source]:
    """Items number rank, rank + world_size, ... of the sequence (the whole of it when alone)."""
    return itertools.islice(sources, rank, None, world_size)


def skip_done(sources: Iterable[Source], done: set[str],
              on_skip: Callable[[], None] | None = None) -> Iterator[Source]:
    """Drop sources whose path is in `done`, and add the rest to it (a path repeated in the
    inputs is predicted once)."""
    for source in sources:
        if source.path in done:
            if on_skip is not None:
                on_skip()
            continue
        done.add(source.path)
        yield source


def predict_batch(clf: Classifier, batch: list[Source], top_k: int) -> list[Prediction]:
    """One Prediction per source, in order; unreadable images become error rows."""
    errors: dict[int, str] = {}
    decoded: list[int] = []  # indices into `batch` of the images handed to the classifier

    def images() -> Iterator[Image.Image]:
        # A generator, so the classifier turns each full-size image into a small input
        # tensor before the next one is decoded: one batch of tensors is all that is held.
        for i, source in enumerate(batch):
            if source.error is not None:
                errors[i] = source.error
                continue
            try:
                pp = clf.config.preprocess
                image = load_image(source.path, reduce_to=pp.img_size, window=pp.window)
            except ImageDecodeError as err:
                errors[i] = str(err).removeprefix(f"{source.path}: ")
                continue
            decoded.append(i)
            yield image

    predictions = list(clf.iter_predict(images(), top_k=top_k, batch_size=max(len(batch), 1)))
    rows: list[Prediction | None] = [None] * len(batch)
    for i, prediction in zip(decoded, predictions, strict=True):
        prediction.source = batch[i].path  # iter_predict names in-memory images "<image N>"
        rows[i] = prediction
    for i, message in errors.items():
        rows[i] = Prediction(source=batch[i].path, error=message)
    return [row for row in rows if row is not None]
