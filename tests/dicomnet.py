"""Test helpers for real DICOM associations on localhost (pynetdicom SCU)."""

from __future__ import annotations

import ssl
import tempfile
from io import BytesIO
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.presentation import build_context

VERIFICATION = "1.2.840.10008.1.1"


TlsArgs = tuple[ssl.SSLContext, str]


def associate(port: int, contexts: list[tuple[str, list[str]]], *, calling: str = "TESTSCU",
              called: str = "DENTAL_AI", tls: TlsArgs | None = None) -> Association:
    """Open an association proposing ``(sop_class, [transfer syntaxes])`` contexts
    (over TLS with ``tls``: pynetdicom's ``(context, server host name)``)."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.connection_timeout = 10  # TCP connect and TLS handshake
    ae.requested_contexts = [build_context(VERIFICATION)] + [build_context(c, ts) for c, ts in contexts]
    return ae.associate("127.0.0.1", port, ae_title=called, tls_args=tls)


def echo_ok(port: int, *, tls: TlsArgs | None = None) -> bool:
    """True if the node answers C-ECHO with success."""
    assoc = associate(port, [], tls=tls)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and status.Status == 0
    finally:
        assoc.release()


def store(port: int, ds: Dataset, *, calling: str = "TESTSCU", tls: TlsArgs | None = None) -> int:
    """C-STORE a data set in its own transfer syntax over a new association; return the status."""
    ts = str(ds.file_meta.TransferSyntaxUID)
    assoc = associate(port, [(str(ds.SOPClassUID), [ts])], calling=calling, tls=tls)
    if not assoc.is_established:
        raise ConnectionError("association rejected")
    try:
        status = assoc.send_c_store(ds)
        return int(status.Status)
    finally:
        assoc.release()


def store_raw(port: int, sop_class: str, sop_instance: str, transfer_syntax: str, payload: bytes) -> int:
    """C-STORE arbitrary bytes as the data set (for malformed input); return the status.

    The bytes are put behind a valid Part 10 header in a temporary file and sent with
    pynetdicom's chunked file sending, which copies the file's data set bytes to the
    wire without decoding them: that is how a broken SCU would send them.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = transfer_syntax
    header = BytesIO()
    header.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(header, meta, enforce_standard=True)
    assoc = associate(port, [(sop_class, [transfer_syntax])])
    if not assoc.is_established:
        raise ConnectionError("association rejected")
    old = _config.STORE_SEND_CHUNKED_DATASET
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "raw.dcm"
        path.write_bytes(header.getvalue() + payload)
        try:
            _config.STORE_SEND_CHUNKED_DATASET = True
            status = assoc.send_c_store(path)
            return int(status.Status)
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = old
            assoc.release()
