"""DICOM SCU: C-ECHO and C-STORE of result files to a destination."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.presentation import build_context

from dicom_service.config import Destination
from dicom_service.domain import ConfigError, DispatchError
from dicom_service.node.contexts import EXPLICIT_LE, IMPLICIT_LE, VERIFICATION
from dicom_service.tls import client_context

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SendTimeouts:
    """Network timeouts of the SCU, in seconds."""

    acse: float = 30.0
    dimse: float = 60.0
    network: float = 60.0
    connect: float = 10.0


def _ae(calling_ae: str, timeouts: SendTimeouts) -> AE:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = timeouts.acse
    ae.dimse_timeout = timeouts.dimse
    ae.network_timeout = timeouts.network
    ae.connection_timeout = timeouts.connect
    return ae


def _associate(ae: AE, destination: Destination) -> Association:
    """Request an association with ``destination``, over TLS when it has ``tls``.

    Raises
    ------
    ConfigError
        A TLS file of the destination is missing or unusable.
    """
    tls_args = None
    if destination.tls is not None:
        context = client_context(destination.tls, f"destinations[{destination.name}].tls")
        tls_args = (context, destination.tls.server_name or destination.host)
    return ae.associate(destination.host, destination.port, ae_title=destination.ae_title, tls_args=tls_args)


def _describe(destination: Destination) -> str:
    over = " over TLS" if destination.tls is not None else ""
    return f"{destination.name} ({destination.ae_title}@{destination.host}:{destination.port}{over})"


def echo(destination: Destination, calling_ae: str, timeouts: SendTimeouts | None = None) -> bool:
    """C-ECHO a destination (over TLS when it has ``tls``); True if it answered success."""
    ae = _ae(calling_ae, timeouts or SendTimeouts())
    ae.add_requested_context(VERIFICATION)
    assoc = _associate(ae, destination)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and status.Status == 0x0000
    finally:
        assoc.release()


def send_files(
    destination: Destination,
    paths: Sequence[Path],
    calling_ae: str,
    timeouts: SendTimeouts | None = None,
) -> None:
    """C-STORE files to a destination over one association (TLS when it has ``tls``).

    Each file is proposed with its own transfer syntax and, as a fallback for
    uncompressed data, Explicit and Implicit VR Little Endian. Only the headers are read
    up front; a file whose own transfer syntax was accepted is sent from disk in chunks,
    as it is encoded (pynetdicom's ``STORE_SEND_CHUNKED_DATASET``), so a long video's
    result is never held in memory; a file sent in a fallback syntax is decoded first.

    Raises
    ------
    DispatchError
        The association failed, or any file got a failure status; the message lists
        the SOP Instance UIDs that were not stored (warnings count as stored).
    """
    if not paths:
        return
    headers = [dcmread(p, stop_before_pixels=True) for p in paths]
    wanted: dict[str, list[str]] = {}
    for ds in headers:
        syntaxes = wanted.setdefault(str(ds.SOPClassUID), [])
        ts = str(ds.file_meta.TransferSyntaxUID)
        if ts not in syntaxes:
            syntaxes.append(ts)
    ae = _ae(calling_ae, timeouts or SendTimeouts())
    contexts = []
    for sop_class, syntaxes in wanted.items():
        native = [t for t in syntaxes if t in (EXPLICIT_LE, IMPLICIT_LE)]
        for ts in syntaxes:
            if ts not in native:
                contexts.append(build_context(sop_class, [ts]))
        contexts.append(build_context(sop_class, native or [EXPLICIT_LE]))
    if len(contexts) > 128:
        raise DispatchError(f"too many presentation contexts ({len(contexts)}); split the batch")
    ae.requested_contexts = contexts
    try:
        assoc = _associate(ae, destination)
    except ConfigError as exc:  # a certificate file removed or replaced since the start
        raise DispatchError(str(exc)) from None
    if not assoc.is_established:
        hint = " (TLS: the log says why the handshake failed)" if destination.tls is not None else ""
        raise DispatchError(f"association to {_describe(destination)} failed{hint}")
    accepted = {(str(c.abstract_syntax), str(c.transfer_syntax[0])) for c in assoc.accepted_contexts}
    _config.STORE_SEND_CHUNKED_DATASET = True  # applies to paths only; datasets are sent as before
    failed: list[str] = []
    try:
        for path, ds in zip(paths, headers, strict=True):
            as_encoded = (str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) in accepted
            status = assoc.send_c_store(str(path) if as_encoded else dcmread(path))
            code = getattr(status, "Status", None) if status else None
            if code is None or not (code == 0x0000 or 0xB000 <= code <= 0xBFFF):
                failed.append(f"{ds.SOPInstanceUID} ({'no response' if code is None else hex(code)})")
    finally:
        if assoc.is_established:
            assoc.release()
    if failed:
        raise DispatchError(f"{destination.name} did not store: {', '.join(failed)}")
    log.info("sent %d objects to %s", len(paths), destination.name)
