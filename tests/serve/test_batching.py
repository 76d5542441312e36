"""The micro-batcher on its own: batches bounded by max_batch, order kept, failures and
cancellations confined to their own requests, the queue bounded by max_queue (QueueFull with a
Retry-After from the depth and the recent model time)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from clarivis.serve.batching import MicroBatcher, QueueFull


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


def test_full_queue_refuses_at_once_and_queues_nothing():
    depths, refused = [], []
    gate = threading.Event()

    def model(items):
        gate.wait(5)  # the model is busy until the test lets it go
        return items

    async def main():
        batcher = MicroBatcher(model, max_batch=2, max_queue=3, on_depth=depths.append,
                               on_reject=refused.append)
        batcher.start()
        running = asyncio.create_task(batcher.submit(["a"]))
        await asyncio.sleep(0.05)  # "a" is in the model
        waiting = asyncio.create_task(batcher.submit(["b", "c"]))
        await asyncio.sleep(0)
        assert batcher.depth == 2
        start = time.perf_counter()
        with pytest.raises(QueueFull) as full:
            await batcher.submit(["d", "e"])  # 2 waiting + 2 > 3
        assert time.perf_counter() - start < 0.05  # at once, not after a wait
        assert batcher.depth == 2  # nothing of the refused request queued
        gate.set()
        results = await running, await waiting
        await batcher.stop()
        return full.value, results

    error, results = run(main())
    assert results == (["a"], ["b", "c"])
    assert (error.waiting, error.asked, error.max_queue, error.retry_after_s) == (2, 2, 3, 1)
    assert "2 images are waiting for the model (limit 3)" in error.detail and "\n" not in error.detail
    assert refused == [2] and depths[-1] == 0 and max(depths) == 2


def test_a_request_larger_than_the_queue_runs_when_the_queue_is_empty():
    async def main():
        batcher = MicroBatcher(lambda items: items, max_batch=2, max_queue=2)
        batcher.start()
        result = await batcher.submit(list(range(5)))
        await batcher.stop()
        return result

    assert run(main()) == [0, 1, 2, 3, 4]


def test_retry_after_from_the_depth_and_the_recent_batch_time():
    gate = threading.Event()

    def model(items):
        gate.wait(5)
        return items

    async def main():
        batcher = MicroBatcher(model, max_batch=4, max_queue=100)
        batcher.start()
        assert batcher.retry_after_s() == 1  # no batch yet: nothing to go by
        running = asyncio.create_task(batcher.submit(["x"]))
        await asyncio.sleep(0.05)
        waiting = asyncio.create_task(batcher.submit(list(range(9))))
        await asyncio.sleep(0)
        batcher.batch_seconds = 1.5  # as if measured: 9 waiting = 3 batches of 4 -> 4.5 s
        seconds = batcher.retry_after_s()
        gate.set()
        await running, await waiting
        await batcher.stop()
        return seconds, batcher.batch_seconds

    seconds, measured = run(main())
    assert seconds == 5 and measured < 1.5  # the running mean moved towards the fast batches


def test_bad_settings():
    with pytest.raises(ValueError):
        MicroBatcher(lambda x: x, max_batch=0)
    with pytest.raises(ValueError):
        MicroBatcher(lambda x: x, max_wait_ms=-1)
    with pytest.raises(ValueError):
        MicroBatcher(lambda x: x, max_queue=0)
