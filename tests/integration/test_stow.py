"""Results by DICOMweb STOW-RS to a real Orthanc with its DICOMweb plugin (Debian package
orthanc-dicomweb): basic authentication, HTTPS with certificate checks, refused
credentials, a part the server cannot store, a server that is down, and the running
service delivering a processed study that way."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest

from dicom_service.config import DicomWebDestination
from dicom_service.domain import DispatchError
from dicom_service.node import stow
from dicom_service.node.destinations import send_results, verify
from dicom_service.tls import ClientTls
from dicom_service.uids import new_uid
from tests import builders
from tests.dicomcheck import require_tool
from tests.integration.node import NodeProcess
from tests.integration.orthanc import NODE_AET, OrthancServer, dicomweb_overrides, result_instances
from tests.integration.tools import free_port, port_open, stop_process, storescu, wait_until
from tests.tlscerts import Pki

pytestmark = [pytest.mark.integration]


def _files(tmp_path: Path) -> list[Path]:
    study = new_uid()
    image = builders.make_intraoral_radiograph(study_uid=study)
    video = builders.make_video_photographic(frames=6, rows=96, cols=128, study_uid=study)
    return [builders.save(image, tmp_path / "image.dcm"), builders.save(video, tmp_path / "video.dcm")]


def _destination(orthanc: OrthancServer, **changes: object) -> DicomWebDestination:
    values: dict = {"name": "web", "url": f"{orthanc.url}/dicom-web", "username": orthanc.username,
                    "password": orthanc.password}
    return DicomWebDestination(**{**values, **changes})


def _stored(orthanc: OrthancServer, path: Path) -> pydicom.Dataset | None:
    uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    found = orthanc.client.post("/tools/lookup", content=uid).json()
    if not found:
        return None
    return pydicom.dcmread(io.BytesIO(orthanc.instance_file(found[0]["ID"])))


def test_stow_stores_every_file_as_sent(orthanc_factory: Callable[..., OrthancServer], tmp_path: Path) -> None:
    orthanc = orthanc_factory(node_port=free_port(), overrides=dicomweb_overrides())
    files = _files(tmp_path)
    destination = _destination(orthanc)
    assert verify(destination, "DENTAL_AI")
    send_results(destination, files, "DENTAL_AI")
    for path in files:
        back = _stored(orthanc, path)
        sent = pydicom.dcmread(path)
        assert back is not None and back.SOPInstanceUID == sent.SOPInstanceUID
        assert back.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID  # the video stays H.264
        assert back.PixelData == sent.PixelData
    send_results(destination, files, "DENTAL_AI")  # sent again (a retried job): still fine


def test_stow_failures_are_dispatch_errors(orthanc_factory: Callable[..., OrthancServer], tmp_path: Path) -> None:
    orthanc = orthanc_factory(node_port=free_port(), overrides=dicomweb_overrides())
    files = _files(tmp_path)
    refused = _destination(orthanc, password="not-the-password")
    assert not verify(refused, "DENTAL_AI")
    with pytest.raises(DispatchError, match="HTTP 401, the credentials were refused"):
        send_results(refused, files, "DENTAL_AI")
    assert _stored(orthanc, files[0]) is None

    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"\0" * 128 + b"DICM" + b"not a data set" * 10)
    with pytest.raises(DispatchError, match=r"HTTP 400 .*\(1 of 2 instances confirmed stored"):
        send_results(_destination(orthanc), [files[0], broken], "DENTAL_AI")

    closed = DicomWebDestination(name="down", url=f"http://127.0.0.1:{free_port()}/dicom-web", timeout=5)
    assert not verify(closed, "DENTAL_AI")
    with pytest.raises(DispatchError, match=r"STOW-RS to down \(http://127\.0\.0\.1:\d+/dicom-web\) failed: "
                                            "ConnectError"):
        send_results(closed, files, "DENTAL_AI")


@pytest.fixture
def https_front(tmp_path: Path, pki: Pki) -> Iterator[Callable[[int], int]]:
    """stunnel (Debian package stunnel4) terminating HTTPS in front of a local HTTP port, with
    the test authority's ``peer`` certificate (Debian's Orthanc 1.10 crashes serving HTTPS
    itself). Call it with the HTTP port; it returns the HTTPS port."""
    exe = require_tool("stunnel", "stunnel4")
    procs: list[subprocess.Popen[bytes]] = []

    def start(http_port: int) -> int:
        combined = tmp_path / "stunnel.pem"
        combined.write_bytes(pki.peer.certificate.read_bytes() + pki.peer.private_key.read_bytes())
        port = free_port()
        config = tmp_path / "stunnel.conf"
        # also on 127.0.0.2 (loopback, not in the certificate) for a name mismatch
        config.write_text(f"foreground = yes\npid =\n[https]\naccept = 127.0.0.1:{port}\naccept = 127.0.0.2:{port}\n"
                          f"connect = 127.0.0.1:{http_port}\ncert = {combined}\n", encoding="ascii")
        with open(tmp_path / "stunnel.log", "ab") as log:
            proc = subprocess.Popen([exe, str(config)], stdout=log, stderr=subprocess.STDOUT)
        procs.append(proc)
        wait_until(lambda: port_open("127.0.0.1", port), 30.0, what=f"stunnel on {port}")
        return port

    yield start
    for proc in procs:
        stop_process(proc, 10.0)


def test_stow_over_https_checks_the_certificate(orthanc_factory: Callable[..., OrthancServer], pki: Pki,
                                                https_front: Callable[[int], int], tmp_path: Path) -> None:
    orthanc = orthanc_factory(node_port=free_port(), overrides=dicomweb_overrides())
    url = f"https://localhost:{https_front(orthanc.http_port)}/dicom-web"
    files = _files(tmp_path)
    trusted = _destination(orthanc, url=url, tls=ClientTls(ca_certificates=pki.ca))
    assert stow.reachable(trusted)
    send_results(trusted, files[:1], "DENTAL_AI")
    assert _stored(orthanc, files[0]) is not None
    with pytest.raises(DispatchError, match="ConnectError.*CERTIFICATE_VERIFY_FAILED"):
        send_results(_destination(orthanc, url=url, tls=ClientTls(ca_certificates=pki.rogue_ca)), files[1:],
                     "DENTAL_AI")
    with pytest.raises(DispatchError, match="CERTIFICATE_VERIFY_FAILED"):  # the system's trust store
        send_results(_destination(orthanc, url=url), files[1:], "DENTAL_AI")
    with pytest.raises(DispatchError, match="ConnectError.*(IP address mismatch|Hostname mismatch)"):
        send_results(_destination(orthanc, url=url.replace("localhost", "127.0.0.2"),
                                  tls=ClientTls(ca_certificates=pki.ca)), files[1:], "DENTAL_AI")
    assert _stored(orthanc, files[1]) is None
    # reached by an address its certificate does not name, checked against the name it has
    send_results(_destination(orthanc, url=url.replace("localhost", "127.0.0.2"),
                              tls=ClientTls(ca_certificates=pki.ca, server_name="localhost")), files[1:], "DENTAL_AI")
    assert _stored(orthanc, files[1]) is not None


@pytest.mark.slow
def test_service_delivers_results_by_stow(orthanc_factory: Callable[..., OrthancServer],
                                          node_factory: Callable[..., NodeProcess], tmp_path: Path) -> None:
    """storescu → node → (processing) → STOW-RS → Orthanc, with `dicom-service echo` on the way."""
    node = node_factory(destination_port=None, stability_seconds=0.5)
    orthanc = orthanc_factory(node_port=node.dicom_port, overrides=dicomweb_overrides())
    node.settings = {"destinations": [{"name": "web", "url": f"{orthanc.url}/dicom-web",
                                       "username": orthanc.username, "password": orthanc.password}]}
    node.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_SERVICE_")}
    echo = subprocess.run([sys.executable, "-m", "dicom_service", "echo", "--config", str(node.config_path)],
                          capture_output=True, text=True, timeout=120, env=env, check=False)
    assert echo.returncode == 0 and "web: ok (QIDO-RS)" in echo.stdout, echo.stdout + echo.stderr
    study = new_uid()
    image, _ = builders.make_periapical_phantom_with_truth(implants=1, seed=10_001, study_uid=study,
                                                           series_uid=new_uid())
    storescu([builders.save(image, tmp_path / "in" / "implant.dcm")], node.dicom_port, called_aet=NODE_AET)

    def alive() -> None:
        orthanc.check_alive()
        node.check_alive()

    def reports() -> list[str]:
        return result_instances(orthanc, study).get("sr", [])

    wait_until(reports, 180.0, interval=0.5, alive=alive, what="results in Orthanc by STOW-RS")
    wait_until(lambda: [j["state"] for j in node.jobs(kind="dispatch")] == ["succeeded"], 60.0, interval=0.2,
               alive=alive, what="the node's dispatch job to succeed")
    assert orthanc.password not in node.log_path.read_text(errors="replace")
