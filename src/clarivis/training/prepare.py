"""Before the first epoch: index, split and decode-check the data (rank 0 first under DDP),
resolve every `None` setting for this data and device, and write the run folder's data files
(config.yaml, split.json, data_report.json, skipped_files.txt)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from clarivis import runs
from clarivis.config import TrainConfig, validate_config, write_yaml
from clarivis.data import cache
from clarivis.data.dataset import class_counts, imbalance_ratio, label_targets
from clarivis.data.scan import scan_images, write_skipped
from clarivis.data.sources import DatasetIndex, Sample, fingerprint, index_dataset
from clarivis.data.splits import resolve_splits
from clarivis.data.transforms import INTERPOLATIONS, Preprocess
from clarivis.errors import DataError
from clarivis.models.factory import pretrained_cfg
from clarivis.training import defaults
from clarivis.training import distributed as ddp

IMBALANCE_THRESHOLD = 1.5  # largest/smallest class above this gets balanced sampling


@dataclass
class PreparedData:
    index: DatasetIndex
    class_names: list[str]
    train: list[Sample]
    val: list[Sample]
    train_images: list[torch.Tensor] | None
    val_images: list[torch.Tensor] | None
    sizes: list[tuple[int, int]]
    skipped: list[tuple[str, str]]
    fingerprint: str
    from_record: bool = False  # decode check taken from an earlier run's record
    group_leaks: int = 0  # --group-by: groups with images in two of the splits (a given split)

    @property
    def multilabel(self) -> bool:
        return self.index.task == "multilabel"


def prepare_in_turn(config: TrainConfig, console: Console, world) -> PreparedData:
    """Rank 0 decodes first and records the result; the other ranks then read that record
    instead of decoding the same files again."""
    if world.is_main:
        data = prepare_data(config, console)
    ddp.barrier(world)
    if not world.is_main:
        data = prepare_data(config, console)
    return data


def prepare_data(config: TrainConfig, console: Console) -> PreparedData:
    """Index, split, decode-check and (when small) preload the dataset."""
    index = index_dataset(config.data, task=config.task, label_sep=config.label_sep)
    if index.task == "multilabel" and (config.mixup or config.cutmix):
        raise DataError("--mixup and --cutmix mix one label per image; leave them at 0 for "
                        "multi-label data")
    splits = resolve_splits(index, config.val_fraction, config.seed, config.group_by)
    leaks = shared_groups(splits, config.group_by) if config.group_by else 0
    if leaks:  # the manifest's own split column put them there: say so, never which ones
        console.print(f"[yellow]warning: {leaks} '{config.group_by}' group(s) have images in more than "
                      "one of the manifest's splits, so validation is not independent of training; "
                      f"`clarivis check --group-by {config.group_by}` lists them")
    t0 = time.perf_counter()
    with console.status("checking images (once; later runs reuse the result)..."):
        train_scan = scan_images(splits["train"], window=config.window)
        val_scan = scan_images(splits.get("val", []), window=config.window)
    skipped = train_scan.skipped + val_scan.skipped
    if not train_scan.samples:
        raise DataError(
            f"none of the {len(splits['train'])} training images in {config.data} could be read; "
            "check the files (all are corrupt or not images)"
        )
    class_names = sorted({name for s in train_scan.samples for name in s.label_set})
    if index.task == "multilabel":
        missing = sorted(set(index.class_names) - set(class_names))
        if missing:  # a label only val or test has cannot be learnt; say so rather than drop it
            raise DataError(f"label(s) {', '.join(missing[:5])} have no readable training image; "
                            "add training images holding them or remove them from the manifest")
    elif len(class_names) < 2:
        raise DataError(
            f"only class '{class_names[0]}' has readable training images; "
            "a classifier needs at least 2 classes"
        )
    val, val_images = _keep_known(val_scan.samples, val_scan.images, set(class_names))
    how = "from the record of an earlier run" if train_scan.from_record else "by decoding"
    console.print(
        f"checked {len(train_scan.samples) + len(val_scan.samples) + len(skipped)} images "
        f"{how} in {time.perf_counter() - t0:.1f}s"
    )
    return PreparedData(
        index=index, class_names=class_names, train=train_scan.samples, val=val,
        train_images=train_scan.images, val_images=val_images, sizes=train_scan.sizes,
        skipped=skipped,
        fingerprint=fingerprint(index.all_samples, index.root),
        from_record=train_scan.from_record, group_leaks=leaks,
    )


def shared_groups(splits: dict[str, list[Sample]], column: str) -> int:
    """How many groups of `column` have images in more than one split (a count: ids may be
    personal data)."""
    seen: dict[str, set[str]] = {}
    for name, samples in splits.items():
        for s in samples:
            seen.setdefault(s.groups.get(column, ""), set()).add(name)
    return sum(len(names) > 1 for names in seen.values())


def _keep_known(samples, images, known: set[str]):
    keep = [i for i, s in enumerate(samples) if s.labels is not None or s.label in known]
    kept_images = [images[i] for i in keep] if images is not None else None
    return [samples[i] for i in keep], kept_images


def resolve_defaults(config: TrainConfig, data: PreparedData, device, world_size: int = 1) -> TrainConfig:
    """Fill every `None` with the choice for this data and device (then saved as config.yaml)."""
    values = config.model_dump()
    fine_tune = config.pretrained or config.weights is not None
    if values["img_size"] is None:
        pretrained_size = None
        if fine_tune and config.model:
            pretrained_size = (pretrained_cfg(config.model).get("input_size") or (3, 224, 224))[1]
        values["img_size"] = defaults.pick_img_size(data.sizes, pretrained_size)
    if values["model"] is None:
        values["model"] = defaults.pick_model(device, values["img_size"])
    if values["batch_size"] is None:  # per process; the global batch is world_size times it
        values["batch_size"] = defaults.pick_batch_size(
            len(data.train) // world_size, values["img_size"], config.recipe)
    if values["resize_mode"] is None:
        values["resize_mode"] = defaults.pick_resize_mode(fine_tune)
    if values["crop_pct"] is None:
        weights_crop = pretrained_cfg(values["model"]).get("crop_pct") if fine_tune else None
        values["crop_pct"] = defaults.pick_crop_pct(values["resize_mode"], weights_crop, data.sizes,
                                                    values["img_size"])
    if values["warmup_epochs"] is None:
        values["warmup_epochs"] = defaults.pick_warmup_epochs(config.epochs)
    if values["lr"] is None:
        values["lr"] = defaults.pick_lr(config.optimizer, values["batch_size"] * world_size, fine_tune,
                                        text_init=config.init_from_text)
    if values["cache"] is None:
        n = len(data.train) + len(data.val)
        values["cache"] = cache.cache_bytes(n, values["img_size"]) <= cache.DEFAULT_CACHE_BUDGET
    if values["workers"] is None:
        values["workers"] = 0 if values["cache"] else defaults.pick_workers(data.train_images is not None)
    values["device"] = str(device)
    values["out"] = config.out
    return validate_config(values)


def balanced_sampling(config: TrainConfig, data: PreparedData) -> bool:
    if data.multilabel:  # an image holds several classes: the loss weighs rare labels instead
        return False
    ratio = imbalance_ratio(class_counts(data.train, data.class_names))
    return config.balance == "sampler" or (config.balance == "auto" and ratio >= IMBALANCE_THRESHOLD)


def write_run_files(run_dir: Path, config: TrainConfig, data: PreparedData, balanced: bool) -> dict:
    """The resolved config and the data's files in the run folder; returns the data report."""
    write_yaml(config, run_dir / runs.RUN_CONFIG)
    write_skipped(data.skipped, run_dir / runs.SKIPPED)
    _write_split(run_dir, data)
    return _write_data_report(run_dir, config, data, balanced)


