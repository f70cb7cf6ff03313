"""Low-latency association handling on top of pynetdicom (pinned to 3.0.x).

pynetdicom's DUL reactor polls its socket and sleeps ``_run_loop_delay`` (1 ms) after
every idle pass. With one C-STORE at a time per association, those sleeps dominate
ingest time. :class:`AdaptiveDUL` polls every 50 µs while PDUs are flowing (a PDU
arrived in the last 20 ms) and falls back to pynetdicom's 1 ms when the association is
idle, so idle associations cost no more CPU than before.

The subclass is applied by :class:`FastRequestHandler` to each accepted association;
everything else (negotiation, state machine, DIMSE) is pynetdicom's own code.

For TLS, pynetdicom's server runs each handshake in its one accepting thread, with no
time limit: a peer that connects and stays silent would stop every later association.
:class:`TlsAssociationServer` defers the handshake to the association's own thread,
where :class:`FastRequestHandler` runs it under the ACSE timeout and closes a
connection whose handshake fails. Each accepted connection is wrapped with the context
its ``context_source`` gives at that moment (a
:class:`~dicom_service.tls_reload.ReloadingServerContext`), so renewed certificate files
serve the next association while those already open keep theirs.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable

from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

log = logging.getLogger(__name__)

#: Poll interval while traffic flows, and how long "flowing" lasts after a PDU.
BUSY_DELAY_S = 0.00005
BUSY_WINDOW_S = 0.02
#: How often a wait for the peer's next request looks whether the connection has closed.
CLOSED_CHECK_S = 0.05


class AdaptiveDUL(DULServiceProvider):
    """A DUL provider whose idle sleep is short while PDUs are flowing."""

    @property  # type: ignore[override]
    def _run_loop_delay(self) -> float:
        idle_delay = self.__dict__.get("_run_loop_delay", 0.001)
        started = getattr(self._idle_timer, "_start_time", None)
        if started is not None and time.time() - started < BUSY_WINDOW_S:
            return min(BUSY_DELAY_S, idle_delay)
        return idle_delay

    @_run_loop_delay.setter
    def _run_loop_delay(self, value: float) -> None:
        self.__dict__["_run_loop_delay"] = value

    def receive_pdu(self, wait: bool = False, timeout: float | None = None):  # noqa: ANN201 - pynetdicom's
        """pynetdicom's :meth:`~pynetdicom.dul.DULServiceProvider.receive_pdu`, except that a
        wait with a timeout ends (returning None, as a timeout does) as soon as the peer
        has closed the connection.

        pynetdicom's acceptor waits ``acse_timeout`` for the A-ASSOCIATE-RQ, and a connection
        closed before it (a TCP health check, a port scan, a TLS probe) queues nothing to
        wake it: each such connection kept an association slot (``max_associations``) for
        that long, and twenty quick probes turned real peers away with "local limit
        exceeded". The wait is cut into :data:`CLOSED_CHECK_S` slices to look at the socket.
        """
        if not wait or timeout is None:
            return super().receive_pdu(wait=wait, timeout=timeout)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            primitive = super().receive_pdu(wait=True, timeout=max(0.0, min(CLOSED_CHECK_S, remaining)))
            if primitive is not None or remaining <= CLOSED_CHECK_S:
                return primitive
            if self._connection_gone():
                return None  # the peer closed the connection: nothing more will come

    def _connection_gone(self) -> bool:
        """True once this DUL's thread has ended with nothing left for the user: no
        primitive can come any more.

        A peer's close before its A-ASSOCIATE-RQ ends pynetdicom's DUL thread (its state
        machine meets "transport closed" in Sta1), while the acceptor went on waiting.
        Only the thread's end is looked at, not the state: between taking the
        transport-connect event off its queue and acting on it, a live DUL is briefly in
        Sta1 too.
        """
        return not self.is_alive() and self.to_user_queue.empty()


class FailureLog:
    """Log lines for failed handshakes, at most ``burst`` per ``window`` seconds; the rest
    are counted and summed up in the next line allowed (a port scan or a flood of
    silent connections must not bury the log)."""

    def __init__(self, burst: int = 10, window: float = 60.0) -> None:
        self.burst = burst
        self.window = window
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._lines = 0
        self._held = 0

    def warning(self, message: str, *args: object) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._start >= self.window:
                self._start, self._lines = now, 0
            if self._lines >= self.burst:
                self._held += 1
                return
            self._lines += 1
            held, self._held = self._held, 0
        if held:
            message += f" ({held} more such failures were not logged)"
        log.warning(message, *args)


#: Called with the peer's address, OpenSSL's reason and its verification message when a
#: TLS handshake fails on a certificate (the node refused the peer's, or the peer the node's).
RefusedCertificate = Callable[[object, str, "str | None"], None]


class TlsAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server whose TLS handshakes run in the association threads.

    Its handler threads are daemons that shutdown does not wait for (a handshake still
    pending at a stop would otherwise hold it for the ACSE timeout), and it queues up to
    128 connections not yet accepted (the standard library's 5 made
    bursts of new associations wait for TCP retransmits). Used for the plain listener too.

    ``context_source``, when set, gives the SSL context for each new connection (in place
    of the fixed ``ssl_context``, which then only marks the listener as a TLS one).
    """

    daemon_threads = True
    block_on_close = False
    request_queue_size = 128
    context_source: Callable[[], ssl.SSLContext] | None = None
    #: Told of each handshake that fails on a certificate (:data:`RefusedCertificate`).
    on_refused_certificate: RefusedCertificate | None = None

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.handshake_failures = FailureLog()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client, address = self.socket.accept()  # type: ignore[union-attr]
        context = self.ssl_context
        if context is not None:
            if self.context_source is not None:
                context = self.context_source()
            client = context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address


