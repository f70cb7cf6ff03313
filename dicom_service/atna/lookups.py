"""What audit messages name beyond the trail's rows: a study's patient, a destination's
address, this node; and the forwarder of a configured node."""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from dicom_service.atna.forwarder import AuditForwarder
from dicom_service.atna.messages import AuditSource, DestinationLookup, LookupUnavailable, MessageBuilder
from dicom_service.atna.settings import AuditRepository
from dicom_service.audit import AuditTrail
from dicom_service.destination_settings import Destination, DicomWebDestination
from dicom_service.domain import MediaError
from dicom_service.media.instance_header import read_instance_header
from dicom_service.storage import InstanceStore

#: Studies whose Patient ID is remembered at most.
REMEMBERED_STUDIES = 4096


class StudyPatients:
    """The Patient ID of a study the node holds, read from one stored header.

    IDs found are remembered (the newest :data:`REMEMBERED_STUDIES`), so the message of a
    study removed after the node saw it (``DELETE /studies``) still names its patient
    while the node runs. A study stored again (:meth:`forget`) keeps its remembered ID
    while the file it was read from is the same file (inode, size, modification and change
    times in nanoseconds: a file removed and written again at the same path may get the
    same inode back, never the same times); a study removed and sent again, perhaps with a
    corrected Patient ID, is read again.

    Parameters
    ----------
    store : InstanceStore
    """

    def __init__(self, store: InstanceStore, *, size: int = REMEMBERED_STUDIES) -> None:
        self.store = store
        self.size = size
        #: study -> (Patient ID, the file it was read from, that file's signature)
        self._known: OrderedDict[str, tuple[str, Path, tuple[int, ...] | None]] = OrderedDict()
        self._recheck: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, study_uid: str) -> str | None:
        """The study's Patient ID; None when no instance of it is held (or it has none).

        Raises
        ------
        LookupUnavailable
            The store cannot be read now (closed, locked).
        """
        with self._lock:
            known = self._known.get(study_uid)
            recheck = study_uid in self._recheck
            self._recheck.discard(study_uid)
            if known is not None:
                self._known.move_to_end(study_uid)
        if known is not None and (not recheck or _signature(known[1]) == known[2]):
            return known[0]
        try:
            held = self.store.study_instances(study_uid)[:3]
        except (sqlite3.Error, OSError) as error:
            raise LookupUnavailable(f"the instance index cannot be read now ({type(error).__name__})") from error
        for meta in held:
            try:
                patient = read_instance_header(meta.path).patient_id
            except MediaError:
                continue
            if patient:
                with self._lock:
                    self._known[study_uid] = (patient, Path(meta.path), _signature(Path(meta.path)))
                    while len(self._known) > self.size:
                        self._known.popitem(last=False)
                return patient
        return None

    def forget(self, study_uid: str) -> None:
        """The study was stored again: check that its remembered patient still holds."""
        with self._lock:
            if study_uid in self._known:
                self._recheck.add(study_uid)


def _signature(path: Path) -> tuple[int, ...] | None:
    """What tells one file at ``path`` from another written there later; None if missing."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


def destination_lookup(destinations: Sequence[Destination | DicomWebDestination]) -> DestinationLookup:
    """``name -> (AE title or URL, host)`` over the configured destinations."""
    by_name = {d.name: d for d in destinations}

    def lookup(name: str) -> tuple[str, str] | None:
        found = by_name.get(name)
        if isinstance(found, Destination):
            return found.ae_title, found.host
        if isinstance(found, DicomWebDestination):
            return found.url, urlsplit(found.url).hostname or ""
        return None

    return lookup


def make_forwarder(repository: AuditRepository, trail: AuditTrail, store: InstanceStore, *, ae_title: str,
                   destinations: Sequence[Destination | DicomWebDestination]) -> AuditForwarder:
    """The forwarder of a node with AE title ``ae_title`` (not started)."""
    host = socket.gethostname()
    source = AuditSource(source_id=repository.source_id or ae_title, ae_title=ae_title, host=host,
                         site_id=repository.site_id)
    builder = MessageBuilder(source, patient_of=StudyPatients(store) if repository.patient_ids else None,
                             destination=destination_lookup(destinations))
    return AuditForwarder(trail, repository, builder, hostname=host, procid=str(os.getpid()))
