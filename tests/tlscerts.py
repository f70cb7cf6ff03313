"""A throwaway public-key infrastructure for TLS tests, made with the ``openssl`` command.

:func:`make_pki` writes, in a folder: a test authority; a certificate for
``localhost``/``127.0.0.1`` signed by it, usable as server and as client; a second
such certificate for a peer (Orthanc, a client); a certificate signed by another
authority, which the first one does not trust; a renewed node certificate (same names,
new key and serial); a certificate the authority has revoked, and the authority's
revocation list (``openssl ca -gencrl``, with the small database it needs). RSA 2048
keys, valid two days.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.dicomcheck import require_tool

_LEAF_EXTENSIONS = """basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=DNS:localhost,IP:127.0.0.1
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid,issuer
"""


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate and its PEM private key."""

    certificate: Path
    private_key: Path


@dataclass(frozen=True)
class Pki:
    """The files of :func:`make_pki`."""

    ca: Path
    node: KeyPair
    peer: KeyPair
    rogue: KeyPair
    rogue_ca: Path
    #: The node's certificate as a renewal would bring it: another key, serial and subject CN.
    renewed: KeyPair
    #: Signed by ``ca`` like ``peer``, and revoked in ``crl``.
    revoked: KeyPair
    #: ``ca``'s revocation list (PEM), which revokes ``revoked`` only.
    crl: Path


def _openssl(exe: str, *args: str) -> None:
    proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {proc.stderr[-2000:]}")


def _authority(exe: str, folder: Path, name: str) -> KeyPair:
    pair = KeyPair(folder / f"{name}.pem", folder / f"{name}.key")
    _openssl(exe, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "2",
             "-subj", f"/CN=dicom-service test {name}", "-keyout", str(pair.private_key),
             "-out", str(pair.certificate))
    return pair


def _leaf(exe: str, folder: Path, name: str, authority: KeyPair) -> KeyPair:
    pair = KeyPair(folder / f"{name}.pem", folder / f"{name}.key")
    request = folder / f"{name}.csr"
    extensions = folder / "leaf.ext"
    extensions.write_text(_LEAF_EXTENSIONS, encoding="ascii")
    _openssl(exe, "req", "-new", "-newkey", "rsa:2048", "-nodes", "-sha256", "-subj", f"/CN={name}",
             "-keyout", str(pair.private_key), "-out", str(request))
    _openssl(exe, "x509", "-req", "-in", str(request), "-CA", str(authority.certificate),
             "-CAkey", str(authority.private_key), "-CAcreateserial", "-sha256", "-days", "2",
             "-extfile", str(extensions), "-out", str(pair.certificate))
    return pair


_CA_CONFIG = """[ca]
default_ca = test_ca

[test_ca]
database = {folder}/index.txt
crlnumber = {folder}/crlnumber
certificate = {certificate}
private_key = {private_key}
default_md = sha256
default_crl_days = 2
"""


def _revocation_list(exe: str, folder: Path, authority: KeyPair, revoked: list[KeyPair]) -> Path:
    """``authority``'s CRL (PEM) revoking ``revoked``, made by ``openssl ca``."""
    database = folder / "ca-db"
    database.mkdir(exist_ok=True)
    (database / "index.txt").write_text("", encoding="ascii")
    (database / "crlnumber").write_text("01\n", encoding="ascii")
    config = database / "ca.cnf"
    config.write_text(_CA_CONFIG.format(folder=database, certificate=authority.certificate,
                                        private_key=authority.private_key), encoding="ascii")
    for pair in revoked:
        _openssl(exe, "ca", "-config", str(config), "-revoke", str(pair.certificate), "-batch")
    crl = folder / "ca-crl.pem"
    _openssl(exe, "ca", "-config", str(config), "-gencrl", "-batch", "-out", str(crl))
    return crl


def make_pki(folder: Path) -> Pki:
    """Write the test authority and certificates under ``folder`` (skips without openssl,
    fails under ``CI=true``)."""
    exe = require_tool("openssl", "openssl")
    folder.mkdir(parents=True, exist_ok=True)
    ca = _authority(exe, folder, "ca")
    rogue_ca = _authority(exe, folder, "rogue-ca")
    revoked = _leaf(exe, folder, "revoked", ca)
    return Pki(
        ca=ca.certificate,
        node=_leaf(exe, folder, "node", ca),
        peer=_leaf(exe, folder, "peer", ca),
        rogue=_leaf(exe, folder, "rogue", rogue_ca),
        rogue_ca=rogue_ca.certificate,
        renewed=_leaf(exe, folder, "renewed", ca),
        revoked=revoked,
        crl=_revocation_list(exe, folder, ca, [revoked]),
    )
