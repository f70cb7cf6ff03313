"""Sending results: from disk in chunks, as they are encoded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from dicom_service.config import Destination
from dicom_service.domain import AlgorithmInfo
from dicom_service.node.contexts import IMPLICIT_LE
from dicom_service.node.scu import send_files
from dicom_service.pipelines.base import ResultObject
from dicom_service.writers.seg import write_tooth_segmentation
from tests import builders
from tests.receiver import running_receiver


def _seg_file(folder: Path) -> Path:
    video = builders.make_video_photographic(frames=3, rows=32, cols=48)
    masks = np.random.default_rng(0).random((3, 32, 48)) > 0.5
    seg = write_tooth_segmentation(video, masks, algorithm=AlgorithmInfo("t", "1", "ai"), uid_seed="scu")
    path = folder / "seg.dcm"
    with open(path, "wb") as fh:
        ResultObject("seg", seg).write(fh)
    return path


def test_results_arrive_whole_sent_from_disk(tmp_path: Path) -> None:
    """A SEG (Explicit VR Little Endian) and an enhanced video (H.264) go out as encoded,
    from their files in chunks, and arrive as they are on disk."""
    from dicom_service.media.video import encapsulated_bitstream
    from dicom_service.writers.video import wrap_enhanced_video

    seg_path = _seg_file(tmp_path)
    source = builders.make_video_photographic(frames=4, rows=48, cols=64)
    video = wrap_enhanced_video(source, encapsulated_bitstream(source.PixelData), 4, 48, 64, 30.0, uid_seed="v")
    video_path = tmp_path / "video.dcm"
    with open(video_path, "wb") as fh:
        ResultObject("video", video).write(fh)
    with running_receiver() as pacs:
        destination = Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=pacs.port)
        send_files(destination, [seg_path, video_path], "DENTAL_AI")
        received = {str(ds.SOPInstanceUID): ds for ds in pacs.wait_for(2, 10)}
    for path in (seg_path, video_path):
        sent = dcmread(path)
        got = received[str(sent.SOPInstanceUID)]
        assert got.PixelData == sent.PixelData
        assert str(got.file_meta.TransferSyntaxUID) == str(sent.file_meta.TransferSyntaxUID)


def test_a_peer_that_takes_none_of_the_syntaxes_is_a_dispatch_error(tmp_path: Path) -> None:
    from dicom_service.domain import DispatchError

    with running_receiver(transfer_syntaxes=[IMPLICIT_LE]) as pacs:
        destination = Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=pacs.port)
        with pytest.raises(DispatchError, match="failed"):
            send_files(destination, [_seg_file(tmp_path)], "DENTAL_AI")
