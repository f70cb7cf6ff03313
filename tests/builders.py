"""Synthetic DICOM instances for tests: phantoms only, never patient data.

Every builder is deterministic in its pixel content for a given ``seed``; UIDs are new
(:func:`dicom_service.uids.new_uid`) unless ``study_uid``/``series_uid`` are passed.
Every valid builder output passes ``dciodvfy`` without errors and can be written with
``ds.save_as(path, enforce_file_format=True)`` (see :func:`save`).

Boxes are ``(x0, y0, x1, y1)`` in pixels, ``x`` = column, ``y`` = row, ``x1``/``y1``
exclusive, like :mod:`dicom_service.domain`.

Bad-input helpers (:func:`truncated_bytes`, :func:`non_dicom_bytes`,
:func:`mismatched_sop_class`, :func:`oversized_rows`, :func:`with_uid`,
:func:`make_colour_photo_as_dx`) deliberately produce invalid objects.
"""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, JPEGBaseline8Bit

from dicom_service.media.video import video_transfer_syntax_for
from dicom_service.media.video_encode import encode_h264_mp4
from dicom_service.uids import new_uid
from tests.phantoms import intraoral_phantom, intraoral_scene, panoramic_phantom

if TYPE_CHECKING:
    from dicom_service.training.radiograph_scene import RadiographScene

Box = tuple[float, float, float, float]

IO_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.3"
IO_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.3.1"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
VIDEO_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4.1"
VL_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4"

PATIENT_NAME = "PHANTOM^IMPLANT"
PATIENT_ID = "PH0001"

__all__ = [
    "make_intraoral_radiograph", "make_intraoral_radiograph_with_truth",
    "make_panoramic_dx", "make_panoramic_dx_with_truth", "make_radiograph_from_scene",
    "make_periapical_phantom_with_truth",
    "make_video_photographic",
    "make_intraoral_scene", "make_vl_photographic_jpeg", "make_colour_photo_as_dx",
    "truncated_bytes", "non_dicom_bytes", "mismatched_sop_class", "oversized_rows",
    "with_uid", "save",
]


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _base(sop_class: str, modality: str, transfer_syntax: str, *, study_uid: str | None,
          series_uid: str | None, series_description: str) -> Dataset:
    """Patient, study, series, equipment and SOP common attributes of a phantom."""
    ds = Dataset()
    sop_uid = new_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid or new_uid()
    ds.SeriesInstanceUID = series_uid or new_uid()
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = "20240102"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = "101500"
    ds.AccessionNumber = "ACC0001"
    ds.ReferringPhysicianName = "REFERRER^PHANTOM"
    ds.StudyID = "1"
    ds.StudyDescription = "Synthetic phantom study"
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.SeriesDescription = series_description
    ds.InstanceNumber = 1
    ds.Manufacturer = "dicom_service test builders"
    ds.ManufacturerModelName = "phantom"
    ds.SoftwareVersions = "1"
    ds.BurnedInAnnotation = "NO"
    return ds


