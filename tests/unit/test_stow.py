"""STOW-RS without a PACS: the streamed multipart body, the reply's failures, the
DICOMweb destination settings, and replies a misconfigured server gives (a local HTTP
server plays it: Orthanc cannot be made to answer a proxy's page). Against Orthanc's
DICOMweb plugin: tests/integration/test_stow.py."""

from __future__ import annotations

import email
import http.server
import io
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from dicom_service.config import Destination, DicomWebDestination, load_settings
from dicom_service.domain import ConfigError, DispatchError
from dicom_service.node.stow import _failure, _parts, failed_instances, store_files
from dicom_service.node.transfer_rate import TransferBudget, TransferTooSlow
from tests import builders


def test_multipart_body_has_the_announced_length_and_every_file(tmp_path: Path) -> None:
    files = []
    for i, size in enumerate((0, 5, (1 << 20) + 17)):  # an empty file, a small one, one over a chunk
        path = tmp_path / f"{i}.dcm"
        path.write_bytes(bytes([i + 1]) * size)
        files.append(path)
    length, pieces = _parts(files, "b0undary")
    body = b"".join(pieces)
    assert len(body) == length
    message = email.message_from_bytes(
        b'Content-Type: multipart/related; type="application/dicom"; boundary=b0undary\r\n\r\n' + body)
    parts = message.get_payload()
    assert [p.get_content_type() for p in parts] == ["application/dicom"] * 3
    assert [p.get_payload(decode=True) for p in parts] == [f.read_bytes() for f in files]


def test_failed_sop_sequence_is_read_and_malformed_replies_are_tolerated() -> None:
    reply = {"00081198": {"vr": "SQ", "Value": [
        {"00081155": {"vr": "UI", "Value": ["1.2.3"]}, "00081197": {"vr": "US", "Value": [0xA700]}},
        {"00081155": {"vr": "UI"}},
        "not an item",
    ]}}
    assert failed_instances(reply) == ["1.2.3 (reason 0xa700)", "? (reason not given)"]
    assert failed_instances({"00081198": {"vr": "SQ"}}) == []
    assert failed_instances({"00081198": "garbage"}) == []
    assert failed_instances({}) == []


