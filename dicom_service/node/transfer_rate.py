"""A minimum average transfer rate for one HTTP request, enforced on its socket operations.

``httpx`` timeouts are per read or write: a server that sends one byte of its reply just
before each read times out (or reads one byte of the upload before each write does)
holds the request, and the dispatch worker waiting on it, for ever. A whole-request
timeout would instead cut off a long but healthy upload of a big video. The guard here
sits between the two: a request may run for ``grace`` seconds plus the time its bytes
would take at ``min_rate`` bytes per second, counting every byte written or read on the
connection (upload and reply, headers included), so

    elapsed > grace + bytes_moved / min_rate

aborts it with :class:`TransferTooSlow`. Each socket operation's timeout is clamped to
the time left, so a request stuck in one read or write is aborted when its time runs
out, not one per-operation timeout later. No thread is started: the check runs in the
network stream that ``httpcore`` (``httpx``'s engine) reads and writes through.

A client given its own transport ignores the proxies of the environment (``HTTP_PROXY``,
``HTTPS_PROXY``, ``ALL_PROXY``, ``NO_PROXY``); :func:`proxy_mounts` mounts them as
``httpx`` would, each through a guarded transport, so a request still takes the proxy
and the guard counts the bytes to and from it.
"""

from __future__ import annotations

import ssl
import time
import typing
from collections.abc import Callable, Iterable

import httpcore
import httpx
from httpx._utils import get_environment_proxies

_T = typing.TypeVar("_T")

#: The most bytes handed to one socket write, so that the time left is checked at least
#: once per piece (at 16 KiB/s a piece earns 4 s).
WRITE_PIECE_BYTES = 64 * 1024


class TransferTooSlow(Exception):  # noqa: N818 - reads as what happened, like httpx's ReadTimeout
    """A request moved too few bytes for its elapsed time; the message gives the numbers."""


class TransferBudget:
    """The time a request may take: ``grace`` seconds plus ``moved / min_rate``.

    Parameters
    ----------
    grace : float
        Seconds allowed before any byte counts (connection, TLS handshake, the server's
        work between upload and reply); > 0.
    min_rate : float
        Minimum average rate in bytes per second over the whole request; > 0.
    clock : callable, optional
        Monotonic seconds (tests pass a fake one); default :func:`time.monotonic`.
    """

    def __init__(self, grace: float, min_rate: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if grace <= 0 or min_rate <= 0:
            raise ValueError(f"grace and min_rate must be > 0, got {grace} and {min_rate}")
        self.grace = grace
        self.min_rate = min_rate
        self.moved = 0
        self._clock = clock
        self._start = clock()

    def elapsed(self) -> float:
        """Seconds since the budget was made."""
        return self._clock() - self._start

    def remaining(self) -> float:
        """Seconds left before the request is too slow (<= 0: it is)."""
        return self.grace + self.moved / self.min_rate - self.elapsed()

    def add(self, count: int) -> None:
        """Count ``count`` more bytes moved."""
        self.moved += count

    def timeout(self, timeout: float | None) -> float:
        """The timeout of the next socket operation: ``timeout`` clamped to the time left.

        Raises
        ------
        TransferTooSlow
            No time is left.
        """
        left = self.remaining()
        if left <= 0:
            raise self.too_slow()
        return left if timeout is None else min(timeout, left)

    def too_slow(self) -> TransferTooSlow:
        """The exception for a request past its time, with the numbers in its message."""
        return TransferTooSlow(
            f"{self.moved} bytes moved in {self.elapsed():.1f} s, below the minimum average rate of "
            f"{self.min_rate / 1024:g} KiB/s after a grace of {self.grace:g} s")


def _guarded(budget: TransferBudget, operation: Callable[[float], _T], timeout: float | None) -> _T:
    """Run a socket ``operation(timeout)`` with ``timeout`` clamped to the time left; its
    timeout becomes :class:`TransferTooSlow` when the clamp, not ``timeout``, ran out."""
    try:
        return operation(budget.timeout(timeout))
    except (httpcore.ReadTimeout, httpcore.WriteTimeout, httpcore.ConnectTimeout):
        if budget.remaining() <= 0:
            raise budget.too_slow() from None
        raise


class _GuardedStream(httpcore.NetworkStream):
    """A network stream whose reads and writes count bytes and honour a :class:`TransferBudget`."""

    def __init__(self, stream: httpcore.NetworkStream, budget: TransferBudget) -> None:
        self._stream = stream
        self._budget = budget

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data = _guarded(self._budget, lambda t: self._stream.read(max_bytes, t), timeout)
        self._budget.add(len(data))
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        for start in range(0, len(buffer), WRITE_PIECE_BYTES):
            piece = buffer[start:start + WRITE_PIECE_BYTES]
            _guarded(self._budget, lambda t, piece=piece: self._stream.write(piece, t), timeout)
            self._budget.add(len(piece))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        tls = _guarded(self._budget, lambda t: self._stream.start_tls(ssl_context, server_hostname, t), timeout)
        return _GuardedStream(tls, self._budget)

    def get_extra_info(self, info: str) -> typing.Any:
        return self._stream.get_extra_info(info)


class _GuardedBackend(httpcore.NetworkBackend):
    """``httpcore``'s synchronous backend, its streams wrapped in :class:`_GuardedStream`."""

    def __init__(self, budget: TransferBudget) -> None:
        self._backend = httpcore.SyncBackend()
        self._budget = budget

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[typing.Any] | None = None) -> httpcore.NetworkStream:
        stream = _guarded(self._budget, lambda t: self._backend.connect_tcp(host, port, t, local_address,
                                                                            socket_options), timeout)
        return _GuardedStream(stream, self._budget)

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[typing.Any] | None = None) -> httpcore.NetworkStream:
        stream = _guarded(self._budget, lambda t: self._backend.connect_unix_socket(path, t, socket_options), timeout)
        return _GuardedStream(stream, self._budget)

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class RateGuardedTransport(httpx.HTTPTransport):
    """``httpx``'s default transport whose connections honour ``budget``.

    For one request (the budget starts when it is made): pass it to a client used once.

    Parameters
    ----------
    verify : ssl.SSLContext or bool
        As for :class:`httpx.HTTPTransport`.
    budget : TransferBudget
        The request's time allowance.
    proxy : str, optional
        A proxy's URL, as for :class:`httpx.HTTPTransport` (its connections honour the
        budget too).

    Raises
    ------
    RuntimeError
        The installed ``httpx`` no longer keeps its connection pool where this expects
        (its internals changed): better than a silently missing guard.
    """

    def __init__(self, verify: ssl.SSLContext | bool, budget: TransferBudget, proxy: str | None = None) -> None:
        super().__init__(verify=verify, proxy=proxy)
        pool = getattr(self, "_pool", None)
        if not isinstance(pool, httpcore.ConnectionPool) or not hasattr(pool, "_network_backend"):
            raise RuntimeError(f"httpx {httpx.__version__}: HTTPTransport has no httpcore connection pool to guard")
        pool._network_backend = _GuardedBackend(budget)  # noqa: SLF001 - the pool's connections and proxy tunnels


def proxy_mounts(verify: ssl.SSLContext | bool, budget: TransferBudget) -> dict[str, httpx.BaseTransport | None]:
    """The ``mounts`` of a client with a :class:`RateGuardedTransport`: the environment's
    proxies as ``httpx`` would mount them (None where ``NO_PROXY`` says none), each
    through a :class:`RateGuardedTransport` with ``budget``."""
    return {pattern: None if url is None else RateGuardedTransport(verify, budget, proxy=url)
            for pattern, url in get_environment_proxies().items()}
