"""IHE ATNA: the audit trail as DICOM audit messages, sent over syslog to a real collector.

The messages are checked element by element from the trail rows that make them; the
transport against ``rsyslogd`` (plain TCP, mutual TLS, UDP), which parses each RFC 5424
message itself; the node's own rows reach it from a real association and real requests.
"""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import re
import socket
import ssl
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dicom_service.api.app import create_app
from dicom_service.atna.messages import AuditSource, MessageBuilder
from dicom_service.atna.settings import AuditRepository
from dicom_service.atna.syslog import octet_counted, syslog_message
from dicom_service.audit import AUDIT_FILE, read_events
from dicom_service.cli import main
from dicom_service.service import Service
from tests import builders
from tests.conftest import TEST_TOKEN
from tests.dicomnet import associate, echo_ok, store
from tests.receiver import running_receiver
from tests.syslog_collector import Received, free_port, running_collector
from tests.unit.test_service_flow import _wait_job

SERVICE = {"Authorization": f"Bearer {TEST_TOKEN}"}
ANNA, ANNA_TOKEN = "Smith^Anna^^Dr", "anna-token-0123456789abcdef"
BOSS, BOSS_TOKEN = "Jones^Pat", "boss-token-0123456789abcdef"
USERS = [{"name": ANNA, "token": ANNA_TOKEN}, {"name": BOSS, "token": BOSS_TOKEN, "role": "admin"}]
STUDY = "1.2.826.0.1.3680043.8.498.1"
SOURCE = AuditSource(source_id="DENTAL_AI", ae_title="DENTAL_AI", host="node.example.org", site_id="1.2.3.4")
TIME = "2026-12-08T10:15:00.123Z"


def _builder(patients: dict[str, str] | None = None) -> MessageBuilder:
    return MessageBuilder(SOURCE, patient_of=(patients or {}).get,
                          destination={"pacs": ("PACS", "pacs.example.org")}.get)


def _row(kind: str, actor: str, action: str, outcome: str, **fields) -> dict:
    return {"kind": kind, "actor": actor, "action": action, "outcome": outcome, "client": fields.pop("client", ""),
            "study_uid": fields.pop("study_uid", None), "sop_instance_uid": fields.pop("sop_instance_uid", None),
            "job_id": None, "detail": fields.pop("detail", {}), "time": TIME, **fields}


def _summary(message: ET.Element) -> dict:
    """What a test compares of one audit message."""
    ident = message.find("EventIdentification")
    event_type = ident.find("EventTypeCode")
    return {
        "event": ident.find("EventID").get("csd-code"),
        "type": event_type.get("csd-code") if event_type is not None else None,
        "action": ident.get("EventActionCode"),
        "outcome": ident.get("EventOutcomeIndicator"),
        "participants": [(p.get("UserID"), p.get("UserIsRequestor"), p.find("RoleIDCode").get("csd-code"))
                         for p in message.findall("ActiveParticipant")],
        "objects": [(o.get("ParticipantObjectID"), o.find("ParticipantObjectIDTypeCode").get("csd-code"))
                    for o in message.findall("ParticipantObjectIdentification")],
    }


def _check_shape(message: ET.Element) -> None:
    """The DICOM schema's order and required attributes (PS3.15 A.5.1)."""
    tags = [child.tag for child in message]
    assert tags[0] == "EventIdentification" and "AuditSourceIdentification" in tags
    source_at = tags.index("AuditSourceIdentification")
    assert set(tags[1:source_at]) == {"ActiveParticipant"} and source_at >= 2
    assert set(tags[source_at + 1:]) <= {"ParticipantObjectIdentification"}
    ident = message.find("EventIdentification")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", ident.get("EventDateTime"))
    assert ident.get("EventActionCode") in {"C", "R", "U", "D", "E"}
    assert ident.get("EventOutcomeIndicator") in {"0", "4", "8", "12"}
    for coded in message.iter():
        if coded.get("csd-code") is not None and coded.tag != "AuditSourceTypeCode":
            assert coded.get("codeSystemName") and coded.get("originalText"), coded.tag
    for participant in message.findall("ActiveParticipant"):
        assert participant.get("UserID") and participant.get("UserIsRequestor") in {"true", "false"}
        if participant.get("NetworkAccessPointID"):
            assert participant.get("NetworkAccessPointTypeCode") in {"1", "2"}
    source = message.find("AuditSourceIdentification")
    assert source.get("AuditSourceID") and source.find("AuditSourceTypeCode").get("csd-code") == "4"


