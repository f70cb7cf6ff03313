"""Secondary Capture images: radiographs with burned-in implant boxes for legacy
viewers, and enhanced still photographs.

SOP class: Secondary Capture Image Storage (1.2.840.10008.5.1.4.1.1.7), RGB,
8 bits, uncompressed (Explicit VR Little Endian), Modality ``OT``, Conversion Type
``WSD`` (workstation), Image Type ``DERIVED\\SECONDARY``, Burned In Annotation
``YES`` when boxes or text were drawn into the pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from pydicom.dataset import Dataset

from dicom_service.domain import AlgorithmInfo, ImplantFinding
from dicom_service.writers import common

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"

_BOX_COLOUR = (255, 210, 0)  # RGB: amber, readable on grey
_PART_COLOUR = (0, 200, 255)
_AXIS_COLOUR = (255, 64, 64)
_TEXT_COLOUR = (0, 0, 0)


def write_secondary_capture(
    source: Dataset,
    rgb: np.ndarray,
    *,
    description: str,
    series_number: int,
    uid_seed: str | None = None,
    burned_in_annotation: bool = True,
    algorithm: AlgorithmInfo | None = None,
    derivation_description: str = "",
) -> Dataset:
    """Write an RGB Secondary Capture image derived from ``source``.

    Parameters
    ----------
    source : Dataset
        The image the capture derives from (patient and study are copied from it).
    rgb : np.ndarray
        ``(H, W, 3)`` uint8 RGB pixels, row-major (``[y, x, channel]``).
    description : str
        Series Description (at most 64 characters are kept).
    series_number : int
        Series Number of the new series.
    uid_seed : str, optional
        Seed for deterministic UIDs (see :func:`common.object_uids`).
    burned_in_annotation : bool
        Whether text or graphics were drawn into the pixels (sets (0028,0301)).
    algorithm : AlgorithmInfo, optional
        Algorithm that produced the image; recorded as Contributing Equipment.
    derivation_description : str
        Free text for Derivation Description (0008,2111); a default is used if empty.

    Returns
    -------
    Dataset
        Complete SC instance with file meta, ready for ``save_as(...,
        enforce_file_format=True)`` and C-STORE.

    Raises
    ------
    ValueError
        If ``rgb`` is not a non-empty ``(H, W, 3)`` uint8 array.
    """
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        shape = getattr(rgb, "shape", None)
        dtype = getattr(rgb, "dtype", None)
        raise ValueError(f"rgb must be an (H, W, 3) uint8 array, got shape {shape} dtype {dtype}")
    rows, cols = int(rgb.shape[0]), int(rgb.shape[1])
    if rows == 0 or cols == 0 or rows > 65535 or cols > 65535:
        raise ValueError(f"rgb has an unusable size {rows}x{cols}")

    uids = common.object_uids(uid_seed, f"sc/{series_number}")
    ds = Dataset()
    common.copy_patient_study(source, ds)
    common.set_series_and_equipment(
        ds, modality="OT", series_uid=uids.series, series_number=series_number, description=description
    )
    common.set_sop_common(ds, sop_class_uid=SECONDARY_CAPTURE, sop_instance_uid=uids.instance)

    # SC Equipment
    ds.ConversionType = "WSD"
    # General Image
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.PatientOrientation = source.get("PatientOrientation", "") or ""
    common.copy_series_anatomy(source, ds)
    ds.BurnedInAnnotation = "YES" if burned_in_annotation else "NO"
    ds.DerivationDescription = (
        derivation_description or f"{description}; derived by {common.MODEL_NAME}"
    )[:1024]
    ref = common.source_image_reference(source)
    ref.PurposeOfReferenceCodeSequence = [common.code_item(common.SOURCE_IMAGE_FOR_PROCESSING)]
    ds.SourceImageSequence = [ref]
    ds.LossyImageCompression = "00"
    # Image Pixel
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(rgb).tobytes()  # even: 3*rows*cols may be odd
    if len(ds.PixelData) % 2:
        ds.PixelData = ds.PixelData + b"\x00"
    if algorithm is not None:
        common.add_algorithm_equipment(ds, algorithm)
    return ds


def render_findings(image: np.ndarray, findings: Sequence[ImplantFinding]) -> np.ndarray:
    """Draw implant boxes and labels onto a grayscale radiograph.

    Parameters
    ----------
    image : np.ndarray
        ``(rows, cols)`` float32 in ``[0, 1]``, 1 = radiopaque (drawn white).
    findings : sequence of ImplantFinding
        Boxes ``(x0, y0, x1, y1)`` in pixels of ``image`` (x = column, y = row).
        Each gets a rectangle, a label ``"Implant 0.93 | <top system>"``, thinner
        rectangles for its parts and a line for its axis if known. With no findings a
        banner ``"No implant found"`` is drawn instead.

    Returns
    -------
    np.ndarray
        ``(rows, cols, 3)`` uint8 RGB.

    Raises
    ------
    ValueError
        If ``image`` is not a 2-D array.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 2 or image.size == 0:
        shape = getattr(image, "shape", None)
        raise ValueError(f"image must be a non-empty (rows, cols) array, got shape {shape}")
    grey = np.clip(np.nan_to_num(image.astype(np.float32)), 0.0, 1.0)
    grey8 = np.round(grey * 255.0).astype(np.uint8)
    canvas = np.ascontiguousarray(np.repeat(grey8[:, :, None], 3, axis=2))
    rows, cols = grey8.shape
    scale = max(rows, cols) / 800.0
    thickness = max(2, int(round(2 * scale)))
    font_scale = max(0.35, 0.5 * scale)
    if not findings:
        _banner(canvas, "No implant found", (4, 4), font_scale * 1.2, thickness)
        return canvas
    for index, finding in enumerate(findings, start=1):
        x0, y0, x1, y1 = (int(round(v)) for v in finding.box)
        for part in finding.parts:
            px0, py0, px1, py1 = (int(round(v)) for v in part.box)
            cv2.rectangle(
                canvas, (px0, py0), (px1 - 1, py1 - 1), _PART_COLOUR, max(1, thickness // 2), cv2.LINE_8
            )
        if finding.axis is not None:
            xa, ya, xb, yb = (int(round(v)) for v in finding.axis)
            cv2.line(canvas, (xa, ya), (xb, yb), _AXIS_COLOUR, max(1, thickness // 2), cv2.LINE_8)
        cv2.rectangle(canvas, (x0, y0), (x1 - 1, y1 - 1), _BOX_COLOUR, thickness, cv2.LINE_8)
        _banner(canvas, label_text(index, finding), (x0, y0), font_scale, thickness, above=True)
    return canvas


def label_text(index: int, finding: ImplantFinding) -> str:
    """Short ASCII label of a finding: ``"#1 Implant 0.93 | SystemX 0.71"``; a box a
    dentist drew says ``"(drawn)"`` instead of a score, a system they named ``"(named)"``
    instead of a probability."""
    text = f"#{index} Implant " + ("(drawn)" if finding.origin == "person" else f"{finding.score:.2f}")
    if finding.system_top:
        name, prob = finding.system_top[0]
        text += f" | {name} " + ("(named)" if finding.system_by_person else f"{prob:.2f}")
    return text.encode("ascii", "replace").decode("ascii")


def _banner(
    canvas: np.ndarray,
    text: str,
    origin: tuple[int, int],
    font_scale: float,
    thickness: int,
    *,
    above: bool = False,
) -> None:
    """Draw ``text`` on a filled box at ``origin`` (x, y), kept inside the canvas."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    text_thickness = max(1, thickness // 2)
    (width, height), baseline = cv2.getTextSize(text, font, font_scale, text_thickness)
    pad = max(2, thickness)
    box_w, box_h = width + 2 * pad, height + baseline + 2 * pad
    rows, cols = canvas.shape[:2]
    x, y = origin
    if above:
        y = y - box_h if y - box_h >= 0 else y
    x = int(min(max(0, x), max(0, cols - box_w)))
    y = int(min(max(0, y), max(0, rows - box_h)))
    cv2.rectangle(canvas, (x, y), (x + box_w - 1, y + box_h - 1), _BOX_COLOUR, cv2.FILLED)
    cv2.putText(
        canvas, text, (x + pad, y + pad + height), font, font_scale, _TEXT_COLOUR, text_thickness, cv2.LINE_AA
    )