def _write_split(run_dir: Path, data: PreparedData) -> None:
    split = {name: [{"path": s.path, "label": s.label,
                     **({"labels": list(s.labels)} if s.labels is not None else {})} for s in samples]
             for name, samples in (("train", data.train), ("val", data.val))}
    (run_dir / runs.SPLIT).write_text(json.dumps(split))


def _write_data_report(run_dir: Path, config: TrainConfig, data: PreparedData, balanced: bool) -> dict:
    counts = class_counts(data.train, data.class_names)
    ratio = imbalance_ratio(counts)
    widths = [w for w, _ in data.sizes]
    heights = [h for _, h in data.sizes]
    report = {
        "layout": data.index.layout,
        "task": data.index.task,
        "classes": data.class_names,
        "train_counts": counts,
        "val_counts": class_counts(data.val, data.class_names),
        "imbalance_ratio": round(ratio, 3),
        "balanced_sampling": balanced,
        "skipped": len(data.skipped),
        "image_width": {"min": min(widths), "median": float(np.median(widths)), "max": max(widths)},
        "image_height": {"min": min(heights), "median": float(np.median(heights)),
                         "max": max(heights)},
        "decoded_from_record": data.from_record,
        "fingerprint": data.fingerprint,
    }
    if data.multilabel:
        sizes = [len(s.labels) for s in data.train]
        report["labels_per_image"] = {"mean": float(np.mean(sizes)), "max": max(sizes),
                                      "none": sum(n == 0 for n in sizes)}
    if config.group_by:  # how many groups each split holds (counts only: ids may be personal)
        report["groups"] = {"column": config.group_by, **{
            name: len({s.groups.get(config.group_by) for s in samples})
            for name, samples in (("train", data.train), ("val", data.val))}}
        report["group_leaks"] = data.group_leaks
    (run_dir / runs.DATA_REPORT).write_text(json.dumps(report, indent=2))
    return report