def _parse(xml: bytes) -> ET.Element:
    assert xml.startswith(b'<?xml version="1.0" encoding="UTF-8"?><AuditMessage>') and b"\n" not in xml
    message = ET.fromstring(xml)
    _check_shape(message)
    return message


NODE_DEST = ("DENTAL_AI", "false", "110152")
ANNA_SRC = (ANNA, "true", "110153")
STUDY_OBJ = (STUDY, "110180")
PATIENT_OBJ = ("PH0001", "2")


@pytest.mark.parametrize(("row", "expected"), [
    (_row("application", "clinic-admin", "start", "succeeded"),
     [{"event": "110100", "type": "110120", "action": "E", "outcome": "0",
       "participants": [("DENTAL_AI", "false", "110150"), ("clinic-admin", "true", "110151")], "objects": []}]),
    (_row("dicom-association", "MODALITY", "association", "released", client="10.0.0.7:40112",
          detail={"instances": {"new": 3, "duplicate": 0, "refused": 0}, "study_uids": [STUDY, "1.2.3"]}),
     [{"event": "110104", "type": None, "action": "C", "outcome": "0",
       "participants": [("MODALITY", "true", "110153"), NODE_DEST], "objects": [STUDY_OBJ, PATIENT_OBJ]},
      {"event": "110104", "type": None, "action": "C", "outcome": "0",
       "participants": [("MODALITY", "true", "110153"), NODE_DEST], "objects": [("1.2.3", "110180")]}]),
    (_row("dicom-association", "MODALITY", "association", "aborted", client="10.0.0.7:40112",
          detail={"instances": {"new": 1, "duplicate": 0, "refused": 2}, "study_uids": [STUDY]}),
     [{"event": "110104", "type": None, "action": "C", "outcome": "4",
       "participants": [("MODALITY", "true", "110153"), NODE_DEST], "objects": [STUDY_OBJ, PATIENT_OBJ]}]),
    (_row("dicom-association", "STRANGER", "association", "rejected", client="10.0.0.9:5000"),
     [{"event": "110113", "type": "110126", "action": "E", "outcome": "4",
       "participants": [NODE_DEST, ("STRANGER", "true", "110153")], "objects": [("10.0.0.9", "110182")]}]),
    (_row("dicom-send", "DENTAL_AI", "send", "succeeded", study_uid=STUDY,
          detail={"destination": "pacs", "objects": 4, "attempt": 1}),
     [{"event": "110104", "type": None, "action": "R", "outcome": "0",
       "participants": [("DENTAL_AI", "true", "110153"), ("PACS", "false", "110152")],
       "objects": [STUDY_OBJ, PATIENT_OBJ]}]),
    (_row("dicom-send", "DENTAL_AI", "send", "failed", study_uid=STUDY, detail={"destination": "gone"}),
     [{"event": "110104", "type": None, "action": "R", "outcome": "4",
       "participants": [("DENTAL_AI", "true", "110153"), ("gone", "false", "110152")],
       "objects": [STUDY_OBJ, PATIENT_OBJ]}]),
    (_row("http", ANNA, "GET /instances/{sop_instance_uid}/frames/{frame}", "200", client="192.168.1.20",
          study_uid=STUDY, sop_instance_uid="1.2.3.4"),
     [{"event": "110103", "type": None, "action": "R", "outcome": "0", "participants": [ANNA_SRC, NODE_DEST],
       "objects": [STUDY_OBJ, PATIENT_OBJ]}]),
    (_row("http", ANNA, "POST /corrections/tooth-masks", "201", study_uid=STUDY),
     [{"event": "110103", "type": None, "action": "C", "outcome": "0", "participants": [ANNA_SRC, NODE_DEST],
       "objects": [STUDY_OBJ, PATIENT_OBJ]}]),
    (_row("http", BOSS, "DELETE /studies/{study_uid}", "200", study_uid=STUDY),
     [{"event": "110105", "type": None, "action": "D", "outcome": "0",
       "participants": [(BOSS, "true", "110153"), NODE_DEST], "objects": [STUDY_OBJ, PATIENT_OBJ]}]),
    (_row("http", ANNA, "GET /studies", "200", detail={"path": "/studies"}),
     [{"event": "110112", "type": None, "action": "E", "outcome": "0", "participants": [ANNA_SRC, NODE_DEST],
       "objects": [("/studies", "12")]}]),
    (_row("http", BOSS, "GET /audit", "200", detail={"path": "/audit"}),
     [{"event": "110101", "type": None, "action": "R", "outcome": "0",
       "participants": [(BOSS, "true", "110153"), NODE_DEST], "objects": [("/audit", "12")]}]),
    (_row("http", "unauthenticated", "GET /me", "401", client="192.168.1.66"),
     [{"event": "110114", "type": "110122", "action": "E", "outcome": "4",
       "participants": [("unauthenticated", "true", "110153"), NODE_DEST], "objects": []}]),
    (_row("http", ANNA, "DELETE /studies/{study_uid}", "403", study_uid=STUDY,
          detail={"path": f"/studies/{STUDY}"}),
     [{"event": "110113", "type": "110132", "action": "E", "outcome": "4", "participants": [ANNA_SRC, NODE_DEST],
       "objects": [(f"/studies/{STUDY}", "12")]}]),
], ids=["start", "stored", "stored-badly", "rejected", "sent", "send-failed", "frame", "correction", "removed",
        "query", "audit-read", "401", "403"])
