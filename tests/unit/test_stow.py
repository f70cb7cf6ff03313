"""STOW-RS pieces that need no server: the streamed multipart body, the reply's failures,
and the DICOMweb destination settings (the requests themselves: tests/integration/test_stow.py)."""

from __future__ import annotations

import email
from pathlib import Path

import pytest

from dicom_service.config import Destination, DicomWebDestination, load_settings
from dicom_service.domain import ConfigError
from dicom_service.node.stow import _parts, failed_instances


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
