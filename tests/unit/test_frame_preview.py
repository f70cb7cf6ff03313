"""GET /instances/{sop}/frames/{n}: a stored video's frame as PNG, with the AI's or the
newest correction's tooth mask drawn over it (what the correction page shows)."""

from __future__ import annotations

import cv2
import numpy as np
from fastapi.testclient import TestClient

from dicom_service.api.app import create_app
from dicom_service.media.frame_preview import MASK_ALPHA, MASK_RGB, overlay_mask
from dicom_service.media.seg_frames import segmentation_frames
from dicom_service.media.video import open_frames
from dicom_service.service import Service
from tests import builders
from tests.conftest import TEST_TOKEN
from tests.dicomnet import store
from tests.unit.test_service_flow import _wait_job

AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}


def _png(response) -> np.ndarray:  # noqa: ANN001 - httpx.Response
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    bgr = cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def test_overlay_blends_inside_the_mask_and_outlines_it() -> None:
    frame = np.full((20, 30, 3), 100, np.uint8)
    mask = np.zeros((20, 30), bool)
    mask[5:15, 10:20] = True
    out = overlay_mask(frame, mask)
    inside = np.round(100 * (1 - MASK_ALPHA) + np.asarray(MASK_RGB) * MASK_ALPHA)
    assert (out[9, 15] == inside).all()  # inside, away from the outline
    assert (out[5, 10] == MASK_RGB).all()  # on the outline
    assert (out[~mask] == 100).all()  # outside untouched
    assert overlay_mask(frame, None) is frame


def test_frames_with_ai_and_corrected_masks(make_settings) -> None:
    video = builders.make_video_photographic(frames=6, rows=96, cols=128)
    sop = str(video.SOPInstanceUID)
    radiograph = builders.make_intraoral_radiograph()
    with TestClient(create_app(Service(make_settings(models={"radiograph": "baseline"})))) as client:
        port = client.app.state.service.node.port
        assert store(port, video) == 0 and store(port, radiograph) == 0
        process = _wait_job(client, lambda j: j["kind"] == "process" and j["workflow"] == "video"
                            and j["state"] == "succeeded")
        decoded = list(open_frames(video).frames)

        plain = client.get(f"/instances/{sop}/frames/2", params={"masks": "none"}, headers=AUTH)
        assert plain.headers["x-mask-source"] == "none" and plain.headers["cache-control"] == "no-store"
        assert plain.headers["x-frame-count"] == "6"
        assert np.array_equal(_png(plain), decoded[2])  # the frame the node decoded, losslessly

        ai = client.get(f"/instances/{sop}/frames/2", params={"masks": "ai"}, headers=AUTH)
        assert ai.headers["x-mask-source"] == "ai"
        seg_path = next(path for kind, path in client.get(f"/jobs/{process['id']}", headers=AUTH)
                        .json()["result"]["results"] if kind == "seg")
        ai_mask = np.asarray(segmentation_frames(seg_path, sop)[2], bool)
        assert ai_mask.any()
        assert np.array_equal(_png(ai), overlay_mask(decoded[2], ai_mask))
        # no correction yet: "latest" is the AI's
        assert client.get(f"/instances/{sop}/frames/2", headers=AUTH).headers["x-mask-source"] == "ai"

        reply = client.post("/corrections/tooth-masks", headers=AUTH, json={
            "sop_instance_uid": sop, "frame": 3, "box": [10, 8, 70, 60], "radius": 1}).json()
        latest = client.get(f"/instances/{sop}/frames/3", headers=AUTH)
        assert latest.headers["x-mask-source"] == f"correction {reply['sop_instance_uid']}"
        corrected = np.asarray(segmentation_frames(reply["path"], sop)[3], bool)
        assert np.array_equal(_png(latest), overlay_mask(decoded[3], corrected))
        assert not np.array_equal(corrected, np.asarray(segmentation_frames(seg_path, sop)[3], bool))

        # bad requests
        assert client.get(f"/instances/{sop}/frames/6", headers=AUTH).status_code == 422
        assert client.get(f"/instances/{sop}/frames/6", params={"masks": "none"}, headers=AUTH).status_code == 422
        assert client.get(f"/instances/{sop}/frames/-1", headers=AUTH).status_code == 422
        assert client.get(f"/instances/{sop}/frames/0", params={"masks": "all"}, headers=AUTH).status_code == 422
        assert client.get(f"/instances/{sop}.9/frames/0", headers=AUTH).status_code == 404
        assert client.get(f"/instances/{sop}/frames/0").status_code == 401
        other = str(radiograph.SOPInstanceUID)  # not processed by the video workflow: no tooth masks
        assert client.get(f"/instances/{other}/frames/0", headers=AUTH).status_code == 409
        assert client.get(f"/instances/{other}/frames/0", params={"masks": "none"}, headers=AUTH).status_code == 200