def test_each_row_gives_its_audit_message(row: dict, expected: list[dict]) -> None:
    messages = _builder({STUDY: "PH0001"}).messages(row)
    assert [_summary(_parse(m.xml)) for m in messages] == expected
    assert [m.outcome for m in messages] == [int(e["outcome"]) for e in expected]
    first = _parse(messages[0].xml)
    source = first.find("AuditSourceIdentification")
    assert (source.get("AuditSourceID"), source.get("AuditEnterpriseSiteID")) == ("DENTAL_AI", "1.2.3.4")
    if int(expected[0]["outcome"]):
        assert first.find("EventIdentification/EventOutcomeDescription").text  # says what went wrong


def test_rows_that_give_no_message_and_odd_text() -> None:
    builder = _builder()
    quiet = [_row("dicom-association", "ECHOSCU", "association", "released",
                  detail={"instances": {"new": 0, "duplicate": 0, "refused": 0}, "study_uids": []}),
             _row("http", ANNA, "GET /jobs", "200"), _row("http", ANNA, "GET /me", "200"),
             _row("http", ANNA, "GET /studies/{study_uid}", "404", study_uid=STUDY),
             _row("http", "unknown", "GET", "500"), _row("something-new", "x", "y", "z")]
    assert [builder.messages(r) for r in quiet] == [[]] * len(quiet)

    v6 = _row("dicom-association", "MODALITY", "association", "rejected", client="[fe80::1]:40112")
    assert _parse(builder.messages(v6)[0].xml).find("ParticipantObjectIdentification").get(
        "ParticipantObjectID") == "fe80::1"
    odd = "O'Brien<&>\"^Łukasz"
    row = _row("http", odd, "GET /studies/{study_uid}", "200", study_uid=STUDY, client="::1")
    message = _parse(builder.messages(row)[0].xml)
    caller = message.findall("ActiveParticipant")[0]
    assert (caller.get("UserID"), caller.get("UserName")) == (odd, odd)  # escaped, read back intact
    assert (caller.get("NetworkAccessPointID"), caller.get("NetworkAccessPointTypeCode")) == ("::1", "2")
    assert [o.get("ParticipantObjectTypeCode") for o in message.findall("ParticipantObjectIdentification")] == ["2"]
    query = _row("http", "service token 2", "GET /studies", "200", detail={"path": "/studies"})
    service = _parse(builder.messages(query)[0].xml)
    assert service.findall("ActiveParticipant")[0].get("UserName") is None  # a token names no person
    asked = service.find("ParticipantObjectIdentification/ParticipantObjectQuery").text
    assert base64.b64decode(asked) == b"GET /studies"


