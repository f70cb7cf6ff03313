"""Ingest benchmark: C-STORE throughput of the node against DCMTK's ``storescp``.

The same synthetic intra-oral radiographs (built once into a temporary folder) are sent
with DCMTK ``storescu`` over ONE association (``-R``: only the needed presentation
contexts; ``TCP_NODELAY=1``) into each target, ``--repeats`` times; every run starts the
target on fresh storage (a re-sent SOP Instance UID would be a cheap duplicate), and the
median wall time of ``storescu`` is reported. Targets:

``dcmtk_storescp``
    DCMTK ``storescp`` (``TCP_NODELAY=1``, ``--max-pdu 131072``, writing to a temporary
    folder; it does not fsync): the reference.
``service_fsync`` (the honest figure) / ``service_no_fsync``
    ``python -m dicom_service serve`` as a subprocess with real settings (INFO logging,
    SQLite index, ``storage.fsync`` true / false); routing's stability window is an hour
    so no processing runs during the measurement.
``node_inprocess_fsync`` / ``node_inprocess_no_fsync``
    The :class:`~dicom_service.node.scp.DicomNode` and
    :class:`~dicom_service.storage.InstanceStore` alone, in this process.
``pynetdicom_noop``
    A bare pynetdicom AE with a do-nothing handler: the ceiling of pynetdicom itself.
``dcmtk_storescp_tls`` / ``node_inprocess_tls_fsync``
    The same two over DICOM TLS (mutual, certificates from ``tests.tlscerts``; storescu
    ``+tls`` with DCMTK's default BCP 195 non-downgrading profile): what TLS costs.

Before each run, ``os.sync()`` flushes the previous runs' dirty pages, and each run's
storage is deleted after its count is checked.

Run from the repository root: ``python -m benchmarks.ingest [--count 200] [--repeats 3]``.
Prints one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file (python benchmarks/ingest.py): make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import hardware, median, timed_run, tool_version
from tests.tlscerts import Pki, make_pki

TARGETS: tuple[str, ...] = (
    "dcmtk_storescp", "service_fsync", "service_no_fsync", "node_inprocess_fsync",
    "node_inprocess_no_fsync", "pynetdicom_noop", "dcmtk_storescp_tls", "node_inprocess_tls_fsync",
)
BASE_IMAGES = 8
INSTANCES_PER_STUDY = 20


def log(text: str) -> None:
    """Progress line on stderr (stdout carries only the JSON)."""
    print(f"[ingest] {text}", file=sys.stderr, flush=True)


def build_corpus(folder: Path, count: int, rows: int, cols: int) -> tuple[list[Path], int]:
    """Write ``count`` intra-oral radiographs (new UIDs each) into ``folder``.

    Returns
    -------
    files : list of Path
    total_bytes : int
        Sum of the file sizes.
    """
    from dicom_service.uids import new_uid
    from tests.builders import make_intraoral_radiograph, save

    bases = [make_intraoral_radiograph(rows=rows, cols=cols, implants=1 + i % 3, seed=i)
             for i in range(BASE_IMAGES)]
    files: list[Path] = []
    study = series = ""
    for i in range(count):
        if i % INSTANCES_PER_STUDY == 0:
            study, series = new_uid(), new_uid()
        ds = copy.deepcopy(bases[i % BASE_IMAGES])
        uid = new_uid()
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.InstanceNumber = i % INSTANCES_PER_STUDY + 1
        files.append(save(ds, folder / f"io{i:05d}.dcm"))
    return files, sum(f.stat().st_size for f in files)


def tls_options(pki: Pki | None, *, server: bool) -> list[str]:
    """DCMTK options for mutual TLS with the test certificates (none without ``pki``)."""
    if pki is None:
        return []
    pair = pki.node if server else pki.peer
    return ["+tls", str(pair.private_key), str(pair.certificate), "-pw", "+cf", str(pki.ca)]


def storescu_args(storescu: str, port: int, called_aet: str, folder: Path, pki: Pki | None = None) -> list[str]:
    """``storescu`` over one association, only the needed contexts, whole folder."""
    return [storescu, "-aet", "STORESCU", "-aec", called_aet, "-R", "+sd", *tls_options(pki, server=False),
            "127.0.0.1", str(port), str(folder)]


def send(storescu: str, port: int, called_aet: str, folder: Path, pki: Pki | None = None) -> float:
    """Send the corpus; return storescu's wall seconds (raises if any store failed).

    Dirty pages of earlier runs are flushed first (``os.sync``) so that their write-back
    does not land in this run's time.
    """
    from tests.integration.tools import dcmtk_env

    os.sync()
    seconds, proc = timed_run(storescu_args(storescu, port, called_aet, folder, pki), dcmtk_env(), 600)
    if proc.returncode != 0:
        raise RuntimeError(f"storescu failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return seconds


def run_dcmtk(storescu: str, corpus: Path, count: int, work: Path, pki: Pki | None = None) -> float:
    """One run into a fresh DCMTK ``storescp`` (over TLS with ``pki``)."""
    from tests.integration.tools import (
        dcmtk_env,
        free_port,
        port_open,
        require_tool,
        wait_until,
    )

    storescp = require_tool("storescp", "dcmtk")
    out = Path(tempfile.mkdtemp(dir=work, prefix="storescp-"))
    port = free_port()
    proc = subprocess.Popen([storescp, "-aet", "STORESCP", "--max-pdu", "131072", "-od", str(out),
                             *tls_options(pki, server=True), str(port)], env=dcmtk_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: port_open("127.0.0.1", port), 30, what="storescp")
        seconds = send(storescu, port, "STORESCP", corpus, pki)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    stored = sum(1 for _ in out.iterdir())
    shutil.rmtree(out)
    if stored != count:
        raise RuntimeError(f"storescp stored {stored} of {count} files")
    return seconds


def run_inprocess(storescu: str, corpus: Path, count: int, work: Path, fsync: bool,
                  pki: Pki | None = None) -> float:
    """One run into a :class:`DicomNode` + :class:`InstanceStore` in this process (its
    TLS listener only, requiring client certificates, with ``pki``)."""
    from dicom_service.config import DicomSettings
    from dicom_service.node.scp import DicomNode
    from dicom_service.storage import InstanceStore
    from dicom_service.tls import NodeTls

    root = Path(tempfile.mkdtemp(dir=work, prefix="inproc-"))
    store = InstanceStore(root, fsync=fsync)
    tls = None if pki is None else NodeTls(port=0, certificate=pki.node.certificate, private_key=pki.node.private_key,
                                           ca_certificates=pki.ca, require_client_certificate=True)
    settings = DicomSettings(port=0, bind_address="127.0.0.1", max_pdu=0, tls=tls, plain=tls is None)
    node = DicomNode(settings, store, lambda _e: None)
    node.start()
    try:
        seconds = send(storescu, node.port if tls is None else node.tls_port, "DENTAL_AI", corpus, pki)
    finally:
        node.stop()
    stored = store.counts()["instances"]
    store.close()
    shutil.rmtree(root)
    if stored != count:
        raise RuntimeError(f"the in-process node indexed {stored} of {count} instances")
    return seconds


def run_pynetdicom_noop(storescu: str, corpus: Path, count: int) -> float:
    """One run into a bare pynetdicom AE whose C-STORE handler does nothing.

    This is the ceiling of any node built on pynetdicom: it measures the library's
    own per-instance cost, with no parsing, storage or durability.
    """
    from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt

    stored = 0

    def handler(_event: Any) -> int:
        nonlocal stored
        stored += 1
        return 0x0000

    ae = AE(ae_title="NOOP")
    ae.maximum_pdu_size = 0
    ae.add_supported_context("1.2.840.10008.5.1.4.1.1.1.3", ALL_TRANSFER_SYNTAXES)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, handler)])
    try:
        seconds = send(storescu, int(server.server_address[1]), "NOOP", corpus)
    finally:
        server.shutdown()
        ae.shutdown()
    if stored != count:
        raise RuntimeError(f"the no-op pynetdicom AE saw {stored} of {count} instances")
    return seconds


def run_service(storescu: str, corpus: Path, count: int, work: Path, fsync: bool) -> float:
    """One run into ``dicom-service serve`` (subprocess, real settings, fresh storage)."""
    from tests.integration.node import NodeProcess

    node = NodeProcess(Path(tempfile.mkdtemp(dir=work, prefix="service-")), stability_seconds=3600,
                       settings={"storage": {"fsync": fsync}})
    node.start()
    try:
        seconds = send(storescu, node.dicom_port, "DENTAL_AI", corpus)
    finally:
        node.stop()
    with closing(sqlite3.connect(f"file:{node.storage_path / 'index.sqlite3'}?mode=ro", uri=True)) as conn:
        stored = int(conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0])
    shutil.rmtree(node.workdir)
    if stored != count:
        raise RuntimeError(f"the service indexed {stored} of {count} instances")
    return seconds


def summarise(runs: Sequence[float], count: int, total_bytes: int) -> dict[str, Any]:
    """Median seconds, instances/s and MB/s (MB = 10^6 bytes) of a target's runs."""
    seconds = median(runs)
    return {
        "median_seconds": round(seconds, 4),
        "instances_per_second": round(count / seconds, 1),
        "mb_per_second": round(total_bytes / 1e6 / seconds, 2),
        "runs_seconds": [round(r, 4) for r in runs],
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200, help="instances per run (default 200)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per target; the median is reported")
    parser.add_argument("--rows", type=int, default=416)
    parser.add_argument("--cols", type=int, default=416)
    parser.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    args = parser.parse_args(argv)

    from tests.integration.tools import require_tool

    storescu = require_tool("storescu", "dcmtk")
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        work = Path(tmp)
        corpus = work / "corpus"
        files, total_bytes = build_corpus(corpus, args.count, args.rows, args.cols)
        log(f"corpus: {len(files)} files, {total_bytes / 1e6:.1f} MB")
        pki = make_pki(work / "pki") if any(name.endswith(("_tls", "_tls_fsync")) for name in args.targets) else None
        runners: dict[str, Callable[[], float]] = {
            "dcmtk_storescp": lambda: run_dcmtk(storescu, corpus, args.count, work),
            "service_fsync": lambda: run_service(storescu, corpus, args.count, work, True),
            "service_no_fsync": lambda: run_service(storescu, corpus, args.count, work, False),
            "node_inprocess_fsync": lambda: run_inprocess(storescu, corpus, args.count, work, True),
            "node_inprocess_no_fsync": lambda: run_inprocess(storescu, corpus, args.count, work, False),
            "pynetdicom_noop": lambda: run_pynetdicom_noop(storescu, corpus, args.count),
            "dcmtk_storescp_tls": lambda: run_dcmtk(storescu, corpus, args.count, work, pki),
            "node_inprocess_tls_fsync": lambda: run_inprocess(storescu, corpus, args.count, work, True, pki),
        }
        results: dict[str, dict[str, Any]] = {}
        # Interleave targets within each repeat so drift (page cache, CPU boost) hits all alike.
        runs: dict[str, list[float]] = {name: [] for name in args.targets}
        for repeat in range(args.repeats):
            for name in args.targets:
                seconds = runners[name]()
                runs[name].append(seconds)
                log(f"repeat {repeat + 1}/{args.repeats} {name}: {seconds:.3f} s")
        for name in args.targets:
            results[name] = summarise(runs[name], args.count, total_bytes)
        reference = results.get("dcmtk_storescp")
        if reference is not None:
            for name, summary in results.items():
                if name != "dcmtk_storescp":
                    summary["throughput_ratio_to_dcmtk"] = round(
                        reference["median_seconds"] / summary["median_seconds"], 3)
    for tls_name, plain_name in (("dcmtk_storescp_tls", "dcmtk_storescp"),
                                 ("node_inprocess_tls_fsync", "node_inprocess_fsync")):
        if tls_name in results and plain_name in results:
            results[tls_name]["throughput_ratio_to_plain"] = round(
                results[plain_name]["median_seconds"] / results[tls_name]["median_seconds"], 3)
    primary = "service_fsync" if "service_fsync" in results else None
    report = {
        "benchmark": "ingest",
        "instances": args.count,
        "instance_size": f"{args.rows}x{args.cols} 16-bit intra-oral radiograph, Explicit VR LE",
        "total_megabytes": round(total_bytes / 1e6, 2),
        "repeats": args.repeats,
        "statistic": "median wall seconds of storescu (one association, -R, TCP_NODELAY=1)",
        "hardware": hardware(),
        "tools": {"storescu": tool_version(storescu)},
        "notes": [
            "dcmtk_storescp: storescp with TCP_NODELAY=1 and --max-pdu 131072, no fsync",
            ("service_*: python -m dicom_service serve subprocess, INFO logging, SQLite index, "
             "max_pdu 0 (unlimited), fresh storage per run"),
            ("throughput_ratio_to_dcmtk = dcmtk median seconds / target median seconds "
             "(1.0 = as fast as DCMTK)"),
            ("pynetdicom_noop: a bare pynetdicom 3.0.4 AE whose handler does nothing: the ceiling "
             "of any node built on pynetdicom on this machine"),
            ("*_tls: mutual DICOM TLS with 2048-bit RSA certificates, storescu +tls (BCP 195 "
             "non-downgrading profile, TLS 1.2+); the node's TLS listener requires client certificates"),
        ],
        "targets": results,
        "primary": {
            "target": primary,
            "throughput_ratio_to_dcmtk": results[primary].get("throughput_ratio_to_dcmtk")
            if primary else None,
        },
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