def _certificate_refused(exc: BaseException, reason: str) -> bool:
    """Whether a failed handshake was a refused certificate (node authentication), not a
    connection that closed or timed out (a health check, a port scan)."""
    return isinstance(exc, ssl.SSLCertVerificationError) or (
        isinstance(exc, ssl.SSLError) and ("CERTIFICATE" in reason.upper() or "UNKNOWN_CA" in reason.upper()))


def _tls_handshake(sock: ssl.SSLSocket, address: object, timeout: float, failures: FailureLog,
                   refused: RefusedCertificate | None = None) -> bool:
    """Complete the server side of a TLS handshake within ``timeout`` seconds.

    Returns False, with a log line naming the peer's address and the reason (for a
    refused certificate, why: expired, unknown authority, wrong key usage, ...), and the
    connection closed, when the handshake fails or times out. A refused certificate is
    also passed to ``refused`` (the audit trail's row).
    """
    previous = sock.gettimeout()
    try:
        sock.settimeout(timeout)
        sock.do_handshake()
    except (OSError, ValueError) as exc:  # ssl.SSLError and TimeoutError are OSErrors
        reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
        detail = getattr(exc, "verify_message", None)
        failures.warning("TLS handshake with %s failed: %s%s", address, reason, f" ({detail})" if detail else "")
        if refused is not None and _certificate_refused(exc, str(reason)):
            try:
                refused(address, str(reason), detail)
            except Exception:  # noqa: BLE001 - the trail must not fail the listener
                log.warning("a refused TLS certificate could not be recorded in the audit trail")
        try:
            sock.close()
        except OSError:
            pass
        return False
    sock.settimeout(previous)
    return True


class FastRequestHandler(RequestHandler):
    """pynetdicom's request handler, with :class:`AdaptiveDUL` for each association;
    on a TLS listener it first completes the handshake (:class:`TlsAssociationServer`)."""

    def handle(self) -> None:
        request = self.request
        if isinstance(request, ssl.SSLSocket):
            timeout = self.ae.acse_timeout if self.ae.acse_timeout is not None else 30.0
            if not _tls_handshake(request, self.client_address, timeout, self.server.handshake_failures,
                                  getattr(self.server, "on_refused_certificate", None)):
                return
        super().handle()

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        # The DUL thread has not started yet; only its polling policy changes.
        assoc.dul.__class__ = AdaptiveDUL
        return assoc


# --------------------------------------------------------------------------- Part 10 header
#: Our Implementation Class UID (``new_uid("dicom-service/implementation-class")``).
IMPLEMENTATION_CLASS_UID = "2.25.227480431460742888134297095735827290322"


def _element(tag_element: int, vr: bytes, value: bytes) -> bytes:
    """Encode one group-2 element, Explicit VR Little Endian."""
    if vr == b"OB":
        return struct.pack("<HH2sHI", 2, tag_element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 2, tag_element, vr, len(value)) + value


def _text(value: str, pad: bytes) -> bytes:
    raw = value.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


def part10_header(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str,
                  source_ae: str, implementation_class_uid: str = IMPLEMENTATION_CLASS_UID,
                  implementation_version: str = "DENTAL_AI_010") -> bytes:
    """Preamble, ``DICM`` and File Meta Information for a received data set.

    Equivalent to pydicom's ``write_file_meta_info`` for these elements but about
    twenty times faster, which matters at hundreds of instances per second. UIDs must
    already be validated (ASCII digits and dots).

    Returns
    -------
    bytes
        128-byte preamble, ``b"DICM"`` and group 0002 with its group length.
    """
    body = b"".join((
        _element(0x0001, b"OB", b"\x00\x01"),
        _element(0x0002, b"UI", _text(sop_class_uid, b"\x00")),
        _element(0x0003, b"UI", _text(sop_instance_uid, b"\x00")),
        _element(0x0010, b"UI", _text(transfer_syntax_uid, b"\x00")),
        _element(0x0012, b"UI", _text(implementation_class_uid, b"\x00")),
        _element(0x0013, b"SH", _text(implementation_version, b" ")),
        _element(0x0016, b"AE", _text(source_ae.strip() or "UNKNOWN", b" ")),
    ))
    group_length = _element(0x0000, b"UL", struct.pack("<I", len(body)))
    return b"\x00" * 128 + b"DICM" + group_length + body
