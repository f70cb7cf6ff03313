"""The DICOM node: C-ECHO and C-STORE SCP (pynetdicom).

Handlers are plain functions bound with their dependencies; every failure becomes a
DICOM status, never a crashed association. Status codes we return:

=======  =====================================================================
0x0000   stored (also for a re-sent SOP Instance UID: idempotent)
0xA700   out of resources: storage below the free-space floor, or a write failed
0xA900   data set does not match SOP class (class differs from the negotiated
         one, SOP Instance UID differs from the request, or the content does
         not fit the class: no pixel data, wrong samples per pixel)
0xC000   cannot understand: the data set cannot be parsed
0xC001   cannot understand: a UID is malformed (never used in a path)
0xC002   cannot understand: Rows x Columns x frames larger than the pixel data
=======  =====================================================================
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.transport import ThreadedAssociationServer

from dicom_service.audit import AuditTrail
from dicom_service.config import DicomSettings
from dicom_service.domain import ConfigError, InstanceMeta, InvalidUIDError, MediaError, StorageFullError
from dicom_service.media.pixels import check_pixel_consistency
from dicom_service.node.association_audit import AssociationAudit
from dicom_service.node.contexts import (
    EXPLICIT_LE,
    IMPLICIT_LE,
    INPUT_CLASSES,
    RESULT_CLASSES,
    VERIFICATION,
    InputClass,
    input_class,
)
from dicom_service.node.transport import FastRequestHandler, TlsAssociationServer, part10_header
from dicom_service.storage import InstanceStore
from dicom_service.tls_reload import ReloadingServerContext
from dicom_service.uids import validate_uid

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_MISMATCH = 0xA900
STATUS_CANNOT_PARSE = 0xC000
STATUS_INVALID_UID = 0xC001
STATUS_PIXEL_MISMATCH = 0xC002


@dataclass(frozen=True)
class StoredEvent:
    """Passed to the on-stored callback after an instance is durable."""

    meta: InstanceMeta
    new: bool


class GatedAE(AE):
    """An :class:`~pynetdicom.ae.ApplicationEntity` that can refuse new associations.

    pynetdicom compares the number of active acceptor associations with
    :attr:`maximum_associations` during negotiation; while ``accepting()`` is False we
    report a limit of -1, so every new association is rejected with *transient,
    local-limit-exceeded* (0x02, 0x03, 0x02): the peer is told to try again later.
    """

    def __init__(self, ae_title: str, accepting: Callable[[], bool]) -> None:
        super().__init__(ae_title=ae_title)
        self._accepting = accepting

    @property  # type: ignore[override]
    def maximum_associations(self) -> int:
        if not self._accepting():
            log.warning("refusing association: storage is below its free-space floor")
            return -1
        return self._maximum_associations

    @maximum_associations.setter
    def maximum_associations(self, value: int) -> None:
        self._maximum_associations = max(1, int(value))


def _check_content(ds: Dataset, sop_class_uid: str) -> str | None:
    """Return why ``ds`` does not fit its SOP class, or None if it fits."""
    cls = input_class(sop_class_uid)
    if cls is None:  # pragma: no cover - contexts only admit known classes
        return "SOP class not accepted"
    if cls.family == "result":
        return None  # stored as received, never processed (routing ignores these classes)
    if "PixelData" not in ds:
        return "no Pixel Data"
    for keyword in ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "PhotometricInterpretation"):
        if keyword not in ds:
            return f"missing {keyword}"
    if int(ds.SamplesPerPixel) not in cls.samples_per_pixel:
        return f"SamplesPerPixel {int(ds.SamplesPerPixel)} not allowed for {cls.name}"
    if cls.family == "radiograph" and str(ds.PhotometricInterpretation) not in ("MONOCHROME1", "MONOCHROME2"):
        return f"PhotometricInterpretation {ds.PhotometricInterpretation} not allowed for {cls.name}"
    return _frame_count_problem(ds, cls)


def _frame_count_problem(ds: Dataset, cls: InputClass) -> str | None:
    """Why Number of Frames does not fit ``cls`` (a multi-frame IOD needs a positive one; a
    single-frame IOD has none, or 1), or None. Without it, a video's length is unknown
    before decoding it whole, and its Segmentation cannot say which frame is which."""
    if cls.multi_frame is None:
        return None
    value = ds.get("NumberOfFrames")
    if value is None or value == "":
        return "missing NumberOfFrames" if cls.multi_frame else None
    frames = int(value)  # a malformed value raises: the caller answers 0xC000
    if cls.multi_frame and frames < 1:
        return f"NumberOfFrames {frames} is not a positive integer"
    if not cls.multi_frame and frames != 1:
        return f"NumberOfFrames {frames} in {cls.name}, a single-frame IOD"
    return None


def handle_echo(event: evt.Event) -> int:
    """C-ECHO: always success."""
    log.info("C-ECHO from %s", event.assoc.requestor.ae_title)
    return STATUS_SUCCESS


def handle_store(
    event: evt.Event, store: InstanceStore, on_stored: Callable[[StoredEvent], None]
) -> int | tuple[int, Dataset]:
    """C-STORE: validate, write once durably, then answer.

    Parameters
    ----------
    event : pynetdicom.events.Event
        The C-STORE request event.
    store : InstanceStore
        Where the bytes go.
    on_stored : callable
        Called after the instance is durable (routing notification).
    """
    calling = event.assoc.requestor.ae_title
    context_class = str(event.context.abstract_syntax)
    request_sop = str(event.request.AffectedSOPInstanceUID or "")
    try:
        ds = event.dataset
        sop_class = str(ds.get("SOPClassUID", ""))
        sop_uid = str(ds.get("SOPInstanceUID", ""))
        study = ds.get("StudyInstanceUID", "")
        series = ds.get("SeriesInstanceUID", "")
        modality = str(ds.get("Modality", "") or "")
        body_part = str(ds.get("BodyPartExamined", "") or "")
    except Exception as exc:  # noqa: BLE001 - any parse error is a status, not a crash
        log.warning("C-STORE from %s: cannot parse data set (%s)", calling, type(exc).__name__)
        return STATUS_CANNOT_PARSE
    if not sop_uid or not sop_class:
        log.warning("C-STORE from %s: no SOP Class/Instance UID could be read from the data set (not DICOM, or cut "
                    "short inside an undefined-length element such as encapsulated Pixel Data)", calling)
        return STATUS_CANNOT_PARSE
    try:
        for value, name in ((sop_uid, "SOPInstanceUID"), (study, "StudyInstanceUID"),
                            (series, "SeriesInstanceUID"), (sop_class, "SOPClassUID")):
            validate_uid(value, name)
    except InvalidUIDError as exc:
        log.warning("C-STORE from %s rejected: %s", calling, exc)
        return STATUS_INVALID_UID
    if sop_class != context_class or sop_uid != request_sop:
        log.warning(
            "C-STORE from %s rejected: data set SOP class/instance differs from the request (%s)",
            calling, sop_uid,
        )
        return STATUS_DATASET_MISMATCH
    try:
        problem = _check_content(ds, sop_class)
    except Exception as exc:  # noqa: BLE001 - malformed element values
        log.warning("C-STORE from %s: cannot read image attributes of %s (%s)", calling, sop_uid,
                    type(exc).__name__)
        return STATUS_CANNOT_PARSE
    if problem:
        log.warning("C-STORE from %s rejected %s: does not match its SOP class: %s", calling, sop_uid, problem)
        return STATUS_DATASET_MISMATCH
    try:
        check_pixel_consistency(ds)
    except MediaError as exc:
        log.warning("C-STORE from %s rejected %s: %s", calling, sop_uid, exc)
        return STATUS_PIXEL_MISMATCH
    meta = InstanceMeta(
        study_uid=str(study), series_uid=str(series), sop_instance_uid=sop_uid,
        sop_class_uid=sop_class, transfer_syntax_uid=str(event.context.transfer_syntax),
        modality=modality, body_part=body_part, calling_ae=calling, path=store.root,
    )
    try:
        header = part10_header(sop_class, sop_uid, meta.transfer_syntax_uid, calling)
        outcome = store.store(meta, (header, event.request.DataSet.getvalue()))
    except StorageFullError:
        log.error("C-STORE from %s refused for %s: storage below its free-space floor", calling, sop_uid)
        return STATUS_OUT_OF_RESOURCES
    except OSError as exc:
        log.error("C-STORE from %s: write failed for %s (%s)", calling, sop_uid, exc.strerror)
        return STATUS_OUT_OF_RESOURCES
    log.info("stored %s of study %s from %s (%s)", sop_uid, meta.study_uid, calling,
             "new" if outcome.new else "duplicate")
    on_stored(StoredEvent(outcome.meta, outcome.new))
    return STATUS_SUCCESS


def _set_nodelay(event: evt.Event) -> None:
    """Disable Nagle's algorithm on each accepted connection (avoids 40 ms ACK stalls)."""
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _log_rejected(event: evt.Event) -> None:
    log.warning("association from %s (%s) rejected", event.assoc.requestor.ae_title,
                event.assoc.requestor.address)


