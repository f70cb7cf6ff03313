"""Enhanced intra-oral video as a new Video Photographic series.

SOP class: Video Photographic Image Storage (1.2.840.10008.5.1.4.1.1.77.1.4.1),
modality XC. Pixel data: the whole MP4 (H.264 High Profile, yuv420p) as ONE fragment
with an empty Basic Offset Table (PS3.5 8.2.7), transfer syntax from
:func:`dicom_service.media.video.video_transfer_syntax_for` (``.102`` up to 1080p30,
``.104`` up to 1080p60). Image Pixel: SamplesPerPixel 3, YBR_PARTIAL_420, 8 bits,
PlanarConfiguration 0, no Pixel Aspect Ratio. Cine + Multi-frame: FrameTime,
NumberOfFrames, FrameIncrementPointer -> FrameTime, CineRate,
RecommendedDisplayFrameRate, Start/Stop Trim. No Modality LUT, VOI LUT, overlay or
graphic annotation. ImageType ``DERIVED\\SECONDARY``; DerivationDescription and
SourceImageSequence point at the source video.
"""

from __future__ import annotations

import io
from typing import BinaryIO

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, encapsulate_buffer

from dicom_service.domain import AlgorithmInfo
from dicom_service.media.video import video_transfer_syntax_for
from dicom_service.media.video_encode import encode_h264_mp4
from dicom_service.writers import common

VIDEO_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4.1"
ENHANCED_VIDEO_SERIES_NUMBER = 9101

_COPIED_IMAGE_ATTRIBUTES = ("AnatomicRegionSequence", "PrimaryAnatomicStructureSequence")