def test_syslog_framing() -> None:
    payload = '<?xml version="1.0" encoding="UTF-8"?><AuditMessage>Ł</AuditMessage>'.encode()
    message = syslog_message(payload, timestamp=TIME, hostname="node one", outcome=0, procid="4242")
    assert message == (f"<85>1 {TIME} node_one dicom-service 4242 IHE+RFC-3881 - ".encode() + "\ufeff".encode()
                       + payload)
    assert syslog_message(payload, timestamp=TIME, hostname="", outcome=4, procid="1").startswith(
        f"<84>1 {TIME} - dicom-service 1 ".encode())
    assert syslog_message(payload, timestamp=TIME, hostname="h", outcome=8, procid="1").startswith(b"<83>1 ")
    assert octet_counted(message) == str(len(message)).encode() + b" " + message


def test_repository_settings(make_settings) -> None:
    assert AuditRepository(host="arr").address == "tls://arr:6514"
    assert AuditRepository(host="arr", transport="udp").effective_port == 514
    assert AuditRepository(host="[::1]", port=6000).address == "tls://[::1]:6000"
    for host, problem in (("arr:6514", "give the port"), ("tls://arr", "not a URL"), ("arr example", "a host name"),
                          ("arr\n", "a host name"), ("[arr]", "a host name"), ("arr?x", "a host name"),
                          ("[::1", "a host name")):
        with pytest.raises(ValueError, match=problem):
            AuditRepository(host=host)
    with pytest.raises(ValueError, match="tls is set but the transport is tcp"):
        AuditRepository(host="arr", transport="tcp", tls={})
    with pytest.raises(Exception, match="audit_repository.tls.ca_certificates"):
        Service(make_settings(audit_repository={"host": "127.0.0.1", "tls": {"ca_certificates": "/no/such.pem"}}))


def _events(found: list[Received]) -> list[str]:
    return [m.audit.find("EventIdentification/EventID").get("originalText") for m in found]


def _metric(client: TestClient, name: str) -> float:
    text = client.get("/metrics", headers=SERVICE).text
    match = re.search(rf"^dicom_service_{name}{{[^}}]*}} (\S+)$", text, re.MULTILINE)
    assert match, text
    return float(match.group(1))


