"""DICOM TLS: settings, certificate files, the node's TLS listener and TLS to destinations.

Real associations on localhost with certificates made by ``openssl`` (``tests.tlscerts``):
pynetdicom and DCMTK's storescu as peers, our SCU against our own listener.
"""

from __future__ import annotations

import logging
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from dicom_service.config import Destination, DicomSettings
from dicom_service.domain import ConfigError, DispatchError
from dicom_service.node.scp import DicomNode, StoredEvent
from dicom_service.node.scu import echo, send_files
from dicom_service.storage import InstanceStore
from dicom_service.tls import ClientTls, NodeTls, ServerTls, check_tls_files, client_context, server_context
from tests import builders
from tests.dicomcheck import require_tool
from tests.dicomnet import echo_ok, store
from tests.integration.tools import dcmtk_env, wait_until
from tests.tlscerts import KeyPair, Pki


def _client(pki: Pki, pair: KeyPair | None, trust: Path | None = None) -> tuple[ssl.SSLContext, str]:
    """pynetdicom's ``tls_args`` for a peer presenting ``pair`` (none: no client certificate)."""
    context = ssl.create_default_context(cafile=str(trust or pki.ca))
    if pair is not None:
        context.load_cert_chain(pair.certificate, pair.private_key)
    return context, "localhost"


def _node_tls(pki: Pki, **changes: object) -> NodeTls:
    values: dict = {"port": 0, "certificate": pki.node.certificate, "private_key": pki.node.private_key,
                    "ca_certificates": pki.ca, "require_client_certificate": True}
    return NodeTls(**{**values, **changes})


@pytest.fixture
def tls_node(tmp_path: Path, pki: Pki) -> Iterator[tuple[DicomNode, list[StoredEvent]]]:
    events: list[StoredEvent] = []
    store_ = InstanceStore(tmp_path / "var")
    settings = DicomSettings(port=0, bind_address="127.0.0.1", acse_timeout=4.0, tls=_node_tls(pki),
                             accepted_calling_aets=["TESTSCU", "STORESCU", "DENTAL_AI"])
    node = DicomNode(settings, store_, events.append)
    node.start()
    yield node, events
    node.stop()
    store_.close()


# --------------------------------------------------------------------------- settings and files
def test_settings_refuse_incoherent_tls(pki: Pki) -> None:
    with pytest.raises(ValidationError, match="dicom.tls is not set"):
        DicomSettings(plain=False)
    with pytest.raises(ValidationError, match="port of its own"):
        DicomSettings(port=11112, tls=_node_tls(pki, port=11112))
    with pytest.raises(ValidationError, match="needs ca_certificates"):
        ServerTls(certificate=pki.node.certificate, private_key=pki.node.private_key,
                  require_client_certificate=True)
    with pytest.raises(ValidationError, match="go together"):
        ClientTls(certificate=pki.peer.certificate)
    assert DicomSettings(plain=False, tls=_node_tls(pki)).tls is not None


def test_certificate_problems_are_named_at_the_start(tmp_path: Path, pki: Pki, make_settings) -> None:
    missing = tmp_path / "gone.pem"
    with pytest.raises(ConfigError, match=r"dicom\.tls\.certificate: no such file"):
        server_context(_node_tls(pki, certificate=missing), "dicom.tls")
    with pytest.raises(ConfigError, match=r"http\.tls: cannot use .*node\.pem with .*peer\.key"):
        server_context(ServerTls(certificate=pki.node.certificate, private_key=pki.peer.private_key), "http.tls")
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"destinations\[pacs\]\.tls\.ca_certificates: .*no usable PEM"):
        client_context(ClientTls(ca_certificates=not_pem), "destinations[pacs].tls")
    # the service refuses to start (Service() runs this check before anything loads)
    bad = make_settings(destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104,
                                       "tls": {"ca_certificates": str(missing)}}])
    with pytest.raises(ConfigError, match=r"destinations\[pacs\]\.tls\.ca_certificates: no such file"):
        check_tls_files(bad.dicom.tls, bad.http.tls, ((d.name, d.tls) for d in bad.destinations))


def test_encrypted_key_needs_its_password_and_never_prompts(tmp_path: Path, pki: Pki) -> None:
    locked = tmp_path / "locked.key"
    subprocess.run([require_tool("openssl", "openssl"), "pkey", "-in", str(pki.node.private_key), "-aes256",
                    "-passout", "pass:s3cret", "-out", str(locked)], check=True, capture_output=True,
                   stdin=subprocess.DEVNULL)
    with pytest.raises(ConfigError, match="private_key_password"):
        server_context(ServerTls(certificate=pki.node.certificate, private_key=locked), "dicom.tls")
    with pytest.raises(ConfigError, match="right private_key_password"):
        server_context(ServerTls(certificate=pki.node.certificate, private_key=locked,
                                 private_key_password="wrong"), "dicom.tls")
    context = server_context(ServerTls(certificate=pki.node.certificate, private_key=locked,
                                       private_key_password="s3cret"), "dicom.tls")
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


