"""The export's self-check: agreement with PyTorch (the same top-1 class, or for a multi-label
model the same label set) and CPU latency/throughput."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# Throughput is measured at this batch: what predict and the service's batcher send at load.
THROUGHPUT_BATCH = 32
# Seconds spent timing each model per measurement: medians of many calls on a busy machine are
# stable to a few percent in this time, and three models fit in a few seconds.
TIME_BUDGET_S = 1.0


@dataclass
class Speed:
    ms_per_image: float  # latency of one image alone (batch 1), median over calls, ms
    images_per_s: float  # throughput at THROUGHPUT_BATCH, median over calls
    batch: int = THROUGHPUT_BATCH

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def top1_agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Fraction of rows of two (N, C) logit arrays whose arg-max class is the same."""
    return float((reference.argmax(axis=1) == candidate.argmax(axis=1)).mean())


def label_sets(logits: np.ndarray, temperatures: Sequence[float], thresholds: Sequence[float]) -> np.ndarray:
    """(N, C) raw logits -> (N, C) bool: class c is in an image's set when sigmoid(logit_c / T_c)
    reaches threshold_c, the rule Classifier and the runtime apply."""
    scaled = logits.astype(np.float32) / np.asarray(temperatures, dtype=np.float32)
    probs = 1 / (1 + np.exp(-scaled.astype(np.float64)))  # float64: no overflow warning at -100
    return probs >= np.asarray(thresholds, dtype=np.float64)


def label_set_agreement(reference: np.ndarray, candidate: np.ndarray, temperatures: Sequence[float],
                        thresholds: Sequence[float]) -> tuple[float, float]:
    """Multi-label: (fraction of rows whose whole label set is the same, fraction of the N x C
    per-class decisions that are the same) for two (N, C) logit arrays."""
    same = label_sets(reference, temperatures, thresholds) == label_sets(candidate, temperatures, thresholds)
    return float(same.all(axis=1).mean()), float(same.mean())


def measure_speed(run: Callable[[np.ndarray], Any], pixels: np.ndarray, *,
                  budget_s: float = TIME_BUDGET_S) -> Speed:
    """run: float32 (N, 3, S, S) -> logits. Timed on real preprocessed images (`pixels`), tiled
    up to a full batch when fewer are given."""
    reps = -(-THROUGHPUT_BATCH // len(pixels))
    batch = np.ascontiguousarray(np.concatenate([pixels] * reps)[:THROUGHPUT_BATCH])
    one = np.ascontiguousarray(pixels[:1])
    latency = _median_seconds(run, one, budget_s / 2)
    per_batch = _median_seconds(run, batch, budget_s / 2)
    return Speed(ms_per_image=round(latency * 1000, 3), images_per_s=round(THROUGHPUT_BATCH / per_batch, 1))


def _median_seconds(run: Callable[[np.ndarray], Any], x: np.ndarray, budget_s: float) -> float:
    run(x)  # warm-up: first calls allocate and pick kernels
    times: list[float] = []
    end = time.perf_counter() + budget_s
    while len(times) < 3 or (time.perf_counter() < end and len(times) < 1000):
        start = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times)
