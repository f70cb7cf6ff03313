"""Revocation lists and renewed listener certificates, on real TLS connections.

Certificates and the authority's revocation list are made by ``openssl``
(``tests.tlscerts``). The listener's files are copied to a test folder and replaced there
as a site's renewal would replace them; every wait polls with a deadline.
"""

from __future__ import annotations

import logging
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from pydantic import ValidationError

from dicom_service.cli import _uvicorn_tls
from dicom_service.config import Destination, DicomSettings
from dicom_service.domain import ConfigError, DispatchError
from dicom_service.node.scp import DicomNode
from dicom_service.node.scu import echo, send_files
from dicom_service.storage import InstanceStore
from dicom_service.tls import ClientTls, NodeTls, ServerTls, check_tls_files, client_context, server_context
from dicom_service.tls_reload import ReloadingServerContext, check_crl_current, crl_updates
from tests import builders
from tests.dicomnet import associate, echo_ok
from tests.integration.tools import wait_until
from tests.tlscerts import KeyPair, Pki

RELOAD_LOGGER = "dicom_service.tls_reload"


def _client(pki: Pki, pair: KeyPair | None) -> tuple[ssl.SSLContext, str]:
    """pynetdicom's ``tls_args`` for a peer presenting ``pair`` (none: no client certificate)."""
    context = ssl.create_default_context(cafile=str(pki.ca))
    if pair is not None:
        context.load_cert_chain(pair.certificate, pair.private_key)
    return context, "localhost"


def _served(port: int, pki: Pki) -> dict:
    """The certificate the node's TLS listener on ``port`` presents now (as ``getpeercert``)
    to an association from a peer presenting ``pki.peer``. (A whole association, released:
    a bare TLS connection would hold one of the node's association slots until the ACSE
    timeout.)"""
    assoc = associate(port, [], tls=_client(pki, pki.peer))
    assert assoc.is_established
    try:
        return assoc.dul.socket.socket.getpeercert()
    finally:
        assoc.release()


def _served_https(port: int, pki: Pki, name: str = "localhost") -> dict:
    """As :func:`_served`, for an HTTPS listener (a bare TLS connection); with the name
    ``"127.0.0.1"`` the client sends no server name (SNI), as for an address."""
    context, _ = _client(pki, pki.peer)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=name) as tls:
        return tls.getpeercert()


def _serial(pair: KeyPair) -> str:
    return ssl._ssl._test_decode_cert(str(pair.certificate))["serialNumber"]  # noqa: SLF001


def _replace(source: Path, target: Path, *, in_place: bool) -> None:
    """Replace ``target`` with ``source``'s bytes: rewritten in place, or renamed over it."""
    if in_place:
        target.write_bytes(source.read_bytes())
    else:
        staged = target.with_suffix(".new")
        shutil.copyfile(source, staged)
        staged.replace(target)


@dataclass
class Listener:
    node: DicomNode
    files: KeyPair  # the files dicom.tls names, which a test replaces
    crl: Path  # the revocation list dicom.tls names (a copy of the authority's)


@pytest.fixture
def listener(tmp_path: Path, pki: Pki) -> Iterator[Listener]:
    """A node whose TLS listener (mutual TLS, the authority's CRL) reads copies of the
    node's certificate and key."""
    files = KeyPair(tmp_path / "site" / "node.pem", tmp_path / "site" / "node.key")
    files.certificate.parent.mkdir()
    shutil.copyfile(pki.node.certificate, files.certificate)
    shutil.copyfile(pki.node.private_key, files.private_key)
    crl = shutil.copyfile(pki.crl, tmp_path / "site" / "ca-crl.pem")
    store_ = InstanceStore(tmp_path / "var")
    tls = NodeTls(port=0, certificate=files.certificate, private_key=files.private_key, ca_certificates=pki.ca,
                  require_client_certificate=True, crl=crl)
    node = DicomNode(DicomSettings(port=0, bind_address="127.0.0.1", acse_timeout=4.0, tls=tls,
                                   accepted_calling_aets=["TESTSCU", "DENTAL_AI"]), store_, lambda _e: None)
    node.start()
    yield Listener(node, files, crl)
    node.stop()
    store_.close()


