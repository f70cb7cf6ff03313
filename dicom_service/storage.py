"""Instance store and index: the only module that knows where files lie.

Layout under the storage root::

    instances/<study>/<series>/<sop>.dcm   received instances, bytes as received
    results/<job id>/<sop>.dcm             result objects waiting for / after dispatch
    tmp/                                   partial writes (same file system, renamed)
    index.sqlite3                          instance and study index

Every UID is validated before it becomes a path component. A study's instances and its
jobs' results leave only through :meth:`InstanceStore.purge_study` (retention, or a
user's delete), which holds the study's lock (:meth:`InstanceStore.study_lock`) as
:meth:`InstanceStore.store` does, so an instance received while its study is purged is
either purged with it or kept whole. Routing and the checks before a removal hold it too.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from dicom_service.domain import InstanceMeta, StorageFullError
from dicom_service.sqlite_db import Database
from dicom_service.uids import validate_uid

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    modality TEXT NOT NULL,
    body_part TEXT NOT NULL,
    calling_ae TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    received_at REAL NOT NULL,
    routed INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_uid);
CREATE TABLE IF NOT EXISTS own_results (
    sop_instance_uid TEXT PRIMARY KEY,
    job_id INTEGER NOT NULL,
    path TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    first_received_at REAL NOT NULL,
    last_received_at REAL NOT NULL,
    pending INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS purge_files (
    path TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS purged_studies (
    study_uid TEXT PRIMARY KEY,
    purged_at REAL NOT NULL,
    reason TEXT NOT NULL,
    instances INTEGER NOT NULL,
    results INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
"""

#: Stripes of the per-study locks (a study's stores, its routing and its removal exclude each other).
_LOCK_STRIPES = 64


@dataclass(frozen=True)
class StudySummary:
    """A study held by the node: instance count and bytes, arrival times (epoch seconds),
    and whether it still waits for routing."""

    study_uid: str
    instances: int
    bytes: int
    first_received_at: float
    last_received_at: float
    pending: bool


@dataclass(frozen=True)
class PurgeReport:
    """What :meth:`InstanceStore.purge_study` removed."""

    study_uid: str
    reason: str
    purged_at: float
    instances: int
    results: int
    bytes: int