def write_enhanced_video(
    source: Dataset,
    frames: np.ndarray,
    fps: float,
    *,
    description: str = "AI enhanced video",
    series_number: int = ENHANCED_VIDEO_SERIES_NUMBER,
    uid_seed: str | None = None,
    algorithm: AlgorithmInfo | None = None,
    derivation_description: str = "",
    crf: int = 20,
) -> Dataset:
    """Encode enhanced frames as H.264 and wrap them in a Video Photographic instance.

    Parameters
    ----------
    source : Dataset
        The original video (or photo); patient and study are copied from it.
    frames : np.ndarray
        ``(T, H, W, 3)`` uint8 RGB, ``[frame, row, column, channel]``, ``T >= 1``.
        Odd ``H``/``W`` are padded to even by the encoder and Rows/Columns give the
        padded size.
    fps : float
        Frame rate (> 0); FrameTime = 1000 / fps ms.
    description : str
        Series Description.
    series_number : int
        Series Number of the new series.
    uid_seed : str, optional
        Seed for deterministic UIDs.
    algorithm : AlgorithmInfo, optional
        Algorithm that enhanced the frames; recorded as Contributing Equipment.
    derivation_description : str
        Text for Derivation Description (0008,2111); a default is used if empty.
    crf : int
        x264 constant rate factor.

    Returns
    -------
    Dataset
        Complete instance with file meta (transfer syntax = the H.264 one).

    Raises
    ------
    ValueError
        If ``frames`` is not ``(T, H, W, 3)`` uint8 or ``fps`` is not positive.
    dicom_service.domain.MediaError
        If the clip exceeds H.264 Level 4.2 or encoding fails.
    """
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[3] != 3 \
            or frames.shape[0] < 1 or frames.dtype != np.uint8:
        raise ValueError(
            f"frames must be (T, H, W, 3) uint8 with T >= 1, got shape "
            f"{getattr(frames, 'shape', None)} dtype {getattr(frames, 'dtype', None)}"
        )
    if not (isinstance(fps, (int, float)) and np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    mp4 = encode_h264_mp4(frames, float(fps), crf=crf)
    height, width = (int(v) for v in frames.shape[1:3])
    return wrap_enhanced_video(
        source, mp4, int(frames.shape[0]), height + height % 2, width + width % 2, float(fps),
        description=description, series_number=series_number, uid_seed=uid_seed, algorithm=algorithm,
        derivation_description=derivation_description,
    )


def wrap_enhanced_video(
    source: Dataset,
    mp4: bytes | BinaryIO,
    n_frames: int,
    rows: int,
    cols: int,
    fps: float,
    *,
    description: str = "AI enhanced video",
    series_number: int = ENHANCED_VIDEO_SERIES_NUMBER,
    uid_seed: str | None = None,
    algorithm: AlgorithmInfo | None = None,
    derivation_description: str = "",
) -> Dataset:
    """Wrap an MP4 already encoded (:class:`~dicom_service.media.video_encode.H264Encoder`,
    the way a streamed clip is written) in a Video Photographic instance.

    Parameters
    ----------
    source : Dataset
        The original video (or photo); patient and study are copied from it.
    mp4 : bytes or binary file
        The MP4 file (H.264 High Profile, yuv420p), or a seekable file open on it
        (:meth:`~dicom_service.media.video_encode.H264Encoder.close_file`): the Pixel Data
        then stays in that file and is copied from it when the instance is written.
    n_frames, rows, cols : int
        Its frame count and (even) frame size.
    fps : float
        Its frame rate (> 0).
    description, series_number, uid_seed, algorithm, derivation_description
        As :func:`write_enhanced_video`.

    Raises
    ------
    ValueError
        A count or size below 1, an empty ``mp4``, or ``fps`` not positive.
    dicom_service.domain.MediaError
        The geometry exceeds H.264 Level 4.2.
    """
    if isinstance(mp4, bytes):
        size = len(mp4)
    else:
        size = mp4.seek(0, io.SEEK_END)
        mp4.seek(0)
    if n_frames < 1 or rows < 1 or cols < 1 or not size:
        raise ValueError(f"need frames and an MP4, got {n_frames} frames {cols}x{rows}, {size} bytes")
    if not (isinstance(fps, (int, float)) and np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    syntax = video_transfer_syntax_for(cols, rows, float(fps))

    uids = common.object_uids(uid_seed, f"video/{series_number}")
    ds = Dataset()
    common.copy_patient_study(source, ds)
    common.set_series_and_equipment(
        ds, modality="XC", series_uid=uids.series, series_number=series_number, description=description
    )
    common.copy_series_anatomy(source, ds)
    common.set_sop_common(
        ds, sop_class_uid=VIDEO_PHOTOGRAPHIC, sop_instance_uid=uids.instance, transfer_syntax_uid=syntax
    )

    # General Image, VL Image, Acquisition Context
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.PatientOrientation = ""
    ds.BurnedInAnnotation = "NO"
    ds.AcquisitionContextSequence = []
    for keyword in _COPIED_IMAGE_ATTRIBUTES:
        if keyword in source:
            setattr(ds, keyword, source[keyword].value)
    ds.DerivationDescription = (
        derivation_description or f"{description}; H.264 re-encode by {common.MODEL_NAME}"
    )[:1024]
    ds.SourceImageSequence = [_source_reference(source)]
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_14496_10"

    # Image Pixel
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_PARTIAL_420"
    ds.PlanarConfiguration = 0
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0

    # Multi-frame and Cine
    frame_time = round(1000.0 / float(fps), 3)
    rate = max(1, int(round(float(fps))))
    ds.NumberOfFrames = n_frames
    ds.FrameIncrementPointer = 0x00181063  # Frame Time
    ds.FrameTime = frame_time
    ds.CineRate = rate
    ds.RecommendedDisplayFrameRate = rate
    ds.StartTrim = 1
    ds.StopTrim = n_frames
    ds.FrameDelay = 0.0
    ds.ActualFrameDuration = max(1, int(round(frame_time)))
    ds.PreferredPlaybackSequencing = 0

    ds.PixelData = encapsulate([mp4], has_bot=False) if isinstance(mp4, bytes) else \
        encapsulate_buffer([mp4], has_bot=False)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    if algorithm is not None:
        common.add_algorithm_equipment(ds, algorithm)
    return ds


def _source_reference(source: Dataset) -> Dataset:
    """Source Image Sequence item: the whole source instance, purpose 121322."""
    item = common.source_image_reference(source)
    item.PurposeOfReferenceCodeSequence = [common.code_item(common.SOURCE_IMAGE_FOR_PROCESSING)]
    return item
