"""Send the audit trail's rows to the audit record repository, in order, none skipped.

The trail (:mod:`dicom_service.audit`) is the durable queue: the forwarder keeps, in the
trail's own file (table ``forwarded``), the id of the last row it sent, and sends the rows
after it. A repository that is down or refuses the connection is tried again (after 1, 2,
4 ... up to 60 s) without losing anything; rows written while the node was stopped, or
while the repository was away, go when it comes back, also to a repository whose address
was corrected in the settings meanwhile (the position belongs to "the repository", not to
an address). On the first start with a repository the position is the trail's end: older
rows are not sent (``dicom-service audit --format atna`` exports them); a start without
one forgets the position. Rows not yet sent are not removed by ``storage.audit_days``.
A row whose patient cannot be looked up now (the store closed or locked) waits like a
row the repository did not take.

Over TLS and TCP a row counts as sent when its messages are written to the connection
(syslog has no acknowledgement): a kill between the write and the recorded position sends
them again (at least once); a repository that crashes with the messages in its buffer
loses them. Over UDP nothing tells a lost datagram.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time

from dicom_service.atna.messages import LookupUnavailable, MessageBuilder
from dicom_service.atna.settings import AuditRepository
from dicom_service.atna.syslog import SyslogSender, syslog_message
from dicom_service.audit import SCHEMA, AuditTrail, file_inode
from dicom_service.domain import ConfigError
from dicom_service.sqlite_db import Database

log = logging.getLogger(__name__)

#: Rows read and sent at a time.
BATCH_ROWS = 200
#: Longest wait between two tries to reach the repository, seconds.
RETRY_MAX_SECONDS = 60.0
#: Seconds between two looks at the trail when nothing wakes the forwarder.
POLL_SECONDS = 5.0
#: The key of the position in the trail's ``forwarded`` table.
POSITION_KEY = "audit_repository"


class AuditForwarder:
    """A thread that sends the trail's rows as audit messages (module docstring).

    Parameters
    ----------
    trail : AuditTrail
        The node's trail (the forwarder reads its file and is woken by its writes).
    repository : AuditRepository
    builder : MessageBuilder
        Makes a row's messages.
    hostname : str
        HOSTNAME of the syslog messages.
    procid : str
        PROCID of the syslog messages (the process id).
    """

    def __init__(self, trail: AuditTrail, repository: AuditRepository, builder: MessageBuilder, *,
                 hostname: str, procid: str) -> None:
        self.trail = trail
        self.repository = repository
        self.builder = builder
        self.hostname = hostname
        self.procid = procid
        self.sender = SyslogSender(repository)
        #: Messages sent since the start.
        self.forwarded = 0
        #: Rows whose messages could not be made (each logged), skipped.
        self.skipped = 0
        #: Whether the last try to send succeeded (True before the first).
        self.up = True
        self._db = Database(trail.path, SCHEMA, durable=False)
        self._inode = file_inode(trail.path)
        self._position = self._load_position(start_at_end=True)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        #: Set when stop() gave up waiting: the thread then sends and records nothing more.
        self._abandoned = threading.Event()
        self._last_warning = 0.0
        self._thread = threading.Thread(target=self._run, name="audit-forwarder", daemon=True)

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Start sending; the trail wakes the thread after each write."""
        self.trail.add_listener(self._wake.set)
        self._thread.start()
        log.info("audit messages go to %s from trail row %d on", self.repository.address, self._position + 1)

    def stop(self, timeout: float = 5.0) -> None:
        """Send what the trail holds now (one try), then stop; what is not sent stays for
        the next start."""
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():  # still connecting to a silent repository: the daemon thread ends with us
            self._abandoned.set()  # it writes nothing more: not on the connection it is making, nor after
            log.warning("audit forwarder: stopped while the repository at %s did not answer; %d row(s) go at the "
                        "next start", self.repository.address, self.backlog())
            return
        self.sender.close()
        self._db.close()

    def backlog(self) -> int:
        """Rows of the trail not sent yet."""
        try:
            return int(self._db.query("SELECT COUNT(*) FROM events WHERE id > ?", (self._position,))[0][0])
        except sqlite3.Error:
            return 0

    # ------------------------------------------------------------------ position
    def _load_position(self, *, start_at_end: bool) -> int:
        rows = self._db.query("SELECT last_id FROM forwarded WHERE repository = ?", (POSITION_KEY,))
        if rows:
            return int(rows[0][0])
        older = self._db.query("SELECT MIN(last_id) FROM forwarded")[0][0]
        if older is not None:  # a position an earlier version kept per address: carried over
            with self._db.transaction() as conn:
                conn.execute("DELETE FROM forwarded")
            self._save_position(int(older))
            return int(older)
        start = 0
        if start_at_end:
            start = int(self._db.query("SELECT COALESCE(MAX(id), 0) FROM events")[0][0])
        self._save_position(start)
        return start

    def _save_position(self, last_id: int) -> None:
        with self._db.transaction() as conn:
            conn.execute("INSERT INTO forwarded (repository, last_id) VALUES (?, ?) ON CONFLICT(repository) "
                         "DO UPDATE SET last_id = excluded.last_id", (POSITION_KEY, last_id))
        self._position = last_id

    def _reopen_if_replaced(self) -> None:
        """A trail made again (deleted while the node ran) starts at its first row."""
        inode = file_inode(self.trail.path)
        if inode is None or inode == self._inode:
            return
        self._db.close()
        self._db = Database(self.trail.path, SCHEMA, durable=False)
        self._inode = inode
        self._position = self._load_position(start_at_end=False)

    # ------------------------------------------------------------------ thread
    def _run(self) -> None:
        delay = 1.0
        while not self._abandoned.is_set():
            stopping = self._stopping.is_set()
            if stopping and not self.up:
                return  # the repository was away: the rows go at the next start, not in a last wait at stop
            try:
                self._reopen_if_replaced()
                sent = self._send_batch()
            except (OSError, ConfigError, sqlite3.Error, LookupUnavailable) as error:
                self.up = False
                self._warn(f"audit messages cannot be sent to {self.repository.address} ({_reason(error)}); "
                           f"{self.backlog()} row(s) wait in the trail, tried again in {delay:g} s")
                if stopping:
                    return  # what is left goes at the next start
                if not self._stopping.wait(delay):
                    delay = min(delay * 2, RETRY_MAX_SECONDS)
                continue  # asked to stop during the wait: the loop ends at its top
            if not self.up:
                log.info("audit messages reach %s again", self.repository.address)
            self.up, delay = True, 1.0
            if sent:
                continue  # more may wait
            if stopping:
                return
            self._wake.wait(POLL_SECONDS)
            self._wake.clear()

    def _send_batch(self) -> int:
        """Send the next rows; returns how many rows were sent (0: none waited)."""
        rows = self._db.query("SELECT * FROM events WHERE id > ? ORDER BY id LIMIT ?", (self._position, BATCH_ROWS))
        if not rows:
            return 0
        messages = []
        for row in rows:
            record = dict(row)
            try:
                record["detail"] = json.loads(record.get("detail") or "{}")
                made = self.builder.messages(record)
            except LookupUnavailable:
                raise  # the row waits (a store closed or locked now)
            except Exception as error:  # noqa: BLE001 - one odd row must not stop the rest
                self.skipped += 1
                log.warning("audit trail row %d gives no audit message (%s); skipped", record.get("id"),
                            type(error).__name__)
                continue
            messages += [syslog_message(m.xml, timestamp=str(record["time"]), hostname=self.hostname,
                                        outcome=m.outcome, procid=self.procid) for m in made]
        if self._abandoned.is_set():
            return 0
        self.sender.send(messages, abandoned=self._abandoned.is_set)
        self.forwarded += len(messages)
        if self._abandoned.is_set():
            return 0  # sent, not recorded: the next start sends these again (at least once)
        self._save_position(int(rows[-1]["id"]))
        return len(rows)

    def _warn(self, text: str) -> None:
        now = time.monotonic()
        if self._last_warning and now - self._last_warning < 60:
            return
        self._last_warning = now
        log.warning("%s", text)


def _reason(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text[:200]