def test_the_node_sends_its_trail_to_a_syslog_collector(make_settings, tmp_path: Path) -> None:
    """A real rsyslogd over TCP: the node's start, a stored study, a delivery, a dentist's
    requests, a refused token, a refused role, the trail read and the stop."""
    video = builders.make_video_photographic(frames=2, rows=32, cols=32)
    study, sop = str(video.StudyInstanceUID), str(video.SOPInstanceUID)
    as_anna, as_boss = {"Authorization": f"Bearer {ANNA_TOKEN}"}, {"Authorization": f"Bearer {BOSS_TOKEN}"}
    with running_collector(tmp_path / "syslog", transport="tcp") as collector, running_receiver() as pacs:
        settings = make_settings(
            http={"tokens": [TEST_TOKEN], "users": USERS},
            destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}],
            audit_repository={"host": "127.0.0.1", "port": collector.port, "transport": "tcp", "site_id": "CLINIC"})
        with TestClient(create_app(Service(settings))) as client:
            port = client.app.state.service.node.port
            assert echo_ok(port)  # a C-ECHO stores nothing: no message
            assert store(port, video) == 0
            _wait_job(client, lambda j: j["kind"] == "dispatch" and j["state"] == "succeeded", timeout=120)
            assert client.get(f"/instances/{sop}", headers=as_anna).status_code == 200
            assert client.get("/studies", headers=as_anna).status_code == 200
            assert client.get("/me", headers={"Authorization": "Bearer not-a-token-0123456789"}).status_code == 401
            assert client.get("/audit", headers=as_anna).status_code == 403
            assert client.get("/audit", headers=as_boss).status_code == 200
            collector.wait_for(lambda found: "Audit Log Used" in _events(found))
            assert _metric(client, "audit_repository_up") == 1
            assert _metric(client, "audit_messages_backlog") == 0
            assert _metric(client, "audit_messages_sent_total") == len(collector.messages())
        found = collector.wait_for(lambda found: "Application Activity" in _events(found)[1:])

    assert _events(found) == ["Application Activity", "DICOM Instances Transferred", "DICOM Instances Transferred",
                              "DICOM Instances Accessed", "Query", "User Authentication", "Security Alert",
                              "Audit Log Used", "Application Activity"]
    for received in found:  # as rsyslog parsed the RFC 5424 header
        assert (received.msgid, received.app_name) == ("IHE+RFC-3881", "dicom-service")
        assert received.pri in (84, 85) and received.procid.isdecimal()
        _check_shape(received.audit)
        assert builders.PATIENT_NAME not in received.msg  # the patient by ID only
    stored, sent, shown = (_summary(found[i].audit) for i in (1, 2, 3))
    assert stored["action"] == "C" and stored["participants"][0] == ("TESTSCU", "true", "110153")
    assert stored["objects"] == [(study, "110180"), (builders.PATIENT_ID, "2")]
    assert sent["action"] == "R" and sent["participants"][1] == ("PACS", "false", "110152")
    assert sent["objects"] == stored["objects"]
    assert shown["participants"][0] == (ANNA, "true", "110153") and shown["objects"] == stored["objects"]
    assert found[3].audit.find("ActiveParticipant").get("UserName") == ANNA
    assert found[0].audit.find("AuditSourceIdentification").get("AuditEnterpriseSiteID") == "CLINIC"
    assert [_summary(found[i].audit)["type"] for i in (0, 5, 6, 8)] == ["110120", "110122", "110132", "110121"]


def test_messages_wait_for_a_repository_that_is_down(make_settings, tmp_path: Path) -> None:
    """Nothing listens at first: the rows wait in the trail (the metrics say so) and go once
    the collector is up; a restart sends each row once."""
    port = free_port()
    settings = make_settings(audit_repository={"host": "127.0.0.1", "port": port, "transport": "tcp",
                                               "patient_ids": False})
    video = builders.make_video_photographic(frames=2, rows=32, cols=32)
    with TestClient(create_app(Service(settings))) as client:
        assert store(client.app.state.service.node.port, video) == 0
        forwarder = client.app.state.service.audit_forwarder
        assert client.app.state.service.audit.flush()
        for _ in range(100):  # the first try fails within a second
            if not forwarder.up:
                break
            client.app.state.service.queue.wait_for_change(0.05)
        assert _metric(client, "audit_repository_up") == 0
        assert _metric(client, "audit_messages_backlog") >= 2
        with running_collector(tmp_path / "syslog", transport="tcp", port=port) as collector:
            collector.wait_for(lambda found: "DICOM Instances Transferred" in _events(found), timeout=60)
            assert _metric(client, "audit_repository_up") == 1
            client.app.state.service.stop()  # the stop's message goes before the node closes
            first = collector.wait_for(lambda found: len(found) >= 3)
            assert _events(first) == ["Application Activity", "DICOM Instances Transferred", "Application Activity"]
            # patient_ids false: the study only
            assert [o for _, o in _summary(first[1].audit)["objects"]] == ["110180"]
            with TestClient(create_app(Service(settings))):
                pass
            again = collector.wait_for(lambda found: len(found) >= 5)
    assert _events(again) == _events(first) + ["Application Activity"] * 2  # nothing sent twice


def test_a_repository_restart_loses_nothing(make_settings, tmp_path: Path) -> None:
    """The collector restarts while the node holds a connection to it: the next messages go
    on a new connection, none into the dead one."""
    port = free_port()
    settings = make_settings(audit_repository={"host": "127.0.0.1", "port": port, "transport": "tcp"})
    with TestClient(create_app(Service(settings))) as client:
        with running_collector(tmp_path / "first", transport="tcp", port=port) as collector:
            assert client.get("/studies", headers=SERVICE).status_code == 200
            collector.wait_for(lambda found: "Query" in _events(found))
        with running_collector(tmp_path / "second", transport="tcp", port=port) as collector:
            for _ in range(3):
                assert client.get("/studies", headers=SERVICE).status_code == 200
            collector.wait_for(lambda found: _events(found) == ["Query"] * 3)
        assert client.app.state.service.audit_forwarder.sender.connections == 2


