"""The deliberate table of accepted SOP classes and transfer syntaxes.

This table is the single source of the presentation contexts the node accepts; it is
also rendered into CONFORMANCE.md (``dicom-service conformance``) so the document
cannot drift from the code.
"""

from __future__ import annotations

from dataclasses import dataclass

VERIFICATION = "1.2.840.10008.1.1"

# --------------------------------------------------------------------------- transfer syntaxes
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR = "1.2.840.10008.1.2.4.81"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_2000 = "1.2.840.10008.1.2.4.91"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"

NATIVE_SYNTAXES: tuple[str, ...] = (EXPLICIT_LE, IMPLICIT_LE, DEFLATED_LE)
IMAGE_SYNTAXES: tuple[str, ...] = (
    JPEG_BASELINE, JPEG_EXTENDED, JPEG_LOSSLESS, JPEG_LOSSLESS_SV1, JPEG_LS_LOSSLESS,
    JPEG_LS_NEAR, JPEG_2000_LOSSLESS, JPEG_2000, RLE_LOSSLESS,
)
#: MPEG-4 AVC/H.264 (.102–.106 and their fragmentable .1 variants) and HEVC (.107/.108),
#: all decoded by PyAV's bundled FFmpeg.
VIDEO_SYNTAXES: tuple[str, ...] = (
    "1.2.840.10008.1.2.4.102", "1.2.840.10008.1.2.4.102.1",
    "1.2.840.10008.1.2.4.103", "1.2.840.10008.1.2.4.103.1",
    "1.2.840.10008.1.2.4.104", "1.2.840.10008.1.2.4.104.1",
    "1.2.840.10008.1.2.4.105", "1.2.840.10008.1.2.4.105.1",
    "1.2.840.10008.1.2.4.106", "1.2.840.10008.1.2.4.106.1",
    "1.2.840.10008.1.2.4.107", "1.2.840.10008.1.2.4.108",
)

TRANSFER_SYNTAX_NAMES: dict[str, str] = {
    IMPLICIT_LE: "Implicit VR Little Endian",
    EXPLICIT_LE: "Explicit VR Little Endian",
    DEFLATED_LE: "Deflated Explicit VR Little Endian",
    JPEG_BASELINE: "JPEG Baseline (Process 1)",
    JPEG_EXTENDED: "JPEG Extended (Process 2 & 4)",
    JPEG_LOSSLESS: "JPEG Lossless, Non-Hierarchical (Process 14)",
    JPEG_LOSSLESS_SV1: "JPEG Lossless, SV1",
    JPEG_LS_LOSSLESS: "JPEG-LS Lossless",
    JPEG_LS_NEAR: "JPEG-LS Near-Lossless",
    JPEG_2000_LOSSLESS: "JPEG 2000 (Lossless Only)",
    JPEG_2000: "JPEG 2000",
    RLE_LOSSLESS: "RLE Lossless",
    "1.2.840.10008.1.2.4.102": "MPEG-4 AVC/H.264 High Profile / Level 4.1",
    "1.2.840.10008.1.2.4.102.1": "Fragmentable MPEG-4 AVC/H.264 High Profile / Level 4.1",
    "1.2.840.10008.1.2.4.103": "MPEG-4 AVC/H.264 BD-compatible High Profile / Level 4.1",
    "1.2.840.10008.1.2.4.103.1": "Fragmentable MPEG-4 AVC/H.264 BD-compatible High Profile / Level 4.1",
    "1.2.840.10008.1.2.4.104": "MPEG-4 AVC/H.264 High Profile / Level 4.2 For 2D Video",
    "1.2.840.10008.1.2.4.104.1": "Fragmentable MPEG-4 AVC/H.264 High Profile / Level 4.2 For 2D Video",
    "1.2.840.10008.1.2.4.105": "MPEG-4 AVC/H.264 High Profile / Level 4.2 For 3D Video",
    "1.2.840.10008.1.2.4.105.1": "Fragmentable MPEG-4 AVC/H.264 High Profile / Level 4.2 For 3D Video",
    "1.2.840.10008.1.2.4.106": "MPEG-4 AVC/H.264 Stereo High Profile / Level 4.2",
    "1.2.840.10008.1.2.4.106.1": "Fragmentable MPEG-4 AVC/H.264 Stereo High Profile / Level 4.2",
    "1.2.840.10008.1.2.4.107": "HEVC/H.265 Main Profile / Level 5.1",
    "1.2.840.10008.1.2.4.108": "HEVC/H.265 Main 10 Profile / Level 5.1",
}


# --------------------------------------------------------------------------- SOP classes
@dataclass(frozen=True)
class InputClass:
    """An accepted storage SOP class and what its content must look like.

    Attributes
    ----------
    uid, name : str
    family : str
        ``"video"``, ``"photo"`` or ``"radiograph"``: which content checks apply;
        ``"result"`` for the classes of our own results (accepted so that a PACS
        forwarding a whole study back to us does not fail; never processed).
    syntaxes : tuple of str
        Accepted transfer syntaxes, in our order of preference.
    samples_per_pixel : tuple of int
        Allowed (0028,0002) values.
    multi_frame : bool or None
        True: a multi-frame IOD, Number of Frames (0028,0008) required (a positive integer);
        False: a single-frame IOD, Number of Frames absent or 1; None: not checked.
    """

    uid: str
    name: str
    family: str
    syntaxes: tuple[str, ...]
    samples_per_pixel: tuple[int, ...]
    multi_frame: bool | None = None


