"""STOW-RS without a PACS: the streamed multipart body, the reply's failures, the
DICOMweb destination settings, and replies a misconfigured server gives (a local HTTP
server plays it: Orthanc cannot be made to answer a proxy's page). Against Orthanc's
DICOMweb plugin: tests/integration/test_stow.py."""

from __future__ import annotations

import email
import http.server
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from dicom_service.config import Destination, DicomWebDestination, load_settings
from dicom_service.domain import ConfigError, DispatchError
from dicom_service.node.stow import _failure, _parts, failed_instances, store_files
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
    page, a reply that confirms only part, a redirect); it records what it received."""

    mode = "text"
    received: list[dict] = []

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append({"headers": dict(self.headers), "length": len(body)})
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
    handler = type("Handler", (_Misbehaving,), {"received": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
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
