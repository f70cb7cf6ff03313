"""Reading video restoration data: our synthetic clips and real paired folders.

* Synthetic data sets written by :func:`~dicom_service.training.video_phantoms.write_dataset`:
  :func:`list_split` reads ``manifest.json`` and :func:`load_clip` one ``.npz``.
* Real paired data laid out like Vident-real: ``folder/LQ/*.png|jpg`` (low quality),
  ``folder/HQ/*.png|jpg`` (high quality, same sorted file names) and optionally
  ``folder/masks/*.png`` (non-zero = tooth); :func:`load_paired_folder` reads one clip
  and :func:`list_paired_root` finds the clip folders under a root.

Frames are returned as RGB ``uint8`` ``(T, H, W, 3)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from dicom_service.training.video_phantoms import SPLITS, VideoClip

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def load_clip(path: Path) -> VideoClip:
    """Read a clip written by :func:`~dicom_service.training.video_phantoms.save_clip`.

    Raises
    ------
    ValueError
        The file lacks ``clean`` or ``degraded``, or the arrays have inconsistent shapes.
    """
    path = Path(path)
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in ("clean", "degraded") if k not in data.files]
        if missing:
            raise ValueError(f"{path}: missing arrays {missing}")
        return VideoClip(clean=data["clean"], degraded=data["degraded"],
                         masks=data["masks"] if "masks" in data.files else None,
                         flow=data["flow"] if "flow" in data.files else None,
                         fps=float(data["fps"]) if "fps" in data.files else 30.0,
                         name=str(data["name"]) if "name" in data.files else path.stem)


def list_split(root: Path, split: str) -> list[Path]:
    """Clip files of ``split`` (``train``, ``val`` or ``test``) as listed in ``root/manifest.json``.

    Raises
    ------
    ValueError
        Unknown split, missing or unreadable manifest, split absent from it, or a listed file missing.
    """
    root = Path(root)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    manifest = root / "manifest.json"
    if not manifest.is_file():
        raise ValueError(f"{manifest}: no manifest (write the data set with `dicom-service phantoms video`)")
    try:
        doc = json.loads(manifest.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{manifest}: not valid JSON: {exc}") from exc
    entry = doc.get("splits", {}).get(split) if isinstance(doc, dict) else None
    if not isinstance(entry, dict) or not isinstance(entry.get("clips"), list):
        raise ValueError(f"{manifest}: no clip list for split {split!r}")
    paths = [root / split / str(name) for name in entry["clips"]]
    absent = [p.name for p in paths if not p.is_file()]
    if absent:
        raise ValueError(f"{root / split}: {len(absent)} listed clips are missing, e.g. {absent[0]}")
    return paths


def _images(folder: Path) -> list[Path]:
    """Sorted image files of ``folder``; hidden names (``.x``, macOS ``._x`` resource forks) are not frames."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in _IMAGE_SUFFIXES)


def _read(path: Path, flags: int) -> np.ndarray:
    img = cv2.imread(str(path), flags)
    if img is None:
        raise ValueError(f"{path}: cannot be decoded as an image")
    return img


def _same_size(images: list[np.ndarray], paths: list[Path], what: str) -> np.ndarray:
    """Stack ``images``; ``ValueError`` naming the first file whose size differs from the first one's."""
    for image, path in zip(images, paths, strict=True):
        if image.shape[:2] != images[0].shape[:2]:
            raise ValueError(f"{path}: {what} differ in size: {image.shape[1]} x {image.shape[0]} but "
                             f"{paths[0].name} is {images[0].shape[1]} x {images[0].shape[0]}")
    return np.stack(images)


def _read_stack(paths: list[Path]) -> np.ndarray:
    return _same_size([cv2.cvtColor(_read(p, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for p in paths], paths, "frames")


def load_paired_folder(folder: Path, *, fps: float = 30.0) -> VideoClip:
    """Read one real paired clip (``LQ/``, ``HQ/``, optional ``masks/``).

    Frames pair by sorted file stem (``LQ/0001.jpg`` with ``HQ/0001.png``); files whose
    name starts with ``.`` are ignored. ``flow`` is None and ``masks`` is None without a
    ``masks/`` folder.

    Raises
    ------
    ValueError
        A folder is missing or empty, the LQ / HQ / mask counts or file stems differ, a
        file cannot be decoded, or frame or mask sizes differ; the message names the clip
        folder or the file.
    """
    folder = Path(folder)
    for sub in ("LQ", "HQ"):
        if not (folder / sub).is_dir():
            raise ValueError(f"{folder}: missing {sub}/ folder")
    lq, hq = _images(folder / "LQ"), _images(folder / "HQ")
    if not lq:
        raise ValueError(f"{folder / 'LQ'}: no .png/.jpg frames")
    if len(lq) != len(hq):
        raise ValueError(f"{folder}: {len(lq)} LQ frames but {len(hq)} HQ frames")
    if [p.stem for p in lq] != [p.stem for p in hq]:
        bad = next(a.name for a, b in zip(lq, hq, strict=True) if a.stem != b.stem)
        raise ValueError(f"{folder}: LQ and HQ file names differ (first: LQ/{bad})")
    degraded, clean = _read_stack(lq), _read_stack(hq)
    if degraded.shape != clean.shape:
        raise ValueError(f"{folder}: LQ frames are {degraded.shape[1:3]} but HQ frames are {clean.shape[1:3]}")
    masks = None
    if (folder / "masks").is_dir():
        files = _images(folder / "masks")
        if [p.stem for p in files] != [p.stem for p in hq]:
            raise ValueError(f"{folder}: masks/ has {len(files)} files that do not match the {len(hq)} HQ names")
        masks = _same_size([_read(p, cv2.IMREAD_GRAYSCALE) > 0 for p in files], files, "masks")
        if masks.shape != clean.shape[:3]:
            raise ValueError(f"{folder}: masks are {masks.shape[2]} x {masks.shape[1]} but frames are "
                             f"{clean.shape[2]} x {clean.shape[1]}")
    return VideoClip(clean=clean, degraded=degraded, masks=masks, flow=None, fps=float(fps), name=folder.name)


def list_paired_root(root: Path) -> list[Path]:
    """Sorted sub-folders of ``root`` (one level) that hold both ``LQ/`` and ``HQ/``.

    Sub-folders with neither, and hidden ones (name starting with ``.``), are not clips.

    Raises
    ------
    ValueError
        ``root`` is not a folder, or a sub-folder holds ``LQ/`` without ``HQ/`` or the
        reverse (named).
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder")
    clips = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        has = [sub for sub in ("LQ", "HQ") if (folder / sub).is_dir()]
        if len(has) == 1:
            lacks = "HQ" if has == ["LQ"] else "LQ"
            raise ValueError(f"{folder}: has {has[0]}/ but no {lacks}/ folder (a clip needs both)")
        if has:
            clips.append(folder)
    return clips
