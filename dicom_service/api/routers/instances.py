"""Processed photos and videos, with the patient and study they belong to: what the
correction page lists, and what it shows above a frame so that the dentist corrects the
right patient's images.

These replies carry patient data (name, ID, birth date): they go only to an
authenticated client, are marked ``Cache-Control: no-store``, and are never logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, status

from dicom_service.api.audit_middleware import audit_subject
from dicom_service.api.auth import Authenticated
from dicom_service.api.params import Offset
from dicom_service.domain import MediaError, Workflow
from dicom_service.jobs.processed import ProcessedInstance, processed_instance, processed_instances
from dicom_service.media.instance_header import UNREADABLE, InstanceHeader, read_instance_header

router = APIRouter(prefix="/instances", tags=["instances"], dependencies=[Authenticated])

SopUid = Annotated[str, Path(max_length=64, pattern=r"^[0-9]+(\.[0-9]+)*$",
                             description="SOP Instance UID of a stored photo or video.")]
#: Instances listed at most per request: each costs one header read.
PageSize = Annotated[int, Query(ge=1, le=200)]


@dataclass(frozen=True)
class InstanceOut(InstanceHeader):
    """A processed photo or video as the API shows it: its header (:class:`InstanceHeader`,
    ``frames`` 1 for a photo; empty when ``readable`` is false) with the index's UIDs and
    its processing job."""

    sop_instance_uid: str
    study_uid: str
    series_uid: str
    sop_class_uid: str
    process_job: int
    processed_at: float
    corrections: int
    readable: bool
    workflow: str


def _out(item: ProcessedInstance) -> InstanceOut:
    """``item`` with its header; an unreadable header gives ``readable: false`` and empty fields."""
    meta = item.meta
    try:
        header, readable = read_instance_header(meta.path), True
    except MediaError:
        header, readable = UNREADABLE, False
    return InstanceOut(**{**vars(header), "modality": meta.modality},
                       sop_instance_uid=meta.sop_instance_uid, study_uid=meta.study_uid, series_uid=meta.series_uid,
                       sop_class_uid=meta.sop_class_uid, process_job=item.process_job.id,
                       processed_at=item.process_job.updated_at, corrections=item.corrections, readable=readable,
                       workflow=item.process_job.workflow.value if item.process_job.workflow else "")


@router.get("", response_model=list[InstanceOut],
            summary="Instances a workflow has processed (photos and videos, or radiographs), the newest first, "
                    "with patient and study")
def list_instances(request: Request, response: Response, limit: PageSize = 50, offset: Offset = 0,
                   workflow: Annotated[Literal["video", "radiograph"], Query(description=(
                       "video: photos and videos (corrections of tooth masks); radiograph: radiographs (implant "
                       "reviews)"))] = "video") -> list[InstanceOut]:
    service = request.app.state.service
    response.headers["Cache-Control"] = "no-store"
    listed = [_out(item) for item in processed_instances(service.queue, service.store, limit=limit, offset=offset,
                                                          workflow=Workflow(workflow))]
    # whose data the list showed (patient names and IDs are in it): the trail names the studies
    audit_subject(request, instances_shown=len(listed), studies_shown=sorted({i.study_uid for i in listed}))
    return listed


@router.get("/{sop_instance_uid}", response_model=InstanceOut,
            summary="One processed photo, video or radiograph, with patient and study",
            responses={404: {"description": "Not stored here, or not processed by a workflow"}})
def get_instance(request: Request, response: Response, sop_instance_uid: SopUid) -> InstanceOut:
    service = request.app.state.service
    item = processed_instance(service.queue, service.store, sop_instance_uid)
    if item is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            f"instance {sop_instance_uid} is not a processed photo, video or radiograph held here")
    out = _out(item)
    audit_subject(request, study_uid=out.study_uid)
    response.headers["Cache-Control"] = "no-store"
    return out