INPUT_CLASSES: tuple[InputClass, ...] = (
    InputClass("1.2.840.10008.5.1.4.1.1.77.1.4.1", "Video Photographic Image Storage", "video",
               VIDEO_SYNTAXES + NATIVE_SYNTAXES + IMAGE_SYNTAXES, (3,), multi_frame=True),
    InputClass("1.2.840.10008.5.1.4.1.1.77.1.1.1", "Video Endoscopic Image Storage", "video",
               VIDEO_SYNTAXES + NATIVE_SYNTAXES + IMAGE_SYNTAXES, (3,), multi_frame=True),
    InputClass("1.2.840.10008.5.1.4.1.1.77.1.4", "VL Photographic Image Storage", "photo",
               NATIVE_SYNTAXES + IMAGE_SYNTAXES, (1, 3), multi_frame=False),
    InputClass("1.2.840.10008.5.1.4.1.1.77.1.1", "VL Endoscopic Image Storage", "photo",
               NATIVE_SYNTAXES + IMAGE_SYNTAXES, (1, 3), multi_frame=False),
    InputClass("1.2.840.10008.5.1.4.1.1.7.4", "Multi-frame True Color Secondary Capture Image Storage",
               "photo", NATIVE_SYNTAXES + IMAGE_SYNTAXES, (3,), multi_frame=True),
    InputClass("1.2.840.10008.5.1.4.1.1.7", "Secondary Capture Image Storage", "photo",
               NATIVE_SYNTAXES + IMAGE_SYNTAXES, (1, 3), multi_frame=False),
    InputClass("1.2.840.10008.5.1.4.1.1.1.3", "Digital Intra-Oral X-Ray Image Storage - For Presentation",
               "radiograph", NATIVE_SYNTAXES + IMAGE_SYNTAXES, (1,), multi_frame=False),
    InputClass("1.2.840.10008.5.1.4.1.1.1.3.1", "Digital Intra-Oral X-Ray Image Storage - For Processing",
               "radiograph", NATIVE_SYNTAXES + IMAGE_SYNTAXES, (1,), multi_frame=False),
    InputClass("1.2.840.10008.5.1.4.1.1.1.1", "Digital X-Ray Image Storage - For Presentation",
               "radiograph", NATIVE_SYNTAXES + IMAGE_SYNTAXES, (1,), multi_frame=False),
    InputClass("1.2.840.10008.5.1.4.1.1.1.1.1", "Digital X-Ray Image Storage - For Processing",
               "radiograph", NATIVE_SYNTAXES + IMAGE_SYNTAXES, (1,), multi_frame=False),
)


#: Classes of the objects we create. A PACS that forwards whole studies sends them back;
#: we acknowledge our own (recognised by SOP Instance UID) and store others unprocessed.
RESULT_CLASSES: tuple[InputClass, ...] = (
    InputClass("1.2.840.10008.5.1.4.1.1.88.34", "Comprehensive 3D SR Storage", "result",
               NATIVE_SYNTAXES, ()),
    InputClass("1.2.840.10008.5.1.4.1.1.88.33", "Comprehensive SR Storage", "result",
               NATIVE_SYNTAXES, ()),
    InputClass("1.2.840.10008.5.1.4.1.1.66.4", "Segmentation Storage", "result",
               NATIVE_SYNTAXES + IMAGE_SYNTAXES, ()),
    InputClass("1.2.840.10008.5.1.4.1.1.11.1", "Grayscale Softcopy Presentation State Storage",
               "result", NATIVE_SYNTAXES, ()),
    InputClass("1.2.840.10008.5.1.4.1.1.11.2", "Color Softcopy Presentation State Storage",
               "result", NATIVE_SYNTAXES, ()),
)


def input_class(uid: str) -> InputClass | None:
    """The accepted input class with this SOP Class UID, or None."""
    for item in INPUT_CLASSES + RESULT_CLASSES:
        if item.uid == uid:
            return item
    return None


def _group_name(syntaxes: tuple[str, ...]) -> str:
    """Short names of the transfer-syntax groups in ``syntaxes``."""
    groups = []
    if any(t in VIDEO_SYNTAXES for t in syntaxes):
        groups.append("video")
    if any(t in NATIVE_SYNTAXES for t in syntaxes):
        groups.append("native")
    if any(t in IMAGE_SYNTAXES for t in syntaxes):
        groups.append("image compression")
    return " + ".join(groups)


def conformance_tables() -> str:
    """Markdown tables of accepted SOP classes and transfer-syntax groups.

    CONFORMANCE.md embeds this text verbatim; a test keeps the two identical.
    """
    lines = ["| SOP class | UID | transfer syntax groups | samples per pixel |", "|---|---|---|---|",
             f"| Verification | {VERIFICATION} | Implicit VR Little Endian, Explicit VR Little Endian | - |"]
    for cls in INPUT_CLASSES + RESULT_CLASSES:
        spp = " or ".join(str(n) for n in cls.samples_per_pixel) or "-"
        lines.append(f"| {cls.name} | {cls.uid} | {_group_name(cls.syntaxes)} | {spp} |")
    lines += ["", "| group | transfer syntax | UID |", "|---|---|---|"]
    for group, syntaxes in (("native", NATIVE_SYNTAXES), ("image compression", IMAGE_SYNTAXES),
                            ("video", VIDEO_SYNTAXES)):
        for ts in syntaxes:
            lines.append(f"| {group} | {TRANSFER_SYNTAX_NAMES[ts]} | {ts} |")
    return "\n".join(lines) + "\n"
