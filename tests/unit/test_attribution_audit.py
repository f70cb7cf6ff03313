"""Named users: their corrections carry their names, and the audit trail says who did what.

A real node (DICOM listener, workers, API) with two named dentists and a service token;
the video arrives over a real association, the results go to a real receiver.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import warnings
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from dicom_service.api.app import create_app
from dicom_service.audit import AUDIT_FILE, read_events
from dicom_service.cli import main
from dicom_service.config import load_settings
from dicom_service.service import TOKEN_FILE, Service
from dicom_service.writers.common import set_person_name
from tests import builders
from tests.conftest import TEST_TOKEN
from tests.dicomcheck import run_dciodvfy
from tests.dicomnet import associate, store
from tests.receiver import running_receiver
from tests.unit.test_service_flow import _wait_job

ANNA = "Smith^Anna^^Dr"
JAN = "Łukasiewicz^Jan^^Dr"  # Ł is outside Latin-1, the builders' character set
ANNA_TOKEN = "anna-token-0123456789abcdef"
JAN_TOKEN = "jan-token-0123456789abcdefgh"
SERVICE = {"Authorization": f"Bearer {TEST_TOKEN}"}
AS_ANNA = {"Authorization": f"Bearer {ANNA_TOKEN}"}
AS_JAN = {"Authorization": f"Bearer {JAN_TOKEN}"}
USERS = [{"name": ANNA, "token": ANNA_TOKEN}, {"name": JAN, "token": JAN_TOKEN}]


def _content_items(node) -> list:  # noqa: ANN001 - an SR data set or content item
    """Every content item under ``node``, depth first."""
    items = []
    for item in node.get("ContentSequence", []):
        items += [item, *_content_items(item)]
    return items


def _run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv))
    return code, out.getvalue()


def test_corrections_carry_their_makers_name_and_the_trail_records_who_did_what(make_settings) -> None:
    video = builders.make_video_photographic(frames=6, rows=96, cols=128)
    sop, study = str(video.SOPInstanceUID), str(video.StudyInstanceUID)
    with running_receiver() as pacs:
        settings = make_settings(http={"tokens": [TEST_TOKEN], "users": USERS},
                                 destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1",
                                                "port": pacs.port}])
        trail = Path(settings.storage.path) / AUDIT_FILE
        with TestClient(create_app(Service(settings))) as client:
            assert store(client.app.state.service.node.port, video) == 0
            _wait_job(client, lambda j: j["kind"] == "dispatch" and j["state"] == "succeeded", timeout=120)

            assert client.get("/me", headers=AS_ANNA).json() == {"kind": "user", "name": ANNA, "role": "dentist"}
            assert client.get("/me", headers=AS_JAN).json() == {"kind": "user", "name": JAN, "role": "dentist"}
            assert client.get("/me", headers=SERVICE).json() == {"kind": "service", "name": None, "role": "service"}
            assert client.get("/me", headers={"Authorization": "Bearer not-a-token-0123456789"}).status_code == 401

            assert client.get("/instances", headers=AS_ANNA).status_code == 200
            assert client.get(f"/instances/{sop}/frames/1", headers=AS_ANNA).status_code == 200

            box = {"sop_instance_uid": sop, "frame": 2, "box": [10.0, 8.0, 70.0, 60.0], "radius": 1}
            replies = {}
            for who, headers in (("anna", AS_ANNA), ("jan", AS_JAN), ("service", SERVICE)):
                reply = client.post("/corrections/tooth-masks", json=box, headers=headers)
                assert reply.status_code == 201, reply.text
                replies[who] = reply.json()
            # the same prompts by two people are two objects, each with its maker
            assert len({r["sop_instance_uid"] for r in replies.values()}) == 3
            assert [replies[w]["operator"] for w in ("anna", "jan", "service")] == [ANNA, JAN, None]
            again = client.post("/corrections/tooth-masks", json=box, headers=AS_ANNA).json()
            assert again == replies["anna"]  # the same person again: the same job and object
            listed = client.get(f"/corrections/tooth-masks?sop_instance_uid={sop}", headers=AS_JAN).json()
            assert {item["operator"] for item in listed} == {ANNA, JAN, None}

            restored = client.post("/corrections/tooth-masks", json={**box, "restore": True}, headers=AS_JAN)
            assert restored.status_code == 201, restored.text
            restore_job = restored.json()["restore_job"]
            done = _wait_job(client, lambda j: j["id"] == restore_job and j["state"] == "succeeded", timeout=120)
            results = dict(client.app.state.service.queue.result(done["id"])["results"])

            # what the trail holds while the node runs (read-only, beside the writer)
            assert client.app.state.service.audit.flush()
            code, out = _run_cli("audit", "--data", str(settings.storage.path), "--actor", JAN)
            assert code == 0
            jans = [json.loads(line) for line in out.splitlines()]
            assert jans and {row["actor"] for row in jans} == {JAN}
            assert client.get("/healthz").status_code == 200

    anna_seg, jan_seg, service_seg = (dcmread(replies[w]["path"]) for w in ("anna", "jan", "service"))
    assert str(anna_seg.ContentCreatorName) == ANNA and anna_seg.SpecificCharacterSet == "ISO_IR 100"
    assert str(jan_seg.ContentCreatorName) == JAN and jan_seg.SpecificCharacterSet == "ISO_IR 192"
    assert str(jan_seg.PatientName) == builders.PATIENT_NAME  # the rest re-encoded, not garbled
    assert str(service_seg.ContentCreatorName) == ""
    for path in (replies["jan"]["path"], results["video"], results["sr"]):
        assert run_dciodvfy(path) == [], path
    enhanced, report = dcmread(results["video"]), dcmread(results["sr"])
    assert str(enhanced.OperatorsName) == JAN
    texts = [str(item.TextValue) for item in _content_items(report) if "TextValue" in item]
    assert any(f"by {JAN}" in text for text in texts), texts

    rows = read_events(trail)
    posts = [r for r in rows if r["action"] == "POST /corrections/tooth-masks"]
    assert [(r["actor"], r["outcome"]) for r in posts] == [(ANNA, "201"), (JAN, "201"), ("service token 1", "201"),
                                                           (ANNA, "201"), (JAN, "201")]
    assert {(r["study_uid"], r["sop_instance_uid"]) for r in posts} == {(study, sop)}
    assert posts[0]["job_id"] == replies["anna"]["correction_job"] and posts[0]["client"]
    shown = next(r for r in rows if r["action"] == "GET /instances")
    assert (shown["actor"], shown["detail"]["studies_shown"], shown["detail"]["instances_shown"]) == (
        ANNA, [study], 1)
    frame = next(r for r in rows if r["action"] == "GET /instances/{sop_instance_uid}/frames/{frame}")
    assert (frame["study_uid"], frame["sop_instance_uid"], frame["detail"]["frame"]) == (study, sop, 1)
    refused = [r for r in rows if r["outcome"] == "401"]
    assert [(r["actor"], r["action"]) for r in refused] == [("unauthenticated", "GET /me")]
    listing = next(r for r in rows if r["action"] == "GET /corrections/tooth-masks")
    assert (listing["actor"], listing["study_uid"], listing["sop_instance_uid"]) == (JAN, study, sop)
    assert not [r for r in rows if "healthz" in r["action"]]  # health is not audited
    association = next(r for r in rows if r["kind"] == "dicom-association")
    assert (association["actor"], association["outcome"], association["study_uid"]) == ("TESTSCU", "released", study)
    assert association["detail"]["instances"] == {"new": 1, "duplicate": 0, "refused": 0}
    assert association["detail"]["tls"] is False and association["client"].startswith("127.0.0.1:")
    sends = [r for r in rows if r["kind"] == "dicom-send"]
    assert sends and {(r["outcome"], r["study_uid"], r["detail"]["destination"]) for r in sends} == {
        ("succeeded", study, "pacs")}
    assert builders.PATIENT_NAME.encode() not in trail.read_bytes()  # UIDs and staff, never the patient


def test_associations_that_end_badly_and_probes(make_settings) -> None:
    """A rejected calling AE, an aborted association with a refused store, and a connection
    that closes before asking: two rows, none for the probe."""
    settings = make_settings(dicom={"accepted_calling_aets": ["TESTSCU"]})
    trail = Path(settings.storage.path) / AUDIT_FILE
    ct = builders.make_video_photographic(frames=2, rows=32, cols=32)
    with TestClient(create_app(Service(settings))) as client:
        port = client.app.state.service.node.port
        rejected = associate(port, [], calling="STRANGER")
        assert rejected.is_rejected
        assoc = associate(port, [(str(ct.SOPClassUID), [ExplicitVRLittleEndian, str(ct.file_meta.TransferSyntaxUID)])])
        assert assoc.is_established
        bad = builders.make_video_photographic(frames=2, rows=32, cols=32)
        with warnings.catch_warnings():  # pydicom warns of the bad UID it is asked to hold
            warnings.simplefilter("ignore")
            bad.StudyInstanceUID = "1.2.3.04"  # a component with a leading zero: refused
            assert int(assoc.send_c_store(bad).Status) != 0
        assoc.abort()
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # a health check: connects and closes
        assert client.get("/healthz").status_code == 200
        deadline_rows: list[dict] = []
        for _ in range(200):  # the abort is seen on the node's association thread
            deadline_rows = [r for r in read_events(trail) if r["kind"] == "dicom-association"]
            if len(deadline_rows) == 2:
                break
            client.app.state.service.queue.wait_for_change(0.05)
    rows = [r for r in read_events(trail) if r["kind"] == "dicom-association"]
    assert [(r["actor"], r["outcome"]) for r in rows] == [("STRANGER", "rejected"), ("TESTSCU", "aborted")]
    assert rows[1]["detail"]["instances"] == {"new": 0, "duplicate": 0, "refused": 1}
    assert rows[1]["study_uid"] is None


def test_a_trail_that_cannot_be_written_fails_nothing(make_settings) -> None:
    with TestClient(create_app(Service(make_settings()))) as client:
        service = client.app.state.service
        assert service.audit.flush()  # the node's start row written first
        service.audit._db.close()  # as a disk that fails
        assert client.get("/jobs", headers=SERVICE).status_code == 200
        assert client.get("/me", headers=SERVICE).status_code == 200
        assert service.audit.flush() and service.audit.lost == 2
        assert "dicom_service_audit_rows_lost_total 2" in client.get("/metrics", headers=SERVICE).text


def test_the_audit_command(make_settings, tmp_path) -> None:
    settings = make_settings()
    with TestClient(create_app(Service(settings))) as client:
        assert client.get("/jobs", headers=SERVICE).status_code == 200
        assert client.get("/studies/1.2.3", headers=SERVICE).status_code == 404
    data = str(settings.storage.path)
    code, out = _run_cli("audit", "--data", data)
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [(r["action"], r["outcome"]) for r in rows] == [
        ("start", "succeeded"), ("GET /jobs", "200"), ("GET /studies/{study_uid}", "404"), ("stop", "succeeded")]
    assert rows[2]["study_uid"] == "1.2.3" and rows[2]["detail"]["path"] == "/studies/1.2.3"
    assert rows[0]["kind"] == "application" and rows[0]["actor"] and rows[0]["detail"]["ae_title"] == "DENTAL_AI"
    assert _run_cli("audit", "--data", data, "--study", "1.2.3")[1].count("\n") == 1
    assert _run_cli("audit", "--data", data, "--kind", "dicom-send")[1] == ""
    assert _run_cli("audit", "--data", data, "--since", "2999-01-01")[1] == ""
    assert _run_cli("audit", "--data", data, "--until", "2000-01-01T00:00:00+01:00")[1] == ""
    assert _run_cli("audit", "--data", data, "--limit", "1")[1].count("\n") == 1
    code, table = _run_cli("audit", "--data", data, "--format", "table")
    assert code == 0 and "GET /studies/{study_uid}" in table and "service token 1" in table
    with pytest.raises(SystemExit) as usage:
        _run_cli("audit", "--data", data, "--since", "yesterday")
    assert usage.value.code == 2
    assert _run_cli("audit", "--data", str(tmp_path / "elsewhere"))[0] == 2  # no trail there


@pytest.mark.parametrize(("http", "problem"), [
    ({"users": [{"name": ANNA, "token": "short"}]}, "at least 16"),
    ({"tokens": [ANNA_TOKEN], "users": [{"name": ANNA, "token": ANNA_TOKEN}]}, "given twice"),
    ({"users": [{"name": ANNA, "token": ANNA_TOKEN}, {"name": ANNA, "token": JAN_TOKEN}]}, "name is given twice"),
    ({"users": [{"name": "Smith\\Anna", "token": ANNA_TOKEN}]}, "may not contain"),
    ({"users": [{"name": "^^^", "token": ANNA_TOKEN}]}, "non-empty component"),
    ({"users": [{"name": "a^b^c^d^e^f", "token": ANNA_TOKEN}]}, "at most 5 components"),
    ({"users": [{"name": ANNA}]}, "token"),
    ({"users": [{"name": "Service Token 1", "token": ANNA_TOKEN}]}, "not named users"),
    ({"users": [{"name": "unauthenticated", "token": ANNA_TOKEN}]}, "not named users"),
    ({"users": [{"name": "Smith\u2028Anna", "token": ANNA_TOKEN}]}, "may not contain"),
    ({"users": [{"name": "Ł" * 40, "token": ANNA_TOKEN}]}, "64 bytes"),  # 40 characters, 80 bytes
    ({"users": [{"name": ANNA, "token": "  spaces-0123456789  "}]}, "printable ASCII"),
    ({"tokens": ["Ünicode-0123456789abc"]}, "printable ASCII"),
])
def test_bad_users_are_named_at_load(http: dict, problem: str) -> None:
    with pytest.raises(Exception, match=problem):
        load_settings(None, http=http)


def test_users_beside_the_created_token(make_settings) -> None:
    """Named users added to a node that made its own service token: what used that token
    (a metrics scraper) goes on working beside them."""
    settings = make_settings(http={"tokens": [], "users": USERS})
    service = Service(settings)
    created = (Path(settings.storage.path) / TOKEN_FILE).read_text().strip()
    assert service.api_tokens == [created]
    with TestClient(create_app(service)) as client:
        assert client.get("/jobs", headers=AS_ANNA).status_code == 200
        assert client.get("/metrics", headers={"Authorization": f"Bearer {created}"}).status_code == 200
        assert client.get("/jobs", headers=SERVICE).status_code == 401  # not configured here


@pytest.mark.parametrize(("charset", "name", "expected"), [
    (None, "Smith^Anna", None),  # ASCII: the default repertoire holds it
    (None, "Müller^Jürgen", "ISO_IR 192"),
    ("ISO_IR 100", "Müller^Jürgen", "ISO_IR 100"),
    ("ISO_IR 100", "王^小明", "ISO_IR 192"),
    (["ISO 2022 IR 6", "ISO 2022 IR 87"], "Müller", "ISO_IR 192"),
    ("ISO_IR 192", "王^小明", "ISO_IR 192"),
    ("ISO_IR 13", "山田^太郎", "ISO_IR 192"),  # JIS X 0201 has no kanji, though Python's shift_jis does
    ("ISO_IR 6", "Müller", "ISO_IR 192"),  # not a DICOM term: ASCII only
])
def test_a_persons_name_gets_a_character_set_that_holds_it(charset, name: str, expected, tmp_path) -> None:
    ds = builders.make_video_photographic(frames=1, rows=16, cols=16)
    if charset is None:
        del ds.SpecificCharacterSet
    else:
        ds.SpecificCharacterSet = charset
    latin = charset == "ISO_IR 100"
    ds.PatientName = "Ørsted^Hans" if latin else "PHANTOM^IMPLANT"
    # text in a sequence, as a copied source holds it: raw bytes until decoded
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator = "X1", "99LOCAL"
    item.CodeMeaning = "Zahnärztin Zürich" if latin else "Dental visit"
    ds.ProcedureCodeSequence = [item]
    source = tmp_path / "source.dcm"
    ds.save_as(source, enforce_file_format=True)
    ds = dcmread(source)
    set_person_name(ds, "OperatorsName", name)
    assert ds.get("SpecificCharacterSet") == expected
    ds.save_as(tmp_path / "x.dcm", enforce_file_format=True)
    back = dcmread(tmp_path / "x.dcm")
    assert str(back.OperatorsName) == name
    assert str(back.PatientName) == ("Ørsted^Hans" if latin else "PHANTOM^IMPLANT")
    assert back.ProcedureCodeSequence[0].CodeMeaning == item.CodeMeaning  # not garbled by the switch


def test_every_audited_request_leaves_a_row_with_its_caller(make_settings) -> None:
    """Requests answered before authentication (malformed JSON, an unknown route, a
    method not allowed) name the token's holder; odd path values still leave a row."""
    settings = make_settings(http={"tokens": [TEST_TOKEN], "users": USERS})
    with TestClient(create_app(Service(settings))) as client:
        bad_json = client.post("/corrections/tooth-masks", content="{not json",
                               headers={**AS_ANNA, "Content-Type": "application/json"})
        assert bad_json.status_code == 422
        assert client.get("/studies/1.2.3/nothing-here", headers=AS_JAN).status_code == 404
        assert client.delete("/me", headers=AS_JAN).status_code == 405
        assert client.get("/jobs/%C2%B2", headers=SERVICE).status_code == 422  # a superscript two
        assert client.get("/jobs/99999999999999999999", headers=SERVICE).status_code in (404, 422)
        assert client.get(f"/instances/1.2.3/frames/{'9' * 30}", headers=AS_ANNA).status_code == 422
        assert client.get("/me", headers={"Authorization": "Bearer wrong-token-0123456789"}).status_code == 401
        assert client.get("/studies/" + "1" * 5000, headers=SERVICE).status_code == 422
        service = client.app.state.service
        assert service.audit.flush()
        assert service.audit.lost == 0
        rows = read_events(Path(settings.storage.path) / AUDIT_FILE, kind="http")
    assert [(r["actor"], r["outcome"]) for r in rows] == [
        (ANNA, "422"), (JAN, "404"), (JAN, "405"), ("service token 1", "422"), ("service token 1", rows[4]["outcome"]),
        (ANNA, "422"), ("unauthenticated", "401"), ("service token 1", "422")]
    assert rows[4]["job_id"] is None and rows[5]["detail"]["frame"] == "9" * 30
    assert len(rows[7]["detail"]["path"]) == 512 and len(rows[7]["study_uid"]) == 64  # capped


