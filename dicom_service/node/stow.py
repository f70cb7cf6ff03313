"""DICOMweb STOW-RS (PS3.18 section 10.5): results POSTed to a destination's studies service.

One request per dispatch job: ``POST <url>/studies`` with a ``multipart/related;
type="application/dicom"`` body that holds each result file as it lies on disk (Part 10,
its own transfer syntax). The body is streamed from the files with a Content-Length
computed up front, so a long video's result is never held in memory and servers that
do not take chunked uploads accept it.

The reply decides (PS3.18 table 10.5.3-1). Delivered means HTTP 200 or 202 with an
``application/dicom+json`` response data set whose Referenced SOP Sequence (0008,1199)
lists every instance sent and whose Failed SOP Sequence (0008,1198) is empty: a 200
without that confirmation (a proxy's page, a wrong path, an empty body) is not taken
for success. Failures are named with their Failure Reason (0008,1197). Anything else is
a :class:`~dicom_service.domain.DispatchError`, so the dispatch job is retried; a STOW
of an instance the server already holds is harmless. The reply is read up to 16 MiB;
messages never quote the destination's token or password.

``timeout`` bounds each read and write; the whole request is bounded by a minimum
average rate (``min_rate_kib_per_s``, after a grace of ``timeout`` seconds: see
:mod:`~dicom_service.node.transfer_rate`), so a server that trickles its reply cannot
hold a dispatch worker while a big video that keeps moving takes as long as it needs.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from dicom_service.config import DicomWebDestination
from dicom_service.domain import ConfigError, DispatchError
from dicom_service.node.transfer_rate import RateGuardedTransport, TransferBudget, TransferTooSlow, proxy_mounts
from dicom_service.tls import client_context

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
REFERENCED_SOP_SEQUENCE = "00081199"
CREDENTIALS_REFUSED = "the credentials were refused (username/password or token)"
#: The most of a STOW reply read (a JSON data set listing the instances; a few kB each).
MAX_REPLY_BYTES = 16 * 2**20


def _client(destination: DicomWebDestination) -> httpx.Client:
    """An HTTP client for one request, with the destination's credentials, TLS settings and
    minimum transfer rate (its budget starts now).

    Raises
    ------
    DispatchError
        A TLS file of the destination is missing or unusable (it was checked at start,
        so it was removed or replaced since).
    """
    headers = {"Accept": "application/dicom+json"}
    auth: tuple[str, str] | None = None
    if destination.token is not None:
        headers["Authorization"] = f"Bearer {destination.token.get_secret_value()}"
    elif destination.username is not None and destination.password is not None:
        auth = (destination.username, destination.password.get_secret_value())
    verify: Any = True
    if destination.tls is not None:
        try:
            verify = client_context(destination.tls, f"destinations[{destination.name}].tls")
        except ConfigError as exc:
            raise DispatchError(str(exc)) from None
    if destination.min_rate_kib_per_s == 0:
        return httpx.Client(headers=headers, auth=auth, verify=verify, timeout=destination.timeout)
    budget = TransferBudget(destination.timeout, destination.min_rate_kib_per_s * 1024)
    return httpx.Client(headers=headers, auth=auth, timeout=destination.timeout,
                        transport=RateGuardedTransport(verify, budget), mounts=proxy_mounts(verify, budget))


def _extensions(destination: DicomWebDestination) -> dict[str, Any]:
    """``tls.server_name``: the name the server's certificate must carry (and the SNI sent)."""
    if destination.tls is not None and destination.tls.server_name:
        return {"sni_hostname": destination.tls.server_name}
    return {}


def _secrets(destination: DicomWebDestination) -> list[str]:
    """What must never appear in a message: the token, the password and the basic
    credentials as sent."""
    found = []
    if destination.token is not None:
        found.append(destination.token.get_secret_value())
    if destination.username is not None and destination.password is not None:
        password = destination.password.get_secret_value()
        pair = f"{destination.username}:{password}".encode()
        found += [password, base64.b64encode(pair).decode("ascii")]
    return [value for value in found if value]


def _failure(destination: DicomWebDestination, what: str, exc: Exception) -> DispatchError:
    """A DispatchError for a request that failed, the exception's text with every secret
    of the destination masked (an HTTP library may quote a header it refused)."""
    text = f"{type(exc).__name__}: {exc}"
    for secret in _secrets(destination):
        text = text.replace(secret, "***")
    return DispatchError(f"{what} to {describe(destination)} failed: {text}")


def _parts(paths: Sequence[Path], boundary: str) -> tuple[int, Iterator[bytes]]:
    """The multipart body's length in bytes and a generator of its pieces."""
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii")
    tail = f"--{boundary}--\r\n".encode("ascii")
    length = sum(p.stat().st_size for p in paths) + len(paths) * (len(head) + 2) + len(tail)

    def pieces() -> Iterator[bytes]:
        for path in paths:
            yield head
            with open(path, "rb") as handle:
                while chunk := handle.read(CHUNK_BYTES):
                    yield chunk
            yield b"\r\n"
        yield tail

    return length, pieces()


def _reply(raw: bytes) -> dict[str, Any]:
    """The STOW-RS response data set (DICOM JSON), or {} when the body is not one."""
    try:
        body = json.loads(raw)
    except ValueError:  # also UnicodeDecodeError
        return {}
    if isinstance(body, list):  # a few servers answer a list holding the one response data set
        body = body[0] if body else {}
    return body if isinstance(body, dict) else {}


