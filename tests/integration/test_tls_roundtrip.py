"""DICOM TLS both ways with a real PACS, and the HTTP API over HTTPS.

Orthanc (Debian package) runs with DICOM TLS on, trusting the test authority; the node
runs as ``python -m dicom_service serve`` with a TLS-only DICOM listener that requires
client certificates, a destination reached over TLS with its own client certificate (both
checking the authority's revocation list, which does not revoke Orthanc's certificate),
and the API on HTTPS. A radiograph uploaded to Orthanc is auto-routed to the node over TLS,
and the node's results come back over TLS.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from dicom_service.uids import new_uid
from tests import builders
from tests.integration.node import NodeProcess
from tests.integration.orthanc import NODE_AET, ORTHANC_AET, OrthancServer, result_instances
from tests.integration.tools import free_port, port_open, wait_until
from tests.tlscerts import Pki

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("dcmtk_tools")]


@pytest.mark.slow
def test_pacs_to_node_and_back_over_tls(
    pki: Pki, orthanc_factory: Callable[..., OrthancServer], node_factory: Callable[..., NodeProcess],
    tmp_path: Path,
) -> None:
    orthanc_port, node_tls_port = free_port(), free_port()
    node = node_factory(
        destination_port=None, stability_seconds=1.0, https_ca=pki.ca,
        settings={
            "dicom": {"plain": False, "tls": {
                "port": node_tls_port, "certificate": str(pki.node.certificate),
                "private_key": str(pki.node.private_key), "ca_certificates": str(pki.ca),
                "require_client_certificate": True, "crl": str(pki.crl)}},
            "http": {"tls": {"certificate": str(pki.node.certificate), "private_key": str(pki.node.private_key)}},
            "destinations": [{
                "name": "orthanc", "ae_title": ORTHANC_AET, "host": "127.0.0.1", "port": orthanc_port,
                "tls": {"ca_certificates": str(pki.ca), "certificate": str(pki.node.certificate),
                        "private_key": str(pki.node.private_key), "crl": str(pki.crl)}}],
        })
    orthanc = orthanc_factory(
        node_port=node_tls_port, dicom_port=orthanc_port, stable_age=1, node_entry={"UseDicomTls": True},
        overrides={"DicomTlsEnabled": True, "DicomTlsCertificate": str(pki.peer.certificate),
                   "DicomTlsPrivateKey": str(pki.peer.private_key),
                   "DicomTlsTrustedCertificates": str(pki.ca)})
    node.start()  # waits for /readyz over HTTPS, checking the certificate against the test authority

    # the API does not answer plain HTTP, and the plain DICOM port is closed
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{node.http_port}/readyz", timeout=5.0)
    assert not port_open("127.0.0.1", node.dicom_port)

    # `dicom-service echo` reaches Orthanc over TLS; Orthanc's echo reaches the node over TLS
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_SERVICE_")}
    echo = subprocess.run([sys.executable, "-m", "dicom_service", "echo", "--config", str(node.config_path)],
                          capture_output=True, text=True, timeout=120, env=env, check=False)
    assert echo.returncode == 0 and "orthanc: ok (C-ECHO, TLS)" in echo.stdout, echo.stdout + echo.stderr
    response = orthanc.client.post("/modalities/dental-ai/echo", json={})
    assert response.status_code == 200, response.text

    # Orthanc's DICOM port speaks TLS only, so the study arrives over its REST API
    study = new_uid()
    image, _ = builders.make_periapical_phantom_with_truth(implants=1, seed=10_001, study_uid=study,
                                                           series_uid=new_uid())
    path = builders.save(image, tmp_path / "in" / "implant.dcm")
    assert orthanc.client.post("/instances", content=path.read_bytes()).status_code == 200

    def results() -> dict[str, list[str]] | None:
        found = result_instances(orthanc, study)
        return found if len(found.get("sr", [])) >= 1 else None

    def alive() -> None:
        orthanc.check_alive()
        node.check_alive()

    found = wait_until(results, 180.0, interval=0.5, alive=alive, what="results in Orthanc over TLS")
    instance = found["sr"][0]
    assert orthanc.instance_metadata(instance).get("RemoteAET") == NODE_AET
    log = orthanc.log_path.read_text(errors="replace")
    assert "using DICOM TLS" in log  # Orthanc's own account of its association to the node
    wait_until(lambda: [j["state"] for j in node.jobs(kind="dispatch")] == ["succeeded"], 60.0, interval=0.2,
               alive=alive, what="the node's dispatch job to succeed")
