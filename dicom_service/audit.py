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
- every TLS handshake the DICOM TLS listener refused on a certificate (``dicom-tls``):
  the peer's address and OpenSSL's reason;
- every delivery of results to a destination (``dicom-send``): the destination, the
  study, the number of objects, and whether it succeeded;
- the node's start and stop (``application``): the system user that ran it.

Rows hold UIDs, AE titles, addresses and staff names, never a patient's name, ID or birth
date (the stored headers hold those; :mod:`dicom_service.media.instance_header` reads
them on demand). The trail is kept when a study is removed (retention, ``DELETE
/studies``): it is the record of what happened to it; rows older than
``storage.audit_days`` are removed (0, the default, keeps them all).
``dicom-service audit`` prints it; with ``audit_repository`` set, the rows also go to
the clinic's audit record repository as DICOM audit messages (:mod:`dicom_service.atna`).

Writing a row never fails or holds up the request or the association it records: rows
go through a bounded queue to one writer thread, and a row that cannot be written (a full
disk, a full queue) is logged as a warning and counted in :attr:`AuditTrail.lost`.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from dicom_service.sqlite_db import Database

log = logging.getLogger(__name__)

#: The trail's file in the storage folder.
AUDIT_FILE = "audit.sqlite3"

#: The trail's tables: its rows (``events``) and, per audit record repository, the last row
#: sent there (``forwarded``, kept by :mod:`dicom_service.atna.forwarder`).
SCHEMA = """
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
CREATE TABLE IF NOT EXISTS forwarded (
    repository TEXT PRIMARY KEY,
    last_id INTEGER NOT NULL
);
"""

#: The kinds of row.
KINDS = ("http", "dicom-association", "dicom-tls", "dicom-send", "application")
#: Rows waiting for the writer at most; beyond, rows are lost (and counted).
QUEUE_ROWS = 10_000
#: Rows written in one transaction at most.
BATCH_ROWS = 500
#: Seconds between two removals of rows past ``storage.audit_days``.
PRUNE_SECONDS = 3600.0


