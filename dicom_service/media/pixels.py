"""Radiograph pixel loading: decode, Modality LUT, VOI LUT, MONOCHROME1 inversion.

The output of :func:`load_radiograph` is what every
:class:`~dicom_service.vision.runtime.RadiographRuntime` expects: a ``(rows, columns)``
float32 image in ``[0, 1]`` with 1 the most radiopaque (white on a normal display).
"""

from __future__ import annotations

import io
import logging
import struct
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi, pixel_array
from pydicom.uid import UID

from dicom_service.domain import MediaError, UnsupportedInputError
from dicom_service.media.pixel_file import deferred_pixel_data, file_fragments, fragment_ranges

log = logging.getLogger(__name__)

#: Robust window used when an image carries no VOI (percentiles of the modality values).
PERCENTILE_WINDOW: tuple[float, float] = (0.5, 99.5)
_PERCENTILE_MAX_SAMPLES = 1_000_000
#: Fewest pixels a side of a radiograph (the smallest intra-oral sensors give about 1,000).
MIN_RADIOGRAPH_SIDE = 32
_UNDEFINED_LENGTH = 0xFFFFFFFF
_COLOUR_PREFIXES = ("RGB", "YBR", "PALETTE", "HSV", "ARGB", "CMYK")
#: What pydicom's pixel decoders raise on corrupt, truncated or unsupported pixel data
#: (:func:`decode_error` turns them into a :class:`~dicom_service.domain.MediaError`).
DECODE_ERRORS = (ValueError, RuntimeError, NotImplementedError, AttributeError, KeyError,
                  TypeError, IndexError, struct.error, EOFError)


def decode_error(exc: BaseException) -> MediaError:
    """The :class:`MediaError` for one of :data:`DECODE_ERRORS` (raise it ``from exc``)."""
    return MediaError(f"pixel data cannot be decoded ({type(exc).__name__}: {str(exc)[:200]})")


def _is_encapsulated(ds: Dataset) -> bool:
    """True if the pixel data is encapsulated (compressed transfer syntax)."""
    file_meta = getattr(ds, "file_meta", None)
    ts = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if ts:
        return UID(str(ts)).is_encapsulated
    return bool(ds["PixelData"].is_undefined_length)


def _positive_int(ds: Dataset, keyword: str, default: int | None = None) -> int:
    value = ds.get(keyword, default)
    try:
        number = int(value) if value is not None and value != "" else 0
    except (TypeError, ValueError) as exc:
        raise MediaError(f"{keyword} is not an integer") from exc
    if number < 1:
        raise MediaError(f"{keyword} is missing or not positive ({number})")
    return number


def check_pixel_consistency(ds: Dataset) -> None:
    """Check, without decoding, that the pixel data can hold what the header declares.

    For native (uncompressed) transfer syntaxes the pixel data must be at least
    ``Rows x Columns x NumberOfFrames x SamplesPerPixel x ceil(BitsAllocated / 8)``
    bytes (``BitsAllocated == 1``: packed bits; ``YBR_FULL_422``: 2 samples per pixel).
    For encapsulated transfer syntaxes it must contain at least one fragment.
    An instance without ``PixelData`` (e.g. an SR) passes.

    Pixel data left in its file (read with ``defer_size``) is checked there without being
    read: the item headers of encapsulated data are walked
    (:func:`~dicom_service.media.pixel_file.file_fragments`), and native data's declared
    length is compared with the header and with the file's size.

    Parameters
    ----------
    ds : Dataset
        The instance; ``file_meta.TransferSyntaxUID`` is used when present.

    Raises
    ------
    MediaError
        Rows/Columns/BitsAllocated missing or not positive, pixel data shorter than
        declared (or running past the end of its file), or encapsulated pixel data without
        any fragment.
    """
    if "PixelData" not in ds:
        return
    deferred = deferred_pixel_data(ds)
    if deferred is not None:
        if deferred.length == _UNDEFINED_LENGTH:
            file_fragments(ds)  # raises MediaError if malformed or without a fragment
            return
        if deferred.value_tell + deferred.length > Path(ds.filename).stat().st_size:
            raise MediaError("the file ends inside its pixel data")
        if not _is_encapsulated(ds):
            _check_native_length(ds, deferred.length)
            return
    data = ds.PixelData
    if data is None or len(data) == 0:
        raise MediaError("the pixel data is empty")
    if _is_encapsulated(ds):
        fragment_ranges(io.BytesIO(data), 0, len(data), delimited=False)  # raises MediaError if malformed
        return
    _check_native_length(ds, len(data))


