"""The encoder of an index: which model made its vectors (index.json "encoder"), loading it
again for updates and queries, and turning images (and, for CLIP, words) into unit vectors."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from clarivis.classifier import Classifier, Unusable
from clarivis.device import resolve_device
from clarivis.embeddings import load_encoder
from clarivis.errors import ClarivisError
from clarivis.fileio import sha256_hex
from clarivis.models.open_clip import CLIP_PREFIX, clip_tokenizer, is_clip_name, load_clip_for
from clarivis.spec import bundle_version, resolve_bundle_path


def encoder_spec(model: str | Path, *, weights: str | Path | None = None, pretrained: bool = False,
                 img_size: int | None = None) -> dict:
    """The JSON-safe description stored in index.json: paths made absolute (an index is used
    from any folder), the weights' sha256 to tell other weights of the same name apart."""
    name = str(model)
    local = Path(name).expanduser()
    version = None
    if local.exists():
        name = str(resolve_bundle_path(local).resolve())  # a ModelBundle folder (or its run's)
        version = bundle_version(name)
    elif is_clip_name(name):
        config = Path(name.removeprefix(CLIP_PREFIX)).expanduser()
        if config.is_file():  # an open_clip config JSON
            name = CLIP_PREFIX + str(config.resolve())
    if not local.exists() and weights is None and not pretrained:
        raise ClarivisError(f"--model {name}: give its --weights file or --pretrained; random "
                            "weights would differ each time the index is opened")
    spec = {"model": name, "weights": None, "weights_sha256": None, "pretrained": bool(pretrained),
            "img_size": img_size, "clip": is_clip_name(name) and (weights is not None or pretrained),
            "bundle_version": version}
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ClarivisError(f"weights file {weights} not found")
        spec["weights"], spec["weights_sha256"] = str(path.resolve()), sha256_hex(path)
    return spec


def same_encoder(stored: dict, asked: dict) -> bool:
    """Whether `asked` (from this run's flags) makes the vectors `stored` was built with."""
    keys = ("model", "weights_sha256", "pretrained", "bundle_version")
    if any(stored.get(k) != asked.get(k) for k in keys):
        return False
    return asked.get("img_size") in (None, stored.get("img_size"))


def check_unchanged(spec: dict) -> None:
    """A ModelBundle retrained in place since the index was built would make vectors that do
    not compare with the indexed ones."""
    version = spec.get("bundle_version")
    if version and Path(spec["model"]).exists() and bundle_version(spec["model"]) != version:
        raise ClarivisError(f"the model {spec['model']} changed since this index was built "
                            f"(bundle {version}); build a new index with --out")


def describe(spec: dict) -> str:
    name = spec["model"]
    if spec.get("weights"):
        name += f" with {Path(spec['weights']).name}"
    return name


def load(spec: dict, device: str | None = None) -> Classifier:
    """The image encoder of `spec` (index.json "encoder")."""
    return load_encoder(spec["model"], weights=spec.get("weights"), pretrained=bool(spec.get("pretrained")),
                        img_size=spec.get("img_size"), device=device)


def unit(vectors: torch.Tensor) -> np.ndarray:
    """(N, D) float32 unit rows: cosine similarity becomes the inner product."""
    return F.normalize(vectors.float(), dim=-1).cpu().numpy().astype(np.float32)


@dataclass
class Embedded:
    paths: list[str]
    vectors: np.ndarray  # (N, D) unit rows


def embed_batches(clf: Classifier, paths: Iterable[str], *,
                  batch_size: int) -> Iterator[Embedded | Unusable]:
    """Embedded batches of up to `batch_size` readable images, and Unusable for each file that
    gives none, in input order (the Classifier's decoding, resizing and threads)."""
    for item in clf.iter_batches(list(paths), batch_size=batch_size):
        if isinstance(item, Unusable):
            yield item
            continue
        yield Embedded(list(item.sources), unit(clf.pixel_embeddings(item.pixels, batch_size=batch_size)))


def text_vectors(spec: dict, texts: list[str], device: str | None = None) -> np.ndarray:
    """(T, D) unit text embeddings from the CLIP text tower paired with the index's image tower."""
    return text_encoder(spec, device)(texts)


def text_encoder(spec: dict, device: str | None = None):
    """texts -> (T, D) unit text embeddings: the CLIP text tower loaded once (a server keeps
    it); one-line error for an index not built with CLIP."""
    if not spec.get("clip"):
        raise ClarivisError(f"--text needs an index built with a CLIP model and its weights "
                            f"(--model open_clip:NAME --weights W); this one was built with "
                            f"{describe(spec)}")
    pretrained = bool(spec.get("pretrained")) and not spec.get("weights")
    full, clip = load_clip_for(spec["model"], weights=spec.get("weights"), pretrained=pretrained,
                               img_size=spec.get("img_size"))
    dev = resolve_device(device)
    full.to(dev).eval()
    tokenize = clip_tokenizer(clip)

    def encode(texts: list[str]) -> np.ndarray:
        with torch.no_grad():
            return unit(full.encode_text(tokenize(texts).to(dev)))

    return encode