def _radiograph_dataset(image: np.ndarray, *, sop_class: str, modality: str,
                        bits_stored: int, photometric: str, for_processing: bool,
                        study_uid: str | None, series_uid: str | None,
                        description: str, value_range: tuple[float, float] | None = None,
                        full_range_window: bool = False, pixel_mm: float = 0.1) -> Dataset:
    """Wrap a ``(rows, columns)`` float radiopacity image in ``[0, 1]`` as DX/IO.

    ``image`` 0..1 is mapped linearly onto ``value_range`` (fractions of the stored
    range; by default 10-90 % for presentation and 5-60 % for processing).
    Presentation images get a LINEAR VOI window: with ``full_range_window`` one that
    maps stored ``0..max`` exactly onto ``0..1`` (``WindowCenter = 2**(bits-1)``,
    ``WindowWidth = 2**bits``), else one over ``value_range``. Processing images get
    none (the DX and IO IODs allow a VOI only for presentation).
    """
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}")
    if not 8 <= bits_stored <= 16:
        raise ValueError(f"bits_stored must be in [8, 16], got {bits_stored}")
    ds = _base(sop_class, modality, ExplicitVRLittleEndian, study_uid=study_uid,
               series_uid=series_uid, series_description=description)
    max_value = (1 << bits_stored) - 1
    # Presentation images use 10-90 % of the range so the VOI window matters;
    # processing images a smaller, offset range so that a percentile window is needed.
    default_range = (0.10, 0.90) if not for_processing else (0.05, 0.60)
    low, high = value_range if value_range is not None else default_range
    stored = np.clip(np.rint((low + (high - low) * image) * max_value), 0, max_value).astype("<u2")
    if photometric == "MONOCHROME1":
        stored = (max_value - stored).astype("<u2")
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PROCESSING" if for_processing else "FOR PRESENTATION"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = int(image.shape[0]), int(image.shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"
    ds.PixelIntensityRelationship = "LIN"
    # -1: higher stored values mean less X-ray intensity (more radiopaque).
    ds.PixelIntensityRelationshipSign = 1 if photometric == "MONOCHROME1" else -1
    ds.LossyImageCompression = "00"
    ds.PixelSpacing = ds.ImagerPixelSpacing = [pixel_mm, pixel_mm]
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.PixelSpacingCalibrationDescription = "phantom geometry"
    ds.DetectorType = "SCINTILLATOR"
    ds.KVP = 65
    ds.PatientOrientation = ["L", "F"] if modality == "IO" else ["R", "F"]
    ds.AcquisitionContextSequence = []
    ds.PositionerType = "NONE"
    if full_range_window and not for_processing:
        # LINEAR (PS3.3 C.11.2.1.2.1): y = (x - (c - 0.5)) / (w - 1) + 0.5 = x / max_value
        ds.WindowCenter = 1 << (bits_stored - 1)
        ds.WindowWidth = 1 << bits_stored
        ds.VOILUTFunction = "LINEAR"
    elif not for_processing:
        ds.WindowCenter = round((low + high) / 2 * max_value, 1)
        ds.WindowWidth = round((high - low) * max_value, 1)
        ds.VOILUTFunction = "LINEAR"
    ds.PixelData = stored.tobytes()
    return ds


def _intraoral_anatomy(ds: Dataset) -> None:
    ds.BodyPartExamined = "JAW"
    ds.ImageLaterality = "L"  # consistent with tooth 36 (FDI), mandibular left first molar
    ds.AnatomicRegionSequence = [_code("91609006", "SCT", "Mandible")]
    ds.PrimaryAnatomicStructureSequence = [_code("866006002", "SCT", "Permanent mandibular left first molar tooth")]


def _panoramic_anatomy(ds: Dataset) -> None:
    ds.BodyPartExamined = "JAW"
    ds.ImageLaterality = "B"
    ds.ViewPosition = ""
    ds.AnatomicRegionSequence = [_code("28035005", "SCT", "Teeth, gums and supporting structures")]


def make_intraoral_radiograph_with_truth(
    *, implants: int = 1, rows: int = 416, cols: int = 416, bits_stored: int = 12,
    photometric: str = "MONOCHROME2", for_processing: bool = False, seed: int = 0,
    study_uid: str | None = None, series_uid: str | None = None,
) -> tuple[Dataset, list[Box]]:
    """Digital Intra-Oral X-Ray phantom with the true implant boxes.

    Parameters
    ----------
    implants : int
        Number of threaded-screw implant phantoms (0-3).
    rows, cols : int
        Image size.
    bits_stored : int
        8-16; BitsAllocated is always 16.
    photometric : {"MONOCHROME2", "MONOCHROME1"}
        MONOCHROME1 stores inverted values (and PresentationLUTShape INVERSE), so
        implants still display white.
    for_processing : bool
        For Processing SOP class (no VOI window) instead of For Presentation.
    seed : int
        Pixel content seed.

    Returns
    -------
    ds : Dataset
        Modality IO, Explicit VR Little Endian, 16 bits allocated.
    boxes : list of tuple
        ``(x0, y0, x1, y1)`` of each implant (x = column, y = row, exclusive ends).
    """
    image, boxes = intraoral_phantom(rows, cols, implants, seed)
    sop_class = IO_PROCESSING if for_processing else IO_PRESENTATION
    ds = _radiograph_dataset(image, sop_class=sop_class, modality="IO", bits_stored=bits_stored,
                             photometric=photometric, for_processing=for_processing,
                             study_uid=study_uid, series_uid=series_uid,
                             description="Intra-oral phantom")
    _intraoral_anatomy(ds)
    return ds, boxes


