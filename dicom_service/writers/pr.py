"""Grayscale Softcopy Presentation State with the implant boxes of a radiograph.

SOP class: Grayscale Softcopy Presentation State Storage (1.2.840.10008.5.1.4.1.1.11.1),
built with ``highdicom.pr.GrayscaleSoftcopyPresentationState``. One graphic layer
``AI_IMPLANTS``; per finding a closed 5-point POLYLINE in PIXEL units (0\\0 = top-left
corner of the top-left pixel, so box edges map 1:1) and a text label
``"#<n> Implant <score> | <system> <p>"`` in a box just above it (below its top edge
when there is no room above). With no findings, one text ``"No implant found"`` at the
top-left. The VOI window and Modality LUT are copied from the source by highdicom;
the Presentation LUT Shape is the source's, or INVERSE for MONOCHROME1 sources.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicom_service.domain import RadiographResult
from dicom_service.writers import common
from dicom_service.writers.sc import label_text
from dicom_service.writers.sr import box_polyline

PRESENTATION_STATE_SERIES_NUMBER = 9004
LAYER_NAME = "AI_IMPLANTS"


def write_implant_presentation_state(
    source: Dataset,
    result: RadiographResult,
    *,
    uid_seed: str | None = None,
    series_number: int = PRESENTATION_STATE_SERIES_NUMBER,
    corrected: bool = False,
) -> Dataset:
    """Write a GSPS that draws the implant findings over the radiograph.

    Parameters
    ----------
    source : Dataset
        The single-frame grayscale radiograph (SamplesPerPixel 1).
    result : RadiographResult
        Boxes ``(x0, y0, x1, y1)`` in source pixels (x = column, y = row);
        ``result.image_shape`` must equal ``(Rows, Columns)``.
    uid_seed : str, optional
        Seed for deterministic UIDs.
    series_number : int
        Series Number of the new series.
    corrected : bool
        For findings a dentist reviewed (doctor-in-the-loop): described as corrected.

    Returns
    -------
    Dataset
        Complete presentation state with file meta.

    Raises
    ------
    ValueError
        If the image shape does not match, a box is empty or outside the image, or
        the source is not a single-sample image.
    """
    rows, cols = int(source.Rows), int(source.Columns)
    if tuple(result.image_shape) != (rows, cols):
        raise ValueError(
            f"result.image_shape {tuple(result.image_shape)} does not match the source "
            f"image (Rows, Columns) = ({rows}, {cols})"
        )
    uids = common.object_uids(uid_seed, "pr/implant")
    text_height = max(12.0, round(rows * 0.035))
    graphics: list[hd.pr.GraphicObject] = []
    texts: list[hd.pr.TextObject] = []
    for number, finding in enumerate(result.findings, start=1):
        x0, y0, x1, y1 = (float(v) for v in finding.box)
        if not (0 <= x0 < x1 <= cols and 0 <= y0 < y1 <= rows):
            raise ValueError(f"box {tuple(finding.box)} is empty or outside the {cols}x{rows} image")
        tracking_uid = uids.derive(f"tracking/{number}")
        graphics.append(
            hd.pr.GraphicObject(
                graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
                graphic_data=box_polyline(finding.box),
                units=hd.pr.AnnotationUnitsValues.PIXEL,
                tracking_id=f"Implant {number}",
                tracking_uid=tracking_uid,
            )
        )
        text = label_text(number, finding)
        top = y0 - text_height if y0 - text_height >= 0 else y0
        texts.append(
            hd.pr.TextObject(
                text_value=text,
                units=hd.pr.AnnotationUnitsValues.PIXEL,
                bounding_box=_text_box(x0, top, text, text_height, cols, rows),
                text_justification=hd.pr.TextJustificationValues.LEFT,
                tracking_id=f"Implant {number} label",
                tracking_uid=uids.derive(f"tracking/{number}/label"),
            )
        )
    if not result.findings:
        texts.append(
            hd.pr.TextObject(
                text_value="No implant found",
                units=hd.pr.AnnotationUnitsValues.PIXEL,
                bounding_box=_text_box(0.0, 0.0, "No implant found", text_height, cols, rows),
                text_justification=hd.pr.TextJustificationValues.LEFT,
            )
        )
    what = "Implants as a dentist reviewed them" if corrected else f"Implants found by {result.algorithm.name}"
    layer = hd.pr.GraphicLayer(layer_name=LAYER_NAME, order=1, description=what[:64])
    source = _lut_data_as_bytes(source)
    annotation = hd.pr.GraphicAnnotation(
        referenced_images=[source],
        graphic_layer=layer,
        graphic_objects=graphics or None,
        text_objects=texts,
    )
    shape = source.get("PresentationLUTShape") or (
        "INVERSE" if source.get("PhotometricInterpretation") == "MONOCHROME1" else "IDENTITY"
    )
    pr = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=[source],
        series_instance_uid=uids.series,
        series_number=series_number,
        sop_instance_uid=uids.instance,
        instance_number=1,
        manufacturer=common.MANUFACTURER,
        manufacturer_model_name=common.MODEL_NAME,
        software_versions=common.SOFTWARE_VERSION,
        device_serial_number=common.DEVICE_SERIAL_NUMBER,
        content_label="AI_IMPLANTS",
        content_description="Implant boxes reviewed by a dentist" if corrected else "Implant boxes found by AI",
        graphic_annotations=[annotation],
        graphic_layers=[layer],
        presentation_lut_transformation=hd.PresentationLUTTransformation(
            presentation_lut_shape=hd.PresentationLUTShapeValues(shape)
        ),
        series_description="AI implant boxes, corrected" if corrected else "AI implant boxes",
    )
    common.copy_series_anatomy(source, pr)
    common.add_algorithm_equipment(pr, result.algorithm)
    return pr


def _lut_data_as_bytes(source: Dataset) -> Dataset:
    """``source``, or a shallow copy of it whose Modality and VOI LUT Sequence items hold
    their LUT Data as bytes (OW): DICOM also allows US, a list of values, which highdicom
    (0.28) cannot copy into a presentation state. ``source`` itself is not changed."""
    keywords = [kw for kw in ("ModalityLUTSequence", "VOILUTSequence")
                if any(not isinstance(item.get("LUTData"), bytes | None) for item in source.get(kw) or [])]
    if not keywords:
        return source
    out = _own_elements(source)
    if hasattr(source, "file_meta"):
        out.file_meta = source.file_meta
    for keyword in keywords:
        items = []
        for item in getattr(source, keyword):
            item = _own_elements(item)
            if not isinstance(item.get("LUTData"), bytes | None):
                values = np.atleast_1d(np.asarray(item.LUTData, dtype=np.int64))
                item.add_new("LUTData", "OW", values.astype("<u2").tobytes())
            items.append(item)
        out.add(DataElement(source[keyword].tag, "SQ", Sequence(items)))  # a new element: source keeps its own
    return out


def _own_elements(ds: Dataset) -> Dataset:
    """A dataset with ``ds``'s elements in a mapping of its own (``copy.copy`` and
    ``Dataset(ds)`` share ``ds``'s), so that replacing one leaves ``ds`` as it was."""
    out = Dataset()
    for element in ds:
        out.add(element)
    return out


def _text_box(
    left: float, top: float, text: str, height: float, cols: int, rows: int
) -> tuple[float, float, float, float]:
    """Bounding box ``(left, top, right, bottom)`` for ``text``, clipped to the image."""
    height = min(height, float(rows))
    width = min(float(cols), 0.6 * height * len(text))
    left = min(max(0.0, left), cols - width)
    top = min(max(0.0, top), rows - height)
    return (left, top, left + width, min(float(rows), top + height))