@pytest.mark.parametrize(("entry", "message"), [
    ({"url": "ftp://pacs/dicom-web"}, "http:// or https:// URL"),
    ({"url": "https://pacs/dicom-web?x=1"}, "query or a fragment"),
    ({"url": "https://user:secret@pacs/dicom-web"}, "not in url"),
    ({"url": "https://pacs/dicom-web", "username": "u"}, "username and password go together"),
    ({"url": "https://pacs/dicom-web", "username": "u", "password": "p", "token": "t"}, "not both"),
    ({"url": "http://pacs/dicom-web", "tls": {}}, "tls needs an https:// url"),
    ({"ae_title": "PACS"}, "destinations.0.host: Field required"),
    ({"url": "https://pacs:notaport/dicom-web"}, "port that is not a number"),
    ({"url": "https://pacs/dicom-web", "token": "T\u00f6k\u00e9n"}, "printable ASCII"),
    ({"url": "https://pacs/dicom-web", "username": "u", "password": "p\r\n"}, "control characters"),
    ({"url": "https://pacs/dicom-web", "username": "a:b", "password": "p"}, "must not contain ':'"),
    ({"url": "https://pacs/dicom-web", "min_rate_kib_per_s": -1}, "greater than or equal to 0"),
])
def test_destination_settings_are_checked(entry: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_settings(None, destinations=[{"name": "x", **entry}])


def test_destination_kind_follows_url() -> None:
    settings = load_settings(None, destinations=[
        {"name": "dimse", "ae_title": "PACS", "host": "pacs", "port": 104},
        {"name": "web", "url": "https://pacs.example.org/dicom-web/", "token": "t0ken"}])
    dimse, web = settings.destinations
    assert isinstance(dimse, Destination) and isinstance(web, DicomWebDestination)
    assert web.url == "https://pacs.example.org/dicom-web"  # trailing slash dropped
    assert "t0ken" not in repr(web)  # secrets stay out of logs and reprs


# --------------------------------------------------------------------------- servers that misbehave
class _Misbehaving(http.server.BaseHTTPRequestHandler):
    """An HTTP server answering STOW-RS as a misconfigured or broken one might (a proxy's
    page, a reply that confirms only part, a redirect, a reply trickled one byte at a
    time) or a slow but healthy one does (``steady``: reads the upload at a steady pace,
    then confirms ``confirm``); it records what it received and how much of a trickled
    reply it sent. ``stop`` ends any pacing at teardown."""

    mode = "text"
    received: list[dict] = []
    confirm: list[str] = []
    trickled: list[int] = []
    stop = threading.Event()
    pause = 0.02  # seconds between two trickled bytes or two steady reads
    steady_read = 256 * 1024

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _read_body(self) -> bytes:
        length = int(self.headers["Content-Length"])
        if self.mode != "steady":
            return self.rfile.read(length)
        body = bytearray()
        while len(body) < length and not self.stop.is_set():
            body += self.rfile.read(min(self.steady_read, length - len(body)))
            self.stop.wait(self.pause)  # the server's pace, not a test waiting for it
        return bytes(body)

    def _confirmation(self) -> bytes:
        return json.dumps({"00081199": {"vr": "SQ", "Value": [
            {"00081155": {"vr": "UI", "Value": [uid]}} for uid in self.confirm]}}).encode()

    def _trickle(self) -> None:
        """A complete, valid reply (status line and headers too), one byte at a time, each
        well within the client's per-read timeout: it would take minutes."""
        payload = self._confirmation() + b" " * 4000
        reply = (b"HTTP/1.1 200 OK\r\nContent-Type: application/dicom+json\r\n"
                 + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        sent = 0
        try:
            for byte in reply:
                if self.stop.wait(self.pause):
                    break
                self.wfile.write(bytes([byte]))
                sent += 1
        except OSError:  # the client gave up and closed
            pass
        type(self).trickled.append(sent)
        self.close_connection = True

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self._read_body()
        type(self).received.append({"headers": dict(self.headers), "length": len(body), "path": self.path})
        if self.mode == "trickle":
            self._trickle()
            return
        if self.mode == "steady":
            payload = self._confirmation()
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        if self.mode == "redirect":
            self.send_response(307)
            self.send_header("Location", "https://pacs.example.org/dicom-web/studies")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.mode == "partial":  # confirms only the first part's instance
            uid = pydicom.dcmread(io.BytesIO(body.split(b"\r\n\r\n", 1)[1]), stop_before_pixels=True).SOPInstanceUID
            payload = json.dumps({"00081199": {"vr": "SQ", "Value": [
                {"00081155": {"vr": "UI", "Value": [str(uid)]}}]}}).encode()
            content_type = "application/dicom+json"
        else:
            payload, content_type = b"<html>Welcome to the proxy</html>", "text/html"
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def misbehaving() -> Iterator[tuple[type[_Misbehaving], str]]:
    handler = type("Handler", (_Misbehaving,), {"received": [], "trickled": [], "stop": threading.Event()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler, bind_and_activate=False)
    # a small fixed receive buffer: what the server has not read stays with the client, so
    # its pace is the upload's pace (an auto-tuned buffer could take a whole test file at once)
    server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    server.server_bind()
    server.server_activate()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    handler.stop.set()
    server.shutdown()
    server.server_close()


def _two_files(tmp_path: Path) -> list[Path]:
    return [builders.save(builders.make_intraoral_radiograph(seed=i), tmp_path / f"{i}.dcm") for i in range(2)]


def test_a_200_that_does_not_confirm_every_instance_is_not_a_delivery(misbehaving, tmp_path: Path) -> None:
    handler, url = misbehaving
    files = _two_files(tmp_path)
    destination = DicomWebDestination(name="web", url=url, token="s3cret-token-value")
    handler.mode = "text"  # a proxy's welcome page
    with pytest.raises(DispatchError, match=r"HTTP 200 OK \(0 of 2 instances confirmed stored"):
        store_files(destination, files)
    handler.mode = "partial"
    with pytest.raises(DispatchError, match=r"HTTP 200 OK \(1 of 2 instances confirmed stored"):
        store_files(destination, files)
    handler.mode = "redirect"
    with pytest.raises(DispatchError, match="redirected to https://pacs.example.org/dicom-web/studies"):
        store_files(destination, files)
    sent = handler.received[0]
    assert sent["headers"]["Authorization"] == "Bearer s3cret-token-value"
    assert sent["headers"]["Content-Length"] == str(sent["length"])  # announced, not chunked
    assert "Transfer-Encoding" not in sent["headers"]


def test_messages_never_quote_the_credentials() -> None:
    basic = DicomWebDestination(name="web", url="https://pacs/dicom-web", username="ai", password="pa55word!")
    leaked = ValueError("Illegal header value b'Basic YWk6cGE1NXdvcmQh' for pa55word!")
    message = str(_failure(basic, "STOW-RS", leaked))
    assert "pa55word!" not in message and "YWk6cGE1NXdvcmQh" not in message and "***" in message
    bearer = DicomWebDestination(name="web", url="https://pacs/dicom-web", token="tok-123456789")
    assert "tok-123456789" not in str(_failure(bearer, "QIDO-RS", RuntimeError("Bearer tok-123456789")))


def test_a_token_read_from_a_file_loses_its_line_break() -> None:
    destination = DicomWebDestination(name="web", url="https://pacs/dicom-web", token="tok-123456789\n")
    assert destination.token is not None and destination.token.get_secret_value() == "tok-123456789"


def test_credentials_over_plain_http_are_announced() -> None:
    from dicom_service.node.destinations import plain_credentials_warnings

    warnings = plain_credentials_warnings([
        DicomWebDestination(name="lan", url="http://pacs/dicom-web", token="tok-123456789"),
        DicomWebDestination(name="tls", url="https://pacs/dicom-web", token="tok-123456789"),
        DicomWebDestination(name="open", url="http://pacs/dicom-web"),
        Destination(name="dimse", ae_title="PACS", host="pacs", port=104)])
    assert len(warnings) == 1 and warnings[0].startswith("destinations[lan]: credentials are sent over plain http://")
    assert "tok-123456789" not in warnings[0]


# --------------------------------------------------------------------------- minimum transfer rate
def _uids(paths: list[Path]) -> list[str]:
    return [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths]


def test_a_server_that_trickles_its_reply_is_dropped_in_bounded_time(misbehaving, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    handler, url = misbehaving
    files = _two_files(tmp_path)
    handler.mode, handler.confirm = "trickle", _uids(files)
    # each trickled byte comes well within `timeout`: only the rate guard ends the request, after
    # grace (1 s) + bytes moved (about 0.7 MB) / 1 MiB/s; the whole reply would take over 80 s
    destination = DicomWebDestination(name="web", url=url, timeout=1.0, min_rate_kib_per_s=1024)
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="dicom_service.node.stow"), \
            pytest.raises(DispatchError, match=r"aborted, too slow: \d+ bytes moved in [\d.]+ s, below the minimum "
                                               r"average rate of 1024 KiB/s after a grace of 1 s"):
        store_files(destination, files)
    elapsed = time.monotonic() - start
    assert 1.0 <= elapsed < 15.0
    assert handler.received[0]["length"] == int(handler.received[0]["headers"]["Content-Length"])
    deadline = time.monotonic() + 10.0  # the server notices the closed connection at its next byte
    while not handler.trickled and time.monotonic() < deadline:
        handler.stop.wait(0.01)
    assert handler.trickled and 0 < handler.trickled[0] < 1000  # it had started its reply, far from done
    logged = [r.getMessage() for r in caplog.records if "aborted" in r.getMessage()]
    assert logged and "STOW-RS of 2 objects to web (http://127.0.0.1:" in logged[0]
    assert all(uid not in logged[0] for uid in handler.confirm)


def test_a_slow_but_steady_upload_longer_than_the_grace_is_delivered(misbehaving, tmp_path: Path) -> None:
    handler, url = misbehaving
    big = builders.save(builders.make_intraoral_radiograph(rows=2048, cols=3072, implants=0), tmp_path / "big.dcm")
    handler.mode, handler.confirm = "steady", _uids([big])
    handler.pause, handler.steady_read = 0.05, 200 * 1024  # about 4 MiB/s: 3 s for 12 MB
    # timeout (the grace, and the longest wait for one read or write) outlasts what the sockets
    # buffer at that pace, not the whole upload; the rate (1 MiB/s) is well below the pace
    destination = DicomWebDestination(name="web", url=url, timeout=2.0, min_rate_kib_per_s=1024)
    start = time.monotonic()
    store_files(destination, [big])
    assert time.monotonic() - start > destination.timeout  # longer than the grace: the bytes moved bought time
    assert handler.received[0]["length"] > 12_000_000


def test_transfer_budget_allows_grace_plus_bytes_at_the_minimum_rate() -> None:
    now = [100.0]
    budget = TransferBudget(10.0, 1000.0, clock=lambda: now[0])
    assert budget.timeout(None) == 10.0 and budget.timeout(3.0) == 3.0
    now[0] += 9.5
    assert budget.timeout(3.0) == pytest.approx(0.5)  # a read may not outlast the request's time
    budget.add(2000)  # two more seconds bought
    assert budget.remaining() == pytest.approx(2.5)
    now[0] += 2.5
    with pytest.raises(TransferTooSlow, match=r"2000 bytes moved in 12\.0 s, below the minimum average rate of "
                                              r"0\.976562 KiB/s after a grace of 10 s"):
        budget.timeout(3.0)
    with pytest.raises(ValueError):
        TransferBudget(10.0, 0.0)


def test_min_rate_zero_turns_the_guard_off() -> None:
    from dicom_service.node.stow import _client
    from dicom_service.node.transfer_rate import RateGuardedTransport

    off = DicomWebDestination(name="web", url="http://pacs/dicom-web", min_rate_kib_per_s=0)
    on = DicomWebDestination(name="web", url="http://pacs/dicom-web")
    assert on.min_rate_kib_per_s == 16.0
    with _client(off) as plain, _client(on) as guarded:
        assert not isinstance(plain._transport, RateGuardedTransport)
        assert isinstance(guarded._transport, RateGuardedTransport)


def test_the_environment_s_proxies_are_taken_with_the_guard_on(misbehaving, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A client given its own transport ignores HTTP_PROXY: the guard must not silently
    send the request around the site's proxy (min_rate 0 took it). The misbehaving server
    plays the proxy of a PACS this machine cannot resolve."""
    handler, proxy_url = misbehaving
    proxy = proxy_url.removesuffix("/dicom-web")
    files = _two_files(tmp_path)
    handler.mode, handler.confirm = "steady", _uids(files)
    for variable in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy",
                     "all_proxy", "no_proxy"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy)
    for rate in (16.0, 0.0):
        store_files(DicomWebDestination(name="web", url="http://pacs.invalid/dicom-web",
                                        min_rate_kib_per_s=rate), files)
    assert [r["path"] for r in handler.received] == ["http://pacs.invalid/dicom-web/studies"] * 2

    handler.mode = "trickle"  # the guard holds through the proxy
    with pytest.raises(DispatchError, match="aborted, too slow"):
        store_files(DicomWebDestination(name="web", url="http://pacs.invalid/dicom-web", timeout=1.0,
                                        min_rate_kib_per_s=1024), files)

    handler.mode = "steady"  # NO_PROXY: straight to the server, the proxy (a closed port) not asked
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed.getsockname()[1]}")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        store_files(DicomWebDestination(name="web", url=proxy_url), files)
    assert handler.received[-1]["path"] == "/dicom-web/studies"
