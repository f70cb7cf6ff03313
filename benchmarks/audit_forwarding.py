"""Audit forwarding benchmark: how fast a backlog of audit trail rows reaches an audit
record repository (IHE ATNA) once it comes back.

A real node (listener, API, trail; no processing: routing sends every study to
``ignore``) receives ``--studies`` studies over C-STORE; then ``--rows`` trail rows of a
clinic's day are recorded about them (per study: its association, two deliveries, frames
read by a dentist, a correction, a query; a refused token now and then) while the
repository is down. A real ``rsyslogd`` then starts on the repository's port; from the
forwarder's first batch after it (its next try) to the last message in rsyslog's file is
the drain time: rows and messages per second, and the messages' mean size. Each
transport (``--transports``: tls with mutual authentication by a throwaway authority,
tcp) gets a node of its own. The rows go into the trail in batches of 2,000 (its queue
holds 10,000; a faster burst would lose rows, which the run refuses).

The patient of each study is read from one stored header at its first message and then
remembered, as in the node.

Run from the repository root: ``python -m benchmarks.audit_forwarding [--rows 20000]``.
Needs rsyslog and rsyslog-openssl (Debian). Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import hardware
from dicom_service.audit import AuditEvent
from dicom_service.config import load_settings
from dicom_service.service import Service
from tests import builders
from tests.dicomnet import store
from tests.syslog_collector import free_port, running_collector
from tests.tlscerts import make_pki

TOKEN = "bench-token-0123456789abcdef"
DENTIST = "Smith^Anna^^Dr"


def _day(studies: list[tuple[str, str]], rows: int) -> list[AuditEvent]:
    """``rows`` trail rows of a day, cycling over ``(study, sop)`` pairs."""
    events: list[AuditEvent] = []
    while len(events) < rows:
        for index, (study, sop) in enumerate(studies):
            client = f"192.168.1.{20 + index % 30}"
            events += [
                AuditEvent(kind="dicom-association", actor="MODALITY", action="association", outcome="released",
                           client="10.0.0.7:40112", study_uid=study,
                           detail={"instances": {"new": 1, "duplicate": 0, "refused": 0}, "study_uids": [study]}),
                *(AuditEvent(kind="dicom-send", actor="DENTAL_AI", action="send", outcome="succeeded",
                             study_uid=study, detail={"destination": "pacs", "objects": 4, "attempt": 1})
                  for _ in range(2)),
                *(AuditEvent(kind="http", actor=DENTIST, action="GET /instances/{sop_instance_uid}/frames/{frame}",
                             outcome="200", client=client, study_uid=study, sop_instance_uid=sop,
                             detail={"path": f"/instances/{sop}/frames/{frame}", "frame": frame})
                  for frame in range(4)),
                AuditEvent(kind="http", actor=DENTIST, action="POST /corrections/tooth-masks", outcome="201",
                           client=client, study_uid=study, sop_instance_uid=sop, job_id=index,
                           detail={"path": "/corrections/tooth-masks"}),
                AuditEvent(kind="http", actor=DENTIST, action="GET /studies", outcome="200", client=client,
                           detail={"path": "/studies"}),
            ]
            if index % 10 == 0:
                events.append(AuditEvent(kind="http", actor="unauthenticated", action="GET /me", outcome="401",
                                         client=client, detail={"path": "/me"}))
            if len(events) >= rows:
                break
    return events[:rows]


def _run(transport: str, folder: Path, rows: int, studies: int, pki) -> dict:  # noqa: ANN001 - tests.tlscerts.Pki
    port = free_port()
    tls = ({"ca_certificates": str(pki.ca), "certificate": str(pki.peer.certificate),
            "private_key": str(pki.peer.private_key)} if transport == "tls" else None)
    repository = {"host": "localhost" if transport == "tls" else "127.0.0.1", "port": port, "transport": transport,
                  "tls": tls}
    settings = load_settings(None, dicom={"port": 0, "bind_address": "127.0.0.1"}, http={"tokens": [TOKEN]},
                             storage={"path": str(folder / "var"), "min_free_mb": 0, "fsync": False},
                             routing={"rules": [], "default_workflow": "ignore"}, models={"video": "baseline"},
                             audit_repository=repository)
    service = Service(settings)
    service.start()
    try:
        held = []
        for _ in range(studies):
            ds = builders.make_intraoral_radiograph()
            if store(service.node.port, ds) != 0:
                raise RuntimeError("the node refused a study")
            held.append((str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)))
        forwarder = service.audit_forwarder
        assert service.audit is not None and forwarder is not None
        deadline = time.monotonic() + 30
        while forwarder.up and time.monotonic() < deadline:  # the first try (nothing listens) fails
            time.sleep(0.05)  # polling the forwarder's state with a deadline
        day = _day(held, rows)
        for first in range(0, len(day), 2000):  # a day's rows, not one burst past the trail's queue
            for event in day[first:first + 2000]:
                service.audit.record(event)
            if not service.audit.flush(120):
                raise RuntimeError("the trail did not take the rows")
        if service.audit.lost:
            raise RuntimeError(f"{service.audit.lost} rows lost on the way into the trail")
        waiting = forwarder.backlog()
        sent_before = forwarder.forwarded
        with running_collector(folder / "syslog", transport=transport, port=port, pki=pki) as collector:
            up = time.monotonic()
            while forwarder.forwarded == sent_before and time.monotonic() - up < 120:
                time.sleep(0.005)  # the forwarder's next try (its backoff), polled with a deadline
            started = time.monotonic()
            while forwarder.backlog() and time.monotonic() - started < 600:
                time.sleep(0.01)  # polling the backlog with a deadline
            messages = forwarder.forwarded - sent_before
            received = collector.wait_for(lambda found: len(found) >= messages, timeout=120)
            seconds = time.monotonic() - started
        sizes = [len(m.msg.encode()) for m in received]
        return {"transport": transport, "rows": waiting, "messages": messages, "seconds": round(seconds, 2),
                "rows_per_second": round(waiting / seconds), "messages_per_second": round(messages / seconds),
                "mean_message_bytes": round(sum(sizes) / len(sizes)), "connections": forwarder.sender.connections}
    finally:
        service.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--studies", type=int, default=50)
    parser.add_argument("--transports", default="tls,tcp")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        pki = make_pki(Path(tmp) / "pki")
        for transport in args.transports.split(","):
            results.append(_run(transport, Path(tmp) / transport, args.rows, args.studies, pki))
    print(json.dumps({"benchmark": "audit_forwarding", "hardware": hardware(), "date": time.strftime("%Y-%m-%d"),
                      "studies": args.studies, "results": results}, indent=2))


if __name__ == "__main__":
    main()
