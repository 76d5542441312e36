"""Dynamic micro-batching: concurrent requests queue their images, one worker runs one model call
per batch of up to `max_batch` images: whatever is queued when the model is free, plus what
arrives within `max_wait_ms` after the first one.

The model call runs in one dedicated thread, so the event loop keeps accepting, decoding and
answering while the model works, and model calls never overlap (the torch backend's intra-op
threads are the parallelism; two calls at once would only fight over the same cores). While a
batch runs, new images queue up, so under load the next batch is already there when the model
is free.

The queue is bounded: when more than `max_queue` images would wait, submit() raises QueueFull at
once (the HTTP layer answers 429 with Retry-After) instead of letting work pile up past the
request timeout, holding every waiting request's bytes and images in memory.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

# Defaults, measured with benchmarks/serve_throughput.py on 2 shared CPU cores, one torch thread,
# one image a request (img/s at concurrency 16; p50 at concurrency 1):
#   test_resnet 32 px   batch 1: 269 img/s, p50 3.9 ms | batch 32, wait 0: 443, 3.9 ms
#                       batch 32, wait 2 ms: 468, 6.4 ms | wait 5: 429, 9.5 ms | wait 10: 439, 14.6 ms
#   resnet18 128 px     batch 1: 69 img/s, p50 15.2 ms | batch 32, wait 0: 94, 14.8 ms
#                       batch 32, wait 2 ms: 91, 17.4 ms
# Batching pays (+35-65 % at concurrency 16) but waiting for it does not: requests that arrive
# while the model runs already form the next batch, and a deliberate wait adds its full length
# (and a timer's slack) to every request at low load. So no wait by default; on a GPU, where one
# call of 32 costs little more than one of 1, --max-wait-ms 2-5 can fill batches further.
# 32 caps one call at milliseconds for small models (~0.3 s for a ResNet-50 at 224 px on 8 CPU
# cores), so no request waits behind a huge batch; raise it on a GPU.
MAX_BATCH = 32
MAX_WAIT_MS = 0.0
# Images waiting for the model before requests are refused (429): eight batches of 32. On CPU that
# is ~0.6 s of work for the tiny model above and ~2.5 s for a ResNet-50 at 224 px on 8 cores,
# well inside the 30 s request timeout, so a request admitted is a request answered; it holds
# four requests of 64 files, and bounds memory: each waiting image is reduced to less than 4x
# the model input per side (~2.4 MB at 224 px), so a full queue holds well under 1 GB.
MAX_QUEUE = 256
# Weight of the newest batch in the running mean of model time per batch (Retry-After's basis).
_BATCH_TIME_WEIGHT = 0.2


class QueueFull(Exception):
    """submit() refused a request: the images already waiting plus its own exceed max_queue.
    The HTTP layer answers 429 with `Retry-After: retry_after_s`."""

    def __init__(self, waiting: int, asked: int, max_queue: int, retry_after_s: int) -> None:
        self.waiting, self.asked, self.max_queue = waiting, asked, max_queue
        self.retry_after_s = retry_after_s
        super().__init__(self.detail)

    @property
    def detail(self) -> str:
        return (f"server busy: {self.waiting} images are waiting for the model (limit {self.max_queue}) "
                f"and this request adds {self.asked}; retry in {self.retry_after_s} s")


@dataclass
class _Item:
    payload: Any
    future: asyncio.Future


class MicroBatcher:
    """`await batcher.submit(payloads)` -> results in order; `run_batch(list of payloads)` is
    called in a worker thread with up to `max_batch` payloads and returns one result each."""

    def __init__(self, run_batch: Callable[[list[Any]], Sequence[Any]], *, max_batch: int = MAX_BATCH,
                 max_wait_ms: float = MAX_WAIT_MS, max_queue: int = MAX_QUEUE,
                 on_batch: Callable[[int, float], None] | None = None,
                 on_depth: Callable[[int], None] | None = None,
                 on_reject: Callable[[int], None] | None = None) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1 (got {max_batch})")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must not be negative (got {max_wait_ms})")
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1 (got {max_queue})")
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self.max_queue = max_queue
        self.on_batch = on_batch  # (batch size, model seconds): metrics
        self.on_depth = on_depth  # (images waiting): a gauge, called whenever the depth changes
        self.on_reject = on_reject  # (images refused): a counter, called on each QueueFull
        self.batch_seconds: float | None = None  # running mean of model time per batch
        self._queue: asyncio.Queue[_Item] | None = None
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def depth(self) -> int:
        """Images waiting for the model (not those in the batch it runs now)."""
        return self._queue.qsize() if self._queue is not None else 0

    def retry_after_s(self) -> int:
        """Whole seconds until the images waiting now should have gone through the model: batches
        to drain times the recent model time per batch; at least 1."""
        if self.batch_seconds is None:
            return 1
        return max(1, math.ceil(math.ceil(self.depth / self.max_batch) * self.batch_seconds))

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    def start(self) -> None:
        """Start the worker on the running event loop (the app's lifespan calls it)."""
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="clarivis-model")
        self._worker = asyncio.get_running_loop().create_task(self._work(), name="clarivis-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        if self._queue is not None:  # nobody will answer what is still queued
            while not self._queue.empty():
                item = self._queue.get_nowait()
                if not item.future.done():
                    item.future.set_exception(RuntimeError("the server is shutting down"))
            self._report_depth()
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def submit(self, payloads: Sequence[Any]) -> list[Any]:
        """Queue every payload, wait for all results. Cancelling (a request timeout) abandons
        them: the worker skips items nobody waits for any more. Raises QueueFull, queueing
        nothing, when the images waiting plus these would exceed max_queue; a request finding
        the queue empty is always taken, so one larger than max_queue is slow, never refused."""
        if not self.running or self._queue is None:
            raise RuntimeError("the batcher is not running")
        waiting = self.depth
        if waiting and waiting + len(payloads) > self.max_queue:
            if self.on_reject is not None:
                self.on_reject(len(payloads))
            raise QueueFull(waiting, len(payloads), self.max_queue, self.retry_after_s())
        loop = asyncio.get_running_loop()
        items = [_Item(p, loop.create_future()) for p in payloads]
        for item in items:
            self._queue.put_nowait(item)
        self._report_depth()
        try:
            return list(await asyncio.gather(*(i.future for i in items)))
        except asyncio.CancelledError:
            for item in items:
                item.future.cancel()
            raise

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                continue
            start = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self.run_batch,
                                                     [i.payload for i in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"the model returned {len(results)} results for {len(batch)} images")
            except Exception as err:  # noqa: BLE001 - every waiting request gets the failure
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(err)
                continue
            seconds = time.perf_counter() - start
            self.batch_seconds = seconds if self.batch_seconds is None else (
                (1 - _BATCH_TIME_WEIGHT) * self.batch_seconds + _BATCH_TIME_WEIGHT * seconds)
            if self.on_batch is not None:
                self.on_batch(len(batch), seconds)
            for item, result in zip(batch, results, strict=True):
                if not item.future.done():  # cancelled by a timeout meanwhile
                    item.future.set_result(result)

    async def _collect(self) -> list[_Item]:
        """The first waiting item, then whatever arrives until the batch is full or max_wait
        has passed since the first one; items nobody waits for any more are dropped."""
        assert self._queue is not None
        batch = [await self._queue.get()]
        deadline = time.perf_counter() + self.max_wait_s
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        self._report_depth()
        return [i for i in batch if not i.future.done()]

    def _report_depth(self) -> None:
        if self.on_depth is not None:
            self.on_depth(self.depth)
