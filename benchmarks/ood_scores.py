"""Which open-set score tells unknown classes from known ones best? The measurement behind
clarivis's default (`evaluate/ood.py` DEFAULT_OOD_SCORE).

Given a ModelBundle trained on some classes and labeled test data that also holds classes the
model never saw (for example a CSV manifest of CIFAR-10 with two classes left out of training),
it reports the AUROC (known vs unknown) of:

  energy, max_logit, msp   from the logits alone (what the bundle can store for free)
  knn-K                    cosine similarity to the K-th nearest of --reference training images
                           in the penultimate embedding (Sun et al. 2022; needs those embeddings
                           stored with the model: --reference x 512 floats for resnet18)

and the rejection rates at the threshold the bundle stores.

    python benchmarks/ood_scores.py --model-dir RUN/model --test MANIFEST.csv [--reference 5000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

import common

NAME = "ood_scores"
KNN_K = (1, 10, 50)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", required=True, help="a ModelBundle folder (RUN/model)")
    p.add_argument("--test", required=True,
                   help="labeled test data (its test split) with classes the model was not trained on")
    p.add_argument("--reference", type=int, default=5000,
                   help="training images whose embeddings the kNN scores compare with [5000]")
    p.add_argument("--device", default=None, help="cpu | cuda [cuda when available]")
    common.add_output_args(p)
    return p.parse_args()


def embeddings(clf, pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, S, S) -> L2-normalised penultimate features (N, D)."""
    return torch.nn.functional.normalize(clf.pixel_embeddings(pixels, batch_size=256), dim=1)


def main() -> None:
    args = parse_args()
    import clarivis
    from clarivis.data.sources import evaluation_samples, index_dataset
    from clarivis.evaluate.inputs import load_labeled_pixels
    from clarivis.evaluate.ood import OOD_SCORES, ood_score, rejection_report

    device = args.device or common.default_device()
    clf = clarivis.Classifier.load(args.model_dir, device=device)
    started = time.perf_counter()
    index = index_dataset(args.test)
    test = load_labeled_pixels(clf, evaluation_samples(index))
    known = test.known
    if known.all() or not known.any():
        raise SystemExit("the test data needs images of known and of unknown classes")
    logits = clf.pixel_logits(test.pixels)
    t = clf.config.temperature
    auroc = {name: float(roc_auc_score(known.numpy(), ood_score(logits, t, name).numpy()))
             for name in OOD_SCORES}

    train = [s for s in index.splits.get("train", []) if s.label in clf.class_names]
    rng = np.random.default_rng(0)
    chosen = rng.choice(len(train), min(args.reference, len(train)), replace=False)
    reference = embeddings(clf, load_labeled_pixels(clf, [train[i] for i in chosen]).pixels)
    similarity = embeddings(clf, test.pixels) @ reference.T  # (N_test, N_reference) cosine
    for k in KNN_K:
        score = similarity.topk(k, dim=1).values[:, -1]
        auroc[f"knn-{k}"] = float(roc_auc_score(known.numpy(), score.numpy()))

    stored = rejection_report(logits, known, t, clf.config.ood) if clf.config.ood else None
    best = max(auroc, key=auroc.get)
    result = {
        "benchmark": NAME, "machine": common.describe_machine(device), "model_dir": args.model_dir,
        "test": args.test, "num_known": int(known.sum()), "num_unknown": int((~known).sum()),
        "unknown_classes": sorted({s.label for s, k in zip(test.samples, known.tolist(), strict=True)
                                   if not k}),
        "reference_images": len(chosen), "auroc": auroc, "best": best,
        "stored_threshold": stored, "seconds": time.perf_counter() - started,
    }
    path = common.write_result(result, args.json, NAME, device)
    scores = ", ".join(f"{k} {v:.3f}" for k, v in auroc.items())
    print(f"{NAME}: AUROC {scores}; best {best}; wrote {path}")


if __name__ == "__main__":
    main()
