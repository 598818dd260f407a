"""Overlap the stages of a batch run: decode ahead in worker threads, write behind in one.

PIL decoding, PNG encoding, numpy and torch release the GIL for most of their work,
so threads overlap them with the model.  Both stages are bounded: at most
``lookahead`` decoded images wait for the model, at most ``maxsize`` results wait to
be written, so memory does not grow with the number of images.
"""

from __future__ import annotations

import os
import queue
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def prefetch(fn: Callable[[T], R], items: Iterable[T], *, workers: int | None = None, lookahead: int = 16
             ) -> Iterator[tuple[T, R | None, BaseException | None]]:
    """``(item, fn(item), None)`` or ``(item, None, error)`` in input order, computing up to
    ``lookahead`` items ahead in ``workers`` threads."""
    it = iter(items)
    pending: deque[tuple[T, Future]] = deque()
    with ThreadPoolExecutor(max_workers=workers or default_workers(), thread_name_prefix="alfa-decode") as pool:
        for item in it:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) >= lookahead:
                break
        while pending:
            item, fut = pending.popleft()
            nxt = next(it, _END)
            if nxt is not _END:
                pending.append((nxt, pool.submit(fn, nxt)))
            try:
                yield item, fut.result(), None
            except Exception as exc:  # noqa: BLE001 - handed to the caller with its item
                yield item, None, exc


_END = object()


class BackgroundWriter:
    """Runs submitted calls in order in one thread; :meth:`flush` waits for them.

    An exception in a call is re-raised by the next :meth:`submit`, :meth:`flush` or
    :meth:`close` (the calls after it are skipped), so no error is lost.
    """

    def __init__(self, maxsize: int = 16) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, maxsize))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="alfa-writer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                if self._error is None:
                    fn, args = job
                    fn(*args)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                self._error = exc
            finally:
                self._queue.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self._raise()
        self._queue.put((fn, args))

    def flush(self) -> None:
        self._queue.join()
        self._raise()

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._raise()