def _check_native_length(ds: Dataset, length: int) -> None:
    """Raise :class:`MediaError` if ``length`` bytes of native pixel data cannot hold the
    frames ``ds``'s header declares."""
    rows = _positive_int(ds, "Rows")
    cols = _positive_int(ds, "Columns")
    frames = _positive_int(ds, "NumberOfFrames", 1)
    samples = _positive_int(ds, "SamplesPerPixel", 1)
    bits = _positive_int(ds, "BitsAllocated")
    if str(ds.get("PhotometricInterpretation", "")) == "YBR_FULL_422":
        samples = 2
    if bits == 1:
        expected = (rows * cols * frames * samples + 7) // 8
    else:
        expected = rows * cols * frames * samples * ((bits + 7) // 8)
    if length < expected:
        raise MediaError(
            f"pixel data holds {length} bytes but {rows}x{cols}x{frames} frames x "
            f"{samples} samples x {bits} bits need {expected}"
        )


def _check_grayscale(ds: Dataset) -> None:
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples != 1 or photometric.startswith(_COLOUR_PREFIXES):
        raise UnsupportedInputError(
            f"a colour photograph ({photometric or 'unknown'}, {samples} samples per pixel) "
            "cannot be a radiograph"
        )
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise UnsupportedInputError(f"photometric interpretation {photometric!r} is not supported")
    bits = int(ds.get("BitsStored", 0) or 0)
    if not 1 <= bits <= 16:
        raise UnsupportedInputError(f"BitsStored {bits} is not supported (1-16)")


def _window(values: np.ndarray, ds: Dataset) -> np.ndarray:
    """Apply the first WindowCenter/WindowWidth (PS3.3 C.11.2.1.2) into ``[0, 1]``."""
    def first(keyword: str) -> float:
        elem = ds[keyword]
        value = elem.value[0] if elem.VM > 1 else elem.value
        return float(value)

    center, width = first("WindowCenter"), first("WindowWidth")
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    if function == "SIGMOID":
        if width <= 0:
            raise MediaError(f"WindowWidth {width} must be > 0 for SIGMOID")
        return (1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))).astype(np.float32)
    if function == "LINEAR_EXACT":
        if width <= 0:
            raise MediaError(f"WindowWidth {width} must be > 0 for LINEAR_EXACT")
        low, span = center - width / 2.0, width
    else:
        if width < 1:
            raise MediaError(f"WindowWidth {width} must be >= 1 for LINEAR")
        low, span = center - 0.5 - (width - 1.0) / 2.0, width - 1.0
    if span <= 0:  # LINEAR with width 1 is a threshold at the centre
        return (values > center - 0.5).astype(np.float32)
    return np.clip((values - low) / span, 0.0, 1.0).astype(np.float32)


def _voi_lut_sequence(stored: np.ndarray, values: np.ndarray, ds: Dataset) -> np.ndarray:
    """Apply the first VOI LUT Sequence item and scale its output range to ``[0, 1]``.

    Raises
    ------
    MediaError
        The item's LUT Descriptor and LUT Data do not fit together (or are missing).
    """
    item = ds.VOILUTSequence[0]
    try:
        descriptor = item.LUTDescriptor
        entries, first_map = int(descriptor[0]) or 65536, int(descriptor[1])
        data = item.LUTData
        held = len(data) // 2 if isinstance(data, bytes) else len(np.atleast_1d(data))
    except DECODE_ERRORS as exc:
        raise MediaError(f"the VOI LUT Sequence is malformed: {exc}") from exc
    if held < entries:
        raise MediaError(f"the VOI LUT Sequence is malformed: its LUT Descriptor says {entries} entries, "
                         f"its LUT Data holds {held}")
    source = stored if np.array_equal(values, stored) else np.rint(values).astype(np.int64)
    try:
        out = apply_voi(source, ds, index=0).astype(np.float32)
        lut = np.asarray(apply_voi(np.arange(first_map, first_map + entries), ds, index=0), np.float32)
    except DECODE_ERRORS as exc:
        raise MediaError(f"the VOI LUT Sequence cannot be applied: {exc}") from exc
    low, high = float(lut.min()), float(lut.max())
    if high <= low:
        raise MediaError("the VOI LUT is constant")
    return np.clip((out - low) / (high - low), 0.0, 1.0)