# --------------------------------------------------------------------------- revocation lists
def test_crl_problems_are_named_at_the_start(tmp_path: Path, pki: Pki) -> None:
    missing = tmp_path / "gone.crl"
    node = {"port": 0, "certificate": pki.node.certificate, "private_key": pki.node.private_key,
            "ca_certificates": pki.ca}
    with pytest.raises(ConfigError, match=r"^dicom\.tls\.crl: no such file: .*gone\.crl$"):
        server_context(NodeTls(**node, crl=missing), "dicom.tls")
    mixed = tmp_path / "mixed.pem"
    mixed.write_bytes(pki.crl.read_bytes() + pki.rogue_ca.read_bytes())
    with pytest.raises(ConfigError, match=r"dicom\.tls\.crl: .*also holds a certificate"):
        server_context(NodeTls(**node, crl=mixed), "dicom.tls")  # it would have become a trusted authority
    not_pem = tmp_path / "not.crl"
    not_pem.write_text("not a revocation list\n")
    with pytest.raises(ConfigError, match=r"destinations\[pacs\]\.tls\.crl: .*holds no PEM revocation list"):
        client_context(ClientTls(ca_certificates=pki.ca, crl=not_pem), "destinations[pacs].tls")
    broken = tmp_path / "broken.crl"
    broken.write_text("-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n")
    with pytest.raises(ConfigError, match=r"destinations\[pacs\]\.tls\.crl: .*no usable PEM revocation list"):
        client_context(ClientTls(ca_certificates=pki.ca, crl=broken), "destinations[pacs].tls")
    with pytest.raises(ValidationError, match="crl needs ca_certificates"):
        ServerTls(certificate=pki.node.certificate, private_key=pki.node.private_key, crl=pki.crl)
    with pytest.raises(ConfigError, match=r"destinations\[pacs\]\.tls\.crl: no such file"):
        check_tls_files(None, None, [("pacs", ClientTls(ca_certificates=pki.ca, crl=missing))])
    assert server_context(NodeTls(**node, crl=pki.crl), "dicom.tls").verify_flags & ssl.VERIFY_CRL_CHECK_LEAF


