"""Synthetic intraoral-camera clips: clean / degraded pairs, tooth masks and exact optical flow.

A static scene (:func:`~dicom_service.training.intraoral_scene.render_scene`, 1.6 x the
frame size) is filmed by a moving camera: frame ``t`` is the canvas warped by the
similarity transform ``M_t`` (canvas -> frame) made of a slow pan, a slow zoom
(scale 0.9-1.15, the depth change) and handpiece vibration (a few pixels of
high-frequency shake and a small rotation). An instrument, when present, lives in its
own frame-sized layer with its own affine motion ``N_t`` (layer -> frame) and is
composited on top. Because both motions are analytic, the forward flow is exact:
``flow[t] = M_{t+1} M_t^{-1} p - p`` on the scene and ``N_{t+1} N_t^{-1} p - p`` where
the instrument covers frame ``t`` (alpha >= 0.5). Pixel coordinates follow OpenCV's
``warpAffine`` / ``remap`` convention (integer coordinates at pixel centres).

Everything derives from the clip seed; :func:`write_dataset` derives the seeds from
``(seed, split, index)`` so the splits never share one.
"""

from __future__ import annotations

import json
import math
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from dicom_service.training.intraoral_scene import render_scene
from dicom_service.training.video_degradation import DegradationParams, degrade_clip, sample_params

#: Version 2 caps the camera's slow roll at :data:`ROLL_FRAMES` frames' worth per clip, so clips
#: longer than 12 frames stay inside the canvas; clips of up to 12 frames are those of version 1,
#: byte for byte.
GENERATOR_VERSION = "intraoral-video-2"
SPLITS = ("train", "val", "test")
#: Seed offsets per split; ``clip_seed = seed * 1_000_003 + offset + index``.
SPLIT_OFFSETS = {"train": 0, "val": 500_000, "test": 900_000}
_SPLIT_LIMITS = {"train": 500_000, "val": 400_000, "test": 100_000}
CANVAS_FACTOR = 1.6
#: The camera's slow roll (up to 0.3 degrees per frame) turns the view by at most this many
#: frames' worth over a clip (3.3 degrees), whatever the clip's length.
ROLL_FRAMES = 11


@dataclass(frozen=True)
class VideoClip:
    """One clip.

    Attributes
    ----------
    clean : np.ndarray
        ``(T, H, W, 3)`` uint8 RGB high-quality frames.
    degraded : np.ndarray
        ``(T, H, W, 3)`` uint8 RGB low-quality frames.
    masks : np.ndarray or None
        ``(T, H, W)`` bool, True on teeth in frame ``t``; None when unknown (real data without masks).
    flow : np.ndarray or None
        ``(T - 1, H, W, 2)`` float32 forward flow: the point at ``(row y, column x)`` of
        frame ``t`` is at ``(x + flow[t, y, x, 0], y + flow[t, y, x, 1])`` in frame ``t + 1``;
        None when unknown.
    fps : float
        Frame rate.
    name : str
        Clip name (``seed_<n>`` for phantoms, the folder name for real data).
    """

    clean: np.ndarray
    degraded: np.ndarray
    masks: np.ndarray | None
    flow: np.ndarray | None
    fps: float
    name: str

    def __post_init__(self) -> None:
        c = self.clean
        if c.ndim != 4 or c.shape[3] != 3 or c.dtype != np.uint8 or c.shape[0] < 1:
            raise ValueError(f"clean must be (T, H, W, 3) uint8 with T >= 1, got {c.shape} {c.dtype}")
        if self.degraded.shape != c.shape or self.degraded.dtype != np.uint8:
            raise ValueError(f"degraded must be {c.shape} uint8, got {self.degraded.shape} {self.degraded.dtype}")
        if self.masks is not None and (self.masks.shape != c.shape[:3] or self.masks.dtype != bool):
            raise ValueError(f"masks must be {c.shape[:3]} bool, got {self.masks.shape} {self.masks.dtype}")
        want = (c.shape[0] - 1, c.shape[1], c.shape[2], 2)
        if self.flow is not None and (self.flow.shape != want or self.flow.dtype != np.float32):
            raise ValueError(f"flow must be {want} float32, got {self.flow.shape} {self.flow.dtype}")
        if not self.fps > 0:
            raise ValueError(f"fps must be positive, got {self.fps}")