def make_intraoral_radiograph(
    *, implants: int = 1, rows: int = 416, cols: int = 416, bits_stored: int = 12,
    photometric: str = "MONOCHROME2", for_processing: bool = False, seed: int = 0,
    study_uid: str | None = None, series_uid: str | None = None,
) -> Dataset:
    """Digital Intra-Oral X-Ray phantom; see :func:`make_intraoral_radiograph_with_truth`."""
    return make_intraoral_radiograph_with_truth(
        implants=implants, rows=rows, cols=cols, bits_stored=bits_stored,
        photometric=photometric, for_processing=for_processing, seed=seed,
        study_uid=study_uid, series_uid=series_uid)[0]


def make_panoramic_dx_with_truth(
    *, implants: int = 3, rows: int = 1000, cols: int = 2000, seed: int = 0,
    study_uid: str | None = None, series_uid: str | None = None,
) -> tuple[Dataset, list[Box]]:
    """Digital X-Ray For Presentation panoramic phantom (modality PX) with true boxes.

    Returns
    -------
    ds : Dataset
        12 bits stored in 16, MONOCHROME2, with a VOI window.
    boxes : list of tuple
        ``(x0, y0, x1, y1)`` of each implant.
    """
    image, boxes = panoramic_phantom(rows, cols, implants, seed)
    ds = _radiograph_dataset(image, sop_class=DX_PRESENTATION, modality="PX", bits_stored=12,
                             photometric="MONOCHROME2", for_processing=False,
                             study_uid=study_uid, series_uid=series_uid,
                             description="Panoramic phantom")
    _panoramic_anatomy(ds)
    return ds, boxes


def make_panoramic_dx(*, implants: int = 3, rows: int = 1000, cols: int = 2000, seed: int = 0,
                      study_uid: str | None = None, series_uid: str | None = None) -> Dataset:
    """Panoramic phantom; see :func:`make_panoramic_dx_with_truth`."""
    return make_panoramic_dx_with_truth(implants=implants, rows=rows, cols=cols, seed=seed,
                                        study_uid=study_uid, series_uid=series_uid)[0]


def make_radiograph_from_scene(
    scene: RadiographScene, *, modality: str = "IO", bits_stored: int = 12,
    photometric: str = "MONOCHROME2", for_processing: bool = False,
    study_uid: str | None = None, series_uid: str | None = None,
) -> Dataset:
    """Wrap a training phantom (:mod:`dicom_service.training.radiograph_phantoms`) as DICOM.

    The scene's 12-bit display values ``v`` are rescaled to the full stored range,
    ``rint(v / 4095 * (2**bits_stored - 1))`` (inverted for MONOCHROME1).

    * For presentation, a LINEAR VOI window over the full stored range is written, so
      :func:`dicom_service.media.pixels.load_radiograph` returns ``scene.image / 4095``
      up to rounding (``0.5 / (2**bits_stored - 1)``): the input the implant models
      were trained on.
    * For processing, the DX and IO IODs forbid a VOI window (``dciodvfy``: "may only
      be present in For Presentation images"), so ``load_radiograph`` applies its
      0.5-99.5 percentile window: the result is ``scene.image / 4095`` stretched
      linearly between its 0.5th and 99.5th percentiles (and clipped), not equal to it.

    The truth stays in ``scene.implants`` (boxes ``(x0, y0, x1, y1)``, x = column,
    y = row, in the same pixel grid).

    Parameters
    ----------
    scene : RadiographScene
        ``scene.image`` is ``(rows, cols)`` uint16 with 12 bits stored, implants bright.
    modality : {"IO", "PX", "DX"}
        IO: Digital Intra-Oral X-Ray; PX/DX: Digital X-Ray (panoramic anatomy for PX).
    bits_stored : int
        8-16; BitsAllocated is always 16.
    photometric : {"MONOCHROME2", "MONOCHROME1"}
        MONOCHROME1 stores inverted values, so implants still display white.
    for_processing : bool
        For Processing SOP class instead of For Presentation.
    study_uid, series_uid : str, optional
        New UIDs by default.

    Returns
    -------
    Dataset
        Explicit VR Little Endian, 16 bits allocated, PixelSpacing = ``scene.pixel_mm``.
    """
    if modality not in ("IO", "PX", "DX"):
        raise ValueError(f"modality must be IO, PX or DX, got {modality!r}")
    if scene.image.ndim != 2:
        raise ValueError(f"scene.image must be (rows, cols), got shape {scene.image.shape}")
    if modality == "IO":
        sop_class = IO_PROCESSING if for_processing else IO_PRESENTATION
    else:
        sop_class = DX_PROCESSING if for_processing else DX_PRESENTATION
    image = np.clip(scene.image.astype(np.float64) / 4095.0, 0.0, 1.0)
    ds = _radiograph_dataset(image, sop_class=sop_class, modality=modality, bits_stored=bits_stored,
                             photometric=photometric, for_processing=for_processing,
                             study_uid=study_uid, series_uid=series_uid,
                             description=f"Training phantom {scene.scene_id}",
                             value_range=(0.0, 1.0), full_range_window=True,
                             pixel_mm=round(float(scene.pixel_mm), 6))
    if modality == "IO":
        _intraoral_anatomy(ds)
    else:
        _panoramic_anatomy(ds)
    return ds


