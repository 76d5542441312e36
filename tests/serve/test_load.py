"""A bounded load test: 1,000 requests at concurrency 16 against a real server. No 5xx, every
predicted image logged exactly once, memory flat after warm-up."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from tests.serve.live import png_bytes, running_server

from clarivis.serve.app import create_app
from clarivis.serve.predlog import PredictionLog

REQUESTS = 1000
CONCURRENCY = 16
WARMUP = 100  # requests before the first RSS reading: allocator pools, caches, lazy imports


def rss_mib() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096 / 2**20


async def hammer(url: str, n: int, images: list[bytes]) -> tuple[dict[int, int], int]:
    """n requests (1-3 images each, cycling), CONCURRENCY at a time -> ({status: count}, images sent
    in requests answered 200)."""
    statuses: dict[int, int] = {}
    predicted = 0
    sem = asyncio.Semaphore(CONCURRENCY)
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        async def one(i: int) -> None:
            nonlocal predicted
            count = 1 + i % 3
            files = [("file", (f"{i}-{j}.png", images[(i + j) % len(images)])) for j in range(count)]
            async with sem:
                r = await client.post("/v1/predict", files=files)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if r.status_code == 200:
                assert len(r.json()["predictions"]) == count
                predicted += count

        await asyncio.gather(*(one(i) for i in range(n)))
    return statuses, predicted


@pytest.mark.slow
def test_load_no_5xx_every_image_logged_once_memory_flat(tiny_bundle, tmp_path):
    db = f"sqlite:///{tmp_path / 'load.db'}"
    images = [png_bytes(color, size=(48 + 8 * k, 40)) for k, color in
              enumerate([(220, 20, 20), (20, 20, 220), (120, 120, 20), (20, 160, 60)])]
    with running_server(create_app(tiny_bundle, db_url=db)) as url:
        warm, warm_predicted = asyncio.run(hammer(url, WARMUP, images))
        before = rss_mib()
        start = time.perf_counter()
        statuses, predicted = asyncio.run(hammer(url, REQUESTS, images))
        seconds = time.perf_counter() - start
        after = rss_mib()
        batches = httpx.get(f"{url}/metrics").text
    with PredictionLog(db) as log:
        count = log.count()
    print(f"\nload: {REQUESTS} requests at concurrency {CONCURRENCY} in {seconds:.1f}s "
          f"({REQUESTS / seconds:.0f} req/s), statuses {statuses}, {predicted} images, DB rows {count} "
          f"(+{warm_predicted} warm-up), RSS {before:.0f} -> {after:.0f} MiB")
    assert statuses == {200: REQUESTS} and warm == {200: WARMUP}
    assert count == predicted + warm_predicted  # exactly once each: none lost, none doubled
    assert after - before < 50, f"RSS grew {after - before:.0f} MiB over {REQUESTS} requests"
    assert "clarivis_batch_size_images_count" in batches
