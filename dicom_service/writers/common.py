"""Shared pieces of the result writers: copied patient/study data, our equipment,
algorithm identification, UIDs and the codes every writer uses.

Coding choices (they go into the conformance statement)
--------------------------------------------------------
* Segment and finding codes are SNOMED CT: Tooth ``(38199008, SCT)`` under the
  category Anatomical Structure ``(91723000, SCT)``; Implant ``(40388003, SCT)`` under
  Physical object ``(260787004, SCT)``.
* Algorithm family (TID 4019 / Algorithm Identification Sequence, CID 7162): learned
  models (``AlgorithmInfo.family == "ai"``) are ``(123110, DCM, "Artificial
  Intelligence")``. CID 7162 has no neutral code for a classical, hand-written image
  processing pipeline (its other entries name one specific technique, such as edge
  detection or morphological operations, or *manual* processing), so the
  ``"baseline"`` family uses the private code ``(BASELINE, 99DENTALAI, "Classical
  image-processing baseline")``. CID 7162 is extensible, so this is permitted.
* Contributing Equipment (IHE AI Results): every object written for an algorithm
  carries one item for it with Purpose of Reference ``(Newcode1, 99IHE, "Processing
  Algorithm")`` as the profile asks, Manufacturer, Manufacturer's Model Name (the
  algorithm name), Software Versions (its version) and a Device UID stable per name
  and version. dciodvfy accepts the code (CID 7005 is extensible); the dicom3tools
  release installed here (2022) predates Device UID in that sequence (Type 3 in the
  current standard) and warns about it, which is not an error.
* Private coding schemes ``99DENTALAI`` (ours) and ``99IHE`` (IHE's temporary codes)
  are declared in the Coding Scheme Identification Sequence (0008,0110) whenever an
  object uses them, as PS3.3 C.12.1 requires for non-standard designators.
* UIDs: with a ``uid_seed`` the series and instance UIDs (and the UIDs this package
  assigns itself: tracking UIDs, our dimension organisation) are derived from
  ``f"{uid_seed}/{kind}/{role}"``, so a retried job writes identical SOP Instance
  UIDs; without a seed they are random (``2.25`` root). UIDs that highdicom assigns
  inside its objects are random either way. Callers must put a version into the
  seed when they write an amended object of the same kind.
"""

from __future__ import annotations

import datetime
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import highdicom as hd
from pydicom.charset import convert_encodings, decode_bytes, encode_string
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.coding import Code
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

from dicom_service import __version__
from dicom_service.domain import AlgorithmInfo
from dicom_service.uids import new_uid

# --------------------------------------------------------------------------- equipment
MANUFACTURER = "Dental AI Node"
MODEL_NAME = "Dental AI Node DICOM service"
DEVICE_SERIAL_NUMBER = "DAN-0001"
SOFTWARE_VERSION = __version__
#: Implementation Version Name (0002,0013), at most 16 characters.
IMPLEMENTATION_VERSION_NAME = f"DENTALAI_{__version__}"[:16]

# --------------------------------------------------------------------------- coding schemes
PRIVATE_SCHEME = "99DENTALAI"
IHE_SCHEME = "99IHE"

# --------------------------------------------------------------------------- codes
ANATOMICAL_STRUCTURE = Code("91723000", "SCT", "Anatomical Structure")
TOOTH = Code("38199008", "SCT", "Tooth")
PHYSICAL_OBJECT = Code("260787004", "SCT", "Physical object")
IMPLANT = Code("40388003", "SCT", "Implant")
ABSENT = Code("2667000", "SCT", "Absent")
FAMILY_AI = Code("123110", "DCM", "Artificial Intelligence")
FAMILY_BASELINE = Code("BASELINE", PRIVATE_SCHEME, "Classical image-processing baseline")
PROCESSING_ALGORITHM = Code("Newcode1", IHE_SCHEME, "Processing Algorithm")
SOURCE_IMAGE_FOR_PROCESSING = Code(
    "121322", "DCM", "Source image for image processing operation"
)
SEGMENTATION_DERIVATION = Code("113076", "DCM", "Segmentation")
IMPLANT_PART = Code("IMPLANTPART", PRIVATE_SCHEME, "Dental implant part")

_FAMILIES = {"ai": FAMILY_AI, "baseline": FAMILY_BASELINE}