def _similarity(centre: np.ndarray, scale: float, angle: float, frame_centre: np.ndarray) -> np.ndarray:
    """3 x 3 matrix mapping canvas ``(x, y)`` to frame ``(x, y)``: ``p_f = s R (p_c - centre) + frame_centre``."""
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    lin = np.array([[c, -s], [s, c]])
    m = np.eye(3)
    m[:2, :2] = lin
    m[:2, 2] = frame_centre - lin @ centre
    return m


def _shake(rng: np.random.Generator, frames: int, fps: float, amplitude: float) -> np.ndarray:
    """Handpiece vibration ``(frames, 2)``: two sinusoids of 6-14 Hz plus jitter."""
    t = np.arange(frames) / fps
    out = np.zeros((frames, 2))
    for axis in range(2):
        for _ in range(2):
            f, phase = rng.uniform(6, 14), rng.uniform(0, 2 * math.pi)
            out[:, axis] += amplitude * 0.5 * np.sin(2 * math.pi * f * t + phase)
    return out + rng.normal(0, 0.25 * amplitude, (frames, 2))


def camera_path(rng: np.random.Generator, frames: int, fps: float, canvas_shape: tuple[int, int],
                frame_shape: tuple[int, int]) -> np.ndarray:
    """Per-frame camera matrices ``(frames, 3, 3)`` mapping canvas ``(x, y)`` to frame ``(x, y)``.

    The view of every frame stays inside the canvas. The slow roll turns the view by at most
    :data:`ROLL_FRAMES` x 0.3 degrees over the clip, so long clips fit the canvas too.
    """
    (ch, cw), (fh, fw) = canvas_shape, frame_shape
    fc = np.array([(fw - 1) / 2, (fh - 1) / 2])
    s0 = rng.uniform(0.9, 1.15)
    s1 = float(np.clip(s0 + rng.uniform(-0.12, 0.12), 0.9, 1.15))
    scales = np.linspace(s0, s1, frames)
    shake_amp = rng.uniform(0.5, 3.0)
    offset = math.radians(rng.uniform(-4, 4))
    roll = math.radians(rng.uniform(-0.3, 0.3)) * min(1.0, ROLL_FRAMES / max(frames - 1, 1))
    angles = offset + roll * np.arange(frames) + np.radians(_shake(rng, frames, fps, rng.uniform(0.1, 0.5))[:, 0])
    # half extent (canvas pixels) of the view at the smallest scale and largest angle
    worst = max(abs(float(a)) for a in angles)
    hx = (fw / 2 * math.cos(worst) + fh / 2 * math.sin(worst)) / 0.9 + 4
    hy = (fh / 2 * math.cos(worst) + fw / 2 * math.sin(worst)) / 0.9 + 4
    lo, hi = np.array([hx, hy]), np.array([cw - 1 - hx, ch - 1 - hy])
    if np.any(hi < lo):
        raise ValueError(f"canvas {canvas_shape} too small for frame {frame_shape}")
    start = rng.uniform(lo, hi)
    speed = rng.uniform(0.0, 4.0) * max(frames - 1, 1)
    heading = rng.uniform(0, 2 * math.pi)
    end = np.clip(start + speed * np.array([math.cos(heading), math.sin(heading)]), lo, hi)
    ease = 0.5 - 0.5 * np.cos(np.linspace(0, math.pi, frames)) if rng.random() < 0.5 else np.linspace(0, 1, frames)
    centres = start + ease[:, None] * (end - start) + _shake(rng, frames, fps, shake_amp) / scales[:, None]
    centres = np.clip(centres, lo, hi)
    return np.stack([_similarity(c, s, a, fc) for c, s, a in zip(centres, scales, angles, strict=True)])