# --------------------------------------------------------------------------- the TLS listener
def test_mutual_tls_echo_and_store(tls_node, pki: Pki) -> None:
    node, events = tls_node
    assert node.tls_port != node.port
    assert echo_ok(node.tls_port, tls=_client(pki, pki.peer))
    ds = builders.make_intraoral_radiograph()
    assert store(node.tls_port, ds, tls=_client(pki, pki.peer)) == 0x0000
    assert node.store.instance(str(ds.SOPInstanceUID)) is not None and events[-1].new
    assert echo_ok(node.port)  # the plain listener serves beside it


def test_untrusted_or_missing_client_certificates_are_refused(tls_node, pki: Pki, caplog) -> None:
    node, _ = tls_node
    with caplog.at_level(logging.WARNING, logger="dicom_service.node.transport"):
        assert not echo_ok(node.tls_port, tls=_client(pki, None))
        assert not echo_ok(node.tls_port, tls=_client(pki, pki.rogue))
        assert not echo_ok(node.tls_port)  # plain DICOM on the TLS port
    failures = [r.getMessage() for r in caplog.records if "TLS handshake with" in r.getMessage()]
    assert len(failures) >= 2
    # a refused certificate says why (OpenSSL's verify message)
    assert any("CERTIFICATE_VERIFY_FAILED (unable to get local issuer certificate)" in m for m in failures), failures
    assert echo_ok(node.tls_port, tls=_client(pki, pki.peer))  # still serving


def test_peer_that_does_not_trust_the_node_is_not_served(tls_node, pki: Pki) -> None:
    node, _ = tls_node
    assert not echo_ok(node.tls_port, tls=_client(pki, pki.peer, trust=pki.rogue_ca))


def test_silent_connection_neither_blocks_others_nor_stays_open(tls_node, pki: Pki) -> None:
    """pynetdicom alone handshakes in its accepting thread without a time limit: one
    silent TCP peer would stop the listener. Ours handshakes in the association's
    thread under the ACSE timeout (4 s here) and then closes the silent connection."""
    node, _ = tls_node
    silent = socket.create_connection(("127.0.0.1", node.tls_port), timeout=10)
    try:
        started = time.monotonic()
        assert echo_ok(node.tls_port, tls=_client(pki, pki.peer))
        assert time.monotonic() - started < 3.0  # not behind the silent peer's 4 s
        silent.settimeout(10)
        assert silent.recv(1) == b""  # closed by the node after the handshake timeout
    finally:
        silent.close()