@dataclass(frozen=True)
class StoreOutcome:
    """Result of :meth:`InstanceStore.store`: ``new`` is False for a re-sent instance."""

    meta: InstanceMeta
    new: bool


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class InstanceStore:
    """Durable instance storage with a SQLite index.

    Parameters
    ----------
    root : Path
        Storage folder (created if missing).
    min_free_bytes : int
        Free-space floor; :meth:`store` raises :class:`StorageFullError` below it.
    fsync : bool
        Flush each file and its folder to disk before :meth:`store` returns.
    """

    def __init__(self, root: Path, *, min_free_bytes: int = 0, fsync: bool = True) -> None:
        self.root = root.resolve()
        self.min_free_bytes = min_free_bytes
        self.fsync = fsync
        for sub in ("instances", "results", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.db = Database(self.root / "index.sqlite3", _SCHEMA, durable=fsync)
        self._known_dirs: set[Path] = set()
        self._study_locks = [threading.RLock() for _ in range(_LOCK_STRIPES)]
        self._clean_tmp()
        self._finish_purges()  # one a kill interrupted

    # ------------------------------------------------------------------ space
    def free_bytes(self) -> int:
        """Free bytes on the storage volume."""
        return shutil.disk_usage(self.root).free

    def has_space(self) -> bool:
        """True while free space is above the floor."""
        return self.free_bytes() >= self.min_free_bytes

    # ------------------------------------------------------------------ writing
    def instance_path(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
        """Path of an instance; every UID is validated first."""
        study = validate_uid(study_uid, "StudyInstanceUID")
        series = validate_uid(series_uid, "SeriesInstanceUID")
        sop = validate_uid(sop_instance_uid, "SOPInstanceUID")
        return self.root / "instances" / study / series / f"{sop}.dcm"

    def _write_file(self, target: Path, chunks: list[bytes] | tuple[bytes, ...] | Callable[[BinaryIO], None]
                    ) -> int:
        """Write a file atomically (tmp file + fsync + rename + fsync of the folder): the
        ``chunks`` of bytes, or whatever ``chunks(file)`` writes. Returns its size."""
        if target.parent not in self._known_dirs:
            target.parent.mkdir(parents=True, exist_ok=True)
            self._known_dirs.add(target.parent)
        tmp = self.root / "tmp" / f"{target.name}.{os.getpid()}.{time.monotonic_ns()}"
        try:
            with open(tmp, "wb") as fh:
                if callable(chunks):
                    chunks(fh)
                else:
                    for chunk in chunks:
                        fh.write(chunk)
                size = fh.tell()
                if self.fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, target)
        if self.fsync:
            _fsync_dir(target.parent)
        return size

    def store(self, meta: InstanceMeta, chunks: list[bytes] | tuple[bytes, ...]) -> StoreOutcome:
        """Store one received instance, durably, once.

        Parameters
        ----------
        meta : InstanceMeta
            Identifiers of the instance; ``meta.path`` is ignored and replaced.
        chunks : sequence of bytes
            The complete DICOM file (preamble, meta header, data set as received).

        Returns
        -------
        StoreOutcome
            ``new`` is False when this SOP Instance UID was already stored: the file is
            not written again and the study is not marked as changed.

        Raises
        ------
        InvalidUIDError
            A UID is malformed (nothing is written).
        StorageFullError
            Free space is below the floor.
        """
        path = self.instance_path(meta.study_uid, meta.series_uid, meta.sop_instance_uid)
        with self.study_lock(meta.study_uid):
            return self._store_locked(meta, path, chunks)

    def study_lock(self, study_uid: str) -> threading.RLock:
        """The (reentrant) lock a study's stores and its purge hold: hold it to check and
        remove a study, or to route it, as one step that no store of it interleaves."""
        return self._study_locks[hash(study_uid) % _LOCK_STRIPES]

    def _store_locked(self, meta: InstanceMeta, path: Path, chunks: list[bytes] | tuple[bytes, ...]) -> StoreOutcome:
        known = self.db.query(
            "SELECT path FROM instances WHERE sop_instance_uid = ?1"
            " UNION ALL SELECT path FROM own_results WHERE sop_instance_uid = ?1",
            (meta.sop_instance_uid,),
        )
        if known and (known[0]["path"] != str(path) or Path(known[0]["path"]).is_file()):
            # Already stored, or one of our own results sent back to us (e.g. by a PACS
            # routing rule): acknowledge it, but never store or process it again.
            return StoreOutcome(_replace_path(meta, Path(known[0]["path"])), new=False)
        if known:  # indexed, but its file is gone (removed by hand?): store it again, as it was
            log.warning("instance %s was indexed without its file: stored again", meta.sop_instance_uid)
        if not self.has_space():
            raise StorageFullError("storage is below its free-space floor")
        size = self._write_file(path, chunks)
        now = time.time()
        with self.db.transaction() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO instances VALUES (?,?,?,?,?,?,?,?,?,?,?,0)",
                (
                    meta.sop_instance_uid, meta.study_uid, meta.series_uid, meta.sop_class_uid,
                    meta.transfer_syntax_uid, meta.modality, meta.body_part, meta.calling_ae,
                    str(path), size, now,
                ),
            )
            new = cur.rowcount == 1
            if new:
                conn.execute(
                    "INSERT INTO studies(study_uid, first_received_at, last_received_at, pending)"
                    " VALUES (?,?,?,1) ON CONFLICT(study_uid) DO UPDATE SET"
                    " last_received_at = excluded.last_received_at, pending = 1",
                    (meta.study_uid, now, now),
                )
        return StoreOutcome(_replace_path(meta, path), new=new)

    def write_result(self, job_id: int, sop_instance_uid: str, data: bytes | Callable[[BinaryIO], None]) -> Path:
        """Durably write a result object of a job and remember it as ours; returns its path.

        ``data`` is the file's bytes, or a function that writes them to the file it is
        given (so a large object streams to disk rather than being built in memory)."""
        sop = validate_uid(sop_instance_uid, "SOPInstanceUID")
        target = self.root / "results" / str(int(job_id)) / f"{sop}.dcm"
        self._write_file(target, (data,) if isinstance(data, bytes) else data)
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO own_results VALUES (?,?,?)", (sop, int(job_id), str(target))
            )
        return target

    # ------------------------------------------------------------------ reading
    def study_instances(self, study_uid: str) -> list[InstanceMeta]:
        """Every indexed instance of a study, ordered by series then arrival."""
        rows = self.db.query(
            "SELECT * FROM instances WHERE study_uid = ? ORDER BY series_uid, received_at",
            (study_uid,),
        )
        return [_row_to_meta(r) for r in rows]

    def instance(self, sop_instance_uid: str) -> InstanceMeta | None:
        """One instance by SOP Instance UID, or None."""
        rows = self.db.query("SELECT * FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,))
        return _row_to_meta(rows[0]) if rows else None

    def stable_studies(self, quiet_seconds: float, now: float | None = None) -> list[str]:
        """Pending studies with no new instance for at least ``quiet_seconds``."""
        limit = (time.time() if now is None else now) - quiet_seconds
        rows = self.db.query(
            "SELECT study_uid FROM studies WHERE pending = 1 AND last_received_at <= ?"
            " ORDER BY last_received_at",
            (limit,),
        )
        return [r["study_uid"] for r in rows]

    def unrouted_instances(self, study_uid: str) -> list[InstanceMeta]:
        """Instances of a study that no job has been created for yet."""
        rows = self.db.query(
            "SELECT * FROM instances WHERE study_uid = ? AND routed = 0 ORDER BY series_uid, received_at",
            (study_uid,),
        )
        return [_row_to_meta(r) for r in rows]

    def mark_routed(self, study_uid: str, sop_instance_uids: list[str], up_to: float) -> None:
        """Mark instances as routed and clear the study's pending flag, unless an
        instance arrived after ``up_to`` (then the study stays pending)."""
        with self.db.transaction() as conn:
            conn.executemany(
                "UPDATE instances SET routed = 1 WHERE sop_instance_uid = ?",
                [(s,) for s in sop_instance_uids],
            )
            conn.execute(
                "UPDATE studies SET pending = 0 WHERE study_uid = ? AND last_received_at <= ?",
                (study_uid, up_to),
            )

    def next_stable_time(self, quiet_seconds: float) -> float | None:
        """Epoch time at which the next pending study becomes stable, or None."""
        rows = self.db.query("SELECT MIN(last_received_at) AS t FROM studies WHERE pending = 1")
        if not rows or rows[0]["t"] is None:
            return None
        return float(rows[0]["t"]) + quiet_seconds

    def counts(self) -> dict[str, int]:
        """Numbers of instances and studies (for health and metrics)."""
        inst = self.db.query("SELECT COUNT(*) AS n FROM instances")[0]["n"]
        studies = self.db.query("SELECT COUNT(*) AS n FROM studies")[0]["n"]
        return {"instances": int(inst), "studies": int(studies)}

    # ------------------------------------------------------------------ studies and their removal
    def studies(self, *, study_uid: str | None = None, limit: int = 100, offset: int = 0,
                received_before: float | None = None, pending: bool | None = None) -> list[StudySummary]:
        """Studies held, the most recently received first (filters: one study, last
        received before an epoch time, pending or not)."""
        clauses, params = [], []
        for clause, value in (("s.study_uid = ?", study_uid), ("s.last_received_at <= ?", received_before),
                              ("s.pending = ?", None if pending is None else int(pending))):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        rows = self.db.query(
            "SELECT s.study_uid, s.first_received_at, s.last_received_at, s.pending,"
            " COUNT(i.sop_instance_uid) AS n, COALESCE(SUM(i.size), 0) AS bytes"
            " FROM studies s LEFT JOIN instances i ON i.study_uid = s.study_uid"
            f" {'WHERE ' + ' AND '.join(clauses) if clauses else ''}"
            " GROUP BY s.study_uid ORDER BY s.last_received_at DESC LIMIT ? OFFSET ?",
            (*params, limit, offset))
        return [StudySummary(r["study_uid"], int(r["n"]), int(r["bytes"]), float(r["first_received_at"]),
                             float(r["last_received_at"]), bool(r["pending"])) for r in rows]

    def purged(self, study_uid: str) -> PurgeReport | None:
        """The last purge of a study, or None if it was never purged."""
        rows = self.db.query("SELECT * FROM purged_studies WHERE study_uid = ?", (study_uid,))
        if not rows:
            return None
        r = rows[0]
        return PurgeReport(r["study_uid"], r["reason"], float(r["purged_at"]), int(r["instances"]),
                           int(r["results"]), int(r["bytes"]))

    def purge_study(self, study_uid: str, job_ids: list[int], reason: str) -> PurgeReport:
        """Delete a study's instances and the results of ``job_ids`` (its jobs), and record
        the purge (:meth:`purged`).

        One transaction removes the index rows and journals the folders to delete
        (``purge_files``: the study's, and each job's results); they go after it, and the
        journal with them. A purge that a
        kill interrupts is finished when the store opens next (:meth:`_finish_purges`),
        before anything is received, so the index never names a file that is gone. The
        UIDs of our own results stay known (``own_results``), so a PACS that sends them
        back is still acknowledged without processing them. The caller decides that the
        study may go (``retention.py``), holding :meth:`study_lock` from its checks to here.
        """
        study_dir = self.root / "instances" / validate_uid(study_uid, "StudyInstanceUID")
        with self.study_lock(study_uid):
            instances = self.db.query("SELECT size FROM instances WHERE study_uid = ?", (study_uid,))
            marks = ",".join("?" * len(job_ids))
            results = self.db.query(f"SELECT path FROM own_results WHERE job_id IN ({marks})",
                                    tuple(job_ids)) if job_ids else []
            # every instance lies under the study's folder, every result under its job's
            folders = [study_dir, *(self.root / "results" / str(int(j)) for j in job_ids)]
            removed = sum(int(row["size"]) for row in instances) + sum(
                p.stat().st_size for p in (Path(row["path"]) for row in results) if p.is_file())
            report = PurgeReport(study_uid, reason, time.time(), len(instances), len(results), removed)
            with self.db.transaction() as conn:
                conn.execute("DELETE FROM instances WHERE study_uid = ?", (study_uid,))
                conn.execute("DELETE FROM studies WHERE study_uid = ?", (study_uid,))
                conn.executemany("INSERT INTO purge_files VALUES (?)", [(str(f),) for f in folders])
                conn.execute("INSERT OR REPLACE INTO purged_studies VALUES (?,?,?,?,?,?)",
                             (study_uid, report.purged_at, reason, report.instances, report.results, report.bytes))
            self._finish_purges(folders)
        return report

    def _finish_purges(self, folders: list[Path] | None = None) -> None:
        """Delete folders the purge journal lists, then their rows: ``folders`` (one purge's
        own), or all of them (at open, after a kill). A purge never finishes another's: that
        one holds another study's lock, and once it is released, a store may put a new copy
        of its study in the same folder."""
        if folders is None:
            folders = [Path(row["path"]) for row in self.db.query("SELECT path FROM purge_files")]
        for path in folders:
            shutil.rmtree(path, ignore_errors=True)
            self._known_dirs.discard(path)
            for known in list(self._known_dirs):  # list() copies in one step; other studies' stores add to it
                if path in known.parents:
                    self._known_dirs.discard(known)
        if folders:
            with self.db.transaction() as conn:
                conn.executemany("DELETE FROM purge_files WHERE path = ?", [(str(f),) for f in folders])

    # ------------------------------------------------------------------ housekeeping
    def _clean_tmp(self) -> None:
        """Remove partial writes left by a killed process (never acknowledged)."""
        for leftover in (self.root / "tmp").iterdir():
            if leftover.is_file():
                leftover.unlink()
                log.info("removed partial write %s left by an earlier run", leftover.name)

    def close(self) -> None:
        """Close the index."""
        self.db.close()


def _replace_path(meta: InstanceMeta, path: Path) -> InstanceMeta:
    return InstanceMeta(
        meta.study_uid, meta.series_uid, meta.sop_instance_uid, meta.sop_class_uid,
        meta.transfer_syntax_uid, meta.modality, meta.body_part, meta.calling_ae, path,
    )


def _row_to_meta(row) -> InstanceMeta:  # noqa: ANN001 - sqlite3.Row
    return InstanceMeta(
        study_uid=row["study_uid"],
        series_uid=row["series_uid"],
        sop_instance_uid=row["sop_instance_uid"],
        sop_class_uid=row["sop_class_uid"],
        transfer_syntax_uid=row["transfer_syntax_uid"],
        modality=row["modality"],
        body_part=row["body_part"],
        calling_ae=row["calling_ae"],
        path=Path(row["path"]),
    )
