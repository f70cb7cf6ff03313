"""Stages of a stream in threads: order kept, errors carried to the caller, nothing left running."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from dicom_service.vision.stage_threads import Handoff, StageThreads


def _stage_threads_alive() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("stage-")]


def _double(inbox: Handoff[int], outbox: Handoff[int]) -> None:
    for value in inbox:
        outbox.put(2 * value)
    outbox.close()


def _feed(values: list[int], outbox: Handoff[int]) -> None:
    for value in values:
        outbox.put(value)
    outbox.close()


def test_items_pass_every_stage_in_order() -> None:
    values = list(range(200))
    with StageThreads(depth=1) as stages:
        a, b, c = stages.handoff(), stages.handoff(), stages.handoff()
        stages.start("feed", lambda: _feed(values, a))
        stages.start("double", lambda: _double(a, b))
        stages.start("again", lambda: _double(b, c))
        seen = list(c)
    assert seen == [4 * v for v in values]
    assert _stage_threads_alive() == []
    assert set(stages.busy_seconds) == {"feed", "double", "again", "caller"}
    assert all(0.0 <= seconds for seconds in stages.busy_seconds.values())


class BrokenStage(RuntimeError):
    pass


def test_a_failing_worker_stops_the_run_and_its_error_reaches_the_caller() -> None:
    def fail_at_five(inbox: Handoff[int], outbox: Handoff[int]) -> None:
        for value in inbox:
            if value == 5:
                raise BrokenStage("frame 5 is bad")
            outbox.put(value)
        outbox.close()

    seen: list[int] = []
    with pytest.raises(BrokenStage, match="frame 5"):
        with StageThreads(depth=1) as stages:
            a, b = stages.handoff(), stages.handoff()
            stages.start("feed", lambda: _feed(list(range(1000)), a))  # blocked on a full queue when 5 fails
            stages.start("check", lambda: fail_at_five(a, b))
            for value in b:
                seen.append(value)
    assert seen == [0, 1, 2, 3, 4]
    assert _stage_threads_alive() == []


def test_an_error_in_the_callers_stage_stops_the_workers() -> None:
    class Cancelled(Exception):
        pass

    with pytest.raises(Cancelled):
        with StageThreads(depth=1) as stages:
            a = stages.handoff()
            stages.start("feed", lambda: _feed(list(range(10_000)), a))
            for value in a:
                if value == 3:
                    raise Cancelled
    assert _stage_threads_alive() == []


def test_a_worker_error_after_the_body_finished_is_raised() -> None:
    def fail_at_end(inbox: Handoff[int]) -> None:
        list(inbox)
        raise BrokenStage("after the last item")

    with pytest.raises(BrokenStage):
        with StageThreads() as stages:
            a = stages.handoff()
            stages.start("sink", lambda: fail_at_end(a))
            for value in range(3):
                a.put(value)
            a.close()


def test_depth_must_be_positive() -> None:
    with pytest.raises(ValueError, match="depth"):
        StageThreads(depth=0)


class FailingSink:
    """A sink whose encoder breaks on the fourth frame."""

    def __init__(self) -> None:
        self.frames = 0

    def start(self, fps: float) -> None:
        pass

    def mask(self, mask: np.ndarray) -> None:
        pass

    def frame(self, frame: np.ndarray) -> None:
        self.frames += 1
        if self.frames == 4:
            raise BrokenStage("encoder failed")


def _source(frames: np.ndarray, fail_at: int | None):
    for t, frame in enumerate(frames):
        if t == fail_at:
            raise ValueError(f"corrupt frame {t}")
        yield frame


@pytest.mark.parametrize("where", ["source", "sink"])
def test_the_runtime_carries_a_stage_error_to_the_caller(where: str) -> None:
    """A frame that does not decode (first stage) or a sink that fails (last stage) ends
    the stream with that error in the caller's thread, and no stage thread is left."""
    from dicom_service.vision.registry import default_models_dir
    from dicom_service.vision.runtime import CollectingSink
    from dicom_service.vision.video_runtime import LearnedVideoRuntime

    runtime = LearnedVideoRuntime(default_models_dir(), "cpu", precision="float32")
    frames = np.random.default_rng(0).integers(0, 255, (12, 64, 80, 3), dtype=np.uint8)
    if where == "source":
        with pytest.raises(ValueError, match="corrupt frame 6"):
            runtime.enhance_stream(_source(frames, 6), 12, 30.0, CollectingSink())
    else:
        with pytest.raises(BrokenStage, match="encoder failed"):
            runtime.enhance_stream(_source(frames, None), 12, 30.0, FailingSink())
    assert _stage_threads_alive() == []
