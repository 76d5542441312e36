"""What active labeling needs from the model, for a stream of images: calibrated class
probabilities (uncertainty) and pre-logit embeddings (diversity), from ONE forward pass per
batch: timm's forward_features -> forward_head(pre_logits=True) is the embedding, and the
model's classifier layer (get_classifier()) turns it into the logits. Memory is bounded by
what is kept per image: C probabilities and D embedding floats, never the pixels."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from clarivis.active.labeled import LabeledSet
from clarivis.classifier import Classifier, Unusable
from clarivis.data.expand import ImageInput


@dataclass
class PoolFeatures:
    paths: list[str]  # readable, not yet labeled inputs, in input order
    probs: torch.Tensor  # float32 (N, C): softmax(logits / temperature)
    embeddings: torch.Tensor | None  # float32 (N, D) pre-logit features; None when not asked
    skipped: list[dict] = field(default_factory=list)  # {path, reason} of unreadable inputs
    excluded: list[str] = field(default_factory=list)  # inputs already labeled


@torch.no_grad()
def forward_both(clf: Classifier, pixels: torch.Tensor, *,
                 one_pass: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (n, 3, S, S) -> (float32 (n, D) embeddings, float32 (n, C) raw logits) on the CPU.
    one_pass=False runs the whole model again for the logits (heads that do more than
    get_classifier(), see same_logits)."""
    net = clf.model
    x = clf.normalize(pixels.to(clf.device)).contiguous(memory_format=torch.channels_last)
    pre = net.forward_head(net.forward_features(x), pre_logits=True)
    logits = net.get_classifier()(pre) if one_pass else net(x)
    return pre.flatten(1).float().cpu(), logits.float().cpu()


def same_logits(fast: torch.Tensor, full: torch.Tensor) -> bool:
    """Whether get_classifier() applied to the pre-logits gave the model's own logits: true for
    timm's ResNets, EfficientNets, ConvNeXts, ViTs and clarivis's CLIP model. Checked once on a
    real batch, so an unusual head costs a second pass per batch instead of wrong numbers."""
    return fast.shape == full.shape and torch.allclose(fast, full, rtol=1e-3, atol=1e-4)


def pool_features(clf: Classifier, images: ImageInput | Iterable[ImageInput], *, batch_size: int = 64,
                  labeled: LabeledSet | None = None, embeddings: bool = True,
                  on_batch=None) -> PoolFeatures:
    """Probabilities (and embeddings) of every readable input that `labeled` does not hold;
    decoding runs in threads a few batches ahead, as in predict. on_batch(images_done)."""
    exclude = labeled.holds if labeled is not None else None
    result = PoolFeatures([], torch.empty(0), None)
    probs, embeds, state = [], [], {}
    for item in clf.iter_batches(images, batch_size=batch_size, exclude=exclude):
        if isinstance(item, Unusable):
            if item.reason is None:
                result.excluded.append(item.source)
            else:
                result.skipped.append({"path": item.source, "reason": item.reason})
            continue
        emb, logits = _forward(clf, item.pixels, state)
        result.paths += item.sources
        probs.append(torch.softmax(logits / clf.config.temperature, dim=1))
        if embeddings:
            embeds.append(emb)
        if on_batch:
            on_batch(len(result.paths))
    result.probs = torch.cat(probs) if probs else torch.empty(0, len(clf.class_names))
    if embeddings:
        result.embeddings = torch.cat(embeds) if embeds else torch.empty(0, 0)
    return result


def _forward(clf: Classifier, pixels: torch.Tensor, state: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeddings, logits) of a batch in one pass once the first batch showed that the head
    allows it (state["one_pass"])."""
    emb, logits = forward_both(clf, pixels, one_pass=state.get("one_pass", True))
    if "one_pass" not in state:  # the first batch: check the one-pass head against the model
        _, full = forward_both(clf, pixels, one_pass=False)
        state["one_pass"], logits = same_logits(logits, full), full
    return emb, logits
