"""Classical baseline implant detector: elongated, very radiopaque objects.

Dental implants are titanium screws: on a radiograph they are the brightest objects
(brighter than enamel), elongated (length 2.5-5 times the width) and sharply bounded.
This detector finds exactly that, with no learning:

1. downscale so that the longer side is at most ``max_side`` pixels (speed);
2. Gaussian smoothing;
3. threshold = max(Otsu threshold of the brightest ``tail`` fraction, ``absolute_floor``)
   (the floor keeps enamel and cortical bone out when there is no metal);
4. morphological opening, connected components;
5. per component: ``cv2.minAreaRect``; keep aspect ratio >= ``min_aspect``, area within
   ``[min_area_fraction, max_area_fraction]`` of the image, rectangle fill >= ``min_fill``;
6. keep components at least ``min_contrast`` brighter than a ring around them (metal
   stands out from bone and teeth; this also rejects the brightest patch of an image
   whose percentile window stretched bone or dentin to white);
   score = weighted brightness contrast, elongation and fill;
7. boxes and axes are mapped back to source pixels.

It does not find design parts or implant systems (``parts``/``system_top`` stay empty).
"""

from __future__ import annotations

import logging
import time

import cv2
import numpy as np

from dicom_service.domain import AlgorithmInfo, ImplantFinding, RadiographResult

log = logging.getLogger(__name__)

NAME = "classical-radiopaque-elongated-baseline"
VERSION = "1.0.0"