_SCHEME_DESCRIPTIONS = {
    PRIVATE_SCHEME: (
        "Dental AI Node private codes",
        "Dental AI Node",
    ),
    IHE_SCHEME: (
        "IHE temporary codes (AI Results profile)",
        "IHE",
    ),
}

# Attributes copied from the source, by module (missing Type 2 ones become empty).
_PATIENT_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")
_PATIENT_OPTIONAL = (
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "OtherPatientIDsSequence",
    "PatientBirthTime",
    "PatientComments",
    "EthnicGroup",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
)
_STUDY_TYPE2 = ("StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")
_STUDY_OPTIONAL = (
    "IssuerOfAccessionNumberSequence",
    "StudyDescription",
    "ProcedureCodeSequence",
    "ReferringPhysicianIdentificationSequence",
)


@dataclass(frozen=True)
class ObjectUIDs:
    """UIDs of one result object.

    Attributes
    ----------
    series : str
        Series Instance UID of the new series.
    instance : str
        SOP Instance UID of the object.
    seed : str or None
        The seed they were derived from (``None``: random).
    """

    series: str
    instance: str
    seed: str | None

    def derive(self, role: str) -> str:
        """Return a further UID of this object (e.g. a dimension organisation UID)."""
        return new_uid(None if self.seed is None else f"{self.seed}/{role}")


def object_uids(uid_seed: str | None, kind: str) -> ObjectUIDs:
    """Series and instance UIDs for one object.

    Parameters
    ----------
    uid_seed : str or None
        Job-level seed; ``None`` gives random UIDs.
    kind : str
        Short name of the object kind (``"seg-tooth"``, ``"sr-implant"``, ...), so
        that the objects of one job get distinct UIDs from the same seed.
    """
    if uid_seed is None:
        return ObjectUIDs(series=new_uid(), instance=new_uid(), seed=None)
    seed = f"{uid_seed}/{kind}"
    return ObjectUIDs(
        series=new_uid(f"{seed}/series"), instance=new_uid(f"{seed}/instance"), seed=seed
    )


def now() -> tuple[str, str]:
    """Current local date and time as DICOM DA and TM strings."""
    stamp = datetime.datetime.now()
    return stamp.strftime("%Y%m%d"), stamp.strftime("%H%M%S")


def algorithm_family(algorithm: AlgorithmInfo) -> Code:
    """Code of an algorithm family (see the module docstring).

    Raises
    ------
    ValueError
        If ``algorithm.family`` is neither ``"ai"`` nor ``"baseline"``.
    """
    try:
        return _FAMILIES[algorithm.family]
    except KeyError:
        raise ValueError(
            f"unknown algorithm family {algorithm.family!r}; expected one of {sorted(_FAMILIES)}"
        ) from None


def algorithm_device_uid(algorithm: AlgorithmInfo) -> str:
    """A stable Device UID (0018,1002) for one algorithm name and version."""
    return new_uid(f"algorithm/{algorithm.name}/{algorithm.version}")


def hd_algorithm_identification(algorithm: AlgorithmInfo) -> hd.AlgorithmIdentificationSequence:
    """Algorithm Identification Sequence (0066,002F) for a SEG segment description."""
    return hd.AlgorithmIdentificationSequence(
        name=algorithm.name,
        family=algorithm_family(algorithm),
        version=algorithm.version,
        parameters={"parameters": algorithm.parameters} if algorithm.parameters else None,
    )


def sr_algorithm_identification(algorithm: AlgorithmInfo) -> hd.sr.AlgorithmIdentification:
    """TID 4019 Algorithm Identification content items for an SR."""
    return hd.sr.AlgorithmIdentification(
        name=algorithm.name,
        version=algorithm.version,
        parameters=[algorithm.parameters] if algorithm.parameters else None,
    )


def contributing_equipment_item(algorithm: AlgorithmInfo) -> Dataset:
    """Item of the Contributing Equipment Sequence (0018,A001) for an algorithm (IHE AIR).

    ``Manufacturer`` is our device, ``ManufacturerModelName`` the algorithm name,
    ``SoftwareVersions`` its version and ``DeviceUID`` a UID stable per name+version.
    """
    item = Dataset()
    item.Manufacturer = MANUFACTURER
    item.ManufacturerModelName = algorithm.name[:64]
    item.SoftwareVersions = algorithm.version[:64]
    item.DeviceUID = algorithm_device_uid(algorithm)
    item.PurposeOfReferenceCodeSequence = [code_item(PROCESSING_ALGORITHM)]
    family = algorithm_family(algorithm)
    item.ContributionDescription = f"{family.meaning}: {algorithm.name} {algorithm.version}"[:64]
    return item