def test_a_corrected_address_gets_what_waited(make_settings, tmp_path: Path) -> None:
    """A wrong port at first: the rows wait; the node restarted with the right one sends
    them (the position belongs to the repository, not to an address)."""
    wrong = make_settings(audit_repository={"host": "127.0.0.1", "port": free_port(), "transport": "tcp"})
    video = builders.make_video_photographic(frames=2, rows=32, cols=32)
    with TestClient(create_app(Service(wrong))) as client:
        assert store(client.app.state.service.node.port, video) == 0
    with running_collector(tmp_path / "syslog", transport="tcp") as collector:
        right = make_settings(audit_repository={"host": "127.0.0.1", "port": collector.port, "transport": "tcp"})
        with TestClient(create_app(Service(right))):
            found = collector.wait_for(lambda found: len(found) >= 4)
    assert _events(found)[:4] == ["Application Activity", "DICOM Instances Transferred", "Application Activity",
                                  "Application Activity"]


def test_a_lookup_that_fails_now_holds_the_row(tmp_path: Path) -> None:
    """A patient lookup that cannot answer (the store closed or locked) keeps the row
    waiting, and it goes once the lookup answers: nothing skipped."""
    from dicom_service.atna.forwarder import AuditForwarder
    from dicom_service.atna.messages import LookupUnavailable
    from dicom_service.audit import AuditEvent, AuditTrail

    answers = iter([LookupUnavailable("closed"), "PH0001"])

    def patient_of(study: str) -> str:
        answer = next(answers, "PH0001")
        if isinstance(answer, Exception):
            raise answer
        return answer

    with running_collector(tmp_path / "syslog", transport="tcp") as collector:
        trail = AuditTrail(tmp_path / AUDIT_FILE)
        repository = AuditRepository(host="127.0.0.1", port=collector.port, transport="tcp", patient_ids=True)
        forwarder = AuditForwarder(trail, repository, MessageBuilder(SOURCE, patient_of=patient_of),
                                   hostname="node", procid="1")
        forwarder.start()
        trail.record(AuditEvent(kind="dicom-send", actor="DENTAL_AI", action="send", outcome="succeeded",
                                study_uid=STUDY, detail={"destination": "pacs"}))
        found = collector.wait_for(lambda found: len(found) == 1)
        forwarder.stop()
        trail.close()
    assert _summary(found[0].audit)["objects"] == [STUDY_OBJ, PATIENT_OBJ]
    assert forwarder.skipped == 0 and forwarder.backlog() == 0


