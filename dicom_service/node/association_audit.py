"""One audit row per DICOM association the node accepted or rejected.

:class:`AssociationAudit` counts, per association, the instances stored new, those sent
again (acknowledged without storing) and those refused, with the studies stored, and
writes one ``dicom-association`` row (:mod:`dicom_service.audit`) when the association
ends: released, aborted (by the peer, by a timeout or by the node's shutdown) or rejected.
On the TLS listener, a handshake refused on a certificate (the peer's untrusted, expired or
revoked, or none given) is a ``dicom-tls`` row.
A connection that closes before asking to associate (a health check, a port scan) leaves
no row. The counts live on the pynetdicom ``Association`` object, so nothing is shared
between associations.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from pynetdicom import evt

from dicom_service.audit import AuditEvent, AuditTrail

#: Studies named in one row at most (a row for a larger association gives the count).
MAX_STUDIES_LISTED = 20
_TALLY = "_dicom_service_audit"


@dataclass
class _Tally:
    new: int = 0
    duplicate: int = 0
    refused: int = 0
    studies: list[str] = field(default_factory=list)
    recorded: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


def peer_address(host: str, port: object | None) -> str:
    """``host:port`` as the trail writes a peer, ``[host]:port`` for an IPv6 address."""
    if port is None or port == "":
        return host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _tally(assoc) -> _Tally:  # noqa: ANN001 - pynetdicom Association
    tally = getattr(assoc, _TALLY, None)
    if tally is None:  # handlers of one association run on its own thread
        tally = _Tally()
        setattr(assoc, _TALLY, tally)
    return tally


class AssociationAudit:
    """Writes the association rows of one listener.

    Parameters
    ----------
    trail : AuditTrail
    tls : bool
        Whether this listener is the TLS one (recorded in each row).
    called_ae : str
        The node's AE title.
    """

    def __init__(self, trail: AuditTrail, *, tls: bool, called_ae: str) -> None:
        self.trail = trail
        self.tls = tls
        self.called_ae = called_ae

    def stored(self, assoc, study_uid: str, new: bool) -> None:  # noqa: ANN001 - pynetdicom Association
        """An instance of study ``study_uid`` was stored (``new``) or acknowledged again."""
        tally = _tally(assoc)
        with tally.lock:
            if new:
                tally.new += 1
            else:
                tally.duplicate += 1
            if study_uid not in tally.studies:
                tally.studies.append(study_uid)

    def refused(self, assoc) -> None:  # noqa: ANN001 - pynetdicom Association
        """A C-STORE was answered with a failure status."""
        tally = _tally(assoc)
        with tally.lock:
            tally.refused += 1

    def ended(self, event: evt.Event, outcome: str) -> None:
        """Write the row of ``event.assoc`` (once), which ended with ``outcome``."""
        assoc = event.assoc
        tally = _tally(assoc)
        with tally.lock:
            if tally.recorded:
                return
            tally.recorded = True
            counts = {"new": tally.new, "duplicate": tally.duplicate, "refused": tally.refused}
            studies = list(tally.studies)
        requestor = assoc.requestor
        detail = {"called_ae": self.called_ae, "tls": self.tls, "instances": counts, "studies": len(studies),
                  "study_uids": studies[:MAX_STUDIES_LISTED]}
        self.trail.record(AuditEvent(
            kind="dicom-association", actor=str(requestor.ae_title or "").strip(), action="association",
            outcome=outcome, client=peer_address(requestor.address, requestor.port),
            study_uid=studies[0] if len(studies) == 1 else None, detail=detail))

    def refused_certificate(self, address: object, reason: str, verify_message: str | None) -> None:
        """Write the ``dicom-tls`` row of a TLS handshake that failed on a certificate
        (before any association: no AE title is known)."""
        host, port = address[:2] if isinstance(address, tuple) and len(address) >= 2 else (str(address), None)
        detail = {"called_ae": self.called_ae, "reason": reason[:200]}
        if verify_message:
            detail["verify_message"] = verify_message[:200]
        self.trail.record(AuditEvent(kind="dicom-tls", actor="", action="tls handshake", outcome="refused",
                                     client=peer_address(str(host), port), detail=detail))

    def handlers(self) -> list[tuple[evt.InterventionEvent | evt.NotificationEvent, Callable[[evt.Event], None]]]:
        """The pynetdicom handlers that end an association's row."""
        return [(evt.EVT_RELEASED, lambda event: self.ended(event, "released")),
                (evt.EVT_ABORTED, lambda event: self.ended(event, "aborted")),
                (evt.EVT_REJECTED, lambda event: self.ended(event, "rejected"))]