def _values(data: dict[str, Any], tag: str) -> list[Any]:
    """The ``Value`` list of a DICOM JSON element ([] when absent or malformed)."""
    element = data.get(tag)
    value = element.get("Value") if isinstance(element, dict) else None
    return value if isinstance(value, list) else []


def _items(reply: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    return [item for item in _values(reply, tag) if isinstance(item, dict)]


def failed_instances(reply: dict[str, Any]) -> list[str]:
    """``"<SOP Instance UID> (reason 0xNNNN)"`` for each item of the reply's Failed SOP
    Sequence (0008,1198)."""
    failed = []
    for item in _items(reply, FAILED_SOP_SEQUENCE):
        uid = next(iter(_values(item, REFERENCED_SOP_INSTANCE_UID)), "?")
        reason = next(iter(_values(item, FAILURE_REASON)), None)
        failed.append(f"{uid} (reason {hex(reason) if isinstance(reason, int) else 'not given'})")
    return failed


def describe(destination: DicomWebDestination) -> str:
    """``name (url)`` for messages; the URL carries no credentials (they are separate settings)."""
    return f"{destination.name} ({destination.url})"


def store_files(destination: DicomWebDestination, paths: Sequence[Path]) -> None:
    """STOW-RS the files to ``<url>/studies`` in one request.

    Raises
    ------
    DispatchError
        The request failed (connection, TLS, timeout, slower on average than the
        destination's ``min_rate_kib_per_s`` after its grace), the server refused it (an HTTP
        error status, credentials refused), or it reported instances it did not store;
        the message names them and the reasons.
    """
    if not paths:
        return
    boundary = f"dicom-service-{secrets.token_hex(12)}"
    length, body = _parts(paths, boundary)
    headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
               "Content-Length": str(length)}
    url = f"{destination.url}/studies"
    try:
        with _client(destination) as client, client.stream(
                "POST", url, content=body, headers=headers, extensions=_extensions(destination)) as response:
            raw = _read_capped(response)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise _failure(destination, "STOW-RS", exc) from None
    except TransferTooSlow as exc:
        log.warning("STOW-RS of %d objects to %s aborted: %s (the server trickles or stalls; retried)",
                    len(paths), describe(destination), exc)
        raise DispatchError(f"STOW-RS to {describe(destination)} aborted, too slow: {exc}") from None
    reply = _reply(raw)
    failed = failed_instances(reply)
    status = response.status_code
    if status in (401, 403):
        raise DispatchError(f"STOW-RS to {describe(destination)}: HTTP {status}, {CREDENTIALS_REFUSED}")
    if failed:
        raise DispatchError(f"{destination.name} did not store (STOW-RS, HTTP {status}): {', '.join(failed)}")
    confirmed = {uid for item in _items(reply, REFERENCED_SOP_SEQUENCE)
                 for uid in _values(item, REFERENCED_SOP_INSTANCE_UID)}
    sent = set(_sop_instance_uids(paths))
    missing = sent - confirmed
    if status in (200, 202) and not missing:
        log.info("sent %d objects to %s by STOW-RS (HTTP %d)", len(paths), destination.name, status)
        return
    location = response.headers.get("Location") if 300 <= status < 400 else None
    where = f", redirected to {location} (is the URL's scheme or path right?)" if location else ""
    raise DispatchError(f"STOW-RS to {describe(destination)}: HTTP {status} {response.reason_phrase}".rstrip()
                        + where + f" ({len(sent) - len(missing)} of {len(sent)} instances confirmed stored by the "
                        "reply's Referenced SOP Sequence)")


def _read_capped(response: httpx.Response) -> bytes:
    """The reply's body, read up to :data:`MAX_REPLY_BYTES` (a STOW reply is a small JSON
    data set; whatever follows is not read)."""
    raw = bytearray()
    for chunk in response.iter_bytes():
        raw += chunk[:MAX_REPLY_BYTES - len(raw)]
        if len(raw) >= MAX_REPLY_BYTES:
            break
    return bytes(raw)


def _sop_instance_uids(paths: Sequence[Path]) -> list[str]:
    """The SOP Instance UIDs of the files sent (their headers only; a file whose UID does
    not read stands for one no reply can confirm)."""
    uids = []
    for path in paths:
        try:
            uids.append(str(dcmread(path, stop_before_pixels=True).SOPInstanceUID))
        except (OSError, InvalidDicomError, AttributeError) as exc:  # unreadable, not DICOM, no UID
            uids.append(f"unreadable {path.name} ({type(exc).__name__})")
    return uids


def reachable(destination: DicomWebDestination) -> bool:
    """True if the service answers a QIDO-RS study search (``GET <url>/studies?limit=1``)
    with 200 or 204: reachable, TLS accepted, credentials accepted."""
    try:
        with _client(destination) as client:
            response = client.get(f"{destination.url}/studies", params={"limit": 1},
                                  extensions=_extensions(destination))
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        log.warning("%s", _failure(destination, "QIDO-RS", exc))
        return False
    except TransferTooSlow as exc:
        log.warning("QIDO-RS to %s aborted, too slow: %s", describe(destination), exc)
        return False
    except DispatchError as exc:
        log.warning("QIDO-RS to %s: %s", describe(destination), exc)
        return False
    if response.status_code in (401, 403):
        log.warning("QIDO-RS to %s: HTTP %d, %s", describe(destination), response.status_code, CREDENTIALS_REFUSED)
        return False
    if response.status_code not in (200, 204):
        log.warning("QIDO-RS to %s: HTTP %d", describe(destination), response.status_code)
        return False
    return True