def test_unsent_rows_outlive_audit_days(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from datetime import UTC, datetime, timedelta

    from dicom_service.atna.forwarder import AuditForwarder
    from dicom_service.audit import AuditEvent, AuditTrail

    trail = AuditTrail(tmp_path / AUDIT_FILE, keep_days=30)
    now = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)

    def old(days: int) -> AuditEvent:
        when = (now - timedelta(days=days)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return AuditEvent(kind="http", actor="a", action=f"GET /{days}", outcome="200", time=when)

    trail.record(old(400))
    assert trail.flush()
    repository = AuditRepository(host="127.0.0.1", port=free_port(), transport="tcp")  # nothing listens
    forwarder = AuditForwarder(trail, repository, MessageBuilder(SOURCE), hostname="node", procid="1")
    for days in (300, 31, 0):  # after the forwarder's position (the trail's end at its first start)
        trail.record(old(days))
    assert trail.flush()
    assert trail.prune(now) == 1  # the row from before forwarding began, not those waiting
    assert [r["action"] for r in read_events(tmp_path / AUDIT_FILE)] == ["GET /300", "GET /31", "GET /0"]
    with caplog.at_level(logging.WARNING, logger="dicom_service.audit"):
        trail.forget_forwarding()  # a start without a repository: nothing waits any more, and it says so
    assert "3 row(s) had not reached the audit record repository" in caplog.text
    assert trail.prune(now) == 2
    forwarder.stop()
    trail.close()


def test_a_position_kept_per_address_is_carried_over(tmp_path: Path) -> None:
    """A trail whose position an earlier version kept under the repository's address: the
    forwarder starts from it (nothing lost) and it no longer holds pruning back."""
    import sqlite3

    from dicom_service.atna.forwarder import POSITION_KEY, AuditForwarder
    from dicom_service.audit import AuditEvent, AuditTrail

    trail = AuditTrail(tmp_path / AUDIT_FILE)
    for n in range(3):
        trail.record(AuditEvent(kind="http", actor="a", action=f"GET /{n}", outcome="200"))
    assert trail.flush()
    with sqlite3.connect(tmp_path / AUDIT_FILE) as conn:
        conn.execute("INSERT INTO forwarded (repository, last_id) VALUES ('tcp://127.0.0.1:601', 1)")
    repository = AuditRepository(host="127.0.0.1", port=free_port(), transport="tcp")
    forwarder = AuditForwarder(trail, repository, MessageBuilder(SOURCE), hostname="node", procid="1")
    assert forwarder.backlog() == 2
    with sqlite3.connect(tmp_path / AUDIT_FILE) as conn:
        assert conn.execute("SELECT repository, last_id FROM forwarded").fetchall() == [(POSITION_KEY, 1)]
    forwarder.stop()
    trail.close()


def test_the_patient_of_a_study_stored_again(make_settings, tmp_path: Path) -> None:
    """A study removed and sent again with a corrected Patient ID: its new message names
    the new patient, the removal the old one; a list of instances accessed each study it
    showed."""
    video = builders.make_video_photographic(frames=2, rows=32, cols=32)
    study = str(video.StudyInstanceUID)
    with running_collector(tmp_path / "syslog", transport="tcp") as collector:
        settings = make_settings(models={"video": "baseline"},
                                 audit_repository={"host": "127.0.0.1", "port": collector.port, "transport": "tcp"})
        with TestClient(create_app(Service(settings))) as client:
            port = client.app.state.service.node.port
            assert store(port, video) == 0
            _wait_job(client, lambda j: j["kind"] == "process" and j["state"] == "succeeded", timeout=120)
            assert client.get("/instances", headers=SERVICE).status_code == 200
            reply = client.delete(f"/studies/{study}", headers=SERVICE)
            assert reply.status_code == 200, reply.text
            video.PatientID = "CORRECTED-42"
            assert store(port, video) == 0
            found = collector.wait_for(lambda found: _events(found).count("DICOM Instances Transferred") == 2)
    patients = [(_events([m])[0], [i for i, t in _summary(m.audit)["objects"] if t == "2"]) for m in found[1:]]
    assert patients == [("DICOM Instances Transferred", [builders.PATIENT_ID]), ("Query", []),
                        ("DICOM Instances Accessed", [builders.PATIENT_ID]),
                        ("DICOM Study Deleted", [builders.PATIENT_ID]),
                        ("DICOM Instances Transferred", ["CORRECTED-42"])]


def test_mutual_tls_and_udp(make_settings, tmp_path: Path, pki) -> None:
    """ATNA node authentication: the collector takes the node's client certificate and
    refuses a node without one (the rows wait); UDP sends each message as a datagram."""
    with running_collector(tmp_path / "tls", transport="tls", pki=pki) as collector:
        authenticated = {"ca_certificates": str(pki.ca), "certificate": str(pki.peer.certificate),
                         "private_key": str(pki.peer.private_key)}
        settings = make_settings(audit_repository={"host": "localhost", "port": collector.port, "tls": authenticated})
        with TestClient(create_app(Service(settings))) as client:
            collector.wait_for(lambda found: _events(found) == ["Application Activity"])
            for expected in (2, 3, 4):  # one at a time, on the connection the first one opened
                assert client.get("/studies", headers=SERVICE).status_code == 200
                collector.wait_for(lambda found, n=expected: len(found) == n)
            assert client.app.state.service.audit_forwarder.sender.connections == 1  # one connection kept
        collector.wait_for(lambda found: len(found) == 5)

        anonymous = make_settings(storage={"path": str(tmp_path / "other")},
                                  audit_repository={"host": "localhost", "port": collector.port,
                                                    "tls": {"ca_certificates": str(pki.ca)}})
        with TestClient(create_app(Service(anonymous))) as client:
            forwarder = client.app.state.service.audit_forwarder
            for _ in range(200):
                if not forwarder.up:
                    break
                client.app.state.service.queue.wait_for_change(0.05)
            assert not forwarder.up and forwarder.backlog() >= 1
        assert len(collector.messages()) == 5  # nothing from the node without a certificate

    with running_collector(tmp_path / "udp", transport="udp") as collector:
        settings = make_settings(storage={"path": str(tmp_path / "udp-var")},
                                 audit_repository={"host": "127.0.0.1", "port": collector.port, "transport": "udp"})
        with TestClient(create_app(Service(settings))) as client:
            assert client.get("/studies", headers=SERVICE).status_code == 200
            collector.wait_for(lambda found: "Query" in _events(found))


def test_refused_certificates_are_security_alerts(make_settings, pki, tmp_path: Path) -> None:
    """ATNA node authentication failures: a peer on the DICOM TLS listener with a
    certificate from another authority, and one with none, are trail rows and Security
    Alerts; a connection that closes before its handshake (a health check) is neither."""
    node_tls = {"port": 0, "certificate": str(pki.node.certificate), "private_key": str(pki.node.private_key),
                "ca_certificates": str(pki.ca), "require_client_certificate": True}
    with running_collector(tmp_path / "syslog", transport="tcp") as collector:
        settings = make_settings(dicom={"tls": node_tls},
                                 audit_repository={"host": "127.0.0.1", "port": collector.port, "transport": "tcp"})
        with TestClient(create_app(Service(settings))) as client:
            port = client.app.state.service.node.tls_port
            rogue = ssl.create_default_context(cafile=str(pki.ca))
            rogue.load_cert_chain(pki.rogue.certificate, pki.rogue.private_key)
            for context in (rogue, ssl.create_default_context(cafile=str(pki.ca))):
                assert not associate(port, [], tls=(context, "localhost")).is_established
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                pass  # connects and closes: no certificate was refused
            found = collector.wait_for(lambda found: _events(found).count("Security Alert") >= 2)
            rows = read_events(Path(settings.storage.path) / AUDIT_FILE, kind="dicom-tls")
    assert [(r["outcome"], r["client"].startswith("127.0.0.1:")) for r in rows] == [("refused", True)] * 2
    assert all(r["detail"]["reason"] for r in rows)
    alerts = [m.audit for m in found if _events([m]) == ["Security Alert"]]
    assert [_summary(a)["type"] for a in alerts] == ["110126", "110126"]
    assert [_summary(a)["objects"] for a in alerts] == [[("127.0.0.1", "110182")]] * 2
    assert all("TLS handshake refused" in a.find("EventIdentification/EventOutcomeDescription").text for a in alerts)


def test_control_characters_in_a_path_still_give_well_formed_xml() -> None:
    row = _row("http", ANNA, "DELETE /studies/{study_uid}", "403", study_uid="1.2\x01\n3",
               detail={"path": "/studies/1.2\x01\n3\ud800"})
    message = _parse(_builder().messages(row)[0].xml)
    assert message.find("ParticipantObjectIdentification").get("ParticipantObjectID") == "/studies/1.2\ufffd\n3\ufffd"
    assert "\n" not in message.find("EventIdentification/EventOutcomeDescription").text


def test_the_audit_command_prints_the_messages(make_settings) -> None:
    settings = make_settings()
    with TestClient(create_app(Service(settings))) as client:
        assert client.get("/studies", headers=SERVICE).status_code == 200
        assert client.get("/me", headers={"Authorization": "Bearer not-a-token-0123456789"}).status_code == 401
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["audit", "--data", str(settings.storage.path), "--format", "atna"]) == 0
    messages = [_parse(line.encode()) for line in out.getvalue().splitlines()]
    assert [_summary(m)["event"] for m in messages] == ["110100", "110112", "110114", "110100"]
