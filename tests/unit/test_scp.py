"""The DICOM node over real associations on localhost: policy, statuses, durability."""

from __future__ import annotations

import io
import logging
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from dicom_service.config import DicomSettings
from dicom_service.node.scp import DicomNode, StoredEvent
from dicom_service.storage import InstanceStore
from tests import builders
from tests.dicomcheck import require_tool
from tests.dicomnet import associate, echo_ok, store, store_raw
from tests.integration.tools import wait_until

IO = "1.2.840.10008.5.1.4.1.1.1.3"
EXPLICIT = "1.2.840.10008.1.2.1"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[DicomNode, list[StoredEvent]]]:
    events: list[StoredEvent] = []
    store_ = InstanceStore(tmp_path / "var")
    settings = DicomSettings(port=0, bind_address="127.0.0.1",
                             accepted_calling_aets=["TESTSCU", "STORESCU", "ECHOSCU"])
    n = DicomNode(settings, store_, events.append)
    n.start()
    yield n, events
    n.stop()
    store_.close()


def _dataset_bytes(ds: pydicom.Dataset) -> bytes:
    """The data set encoded without preamble and meta header."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    raw = buffer.getvalue()
    group_length = int(pydicom.dcmread(io.BytesIO(raw)).file_meta.FileMetaInformationGroupLength)
    return raw[132 + 12 + group_length:]


def test_store_is_durable_byte_exact_and_idempotent(node, tmp_path: Path) -> None:
    n, events = node
    ds = builders.make_intraoral_radiograph()
    assert store(n.port, ds) == 0x0000
    meta = n.store.instance(str(ds.SOPInstanceUID))
    assert meta is not None and meta.calling_ae == "TESTSCU"
    back = pydicom.dcmread(meta.path)
    assert back.SOPInstanceUID == ds.SOPInstanceUID
    assert back.PixelData == ds.PixelData
    assert store(n.port, ds) == 0x0000  # re-sent: success, not stored twice
    assert [e.new for e in events] == [True, False]
    assert n.store.counts()["instances"] == 1


def test_unknown_calling_ae_is_rejected(node) -> None:
    n, _ = node
    assoc = associate(n.port, [], calling="STRANGER")
    assert assoc.is_rejected
    assert echo_ok(n.port)


def test_unsupported_sop_class_and_transfer_syntax_contexts_are_rejected(node) -> None:
    n, _ = node
    ct = "1.2.840.10008.5.1.4.1.1.2"
    big_endian = "1.2.840.10008.1.2.2"
    mpeg2 = "1.2.840.10008.1.2.4.100"
    assoc = associate(n.port, [(ct, [EXPLICIT]), (IO, [big_endian]), (IO, [mpeg2]), (IO, [EXPLICIT])])
    assert assoc.is_established
    accepted = {(c.abstract_syntax, c.transfer_syntax[0]) for c in assoc.accepted_contexts}
    rejected = {c.abstract_syntax for c in assoc.rejected_contexts}
    assoc.release()
    assert (IO, EXPLICIT) in accepted
    assert ct in rejected
    assert not any(ts in (big_endian, mpeg2) for _, ts in accepted)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("non_dicom", 0xC000),
        ("truncated", 0xC002),
        ("mismatched_class", 0xA900),
        ("oversized_rows", 0xC002),
        ("path_uid", 0xC001),
    ],
)
def test_bad_input_gets_the_proper_status_and_nothing_is_lost(node, caplog, case: str, expected: int) -> None:
    n, _ = node
    good = builders.make_intraoral_radiograph(seed=3)
    assert store(n.port, good) == 0
    caplog.set_level(logging.INFO)
    bad = builders.make_intraoral_radiograph(seed=4)
    if case == "non_dicom":
        status = store_raw(n.port, IO, "1.2.3.4.5", EXPLICIT, builders.non_dicom_bytes())
    elif case == "truncated":
        payload = _dataset_bytes(bad)
        status = store_raw(n.port, IO, str(bad.SOPInstanceUID), EXPLICIT, payload[: len(payload) // 2])
    elif case == "mismatched_class":
        status = store(n.port, builders.mismatched_sop_class(bad))
    elif case == "oversized_rows":
        status = store(n.port, builders.oversized_rows(bad))
    else:
        weird = builders.with_uid(bad, "1.2/../../etc")
        payload = _dataset_bytes(weird)
        status = store_raw(n.port, IO, "1.2.3.4.6", EXPLICIT, payload)
    assert status == expected
    assert n.store.counts()["instances"] == 1  # the bad one is not indexed, the good one is kept
    assert n.store.instance(str(good.SOPInstanceUID)).path.is_file()
    assert not list((n.store.root / "instances").rglob("*etc*"))
    assert echo_ok(n.port)  # still up
    text = caplog.text
    assert "PHANTOM" not in text and builders.PATIENT_ID not in text  # no patient data in logs
    assert any(r.levelno >= logging.WARNING for r in caplog.records)


def test_storage_floor_gives_a700_then_refuses_associations(node) -> None:
    n, _ = node
    assoc = associate(n.port, [(IO, [EXPLICIT])])
    assert assoc.is_established
    n.store.min_free_bytes = 10**18  # the disk "fills" during the association
    status = assoc.send_c_store(builders.make_intraoral_radiograph(seed=9))
    assoc.release()
    assert status.Status == 0xA700
    refused = associate(n.port, [(IO, [EXPLICIT])])
    assert refused.is_rejected
    n.store.min_free_bytes = 0
    assert echo_ok(n.port)


def test_dcmtk_echoscu_and_storescu(node, tmp_path: Path) -> None:
    n, _ = node
    echoscu, storescu = require_tool("echoscu"), require_tool("storescu")
    ok = subprocess.run([echoscu, "-aet", "ECHOSCU", "-aec", "DENTAL_AI", "127.0.0.1", str(n.port)],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    files = [builders.save(builders.make_intraoral_radiograph(seed=i), tmp_path / f"{i}.dcm") for i in range(3)]
    files.append(builders.save(builders.make_video_photographic(frames=4, rows=96, cols=128), tmp_path / "v.dcm"))
    files.append(builders.save(builders.make_vl_photographic_jpeg(rows=64, cols=96), tmp_path / "p.dcm"))
    sent = subprocess.run([storescu, "-aet", "STORESCU", "-aec", "DENTAL_AI", "--propose-lossless",
                           "127.0.0.1", str(n.port), *map(str, files[:3])],
                          capture_output=True, text=True, timeout=60, env={"TCP_NODELAY": "1"})
    assert sent.returncode == 0, sent.stderr
    # compressed files in their own transfer syntax: H.264 (-xn) and JPEG baseline (-xy)
    for f, option in ((files[3], "-xn"), (files[4], "-xy")):
        r = subprocess.run([storescu, "-aet", "STORESCU", "-aec", "DENTAL_AI", "-R", option,
                            "127.0.0.1", str(n.port), str(f)],
                           capture_output=True, text=True, timeout=60, env={"TCP_NODELAY": "1"})
        assert r.returncode == 0, r.stderr
    assert n.store.counts()["instances"] == 5
    bad = subprocess.run([echoscu, "-aet", "NOBODY", "-aec", "DENTAL_AI", "127.0.0.1", str(n.port)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0


def test_frame_counts_that_do_not_fit_the_sop_class_are_refused(node, caplog) -> None:
    """A video without a usable Number of Frames (its length would be known only by decoding
    it whole, and its Segmentation could not name its frames) and a single-frame IOD holding
    several frames get 0xA900; nothing is stored, the node serves on."""
    n, _ = node
    caplog.set_level(logging.INFO)
    video = builders.make_video_photographic(frames=4, rows=64, cols=96)
    missing = builders.make_video_photographic(frames=4, rows=64, cols=96)
    del missing.NumberOfFrames
    zero = builders.make_video_photographic(frames=4, rows=64, cols=96)
    zero.NumberOfFrames = 0
    photo = builders.make_vl_photographic_jpeg(rows=32, cols=48)
    photo.NumberOfFrames = 3  # VL Photographic is a single-frame IOD
    assert [store(n.port, ds) for ds in (missing, zero, photo)] == [0xA900] * 3
    assert "missing NumberOfFrames" in caplog.text and "single-frame IOD" in caplog.text
    one = builders.make_vl_photographic_jpeg(rows=32, cols=48, seed=1)
    one.NumberOfFrames = 1  # said, but 1: fine
    assert store(n.port, video) == 0 and store(n.port, one) == 0
    assert n.store.counts()["instances"] == 2
    assert echo_ok(n.port)


def test_connections_closed_before_associating_free_their_slots_at_once(tmp_path: Path) -> None:
    """A TCP health check or a port scan opens and closes connections without a word.
    pynetdicom's acceptor waited the whole ACSE timeout for each one's A-ASSOCIATE-RQ
    (and its DUL read end-of-file in a loop meanwhile): a dozen such probes filled
    ``max_associations`` and real peers were refused ("local limit exceeded") for that long."""
    store_ = InstanceStore(tmp_path / "var")
    settings = DicomSettings(port=0, bind_address="127.0.0.1", max_associations=3, acse_timeout=60.0,
                             accepted_calling_aets=["TESTSCU"])
    node = DicomNode(settings, store_, lambda _event: None)
    node.start()
    try:
        for _ in range(12):
            socket.create_connection(("127.0.0.1", node.port), timeout=10).close()
        # each probe's slot is free within a fraction of a second, not after 60 s
        wait_until(lambda: echo_ok(node.port), 5.0, what="an association after the probes")
        wait_until(lambda: not node.ae.active_associations, 5.0, what="the probes' associations to end")
        # a connection that stays open without a word still holds its slot until the timeout
        quiet = socket.create_connection(("127.0.0.1", node.port), timeout=10)
        try:
            wait_until(lambda: len(node.ae.active_associations) == 1, 5.0, what="the quiet connection's association")
            assert echo_ok(node.port)
            # the echo's association ends; the quiet one stays
            wait_until(lambda: len(node.ae.active_associations) == 1, 5.0, what="the echo's association to end")
        finally:
            quiet.close()
        wait_until(lambda: not node.ae.active_associations, 5.0, what="the quiet connection's end once closed")
    finally:
        node.stop()
        store_.close()
