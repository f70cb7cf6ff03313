"""Syslog for audit messages: RFC 5424 messages over TLS (RFC 5425), TCP (RFC 6587) or UDP
(RFC 5426), as IHE ITI-20 "Record Audit Event" sends them.

A message is ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - BOM XML``: facility 10
(security/authorisation), severity notice for a success, warning for a failure; MSGID
``IHE+RFC-3881``; no structured data; the audit message in UTF-8 after a byte order mark.
On a stream (TLS, TCP) each message is framed by octet counting (``LEN SP MSG``).
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
from collections.abc import Callable

from dicom_service.atna.settings import AuditRepository
from dicom_service.tls import ClientTls, client_context

#: Facility 10: security/authorisation messages (what IHE ATNA uses).
FACILITY = 10
#: Severities by EventOutcomeIndicator: notice for a success, warning for a minor failure, error above.
SEVERITIES = {0: 5, 4: 4}
MSGID = "IHE+RFC-3881"
#: Seconds a new TLS 1.3 connection waits for the repository to refuse the node's certificate.
ACCEPT_WAIT_SECONDS = 0.5
APP_NAME = "dicom-service"
_BOM = "\ufeff".encode()


def _header_field(text: str, limit: int) -> str:
    """A header field as RFC 5424 allows it: printable US-ASCII without spaces, at most
    ``limit`` characters, ``-`` when empty."""
    cleaned = "".join(c if 33 <= ord(c) <= 126 else "_" for c in text)[:limit]
    return cleaned or "-"


def syslog_message(payload: bytes, *, timestamp: str, hostname: str, outcome: int, procid: str,
                   app_name: str = APP_NAME) -> bytes:
    """One RFC 5424 message carrying ``payload`` (an audit message, UTF-8).

    Parameters
    ----------
    payload : bytes
        The MSG part, UTF-8 (the byte order mark is added).
    timestamp : str
        RFC 3339 time of the event (``2026-12-08T10:15:00.123Z``).
    hostname, procid, app_name : str
        Header fields (made printable ASCII and cut to their limits).
    outcome : int
        EventOutcomeIndicator, for the severity.
    """
    priority = FACILITY * 8 + SEVERITIES.get(outcome, 3)
    header = " ".join((f"<{priority}>1", _header_field(timestamp, 64), _header_field(hostname, 255),
                       _header_field(app_name, 48), _header_field(procid, 128), MSGID, "-"))
    return header.encode("ascii") + b" " + _BOM + payload


def octet_counted(message: bytes) -> bytes:
    """``message`` framed for a stream (RFC 5425 / RFC 6587 octet counting)."""
    return str(len(message)).encode("ascii") + b" " + message


class SyslogSender:
    """A connection to the audit record repository, made on first use and again after an
    error.

    Parameters
    ----------
    repository : AuditRepository
    timeout : float
        Seconds for connecting and for each send.
    """

    def __init__(self, repository: AuditRepository, *, timeout: float = 10.0) -> None:
        self.repository = repository
        self.timeout = timeout
        self._socket: socket.socket | None = None
        #: Connections made since the start (a healthy repository keeps one).
        self.connections = 0

    @property
    def connected(self) -> bool:
        """Whether a connection (or, for UDP, a socket) is open."""
        return self._socket is not None

    def _context(self) -> ssl.SSLContext:
        return client_context(self.repository.tls or ClientTls(), "audit_repository.tls")

    def _open(self) -> socket.socket:
        repo = self.repository
        if repo.transport == "udp":
            family = socket.getaddrinfo(repo.host, repo.effective_port, type=socket.SOCK_DGRAM)[0][0]
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.settimeout(self.timeout)
            sock.connect((repo.host, repo.effective_port))
            return sock
        sock = socket.create_connection((repo.host, repo.effective_port), timeout=self.timeout)
        if repo.transport == "tls":
            tls = repo.tls or ClientTls()
            try:
                sock = self._context().wrap_socket(sock, server_hostname=tls.server_name or repo.host)
                self._confirm_accepted(sock)
            except BaseException:
                sock.close()
                raise
        return sock

    def _confirm_accepted(self, sock: ssl.SSLSocket) -> None:
        """Wait up to :data:`ACCEPT_WAIT_SECONDS` for a TLS 1.3 repository to refuse us.

        In TLS 1.3 the client's handshake ends before the server has checked the client's
        certificate; a server that refuses it sends an alert just after. Messages written
        before that alert would be lost, so the first read waits for it (a repository that
        accepts sends nothing, or session tickets, and the wait ends quietly).

        Raises
        ------
        ConnectionError, ssl.SSLError
            The repository refused the connection.
        """
        if sock.version() != "TLSv1.3":
            return  # up to TLS 1.2 the handshake itself fails on a refused certificate
        sock.settimeout(ACCEPT_WAIT_SECONDS)
        try:
            if sock.recv(1) == b"":
                raise ConnectionError("the repository closed the connection after the TLS handshake (does it "
                                      "accept the node's certificate?)")
        except (TimeoutError, ssl.SSLWantReadError):
            pass
        finally:
            sock.settimeout(self.timeout)

    def send(self, messages: list[bytes], *, abandoned: Callable[[], bool] | None = None) -> None:
        """Send RFC 5424 ``messages`` in order; on any error the connection is closed and
        the error raised (the caller sends them again later). ``abandoned()``, asked once
        a new connection is made, True: nothing is written (ConnectionAbortedError).

        Raises
        ------
        OSError
            Connecting or sending failed (``ssl.SSLError`` included).
        ConfigError
            The TLS files cannot be used.
        """
        if not messages:
            return
        if self._socket is not None and self._peer_closed():
            self.close()
        if self._socket is None:
            self._socket = self._open()
            self.connections += 1
            if abandoned is not None and abandoned():  # the node stopped while this connected
                self.close()
                raise ConnectionAbortedError("the forwarder was stopped while it connected")
        try:
            if self.repository.transport == "udp":
                for message in messages:
                    self._socket.send(message)
            else:
                self._socket.sendall(b"".join(octet_counted(m) for m in messages))
        except BaseException:
            self.close()
            raise

    def _peer_closed(self) -> bool:
        """Whether the repository closed the stream (or reset it): writing on would lose
        messages in the dead connection's buffer. A repository sends no data, so a stream
        with something to read is read to find out."""
        sock = self._socket
        if sock is None or self.repository.transport == "udp":
            return False
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return False
            sock.setblocking(False)
            return sock.recv(1) == b""  # bytes sent to us are read and ignored
        except (ssl.SSLWantReadError, BlockingIOError):
            return False  # TLS records that carry no data (session tickets)
        except (OSError, ValueError):
            return True
        finally:
            if self._socket is not None:
                with contextlib.suppress(OSError):
                    sock.settimeout(self.timeout)

    def close(self) -> None:
        """Close the connection (idempotent)."""
        sock, self._socket = self._socket, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
