"""DICOMweb STOW-RS (PS3.18 section 10.5): results POSTed to a destination's studies service.

One request per dispatch job: ``POST <url>/studies`` with a ``multipart/related;
type="application/dicom"`` body that holds each result file as it lies on disk (Part 10,
its own transfer syntax). The body is streamed from the files with a Content-Length
computed up front, so a long video's result is never held in memory and servers that
do not take chunked uploads accept it.

The reply decides (PS3.18 table 10.5.3-1): 200 is stored; 202 (some stored, or
warnings) and 409 (none stored) list the failures in the Failed SOP Sequence
(0008,1198) of the ``application/dicom+json`` body, each with its Failure Reason
(0008,1197). Every instance the reply lists as failed, and any other status, is a
:class:`~dicom_service.domain.DispatchError`, so the dispatch job is retried; a STOW
of an instance the server already holds is harmless.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from dicom_service.config import DicomWebDestination
from dicom_service.domain import ConfigError, DispatchError
from dicom_service.tls import client_context

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
REFERENCED_SOP_SEQUENCE = "00081199"


def _client(destination: DicomWebDestination) -> httpx.Client:
    """An HTTP client with the destination's credentials and TLS settings.

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
    return httpx.Client(headers=headers, auth=auth, verify=verify, timeout=destination.timeout)


def _parts(paths: Sequence[Path], boundary: str) -> tuple[int, Iterator[bytes]]:
    """The multipart body's length in bytes and a generator of its pieces."""
    heads = [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii") for _ in paths]
    tail = f"--{boundary}--\r\n".encode("ascii")
    length = sum(len(h) + p.stat().st_size + 2 for h, p in zip(heads, paths, strict=True)) + len(tail)

    def pieces() -> Iterator[bytes]:
        for head, path in zip(heads, paths, strict=True):
            yield head
            with open(path, "rb") as handle:
                while chunk := handle.read(CHUNK_BYTES):
                    yield chunk
            yield b"\r\n"
        yield tail

    return length, pieces()


def _reply(response: httpx.Response) -> dict[str, Any]:
    """The STOW-RS response data set (DICOM JSON), or {} when the body is not one."""
    try:
        body = response.json()
    except ValueError:
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
        The request failed (connection, TLS, timeout), the server refused it (an HTTP
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
        with _client(destination) as client:
            response = client.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        raise DispatchError(f"STOW-RS to {describe(destination)} failed: {type(exc).__name__}: {exc}") from None
    reply = _reply(response)
    failed = failed_instances(reply)
    if response.status_code in (200, 202) and not failed:
        log.info("sent %d objects to %s by STOW-RS (HTTP %d)", len(paths), destination.name, response.status_code)
        return
    if response.status_code in (401, 403):
        raise DispatchError(f"STOW-RS to {describe(destination)}: HTTP {response.status_code}, the credentials "
                            "were refused (username/password or token)")
    if failed:
        raise DispatchError(f"{destination.name} did not store (STOW-RS, HTTP {response.status_code}): "
                            f"{', '.join(failed)}")
    stored = len(_items(reply, REFERENCED_SOP_SEQUENCE))
    raise DispatchError(f"STOW-RS to {describe(destination)}: HTTP {response.status_code} "
                        f"{response.reason_phrase}".rstrip() + f" ({stored} of {len(paths)} stored, by the reply)")


def reachable(destination: DicomWebDestination) -> bool:
    """True if the service answers a QIDO-RS study search (``GET <url>/studies?limit=1``)
    with 200 or 204: reachable, TLS accepted, credentials accepted."""
    try:
        with _client(destination) as client:
            response = client.get(f"{destination.url}/studies", params={"limit": 1})
    except (httpx.HTTPError, DispatchError) as exc:
        log.warning("QIDO-RS to %s failed: %s", describe(destination), exc)
        return False
    if response.status_code not in (200, 204):
        log.warning("QIDO-RS to %s: HTTP %d", describe(destination), response.status_code)
        return False
    return True

