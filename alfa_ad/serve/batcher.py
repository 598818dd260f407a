"""Micro-batching: gather concurrent requests of one key (class) into batches.

Requests wait in per-key queues.  The collector takes the key whose oldest request
arrived first and waits until that key has ``max_batch`` requests or its oldest request
has waited ``max_wait`` seconds, whichever comes first, then runs the batch function in
one worker thread (torch releases the GIL, so the event loop keeps answering).  While
a batch runs, new requests queue up, so under load batches fill by themselves and a
lone request is delayed by at most ``max_wait``.  The queue is bounded: beyond
``max_queue`` waiting requests :meth:`MicroBatcher.submit` raises :class:`QueueFull`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Sequence


class QueueFull(Exception):
    """The queue is at its bound; ``retry_after`` estimates when it will have room (seconds)."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"queue full; retry after {retry_after} s")
        self.retry_after = retry_after


@dataclass(frozen=True)
class BatchInfo:
    size: int  # requests in the batch this request ran in
    queued_s: float  # from submit to the batch's start
    model_s: float  # the batch function's wall time


@dataclass
class _Item:
    payload: Any
    future: asyncio.Future
    arrival: float


BatchFn = Callable[[Hashable, Sequence[Any]], Sequence[Any]]
Observer = Callable[[int, float], None]


class MicroBatcher:
    def __init__(self, fn: BatchFn, *, max_batch: int = 8, max_wait_s: float = 0.01, max_queue: int = 64,
                 on_batch: Observer | None = None) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait_s >= 0")
        self.fn = fn
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.on_batch = on_batch
        self._pending: dict[Hashable, deque[_Item]] = {}
        self._depth = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._batch_s = 0.0  # moving average of batch wall time, for Retry-After
        self._running: list[_Item] = []  # the batch being scored

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="alfa-ad-model")
        self._task = asyncio.create_task(self._collect(), name="alfa-ad-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for item in [*self._running, *(it for queue in self._pending.values() for it in queue)]:
            if not item.future.done():
                item.future.set_exception(RuntimeError("server shutting down"))
        self._pending.clear()
        self._running = []
        self._depth = 0
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    # ------------------------------------------------------------------ requests
    @property
    def depth(self) -> int:
        """Requests waiting for a batch (not counting the batch being scored)."""
        return self._depth

    @property
    def running(self) -> int:
        """Requests in the batch being scored."""
        return len(self._running)

    def retry_after(self) -> int:
        batches_ahead = self._depth / self.max_batch + 1
        return max(1, min(120, math.ceil(batches_ahead * max(self._batch_s, 0.05))))

    async def submit(self, key: Hashable, payload: Any) -> tuple[Any, BatchInfo]:
        """Queue one request and wait for ``(result, BatchInfo)``; QueueFull when at the bound.

        Cancelling the caller (a timeout, a dropped client) takes a still-waiting request
        out of its queue, so it is never scored."""
        if self._task is None or self._wake is None:
            raise RuntimeError("MicroBatcher.start() was not awaited")
        if self._depth >= self.max_queue:
            raise QueueFull(self.retry_after())
        loop = asyncio.get_running_loop()
        item = _Item(payload, loop.create_future(), loop.time())
        self._pending.setdefault(key, deque()).append(item)
        self._depth += 1
        self._wake.set()
        try:
            return await item.future
        except asyncio.CancelledError:
            queue = self._pending.get(key)
            if queue is not None and item in queue:
                queue.remove(item)
                self._depth -= 1
            raise

    # ------------------------------------------------------------------ collector
    def _oldest_key(self) -> Hashable | None:
        best, when = None, math.inf
        for key, queue in self._pending.items():
            if queue and queue[0].arrival < when:
                best, when = key, queue[0].arrival
        return best

    async def _collect(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            key = self._oldest_key()
            if key is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            queue = self._pending[key]
            deadline = queue[0].arrival + self.max_wait_s
            while 0 < len(queue) < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch = [queue.popleft() for _ in range(min(len(queue), self.max_batch))]
            if not queue:
                del self._pending[key]
            self._depth -= len(batch)
            batch = [it for it in batch if not it.future.done()]
            if batch:
                await self._run(loop, key, batch)

    async def _run(self, loop: asyncio.AbstractEventLoop, key: Hashable, batch: list[_Item]) -> None:
        started = loop.time()
        self._running = batch
        t0 = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._executor, self.fn, key, [it.payload for it in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(batch)} inputs")
        except asyncio.CancelledError:  # stop() while the batch runs
            for it in batch:
                if not it.future.done():
                    it.future.set_exception(RuntimeError("server shutting down"))
            raise
        except Exception as exc:  # noqa: BLE001 - every request of the batch gets the error
            for it in batch:
                if not it.future.done():
                    it.future.set_exception(exc)
            return
        finally:
            self._running = []
            seconds = time.perf_counter() - t0
            self._batch_s = seconds if self._batch_s == 0 else 0.8 * self._batch_s + 0.2 * seconds
            if self.on_batch is not None:
                self.on_batch(len(batch), seconds)
        for it, result in zip(batch, results):
            if not it.future.done():
                it.future.set_result((result, BatchInfo(len(batch), started - it.arrival, seconds)))