def print_data_summary(console, config, data, report, device, world) -> None:
    where = f"{world.size} processes on {device.type}" if world.distributed else str(device)
    kind = "labels, multi-label" if data.multilabel else "classes"
    console.print(
        f"[bold]{len(data.train)}[/] train / [bold]{len(data.val)}[/] val images, "
        f"{len(data.class_names)} {kind} ({data.index.layout} layout); model "
        f"[bold]{config.model}[/] at {config.img_size}px, batch {config.batch_size} on {where}"
    )
    if data.skipped:
        console.print(
            f"[yellow]skipped {len(data.skipped)} unreadable file(s); listed in skipped_files.txt"
        )
    if report["imbalance_ratio"] >= IMBALANCE_THRESHOLD:
        action = "balanced by weighted sampling" if report["balanced_sampling"] else "not balanced"
        if data.multilabel:
            action = ("rare labels weighted in the loss" if config.balance != "none"
                      and config.multilabel_loss == "bce" else "not weighted")
        console.print(
            f"[yellow]class imbalance {report['imbalance_ratio']:.1f}:1 (largest/smallest), {action}"
        )


def preprocess_for(config: TrainConfig, cfg: dict) -> Preprocess:
    """The model's own normalisation and interpolation (what pretrained weights expect)."""
    interpolation = cfg.get("interpolation")
    return Preprocess(
        img_size=config.img_size, resize_mode=config.resize_mode, crop_pct=config.crop_pct,
        mean=tuple(cfg.get("mean", Preprocess.mean)), std=tuple(cfg.get("std", Preprocess.std)),
        interpolation=interpolation if interpolation in INTERPOLATIONS else "bilinear",
        window=config.window,
    )


def class_targets(samples: list[Sample], class_names: list[str]) -> list:
    """Class indices, or multi-hot rows for multi-label samples (see label_targets)."""
    return label_targets(samples, {name: i for i, name in enumerate(class_names)})
