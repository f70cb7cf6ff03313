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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from pydicom.dataset import Dataset

from dicom_service.domain import MediaError
from dicom_service.media.video import open_frames
from dicom_service.node.contexts import input_class
from dicom_service.pipelines.base import PipelineOutput, ProgressLog, ResultObject, no_log
from dicom_service.pipelines.video_memory import check_video_fits
from dicom_service.pipelines.video_output import VideoOutputSink
from dicom_service.vision.runtime import VideoRuntime
from dicom_service.writers.sc import write_secondary_capture
from dicom_service.writers.seg import write_tooth_segmentation
from dicom_service.writers.sr import write_video_report
from dicom_service.writers.video import wrap_enhanced_video

ENHANCED_PHOTO_SERIES = 9102


def _is_video(ds: Dataset, frame_count: int) -> bool:
    cls = input_class(str(ds.get("SOPClassUID", "")))
    return (cls is not None and cls.family == "video") or frame_count > 1


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
    check_video_fits(source, runtime, memory_budget)
    stream = open_frames(source)
    count, fps = stream.count, stream.fps
    progress(f"{sop}: decoding and enhancing {count} frames at {fps:.2f} fps")
    sink = VideoOutputSink(video=_is_video(source, count))
    try:
        enhanced = runtime.enhance_stream(stream.frames, count, fps, sink,
                                          progress=lambda line: progress(f"{sop}: {line}"))
    except BaseException:
        sink.abort()
        raise
    progress(f"{sop}: enhanced with {enhanced.algorithm.name}")
    seed = f"{uid_seed}/{sop}"
    objects: list[ResultObject] = []
    if sink.video:
        if sink.fitted:  # frames beyond H.264 Level 4.2 (the classical runtime on a 4K source)
            progress(f"{sop}: {'; '.join(sink.fitted)}")
            enhanced = replace(enhanced, steps=[*enhanced.steps, *sink.fitted])
        mp4, written, (rows, columns), fps_out = sink.finish()
        derived = wrap_enhanced_video(
            source, mp4, written, rows, columns, fps_out, uid_seed=f"{seed}/video", algorithm=enhanced.algorithm,
            derivation_description="; ".join(enhanced.steps),
        )
        objects.append(ResultObject("video", derived))
    else:
        assert sink.still is not None
        derived = write_secondary_capture(
            source, sink.still, description="AI enhanced photo",
            series_number=ENHANCED_PHOTO_SERIES, uid_seed=f"{seed}/photo",
            burned_in_annotation=False, algorithm=enhanced.algorithm,
            derivation_description="; ".join(enhanced.steps),
        )
        objects.append(ResultObject("sc", derived))
    if sink.masks is None:
        raise MediaError(f"instance {sop}: no tooth masks")
    seg = write_tooth_segmentation(source, sink.masks, algorithm=enhanced.algorithm, uid_seed=f"{seed}/seg")
    objects.append(ResultObject("seg", seg))
    report = write_video_report(source, enhanced, derived=[derived, seg], uid_seed=f"{seed}/sr")
    objects.append(ResultObject("sr", report))
    progress(f"{sop}: wrote {', '.join(o.kind for o in objects)}")
    height, width = sink.masks.rows, sink.masks.columns
    summary = {
        "sop_instance_uid": sop, "frames": count, "width": width, "height": height,
        "fps": fps, "algorithm": enhanced.algorithm.name, "steps": enhanced.steps,
        "metrics": enhanced.metrics,
    }
    return objects, summary


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
