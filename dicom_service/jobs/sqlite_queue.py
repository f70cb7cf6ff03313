"""Embedded persistent job queue on SQLite (WAL, synchronous FULL)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from dicom_service.domain import Attempt, Job, JobKind, JobState, Workflow
from dicom_service.jobs.queue import CANCELLED_WHILE_RUNNING, RETIRED_KEY, Backoff, JobNotFound, JobStateConflict
from dicom_service.sqlite_db import Database

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    key TEXT NOT NULL UNIQUE,
    study_uid TEXT NOT NULL,
    workflow TEXT,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    not_before REAL NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    error TEXT,
    payload TEXT NOT NULL,
    result TEXT
);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs(state, kind, not_before);
CREATE TABLE IF NOT EXISTS attempts (
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    number INTEGER NOT NULL,
    worker TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    ok INTEGER,
    error TEXT,
    log TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (job_id, number)
);
"""

_MAX_LOG_CHARS = 64_000
#: The error of an attempt that the service's death (or a kill) ended.
_INTERRUPTED = "interrupted (service stopped)"
#: The error of a job whose last two attempts both ended that way.
_DIED_TWICE = ("the service stopped during this job's last two attempts (killed, or out of memory?): it may be "
               "what stops it, so it is not run again automatically; POST /jobs/{id}/retry runs it again")