def code_item(code: Code) -> Dataset:
    """A Code Sequence item (Basic Code Sequence macro) for ``code``."""
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def coding_scheme_items(designators: Iterable[str]) -> list[Dataset]:
    """Coding Scheme Identification Sequence (0008,0110) items for private schemes."""
    items = []
    for designator in sorted(set(designators)):
        name, responsible = _SCHEME_DESCRIPTIONS[designator]
        item = Dataset()
        item.CodingSchemeDesignator = designator
        item.CodingSchemeName = name
        item.CodingSchemeResponsibleOrganization = responsible
        items.append(item)
    return items


def add_private_schemes(ds: Dataset, designators: Iterable[str]) -> None:
    """Merge private coding schemes into ``ds.CodingSchemeIdentificationSequence``."""
    existing = {item.CodingSchemeDesignator for item in ds.get("CodingSchemeIdentificationSequence", [])}
    new = [item for item in coding_scheme_items(designators) if item.CodingSchemeDesignator not in existing]
    if new:
        ds.CodingSchemeIdentificationSequence = list(ds.get("CodingSchemeIdentificationSequence", [])) + new


def add_algorithm_equipment(ds: Dataset, algorithm: AlgorithmInfo) -> None:
    """Append the algorithm's Contributing Equipment item and declare the schemes it uses."""
    items = list(ds.get("ContributingEquipmentSequence", []))
    items.append(contributing_equipment_item(algorithm))
    ds.ContributingEquipmentSequence = items
    schemes = {IHE_SCHEME}
    if algorithm_family(algorithm).scheme_designator == PRIVATE_SCHEME:
        schemes.add(PRIVATE_SCHEME)
    add_private_schemes(ds, schemes)


#: The Specific Character Set written when a person's name needs more than the object's.
UTF8_CHARSET = "ISO_IR 192"


#: Single-valued Specific Character Sets that can hold text beyond ASCII (PS3.3 C.12.1.1.2);
#: anything else (absent, an ISO 2022 code extension, a value DICOM does not define) is
#: taken as able to hold ASCII only.
_WIDE_SETS = frozenset({"ISO_IR 100", "ISO_IR 101", "ISO_IR 109", "ISO_IR 110", "ISO_IR 144", "ISO_IR 127",
                        "ISO_IR 126", "ISO_IR 138", "ISO_IR 148", "ISO_IR 203", "ISO_IR 166", "ISO_IR 13",
                        "ISO_IR 192", "GB18030", "GBK"})


def _holds(text: str, charset: object) -> bool:
    """True if the Specific Character Set ``charset`` (a value, a list, or None for the
    default repertoire) holds ``text``: pydicom's own encoder, the one that writes the
    object, gives it back unchanged."""
    if text.isascii():
        return True
    values = [str(v) for v in ([charset] if charset is None or isinstance(charset, str) else charset) if v]
    if len(values) != 1 or values[0] not in _WIDE_SETS:
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # pydicom replaces what it cannot encode, with a warning
            encodings = convert_encodings(values)
            return decode_bytes(encode_string(text, encodings), encodings, set()) == text
    except Exception:  # noqa: BLE001 - any refusal of the encoder means it does not hold it
        return False


def make_room_for(ds: Dataset, text: str) -> None:
    """Switch ``ds`` to UTF-8 (``ISO_IR 192``) when its Specific Character Set cannot hold
    ``text`` (:func:`_holds`). Every element is read first, those in sequences too, so that
    values still held as the source's bytes (items copied from it) are decoded with the
    source's character set; pydicom then writes every one of them again in UTF-8 (a
    person's name is encoded again when its character set changed)."""
    if not _holds(text, ds.get("SpecificCharacterSet")):
        for _ in ds.iterall():  # reading an element decodes it with its data set's character set
            pass
        ds.SpecificCharacterSet = UTF8_CHARSET


def set_person_name(ds: Dataset, keyword: str, name: str) -> None:
    """Set the PN attribute ``keyword`` of ``ds`` to ``name``, in a character set that holds
    it (:func:`make_room_for`)."""
    make_room_for(ds, name)
    setattr(ds, keyword, name)


