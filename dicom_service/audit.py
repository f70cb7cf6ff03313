"""The audit trail: who did what with which study, kept in ``<storage>/audit.sqlite3``.

A clinic has to be able to say who looked at a patient's images and who changed what the
AI found. The node records, one row each:

- every HTTP request to the API but its health, metrics and static pages (``http``): the
  caller (:class:`~dicom_service.api.auth.Caller`'s label: a person's name, ``service
  token N`` or ``unauthenticated`` for a refused token), the client's address, method,
  path and status, and the study, instance or job it concerned;
- every DICOM association that asked to associate (``dicom-association``): the calling
  AE title, the peer's address, whether TLS carried it, how it ended (released, aborted,
  rejected) and what it stored (new, duplicate and refused instances, the studies);
- every delivery of results to a destination (``dicom-send``): the destination, the
  study, the number of objects, and whether it succeeded.

Rows hold UIDs, AE titles, addresses and staff names, never a patient's name, ID or birth
date (the stored headers hold those; :mod:`dicom_service.media.instance_header` reads
them on demand). The trail is kept when a study is removed (retention, ``DELETE
/studies``): it is the record of what happened to it. ``dicom-service audit`` prints it.

Writing a row never fails the request or the association it records: a write that fails
(a full disk) is logged as a warning and counted in :attr:`AuditTrail.lost`.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dicom_service.sqlite_db import Database

log = logging.getLogger(__name__)

#: The trail's file in the storage folder.
AUDIT_FILE = "audit.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    client TEXT NOT NULL DEFAULT '',
    action TEXT NOT NULL,
    outcome TEXT NOT NULL,
    study_uid TEXT,
    sop_instance_uid TEXT,
    job_id INTEGER,
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_time ON events(time);
CREATE INDEX IF NOT EXISTS events_study ON events(study_uid);
CREATE INDEX IF NOT EXISTS events_actor ON events(actor);
"""

#: The kinds of row.
KINDS = ("http", "dicom-association", "dicom-send")


def utc_now() -> str:
    """The time now, ISO 8601 UTC with milliseconds (``2026-12-07T22:41:05.123Z``)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class AuditEvent:
    """One row of the trail.

    Attributes
    ----------
    kind : str
        One of :data:`KINDS`.
    actor : str
        Who: a caller's label (HTTP) or a calling / called AE title (DICOM).
    action : str
        What: ``"GET /instances/{sop_instance_uid}"`` (the route, not the path), ``"C-STORE
        association"``, ``"send"``.
    outcome : str
        How it ended: an HTTP status (``"200"``), ``"released"``, ``"aborted"``,
        ``"rejected"``, ``"succeeded"``, ``"failed"``.
    client : str
        The peer's address (``host`` or ``host:port``); empty if unknown.
    study_uid, sop_instance_uid : str or None
        What it concerned, when that is one study or instance.
    job_id : int or None
        The job it concerned (a correction, a delivery, a request about a job).
    detail : mapping
        Anything else, as JSON (the path with its UIDs, counts, a destination's name).
    time : str
        When (:func:`utc_now` at creation).
    """

    kind: str
    actor: str
    action: str
    outcome: str
    client: str = ""
    study_uid: str | None = None
    sop_instance_uid: str | None = None
    job_id: int | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)
    time: str = field(default_factory=utc_now)


class AuditTrail:
    """The trail's SQLite file, appended to by any thread.

    Parameters
    ----------
    path : Path
        The database file (created if missing).
    durable : bool
        ``synchronous=FULL`` when True (``storage.fsync``), else ``NORMAL``.
    """

    def __init__(self, path: Path, *, durable: bool = True) -> None:
        self.path = path
        self._db = Database(path, _SCHEMA, durable=durable)
        self._lost_lock = threading.Lock()
        #: Rows that could not be written since the start (each was logged).
        self.lost = 0

    def record(self, event: AuditEvent) -> None:
        """Append ``event``; a failure is logged and counted, never raised."""
        try:
            with self._db.transaction() as conn:
                conn.execute(
                    "INSERT INTO events (time, kind, actor, client, action, outcome, study_uid, sop_instance_uid,"
                    " job_id, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (event.time, event.kind, event.actor, event.client, event.action, event.outcome,
                     event.study_uid, event.sop_instance_uid, event.job_id,
                     json.dumps(dict(event.detail), sort_keys=True, default=str)))
        except Exception as error:  # noqa: BLE001 - the trail must not fail what it records
            with self._lost_lock:
                self.lost += 1
            log.warning("audit trail: a %s row could not be written (%s)", event.kind, type(error).__name__)

    def close(self) -> None:
        """Close the file (idempotent)."""
        self._db.close()


def read_events(path: Path, *, since: str | None = None, until: str | None = None, actor: str | None = None,
                study_uid: str | None = None, kind: str | None = None, limit: int = 1000) -> list[dict]:
    """Rows of the trail at ``path``, oldest first, read-only (the node may be running).

    Parameters
    ----------
    path : Path
        The trail's file (``<storage>/audit.sqlite3``).
    since, until : str or None
        ISO 8601 times (UTC; a date alone is its midnight): rows at or after ``since``,
        before ``until``.
    actor, study_uid, kind : str or None
        Only rows of this actor (exact), study or kind.
    limit : int
        At most this many rows (the newest of those that match, listed oldest first).

    Returns
    -------
    list of dict
        Each row with ``detail`` decoded.

    Raises
    ------
    FileNotFoundError
        No trail at ``path`` (the node has not run with this storage folder).
    """
    if not path.exists():
        raise FileNotFoundError(f"no audit trail at {path}")
    where, params = [], []
    for column, op, value in (("time", ">=", since), ("time", "<", until), ("actor", "=", actor),
                              ("study_uid", "=", study_uid), ("kind", "=", kind)):
        if value is not None:
            where.append(f"{column} {op} ?")
            params.append(value)
    sql = "SELECT * FROM events" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY id DESC LIMIT ?"
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)
    try:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(sql, (*params, limit)).fetchall()
    finally:
        conn.close()
    return [{**dict(row), "detail": json.loads(row["detail"])} for row in reversed(rows)]
