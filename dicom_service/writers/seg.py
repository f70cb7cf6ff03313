"""Segmentation objects: teeth on intra-oral videos and photos, implants on radiographs.

SOP class: Segmentation Storage (1.2.840.10008.5.1.4.1.1.66.4), BINARY, 1 bit,
Explicit VR Little Endian, every source frame kept (no empty-frame omission: OHIF
misplaces overlays when frames are skipped).

Tooth SEG (video or photo, no Frame of Reference)
    highdicom 0.28 refuses multi-frame sources without a Frame of Reference, so the
    IOD (PS3.3 A.51) is written here with pydicom. There is no Frame of Reference, no
    Pixel Measures, Plane Position or Plane Orientation (all conditional on a Frame of
    Reference). Per frame: Derivation Image (derivation ``(113076, DCM,
    "Segmentation")``, source = the video frame with Referenced Frame Number, Spatial
    Locations Preserved ``YES`` and purpose ``(121322, DCM, "Source image for image
    processing operation")``) and Frame Content (Dimension Index Values, Temporal
    Position Index = source frame number). The single segment's Segment Identification
    is shared. Dimensions: Referenced Segment Number (0062,000B) in Segment
    Identification, then Temporal Position Index (0020,9128) in Frame Content, which
    is the source frame number (a video frame is a time point; Referenced Frame Number
    cannot be a dimension because it is nested two sequences deep).

Implant SEG (radiograph, one frame)
    Built with ``highdicom.seg.Segmentation``, which accepts single-frame sources
    without a Frame of Reference: segment 1 "Implant" (260787004 Physical object /
    40388003 Implant) with every finding's box filled, plus one segment per distinct
    part label (private code ``(IMPLANTPART, 99DENTALAI, "Dental implant part")``).
"""

from __future__ import annotations

from typing import BinaryIO

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from dicom_service.domain import AlgorithmInfo, RadiographResult
from dicom_service.writers import common

SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4"
TOOTH_SERIES_NUMBER = 9102
IMPLANT_SERIES_NUMBER = 9002

_LOSSY_TRANSFER_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.81",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.4.203",
    }
    | {f"1.2.840.10008.1.2.4.{n}" for n in range(100, 109)}
    | {f"1.2.840.10008.1.2.4.{n}.1" for n in range(100, 107)}
)