def copy_patient_study(source: Dataset, target: Dataset) -> None:
    """Copy the Patient and General Study modules (plus character set) from ``source``.

    Type 2 attributes absent from the source are written empty; optional ones are
    copied only when present.
    """
    if "SpecificCharacterSet" in source:
        target.SpecificCharacterSet = source.SpecificCharacterSet
    for keyword in _PATIENT_TYPE2 + _STUDY_TYPE2:
        value = source.get(keyword)
        setattr(target, keyword, value if value is not None else "")
    for keyword in _PATIENT_OPTIONAL + _STUDY_OPTIONAL:
        if keyword in source:
            setattr(target, keyword, source[keyword].value)
    target.StudyInstanceUID = source.StudyInstanceUID


def copy_series_anatomy(source: Dataset, target: Dataset, *, empty_if_unknown: bool = True) -> None:
    """Body Part Examined and Laterality (General Series) from the source.

    Laterality (Type 2C) is copied when the source has it. When the source has
    neither it nor Body Part Examined and ``empty_if_unknown`` is true, it is written
    empty ("unknown": without a body part nobody can tell whether it is paired);
    dciodvfy wants that for SC, PR and video but an absent one for SEG.
    """
    if source.get("BodyPartExamined"):
        target.BodyPartExamined = source.BodyPartExamined
    if source.get("Laterality"):
        target.Laterality = source.Laterality
    elif empty_if_unknown and not source.get("BodyPartExamined"):
        target.Laterality = ""


def set_series_and_equipment(
    target: Dataset,
    *,
    modality: str,
    series_uid: str,
    series_number: int,
    description: str,
) -> None:
    """General Series (new series) and General/Enhanced General Equipment modules."""
    date, time = now()
    target.Modality = modality
    target.SeriesInstanceUID = series_uid
    target.SeriesNumber = series_number
    target.SeriesDescription = description[:64]
    target.SeriesDate = date
    target.SeriesTime = time
    target.Manufacturer = MANUFACTURER
    target.ManufacturerModelName = MODEL_NAME
    target.DeviceSerialNumber = DEVICE_SERIAL_NUMBER
    target.SoftwareVersions = SOFTWARE_VERSION


def set_sop_common(
    target: Dataset,
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
) -> None:
    """SOP Common module, content date/time and the File Meta Information."""
    date, time = now()
    target.SOPClassUID = sop_class_uid
    target.SOPInstanceUID = sop_instance_uid
    target.InstanceCreationDate = date
    target.InstanceCreationTime = time
    target.ContentDate = date
    target.ContentTime = time
    target.InstanceNumber = 1
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = transfer_syntax_uid
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    target.file_meta = meta


def set_software_identity(ds: Dataset) -> None:
    """Overwrite the equipment attributes of a highdicom-built object with ours."""
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = MODEL_NAME
    ds.DeviceSerialNumber = DEVICE_SERIAL_NUMBER
    ds.SoftwareVersions = SOFTWARE_VERSION


def source_image_reference(source: Dataset, *, frame_number: int | None = None) -> Dataset:
    """An Image SOP Instance Reference item pointing at ``source`` (optionally one frame).

    Parameters
    ----------
    source : Dataset
        The referenced instance.
    frame_number : int, optional
        1-based frame number, for multi-frame sources.
    """
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if frame_number is not None:
        item.ReferencedFrameNumber = frame_number
    return item


def source_frame_count(source: Dataset) -> int:
    """Number of frames of ``source`` (1 when it has no Number of Frames)."""
    return int(source.get("NumberOfFrames", 1) or 1)


def referenced_series_item(sources: Iterable[Dataset]) -> list[Dataset]:
    """Referenced Series Sequence items (Common Instance Reference module)."""
    by_series: dict[str, list[Dataset]] = {}
    for ds in sources:
        ref = Dataset()
        ref.ReferencedSOPClassUID = ds.SOPClassUID
        ref.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        by_series.setdefault(ds.SeriesInstanceUID, []).append(ref)
    items = []
    for series_uid, refs in by_series.items():
        item = Dataset()
        item.SeriesInstanceUID = series_uid
        item.ReferencedInstanceSequence = refs
        items.append(item)
    return items