def make_intraoral_scene(*, frames: int = 30, rows: int = 480, cols: int = 640,
                         seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Intraoral-camera-like RGB frames and their true tooth masks.

    Returns
    -------
    frames : np.ndarray
        ``(T, rows, cols, 3)`` uint8 RGB: off-white textured teeth on pink gingiva,
        noise, slight blur and camera shake between frames.
    masks : np.ndarray
        ``(T, rows, cols)`` bool, True on teeth.
    """
    return intraoral_scene(frames, rows, cols, seed)


def _vl_image_attributes(ds: Dataset, rows: int, cols: int) -> None:
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SamplesPerPixel = 3
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PlanarConfiguration = 0
    ds.LossyImageCompression = "01"
    ds.AcquisitionContextSequence = []
    ds.PatientOrientation = ""
    ds.BodyPartExamined = "JAW"
    ds.AnatomicRegionSequence = [_code("28035005", "SCT", "Teeth, gums and supporting structures")]


def _cine_attributes(ds: Dataset, frames: int, fps: float) -> None:
    """Multi-frame and Cine attributes of a ``frames``-frame clip at ``fps``."""
    ds.NumberOfFrames = frames
    ds.FrameTime = round(1000.0 / fps, 3)
    ds.FrameIncrementPointer = 0x00181063  # FrameTime
    ds.CineRate = max(1, int(round(fps)))
    ds.RecommendedDisplayFrameRate = max(1, int(round(fps)))
    ds.StartTrim = 1
    ds.StopTrim = frames
    ds.FrameDelay = 0.0
    ds.ActualFrameDuration = max(1, int(round(1000.0 / fps)))
    ds.PreferredPlaybackSequencing = 0


def make_video_photographic(
    *, frames: int = 30, rows: int = 480, cols: int = 640, fps: float = 30.0, seed: int = 0,
    study_uid: str | None = None, series_uid: str | None = None,
) -> Dataset:
    """Video Photographic Image Storage (modality XC) holding H.264 High Profile in MP4.

    The MP4 file is one fragment with an empty Basic Offset Table; the transfer syntax
    comes from :func:`dicom_service.media.video.video_transfer_syntax_for` (``.102`` up
    to 1920x1080 at 30 fps). Odd sizes are padded to even by the encoder, and
    Rows/Columns give the padded size.
    """
    clip, _ = intraoral_scene(frames, rows, cols, seed)
    mp4 = encode_h264_mp4(clip, fps)
    rows_even, cols_even = rows + rows % 2, cols + cols % 2
    ts = video_transfer_syntax_for(cols_even, rows_even, fps)
    ds = _base(VIDEO_PHOTOGRAPHIC, "XC", ts, study_uid=study_uid, series_uid=series_uid,
               series_description="Intraoral camera phantom video")
    _vl_image_attributes(ds, rows_even, cols_even)
    ds.PhotometricInterpretation = "YBR_PARTIAL_420"
    ds.LossyImageCompressionMethod = "ISO_14496_10"
    _cine_attributes(ds, frames, fps)
    ds.PixelData = encapsulate([mp4], has_bot=False)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds


def with_pixel_stream(ds: Dataset, data: bytes, frames: int | None = None,
                      size: tuple[int, int] | None = None) -> Dataset:
    """Copy of the video ``ds`` holding the bitstream ``data`` (and ``frames`` frames of
    ``size`` ``(rows, columns)``, if given)."""
    out = copy.deepcopy(ds)
    if frames is not None:
        out.NumberOfFrames = frames
    if size is not None:
        out.Rows, out.Columns = size
    out.PixelData = encapsulate([data + b"\0" * (len(data) % 2)], has_bot=False)
    return out


def make_native_video_photographic(*, frames: int = 2, rows: int = 2160, cols: int = 3840, fps: float = 30.0,
                                   seed: int = 0) -> Dataset:
    """Video Photographic Image Storage with native RGB frames (Explicit VR Little Endian).

    The node accepts native video: how a recording larger than an H.264 Level 4.2 stream may
    carry (1920x1080) arrives, e.g. a 4K intraoral camera clip. The scene is rendered at a
    quarter of the size and enlarged, which is quick and keeps the teeth recognisable.
    """
    small, _ = intraoral_scene(frames, max(16, rows // 4), max(16, cols // 4), seed)
    clip = np.stack([cv2.resize(f, (cols, rows), interpolation=cv2.INTER_LINEAR) for f in small])
    ds = _base(VIDEO_PHOTOGRAPHIC, "XC", ExplicitVRLittleEndian, study_uid=None, series_uid=None,
               series_description="Intraoral camera phantom video, native")
    _vl_image_attributes(ds, rows, cols)
    ds.PhotometricInterpretation = "RGB"
    ds.LossyImageCompression = "00"
    _cine_attributes(ds, frames, fps)
    ds.PixelData = clip.tobytes()
    return ds


def make_palette_photo(*, rows: int = 48, cols: int = 64, seed: int = 0) -> tuple[Dataset, np.ndarray]:
    """VL Photographic Image Storage in PALETTE COLOR (8-bit indices, 16-bit palette entries;
    index i shows as R = i, G = 255 - i, B = 128); returns it and its ``(rows, cols, 3)``
    uint8 RGB appearance."""
    index = np.random.default_rng(seed).integers(0, 256, (rows, cols), dtype=np.uint8)
    ds = _base(VL_PHOTOGRAPHIC, "XC", ExplicitVRLittleEndian, study_uid=None, series_uid=None,
               series_description="Intraoral photo phantom, palette colour")
    _vl_image_attributes(ds, rows, cols)
    ds.SamplesPerPixel = 1
    del ds.PlanarConfiguration
    ds.PhotometricInterpretation = "PALETTE COLOR"
    ds.LossyImageCompression = "00"
    levels = np.arange(256, dtype=np.uint16)
    for colour, values in (("Red", levels), ("Green", 255 - levels), ("Blue", np.full(256, 128, np.uint16))):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", (values * 257).astype("<u2").tobytes())
    ds.PixelData = index.tobytes()
    appearance = np.stack([index, 255 - index, np.full_like(index, 128)], axis=-1)
    return ds, appearance


def make_hevc_video_photographic(frames: Iterable[np.ndarray], *, count: int, rows: int, cols: int,
                                 fps: float = 30.0) -> Dataset:
    """Video Photographic Image Storage holding HEVC/H.265 Main Profile (transfer syntax .107):
    how a clip larger than an H.264 Level 4.2 stream may carry (1920x1080) arrives from a
    4K-class camera. ``frames`` are ``count`` ``(rows, cols, 3)`` uint8 RGB frames, encoded by
    libx265 one at a time (an iterator need not hold the clip)."""
    import av

    stream = io.BytesIO()
    with av.open(stream, "w", format="hevc") as container:
        video = container.add_stream("libx265", rate=round(fps))
        video.width, video.height, video.pix_fmt = cols, rows, "yuv420p"
        video.options = {"preset": "ultrafast", "x265-params": "log-level=error"}
        for frame in frames:
            for packet in video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
    data = stream.getvalue()
    ds = make_native_video_photographic(frames=1, rows=rows, cols=cols, fps=fps)
    _cine_attributes(ds, count, fps)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.107"
    ds.PhotometricInterpretation = "YBR_PARTIAL_420"
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_23008_2"
    ds.PixelData = encapsulate([data + b"\0" * (len(data) % 2)], has_bot=False)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds


def h264_stream(frames: Iterable[np.ndarray], *, rows: int, cols: int, keyint: int, fps: float = 30.0,
                container: str = "mp4", x264_params: str = "") -> bytes:
    """``(rows, cols, 3)`` uint8 RGB frames encoded by libx264 (B-frames on) with an IDR
    picture every ``keyint`` frames and no others (scene cuts off), in ``container``:
    ``"mp4"``, ``"mpegts"``, ``"matroska"``, or ``"h264"`` (a raw elementary stream,
    without timestamps). ``x264_params``: more ``key=value`` x264 options, ``:``-separated
    (e.g. ``"open-gop=1"``: later keyframes are not IDR pictures)."""
    import av

    params = f"keyint={keyint}:min-keyint={keyint}:scenecut=0" + (f":{x264_params}" if x264_params else "")
    out = io.BytesIO()
    with av.open(out, "w", format=container) as muxer:
        video = muxer.add_stream("libx264", rate=round(fps))
        video.width, video.height, video.pix_fmt = cols, rows, "yuv420p"
        video.options = {"preset": "veryfast", "crf": "20", "x264-params": params}
        for frame in frames:
            for packet in video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                muxer.mux(packet)
        for packet in video.encode():
            muxer.mux(packet)
    return out.getvalue()


def _jpeg_dataset(rgb: np.ndarray, sop_class: str, modality: str, *, study_uid: str | None,
                  series_uid: str | None, description: str) -> Dataset:
    params = [cv2.IMWRITE_JPEG_QUALITY, 92,
              cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422]
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise RuntimeError("OpenCV could not encode the JPEG phantom")
    ds = _base(sop_class, modality, JPEGBaseline8Bit, study_uid=study_uid,
               series_uid=series_uid, series_description=description)
    _vl_image_attributes(ds, rgb.shape[0], rgb.shape[1])
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.PixelData = encapsulate([jpeg.tobytes()], has_bot=True)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds


def make_vl_photographic_jpeg(*, rows: int = 480, cols: int = 640, seed: int = 0,
                              study_uid: str | None = None, series_uid: str | None = None) -> Dataset:
    """VL Photographic Image Storage (XC), one JPEG Baseline frame, YBR_FULL_422."""
    clip, _ = intraoral_scene(1, rows, cols, seed)
    return _jpeg_dataset(clip[0], VL_PHOTOGRAPHIC, "XC", study_uid=study_uid,
                         series_uid=series_uid, description="Intraoral photo phantom")


def make_colour_photo_as_dx(*, rows: int = 480, cols: int = 640, seed: int = 0,
                            study_uid: str | None = None, series_uid: str | None = None) -> Dataset:
    """BAD INPUT: an uncompressed RGB intraoral photo labelled Digital X-Ray (DX, PX).

    Deliberately violates the DX IOD (SamplesPerPixel 3, RGB), like a misconfigured
    camera that sends to the radiograph route. ``dciodvfy`` reports errors on it.
    """
    clip, _ = intraoral_scene(1, rows, cols, seed)
    ds = _base(DX_PRESENTATION, "PX", ExplicitVRLittleEndian, study_uid=study_uid,
               series_uid=series_uid, series_description="Colour photo sent as DX")
    _vl_image_attributes(ds, rows, cols)
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.PhotometricInterpretation = "RGB"
    ds.LossyImageCompression = "00"
    ds.PixelData = clip[0].tobytes()
    return ds


# ----------------------------------------------------------------------------- bad inputs
def _to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def truncated_bytes(ds: Dataset) -> bytes:
    """BAD INPUT: the Part 10 file of ``ds`` cut in the middle of its pixel data."""
    data = _to_bytes(ds)
    pixel_length = len(ds.PixelData)
    return data[: len(data) - pixel_length // 2]


def non_dicom_bytes() -> bytes:
    """BAD INPUT: 1 KiB that is not DICOM (no ``DICM`` at offset 128), deterministic."""
    noise = np.random.default_rng(1234).integers(0, 256, 1024 - 40, dtype=np.uint8).tobytes()
    return b"%PDF-1.4 this is not a DICOM file at all\n"[:40] + noise


def mismatched_sop_class(ds: Dataset) -> Dataset:
    """BAD INPUT: a copy of ``ds`` whose SOP Class UID says Video Photographic."""
    out = copy.deepcopy(ds)
    out.SOPClassUID = VIDEO_PHOTOGRAPHIC
    out.file_meta.MediaStorageSOPClassUID = VIDEO_PHOTOGRAPHIC
    return out


def oversized_rows(ds: Dataset, factor: int = 8) -> Dataset:
    """BAD INPUT: a copy of ``ds`` whose Rows and Columns are ``factor`` times too large."""
    out = copy.deepcopy(ds)
    out.Rows = min(65535, int(ds.Rows) * factor)
    out.Columns = min(65535, int(ds.Columns) * factor)
    return out


def with_uid(ds: Dataset, sop_instance_uid: str = "1.2/../../etc") -> Dataset:
    """BAD INPUT: a copy of ``ds`` with an arbitrary (e.g. path-like) SOP Instance UID.

    pydicom's value validation is bypassed so that the invalid value really is stored.
    """
    out = copy.deepcopy(ds)
    out["SOPInstanceUID"] = DataElement(0x00080018, "UI", sop_instance_uid,
                                        validation_mode=config.IGNORE)
    out.file_meta["MediaStorageSOPInstanceUID"] = DataElement(
        0x00020003, "UI", sop_instance_uid, validation_mode=config.IGNORE)
    return out


def save(ds: Dataset, path: str | Path) -> Path:
    """Write ``ds`` as a DICOM Part 10 file (``enforce_file_format=True``); return the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target, enforce_file_format=True)
    return target


