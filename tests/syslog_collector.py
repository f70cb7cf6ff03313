"""A real syslog collector for audit tests: ``rsyslogd`` (Debian package rsyslog, TLS by
rsyslog-openssl) on a free localhost port, writing what it receives to a file.

It parses each RFC 5424 message itself, so a test reads the MSGID, APP-NAME, PRI and the
message (the audit XML) as a collector sees them, not as we sent them.
"""

from __future__ import annotations

import socket
import subprocess
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.dicomcheck import in_ci, require_tool
from tests.tlscerts import Pki

#: rsyslog's OpenSSL network stream driver (package rsyslog-openssl).
_OSSL_DRIVER = "lmnsd_ossl.so"
_FIELDS = "%msgid%\\t%app-name%\\t%pri%\\t%timereported:::date-rfc3339%\\t%hostname%\\t%procid%\\t%msg%\\n"


@dataclass(frozen=True)
class Received:
    """One message as rsyslog parsed it."""

    msgid: str
    app_name: str
    pri: int
    timestamp: str
    hostname: str
    procid: str
    msg: str

    @property
    def audit(self) -> ET.Element:
        """The audit message (the byte order mark before it removed)."""
        return ET.fromstring(self.msg.lstrip("\ufeff").encode())


class Collector:
    """A running rsyslogd; :meth:`messages` reads what it wrote."""

    def __init__(self, folder: Path, port: int, transport: str, process: subprocess.Popen) -> None:
        self.folder = folder
        self.port = port
        self.transport = transport
        self.process = process
        self.output = folder / "received.log"

    def messages(self) -> list[Received]:
        """Every message received so far."""
        if not self.output.exists():
            return []
        found = []
        for line in self.output.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split("\t", 6)
            if len(parts) == 7:
                found.append(Received(parts[0], parts[1], int(parts[2]), parts[3], parts[4], parts[5], parts[6]))
        return found

    def wait_for(self, check, timeout: float = 30.0) -> list[Received]:  # noqa: ANN001 - a predicate on the list
        """Poll until ``check(messages)`` is true; raise TimeoutError with what arrived."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.messages()
            if check(found):
                return found
            if time.monotonic() > deadline:
                events = Counter(m.audit.find("EventIdentification/EventID").get("originalText") for m in found)
                raise TimeoutError(f"{len(found)} messages in {timeout} s: {dict(events)}")
            if self.process.poll() is not None:
                raise RuntimeError(f"rsyslogd exited ({self.process.returncode}): {self._log()}")
            time.sleep(0.1)  # polling a file rsyslog appends to, with a deadline

    def _log(self) -> str:
        path = self.folder / "rsyslogd.err"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


def free_port() -> int:
    """A TCP port free now on localhost (UDP uses the same number)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(folder: Path, port: int, transport: str, pki: Pki | None) -> str:
    lines = [f'global(workDirectory="{folder}" maxMessageSize="64k"']
    if transport == "tls":
        assert pki is not None
        lines[0] += (f' defaultNetstreamDriver="ossl" defaultNetstreamDriverCAFile="{pki.ca}"'
                     f' defaultNetstreamDriverCertFile="{pki.node.certificate}"'
                     f' defaultNetstreamDriverKeyFile="{pki.node.private_key}"')
    lines[0] += ")"
    if transport == "tls":
        # mutual TLS: the node must show a certificate the authority signed (ATNA node authentication)
        lines.append('module(load="imtcp" streamDriver.name="ossl" streamDriver.mode="1" '
                     'streamDriver.authMode="x509/certvalid")')
        lines.append(f'input(type="imtcp" port="{port}")')
    elif transport == "tcp":
        lines += ['module(load="imtcp")', f'input(type="imtcp" port="{port}")']
    else:  # udp, with a TCP input on the same number to tell when rsyslog listens
        lines += ['module(load="imudp")', 'module(load="imtcp")', f'input(type="imudp" port="{port}" '
                  'address="127.0.0.1")', f'input(type="imtcp" port="{port}" address="127.0.0.1")']
    lines.append(f'template(name="fields" type="string" string="{_FIELDS}")')
    lines.append(f'action(type="omfile" file="{folder / "received.log"}" template="fields")')
    return "\n".join(lines) + "\n"


@contextmanager
def running_collector(folder: Path, *, transport: str = "tcp", port: int = 0,
                      pki: Pki | None = None) -> Iterator[Collector]:
    """An rsyslogd listening on 127.0.0.1:``port`` (0: a free one) for ``transport``
    (``tcp``, ``tls`` with mutual authentication by ``pki``, or ``udp``)."""
    rsyslogd = require_tool("rsyslogd", "rsyslog")
    if transport == "tls" and not list(Path("/usr/lib").glob(f"*/rsyslog/{_OSSL_DRIVER}")):
        message = "rsyslog's OpenSSL driver (Debian package rsyslog-openssl) is not installed"
        if in_ci():
            pytest.fail(f"{message}; it is required when CI=true")
        pytest.skip(message)
    folder.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    conf = folder / "rsyslog.conf"
    conf.write_text(_config(folder, port, transport, pki))
    with open(folder / "rsyslogd.err", "wb") as err:
        process = subprocess.Popen([rsyslogd, "-n", "-f", str(conf), "-i", str(folder / "rsyslogd.pid")],
                                   stdout=err, stderr=subprocess.STDOUT)
    collector = Collector(folder, port, transport, process)
    try:
        deadline = time.monotonic() + 30
        while True:  # listening once a TCP connection is accepted
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"rsyslogd did not listen on {port}: {collector._log()}") from None
                time.sleep(0.05)  # polling the port with a deadline
        yield collector
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