def write_tooth_segmentation(
    source: Dataset,
    masks: np.ndarray | MaskPacker,
    *,
    algorithm: AlgorithmInfo,
    uid_seed: str | None = None,
    series_number: int = TOOTH_SERIES_NUMBER,
    correction: str | None = None,
    creator: str | None = None,
) -> Dataset:
    """Write a BINARY tooth Segmentation of a video or a single photograph.

    Parameters
    ----------
    source : Dataset
        Video Photographic / Endoscopic (multi-frame) or VL Photographic /
        Secondary Capture (single-frame) instance; only its attributes are used.
    masks : np.ndarray
        ``(T, H, W)`` bool (or 0/1 integers), ``T`` = the source's Number of Frames
        (1 for a single-frame source), ``H``/``W`` = its Rows/Columns; ``masks[k]``
        is the tooth mask of source frame ``k + 1``. Empty frames are kept. Or a
        :class:`MaskPacker` holding them (a streamed video's masks, already packed).
    algorithm : AlgorithmInfo
        Segment algorithm; also recorded as Contributing Equipment.
    uid_seed : str, optional
        Seed for deterministic UIDs.
    series_number : int
        Series Number of the new series.
    correction : str, optional
        For masks a user corrected (doctor-in-the-loop): what was corrected, recorded as
        the Content Description; the segment's algorithm type is then SEMIAUTOMATIC and
        the series is described as corrected.
    creator : str, optional
        Who made the masks (a person's name as DICOM writes it, ``Family^Given^...``):
        the Content Creator's Name, which is otherwise empty (the AI's own masks). A name
        the source's character set cannot hold switches the object to UTF-8 (ISO_IR 192).

    Returns
    -------
    Dataset
        Complete Segmentation instance with file meta; frame ``k + 1`` is ``masks[k]``.

    Raises
    ------
    ValueError
        If ``masks`` does not match the source frames or is not binary.
    """
    if isinstance(masks, MaskPacker):
        expected = (common.source_frame_count(source), int(source.Rows), int(source.Columns))
        if (masks.frames, masks.rows, masks.columns) != expected:
            raise ValueError(f"packed masks ({masks.frames}, {masks.rows}, {masks.columns}) do not match the "
                             f"source frames (NumberOfFrames, Rows, Columns) = {expected}")
        shape, pixel_data = expected, masks.pixel_value()
    else:
        frames = _validate_masks(source, masks)
        shape, pixel_data = frames.shape, _pack_masks(frames)
    # a source's Frame of Reference (rare for camera images) is not carried over: every frame
    # names its source frame (Derivation Image), with which the IOD needs no Frame of
    # Reference and so no plane positions, which a camera image does not have
    n_frames, rows, cols = shape
    multi_frame = "NumberOfFrames" in source
    uids = common.object_uids(uid_seed, "seg/tooth")

    ds = Dataset()
    common.copy_patient_study(source, ds)
    common.set_series_and_equipment(
        ds, modality="SEG", series_uid=uids.series, series_number=series_number,
        description="AI tooth segmentation" if correction is None else "AI tooth segmentation, corrected",
    )
    common.set_sop_common(ds, sop_class_uid=SEGMENTATION, sop_instance_uid=uids.instance)
    common.copy_series_anatomy(source, ds, empty_if_unknown=False)
    _set_lossy(source, ds)

    # General Image, Image Pixel, Segmentation Image
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.PatientOrientation = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 1
    ds.BitsStored = 1
    ds.HighBit = 0
    ds.PixelRepresentation = 0
    ds.SegmentationType = "BINARY"
    ds.ContentLabel = "TEETH"
    ds.ContentDescription = "Teeth segmented on every frame" if correction is None else correction[:64]
    common.set_person_name(ds, "ContentCreatorName", creator or "")
    ds.SegmentsOverlap = "NO"
    ds.PresentationLUTShape = "IDENTITY"
    ds.SegmentSequence = [
        hd.seg.SegmentDescription(
            segment_number=1,
            segment_label="Tooth",
            segmented_property_category=common.ANATOMICAL_STRUCTURE,
            segmented_property_type=common.TOOTH,
            algorithm_type=(hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC if correction is None
                            else hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC),
            algorithm_identification=common.hd_algorithm_identification(algorithm),
            tracking_uid=uids.derive("segment/1"),
            tracking_id="Teeth",
        )
    ]

    # Multi-frame Dimension
    dimension_uid = uids.derive("dimension-organization")
    organization = Dataset()
    organization.DimensionOrganizationUID = dimension_uid
    ds.DimensionOrganizationSequence = [organization]
    ds.DimensionIndexSequence = [
        _dimension(dimension_uid, "ReferencedSegmentNumber", "SegmentIdentificationSequence",
                   "Referenced Segment Number"),
        _dimension(dimension_uid, "TemporalPositionIndex", "FrameContentSequence",
                   "Source frame number"),
    ]

    # Multi-frame Functional Groups
    ds.NumberOfFrames = n_frames
    shared = Dataset()
    segment_identification = Dataset()
    segment_identification.ReferencedSegmentNumber = 1
    shared.SegmentIdentificationSequence = [segment_identification]
    ds.SharedFunctionalGroupsSequence = [shared]
    ds.PerFrameFunctionalGroupsSequence = [
        _per_frame_item(source, index + 1, multi_frame) for index in range(n_frames)
    ]

    # References: General Image Source Image Sequence and Common Instance Reference
    whole = common.source_image_reference(source)
    whole.PurposeOfReferenceCodeSequence = [common.code_item(common.SOURCE_IMAGE_FOR_PROCESSING)]
    ds.SourceImageSequence = [whole]
    ds.ReferencedSeriesSequence = common.referenced_series_item([source])

    ds.PixelData = pixel_data
    common.add_algorithm_equipment(ds, algorithm)
    return ds