def test_missing_crl_stops_the_service_with_exit_2(tmp_path: Path, pki: Pki) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"dicom:\n  tls:\n    certificate: {pki.node.certificate}\n"
                      f"    private_key: {pki.node.private_key}\n    ca_certificates: {pki.ca}\n"
                      f"    crl: {tmp_path / 'gone.crl'}\nstorage:\n  path: {tmp_path / 'var'}\n")
    proc = subprocess.run([sys.executable, "-m", "dicom_service", "serve", "--config", str(config)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr
    assert f"dicom.tls.crl: no such file: {tmp_path / 'gone.crl'}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_revoked_client_certificate_is_refused(listener: Listener, pki: Pki, caplog) -> None:
    port = listener.node.tls_port
    with caplog.at_level(logging.WARNING, logger="dicom_service.node.transport"):
        assert not echo_ok(port, tls=_client(pki, pki.revoked))
    assert any("certificate revoked" in r.getMessage() for r in caplog.records), caplog.text
    assert echo_ok(port, tls=_client(pki, pki.peer))  # a good one from the same authority


def test_destination_with_revoked_certificate_is_refused(tmp_path: Path, pki: Pki) -> None:
    """Our listener stands in for a PACS presenting a certificate the site has revoked."""
    ds = builders.make_intraoral_radiograph()
    path = tmp_path / "result.dcm"
    ds.save_as(path, enforce_file_format=True)
    store_ = InstanceStore(tmp_path / "var")
    tls = NodeTls(port=0, certificate=pki.revoked.certificate, private_key=pki.revoked.private_key)
    pacs = DicomNode(DicomSettings(port=0, bind_address="127.0.0.1", acse_timeout=4.0, tls=tls),
                     store_, lambda _e: None)
    pacs.start()
    try:
        def destination(**changes: object) -> Destination:
            return Destination(name="pacs", ae_title="DENTAL_AI", host="127.0.0.1", port=pacs.tls_port,
                               tls=ClientTls(ca_certificates=pki.ca, **changes))

        assert echo(destination(), "DENTAL_AI")  # trusted authority, right name: only the CRL refuses it
        assert not echo(destination(crl=pki.crl), "DENTAL_AI")
        with pytest.raises(DispatchError, match="over TLS.*failed"):
            send_files(destination(crl=pki.crl), [path], "DENTAL_AI")
        assert pacs.store.instance(str(ds.SOPInstanceUID)) is None
    finally:
        pacs.stop()
        store_.close()


def test_destination_with_a_good_certificate_passes_the_crl(listener: Listener, pki: Pki) -> None:
    destination = Destination(name="pacs", ae_title="DENTAL_AI", host="127.0.0.1", port=listener.node.tls_port,
                              tls=ClientTls(ca_certificates=pki.ca, crl=pki.crl, certificate=pki.peer.certificate,
                                            private_key=pki.peer.private_key))
    assert echo(destination, "DENTAL_AI")


# --------------------------------------------------------------------------- renewed listener files
def test_renewed_certificate_serves_the_next_association(listener: Listener, pki: Pki, caplog) -> None:
    port = listener.node.tls_port
    assert _served(port, pki)["serialNumber"] == _serial(pki.node)
    open_before = associate(port, [], tls=_client(pki, pki.peer))
    assert open_before.is_established
    try:
        with caplog.at_level(logging.INFO, logger=RELOAD_LOGGER):
            _replace(pki.renewed.private_key, listener.files.private_key, in_place=False)  # renamed over
            _replace(pki.renewed.certificate, listener.files.certificate, in_place=True)  # rewritten
            served = wait_until(lambda: (c := _served(port, pki))["serialNumber"] == _serial(pki.renewed) and c,
                                10.0, interval=0.05, what="the renewed certificate to be served")
        assert ((("commonName", "renewed"),),) == served["subject"]
        assert "dicom.tls: renewed files in use for new connections (subject commonName=renewed" in caplog.text
        assert echo_ok(port, tls=_client(pki, pki.peer))  # a whole association with the new certificate
        assert open_before.send_c_echo().Status == 0  # the association opened before is unaffected
    finally:
        open_before.release()
    assert _served(port, pki)["serialNumber"] == _serial(pki.renewed)


def test_half_replaced_set_keeps_the_previous_certificate(listener: Listener, pki: Pki, caplog) -> None:
    port = listener.node.tls_port
    with caplog.at_level(logging.WARNING, logger=RELOAD_LOGGER):
        _replace(pki.renewed.certificate, listener.files.certificate, in_place=True)  # the key not yet

        def warned() -> bool:
            assert _served(port, pki)["serialNumber"] == _serial(pki.node)  # still serving, the old one
            return any(r.name == RELOAD_LOGGER for r in caplog.records)

        wait_until(warned, 10.0, interval=0.05, what="the warning about the half-replaced files")
        for _ in range(5):  # more connections, more looks at the unchanged half set: no more lines
            assert echo_ok(port, tls=_client(pki, pki.peer))
    warnings = [r for r in caplog.records if r.name == RELOAD_LOGGER]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    message = warnings[0].getMessage()
    assert message.startswith("dicom.tls: changed files not used yet, the previous certificate serves new "
                              "connections until the new set loads as a whole: dicom.tls: cannot use")

    _replace(pki.renewed.private_key, listener.files.private_key, in_place=True)  # the set is whole again
    wait_until(lambda: _served(port, pki)["serialNumber"] == _serial(pki.renewed), 10.0, interval=0.05,
               what="the renewed certificate once its key arrived")


def _stale_crl(pki: Pki, out: Path) -> Path:
    """The authority's revocation list as an old copy would be: past its next update (2020)."""
    subprocess.run(["openssl", "ca", "-config", str(pki.crl.parent / "ca-db" / "ca.cnf"), "-gencrl", "-batch",
                    "-crl_lastupdate", "200101000000Z", "-crl_nextupdate", "200102000000Z", "-out", str(out)],
                   check=True, capture_output=True, timeout=60)
    return out


def test_a_crl_past_its_next_update_keeps_the_current_one(listener: Listener, pki: Pki, tmp_path: Path,
                                                          caplog) -> None:
    """An old copy of the list loads, but with it OpenSSL refuses every peer ("CRL has
    expired"): the list in use stays until a current one comes."""
    port = listener.node.tls_port
    with caplog.at_level(logging.WARNING, logger=RELOAD_LOGGER):
        _replace(_stale_crl(pki, tmp_path / "stale.crl"), listener.crl, in_place=False)

        def warned() -> bool:
            assert echo_ok(port, tls=_client(pki, pki.peer))  # still served, with the current list
            return any(r.name == RELOAD_LOGGER for r in caplog.records)

        wait_until(warned, 10.0, interval=0.05, what="the warning about the stale revocation list")
    message = next(r.getMessage() for r in caplog.records if r.name == RELOAD_LOGGER)
    assert "dicom.tls.crl: " in message and "past its next update (2020-01-02 00:00:00 UTC)" in message
    assert not echo_ok(port, tls=_client(pki, pki.revoked))  # the current list still revokes
    with caplog.at_level(logging.INFO, logger=RELOAD_LOGGER):
        _replace(pki.crl, listener.crl, in_place=True)  # a current list again: adopted
        wait_until(lambda: echo_ok(port, tls=_client(pki, pki.peer)) and "renewed files in use" in caplog.text,
                   10.0, interval=0.05, what="the current list to be adopted")
    assert len([r for r in caplog.records if r.levelno == logging.WARNING and r.name == RELOAD_LOGGER]) == 1


def test_crl_dates_are_read_per_authority(pki: Pki, tmp_path: Path) -> None:
    [(issuer, this_update, next_update)] = crl_updates(pki.crl)
    assert next_update is not None and next_update - this_update == 2 * 86_400  # default_crl_days = 2
    check_crl_current(pki.crl, "http.tls.crl", now=this_update + 1)
    with pytest.raises(ConfigError, match=r"^http\.tls\.crl: .* not valid before "):
        check_crl_current(pki.crl, "http.tls.crl", now=this_update - 60)  # a clock behind the authority's
    with pytest.raises(ConfigError, match=r"past its next update"):
        check_crl_current(pki.crl, "http.tls.crl", now=next_update + 1)
    both = tmp_path / "both.crl"  # an old list beside the current one of the same authority: OpenSSL takes the latter
    both.write_bytes(_stale_crl(pki, tmp_path / "stale.crl").read_bytes() + pki.crl.read_bytes()
                     + b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n")  # and one not decoded here
    check_crl_current(both, "http.tls.crl", now=this_update + 1)
    assert [i for i, _, _ in crl_updates(both)] == [issuer, issuer]


def test_renewed_crl_is_picked_up_with_the_files(tmp_path: Path, pki: Pki) -> None:
    """A CRL replaced in place (the authority revoked one more certificate) is reloaded."""
    empty_crl = tmp_path / "crl.pem"
    empty_crl.write_text("-----BEGIN X509 CRL-----\n", encoding="ascii")  # not a whole CRL yet: refused at start
    tls = ServerTls(certificate=pki.node.certificate, private_key=pki.node.private_key, ca_certificates=pki.ca,
                    require_client_certificate=True, crl=empty_crl)
    with pytest.raises(ConfigError, match=r"http\.tls\.crl"):
        ReloadingServerContext(tls, "http.tls")
    shutil.copyfile(pki.crl, empty_crl)
    contexts = ReloadingServerContext(tls, "http.tls", check_seconds=0.0)
    first = contexts.current()
    assert contexts.current() is first  # unchanged files: the same context, no reload
    empty_crl.write_bytes(pki.crl.read_bytes() + b"\n")  # same lists, new size and time
    assert contexts.current() is not first and contexts.reloads == 1


# --------------------------------------------------------------------------- HTTPS (uvicorn)
async def _hello(scope, receive, send) -> None:  # noqa: ANN001  (a bare ASGI app)
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


def _https_get(port: int, pki: Pki, pair: KeyPair) -> bytes:
    """The raw answer to ``GET /`` over HTTPS presenting ``pair`` (b"" or an SSLError when refused)."""
    context, name = _client(pki, pair)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=name) as tls:
        tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        return tls.recv(4096)


def test_https_follows_renewed_files_and_checks_the_crl(tmp_path: Path, pki: Pki) -> None:
    files = KeyPair(tmp_path / "api.pem", tmp_path / "api.key")
    shutil.copyfile(pki.node.certificate, files.certificate)
    shutil.copyfile(pki.node.private_key, files.private_key)
    tls = ServerTls(certificate=files.certificate, private_key=files.private_key, ca_certificates=pki.ca,
                    require_client_certificate=True, crl=pki.crl)
    contexts = ReloadingServerContext(tls, "http.tls", check_seconds=0.0)
    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(_hello, log_level="warning", lifespan="off", **_uvicorn_tls(contexts)))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 10.0, interval=0.02, what="uvicorn to start")
        port = sock.getsockname()[1]
        assert _https_get(port, pki, pki.peer).startswith(b"HTTP/1.1 200")
        assert _served_https(port, pki)["serialNumber"] == _serial(pki.node)
        try:
            refused = _https_get(port, pki, pki.revoked)
        except (ssl.SSLError, ConnectionError) as exc:
            refused = str(exc).encode()
        assert not refused.startswith(b"HTTP/1.1 200"), refused

        _replace(pki.renewed.certificate, files.certificate, in_place=True)  # half: the old one serves
        assert _served_https(port, pki)["serialNumber"] == _serial(pki.node)
        _replace(pki.renewed.private_key, files.private_key, in_place=True)
        assert _served_https(port, pki)["serialNumber"] == _serial(pki.renewed)  # checked on each connection here
        assert _served_https(port, pki, "127.0.0.1")["serialNumber"] == _serial(pki.renewed)  # no SNI sent
        assert _https_get(port, pki, pki.peer).startswith(b"HTTP/1.1 200")
        try:
            refused = _https_get(port, pki, pki.revoked)
        except (ssl.SSLError, ConnectionError) as exc:
            refused = str(exc).encode()
        assert not refused.startswith(b"HTTP/1.1 200"), refused  # the CRL still applies after the swap
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def test_files_that_cannot_be_looked_at_keep_the_context_in_use(tmp_path: Path, pki: Pki, monkeypatch,
                                                                 caplog) -> None:
    """A renewal that leaves the key's folder unsearchable for this user (``Path.is_file``
    then raises PermissionError: simulated, the tests may run as root) keeps the context in
    use, with one warning, instead of failing the connection."""
    files = KeyPair(tmp_path / "node.pem", tmp_path / "node.key")
    shutil.copyfile(pki.node.certificate, files.certificate)
    shutil.copyfile(pki.node.private_key, files.private_key)
    contexts = ReloadingServerContext(ServerTls(certificate=files.certificate, private_key=files.private_key),
                                      "dicom.tls", check_seconds=0.0)
    first = contexts.current()
    shutil.copyfile(pki.renewed.private_key, files.private_key)  # the files change...
    real_is_file = Path.is_file

    def is_file(path: Path) -> bool:
        if path == files.private_key:
            raise PermissionError(13, "Permission denied", str(path))
        return real_is_file(path)

    monkeypatch.setattr(Path, "is_file", is_file)  # ...and cannot be looked at
    with caplog.at_level(logging.WARNING, logger="dicom_service.tls_reload"):
        assert contexts.current() is first and contexts.current() is first
    assert len([r for r in caplog.records if "changed files not used yet" in r.getMessage()]) == 1
    assert contexts.reloads == 0
