"""Frames of stored photos and videos as PNG or JPEG, with the tooth mask the node holds
for them; a processed radiograph as the implant models read it (frame 0, no mask)."""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, HTTPException, Path, Request, Response, status

from dicom_service.api.auth import Authenticated
from dicom_service.api.routers.corrections import processing_job, stored_instance
from dicom_service.domain import InputError, MediaError, Workflow
from dicom_service.jobs.correction import ai_masks, latest_masks
from dicom_service.jobs.processed import processing_jobs
from dicom_service.media.frame_preview import decode_frame, overlay_mask, preview_bytes, radiograph_preview

#: Frames decoded at once (``app.state.frame_slots``); a request waits this long for a turn, then 503.
FRAME_SLOTS = 2
SLOT_WAIT_SECONDS = 30.0

router = APIRouter(prefix="/instances", tags=["instances"], dependencies=[Authenticated])

SopUid = Annotated[str, Path(max_length=64, pattern=r"^[0-9]+(\.[0-9]+)*$",
                             description="SOP Instance UID of a stored photo or video.")]
FrameIndex = Annotated[int, Path(ge=0, le=10_000_000, description="Frame number, 0 = the first.")]


def _mask(service, sop: str, study_uid: str, frame: int, which: str) -> tuple[np.ndarray, str]:  # noqa: ANN001
    """Frame ``frame``'s tooth mask: the newest correction's (``latest``) or the AI's, and
    which one it is; 409 when the instance has no readable tooth Segmentation."""
    job = processing_job(service.queue, study_uid, sop)
    if which == "latest":
        found = latest_masks(service.queue, job, sop)
    else:
        ai = ai_masks(service.queue, job, sop)
        found = (ai, "ai") if ai is not None else None
    if found is None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"instance {sop}: no readable tooth Segmentation")
    masks, source = found
    if frame >= masks.shape[0]:
        raise HTTPException(422, f"frame {frame} is not a frame of this instance (0 to {masks.shape[0] - 1})")
    return np.asarray(masks[frame], dtype=bool), source


@router.get("/{sop_instance_uid}/frames/{frame}", response_class=Response,
            summary="One frame as PNG or JPEG, with the tooth mask the node holds for it drawn over it",
            responses={200: {"content": {"image/png": {}, "image/jpeg": {}},
                             "description": "The frame, at its own size (headers X-Mask-Source: "
                             "'ai', 'correction <SEG UID>' or 'none'; X-Frame-Count)"},
                       404: {"description": "Instance not stored here"},
                       409: {"description": "Masks asked of an instance without a tooth Segmentation"},
                       503: {"description": "Two frames are being decoded already and no turn came in 30 s"},
                       422: {"description": "No such frame, or the pixel data does not decode"}})
def frame_png(request: Request, sop_instance_uid: SopUid, frame: FrameIndex,
              masks: Literal["latest", "ai", "none"] = "latest",
              format: Literal["png", "jpeg", "auto"] = "png") -> Response:  # noqa: A002 - the query's name
    """``masks``: ``latest`` (the newest correction's, else the AI's), ``ai``, or ``none``.
    ``format``: ``png`` (lossless), ``jpeg``, or ``auto`` (PNG up to 1280×720, JPEG above:
    the correction page's choice)."""
    service, meta = stored_instance(request, sop_instance_uid)
    radiograph = bool(processing_jobs(service.queue, meta.study_uid, sop_instance_uid, Workflow.RADIOGRAPH))
    if radiograph and frame != 0:
        raise HTTPException(422, f"frame {frame} is not a frame of this radiograph (0 only)")
    mask, source = (None, "none") if masks == "none" or radiograph else _mask(
        service, sop_instance_uid, meta.study_uid, frame, masks)
    slots = request.app.state.frame_slots
    if not slots.acquire(timeout=SLOT_WAIT_SECONDS):
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "busy decoding other frames: try again",
                            headers={"Retry-After": "5"})
    try:
        rgb, count = (radiograph_preview(str(meta.path)), 1) if radiograph else decode_frame(str(meta.path), frame)
        encoded, media_type = preview_bytes(overlay_mask(rgb, mask), format)
    except (InputError, MediaError) as error:
        raise HTTPException(422, str(error)) from error
    finally:
        slots.release()
    return Response(encoded, media_type=media_type,
                    headers={"X-Mask-Source": source, "X-Frame-Count": str(count), "Cache-Control": "no-store"})
