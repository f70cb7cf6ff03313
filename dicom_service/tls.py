"""TLS for the DICOM node, its destinations and the HTTP API: settings and SSL contexts.

The node follows the DICOM TLS secure transport connection profiles of PS3.15 Annex B
as BCP 195 shapes them: TLS 1.2 or later only, the ``ssl`` module's default cipher
suites (forward secrecy, no RC4/3DES/export suites), certificates in PEM files.

- The node's TLS listener (``dicom.tls``) presents its certificate and, when
  ``ca_certificates`` is set, checks the peer's; ``require_client_certificate``
  refuses peers without one signed by those authorities (mutual TLS, what
  the PS3.15 profiles expect between a PACS and a node).
- A destination with ``tls`` checks the peer's certificate against
  ``ca_certificates`` (the system's trust store when null) and its host name, and
  presents a client certificate when one is configured.
- ``http.tls`` serves the API over HTTPS with the same server settings.
- ``crl`` (either side) names a PEM file of certificate revocation lists: a peer
  certificate that one of them revokes is refused (OpenSSL's ``CRL_CHECK`` on the
  peer's own certificate, ``ssl.VERIFY_CRL_CHECK_LEAF``).

A destination's context is built from the files each time it is contacted, so renewed
files are used by its next association. A listener's context is built at start and
rebuilt when its files change (:mod:`dicom_service.tls_reload`). Every problem with a
file is a :class:`~dicom_service.domain.ConfigError` that names the setting.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from dicom_service.domain import ConfigError

log = logging.getLogger(__name__)

#: The TLS port DICOM registered with IANA ("dicom-tls").
DICOM_TLS_PORT = 2762
#: A certificate that ends sooner than this (seconds) is announced at start.
EXPIRY_WARNING_SECONDS = 30 * 86_400


class _TlsSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerTls(_TlsSection):
    """A TLS server: the node's TLS listener (``dicom.tls``) or the API (``http.tls``)."""

    certificate: Path = Field(description="PEM file: this server's certificate, then its chain.")
    private_key: Path = Field(description="PEM file: the certificate's private key.")
    private_key_password: SecretStr | None = Field(
        None, description="Password of an encrypted private key; null: the key is not encrypted.")
    ca_certificates: Path | None = Field(
        None, description="PEM file of the authorities whose client certificates are trusted; null: client "
        "certificates are not asked for.")
    require_client_certificate: bool = Field(
        False, description="Refuse a peer without a client certificate signed by ca_certificates (mutual TLS).")
    crl: Path | None = Field(
        None, description="PEM file of certificate revocation lists, one from each authority in "
        "ca_certificates: a client certificate they revoke is refused; null: no revocation check.")

    @model_validator(mode="after")
    def _client_certificates_need_authorities(self) -> ServerTls:
        if self.require_client_certificate and self.ca_certificates is None:
            raise ValueError("require_client_certificate needs ca_certificates (the authorities to trust)")
        if self.crl is not None and self.ca_certificates is None:
            raise ValueError("crl needs ca_certificates (without them no client certificate is asked for)")
        return self

    def files(self) -> tuple[Path, ...]:
        """The PEM files this server reads: certificate, private key, then the optional ones."""
        return tuple(p for p in (self.certificate, self.private_key, self.ca_certificates, self.crl)
                     if p is not None)


class NodeTls(ServerTls):
    """The node's DICOM TLS listener."""

    port: int = Field(DICOM_TLS_PORT, ge=0, le=65535, description="TLS port (2762, 'dicom-tls', by default).")


class ClientTls(_TlsSection):
    """TLS towards a destination."""

    ca_certificates: Path | None = Field(
        None, description="PEM file of the authorities trusted to sign the destination's certificate; null: "
        "the system's trust store.")
    certificate: Path | None = Field(None, description="PEM file: our client certificate and chain, if the "
                                     "destination asks for one.")
    private_key: Path | None = Field(None, description="PEM file: the client certificate's private key.")
    private_key_password: SecretStr | None = None
    server_name: str | None = Field(
        None, description="Name the destination's certificate must carry; null: the destination's host.")
    check_hostname: bool = Field(
        True, description="Check that name against the certificate (the certificate's signature is always "
        "checked).")
    crl: Path | None = Field(
        None, description="PEM file of certificate revocation lists, one from the authority that signs the "
        "destination's certificate: a certificate they revoke is refused; null: no revocation check.")

    @model_validator(mode="after")
    def _certificate_with_key(self) -> ClientTls:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("certificate and private_key go together")
        return self


def _password(secret: SecretStr | None) -> bytes:
    # A callable, never None: with None, OpenSSL would prompt on the terminal for an encrypted key.
    return secret.get_secret_value().encode() if secret is not None else b""


def _load_chain(context: ssl.SSLContext, certificate: Path, private_key: Path,
                password: SecretStr | None, key: str) -> None:
    for name, path in (("certificate", certificate), ("private_key", private_key)):
        if not path.is_file():
            raise ConfigError(f"{key}.{name}: no such file: {path}")
    try:
        context.load_cert_chain(certificate, private_key, password=lambda: _password(password))
    except ssl.SSLError as exc:
        raise ConfigError(
            f"{key}: cannot use {certificate} with {private_key}: {exc.reason or exc} (is the key the "
            f"certificate's, PEM-encoded{', with the right private_key_password' if password else ''}?"
            f"{'' if password else ' An encrypted key needs private_key_password'})") from None
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {certificate} or {private_key}: {exc.strerror or exc}") from None


