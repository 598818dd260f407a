"""MicroBatcher: batches per key, bounded wait for a lone request, bounded queue, cancellation."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from alfa_ad.serve.batcher import MicroBatcher, QueueFull


class Recorder:
    """A batch function that doubles its inputs and records every batch it was given."""

    def __init__(self, delay: float = 0.0, gate: threading.Event | None = None) -> None:
        self.batches: list[tuple[str, list[int]]] = []
        self.delay = delay
        self.gate = gate

    def __call__(self, key, payloads):
        if self.gate is not None:
            self.gate.wait(5)
        if self.delay:
            time.sleep(self.delay)
        self.batches.append((key, list(payloads)))
        return [2 * p for p in payloads]


def run(coro):
    return asyncio.run(coro)


def test_lone_request_waits_at_most_max_wait():
    async def main():
        fn = Recorder()
        b = MicroBatcher(fn, max_batch=8, max_wait_s=0.05, max_queue=10)
        await b.start()
        t0 = time.perf_counter()
        result, info = await b.submit("a", 21)
        elapsed = time.perf_counter() - t0
        await b.stop()
        return result, info, elapsed, fn.batches

    result, info, elapsed, batches = run(main())
    assert result == 42 and info.size == 1 and batches == [("a", [21])]
    assert 0.04 <= elapsed < 0.05 + 0.25, elapsed  # waited for company, but not much longer than max_wait


def test_zero_wait_runs_at_once():
    async def main():
        b = MicroBatcher(Recorder(), max_batch=8, max_wait_s=0.0, max_queue=10)
        await b.start()
        t0 = time.perf_counter()
        await b.submit("a", 1)
        elapsed = time.perf_counter() - t0
        await b.stop()
        return elapsed

    assert run(main()) < 0.2


def test_concurrent_requests_are_batched_per_key_and_answered_in_order():
    async def main():
        fn = Recorder(delay=0.02)
        b = MicroBatcher(fn, max_batch=4, max_wait_s=0.05, max_queue=100)
        await b.start()
        jobs = [b.submit("a" if i % 3 else "b", i) for i in range(18)]
        out = await asyncio.gather(*jobs)
        await b.stop()
        return out, fn.batches

    out, batches = run(main())
    assert [r for r, _ in out] == [2 * i for i in range(18)]
    assert all(1 <= len(p) <= 4 for _, p in batches)
    for key, payloads in batches:  # never mixes classes
        assert all((("a" if i % 3 else "b") == key) for i in payloads)
    assert sorted(i for _, p in batches for i in p) == list(range(18))
    assert max(len(p) for _, p in batches) == 4  # batches filled up
    sizes = {info.size for _, info in out}
    assert max(sizes) == 4


def test_queue_bound_raises_queue_full_and_recovers():
    async def main():
        gate = threading.Event()
        fn = Recorder(gate=gate)
        b = MicroBatcher(fn, max_batch=1, max_wait_s=0.0, max_queue=3)
        await b.start()
        first = asyncio.ensure_future(b.submit("a", 0))
        await asyncio.sleep(0.05)  # the first is now in the (blocked) model
        waiting = [asyncio.ensure_future(b.submit("a", i)) for i in (1, 2, 3)]
        await asyncio.sleep(0.01)
        assert b.depth == 3 and b.running == 1
        with pytest.raises(QueueFull) as err:
            await b.submit("a", 99)
        assert err.value.retry_after >= 1
        gate.set()
        results = await asyncio.gather(first, *waiting)
        again, _ = await b.submit("a", 5)  # recovered
        await b.stop()
        return [r for r, _ in results], again, b.depth

    results, again, depth = run(main())
    assert results == [0, 2, 4, 6] and again == 10 and depth == 0


def test_cancelled_request_is_never_scored():
    async def main():
        gate = threading.Event()
        fn = Recorder(gate=gate)
        b = MicroBatcher(fn, max_batch=1, max_wait_s=0.0, max_queue=10)
        await b.start()
        first = asyncio.ensure_future(b.submit("a", 1))
        await asyncio.sleep(0.05)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(b.submit("a", 2), 0.05)  # times out while queued
        assert b.depth == 0
        gate.set()
        await first
        await b.submit("a", 3)
        await b.stop()
        return fn.batches

    batches = run(main())
    assert [p for _, p in batches] == [[1], [3]]


def test_batch_error_reaches_every_request_and_batcher_keeps_working():
    calls = []

    def flaky(key, payloads):
        calls.append(list(payloads))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return payloads

    async def main():
        b = MicroBatcher(flaky, max_batch=4, max_wait_s=0.05, max_queue=10)
        await b.start()
        res = await asyncio.gather(*(b.submit("a", i) for i in range(3)), return_exceptions=True)
        ok, _ = await b.submit("a", 7)
        await b.stop()
        return res, ok

    res, ok = run(main())
    assert all(isinstance(r, RuntimeError) and str(r) == "boom" for r in res)
    assert ok == 7


def test_stop_fails_waiting_requests():
    async def main():
        gate = threading.Event()
        b = MicroBatcher(Recorder(gate=gate), max_batch=1, max_wait_s=0.0, max_queue=10)
        await b.start()
        jobs = [asyncio.ensure_future(b.submit("a", i)) for i in range(3)]
        await asyncio.sleep(0.05)
        gate.set()
        await b.stop()
        return await asyncio.gather(*jobs, return_exceptions=True)

    res = run(main())
    assert any(isinstance(r, RuntimeError) and "shutting down" in str(r) for r in res)