class MaskPacker:
    """BINARY SEG pixel data built one mask at a time: one bit per pixel, frames back to back
    with no per-frame padding, least significant bit first, padded to an even length (as
    :func:`pydicom.pixels.pack_bits` packs a whole ``(T, H, W)`` array, without its
    full-size temporary copies). A streamed video's masks are packed as they come, at an
    eighth of a byte per pixel, in memory or, given a ``spool`` file, on disk.

    Parameters
    ----------
    rows, columns : int
        The size every mask has.
    spool : binary file, optional
        A seekable file, empty and open for reading and writing (``tempfile.TemporaryFile()``),
        that takes the packed bits instead of memory; :meth:`pixel_value` then hands it on
        as the Segmentation's Pixel Data.
    """

    def __init__(self, rows: int, columns: int, spool: BinaryIO | None = None) -> None:
        self.rows, self.columns = rows, columns
        self.frames = 0
        self.spool = spool
        self._packed = bytearray()
        self._carry = np.zeros(0, dtype=bool)  # bits of a byte not yet full (fewer than 8)
        self._sealed = False
        self.foreground = 0

    def add(self, mask: np.ndarray) -> None:
        """Append the next frame's mask ``(rows, columns)`` bool (or 0/1 integers).

        Raises
        ------
        ValueError
            Wrong shape, values other than 0 and 1, or the spool already handed on.
        """
        if self._sealed:
            raise ValueError("the packed masks were already handed on as Pixel Data")
        if not isinstance(mask, np.ndarray) or mask.shape != (self.rows, self.columns):
            raise ValueError(f"mask shape {getattr(mask, 'shape', None)} is not ({self.rows}, {self.columns})")
        if mask.dtype != bool:
            if not np.issubdtype(mask.dtype, np.integer) or mask.size and (mask.min() < 0 or mask.max() > 1):
                raise ValueError(f"masks must be bool or 0/1 integers, got dtype {mask.dtype}")
            mask = mask.astype(bool)
        bits = np.concatenate([self._carry, mask.reshape(-1)]) if self._carry.size else mask.reshape(-1)
        whole = bits.size // 8 * 8
        packed = np.packbits(bits[:whole], bitorder="little").tobytes()
        if self.spool is not None:
            self.spool.write(packed)
        else:
            self._packed += packed
        self._carry = bits[whole:].copy()
        self.foreground += int(np.count_nonzero(mask))
        self.frames += 1

    def _tail(self, length: int) -> bytes:
        """The last bits (spare bits zero) and the padding to an even length, after ``length``
        bytes of whole packed bytes."""
        tail = np.packbits(self._carry, bitorder="little").tobytes()
        return tail + b"\x00" if (length + len(tail)) % 2 else tail

    def pixel_data(self) -> bytes:
        """The packed frames so far (the last byte's spare bits zero, even length), in memory."""
        if self.spool is None:
            return bytes(self._packed) + self._tail(len(self._packed))
        if self._sealed:
            self.spool.seek(0)
            data = self.spool.read()
            self.spool.seek(0)
            return data
        end = self.spool.tell()
        self.spool.seek(0)
        data = self.spool.read()
        self.spool.seek(end)
        return data + self._tail(end)

    def pixel_value(self) -> bytes | BinaryIO:
        """The Pixel Data value: :meth:`pixel_data`, or with a spool the spool itself,
        completed (last bits, padding) and rewound; no mask can be added after that."""
        if self.spool is None:
            return self.pixel_data()
        if not self._sealed:
            self.spool.write(self._tail(self.spool.tell()))
            self._sealed = True
        self.spool.seek(0)
        return self.spool


def _pack_masks(frames: np.ndarray) -> bytes:
    """``(T, H, W)`` bool → BINARY SEG pixel data (:class:`MaskPacker`)."""
    packer = MaskPacker(*frames.shape[1:])
    for frame in frames:
        packer.add(frame)
    return packer.pixel_data()