def utc_now() -> str:
    """The time now, ISO 8601 UTC with milliseconds (``2026-12-07T22:41:05.123Z``)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def as_trail_time(text: str) -> str:
    """An ISO 8601 date or time as the trail writes times (UTC, milliseconds, ``Z``); a
    time without a zone is UTC.

    Raises
    ------
    ValueError
        Not an ISO 8601 date or time of years 1 to 9999.
    """
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except (ValueError, OverflowError):
        raise ValueError(f"{text!r} is not an ISO 8601 date or time in years 1 to 9999 (e.g. 2026-12-07 or "
                         "2026-12-07T14:30:00+01:00)") from None
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
    """The trail's SQLite file, appended to by one writer thread.

    :meth:`record` only puts the row in a bounded queue, so no request or association
    ever waits on the file (a full disk, a lock held by another program); the writer
    thread writes what is queued in one transaction at a time. A row that does not fit in
    the queue or whose write fails is logged and counted in :attr:`lost`. A trail file
    deleted while the node runs is made again (and that is logged).

    Parameters
    ----------
    path : Path
        The database file (created if missing).
    durable : bool
        ``synchronous=FULL`` when True (``storage.fsync``), else ``NORMAL``.
    queue_size : int
        Rows waiting at most.
    """

    def __init__(self, path: Path, *, durable: bool = True, queue_size: int = QUEUE_ROWS,
                 keep_days: float = 0.0) -> None:
        self.path = path
        self.keep_days = keep_days
        self._last_prune = 0.0
        self._durable = durable
        self._db = Database(path, SCHEMA, durable=durable)
        self._inode = file_inode(path)
        self._queue: queue.Queue[AuditEvent | None] = queue.Queue(maxsize=queue_size)
        self._lost_lock = threading.Lock()
        self._written = threading.Condition()
        self._pending = 0
        #: Rows that could not be written since the start (each logged, at most once a minute).
        self.lost = 0
        self._last_warning = 0.0
        self._listeners: list[Callable[[], None]] = []
        self._thread = threading.Thread(target=self._write_loop, name="audit-writer", daemon=True)
        self._thread.start()

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` (on the writer thread; it must not block) after each write of
        rows: an audit forwarder waits on it."""
        self._listeners.append(listener)

    def record(self, event: AuditEvent) -> None:
        """Queue ``event`` for the writer; never blocks, never raises."""
        with self._written:
            self._pending += 1
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self._done(1)
            self._lose(1, f"the queue of {self._queue.maxsize} rows is full")

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every row queued so far is written (or lost); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._written:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._written.wait(left)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, stop the writer and close the file (idempotent)."""
        if self._thread.is_alive():
            self.flush(timeout)
            try:
                self._queue.put(None, timeout=timeout)
            except queue.Full:  # still filling (a request beside the stop): the daemon thread ends with us
                log.warning("audit trail: closed with rows still queued")
            self._thread.join(timeout)
        self._db.close()

    def forget_forwarding(self) -> None:
        """Drop the audit forwarder's position (a node started without an audit record
        repository: no row waits to be sent, so :meth:`prune` removes old rows freely)."""
        try:
            with self._db.transaction() as conn:
                waiting = conn.execute("SELECT COUNT(*) FROM events WHERE id > (SELECT MIN(last_id) FROM forwarded)"
                                       ).fetchone()[0]
                conn.execute("DELETE FROM forwarded")
            if waiting:
                log.warning("audit trail: %d row(s) had not reached the audit record repository; audit_repository "
                            "is not set, so they will not be sent (dicom-service audit --format atna prints them)",
                            waiting)
        except sqlite3.Error as error:
            log.warning("audit trail: the forwarding position could not be dropped (%s)", type(error).__name__)

    # ------------------------------------------------------------------ writer thread
    def prune(self, now: datetime | None = None) -> int:
        """Delete the rows older than :attr:`keep_days` (0: none) but those an audit
        forwarder has not sent yet; returns how many. The writer thread does it at start
        and about once an hour."""
        if self.keep_days <= 0:
            return 0
        cutoff = ((now or datetime.now(UTC)) - timedelta(days=self.keep_days)).isoformat(
            timespec="milliseconds").replace("+00:00", "Z")
        with self._db.transaction() as conn:
            # rows an audit forwarder has not sent yet stay (its position: the last row sent)
            sent = "COALESCE((SELECT MIN(last_id) FROM forwarded), 9223372036854775807)"
            removed = conn.execute(f"DELETE FROM events WHERE time < ? AND id <= {sent}", (cutoff,)).rowcount
            kept = conn.execute("SELECT COUNT(*) FROM events WHERE time < ?", (cutoff,)).fetchone()[0]
        if removed:
            log.info("audit trail: %d row(s) older than %g days removed (storage.audit_days)", removed,
                     self.keep_days)
        if kept:
            log.warning("audit trail: %d row(s) older than %g days kept: the audit record repository has not "
                        "received them yet", kept, self.keep_days)
        return removed

    def _prune_when_due(self) -> None:
        if self.keep_days > 0 and time.monotonic() - self._last_prune >= PRUNE_SECONDS:
            self._last_prune = time.monotonic()
            try:
                self.prune()
            except Exception as error:  # noqa: BLE001 - pruning fails nothing; it is tried again later
                log.warning("audit trail: old rows could not be removed (%s)", type(error).__name__)

    def _write_loop(self) -> None:
        while True:
            self._prune_when_due()
            try:
                first = self._queue.get(timeout=PRUNE_SECONDS)
            except queue.Empty:
                continue
            if first is None:
                return
            batch = [first]
            while len(batch) < BATCH_ROWS:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._write(batch)
                    return
                batch.append(item)
            self._write(batch)

    def _write(self, batch: list[AuditEvent]) -> None:
        try:
            self._reopen_if_replaced()
            with self._db.transaction() as conn:
                conn.executemany(
                    "INSERT INTO events (time, kind, actor, client, action, outcome, study_uid, sop_instance_uid,"
                    " job_id, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(e.time, e.kind, e.actor, e.client, e.action, e.outcome, e.study_uid, e.sop_instance_uid,
                      e.job_id, json.dumps(dict(e.detail), sort_keys=True, default=str)) for e in batch])
        except Exception as error:  # noqa: BLE001 - the trail must not fail what it records
            self._lose(len(batch), type(error).__name__)
        else:
            for listener in self._listeners:
                listener()
        finally:
            self._done(len(batch))

    def _reopen_if_replaced(self) -> None:
        """Open the file again if it was deleted or replaced since it was opened (rows
        written to a deleted file would be lost without a word)."""
        inode = file_inode(self.path)
        if inode == self._inode and inode is not None:
            return
        log.warning("audit trail: %s was deleted or replaced while the node ran; it is made again", self.path)
        self._db.close()
        self._db = Database(self.path, SCHEMA, durable=self._durable)
        self._inode = file_inode(self.path)

    def _done(self, rows: int) -> None:
        with self._written:
            self._pending -= rows
            if self._pending <= 0:
                self._written.notify_all()

    def _lose(self, rows: int, why: str) -> None:
        with self._lost_lock:
            self.lost += rows
            now = time.monotonic()
            if now - self._last_warning < 60 and self._last_warning:
                return
            self._last_warning = now
        log.warning("audit trail: %d row(s) could not be written (%s); %d lost since the start", rows, why,
                    self.lost)


def file_inode(path: Path) -> int | None:
    """The inode of ``path``, None if it is missing (a file deleted or replaced has another)."""
    try:
        return path.stat().st_ino
    except OSError:
        return None


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
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    sql = "SELECT * FROM events" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY id DESC LIMIT ?"
    try:
        rows = _query(f"file:{path}?mode=ro", sql, (*params, limit))
    except sqlite3.OperationalError as error:
        wal = path.with_name(path.name + "-wal")
        if "readonly" not in str(error) or (wal.exists() and wal.stat().st_size > 0):
            raise AuditReadError(f"cannot read the audit trail {path} ({error}); read it as the user the node "
                                 "runs as, or while the node runs") from error
        # a stopped node's trail in a folder this user may not write: nothing to recover, read it as it is
        rows = _query(f"file:{path}?mode=ro&immutable=1", sql, (*params, limit))
    return [{**dict(row), "detail": json.loads(row["detail"])} for row in reversed(rows)]


class AuditReadError(Exception):
    """The trail exists but cannot be read by this user now."""


def _query(uri: str, sql: str, params: tuple) -> list[sqlite3.Row]:
    conn = sqlite3.connect(uri, uri=True, timeout=30.0)
    try:
        conn.row_factory = sqlite3.Row
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()