def _load_authorities(context: ssl.SSLContext, path: Path, key: str) -> None:
    if not path.is_file():
        raise ConfigError(f"{key}.ca_certificates: no such file: {path}")
    try:
        context.load_verify_locations(cafile=path)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"{key}.ca_certificates: {path} holds no usable PEM certificate: "
                          f"{getattr(exc, 'reason', None) or exc}") from None


def _load_crl(context: ssl.SSLContext, path: Path, key: str) -> None:
    """Add the revocation lists of ``path`` to the context's store and check the peer's
    certificate against them. A file that also holds a certificate is refused: through
    ``load_verify_locations`` that certificate would become a trusted authority."""
    if not path.is_file():
        raise ConfigError(f"{key}.crl: no such file: {path}")
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except OSError as exc:
        raise ConfigError(f"{key}.crl: cannot read {path}: {exc.strerror or exc}") from None
    if "-----BEGIN X509 CRL-----" not in text:
        raise ConfigError(f"{key}.crl: {path} holds no PEM revocation list (-----BEGIN X509 CRL-----; "
                          f"a DER file converts with: openssl crl -inform DER -in FILE -out FILE.pem)")
    if "CERTIFICATE-----" in text:
        raise ConfigError(f"{key}.crl: {path} also holds a certificate; it must hold revocation lists only")
    try:
        context.load_verify_locations(cafile=path)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"{key}.crl: {path} holds no usable PEM revocation list: "
                          f"{getattr(exc, 'reason', None) or exc}") from None
    context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF


def server_context(tls: ServerTls, key: str) -> ssl.SSLContext:
    """An SSL context for a TLS listener.

    Parameters
    ----------
    tls : ServerTls
    key : str
        The setting's name for errors, e.g. ``"dicom.tls"``.

    Raises
    ------
    ConfigError
        A file is missing or unreadable, the key does not match the certificate, the
        authorities file holds no certificate, or the ``crl`` file no revocation list.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, tls.certificate, tls.private_key, tls.private_key_password, key)
    if tls.ca_certificates is not None:
        _load_authorities(context, tls.ca_certificates, key)
        context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_OPTIONAL
    if tls.crl is not None:
        _load_crl(context, tls.crl, key)
    return context


def client_context(tls: ClientTls, key: str) -> ssl.SSLContext:
    """An SSL context for an association to a destination.

    Parameters
    ----------
    tls : ClientTls
    key : str
        The setting's name for errors, e.g. ``"destinations[pacs].tls"``.

    Raises
    ------
    ConfigError
        As :func:`server_context`.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.ca_certificates is not None:
        _load_authorities(context, tls.ca_certificates, key)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = tls.check_hostname
    if tls.crl is not None:
        _load_crl(context, tls.crl, key)
    if tls.certificate is not None and tls.private_key is not None:
        _load_chain(context, tls.certificate, tls.private_key, tls.private_key_password, key)
    return context


def check_tls_files(node: ServerTls | None, http: ServerTls | None,
                    destinations: Iterable[tuple[str, ClientTls | None]],
                    clients: Iterable[tuple[str, ClientTls | None]] = ()) -> None:
    """Build every configured context once, so that a bad file is named at the start.

    Parameters
    ----------
    node, http : ServerTls or None
        ``dicom.tls`` and ``http.tls``.
    destinations : iterable of (str, ClientTls or None)
        Each destination's name and ``tls``.
    clients : iterable of (str, ClientTls or None)
        Other client sides: the setting's key (``"audit_repository.tls"``) and its value.

    Raises
    ------
    ConfigError
        From :func:`server_context` or :func:`client_context`.
    """
    if node is not None:
        server_context(node, "dicom.tls")
        warn_if_expiring(node.certificate, "dicom.tls.certificate")
    if http is not None:
        server_context(http, "http.tls")
        warn_if_expiring(http.certificate, "http.tls.certificate")
    keyed = [(f"destinations[{name}].tls", tls) for name, tls in destinations]
    for key, tls in [*keyed, *clients]:
        if tls is not None:
            client_context(tls, key)
            if tls.certificate is not None:
                warn_if_expiring(tls.certificate, f"{key}.certificate")


def decoded_certificate(certificate: Path) -> dict | None:
    """The first certificate of a PEM file as :meth:`ssl.SSLSocket.getpeercert` gives one
    (``subject``, ``serialNumber``, ``notBefore``, ``notAfter``, ...); None when it cannot
    be decoded here (CPython's only decoder for a file is a private one)."""
    try:
        return ssl._ssl._test_decode_cert(str(certificate))  # type: ignore[attr-defined]  # noqa: SLF001
    except (AttributeError, OSError, ssl.SSLError, ValueError):
        return None


def warn_if_expiring(certificate: Path, key: str, now: float | None = None) -> str | None:
    """Log (and return) a warning when the first certificate of a PEM file is not valid yet,
    has expired, or expires within :data:`EXPIRY_WARNING_SECONDS`: peers would refuse it."""
    decoded = decoded_certificate(certificate)
    if decoded is None:
        return None
    try:
        not_before = ssl.cert_time_to_seconds(decoded["notBefore"])
        not_after = ssl.cert_time_to_seconds(decoded["notAfter"])
    except (KeyError, ValueError):
        return None  # dates not readable here: the handshake will tell
    now = time.time() if now is None else now
    if now < not_before:
        message = f"{key}: {certificate} is not valid before {decoded['notBefore']}: peers will refuse it"
    elif now > not_after:
        message = f"{key}: {certificate} EXPIRED on {decoded['notAfter']}: peers will refuse it"
    elif not_after - now < EXPIRY_WARNING_SECONDS:
        message = f"{key}: {certificate} expires on {decoded['notAfter']}: renew it"
    else:
        return None
    log.warning("%s", message)
    return message
