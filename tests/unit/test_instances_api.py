"""``GET /instances`` and ``GET /instances/{sop}``: the processed photos and videos a dentist
can open on the correction page, with the patient and study they belong to."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dicom_service.api.app import create_app
from dicom_service.domain import MediaError
from dicom_service.media.instance_header import read_instance_header
from dicom_service.service import Service
from tests import builders
from tests.conftest import TEST_TOKEN
from tests.dicomnet import store
from tests.unit.test_service_flow import _wait_job

AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}


def _processed(client: TestClient, count: int) -> None:
    _wait_job(client, lambda j: len([x for x in client.get("/jobs", params={"kind": "process"}, headers=AUTH).json()
                                     if x["state"] == "succeeded"]) >= count, timeout=120)


def test_processed_photos_and_videos_are_listed_newest_first_with_patient_and_study(make_settings) -> None:
    video = builders.make_video_photographic(frames=4, rows=64, cols=96, seed=1)
    photo = builders.make_vl_photographic_jpeg(rows=60, cols=80, seed=2)
    photo.PatientName, photo.PatientID, photo.StudyDescription = "Doe^Jane", "P-42", "Check-up"
    radiograph = builders.make_intraoral_radiograph()
    with TestClient(create_app(Service(make_settings()))) as client:
        port = client.app.state.service.node.port
        assert store(port, video) == 0
        _processed(client, 1)
        assert store(port, photo) == 0
        assert store(port, radiograph) == 0
        _processed(client, 3)

        listed = client.get("/instances", headers=AUTH)
        assert listed.status_code == 200 and listed.headers["cache-control"] == "no-store"
        items = listed.json()
        assert [i["sop_instance_uid"] for i in items] == [str(photo.SOPInstanceUID), str(video.SOPInstanceUID)]
        newest, older = items
        assert (newest["patient_name"], newest["patient_id"], newest["study_description"]) == (
            "Doe^Jane", "P-42", "Check-up")
        assert (newest["frames"], newest["rows"], newest["columns"], newest["readable"]) == (1, 60, 80, True)
        assert newest["corrections"] == 0 and newest["modality"] == str(photo.Modality)
        assert (older["frames"], older["rows"], older["columns"]) == (4, 64, 96)
        assert (older["patient_name"], older["patient_birth_date"], older["study_date"]) == (
            builders.PATIENT_NAME, "19700101", "20240102")
        assert older["study_uid"] == str(video.StudyInstanceUID) and older["process_job"] > 0

        page = client.get("/instances", params={"limit": 1, "offset": 1}, headers=AUTH).json()
        assert [i["sop_instance_uid"] for i in page] == [str(video.SOPInstanceUID)]
        one = client.get(f"/instances/{video.SOPInstanceUID}", headers=AUTH)
        assert one.status_code == 200 and one.json() == older and one.headers["cache-control"] == "no-store"

        # a correction is counted; a radiograph is listed with the radiograph workflow, its
        # reviews counted as its corrections
        box = {"sop_instance_uid": str(video.SOPInstanceUID), "frame": 1, "box": [10, 10, 60, 50]}
        assert client.post("/corrections/tooth-masks", json=box, headers=AUTH).status_code == 201
        assert client.get(f"/instances/{video.SOPInstanceUID}", headers=AUTH).json()["corrections"] == 1
        assert older["workflow"] == "video"
        radiographs = client.get("/instances", params={"workflow": "radiograph"}, headers=AUTH).json()
        assert [(i["sop_instance_uid"], i["workflow"], i["corrections"]) for i in radiographs] == [
            (str(radiograph.SOPInstanceUID), "radiograph", 0)]
        review = {"sop_instance_uid": str(radiograph.SOPInstanceUID), "implants": []}
        assert client.post("/corrections/implants", json=review, headers=AUTH).status_code == 201
        one = client.get(f"/instances/{radiograph.SOPInstanceUID}", headers=AUTH).json()
        assert (one["workflow"], one["corrections"], one["frames"]) == ("radiograph", 1, 1)
        assert client.get("/instances", params={"workflow": "ignore"}, headers=AUTH).status_code == 422
        missing = client.get("/instances/1.2.3.4", headers=AUTH)
        assert missing.status_code == 404 and "not a processed photo, video or radiograph" in missing.json()["detail"]

        # a stored file whose header no longer reads is listed as unreadable, not a 500
        meta = client.app.state.service.store.instance(str(photo.SOPInstanceUID))
        meta.path.write_bytes(b"not DICOM")
        broken = client.get(f"/instances/{photo.SOPInstanceUID}", headers=AUTH).json()
        assert broken["readable"] is False and broken["patient_name"] == "" and broken["frames"] == 0

        # a removed study's instances are gone from the list
        removed = client.delete(f"/studies/{photo.StudyInstanceUID}", headers=AUTH)
        assert removed.status_code == 200, removed.text
        assert [i["sop_instance_uid"] for i in client.get("/instances", headers=AUTH).json()] == [
            str(video.SOPInstanceUID)]
        assert client.get(f"/instances/{photo.SOPInstanceUID}", headers=AUTH).status_code == 404


def test_bad_requests_are_refused(make_settings) -> None:
    with TestClient(create_app(Service(make_settings()))) as client:
        assert client.get("/instances").status_code == 401
        assert client.get("/instances", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/instances", params={"limit": 0}, headers=AUTH).status_code == 422
        assert client.get("/instances", params={"limit": 201}, headers=AUTH).status_code == 422
        assert client.get("/instances", params={"offset": -1}, headers=AUTH).status_code == 422
        assert client.get("/instances/not-a-uid", headers=AUTH).status_code == 422
        assert client.get("/instances/1.2.3", headers=AUTH).status_code == 404
        assert client.get("/instances", headers=AUTH).json() == []


@pytest.mark.parametrize("damage", [
    (b"\x08\x00\x30\x10LO", b"\x08\x00\x30\x10ZZ"),  # StudyDescription with an unknown VR
    (b"\x28\x00\x10\x00US\x02\x00", b"\x28\x00\x10\x00US\x03\x00"),  # Rows 3 bytes long
])
def test_a_header_damaged_in_an_attribute_read_is_unreadable_not_an_error(tmp_path: Path,
                                                                          damage: tuple[bytes, bytes]) -> None:
    """pydicom converts a value only when it is asked for: a damaged attribute must give
    MediaError (listed as ``readable: false``), not fail the whole list with a 500."""
    path = builders.save(builders.make_vl_photographic_jpeg(rows=16, cols=16), tmp_path / "photo.dcm")
    raw = path.read_bytes()
    old, new = damage
    assert raw.count(old) == 1
    path.write_bytes(raw.replace(old, new))
    with pytest.raises(MediaError, match="the stored instance's header does not read"):
        read_instance_header(path)
