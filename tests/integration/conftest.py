"""Fixtures that start real servers: Debian's Orthanc and the service as a subprocess.

Missing tools (``Orthanc``, ``storescu``, ``echoscu``, ``dciodvfy``) skip the tests that
need them, except with ``CI=true`` in the environment, where they fail them.

Every server started here is stopped in teardown (terminate, then kill); its log tail is
printed there, so a failing test shows what Orthanc and the node were doing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.node import NodeProcess
from tests.integration.orthanc import OrthancServer
from tests.integration.tools import free_port, require_tool


@pytest.fixture
def dcmtk_tools() -> dict[str, str]:
    """Paths of the DCMTK and dicom3tools programs the tests run (skip/fail if missing)."""
    return {
        "storescu": require_tool("storescu", "dcmtk"),
        "echoscu": require_tool("echoscu", "dcmtk"),
        "dciodvfy": require_tool("dciodvfy", "dicom3tools"),
    }


@pytest.fixture
def orthanc_factory(tmp_path: Path) -> Iterator[Callable[..., OrthancServer]]:
    """Start Orthanc servers on demand; all are stopped in teardown.

    Call it as ``orthanc_factory(node_port=..., stable_age=1, dicom_port=0)`` (further
    keywords go to :class:`OrthancServer`); the returned server is running (REST and
    DICOM answer).
    """
    require_tool("Orthanc", "orthanc")
    started: list[OrthancServer] = []

    def start(*, node_port: int, stable_age: int = 1, dicom_port: int = 0, name: str = "",
              **kwargs: Any) -> OrthancServer:
        workdir = tmp_path / f"orthanc{name or len(started)}"
        server = OrthancServer(workdir, node_port=node_port, stable_age=stable_age,
                               dicom_port=dicom_port, **kwargs)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()
        print(f"--- Orthanc log ({server.log_path}) ---\n{server.log_tail(40)}")


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """Create (not yet started) service subprocesses; all are stopped in teardown.

    Keyword arguments go to :class:`~tests.integration.orthanc.NodeProcess`
    (``destination_port``, ``stability_seconds``, ``settings``, ...).
    """
    made: list[NodeProcess] = []

    def make(name: str = "", **kwargs: Any) -> NodeProcess:
        node = NodeProcess(tmp_path / f"node{name or len(made)}", **kwargs)
        made.append(node)
        return node

    yield make
    for node in made:
        node.stop()
        print(f"--- dicom-service log ({node.log_path}) ---\n{node.log_tail(60)}")


@dataclass
class PacsAndNode:
    """A running Orthanc that auto-routes to a running node, which sends results back."""

    orthanc: OrthancServer
    node: NodeProcess


@pytest.fixture
def pacs_and_node(
    orthanc_factory: Callable[..., OrthancServer], node_factory: Callable[..., NodeProcess]
) -> PacsAndNode:
    """Orthanc (StableAge 1 s) ⇄ node (stability 1 s), both on free ports."""
    orthanc_dicom_port = free_port()
    node = node_factory(destination_port=orthanc_dicom_port, stability_seconds=1.0)
    orthanc = orthanc_factory(node_port=node.dicom_port, stable_age=1, dicom_port=orthanc_dicom_port)
    node.start()
    return PacsAndNode(orthanc=orthanc, node=node)
