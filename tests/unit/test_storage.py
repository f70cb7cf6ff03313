"""Instance store: durable single write, idempotence, UID validation, space floor."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dicom_service.domain import InstanceMeta, InvalidUIDError, StorageFullError
from dicom_service.storage import InstanceStore


def _meta(sop: str = "1.2.3.4", study: str = "1.2.3", series: str = "1.2.3.1") -> InstanceMeta:
    return InstanceMeta(study, series, sop, "1.2.840.10008.5.1.4.1.1.1.3", "1.2.840.10008.1.2.1",
                        "IO", "", "PACS", Path("."))


def test_store_writes_once_and_is_idempotent(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path)
    first = store.store(_meta(), (b"abc", b"def"))
    assert first.new and first.meta.path.read_bytes() == b"abcdef"
    mtime = first.meta.path.stat().st_mtime_ns
    again = store.store(_meta(), (b"different",))
    assert not again.new
    assert again.meta.path.read_bytes() == b"abcdef"
    assert again.meta.path.stat().st_mtime_ns == mtime
    assert store.counts() == {"instances": 1, "studies": 1}


@pytest.mark.parametrize("bad", ["1.2/../../etc", "..", "1.2.3\x00", "1.2.a", "", "1." * 40])
def test_bad_uids_never_reach_the_disk(tmp_path: Path, bad: str) -> None:
    store = InstanceStore(tmp_path)
    with pytest.raises(InvalidUIDError):
        store.store(_meta(sop=bad), (b"x",))
    with pytest.raises(InvalidUIDError):
        store.store(_meta(study=bad), (b"x",))
    assert not any((tmp_path / "instances").rglob("*.dcm"))


def test_space_floor(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path, min_free_bytes=10**18)
    assert not store.has_space()
    with pytest.raises(StorageFullError):
        store.store(_meta(), (b"x",))


def test_index_survives_reopen_and_tmp_is_cleaned(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path)
    store.store(_meta(), (b"abc",))
    (tmp_path / "tmp" / "partial.123").write_bytes(b"half")
    store.close()
    reopened = InstanceStore(tmp_path)
    assert reopened.instance("1.2.3.4") is not None
    assert not list((tmp_path / "tmp").iterdir())


def test_stability_and_routing_marks(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path)
    store.store(_meta("1.2.3.4"), (b"a",))
    now = time.time()
    assert store.stable_studies(10.0, now) == []
    assert store.stable_studies(10.0, now + 11) == ["1.2.3"]
    assert [m.sop_instance_uid for m in store.unrouted_instances("1.2.3")] == ["1.2.3.4"]
    store.mark_routed("1.2.3", ["1.2.3.4"], up_to=now + 11)
    assert store.stable_studies(10.0, now + 20) == []
    assert store.unrouted_instances("1.2.3") == []
    # a new instance makes the study pending again; only it is unrouted
    store.store(_meta("1.2.3.5"), (b"b",))
    assert [m.sop_instance_uid for m in store.unrouted_instances("1.2.3")] == ["1.2.3.5"]


def test_own_results_are_acknowledged_not_reprocessed(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path)
    path = store.write_result(7, "1.2.3.99", b"result")
    assert path.read_bytes() == b"result"
    outcome = store.store(_meta("1.2.3.99"), (b"result",))
    assert not outcome.new
    assert store.counts()["instances"] == 0


def test_a_result_streams_to_its_file_and_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    """``write_result`` takes a function that writes the file (a large result streamed from
    its temporary files); if it fails, neither the result nor a temporary file is left."""
    store = InstanceStore(tmp_path)

    def write(fh) -> None:  # noqa: ANN001 - a binary file
        for chunk in (b"ab", b"cd", b"ef"):
            fh.write(chunk)

    assert store.write_result(8, "1.2.3.98", write).read_bytes() == b"abcdef"

    def broken(fh) -> None:  # noqa: ANN001
        fh.write(b"half")
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        store.write_result(8, "1.2.3.97", broken)
    assert not (tmp_path / "results" / "8" / "1.2.3.97.dcm").exists()
    assert list((tmp_path / "tmp").iterdir()) == []
