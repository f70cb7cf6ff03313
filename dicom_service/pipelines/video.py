"""Video workflow: decode → vision runtime (restore, segment) → result objects.

A clip streams through: frames are decoded one at a time, enhanced by the runtime
(:meth:`~dicom_service.vision.runtime.VideoRuntime.enhance_stream`) and encoded, and the
tooth masks packed, as they come (:class:`~dicom_service.pipelines.video_output.VideoOutputSink`),
so a long recording is not held whole in memory. For each source instance (a video, or a
still photograph):

* a video gives an enhanced Video Photographic instance (H.264; frames larger than
  1920x1080 are downscaled and rates above 60 fps thinned out, the most H.264 Level 4.2
  carries, and the provenance says so), a still photograph an enhanced Secondary Capture;
* a BINARY Segmentation of the teeth on the source frames;
* a TID 1500 Structured Report summarising what was done.

After a dentist has corrected the tooth masks (doctor-in-the-loop),
:func:`restore_video_instance` enhances the instance again with the restoration guided by
the corrected Segmentation's masks instead of the automatic ones: an amended enhanced
video or photograph in a series of its own (:data:`AMENDED_ENHANCED_SERIES`) and an
amended report listing it with the corrected Segmentation (:data:`AMENDED_REPORT_SERIES`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

import numpy as np
from pydicom.dataset import Dataset

from dicom_service.domain import EnhancementOutcome, InputError, MediaError
from dicom_service.media.video import FrameStream, check_frame_count, open_frames
from dicom_service.node.contexts import input_class
from dicom_service.pipelines.base import PipelineOutput, ProgressLog, ResultObject, no_log
from dicom_service.pipelines.correction import MaskFrames
from dicom_service.pipelines.video_memory import check_video_fits
from dicom_service.pipelines.video_output import VideoOutputSink
from dicom_service.vision.runtime import MaskGuidedRuntime, VideoRuntime, restores_with_masks
from dicom_service.writers.common import make_room_for, set_person_name
from dicom_service.writers.sc import write_secondary_capture
from dicom_service.writers.seg import write_tooth_segmentation
from dicom_service.writers.sr import write_video_report
from dicom_service.writers.video import ENHANCED_VIDEO_SERIES_NUMBER, wrap_enhanced_video

#: Series Number of an enhanced photograph (that of an enhanced video: the enhanced series;
#: the tooth Segmentation is 9102, the report 9103).
ENHANCED_PHOTO_SERIES = ENHANCED_VIDEO_SERIES_NUMBER
#: Series Numbers of an enhanced video or photograph made again with a dentist's corrected
#: tooth masks, and of its report (the corrected Segmentation is 9104).
AMENDED_ENHANCED_SERIES = 9105
AMENDED_REPORT_SERIES = 9106


def _is_video(ds: Dataset, frame_count: int) -> bool:
    cls = input_class(str(ds.get("SOPClassUID", "")))
    return (cls is not None and cls.family == "video") or frame_count > 1


def _enhance(source: Dataset, stream: FrameStream, runtime: VideoRuntime, sink: VideoOutputSink,
             progress: ProgressLog, masks: Iterable[np.ndarray] | None = None) -> EnhancementOutcome:
    """Stream the frames of ``source`` (``stream``, not read yet) through ``runtime`` into
    ``sink``; ``masks`` (one ``(H, W)`` bool per frame; None: the runtime's own) are the
    tooth masks to restore with, for a :class:`MaskGuidedRuntime`."""
    sop = str(source.SOPInstanceUID)
    progress(f"{sop}: decoding and enhancing {stream.count} frames at {stream.fps:.2f} fps")

    def log_line(line: str) -> None:
        progress(f"{sop}: {line}")

    try:
        if masks is None:
            enhanced = runtime.enhance_stream(stream.frames, stream.count, stream.fps, sink, progress=log_line)
        else:
            assert isinstance(runtime, MaskGuidedRuntime)
            enhanced = runtime.enhance_stream(stream.frames, stream.count, stream.fps, sink, progress=log_line,
                                              masks=masks)
    except BaseException:
        sink.abort()
        raise
    progress(f"{sop}: enhanced with {enhanced.algorithm.name}")
    return enhanced


def _for_medium(description: str, video: bool) -> str:
    """A Series Description that names a video as such and a photograph as a photo."""
    return description if video else description.replace("video", "photo")


def _enhanced_object(source: Dataset, sink: VideoOutputSink, enhanced: EnhancementOutcome, progress: ProgressLog,
                     *, uid_seed: str, series_number: int, description: str,
                     ) -> tuple[ResultObject, EnhancementOutcome]:
    """The enhanced video (``"video"``) or photograph (``"sc"``) ``sink`` holds as a result
    object in series ``series_number`` (``description``: the video's Series Description;
    a photograph's says "photo"), and ``enhanced`` with the steps the H.264 fit added."""
    if not sink.video:
        assert sink.still is not None
        derived = write_secondary_capture(
            source, sink.still, description=_for_medium(description, False), series_number=series_number,
            uid_seed=f"{uid_seed}/photo", burned_in_annotation=False, algorithm=enhanced.algorithm,
            derivation_description="; ".join(enhanced.steps),
        )
        return ResultObject("sc", derived), enhanced
    if sink.fitted:  # frames beyond H.264 Level 4.2 (the classical runtime on a 4K source)
        progress(f"{source.SOPInstanceUID}: {'; '.join(sink.fitted)}")
        enhanced = replace(enhanced, steps=[*enhanced.steps, *sink.fitted])
    mp4, written, (rows, columns), fps_out = sink.finish()
    derived = wrap_enhanced_video(
        source, mp4, written, rows, columns, fps_out, description=description, series_number=series_number,
        uid_seed=f"{uid_seed}/video", algorithm=enhanced.algorithm, derivation_description="; ".join(enhanced.steps),
    )
    return ResultObject("video", derived), enhanced


def _summary(source: Dataset, stream: FrameStream, enhanced: EnhancementOutcome) -> dict:
    return {"sop_instance_uid": str(source.SOPInstanceUID), "frames": stream.count, "width": int(source.Columns),
            "height": int(source.Rows), "fps": stream.fps, "algorithm": enhanced.algorithm.name,
            "steps": enhanced.steps, "metrics": enhanced.metrics}


def process_video_instance(
    source: Dataset, runtime: VideoRuntime, *, uid_seed: str, progress: ProgressLog = no_log,
    memory_budget: int | None = None,
) -> tuple[list[ResultObject], dict]:
    """Run the video workflow on one instance.

    ``memory_budget`` (bytes; None: no check) is checked against the clip's estimated
    memory before anything is decoded (:func:`~dicom_service.pipelines.video_memory.check_video_fits`).

    Returns
    -------
    objects : list of ResultObject
    summary : dict
        JSON-serialisable description (frames, size, steps, metrics).
    """
    sop = str(source.SOPInstanceUID)
    check_frame_count(source)
    check_video_fits(source, runtime, memory_budget)
    stream = open_frames(source)
    sink = VideoOutputSink(video=_is_video(source, stream.count))
    enhanced = _enhance(source, stream, runtime, sink, progress)
    seed = f"{uid_seed}/{sop}"
    try:
        derived, enhanced = _enhanced_object(source, sink, enhanced, progress, uid_seed=seed,
                                             series_number=ENHANCED_VIDEO_SERIES_NUMBER,
                                             description="AI enhanced video")
        if sink.masks is None:
            raise MediaError(f"instance {sop}: no tooth masks")
    except BaseException:
        sink.abort()
        raise
    seg = write_tooth_segmentation(source, sink.masks, algorithm=enhanced.algorithm, uid_seed=f"{seed}/seg")
    report = write_video_report(source, enhanced, derived=[derived.dataset, seg], uid_seed=f"{seed}/sr",
                                description=_for_medium("AI video enhancement report", sink.video))
    objects = [derived, ResultObject("seg", seg), ResultObject("sr", report)]
    progress(f"{sop}: wrote {', '.join(o.kind for o in objects)}")
    return objects, _summary(source, stream, enhanced)


def restore_video_instance(
    source: Dataset, runtime: VideoRuntime, masks: MaskFrames, segmentation: Dataset, *, uid_seed: str,
    progress: ProgressLog = no_log, memory_budget: int | None = None,
) -> tuple[list[ResultObject], dict]:
    """Enhance one instance again with the restoration guided by a dentist's corrected
    tooth masks instead of the automatic ones (module docstring).

    Parameters
    ----------
    source : Dataset
        The photo or video the workflow processed (pixel data deferred or in memory).
    runtime : VideoRuntime
        A :class:`~dicom_service.vision.runtime.MaskGuidedRuntime` whose restoration uses
        the tooth masks (``uses_tooth_masks``).
    masks : MaskFrames
        The corrected masks, ``shape`` ``(T, H, W)`` (the source's frames), ``[t]`` frame
        ``t``'s ``(H, W)`` bool (:func:`~dicom_service.media.seg_frames.segmentation_frames`
        of the corrected Segmentation reads them one at a time).
    segmentation : Dataset
        The corrected Segmentation's attributes (the amended report lists it; its Content
        Description, what the dentist did, goes into the provenance).
    uid_seed : str
        Seed of the new objects' UIDs (with the Segmentation's UID).
    progress, memory_budget
        As for :func:`process_video_instance`.

    Returns
    -------
    objects : list of ResultObject
        The amended enhanced video (``"video"``) or photograph (``"sc"``) and its report (``"sr"``).
    summary : dict
        As :func:`process_video_instance`, with ``segmentation`` (the corrected Segmentation's UID).

    Raises
    ------
    InputError
        The runtime does not restore with tooth masks, or the masks do not match the
        source's frames.
    """
    sop = str(source.SOPInstanceUID)
    if not restores_with_masks(runtime):
        raise InputError(f"the video runtime {runtime.info.name!r} does not restore with the tooth masks, so "
                         "corrected masks cannot change its result")
    check_frame_count(source)
    check_video_fits(source, runtime, memory_budget)
    stream = open_frames(source)
    frames = (stream.count, int(source.Rows), int(source.Columns))
    if tuple(masks.shape) != frames:
        raise InputError(f"the corrected masks {tuple(masks.shape)} do not match the source's frames {frames}")
    sink = VideoOutputSink(video=_is_video(source, stream.count), keep_masks=False)
    enhanced = _enhance(source, stream, runtime, sink, progress, masks=(masks[t] for t in range(stream.count)))
    what = str(segmentation.get("ContentDescription", "") or "corrected tooth masks")
    creator = str(segmentation.get("ContentCreatorName", "") or "")
    if creator:
        what = f"{what}, by {creator}"
    # right after the runtime's tooth-mask step, before any step the H.264 fit adds
    enhanced = replace(enhanced, steps=[*enhanced.steps[:1], f"Tooth masks of the restoration: Segmentation "
                                        f"{segmentation.SOPInstanceUID} ({what})", *enhanced.steps[1:]])
    seed = f"{uid_seed}/{sop}/amended/{segmentation.SOPInstanceUID}"
    try:
        derived, enhanced = _enhanced_object(source, sink, enhanced, progress, uid_seed=seed,
                                             series_number=AMENDED_ENHANCED_SERIES,
                                             description="AI enhanced video, corrected tooth masks")
    except BaseException:
        sink.abort()
        raise
    if creator:  # the dentist whose masks guided it (General Series, Operators' Name)
        set_person_name(derived.dataset, "OperatorsName", creator)
    report = write_video_report(source, enhanced, derived=[derived.dataset, segmentation], uid_seed=f"{seed}/sr",
                                series_number=AMENDED_REPORT_SERIES,
                                description=_for_medium("AI video enhancement report, corrected tooth masks",
                                                        sink.video))
    make_room_for(report, creator)  # the dentist's name is in a step's text
    objects = [derived, ResultObject("sr", report)]
    progress(f"{sop}: wrote {', '.join(o.kind for o in objects)} with the corrected tooth masks")
    return objects, {**_summary(source, stream, enhanced), "segmentation": str(segmentation.SOPInstanceUID)}


def process_videos(
    sources: Sequence[Dataset], runtime: VideoRuntime, *, uid_seed: str, progress: ProgressLog = no_log,
    memory_budget: int | None = None,
) -> PipelineOutput:
    """Run the video workflow on every source instance of a job (each checked against
    ``memory_budget`` bytes before it is decoded; None: no check)."""
    output = PipelineOutput(summary={"workflow": "video", "instances": []})
    for source in sources:
        objects, summary = process_video_instance(source, runtime, uid_seed=uid_seed, progress=progress,
                                                  memory_budget=memory_budget)
        output.objects.extend(objects)
        output.summary["instances"].append(summary)
    return output