def build_ae(settings: DicomSettings, accepting: Callable[[], bool]) -> GatedAE:
    """Build the AE with the accepted presentation contexts and timeouts."""
    ae = GatedAE(settings.ae_title, accepting)
    ae.maximum_associations = settings.max_associations
    ae.acse_timeout = settings.acse_timeout
    ae.dimse_timeout = settings.dimse_timeout
    ae.network_timeout = settings.network_timeout
    ae.maximum_pdu_size = settings.max_pdu
    ae.require_calling_aet = list(settings.accepted_calling_aets)
    if not settings.accepted_calling_aets:
        log.warning("dicom.accepted_calling_aets is empty: associations from ANY calling AE title are accepted")
    ae.add_supported_context(VERIFICATION, [IMPLICIT_LE, EXPLICIT_LE])
    for cls in INPUT_CLASSES + RESULT_CLASSES:
        ae.add_supported_context(cls.uid, list(cls.syntaxes))
    return ae


class DicomNode:
    """The running SCP.

    Parameters
    ----------
    settings : DicomSettings
    store : InstanceStore
    on_stored : callable
        Notified after each durable store.
    audit : AuditTrail or None
        Where each association is recorded (:mod:`dicom_service.audit`); None: nowhere.
    """

    def __init__(
        self, settings: DicomSettings, store: InstanceStore, on_stored: Callable[[StoredEvent], None],
        audit: AuditTrail | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.ae = build_ae(settings, store.has_space)
        self._on_stored = on_stored
        self._audit = audit
        self._servers: dict[str, ThreadedAssociationServer] = {}
        self._lock = threading.Lock()

    @property
    def listening(self) -> bool:
        """True while a server socket is open."""
        return bool(self._servers)

    def _bound_port(self, kind: str) -> int:
        server = self._servers.get(kind)
        if server is None:
            setting = "dicom.plain" if kind == "plain" else "dicom.tls"
            raise RuntimeError(f"no {kind} listener: node not started, or {setting} not configured")
        return int(server.server_address[1])

    @property
    def port(self) -> int:
        """The bound plain port (useful when configured as 0)."""
        return self._bound_port("plain")

    @property
    def tls_port(self) -> int:
        """The bound TLS port (``dicom.tls.port``; useful when configured as 0)."""
        return self._bound_port("tls")

    def start(self) -> None:
        """Bind and serve in background threads: the plain listener (``dicom.plain``) and
        the TLS one (``dicom.tls``), with the same AE, contexts and handlers.

        Raises
        ------
        ConfigError
            When a port cannot be bound (in use, or not ours to take), naming
            ``dicom.port`` or ``dicom.tls.port`` with the address, or when a TLS file
            is missing or unusable (:func:`~dicom_service.tls.server_context`).

        Notes
        -----
        The TLS listener follows renewed files of ``dicom.tls`` without a restart
        (:class:`~dicom_service.tls_reload.ReloadingServerContext`).
        """
        tls = self.settings.tls
        listeners: list[tuple[str, str, int, ReloadingServerContext | None]] = []
        if tls is not None:
            listeners.append(("tls", "dicom.tls.port", tls.port, ReloadingServerContext(tls, "dicom.tls")))
        if self.settings.plain:
            listeners.insert(0, ("plain", "dicom.port", self.settings.port, None))
        with self._lock:
            try:
                for kind, key, port, contexts in listeners:
                    self._servers[kind] = self._serve((self.settings.bind_address, port), key, contexts,
                                                      self._handlers(tls=kind == "tls"))
            except ConfigError:
                self._close_servers()
                raise
        for kind, server in self._servers.items():
            log.info("DICOM node %s listening on %s:%d%s", self.settings.ae_title, self.settings.bind_address,
                     server.server_address[1], " (TLS)" if kind == "tls" else "")

    def _handlers(self, *, tls: bool) -> list:
        """The pynetdicom handlers of one listener; with an audit trail, each association
        is also recorded (:class:`~dicom_service.node.association_audit.AssociationAudit`)."""
        handlers: list = [
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_CONN_OPEN, _set_nodelay),
            (evt.EVT_REJECTED, _log_rejected),
        ]
        if self._audit is None:
            return [*handlers, (evt.EVT_C_STORE, handle_store, [self.store, self._on_stored])]
        audit = AssociationAudit(self._audit, tls=tls, called_ae=self.settings.ae_title)

        def store_and_count(event: evt.Event) -> int | tuple[int, Dataset]:
            def stored(done: StoredEvent) -> None:
                audit.stored(event.assoc, done.meta.study_uid, done.new)
                self._on_stored(done)

            status = handle_store(event, self.store, stored)
            if (status[0] if isinstance(status, tuple) else status) != STATUS_SUCCESS:
                audit.refused(event.assoc)
            return status

        return [*handlers, (evt.EVT_C_STORE, store_and_count), *audit.handlers()]

    def _serve(self, address: tuple[str, int], key: str, contexts: ReloadingServerContext | None,
               handlers: list) -> ThreadedAssociationServer:
        try:
            server = self.ae.make_server(
                address, evt_handlers=handlers, ssl_context=contexts.current() if contexts is not None else None,
                server_class=TlsAssociationServer, request_handler=FastRequestHandler,
            )
        except OSError as exc:
            raise ConfigError(f"{key}: cannot listen on {address[0]}:{address[1]} "
                              f"(dicom.bind_address, {key}): {exc.strerror or exc}") from None
        if contexts is not None:
            server.context_source = contexts.current  # type: ignore[attr-defined]
            if self._audit is not None:
                audit = AssociationAudit(self._audit, tls=True, called_ae=self.settings.ae_title)
                server.on_refused_certificate = audit.refused_certificate  # type: ignore[attr-defined]
        name = "dicom-tls-acceptor" if contexts is not None else "dicom-acceptor"
        threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
        self.ae._servers.append(server)  # so that AE.shutdown() also stops it
        return server

    def _close_servers(self) -> None:
        for server in self._servers.values():
            server.shutdown()
        self._servers.clear()

    def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop accepting, let in-flight associations finish, abort those still
        running after ``grace_seconds``, and close."""
        with self._lock:
            self._close_servers()
        deadline = time.monotonic() + grace_seconds
        for assoc in list(self.ae.active_associations):
            assoc.join(timeout=max(0.0, deadline - time.monotonic()))
            if assoc.is_alive():
                log.warning("aborting association from %s at shutdown", assoc.requestor.ae_title)
                assoc.abort()
        self.ae.shutdown()
