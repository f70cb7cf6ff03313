"""Renewed TLS listener files without a restart.

A site renews the node's certificate by replacing the PEM files that ``dicom.tls`` (or
``http.tls``) names: certificate, private key, authorities and revocation lists. A
:class:`ReloadingServerContext` notices and hands new connections a context built from
the new files; connections already open keep the context they were accepted with.

How a change is noticed: on a new connection, at most once every ``check_seconds``
(:data:`RELOAD_CHECK_SECONDS`), the files are ``stat``-ed and their device, inode, size
and modification time compared with those of the files in use. This was chosen over a
reload on SIGHUP because renewal tools (certbot hooks, cert-manager secrets mounted in
a container, a script copying files) replace files and rarely know to signal the
process; a stat of four files on at most one connection a second costs microseconds
and needs no thread. ``os.stat`` follows symbolic links, so a renewal that swaps a
link (as Kubernetes does for mounted secrets) is seen too.

A replacement written file by file passes through inconsistent states (the new
certificate beside the old key). A changed set is adopted only once it loads as a whole
(:func:`~dicom_service.tls.server_context`: the key matches the certificate, every file
parses); until then the context in use keeps serving, and one WARNING line per failing
set of files (repeated every :data:`REPEAT_WARNING_SECONDS` while it lasts) says why. A
set that failed is loaded again when its files change, or after
:data:`RETRY_SECONDS` (a file system whose timestamps are coarser than the writes could
otherwise hide the last step of a replacement). A set whose ``crl`` holds a revocation
list past its next update (or not valid yet) loads, but OpenSSL would refuse every
client certificate of that authority with it ("CRL has expired"), so it fails the same
way: a stale copy of the list must not lock the peers out while the list in use is
still current.

Only the files change: the settings (which files, ``require_client_certificate``) are
read once, at start.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import logging
import os
import re
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

from dicom_service.domain import ConfigError
from dicom_service.tls import ServerTls, decoded_certificate, server_context, warn_if_expiring

log = logging.getLogger(__name__)

#: Seconds between two looks at a listener's files (taken on a new connection).
RELOAD_CHECK_SECONDS = 1.0
#: Seconds before a set of files that failed to load is tried again although unchanged.
RETRY_SECONDS = 10.0
#: Seconds before the warning about a set that still fails to load is repeated.
REPEAT_WARNING_SECONDS = 3600.0

#: What identifies the content of one file without reading it; None: the file is missing.
FileState = tuple[int, int, int, int] | None


def file_states(paths: tuple[Path, ...]) -> tuple[FileState, ...]:
    """Device, inode, size and modification time (ns) of each file, None where it is missing.

    Parameters
    ----------
    paths : tuple of Path

    Returns
    -------
    tuple
        One ``(st_dev, st_ino, st_size, st_mtime_ns)`` or None per path, in order.
    """
    states: list[FileState] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            states.append(None)
        else:
            states.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(states)


def certificate_summary(certificate: Path) -> str:
    """``subject ..., serial ..., valid until ...`` of the first certificate of a PEM file
    (empty when it cannot be decoded here). A server certificate carries no patient data."""
    decoded = decoded_certificate(certificate)
    if decoded is None:
        return ""
    subject = ", ".join(f"{k}={v}" for rdn in decoded.get("subject", ()) for k, v in rdn)
    return f"subject {subject}, serial {decoded.get('serialNumber', '?')}, valid until {decoded.get('notAfter', '?')}"


_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----(.*?)-----END X509 CRL-----", re.S)


def _der(data: bytes, pos: int) -> tuple[int, int, int]:
    """Tag, content start and content end of the DER element at ``pos``."""
    tag, length, pos = data[pos], data[pos + 1], pos + 2
    if length & 0x80:
        count = length & 0x7F
        length, pos = int.from_bytes(data[pos:pos + count], "big"), pos + count
    if pos + length > len(data):
        raise ValueError("DER element runs past the data")
    return tag, pos, pos + length


def _der_time(tag: int, value: bytes) -> float:
    """Seconds since the epoch of a UTCTime (0x17) or GeneralizedTime (0x18) ending in Z."""
    text = value.decode("ascii").rstrip("Z")
    if tag == 0x17:
        text = ("19" if int(text[:2]) >= 50 else "20") + text  # RFC 5280: YY >= 50 is 19YY
    return float(calendar.timegm(time.strptime(text[:14], "%Y%m%d%H%M%S")))


def crl_updates(path: Path) -> list[tuple[bytes, float, float | None]]:
    """Issuer (DER), thisUpdate and nextUpdate (seconds since the epoch; None when the
    list has none) of each PEM revocation list in ``path``; lists that do not decode here
    are left out (OpenSSL, which loaded them, has the last word)."""
    found: list[tuple[bytes, float, float | None]] = []
    try:
        blocks = _PEM_CRL.findall(path.read_bytes())
    except OSError:
        return found
    for block in blocks:
        try:
            der = base64.b64decode(b"".join(block.split()), validate=True)
            _, pos, _ = _der(der, 0)  # CertificateList
            _, pos, end = _der(der, pos)  # TBSCertList
            tag, start, stop = _der(der, pos)  # version (optional) or signature algorithm
            if tag == 0x02:
                tag, start, stop = _der(der, stop)  # signature algorithm
            tag, start, stop = _der(der, stop)  # issuer
            issuer = der[start:stop]
            tag, start, stop = _der(der, stop)  # thisUpdate
            this_update = _der_time(tag, der[start:stop])
            next_update = None
            if stop < end and der[stop] in (0x17, 0x18):
                tag, start, stop = _der(der, stop)
                next_update = _der_time(tag, der[start:stop])
            found.append((issuer, this_update, next_update))
        except (binascii.Error, IndexError, ValueError, UnicodeDecodeError):
            continue
    return found


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def check_crl_current(path: Path, key: str, now: float | None = None) -> None:
    """Raise :class:`ConfigError` when an authority's revocation lists in ``path`` are all
    past their next update or not valid yet: OpenSSL would refuse every client
    certificate of that authority ("CRL has expired")."""
    now = time.time() if now is None else now
    problems: dict[bytes, str] = {}
    current: set[bytes] = set()
    for issuer, this_update, next_update in crl_updates(path):
        if next_update is not None and now > next_update:
            problems.setdefault(issuer, f"past its next update ({_utc(next_update)})")
        elif now < this_update:
            problems.setdefault(issuer, f"not valid before {_utc(this_update)}")
        else:
            current.add(issuer)
    stale = [problem for issuer, problem in problems.items() if issuer not in current]
    if stale:
        raise ConfigError(f"{key}: {path} holds a revocation list {stale[0]}: every client certificate of its "
                          "authority would be refused")


class ReloadingServerContext:
    """A TLS listener's SSL context, rebuilt when its files are replaced.

    Parameters
    ----------
    tls : ServerTls
        ``dicom.tls`` or ``http.tls``.
    key : str
        The setting's name for messages, e.g. ``"dicom.tls"``.
    check_seconds : float
        Least interval between two looks at the files (0: on every connection).
    clock : callable
        Monotonic seconds (a test may pass its own).

    Raises
    ------
    ConfigError
        The files as they are at construction do not load
        (:func:`~dicom_service.tls.server_context`): the start stops.
    """

    def __init__(self, tls: ServerTls, key: str, check_seconds: float = RELOAD_CHECK_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.tls = tls
        self.key = key
        self.check_seconds = check_seconds
        self._clock = clock
        self._paths = tls.files()
        self._lock = threading.Lock()
        self._states = file_states(self._paths)
        self._context = server_context(tls, key)
        self._next_check = clock() + check_seconds
        self._failed: tuple[FileState, ...] | None = None
        self._retry_at = 0.0
        self._warned_at = 0.0
        #: How many times a changed set of files was adopted since the start.
        self.reloads = 0

    def current(self) -> ssl.SSLContext:
        """The context for a new connection: the newest set of files that loads as a whole.

        Never raises for a bad file (the context in use stays); looks at the files at
        most once every ``check_seconds``.
        """
        now = self._clock()
        with self._lock:
            if now >= self._next_check:
                self._next_check = now + self.check_seconds
                self._look(now)
            return self._context

    def _look(self, now: float) -> None:
        states = file_states(self._paths)
        if states == self._states:
            return
        if states == self._failed and now < self._retry_at:
            return
        try:
            context = server_context(self.tls, self.key)
            if self.tls.crl is not None:
                check_crl_current(self.tls.crl, f"{self.key}.crl")
        except (ConfigError, OSError) as exc:  # OSError: a file's folder not searchable (is_file raises)
            if states != self._failed or now - self._warned_at >= REPEAT_WARNING_SECONDS:
                self._warned_at = now
                log.warning("%s: changed files not used yet, the previous certificate serves new connections "
                            "until the new set loads as a whole: %s", self.key, exc)
            self._failed, self._retry_at = states, now + RETRY_SECONDS
            return
        self._context, self._states, self._failed = context, states, None
        self.reloads += 1
        log.info("%s: renewed files in use for new connections (%s)", self.key,
                 certificate_summary(self.tls.certificate) or self.tls.certificate)
        warn_if_expiring(self.tls.certificate, f"{self.key}.certificate")

    def sni_context(self) -> ssl.SSLContext:
        """A context to hand to a server that holds one context for its whole life
        (asyncio's, under uvicorn): during each handshake, its SNI callback (called
        whether or not the client names a server) swaps in :meth:`current`.

        The swap changes the certificate, key, authorities and revocation lists; the
        verify mode stays the listener's (it comes from the settings, not the files).
        """
        with self._lock:
            base = self._context
        base.sni_callback = self._swap
        return base

    def _swap(self, connection: ssl.SSLObject | ssl.SSLSocket, _server_name: str | None,
              context: ssl.SSLContext) -> None:
        newest = self.current()
        if newest is not context:
            connection.context = newest
