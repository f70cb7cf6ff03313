"""Doctor-in-the-loop on radiographs over HTTP: a dentist keeps, drops, draws and names
implants; corrected report, presentation state, Segmentation and capture reach the PACS.

A real node with the bundled implant models; the radiograph arrives over a real
association and the results go to a real receiver.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread

from dicom_service.api.app import create_app
from dicom_service.audit import AUDIT_FILE, read_events
from dicom_service.service import Service
from tests import builders
from tests.conftest import TEST_TOKEN
from tests.dicomcheck import run_dciodvfy
from tests.dicomnet import store
from tests.receiver import running_receiver
from tests.unit.test_service_flow import _wait_job

JAN, JAN_TOKEN = "Łukasiewicz^Jan^^Dr", "jan-token-0123456789abcdefgh"
ANNA, ANNA_TOKEN = "Smith^Anna^^Dr", "anna-token-0123456789abcdef"
AS_JAN = {"Authorization": f"Bearer {JAN_TOKEN}"}
AS_ANNA = {"Authorization": f"Bearer {ANNA_TOKEN}"}
SERVICE = {"Authorization": f"Bearer {TEST_TOKEN}"}
USERS = [{"name": JAN, "token": JAN_TOKEN}, {"name": ANNA, "token": ANNA_TOKEN}]
SEG, PR = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.11.1"


def _items(node) -> list:  # noqa: ANN001 - an SR data set or content item
    """Every content item under ``node``, depth first."""
    out = []
    for item in node.get("ContentSequence", []):
        out += [item, *_items(item)]
    return out


def _group(report, number: int):  # noqa: ANN001, ANN202 - pydicom Dataset
    """The TID 1410 container of "Implant <number>"."""
    for item in _items(report):
        if item.ValueType == "CONTAINER" and any(
                child.get("TextValue") == f"Implant {number}" for child in item.get("ContentSequence", [])):
            return item
    raise AssertionError(f"no group for implant {number}")


def _meanings(group) -> dict[str, list]:  # noqa: ANN001 - pydicom Dataset
    out: dict[str, list] = {}
    for child in group.ContentSequence:
        meaning = child.ConceptNameCodeSequence[0].CodeMeaning
        value = child.get("TextValue", child.get("MeasuredValueSequence", None))
        out.setdefault(meaning, []).append(value)
    return out


def test_a_dentist_reviews_the_implants_and_the_pacs_gets_the_corrected_objects(make_settings) -> None:
    ds, truth = builders.make_periapical_phantom_with_truth(seed=10003, implants=2)
    sop, study = str(ds.SOPInstanceUID), str(ds.StudyInstanceUID)
    with running_receiver() as pacs:
        settings = make_settings(http={"tokens": [TEST_TOKEN], "users": USERS},
                                 destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1",
                                                "port": pacs.port}])
        with TestClient(create_app(Service(settings))) as client:
            service = client.app.state.service
            assert store(service.node.port, ds) == 0
            _wait_job(client, lambda j: j["kind"] == "dispatch" and j["state"] == "succeeded", timeout=120)
            first = pacs.wait_for(4, 30)
            process = next(j for j in client.get("/jobs?kind=process", headers=SERVICE).json())
            reported = service.queue.result(process["id"])["summary"]["instances"][0]["implants"]
            assert len(reported) == 2  # the AI found both implants of this phantom
            catalogue = client.get(f"/instances/{sop}/implants", headers=SERVICE).json()["systems"]
            assert len(catalogue) == 8 and all(name.startswith("Synthetic ") for name in catalogue)

            # keep the first with the system the dentist knows; drop the second; draw it again
            review = {"sop_instance_uid": sop, "implants": [{"finding": 1, "system": "Straumann BLT"},
                                                            {"box": list(truth[1])}]}
            reply = client.post("/corrections/implants", json=review, headers=AS_JAN)
            assert reply.status_code == 201, reply.text
            out = reply.json()
            assert out["operator"] == JAN and out["job_id"] == process["id"]
            assert out["description"] == "1 of 2 AI finding(s) kept, 1 drawn, 1 system(s) named"
            kept, drawn = out["implants"]
            assert kept["origin"] == "ai" and kept["system_top"] == [["Straumann BLT", None]]
            assert kept["system_by_person"] and kept["score"] == pytest.approx(reported[0]["score"], abs=1e-4)
            assert kept["box_xyxy"] == reported[0]["box_xyxy"]
            assert drawn["origin"] == "person" and drawn["score"] is None
            assert drawn["box_xyxy"] == [round(v, 1) for v in truth[1]]
            # the identifier names the drawn box's system as it named the AI's own box of that implant
            assert drawn["system_top"][0][0] == reported[1]["system_top"][0][0]
            assert set(drawn["parts"]) == {"coronal", "middle", "apical"}
            assert sorted(out["objects"]) == ["pr", "sc", "seg", "sr"]
            assert client.post("/corrections/implants", json=review, headers=AS_JAN).json() == out  # the same job
            reordered = {**review, "implants": review["implants"][::-1]}  # the same review, listed the other way
            assert client.post("/corrections/implants", json=reordered, headers=AS_JAN).json() == out
            by_anna = client.post("/corrections/implants", json=review, headers=AS_ANNA).json()
            assert by_anna["objects"]["sr"]["sop_instance_uid"] != out["objects"]["sr"]["sop_instance_uid"]
            none = client.post("/corrections/implants", json={"sop_instance_uid": sop, "implants": []},
                               headers=SERVICE)
            assert none.status_code == 201, none.text
            assert sorted(none.json()["objects"]) == ["pr", "sc", "sr"] and none.json()["operator"] is None
            listed = client.get(f"/corrections/implants?sop_instance_uid={sop}", headers=SERVICE).json()
            assert [item["correction_job"] for item in listed] == [none.json()["correction_job"],
                                                                    by_anna["correction_job"], out["correction_job"]]

            dispatch = set(out["dispatch_jobs"])
            _wait_job(client, lambda j: j["id"] in dispatch and j["state"] == "succeeded")
            received = pacs.wait_for(len(first) + 4, 30)
            sent_uids = {str(r.SOPInstanceUID) for r in received}
            assert {o["sop_instance_uid"] for o in out["objects"].values()} <= sent_uids

    for kind, obj in out["objects"].items():
        assert run_dciodvfy(obj["path"]) == [], kind
    report = dcmread(out["objects"]["sr"]["path"])
    assert report.SeriesNumber == 9013 and report.SeriesDescription == "AI implant report, corrected"
    assert report.SpecificCharacterSet == "ISO_IR 192"  # Ł is outside the source's Latin-1
    assert [str(i.PersonName) for i in _items(report) if i.ValueType == "PNAME"] == [JAN]  # person observer
    one, two = _meanings(_group(report, 1)), _meanings(_group(report, 2))
    assert one["Device Model Name"] == ["Straumann BLT"] and "Implant system probability" not in one
    assert "Certainty of Finding" in one
    assert one["Review note"] == [f"Found by the AI (its implant 1), kept by {JAN}; system named by {JAN}"]
    ai_report = next(r for r in first if r.SOPClassUID == report.SOPClassUID)
    tracking = [i.UID for i in _items(_group(ai_report, 1)) if i.ValueType == "UIDREF"]
    assert tracking and tracking == [i.UID for i in _items(_group(report, 1)) if i.ValueType == "UIDREF"]
    assert "Certainty of Finding" not in two and "Implant system probability" in two
    assert two["Review note"] == [f"Drawn by {JAN}; system by the AI's identifier"]
    seg = dcmread(out["objects"]["seg"]["path"])
    assert seg.SeriesNumber == 9012 and seg.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"
    implant_plane = seg.pixel_array if seg.pixel_array.ndim == 2 else seg.pixel_array[0]
    x0, y0, x1, y1 = (int(v) for v in truth[1])
    assert implant_plane[y0:y1, x0:x1].all()  # the drawn box is in the implant segment
    pr = dcmread(out["objects"]["pr"]["path"])
    assert pr.SeriesDescription == "AI implant boxes, corrected"
    labels = [t.UnformattedTextValue for a in pr.GraphicAnnotationSequence for t in a.get("TextObjectSequence", [])]
    assert labels[0].endswith("| Straumann BLT (named)") and labels[1].startswith("#2 Implant (drawn) |")
    capture = dcmread(out["objects"]["sc"]["path"])
    assert capture.SeriesNumber == 9202 and capture.BurnedInAnnotation == "YES"
    empty = dcmread(none.json()["objects"]["sr"]["path"])
    assert any(i.get("TextValue") == "No implant found" for i in _items(empty))
    assert not [i for i in _items(empty) if i.ValueType == "PNAME"]  # a service token names nobody

    rows = [r for r in read_events(Path(settings.storage.path) / AUDIT_FILE)
            if r["action"] == "POST /corrections/implants"]
    assert [(r["actor"], r["outcome"], r["study_uid"]) for r in rows] == [
        (JAN, "201", study), (JAN, "201", study), (JAN, "201", study), (ANNA, "201", study),
        ("service token 1", "201", study)]


def test_bad_reviews_get_clear_http_errors(make_settings) -> None:
    radiograph = builders.make_intraoral_radiograph(implants=1)
    video = builders.make_video_photographic(frames=2, rows=32, cols=32)
    sop = str(radiograph.SOPInstanceUID)
    with TestClient(create_app(Service(make_settings()))) as client:
        port = client.app.state.service.node.port
        assert store(port, radiograph) == 0 and store(port, video) == 0
        _wait_job(client, lambda j: j["kind"] == "process" and j["workflow"] == "radiograph"
                  and j["state"] == "succeeded", timeout=120)
        _wait_job(client, lambda j: j["kind"] == "process" and j["workflow"] == "video"
                  and j["state"] in ("succeeded", "failed", "dead"), timeout=120)
        process = next(j for j in client.get("/jobs?kind=process", headers=SERVICE).json()
                       if j["workflow"] == "radiograph")
        count = len(client.app.state.service.queue.result(process["id"])["summary"]["instances"][0]["implants"])
        rows, cols = int(radiograph.Rows), int(radiograph.Columns)

        def post(body: dict, headers: dict | None = None) -> int:
            return client.post("/corrections/implants", json=body, headers=SERVICE if headers is None else headers
                               ).status_code

        assert post({"sop_instance_uid": sop, "implants": []}, headers={}) == 401
        assert post({"sop_instance_uid": "1.2.3.4", "implants": []}) == 404
        assert post({"sop_instance_uid": str(video.SOPInstanceUID), "implants": []}) == 409
        for implants in ([{"finding": count + 1}],  # no such finding
                         [{"box": [0, 0, cols + 1, 10]}],  # off the image
                         [{"box": [20, 20, 10, 40]}],  # x1 < x0
                         [{"finding": 1}, {"finding": 1}] if count else [{"finding": 1}],  # twice (or none to keep)
                         [{"finding": 1, "box": [0, 0, 10, 10]}],  # both
                         [{}],  # neither
                         [{"box": [0, 0, 10, 10], "system": "Bad\\Name"}],
                         [{"box": [0, 0, 10, 10], "system": "Zürich Implant"}],  # not ASCII
                         [{"box": [0, 0, 10, 10], "system": ""}],
                         [{"box": [0, 0, 10, 10], "system": "   "}],  # blank: DICOM would store nothing
                         [{"box": [0, 0, 10, 10], "system": " Nobel"}],
                         [{"box": [10, 10, 11.5, 40]}],  # thinner than 2 pixels
                         [{"box": [0, 0, 10, 10]}, {"box": [0, 0, 10, 10]}],  # drawn twice
                         [{"finding": True}], [{"finding": 0}], [{"box": [0, 0, 10]}],
                         [{"box": [0, 0, 10, 10], "colour": "red"}],
                         [{"box": [0, 0, 10, 10]}] * 65):
            assert post({"sop_instance_uid": sop, "implants": implants}) == 422, implants
        assert post({"sop_instance_uid": sop}) == 422  # the list is required ([] says none)
        body = '{"sop_instance_uid": "%s", "implants": [{"box": [NaN, 0, 10, 10]}]}' % sop
        reply = client.post("/corrections/implants", content=body,
                            headers={**SERVICE, "Content-Type": "application/json"})
        assert reply.status_code == 422
        assert client.get("/corrections/implants?sop_instance_uid=1.2.3", headers=SERVICE).status_code == 404
        assert client.get("/healthz").status_code == 200
        corner = [float(cols) - 40, float(rows) - 60, float(cols), float(rows)]
        drawn = client.post("/corrections/implants", headers=SERVICE,
                            json={"sop_instance_uid": sop, "implants": [{"box": corner}]})
        assert drawn.status_code == 201, drawn.text  # a box up to the image's far edges is on it
        assert np.isclose(drawn.json()["implants"][0]["box_xyxy"][2], cols)


def test_a_review_with_the_baseline_runtime_draws_boxes_without_a_system(tmp_path) -> None:
    """The classical baseline has no identifier: a drawn box is an implant without system or
    certainty, and its report still validates; a review by nobody named has no person
    observer."""
    from dicom_service.api.routers.implant_corrections import known_systems
    from dicom_service.pipelines.implant_correction import (
        ImplantEdit,
        ImplantReview,
        correct_implants,
        reported_findings,
    )
    from dicom_service.pipelines.radiograph import process_radiograph_instance
    from dicom_service.vision.registry import build_radiograph_runtime, default_models_dir

    ds = builders.make_intraoral_radiograph(implants=1)
    runtime = build_radiograph_runtime("baseline", "cpu", default_models_dir())
    assert known_systems(runtime) == []  # the page offers no suggestions
    _, summary = process_radiograph_instance(ds, runtime, uid_seed="t")
    review = ImplantReview(implants=(ImplantEdit(box=(10.0, 20.0, 60.0, 140.0)),))
    result = correct_implants(ds, runtime, reported_findings(summary), review, uid_seed="t")
    assert [(f.origin, f.system_top, f.parts) for f in result.findings] == [("person", (), ())]
    assert result.summary["implants"][0]["score"] is None
    for obj in result.objects:
        path = tmp_path / f"{obj.kind}.dcm"
        obj.dataset.save_as(path, enforce_file_format=True)
        assert run_dciodvfy(str(path)) == [], obj.kind
    report = next(o.dataset for o in result.objects if o.kind == "sr")
    group = _meanings(_group(report, 1))
    assert group["Review note"] == ["Drawn by the reviewer"] and "Certainty of Finding" not in group
    assert not [i for i in _items(report) if i.ValueType == "PNAME"]


def test_review_keys_ignore_order_only() -> None:
    """The key names a review whatever order it lists the implants in, and nothing else:
    other systems or another reviewer give another key; a single implant keeps the key of
    the version where order mattered; two boxes 1/1000 pixel apart are one box drawn twice."""
    import hashlib
    import json

    from dicom_service.domain import InputError
    from dicom_service.pipelines.implant_correction import ImplantEdit, ImplantReview

    kept, drawn = ImplantEdit(finding=1, system="Alpha"), ImplantEdit(box=(10.0, 20.0, 60.0, 140.0), system="Beta")
    review = ImplantReview(implants=(kept, drawn), operator=ANNA)
    assert ImplantReview(implants=(drawn, kept), operator=ANNA).key() == review.key()
    swapped = (ImplantEdit(finding=1, system="Beta"), ImplantEdit(box=drawn.box, system="Alpha"))
    assert ImplantReview(implants=swapped, operator=ANNA).key() != review.key()
    assert ImplantReview(implants=(kept, drawn), operator=JAN).key() != review.key()
    single = ImplantReview(implants=(drawn,), operator=ANNA)
    before = {"implants": [[None, [10.0, 20.0, 60.0, 140.0], "Beta"]], "operator": ANNA}
    assert single.key() == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:16]
    twins = ImplantReview(implants=(drawn, ImplantEdit(box=(10.0003, 20.0, 60.0, 140.0), system="Alpha")))
    with pytest.raises(InputError, match="drawn twice"):
        twins.check(findings=1, rows=416, columns=416)