def test_storescu_over_tls(tls_node, pki: Pki, tmp_path: Path) -> None:
    node, _ = tls_node
    ds = builders.make_intraoral_radiograph()
    path = tmp_path / "io.dcm"
    ds.save_as(path, enforce_file_format=True)
    exe = require_tool("storescu", "dcmtk")
    proc = subprocess.run(
        [exe, "-aet", "STORESCU", "-aec", "DENTAL_AI", "+tls", str(pki.peer.private_key),
         str(pki.peer.certificate), "-pw", "+cf", str(pki.ca), "127.0.0.1", str(node.tls_port), str(path)],
        env=dcmtk_env(), capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert node.store.instance(str(ds.SOPInstanceUID)) is not None


def test_tls_only_node_has_no_plain_listener(tmp_path: Path, pki: Pki) -> None:
    store_ = InstanceStore(tmp_path / "var")
    node = DicomNode(DicomSettings(port=0, bind_address="127.0.0.1", plain=False, tls=_node_tls(pki)),
                     store_, lambda _e: None)
    node.start()
    try:
        with pytest.raises(RuntimeError, match="no plain listener"):
            _ = node.port
        assert echo_ok(node.tls_port, tls=_client(pki, pki.peer))
    finally:
        node.stop()
        store_.close()
    assert not node.listening


# --------------------------------------------------------------------------- TLS to destinations
def _destination(port: int, **tls: object) -> Destination:
    return Destination(name="pacs", ae_title="DENTAL_AI", host="127.0.0.1", port=port, tls=ClientTls(**tls))


def test_results_are_sent_over_mutual_tls(tls_node, pki: Pki, tmp_path: Path) -> None:
    node, _ = tls_node
    ds = builders.make_intraoral_radiograph()
    path = tmp_path / "result.dcm"
    ds.save_as(path, enforce_file_format=True)
    destination = _destination(node.tls_port, ca_certificates=pki.ca, certificate=pki.node.certificate,
                               private_key=pki.node.private_key)
    assert echo(destination, "DENTAL_AI")
    send_files(destination, [path], "DENTAL_AI")
    assert node.store.instance(str(ds.SOPInstanceUID)) is not None


def test_destination_certificate_is_checked(tls_node, pki: Pki, tmp_path: Path) -> None:
    node, _ = tls_node
    ds = builders.make_intraoral_radiograph()
    path = tmp_path / "result.dcm"
    ds.save_as(path, enforce_file_format=True)
    ours = {"certificate": pki.node.certificate, "private_key": pki.node.private_key}
    with pytest.raises(DispatchError, match="over TLS.*failed"):  # signed by an authority we do not trust
        send_files(_destination(node.tls_port, ca_certificates=pki.rogue_ca, **ours), [path], "DENTAL_AI")
    with pytest.raises(DispatchError, match="over TLS"):  # the certificate is not for that name
        send_files(_destination(node.tls_port, ca_certificates=pki.ca, server_name="pacs.example", **ours),
                   [path], "DENTAL_AI")
    assert node.store.instance(str(ds.SOPInstanceUID)) is None
    send_files(_destination(node.tls_port, ca_certificates=pki.ca, server_name="pacs.example",
                            check_hostname=False, **ours), [path], "DENTAL_AI")
    assert node.store.instance(str(ds.SOPInstanceUID)) is not None
    with pytest.raises(DispatchError, match="over TLS.*failed"):  # no client certificate: the node refuses
        send_files(_destination(node.tls_port, ca_certificates=pki.ca), [path], "DENTAL_AI")


def test_stop_does_not_wait_for_pending_handshakes(tmp_path: Path, pki: Pki) -> None:
    """A stop used to wait, in pynetdicom's server shutdown, for every handler thread: a
    silent TLS peer held it for the whole ACSE timeout (30 s here)."""
    store_ = InstanceStore(tmp_path / "var")
    node = DicomNode(DicomSettings(port=0, bind_address="127.0.0.1", acse_timeout=30.0, tls=_node_tls(pki)),
                     store_, lambda _e: None)
    node.start()
    silent = [socket.create_connection(("127.0.0.1", node.tls_port), timeout=10) for _ in range(3)]
    try:
        assert echo_ok(node.tls_port, tls=_client(pki, pki.peer))  # the handshakes are pending behind it
        started = time.monotonic()
        node.stop()
        assert time.monotonic() - started < 10.0
    finally:
        for sock in silent:
            sock.close()
        store_.close()


def test_expiring_certificates_are_announced(pki: Pki, caplog) -> None:
    from dicom_service.tls import warn_if_expiring

    with caplog.at_level(logging.WARNING, logger="dicom_service.tls"):
        soon = warn_if_expiring(pki.node.certificate, "dicom.tls.certificate")  # valid two days
        late = warn_if_expiring(pki.node.certificate, "http.tls.certificate", now=time.time() + 3 * 86_400)
        early = warn_if_expiring(pki.node.certificate, "http.tls.certificate", now=time.time() - 86_400)
    assert soon is not None and "expires on" in soon and "renew it" in soon
    assert late is not None and "EXPIRED" in late
    assert early is not None and "not valid before" in early
    assert [r.getMessage() for r in caplog.records] == [soon, late, early]


def test_tls_probes_that_close_after_the_handshake_free_their_slots(tmp_path: Path, pki: Pki) -> None:
    """A TLS health check handshakes and closes: its association slot is free at once,
    not after the ACSE timeout (60 s here), so a burst of probes turns no peer away."""
    store_ = InstanceStore(tmp_path / "var")
    settings = DicomSettings(port=0, bind_address="127.0.0.1", acse_timeout=60.0, max_associations=3,
                             tls=_node_tls(pki), accepted_calling_aets=["TESTSCU"])
    node = DicomNode(settings, store_, lambda _event: None)
    node.start()
    try:
        context, server_name = _client(pki, pki.peer)
        for _ in range(12):
            with socket.create_connection(("127.0.0.1", node.tls_port), timeout=10) as raw, \
                    context.wrap_socket(raw, server_hostname=server_name):
                pass  # handshake done, then closed
        wait_until(lambda: echo_ok(node.tls_port, tls=_client(pki, pki.peer)), 5.0,
                   what="an association after the probes")
        wait_until(lambda: not node.ae.active_associations, 5.0, what="the probes' associations to end")
    finally:
        node.stop()
        store_.close()