class ElongatedObjectDetector:
    """Find elongated radiopaque objects (implant candidates) on a radiograph.

    Parameters
    ----------
    max_side : int
        Longest side of the internal working image (larger inputs are downscaled).
    min_aspect : float
        Minimum long/short side ratio of the minimum-area rectangle.
    min_area_fraction, max_area_fraction : float
        Allowed component area as a fraction of the image area.
    absolute_floor : float
        Lowest threshold in display units ``[0, 1]``: only near-white objects count.
    tail : float
        Fraction of brightest pixels whose Otsu threshold separates metal from enamel.
    min_fill : float
        Minimum ratio of component area to its rotated rectangle area.
    min_contrast : float
        Minimum mean brightness difference between a component and the ring around it.
    score_threshold : float
        Findings scoring below this are dropped.

    Raises
    ------
    ValueError
        If a parameter is out of range.
    """

    def __init__(self, *, max_side: int = 768, min_aspect: float = 1.8,
                 min_area_fraction: float = 0.002, max_area_fraction: float = 0.15,
                 absolute_floor: float = 0.75, tail: float = 0.2, min_fill: float = 0.5,
                 min_contrast: float = 0.3, score_threshold: float = 0.5) -> None:
        if max_side < 64:
            raise ValueError(f"max_side must be >= 64, got {max_side}")
        if min_aspect < 1.0:
            raise ValueError(f"min_aspect must be >= 1, got {min_aspect}")
        if not 0.0 < min_area_fraction < max_area_fraction <= 1.0:
            raise ValueError("need 0 < min_area_fraction < max_area_fraction <= 1, got "
                             f"{min_area_fraction}, {max_area_fraction}")
        if not 0.0 <= absolute_floor < 1.0:
            raise ValueError(f"absolute_floor must be in [0, 1), got {absolute_floor}")
        if not 0.0 < tail <= 1.0:
            raise ValueError(f"tail must be in (0, 1], got {tail}")
        for key, value in (("min_fill", min_fill), ("min_contrast", min_contrast),
                           ("score_threshold", score_threshold)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{key} must be in [0, 1], got {value}")
        self.max_side = max_side
        self.min_aspect = min_aspect
        self.min_area_fraction = min_area_fraction
        self.max_area_fraction = max_area_fraction
        self.absolute_floor = absolute_floor
        self.tail = tail
        self.min_fill = min_fill
        self.min_contrast = min_contrast
        self.score_threshold = score_threshold
        self.info = AlgorithmInfo(
            name=NAME, version=VERSION, family="baseline",
            parameters=(f"max_side={max_side} min_aspect={min_aspect} "
                        f"area=[{min_area_fraction},{max_area_fraction}] floor={absolute_floor} "
                        f"tail={tail} min_fill={min_fill} contrast>={min_contrast} "
                        f"score>={score_threshold}"),
        )

    # ------------------------------------------------------------------ helpers
    def _threshold(self, smooth: np.ndarray) -> float:
        """Otsu threshold of the brightest ``tail`` fraction, floored at ``absolute_floor``."""
        cut = float(np.quantile(smooth, 1.0 - self.tail))
        values = smooth[smooth >= cut]
        as_u8 = np.clip(values * 255.0 + 0.5, 0, 255).astype(np.uint8).reshape(1, -1)
        otsu, _ = cv2.threshold(as_u8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        return max(float(otsu) / 255.0, self.absolute_floor)

    @staticmethod
    def _contrast(smooth: np.ndarray, component: np.ndarray, ring_px: int) -> float:
        """Mean of ``smooth`` inside ``component`` minus its mean on a ring around it."""
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * ring_px + 1, 2 * ring_px + 1))
        ring = cv2.dilate(component, kernel).astype(bool) & ~component.astype(bool)
        inside = float(smooth[component.astype(bool)].mean())
        outside = float(smooth[ring].mean()) if ring.any() else 0.0
        return inside - outside

    @staticmethod
    def _score(contrast: float, aspect: float, fill: float) -> float:
        """Confidence in ``[0, 1]`` from contrast (saturating at 0.5), elongation and fill."""
        contrast = float(np.clip(contrast / 0.5, 0.0, 1.0))
        elongation = float(np.clip((aspect - 1.5) / 2.5, 0.0, 1.0))
        return float(np.clip(0.5 * contrast + 0.3 * elongation + 0.2 * fill, 0.0, 1.0))

    @staticmethod
    def _axis(rect: tuple, scale: float) -> tuple[float, float, float, float]:
        """Long axis endpoints of a rotated rect, mapped to source pixel coordinates."""
        corners = cv2.boxPoints(rect)
        side_a, side_b = corners[1] - corners[0], corners[2] - corners[1]
        long_side = side_a if np.hypot(*side_a) >= np.hypot(*side_b) else side_b
        centre = np.asarray(rect[0], dtype=np.float64)
        half = long_side.astype(np.float64) / 2.0
        a, b = centre - half, centre + half
        if a[1] > b[1]:  # first point is the upper one (smaller row)
            a, b = b, a
        # working-pixel centres map to source pixel centres: (p + 0.5) / scale - 0.5
        xa, ya = (a + 0.5) / scale - 0.5
        xb, yb = (b + 0.5) / scale - 0.5
        return float(xa), float(ya), float(xb), float(yb)

    @staticmethod
    def _levels(threshold: float) -> list[float]:
        """Threshold levels tried in turn: the base threshold and up to 4 steps of 0.04 above."""
        return [threshold + 0.04 * k for k in range(5) if k == 0 or threshold + 0.04 * k < 0.98]

    def _candidates(self, smooth: np.ndarray, mask: np.ndarray, ring_px: int, scale: float,
                    source_shape: tuple[int, int]) -> list[tuple[ImplantFinding, np.ndarray]]:
        """Accepted components of a binary ``mask`` (working resolution).

        Returns pairs of the finding (source pixel coordinates) and a bool mask, shape
        of ``smooth``, covering the component dilated by ``ring_px``.
        """
        rows, cols = source_shape
        count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        total = float(smooth.shape[0] * smooth.shape[1])
        out: list[tuple[ImplantFinding, np.ndarray]] = []
        for label in range(1, count):
            x, y, w, h, area = (int(v) for v in stats[label])
            if not self.min_area_fraction <= area / total <= self.max_area_fraction:
                continue
            component = (labels[y:y + h, x:x + w] == label).astype(np.uint8)
            rect = cv2.minAreaRect(cv2.findNonZero(component) + np.array([[x, y]], np.int32))
            long_side, short_side = max(rect[1]), max(min(rect[1]), 1.0)
            aspect = long_side / short_side
            fill = area / max(long_side * short_side, 1.0)
            if aspect < self.min_aspect or fill < self.min_fill:
                continue
            pad = ring_px + 1
            y0, y1 = max(0, y - pad), min(smooth.shape[0], y + h + pad)
            x0, x1 = max(0, x - pad), min(smooth.shape[1], x + w + pad)
            local = (labels[y0:y1, x0:x1] == label).astype(np.uint8)
            contrast = self._contrast(smooth[y0:y1, x0:x1], local, ring_px)
            if contrast < self.min_contrast:
                continue
            score = self._score(contrast, aspect, min(fill, 1.0))
            if score < self.score_threshold:
                continue
            box = (x / scale, y / scale, min(cols, (x + w) / scale), min(rows, (y + h) / scale))
            accepted = np.zeros(smooth.shape, dtype=bool)
            accepted[y0:y1, x0:x1] = cv2.dilate(local, np.ones((3, 3), np.uint8),
                                                iterations=ring_px).astype(bool)
            out.append((ImplantFinding(box=tuple(float(v) for v in box), score=score,
                                       axis=self._axis(rect, scale)), accepted))
        return out

    # ------------------------------------------------------------------ protocol
    def detect(self, image: np.ndarray) -> RadiographResult:
        """Detect implant-like objects.

        Parameters
        ----------
        image : np.ndarray
            ``(rows, columns)`` float in ``[0, 1]``, 1 = most radiopaque.

        Returns
        -------
        RadiographResult
            Findings sorted by score, boxes ``(x0, y0, x1, y1)`` in source pixels
            (x = column, y = row, exclusive ends), with the long axis.

        Raises
        ------
        ValueError
            If ``image`` is not a finite 2-D array of at least 16x16 pixels.
        """
        if image.ndim != 2 or min(image.shape) < 16:
            raise ValueError(f"image must be (rows, columns) with both >= 16, got {image.shape}")
        if not np.isfinite(image).all():
            raise ValueError("image contains NaN or infinite values")
        started = time.perf_counter()
        rows, cols = image.shape
        scale = min(1.0, self.max_side / float(max(rows, cols)))
        work = np.asarray(image, dtype=np.float32)
        if scale < 1.0:
            size = (max(1, round(cols * scale)), max(1, round(rows * scale)))
            work = cv2.resize(work, size, interpolation=cv2.INTER_AREA)
        smooth = cv2.GaussianBlur(work, (0, 0), 1.0)
        threshold = self._threshold(smooth)
        ring_px = max(2, round(max(work.shape) / 100))
        taken = np.zeros(work.shape, dtype=bool)
        findings: list[ImplantFinding] = []
        # Components that fail the shape tests at one level (e.g. an implant touching a
        # bright crown) are looked at again at higher levels, where they separate.
        for level in self._levels(threshold):
            mask = ((smooth > level) & ~taken).astype(np.uint8)
            mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
            for finding, accepted in self._candidates(smooth, mask, ring_px, scale, (rows, cols)):
                findings.append(finding)
                taken |= accepted
        findings.sort(key=lambda f: f.score, reverse=True)
        log.debug("detector: %d findings on %dx%d in %.1f ms (threshold %.3f)", len(findings),
                  rows, cols, 1000 * (time.perf_counter() - started), threshold)
        return RadiographResult(findings=findings, image_shape=(rows, cols), algorithm=self.info)