def instrument_path(rng: np.random.Generator, frames: int, fps: float, pivot: tuple[float, float]) -> np.ndarray:
    """Instrument layer matrices ``(frames, 3, 3)``: drift, rotation about ``pivot`` and its own shake."""
    v = rng.normal(0, 2.0, 2)
    omega = math.radians(rng.uniform(-1.5, 1.5))
    shake = _shake(rng, frames, fps, rng.uniform(0.3, 1.5))
    p = np.array(pivot)
    out = []
    for t in range(frames):
        m = _similarity(p, 1.0, omega * t, p + v * t + shake[t])
        out.append(m)
    return np.stack(out)


def _affine_flow(m0: np.ndarray, m1: np.ndarray, grid: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Flow ``(H, W, 2)`` float32 of points ``p`` of frame 0 to ``m1 m0^-1 p`` in frame 1."""
    rel = m1 @ np.linalg.inv(m0)
    xx, yy = grid
    dx = rel[0, 0] * xx + rel[0, 1] * yy + rel[0, 2] - xx
    dy = rel[1, 0] * xx + rel[1, 1] * yy + rel[1, 2] - yy
    return np.stack([dx, dy], axis=-1).astype(np.float32)


def render_clip(seed: int, *, frames: int = 12, height: int = 240, width: int = 320, fps: float = 30.0,
                teeth: bool | None = None, instrument: bool | None = None) -> VideoClip:
    """Render one synthetic intraoral clip.

    Parameters
    ----------
    seed : int
        Everything random derives from it: the same arguments give the same arrays.
    frames, height, width : int
        Clip size ``T x H x W`` (``frames >= 2``, ``height, width >= 32``).
    fps : float
        Frame rate; sets the vibration frequencies in frames.
    teeth : bool, optional
        Force teeth on (True) or off (False, mucosa only); by default 90% of clips have teeth.
    instrument : bool, optional
        Force a moving instrument on or off; by default 30% of clips have one.

    Returns
    -------
    VideoClip
        ``clean`` / ``degraded`` ``(T, H, W, 3)`` uint8 RGB, ``masks`` ``(T, H, W)`` bool,
        exact ``flow`` ``(T - 1, H, W, 2)`` float32 ``(dx, dy)``.
    """
    if frames < 2:
        raise ValueError(f"frames must be >= 2, got {frames}")
    if height < 32 or width < 32:
        raise ValueError(f"height and width must be >= 32, got {height} x {width}")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    clean, masks, flow, motion, rng = _render_clean(seed, frames, height, width, fps, teeth, instrument)
    degraded = degrade_clip(clean, motion, rng)
    return VideoClip(clean=clean, degraded=degraded, masks=masks, flow=flow, fps=float(fps), name=f"seed_{seed}")


def _render_clean(seed: int, frames: int, height: int, width: int, fps: float, teeth: bool | None,
                  instrument: bool | None, grain: float = 1.0
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.random.Generator]:
    """The clean part of :func:`render_clip`: ``clean``, ``masks``, ``flow``, the per-frame
    image motion ``(T, 2)`` ``(dx, dy)`` and the generator in the state the degradation draws from.

    ``grain`` scales the scene's per-pixel texture (:func:`render_scene`); it draws the same
    random numbers whatever its value."""
    rng = np.random.default_rng(seed)
    canvas_shape = (int(math.ceil(height * CANVAS_FACTOR)), int(math.ceil(width * CANVAS_FACTOR)))
    scene = render_scene(rng, canvas_shape, (height, width), teeth=teeth, instrument=instrument, grain=grain)
    cams = camera_path(rng, frames, fps, canvas_shape, (height, width))
    tools = instrument_path(rng, frames, fps, scene.instrument.pivot) if scene.instrument is not None else None
    teeth_u8 = scene.teeth.astype(np.uint8) * 255
    size = (width, height)
    clean = np.empty((frames, height, width, 3), np.uint8)
    masks = np.empty((frames, height, width), bool)
    covers = []
    for t in range(frames):
        m = cams[t][:2]
        img = cv2.warpAffine(scene.canvas, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        mask = cv2.warpAffine(teeth_u8, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101) >= 128
        if tools is not None and scene.instrument is not None:
            n = tools[t][:2]
            rgb = cv2.warpAffine(scene.instrument.rgb, n, size, flags=cv2.INTER_LINEAR)
            alpha = cv2.warpAffine(scene.instrument.alpha, n, size, flags=cv2.INTER_LINEAR)[..., None]
            img = np.clip(img * (1 - alpha) + rgb * alpha + 0.5, 0, 255).astype(np.uint8)
            covers.append(alpha[..., 0] >= 0.5)
            mask &= ~covers[-1]
        clean[t], masks[t] = img, mask
    xx, yy = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    flow = np.empty((frames - 1, height, width, 2), np.float32)
    for t in range(frames - 1):
        flow[t] = _affine_flow(cams[t], cams[t + 1], (xx, yy))
        if tools is not None:
            tool_flow = _affine_flow(tools[t], tools[t + 1], (xx, yy))
            flow[t][covers[t]] = tool_flow[covers[t]]
    centre = np.array([(width - 1) / 2, (height - 1) / 2, 1.0])
    motion = np.array([(cams[min(t + 1, frames - 1)] @ np.linalg.inv(cams[min(t + 1, frames - 1) - 1]) @ centre)[:2]
                       - centre[:2] for t in range(frames)])
    return clean, masks, flow, motion, rng


def _rendered_again(clip: VideoClip) -> np.random.Generator | None:
    """Render ``clip`` again from the seed in its name (default scene options).

    Returns the generator in the state the degradation drew from, or None when the name
    carries no seed or the re-rendered clean frames differ from ``clip.clean`` (real data,
    or a phantom made with other options or another generator version).
    """
    if not clip.name.startswith("seed_") or not clip.name[5:].isdigit():
        return None
    frames, height, width = clip.clean.shape[:3]
    if frames < 2 or height < 32 or width < 32:
        return None
    clean, _, _, _, rng = _render_clean(int(clip.name[5:]), frames, height, width, clip.fps, None, None)
    return rng if np.array_equal(clean, clip.clean) else None


def clip_degradation(clip: VideoClip) -> DegradationParams | None:
    """The degradation parameters a phantom clip was rendered with, or None.

    The parameters are drawn as :func:`render_clip` drew them, from the clip rendered again
    from its seed; None for a clip that is not such a phantom (see :func:`_rendered_again`).
    """
    rng = _rendered_again(clip)
    return None if rng is None else sample_params(rng)


def grain_free_clean(clip: VideoClip) -> np.ndarray | None:
    """A phantom clip's clean frames rendered without the per-pixel scene grain, or None.

    Everything else (shapes, shading, vessels, highlights, camera and instrument motion) is
    pixel for pixel the clip's own. The grain is white noise in the scene: after blur, sensor
    noise and JPEG no single frame holds it, so these frames are what a restoration that
    recovered everything else would give (``eval video``'s grain-free reference). None for a
    clip that is not a default phantom (see :func:`_rendered_again`).

    Returns
    -------
    np.ndarray or None
        ``(T, H, W, 3)`` uint8 RGB.
    """
    if _rendered_again(clip) is None:
        return None
    frames, height, width = clip.clean.shape[:3]
    return _render_clean(int(clip.name[5:]), frames, height, width, clip.fps, None, None, grain=0.0)[0]


def clip_seed(seed: int, split: str, index: int) -> int:
    """Seed of clip ``index`` of ``split``: ``seed * 1_000_003 + {train: 0, val: 500_000, test: 900_000} + index``.

    Raises
    ------
    ValueError
        Unknown split, negative seed or index, or an index past the split's range
        (train < 500 000, val < 400 000, test < 100 000), which would collide with another split.
    """
    if split not in SPLIT_OFFSETS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if seed < 0 or not 0 <= index < _SPLIT_LIMITS[split]:
        raise ValueError(f"seed must be >= 0 and index in [0, {_SPLIT_LIMITS[split]}) for {split}, "
                         f"got seed={seed}, index={index}")
    return seed * 1_000_003 + SPLIT_OFFSETS[split] + index


def save_clip(clip: VideoClip, path: Path) -> None:
    """Write ``clip`` as a compressed ``.npz`` (clean, degraded, masks, flow, fps, name)."""
    arrays: dict[str, np.ndarray] = {"clean": clip.clean, "degraded": clip.degraded,
                                     "fps": np.float64(clip.fps), "name": np.array(clip.name)}
    if clip.masks is not None:
        arrays["masks"] = clip.masks
    if clip.flow is not None:
        arrays["flow"] = clip.flow
    np.savez_compressed(path, **arrays)


def _render_to(path: Path, seed: int, frames: int, height: int, width: int) -> None:
    """Render clip ``seed`` and save it to ``path`` (one task of :func:`write_dataset`)."""
    save_clip(render_clip(seed, frames=frames, height=height, width=width), path)


def write_dataset(out: Path, *, train: int, val: int, test: int, frames: int, height: int, width: int,
                  seed: int = 0, progress: Callable[[int, int, str], None] | None = None, workers: int = 1) -> Path:
    """Render a fixed train / val / test split of clips to ``out``.

    Writes ``out/{train,val,test}/clip_NNNNN.npz`` (see :func:`save_clip`) and
    ``out/manifest.json`` (generator version, sizes, and per split the clip files and
    their seeds). Clip ``i`` of split ``s`` uses :func:`clip_seed` ``(seed, s, i)`` =
    ``seed * 1_000_003 + {train: 0, val: 500_000, test: 900_000} + i``, so the splits are
    held out from each other by construction. ``progress(done, total, name)`` is called
    after each clip. ``workers`` processes render clips at once (each clip depends on its
    seed only, so the data set is the same whatever their number). Returns the manifest path.
    """
    counts = {"train": train, "val": val, "test": test}
    if any(n < 0 for n in counts.values()):
        raise ValueError(f"clip counts must be >= 0, got {counts}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out = Path(out)
    total, done = sum(counts.values()), 0
    manifest: dict = {"generator": GENERATOR_VERSION, "seed": seed, "frames": frames, "height": height,
                      "width": width, "fps": 30.0, "seed_rule": "seed * 1_000_003 + offset[split] + index",
                      "split_offsets": SPLIT_OFFSETS, "splits": {}}
    tasks: list[tuple[str, int]] = []  # (split/name, seed)
    for split, n in counts.items():
        (out / split).mkdir(parents=True, exist_ok=True)
        seeds = [clip_seed(seed, split, i) for i in range(n)]
        names = [f"clip_{i:05d}.npz" for i in range(n)]
        tasks += [(f"{split}/{name}", s) for s, name in zip(seeds, names, strict=True)]
        manifest["splits"][split] = {"clips": names, "seeds": seeds}

    def rendered(name: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, name)

    if workers == 1:
        for name, s in tasks:
            _render_to(out / name, s, frames, height, width)
            rendered(name)
    else:  # fresh interpreters: forking a process that runs threads (a progress bar's) may deadlock
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_render_to, out / name, s, frames, height, width): name for name, s in tasks}
            try:
                for future in as_completed(futures):
                    future.result()
                    rendered(futures[future])
            except BaseException:  # a worker's error (or Ctrl-C) stops the run now, not after every clip
                pool.shutdown(cancel_futures=True)
                raise
    path = out / "manifest.json"
    path.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return path