def test_a_locked_or_deleted_trail_holds_nothing_up(make_settings) -> None:
    """Another program holding the trail's write lock does not hold up a request (rows wait
    for the writer); a trail deleted while the node runs is made again."""
    import sqlite3
    import time

    settings = make_settings()
    path = Path(settings.storage.path) / AUDIT_FILE
    with TestClient(create_app(Service(settings))) as client:
        audit = client.app.state.service.audit
        locker = sqlite3.connect(path, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")
        try:
            started = time.monotonic()
            for _ in range(20):
                assert client.get("/jobs", headers=SERVICE).status_code == 200
            assert time.monotonic() - started < 5.0  # the writer waits, not the requests
            assert not audit.flush(timeout=0.5)  # still waiting for the lock
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        assert audit.flush() and audit.lost == 0
        assert len(read_events(path, kind="http")) == 20
        for suffix in ("", "-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
        assert client.get("/jobs", headers=SERVICE).status_code == 200
        assert audit.flush()
        assert [r["action"] for r in read_events(path)] == ["GET /jobs"]  # a new trail holds it


def test_rows_older_than_audit_days_are_removed(tmp_path) -> None:
    from datetime import UTC, datetime, timedelta

    from dicom_service.audit import AuditEvent, AuditTrail

    trail = AuditTrail(tmp_path / AUDIT_FILE, keep_days=30)
    now = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    for days in (400, 31, 29, 0):
        when = (now - timedelta(days=days)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        trail.record(AuditEvent(kind="http", actor="a", action=f"GET /{days}", outcome="200", time=when))
    assert trail.flush()
    assert trail.prune(now) == 2
    assert [r["action"] for r in read_events(tmp_path / AUDIT_FILE)] == ["GET /29", "GET /0"]
    trail.close()
    keep_all = AuditTrail(tmp_path / AUDIT_FILE)
    assert keep_all.prune(now + timedelta(days=1000)) == 0  # audit_days 0 keeps everything
    keep_all.close()
    with pytest.raises(Exception, match="audit_days"):
        load_settings(None, storage={"audit_days": -1})


def test_only_administrators_remove_studies_and_read_the_trail(make_settings) -> None:
    """A dentist's token may not remove a study or read the audit trail (403, recorded); an
    administrator's and a service token may; GET /audit filters as the command does."""
    boss, boss_token = "Jones^Pat", "boss-token-0123456789abcdef"
    users = [*USERS, {"name": boss, "token": boss_token, "role": "admin"}]
    as_boss = {"Authorization": f"Bearer {boss_token}"}
    video = builders.make_video_photographic(frames=2, rows=32, cols=32)
    study = str(video.StudyInstanceUID)
    with TestClient(create_app(Service(make_settings(http={"tokens": [TEST_TOKEN], "users": users})))) as client:
        assert client.get("/me", headers=as_boss).json() == {"kind": "user", "name": boss, "role": "admin"}
        assert store(client.app.state.service.node.port, video) == 0
        _wait_job(client, lambda j: j["kind"] == "process" and j["state"] in ("succeeded", "failed", "dead"),
                  timeout=120)
        assert client.delete(f"/studies/{study}", headers=AS_ANNA).status_code == 403
        assert client.get("/audit", headers=AS_ANNA).status_code == 403
        assert client.get(f"/studies/{study}", headers=AS_ANNA).status_code == 200  # still held
        assert client.delete(f"/studies/{study}", headers=as_boss).status_code == 200
        rows = client.get("/audit", headers=SERVICE)
        assert rows.status_code == 200 and rows.headers["cache-control"] == "no-store"
        deletes = [(r["actor"], r["outcome"]) for r in rows.json() if r["action"] == "DELETE /studies/{study_uid}"]
        assert deletes == [(ANNA, "403"), (boss, "200")]
        refused = client.get("/audit", params={"actor": ANNA, "study_uid": study}, headers=as_boss).json()
        assert [(r["action"], r["outcome"]) for r in refused] == [("DELETE /studies/{study_uid}", "403"),
                                                                   ("GET /studies/{study_uid}", "200")]
        assert [r["kind"] for r in client.get("/audit", params={"kind": "dicom-association"},
                                              headers=as_boss).json()] == ["dicom-association"]
        assert len(client.get("/audit", params={"limit": 2}, headers=as_boss).json()) == 2
        assert client.get("/audit", params={"since": "2999-01-01"}, headers=as_boss).json() == []
        for bad in ({"since": "yesterday"}, {"limit": 0}, {"kind": "all"}, {"study_uid": "x"}):
            assert client.get("/audit", params=bad, headers=as_boss).status_code == 422, bad
    with pytest.raises(Exception, match="role"):
        load_settings(None, http={"users": [{"name": boss, "token": boss_token, "role": "root"}]})
