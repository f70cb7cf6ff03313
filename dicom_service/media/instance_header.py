"""Who and what a stored instance shows, read from its header: the patient and study a
dentist checks before correcting the AI on it (the index keeps no patient data)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import BytesLengthException, InvalidDicomError

from dicom_service.domain import MediaError
from dicom_service.media.pixels import DECODE_ERRORS

#: The header attributes read; nothing else of the file is parsed.
_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
         "AccessionNumber", "StudyDescription", "SeriesDescription", "Modality", "NumberOfFrames", "Rows",
         "Columns")


@dataclass(frozen=True)
class InstanceHeader:
    """Patient, study and image attributes of one instance, as text the way DICOM holds
    them (``patient_name`` as ``Family^Given``, dates ``YYYYMMDD``, times ``HHMMSS``); ""
    when absent. ``frames`` is 1 for a single image; ``rows``/``columns`` its size."""

    patient_name: str
    patient_id: str
    patient_birth_date: str
    patient_sex: str
    study_date: str
    study_time: str
    accession_number: str
    study_description: str
    series_description: str
    modality: str
    frames: int
    rows: int
    columns: int


#: What an instance whose header does not read shows: every field empty, no frames.
UNREADABLE = InstanceHeader(*([""] * 10), frames=0, rows=0, columns=0)


def _text(ds, keyword: str) -> str:  # noqa: ANN001 - pydicom Dataset
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _number(ds, keyword: str, default: int) -> int:  # noqa: ANN001 - pydicom Dataset
    try:
        return int(ds.get(keyword) or default)
    except (TypeError, ValueError):
        return default


def read_instance_header(path: str | Path) -> InstanceHeader:
    """The header of the stored instance at ``path`` (pixel data is not read).

    Raises
    ------
    MediaError
        The file is gone, does not read as DICOM, or an attribute read is damaged (pydicom
        converts values only when they are asked for).
    """
    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=list(_TAGS))
        return _header(ds)
    except (OSError, InvalidDicomError, BytesLengthException, *DECODE_ERRORS) as exc:
        raise MediaError(f"the stored instance's header does not read: {type(exc).__name__}") from exc


def _header(ds) -> InstanceHeader:  # noqa: ANN001 - pydicom Dataset
    return InstanceHeader(
        patient_name=_text(ds, "PatientName"), patient_id=_text(ds, "PatientID"),
        patient_birth_date=_text(ds, "PatientBirthDate"), patient_sex=_text(ds, "PatientSex"),
        study_date=_text(ds, "StudyDate"), study_time=_text(ds, "StudyTime"),
        accession_number=_text(ds, "AccessionNumber"), study_description=_text(ds, "StudyDescription"),
        series_description=_text(ds, "SeriesDescription"), modality=_text(ds, "Modality"),
        frames=max(1, _number(ds, "NumberOfFrames", 1)), rows=_number(ds, "Rows", 0),
        columns=_number(ds, "Columns", 0))
