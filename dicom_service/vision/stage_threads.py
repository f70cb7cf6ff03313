"""Stages of a frame stream run in threads, so that one frame's decoding, optical flow,
network passes and encoding overlap those of its neighbours.

A stream of frames goes through stages in order (decode → flow → segment → restore →
stabilise → encode). Run one after the other, a frame costs the sum of the stages; run
each in its own thread, connected by small bounded queues, the stream goes at the pace
of the slowest stage. OpenCV, PyAV's codec calls and PyTorch's kernels release the GIL,
so the threads really overlap; every stage still sees its items in stream order, so the
results are those of the sequential run, bit for bit.

:class:`StageThreads` owns the threads and their queues (:class:`Handoff`). A worker that
raises stops the others and its exception is re-raised in the caller's thread; an
exception in the caller's thread (a cancelled job, say) stops the workers too. Nothing is
left running either way.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Generic, TypeVar

T = TypeVar("T")

_POLL_SECONDS = 0.05


class Stopped(Exception):
    """The run was stopped (another stage failed) while this one waited on a queue."""


class _End:
    """The end-of-stream marker put on a :class:`Handoff`."""


_END = _End()


class Handoff(Generic[T]):
    """A bounded FIFO from one stage to the next.

    Parameters
    ----------
    stop : threading.Event
        Set when the run is stopped: a waiting :meth:`put` or :meth:`get` then raises
        :class:`Stopped` instead of waiting for ever.
    depth : int
        Items held at most (the producer waits when it is full).
    waited : callable
        Called with the seconds each :meth:`put` or :meth:`get` waited.
    """

    def __init__(self, stop: threading.Event, depth: int, waited: Callable[[float], None]) -> None:
        self._queue: queue.Queue[T | _End] = queue.Queue(maxsize=depth)
        self._stop = stop
        self._waited = waited

    def put(self, item: T | _End) -> None:
        """Hand ``item`` on, waiting while the queue is full."""
        started = time.perf_counter()
        try:
            while True:
                if self._stop.is_set():
                    raise Stopped
                try:
                    self._queue.put(item, timeout=_POLL_SECONDS)
                    return
                except queue.Full:
                    continue
        finally:
            self._waited(time.perf_counter() - started)

    def close(self) -> None:
        """Mark the end of the stream (after the last :meth:`put`)."""
        self.put(_END)

    def __iter__(self) -> Iterator[T]:
        """The items in order, until :meth:`close`."""
        while True:
            started = time.perf_counter()
            try:
                item = self._get()
            finally:
                self._waited(time.perf_counter() - started)
            if isinstance(item, _End):
                return
            yield item

    def _get(self) -> T | _End:
        while True:
            if self._stop.is_set():
                raise Stopped
            try:
                return self._queue.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                continue


class StageThreads:
    """Worker threads of one stream, used as a context manager.

    ``with StageThreads() as stages:`` make queues with :meth:`handoff`, start workers
    with :meth:`start`, and run the caller's own stage in the ``with`` body. Leaving the
    body waits for every worker; the first worker exception is then raised (before a
    :class:`Stopped` of the body that it caused). An exception in the body stops the
    workers, which are joined before it propagates. :attr:`busy_seconds` then says how
    long each stage worked, its waits on the queues left out: the largest is the stage
    that sets the pace.

    Parameters
    ----------
    depth : int
        Items each :class:`Handoff` holds.
    """

    def __init__(self, depth: int = 2) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.depth = depth
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._waits: dict[str, float] = {}
        self._started = time.perf_counter()
        #: Seconds each stage worked (``"caller"``: the ``with`` body), once the run is over.
        self.busy_seconds: dict[str, float] = {}

    def _waited(self, seconds: float) -> None:
        name = threading.current_thread().name
        with self._lock:
            self._waits[name] = self._waits.get(name, 0.0) + seconds

    def handoff(self) -> Handoff:
        """A new queue between two stages of this run."""
        return Handoff(self._stop, self.depth, self._waited)

    def start(self, name: str, work: Callable[[], None]) -> None:
        """Run ``work()`` in a new thread named ``name``; an exception stops the run."""

        def run() -> None:
            started = time.perf_counter()
            try:
                work()
            except Stopped:
                pass
            except BaseException as error:  # noqa: BLE001 - handed to the caller's thread
                with self._lock:
                    self._errors.append(error)
                self._stop.set()
            finally:
                self._worked(name, threading.current_thread().name, time.perf_counter() - started)

        thread = threading.Thread(target=run, name=f"stage-{name}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _worked(self, stage: str, thread: str, seconds: float) -> None:
        with self._lock:
            self.busy_seconds[stage] = max(0.0, seconds - self._waits.get(thread, 0.0))

    def __enter__(self) -> StageThreads:
        self._started = time.perf_counter()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> bool:
        if error is not None:
            self._stop.set()
        self._worked("caller", threading.current_thread().name, time.perf_counter() - self._started)
        for thread in self._threads:
            thread.join()
        if self._errors and (error is None or isinstance(error, Stopped)):
            raise self._errors[0]
        return False