def write_implant_segmentation(
    source: Dataset,
    result: RadiographResult,
    *,
    uid_seed: str | None = None,
    series_number: int = IMPLANT_SERIES_NUMBER,
    corrected: bool = False,
) -> Dataset:
    """Write a BINARY Segmentation of the implants found on a radiograph.

    Parameters
    ----------
    source : Dataset
        The single-frame radiograph (IO, DX or PX) the result was computed on.
    result : RadiographResult
        ``result.image_shape`` must equal ``(Rows, Columns)`` of ``source``; boxes are
        ``(x0, y0, x1, y1)`` pixels (x = column, y = row, x1/y1 exclusive).
    uid_seed : str, optional
        Seed for deterministic UIDs.
    series_number : int
        Series Number of the new series.
    corrected : bool
        For findings a dentist reviewed (doctor-in-the-loop): the segments' algorithm
        type is SEMIAUTOMATIC and the series is described as corrected.

    Returns
    -------
    Dataset
        Segment 1 "Implant" = union of all finding boxes; segments 2.. = one per
        distinct part label (union of that label's part boxes), in first-seen order.

    Raises
    ------
    ValueError
        ``"no findings"`` if ``result.findings`` is empty; also if the image shape
        does not match the source or the source is multi-frame.
    """
    if not result.findings:
        raise ValueError("no findings")
    rows, cols = int(source.Rows), int(source.Columns)
    if tuple(result.image_shape) != (rows, cols):
        raise ValueError(
            f"result.image_shape {tuple(result.image_shape)} does not match the source "
            f"image (Rows, Columns) = ({rows}, {cols})"
        )
    if common.source_frame_count(source) != 1:
        raise ValueError("the implant SEG writer needs a single-frame radiograph")

    part_labels: list[str] = []
    for finding in result.findings:
        for part in finding.parts:
            if part.label not in part_labels:
                part_labels.append(part.label)
    planes = np.zeros((1, rows, cols, 1 + len(part_labels)), dtype=bool)
    for finding in result.findings:
        _fill_box(planes[0, :, :, 0], finding.box)
        for part in finding.parts:
            _fill_box(planes[0, :, :, 1 + part_labels.index(part.label)], part.box)

    uids = common.object_uids(uid_seed, "seg/implant")
    algorithm_id = common.hd_algorithm_identification(result.algorithm)
    algorithm_type = (hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC if corrected
                      else hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=1,
            segment_label="Implant",
            segmented_property_category=common.PHYSICAL_OBJECT,
            segmented_property_type=common.IMPLANT,
            algorithm_type=algorithm_type,
            algorithm_identification=algorithm_id,
            tracking_uid=uids.derive("segment/1"),
            tracking_id="Implants",
        )
    ]
    for number, label in enumerate(part_labels, start=2):
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=f"Implant part {label}"[:64],
                segmented_property_category=common.PHYSICAL_OBJECT,
                segmented_property_type=common.IMPLANT_PART,
                algorithm_type=algorithm_type,
                algorithm_identification=algorithm_id,
                tracking_uid=uids.derive(f"segment/{number}"),
                tracking_id=f"Implant part {label}"[:64],
            )
        )
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=planes,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=uids.series,
        series_number=series_number,
        sop_instance_uid=uids.instance,
        instance_number=1,
        manufacturer=common.MANUFACTURER,
        manufacturer_model_name=common.MODEL_NAME,
        software_versions=common.SOFTWARE_VERSION,
        device_serial_number=common.DEVICE_SERIAL_NUMBER,
        content_description="Implants (boxes) reviewed by a dentist" if corrected else "Implants (boxes) found by AI",
        content_label="IMPLANTS",
        omit_empty_frames=False,
    )
    seg.SeriesDescription = "AI implant segmentation, corrected" if corrected else "AI implant segmentation"
    shared = seg.SharedFunctionalGroupsSequence[0]
    if "FrameOfReferenceUID" not in seg and "PixelMeasuresSequence" in shared:
        # highdicom writes Pixel Spacing without Slice Thickness from a DX/IO source,
        # which its own reader then refuses; without a Frame of Reference the group is
        # not required, so drop it.
        del shared.PixelMeasuresSequence
    seg.PatientOrientation = source.get("PatientOrientation", "") or ""
    common.copy_series_anatomy(source, seg, empty_if_unknown=False)
    common.add_algorithm_equipment(seg, result.algorithm)
    if part_labels:
        common.add_private_schemes(seg, {common.PRIVATE_SCHEME})
    return seg