def make_periapical_phantom_with_truth(
    *, seed: int, implants: int, study_uid: str | None = None, series_uid: str | None = None,
) -> tuple[Dataset, list[Box]]:
    """A 416 x 416 training-style periapical phantom (the implant models' domain) as IO.

    ``seed`` should lie outside the bundled model's training scenes (which use hashed
    63-bit seeds); 10 000 + k is safe. Returns the data set and the true implant boxes
    ``(x0, y0, x1, y1)``.
    """
    from dicom_service.training.radiograph_phantoms import render_periapical

    scene = render_periapical(seed, implants=implants)
    ds = make_radiograph_from_scene(scene, modality="IO", study_uid=study_uid, series_uid=series_uid)
    return ds, [tuple(float(v) for v in imp.box) for imp in scene.implants]


def implant_coco_with_splits(folder: Path, *, periapical: int, panoramic: int, seed: int,
                             held_out: Sequence[str]) -> Path:
    """A phantom implant COCO file (``generate_dataset``) in ``folder`` whose first images
    with an implant go to the splits ``held_out`` names, one each in order, and every other
    image to ``train``; returns its path."""
    from dicom_service.training.coco import generate_dataset

    path = generate_dataset(folder, periapical=periapical, panoramic=panoramic, seed=seed)
    doc = json.loads(path.read_text())
    with_implants = sorted({a["image_id"] for a in doc["annotations"]})
    splits = dict(zip(with_implants, held_out, strict=False))
    for image in doc["images"]:
        image["split"] = splits.get(image["id"], "train")
    path.write_text(json.dumps(doc))
    return path