class SQLiteJobQueue:
    """:class:`~dicom_service.jobs.queue.JobQueue` on a SQLite file.

    Parameters
    ----------
    path : Path
        Database file.
    backoff : Backoff
        Retry delays.
    """

    def __init__(self, path: Path, backoff: Backoff | None = None) -> None:
        self.db = Database(path, _SCHEMA)
        self.backoff = backoff or Backoff()
        self.changed = threading.Condition()
        self.settled = threading.Condition()  # a running job succeeded or failed

    # ------------------------------------------------------------------ helpers
    def _notify(self) -> None:
        with self.changed:
            self.changed.notify_all()

    def _notify_settled(self) -> None:
        with self.settled:
            self.settled.notify_all()

    def wait_for_job(self, job_id: int, timeout: float) -> Job | None:
        """Block until job ``job_id`` is neither queued nor running, or ``timeout`` seconds
        pass; return it as it is then (None if there is no such job)."""
        deadline = time.monotonic() + timeout
        with self.settled:  # held from the read to the wait: no outcome slips between them
            while True:
                job = self.get(job_id)
                left = deadline - time.monotonic()
                if job is None or job.state not in (JobState.QUEUED, JobState.RUNNING) or left <= 0:
                    return job
                self.settled.wait(left)

    def wait_for_change(self, timeout: float) -> None:
        """Block until a job is added or re-queued, or ``timeout`` seconds pass."""
        with self.changed:
            self.changed.wait(timeout)

    @staticmethod
    def _row_to_job(row, attempts: list[Attempt] | None = None) -> Job:  # noqa: ANN001
        return Job(
            id=row["id"],
            kind=JobKind(row["kind"]),
            key=row["key"],
            study_uid=row["study_uid"],
            workflow=Workflow(row["workflow"]) if row["workflow"] else None,
            state=JobState(row["state"]),
            attempts=row["attempts"],
            max_attempts=row["max_attempts"],
            not_before=row["not_before"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            error=row["error"],
            payload=json.loads(row["payload"]),
            attempt_log=attempts or [],
        )

    # ------------------------------------------------------------------ API
    def enqueue(
        self,
        kind: JobKind,
        key: str,
        *,
        study_uid: str,
        workflow: Workflow | None,
        payload: dict,
        max_attempts: int,
    ) -> Job | None:
        now = time.time()
        with self.db.transaction() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO jobs(kind, key, study_uid, workflow, state, attempts,"
                " max_attempts, not_before, created_at, updated_at, payload)"
                " VALUES (?,?,?,?,?,0,?,?,?,?,?)",
                (
                    kind.value, key, study_uid, workflow.value if workflow else None,
                    JobState.QUEUED.value, max_attempts, now, now, now, json.dumps(payload),
                ),
            )
            if cur.rowcount != 1:
                return None
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (cur.lastrowid,)).fetchone()
        self._notify()
        return self._row_to_job(row)

    def claim(self, kinds: tuple[JobKind, ...], worker: str) -> Job | None:
        now = time.time()
        marks = ",".join("?" for _ in kinds)
        rank = " ".join(f"WHEN ? THEN {i}" for i in range(len(kinds)))  # the kinds' order first
        values = [k.value for k in kinds]
        with self.db.transaction() as conn:
            row = conn.execute(
                f"SELECT * FROM jobs WHERE state = 'queued' AND kind IN ({marks})"
                f" AND not_before <= ? ORDER BY CASE kind {rank} END, not_before, id LIMIT 1",
                (*values, now, *values),
            ).fetchone()
            if row is None:
                return None
            number = row["attempts"] + 1
            conn.execute(
                "UPDATE jobs SET state = 'running', attempts = ?, updated_at = ? WHERE id = ?",
                (number, now, row["id"]),
            )
            conn.execute(
                "INSERT INTO attempts(job_id, number, worker, started_at) VALUES (?,?,?,?)",
                (row["id"], number, worker, now),
            )
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone()
        return self._row_to_job(row)

    def heartbeat_log(self, job_id: int, text: str) -> bool:
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {text}\n"
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE attempts SET log = substr(log || ?, -?) WHERE job_id = ? AND number ="
                " (SELECT attempts FROM jobs WHERE id = ?)",
                (line, _MAX_LOG_CHARS, job_id, job_id),
            )
            row = conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return row is not None and row["state"] == JobState.RUNNING.value

    def _finish_attempt(self, conn, job_id: int, ok: bool, error: str | None, now: float) -> None:  # noqa: ANN001
        conn.execute(
            "UPDATE attempts SET finished_at = ?, ok = ?, error = ? WHERE job_id = ? AND number ="
            " (SELECT attempts FROM jobs WHERE id = ?)",
            (now, int(ok), error, job_id, job_id),
        )

    def complete(self, job_id: int, *, result: dict | None = None) -> bool:
        now = time.time()
        with self.db.transaction() as conn:
            cur = conn.execute(
                "UPDATE jobs SET state = 'succeeded', updated_at = ?, error = NULL, result = ?"
                " WHERE id = ? AND state = 'running'",
                (now, json.dumps(result or {}), job_id),
            )
            done = cur.rowcount == 1
            self._finish_attempt(conn, job_id, done, None if done else CANCELLED_WHILE_RUNNING, now)
        self._notify_settled()
        return done

    def fail(self, job_id: int, error: str, *, permanent: bool = False) -> JobState:
        now = time.time()
        with self.db.transaction() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise JobNotFound(job_id)
            self._finish_attempt(conn, job_id, False, error, now)
            if row["state"] != JobState.RUNNING.value:
                return JobState(row["state"])
            if permanent:
                state, not_before = JobState.FAILED, row["not_before"]
            elif row["attempts"] >= row["max_attempts"]:
                state, not_before = JobState.DEAD, row["not_before"]
            else:
                state, not_before = JobState.QUEUED, now + self.backoff.delay(row["attempts"])
            conn.execute(
                "UPDATE jobs SET state = ?, not_before = ?, error = ?, updated_at = ? WHERE id = ?",
                (state.value, not_before, error, now, job_id),
            )
        if state is JobState.QUEUED:
            self._notify()
        self._notify_settled()
        return state

    def by_key(self, key: str) -> Job | None:
        rows = self.db.query("SELECT id FROM jobs WHERE key = ?", (key,))
        return self.get(rows[0]["id"]) if rows else None

    def get(self, job_id: int) -> Job | None:
        rows = self.db.query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            return None
        attempts = [
            Attempt(
                number=a["number"], started_at=a["started_at"], finished_at=a["finished_at"],
                ok=None if a["ok"] is None else bool(a["ok"]), error=a["error"], log=a["log"],
            )
            for a in self.db.query(
                "SELECT * FROM attempts WHERE job_id = ? ORDER BY number", (job_id,)
            )
        ]
        return self._row_to_job(rows[0], attempts)

    def result(self, job_id: int) -> dict | None:
        """The result recorded by :meth:`complete`, or None."""
        rows = self.db.query("SELECT result FROM jobs WHERE id = ?", (job_id,))
        if not rows or rows[0]["result"] is None:
            return None
        return json.loads(rows[0]["result"])

    def list(
        self, *, state: JobState | None = None, kind: JobKind | None = None,
        study_uid: str | None = None, limit: int = 100, offset: int = 0,
    ) -> list[Job]:
        clauses, params = [], []
        for column, value in (("state", state), ("kind", kind), ("study_uid", study_uid)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value.value if hasattr(value, "value") else value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self.db.query(
            f"SELECT * FROM jobs {where} ORDER BY id DESC LIMIT ? OFFSET ?", (*params, limit, offset)
        )
        return [self._row_to_job(r) for r in rows]

    def _set_state(self, job_id: int, allowed: set[JobState], new: JobState, reset: bool) -> Job:
        now = time.time()
        with self.db.transaction() as conn:
            row = conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise JobNotFound(job_id)
            if JobState(row["state"]) not in allowed:
                raise JobStateConflict(f"job {job_id} is {row['state']}")
            if new is JobState.QUEUED and conn.execute(
                    "SELECT 1 FROM attempts WHERE job_id = ? AND finished_at IS NULL", (job_id,)).fetchone():
                raise JobStateConflict(f"job {job_id} was cancelled while running and its attempt is still "
                                       "stopping; try again in a moment")
            extra = ", max_attempts = attempts + max_attempts" if reset else ""
            conn.execute(
                f"UPDATE jobs SET state = ?, not_before = ?, updated_at = ?{extra} WHERE id = ?",
                (new.value, now, now, job_id),
            )
        self._notify()
        self._notify_settled()  # a cancel ends a wait for the job
        job = self.get(job_id)
        if job is None:  # pragma: no cover - rows are never deleted
            raise JobNotFound(job_id)
        return job

    def retire_study(self, study_uid: str, removed_at: float) -> int:
        with self.db.transaction() as conn:
            cur = conn.execute(
                f"UPDATE jobs SET key = key || '{RETIRED_KEY}' || ? WHERE study_uid = ?"
                f" AND instr(key, '{RETIRED_KEY}') = 0", (f"{removed_at:.6f}", study_uid))
            return cur.rowcount

    def retry(self, job_id: int) -> Job:
        job = self.get(job_id)
        if job is not None and RETIRED_KEY in job.key:
            raise JobStateConflict(f"job {job_id}: its study's files were removed (retention or a delete); "
                                   "send the study again to process it again")
        return self._set_state(
            job_id, {JobState.FAILED, JobState.DEAD, JobState.CANCELLED}, JobState.QUEUED, reset=True
        )

    def cancel(self, job_id: int) -> Job:
        return self._set_state(
            job_id, {JobState.QUEUED, JobState.RUNNING}, JobState.CANCELLED, reset=False
        )

    def release(self, job_id: int, reason: str) -> bool:
        """Put a running job back in the queue without counting the attempt (shutdown)."""
        now = time.time()
        with self.db.transaction() as conn:
            self._finish_attempt(conn, job_id, False, reason, now)
            cur = conn.execute(
                "UPDATE jobs SET state = 'queued', not_before = ?, updated_at = ?,"
                " max_attempts = max_attempts + 1 WHERE id = ? AND state = 'running'",
                (now, now, job_id),
            )
            done = cur.rowcount == 1
        if done:
            self._notify()
        return done

    def recover(self) -> int:
        now = time.time()
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE attempts SET finished_at = ?, ok = 0, error = ? WHERE finished_at IS NULL",
                (now, _INTERRUPTED),
            )
            # a job whose previous attempt also ended with the service's death may be what
            # kills it (out of memory, a crash in a library): it is not run a third time
            again = conn.execute(
                "UPDATE jobs SET state = 'dead', updated_at = ?, error = ? WHERE state = 'running' AND attempts >= 2"
                " AND (SELECT error FROM attempts WHERE attempts.job_id = jobs.id"
                " AND attempts.number = jobs.attempts - 1) = ?",
                (now, _DIED_TWICE, _INTERRUPTED),
            ).rowcount
            cur = conn.execute(
                "UPDATE jobs SET state = 'queued', not_before = ?, updated_at = ?,"
                " max_attempts = max(max_attempts, attempts + 1) WHERE state = 'running'",
                (now, now),
            )
            count = cur.rowcount
        if again:
            self._notify_settled()
        if count:
            self._notify()
        return count

    def counts(self) -> dict[str, int]:
        rows = self.db.query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
        out = {s.value: 0 for s in JobState}
        out.update({r["state"]: int(r["n"]) for r in rows})
        return out

    def kind_counts(self) -> dict[tuple[str, str], int]:
        rows = self.db.query("SELECT kind, state, COUNT(*) AS n FROM jobs GROUP BY kind, state")
        return {(r["kind"], r["state"]): int(r["n"]) for r in rows}

    def attempt_seconds(self) -> dict[tuple[str, bool], tuple[int, float]]:
        rows = self.db.query(
            "SELECT j.kind AS kind, a.ok AS ok, COUNT(*) AS n, SUM(a.finished_at - a.started_at) AS s"
            " FROM attempts a JOIN jobs j ON j.id = a.job_id WHERE a.finished_at IS NOT NULL"
            " GROUP BY j.kind, a.ok")
        return {(r["kind"], bool(r["ok"])): (int(r["n"]), float(r["s"] or 0.0)) for r in rows}

    def seconds_until_due(self, kinds: tuple[JobKind, ...]) -> float | None:
        marks = ",".join("?" for _ in kinds)
        rows = self.db.query(
            f"SELECT MIN(not_before) AS t FROM jobs WHERE state = 'queued' AND kind IN ({marks})",
            tuple(k.value for k in kinds),
        )
        if not rows or rows[0]["t"] is None:
            return None
        return max(0.0, rows[0]["t"] - time.time())

    def close(self) -> None:
        """Close the database."""
        self.db.close()