# --------------------------------------------------------------------------- helpers
def _validate_masks(source: Dataset, masks: np.ndarray) -> np.ndarray:
    """Check ``masks`` against the source frames; return it as a C-contiguous bool array."""
    if not isinstance(masks, np.ndarray):
        raise ValueError(f"masks must be a numpy array, got {type(masks).__name__}")
    expected = (common.source_frame_count(source), int(source.Rows), int(source.Columns))
    if masks.ndim != 3 or tuple(masks.shape) != expected:
        raise ValueError(
            f"masks shape {tuple(masks.shape)} does not match the source frames "
            f"(NumberOfFrames, Rows, Columns) = {expected}"
        )
    if masks.dtype == bool:
        return np.ascontiguousarray(masks)
    if not np.issubdtype(masks.dtype, np.integer) or masks.size and (masks.min() < 0 or masks.max() > 1):
        raise ValueError(f"masks must be bool or 0/1 integers, got dtype {masks.dtype}")
    return np.ascontiguousarray(masks.astype(bool))


def _set_lossy(source: Dataset, ds: Dataset) -> None:
    """Lossy Image Compression: inherited from the source (or its transfer syntax)."""
    meta = getattr(source, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    lossy = source.get("LossyImageCompression", "") == "01" or syntax in _LOSSY_TRANSFER_SYNTAXES
    ds.LossyImageCompression = "01" if lossy else "00"
    if lossy:
        for keyword in ("LossyImageCompressionRatio", "LossyImageCompressionMethod"):
            if keyword in source:
                setattr(ds, keyword, source[keyword].value)


def _dimension(organization_uid: str, index_keyword: str, group_keyword: str, label: str) -> Dataset:
    item = Dataset()
    item.DimensionOrganizationUID = organization_uid
    item.DimensionIndexPointer = Tag(index_keyword)
    item.FunctionalGroupPointer = Tag(group_keyword)
    item.DimensionDescriptionLabel = label
    return item


def _per_frame_item(source: Dataset, frame_number: int, multi_frame: bool) -> Dataset:
    """Per-frame functional groups for SEG frame ``frame_number`` (1-based)."""
    ref = common.source_image_reference(source, frame_number=frame_number if multi_frame else None)
    ref.SpatialLocationsPreserved = "YES"
    ref.PurposeOfReferenceCodeSequence = [common.code_item(common.SOURCE_IMAGE_FOR_PROCESSING)]
    derivation = Dataset()
    derivation.DerivationCodeSequence = [common.code_item(common.SEGMENTATION_DERIVATION)]
    derivation.SourceImageSequence = [ref]
    content = Dataset()
    content.DimensionIndexValues = [1, frame_number]
    content.TemporalPositionIndex = frame_number
    item = Dataset()
    item.DerivationImageSequence = [derivation]
    item.FrameContentSequence = [content]
    return item


def _fill_box(plane: np.ndarray, box: tuple[float, float, float, float]) -> None:
    """Set the pixels of ``box`` (x0, y0, x1, y1; x1/y1 exclusive) in ``plane`` (rows, cols)."""
    rows, cols = plane.shape
    x0, y0, x1, y1 = box
    c0 = int(np.clip(np.floor(x0), 0, cols))
    c1 = int(np.clip(np.ceil(x1), 0, cols))
    r0 = int(np.clip(np.floor(y0), 0, rows))
    r1 = int(np.clip(np.ceil(y1), 0, rows))
    plane[r0:r1, c0:c1] = True