def _percentile_window(values: np.ndarray) -> np.ndarray:
    """Window between the 0.5th and 99.5th percentile of (a subsample of) the values."""
    step = max(1, int(np.sqrt(values.size / _PERCENTILE_MAX_SAMPLES)))
    low, high = np.percentile(values[::step, ::step], PERCENTILE_WINDOW)
    if high <= low:
        high = low + 1.0
    return np.clip((values - low) / (high - low), 0.0, 1.0).astype(np.float32)


def load_radiograph(ds: Dataset) -> np.ndarray:
    """Decode a radiograph for display-like analysis.

    Steps: decode the first frame (pydicom ``pixel_array``; compressed syntaxes via
    the installed pylibjpeg/openjpeg/RLE plugins) → Modality LUT (rescale or LUT) →
    VOI: VOI LUT Sequence if present, else the first WindowCenter/WindowWidth, else
    a robust 0.5-99.5 percentile window → MONOCHROME1 inverted.

    Parameters
    ----------
    ds : Dataset
        A grayscale image instance (IO, DX, PX, CR, ...), BitsStored 1-16.

    Returns
    -------
    np.ndarray
        ``(rows, columns)`` float32 in ``[0, 1]``, indexed ``[row, column]``,
        1 = most radiopaque.

    Raises
    ------
    UnsupportedInputError
        Colour data (a colour photograph cannot be a radiograph), unsupported bit depth,
        or a side under :data:`MIN_RADIOGRAPH_SIDE` pixels.
    MediaError
        No pixel data, pixel data shorter than Rows x Columns x frames x bytes, decoding
        failed, a uniform image (nothing to analyse: e.g. Rescale Slope 0), or a
        malformed VOI LUT Sequence.
    """
    if "PixelData" not in ds:
        raise MediaError("the instance has no pixel data")
    _check_grayscale(ds)
    check_pixel_consistency(ds)
    rows, columns = int(ds.Rows), int(ds.Columns)
    if min(rows, columns) < MIN_RADIOGRAPH_SIDE:
        raise UnsupportedInputError(f"a {columns}x{rows} image is too small to be a radiograph (at least "
                                    f"{MIN_RADIOGRAPH_SIDE} pixels a side)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    try:
        stored = pixel_array(ds, index=0) if frames > 1 else pixel_array(ds)
    except DECODE_ERRORS as exc:
        raise decode_error(exc) from exc
    if stored.ndim != 2:
        raise MediaError(f"decoded pixel data has shape {stored.shape}, expected (rows, columns)")
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    if values.size and float(values.min()) == float(values.max()):
        # a uniform image (or a Rescale Slope of 0) shows nothing: analysing it would
        # report "no implant" with confidence
        raise MediaError(f"the image is uniform after its Modality LUT (every pixel {float(values.min()):g}"
                         + (", Rescale Slope 0" if ds.get("RescaleSlope") is not None
                            and float(ds.RescaleSlope) == 0 else "")
                         + "): nothing to analyse")
    if ds.get("VOILUTSequence"):
        image = _voi_lut_sequence(stored, values, ds)
        voi = "VOI LUT sequence"
    elif "WindowCenter" in ds and "WindowWidth" in ds and ds.WindowCenter is not None:
        image = _window(values, ds)
        voi = "window"
    else:
        image = _percentile_window(values)
        voi = "percentile window"
    if str(ds.PhotometricInterpretation).upper() == "MONOCHROME1":
        image = 1.0 - image
    log.debug("loaded radiograph %dx%d with %s", image.shape[0], image.shape[1], voi)
    return np.ascontiguousarray(image, dtype=np.float32)
