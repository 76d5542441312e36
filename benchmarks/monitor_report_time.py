"""How long `monitor_report` (what /v1/monitor and `clarivis monitor` compute) takes on a SQLite
prediction log of N rows: 3 classes, 2 model versions, one row a minute or so over 10 days.

The bundle is a hand-written config.json with a baseline (no training, no torch); the log is
filled by SQLAlchemy executemany straight into the table (fast, not what is measured). Each
report is computed `--repeat` times on a warm page cache; the median and the best wall time and
the process's CPU time (SQLite runs in the process; CPU time is steadier on a shared machine).

    python benchmarks/monitor_report_time.py --rows 100000
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

CLASSES = ["cat", "dog", "fox"]


def make_bundle(root: Path) -> Path:
    folder = root / "run" / "model"
    folder.mkdir(parents=True)
    config = {"architecture": "test_resnet", "num_classes": 3, "class_names": CLASSES,
              "input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3,
              "ood": {"score": "energy", "threshold": -2.0, "accept_rate": 0.95},
              "baseline": {"num_images": 200, "class_distribution": [0.5, 0.3, 0.2],
                           "confidence_histogram": {"edges": np.linspace(0, 1, 11).tolist(),
                                                    "counts": [0, 0, 0, 0, 10, 10, 20, 30, 50, 80]}}}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


def fill(url: str, rows: int, version: str, now: datetime) -> None:
    from sqlalchemy import create_engine, insert

    from clarivis.serve.predlog import PredictionLog, predictions

    PredictionLog(url).close()  # the schema (and, after the batching change, its indexes)
    rng = np.random.default_rng(0)
    span_s = 10 * 86400
    offsets = np.sort(rng.uniform(0, span_s, rows))[::-1]
    labels = rng.choice(CLASSES + ["unknown"], size=rows, p=[0.45, 0.3, 0.2, 0.05])
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(insert(predictions), [
            {"time": (now - timedelta(seconds=float(o))).replace(tzinfo=None),
             "model_version": version if i % 5 else "old", "label": str(lbl),
             "confidence": float(rng.uniform(0.3, 1.0)), "latency_ms": float(rng.lognormal(3, 0.5)),
             "width": 32, "height": 32, "num_bytes": 100, "sha256": f"{i:064x}"}
            for i, (o, lbl) in enumerate(zip(offsets, labels, strict=True))])
    engine.dispose()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    from clarivis.serve.monitor import bundle_info, monitor_report

    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_bundle(Path(tmp))
        version = bundle_info(folder)[2]
        url = f"sqlite:///{(Path(tmp) / 'log.db').as_posix()}"
        fill(url, args.rows, version, now)
        for since in (None, "24h"):
            times, cpu = [], []
            for _ in range(args.repeat):
                start, start_cpu = time.perf_counter(), time.process_time()
                report = monitor_report(folder, url, since, review_limit=20)
                times.append(time.perf_counter() - start)
                cpu.append(time.process_time() - start_cpu)
            print(f"{args.rows} rows, since={since}: {report['total_predictions']} in the window, "
                  f"wall median {1000 * statistics.median(times):.0f} ms (best {1000 * min(times):.0f}), "
                  f"CPU median {1000 * statistics.median(cpu):.0f} ms (best {1000 * min(cpu):.0f})",
                  file=sys.stderr)


if __name__ == "__main__":
    main()
