"""Edited copies across splits: does `clarivis check` find a flipped, cropped, recoloured,
re-encoded or rotated copy of a training photo in the test split, and how many look-alike groups
does it report that nobody planted?

From --data (DIR/<class>/*.jpg, or any image folder under it) the first --per-class photos of
each class become train/<class>/ (links). --copies of them, drawn with a fixed seed, are edited
(each edit below in turn) and written to test/<class>/: every one a planted train/test leak.
Then the product path, `clarivis.check_data` with ImageNet efficientnet_lite0 features (the label
check's), and for each edit: the share of planted copies found in one group with their source,
by perceptual hash (data/quality.py) or by features (datacheck/similar_images.py), and the
groups no planted copy explains (natural look-alikes: real near duplicates or false alarms; the
first ones are listed for a look).

    python benchmarks/similar_images.py --data hymenoptera_data --weights efficientnet_lite0.in1k.safetensors
    python benchmarks/similar_images.py --data CIFAR/train --per-class 300 --copies 210 --weights ...
"""

from __future__ import annotations

import argparse
import io
import random
import time
from pathlib import Path

import common

NAME = "similar_images"


def edits() -> dict:
    """Name -> function(PIL image) -> edited PIL image: what dataset tools do to photos."""
    from PIL import Image, ImageEnhance, ImageOps

    def crop(fraction):
        def run(img):
            w, h = img.size
            dx, dy = int(w * (1 - fraction) / 2), int(h * (1 - fraction) / 2)
            return img.crop((dx, dy, w - dx, h - dy)).resize((w, h))
        return run

    def jpeg(img):
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=40)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")

    return {
        "mirror": ImageOps.mirror,
        "crop 85%": crop(0.85),
        "colour": lambda img: ImageEnhance.Color(ImageEnhance.Brightness(img).enhance(1.2)).enhance(0.6),
        "jpeg q40": jpeg,
        "rotate 10": lambda img: img.rotate(10, resample=Image.BILINEAR, fillcolor=(0, 0, 0)),
        "grayscale": lambda img: ImageOps.grayscale(img).convert("RGB"),
        "crop 70%": crop(0.70),
    }


def plant(by_class: dict, root: Path, copies: int, seed: int) -> list[dict]:
    """train/ links and test/ edited copies; one record per planted copy."""
    from PIL import Image

    rows = [(p, label) for label, files in by_class.items() for p in files]
    for path, label in rows:
        link = root / "train" / label / path.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path.resolve())
    edit_of = edits()
    names = list(edit_of)
    planted = []
    for n, (path, label) in enumerate(random.Random(seed).sample(rows, copies)):
        edit = names[n % len(names)]
        out = root / "test" / label / f"copy{n:04d}-{path.stem}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        edit_of[edit](Image.open(path).convert("RGB")).save(out)
        planted.append({"edit": edit, "source": str(root / "train" / label / path.name), "copy": str(out)})
    return planted


def score(planted: list[dict], duplicates: list[dict]) -> tuple[dict, list[dict]]:
    """Per edit: planted copies found with their source, by hash and by features; and the
    groups that hold no planted copy."""
    group_of = {}
    for n, g in enumerate(duplicates):
        for p in g["paths"]:
            group_of.setdefault(p, []).append(n)
    per_edit: dict[str, dict] = {}
    for row in planted:
        shared = set(group_of.get(row["copy"], [])) & set(group_of.get(row["source"], []))
        kinds = {duplicates[n]["kind"] for n in shared}
        counts = per_edit.setdefault(row["edit"], {"planted": 0, "by_hash": 0, "by_features": 0})
        counts["planted"] += 1
        counts["by_hash"] += bool(kinds & {"exact", "near"})
        counts["by_features"] += bool("similar" in kinds and not kinds & {"exact", "near"})
    copies = {row["copy"] for row in planted}
    unplanted = [g for g in duplicates if not copies & set(g["paths"])]
    return per_edit, unplanted


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="DIR/<class>/*.jpg (any depth: files are grouped by folder)")
    p.add_argument("--weights", required=True, help="efficientnet_lite0 ImageNet weights (.safetensors)")
    p.add_argument("--per-class", type=int, default=0, help="photos a class [0: all]")
    p.add_argument("--copies", type=int, default=70, help="edited copies planted in test/ [70: 10 an edit]")
    p.add_argument("--seed", type=int, default=0)
    common.add_output_args(p)
    args = p.parse_args()

    import clarivis

    by_class = common.dataset_by_class(common.dataset_root(args.data))
    by_class = {label: files[:args.per_class or None] for label, files in by_class.items()}
    with common.work_dir(args.work_dir, args.keep) as tmp:
        planted = plant(by_class, tmp / "data", args.copies, args.seed)
        started = time.perf_counter()
        result = clarivis.check_data(tmp / "data", model="efficientnet_lite0", weights=args.weights)
        seconds = time.perf_counter() - started
        report = result.to_dict()
        per_edit, unplanted = score(planted, report["duplicates"])
        base = str(tmp / "data") + "/"
        examples = [{"kind": g["kind"], "similarity": g.get("similarity"), "distance": g["distance"],
                     "paths": [q.replace(base, "") for q in g["paths"]]} for g in unplanted[:20]]
    images = sum(len(f) for f in by_class.values()) + len(planted)
    found = sum(c["by_hash"] + c["by_features"] for c in per_edit.values())
    result_json = {"benchmark": NAME, "data": Path(args.data).name, "images": images,
                   "copies": len(planted), "seconds": round(seconds, 1), "per_edit": per_edit,
                   "found": found, "unplanted_groups": len(unplanted),
                   "unplanted_by_kind": {k: sum(g["kind"] == k for g in unplanted)
                                         for k in ("exact", "near", "similar")},
                   "unplanted_examples": examples, "seconds_by_stage": report["seconds"],
                   "machine": common.describe_machine("cpu")}
    path = common.write_result(result_json, args.json, NAME, "cpu")
    for edit, c in per_edit.items():
        print(f"  {edit:10s} {c['by_hash'] + c['by_features']}/{c['planted']} found "
              f"({c['by_hash']} by hash, {c['by_features']} by features)")
    print(f"{Path(args.data).name}: {found}/{len(planted)} edited copies found across splits among "
          f"{images} images; {len(unplanted)} groups nobody planted; check took {seconds:.0f} s; {path}")


if __name__ == "__main__":
    main()
