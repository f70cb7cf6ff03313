"""The whole node in one process: C-STORE in → stable study → job → results C-STORE out.

A real pynetdicom receiver stands in for the PACS (integration tests use Orthanc).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from fastapi.testclient import TestClient

from dicom_service.api.app import create_app
from dicom_service.config import Settings
from dicom_service.service import Service
from tests import builders
from tests.conftest import TEST_TOKEN
from tests.dicomnet import store
from tests.receiver import running_receiver

AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}
SR = "1.2.840.10008.5.1.4.1.1.88.34"


def _wait_job(client: TestClient, predicate: Callable[[dict], bool], timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    seen: list = []
    while time.monotonic() < deadline:
        seen = client.get("/jobs", headers=AUTH).json()
        for job in seen:
            if predicate(job):
                return job
        client.app.state.service.queue.wait_for_change(0.1)
    raise AssertionError(f"no job matched in {timeout} s: {seen}")


def _serve(settings: Settings) -> TestClient:
    return TestClient(create_app(Service(settings)))


def test_radiograph_study_round_trip(make_settings) -> None:
    with running_receiver() as pacs:
        settings = make_settings(destinations=[{"name": "pacs", "ae_title": "PACS",
                                                "host": "127.0.0.1", "port": pacs.port}])
        with _serve(settings) as client:
            assert client.get("/readyz").status_code == 200
            port = client.app.state.service.node.port
            ds = builders.make_intraoral_radiograph(implants=1)
            assert store(port, ds) == 0
            job = _wait_job(client, lambda j: j["kind"] == "dispatch" and j["state"] == "succeeded")
            results = pacs.wait_for(4, 10)
            classes = sorted(str(r.SOPClassUID) for r in results)
            assert SR in classes or "1.2.840.10008.5.1.4.1.1.88.33" in classes
            assert all(str(r.StudyInstanceUID) == str(ds.StudyInstanceUID) for r in results)
            process = client.get("/jobs", params={"kind": "process"}, headers=AUTH).json()[0]
            detail = client.get(f"/jobs/{process['id']}", headers=AUTH).json()
            assert detail["state"] == "succeeded"
            assert detail["attempt_log"][0]["ok"] is True and "implant" in detail["attempt_log"][0]["log"]
            assert job["payload"]["destination"] == "pacs"
            # our own results sent back by a PACS: acknowledged, never processed
            for result in results:
                assert store(port, result) == 0x0000
            # the same study again: no new job
            assert store(port, ds) == 0
            client.app.state.service.router.route_stable(time.time() + 60)
            assert len(client.get("/jobs", params={"kind": "process"}, headers=AUTH).json()) == 1


def test_destination_down_then_up_results_arrive(make_settings) -> None:
    import socket

    with socket.socket() as s:  # a free port where nobody listens yet
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = make_settings(destinations=[{"name": "pacs", "ae_title": "PACS",
                                            "host": "127.0.0.1", "port": port}])
    with _serve(settings) as client:
        assert store(client.app.state.service.node.port, builders.make_intraoral_radiograph()) == 0
        failing = _wait_job(client, lambda j: j["kind"] == "dispatch" and j["attempts"] >= 2)
        assert failing["state"] in ("queued", "running") and "association" in (failing["error"] or "")
        with running_receiver(port=port) as pacs:
            _wait_job(client, lambda j: j["kind"] == "dispatch" and j["state"] == "succeeded", timeout=30)
            assert len(pacs.wait_for(4, 10)) >= 4


def test_api_auth_and_errors(make_settings) -> None:
    with _serve(make_settings()) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/jobs").status_code == 401
        assert client.get("/jobs", headers={"Authorization": "Bearer wrong-token"}).status_code == 401
        assert client.get("/jobs/12345", headers=AUTH).status_code == 404
        assert client.post("/jobs/12345/retry", headers=AUTH).status_code == 404
        assert client.get("/jobs/not-a-number", headers=AUTH).status_code == 422
        huge = str(2**80)  # beyond SQLite's integers: a 422, not a 500
        assert client.get(f"/jobs/{huge}", headers=AUTH).status_code == 422
        assert client.post(f"/jobs/{huge}/cancel", headers=AUTH).status_code == 422
        assert client.get("/jobs", params={"offset": huge}, headers=AUTH).status_code == 422
        assert client.get("/jobs", params={"state": "sleeping"}, headers=AUTH).status_code == 422
        assert client.get("/jobs", params={"study_uid": "1.2/../x"}, headers=AUTH).status_code == 422
        assert client.get("/openapi.json").status_code == 200


def test_bad_input_job_fails_permanently_and_can_be_retried(make_settings) -> None:
    """A colour photo routed to the radiograph workflow by a rule: a clear job error."""
    rules = [{"name": "all-radiograph", "match": {}, "workflow": "radiograph"}]
    with _serve(make_settings(routing={"stability_seconds": 0.1, "rules": rules})) as client:
        port = client.app.state.service.node.port
        assert store(port, builders.make_vl_photographic_jpeg(rows=64, cols=96)) == 0
        job = _wait_job(client, lambda j: j["kind"] == "process" and j["state"] == "failed")
        assert job["attempts"] == 1 and "colour" in job["error"].lower()
        retried = client.post(f"/jobs/{job['id']}/retry", headers=AUTH)
        assert retried.status_code == 200 and retried.json()["state"] == "queued"
        _wait_job(client, lambda j: j["id"] == job["id"] and j["state"] == "failed" and j["attempts"] == 2)
        assert client.post(f"/jobs/{job['id']}/cancel", headers=AUTH).status_code == 409
        assert client.get("/readyz").status_code == 200


def test_generated_token_file(make_settings, tmp_path) -> None:
    settings = make_settings(http={"tokens": []})
    service = Service(settings)
    token_file = tmp_path / "var" / "api-token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert service.api_tokens == [token_file.read_text().strip()]


def test_corrupt_h264_fails_its_job_only(make_settings) -> None:
    """A truncated H.264 stream is stored (the SCP does not decode video), its job fails at
    once with a clear error and no retries, and a good study sent beside it completes."""
    from pydicom.encaps import encapsulate

    from dicom_service.media.video import encapsulated_bitstream

    video = builders.make_video_photographic(frames=8, rows=96, cols=128)
    stream = encapsulated_bitstream(video.PixelData)
    cut = stream[: len(stream) // 2]
    video.PixelData = encapsulate([cut + b"\x00" * (len(cut) % 2)], has_bot=False)
    with _serve(make_settings()) as client:
        port = client.app.state.service.node.port
        assert store(port, video) == 0
        assert store(port, builders.make_intraoral_radiograph()) == 0
        failed = _wait_job(client, lambda j: j["kind"] == "process" and j["state"] == "failed")
        assert failed["workflow"] == "video" and failed["attempts"] == 1
        assert "MediaError" in failed["error"]
        _wait_job(client, lambda j: j["kind"] == "process" and j["workflow"] == "radiograph"
                  and j["state"] == "succeeded")
        assert client.get("/readyz").status_code == 200


def test_video_over_the_memory_budget_fails_clearly_and_is_kept(make_settings) -> None:
    """With a budget no clip fits (workers.video_memory_mb 1), a video job fails at once with
    the estimate and the setting in its error, not an out-of-memory kill; the instance stays
    stored for a later retry, and a radiograph sent beside it completes."""
    video = builders.make_video_photographic(frames=4, rows=64, cols=96)
    with _serve(make_settings(workers={"poll_seconds": 0.05, "video_memory_mb": 1})) as client:
        service = client.app.state.service
        assert store(service.node.port, video) == 0
        assert store(service.node.port, builders.make_intraoral_radiograph()) == 0
        failed = _wait_job(client, lambda j: j["kind"] == "process" and j["state"] == "failed")
        assert failed["workflow"] == "video" and failed["attempts"] == 1
        assert "UnsupportedInputError: video too large" in failed["error"]
        assert "workers.video_memory_mb" in failed["error"]
        assert service.store.instance(str(video.SOPInstanceUID)) is not None
        _wait_job(client, lambda j: j["kind"] == "process" and j["workflow"] == "radiograph"
                  and j["state"] == "succeeded")
        assert client.get("/readyz").status_code == 200
