"""The micro-batcher on its own: batches bounded by max_batch, order kept, failures and
cancellations confined to their own requests."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from clarivis.serve.batching import MicroBatcher


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_share_bounded_batches():
    sizes, threads = [], set()

    def model(items):
        sizes.append(len(items))
        threads.add(threading.current_thread().name)
        time.sleep(0.01)  # while it runs, the other requests queue up
        return [x * 10 for x in items]

    async def main():
        batcher = MicroBatcher(model, max_batch=4, max_wait_ms=5)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit([i, i + 100]) for i in range(10)))
        await batcher.stop()
        return results

    results = run(main())
    assert results == [[i * 10, (i + 100) * 10] for i in range(10)]
    assert sum(sizes) == 20 and max(sizes) <= 4 and len(sizes) < 20  # batched, never over 4
    assert threads == {next(iter(threads))} and "clarivis-model" in next(iter(threads))


def test_lone_request_waits_at_most_max_wait():
    async def main():
        batcher = MicroBatcher(lambda items: items, max_batch=64, max_wait_ms=20)
        batcher.start()
        start = time.perf_counter()
        assert await batcher.submit(["x"]) == ["x"]
        elapsed = time.perf_counter() - start
        await batcher.stop()
        return elapsed

    assert 0.015 < run(main()) < 0.5


def test_a_failing_batch_fails_its_requests_only():
    def model(items):
        if "bad" in items:
            raise ValueError("boom")
        return items

    async def main():
        batcher = MicroBatcher(model, max_batch=1, max_wait_ms=0)
        batcher.start()
        with pytest.raises(ValueError, match="boom"):
            await batcher.submit(["bad"])
        ok = await batcher.submit(["good"])
        await batcher.stop()
        return ok

    assert run(main()) == ["good"]


def test_cancelled_requests_are_skipped():
    seen = []

    def model(items):
        seen.extend(items)
        time.sleep(0.05)
        return items

    async def main():
        batcher = MicroBatcher(model, max_batch=1, max_wait_ms=0)
        batcher.start()
        first = asyncio.create_task(batcher.submit(["first"]))
        await asyncio.sleep(0.01)  # "first" is in the model now
        late = asyncio.create_task(batcher.submit(["abandoned"]))
        await asyncio.sleep(0)
        late.cancel()  # a request timeout
        assert await first == ["first"]
        assert await batcher.submit(["next"]) == ["next"]
        await batcher.stop()

    run(main())
    assert seen == ["first", "next"]


def test_bad_settings():
    with pytest.raises(ValueError):
        MicroBatcher(lambda x: x, max_batch=0)
    with pytest.raises(ValueError):
        MicroBatcher(lambda x: x, max_wait_ms=-1)
