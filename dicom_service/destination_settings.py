"""Destinations of results: DICOM peers (C-STORE) and DICOMweb services (STOW-RS).

Part of the settings (``config.py`` re-exports every name here); a destination with
``url`` is DICOMweb, any other DIMSE (:data:`AnyDestination`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Discriminator, Field, SecretStr, Tag, field_validator, model_validator

from dicom_service.domain import Workflow
from dicom_service.tls import ClientTls

ResultKind = Literal["video", "sc", "seg", "sr", "pr"]
ALL_RESULT_KINDS: tuple[str, ...] = ("video", "sc", "seg", "sr", "pr")


def check_ae_title(value: str) -> str:
    """Validate an AE title (PS3.5: 1–16 chars of the default repertoire, no backslash)."""
    text = value.strip()
    if not 1 <= len(text) <= 16:
        raise ValueError("an AE title has 1 to 16 characters")
    if "\\" in text or any(ord(c) < 0x20 or ord(c) > 0x7E for c in text):
        raise ValueError("an AE title may not contain control characters or backslashes")
    return text


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _DestinationBase(_Settings):
    name: str
    workflows: list[Workflow] = Field(default_factory=lambda: [Workflow.VIDEO, Workflow.RADIOGRAPH])
    results: list[ResultKind] = Field(default_factory=lambda: list(ALL_RESULT_KINDS))


class Destination(_DestinationBase):
    """A DICOM peer that receives results by C-STORE."""

    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    tls: ClientTls | None = Field(None, description="Associate over TLS (the peer's TLS port); null: plain.")

    _ae = field_validator("ae_title")(classmethod(lambda cls, v: check_ae_title(v)))


class DicomWebDestination(_DestinationBase):
    """A DICOMweb service that receives results by STOW-RS (``node/stow.py``)."""

    url: str = Field(description="Base URL of the DICOMweb service, e.g. https://pacs.example.org/dicom-web; "
                     "results are POSTed to <url>/studies.")
    username: str | None = Field(None, description="HTTP basic authentication (with password).")
    password: SecretStr | None = None
    token: SecretStr | None = Field(None, description="Bearer token (instead of username and password).")
    timeout: float = Field(300.0, gt=0, description="Seconds without progress before a request fails.")
    min_rate_kib_per_s: float = Field(
        16.0, ge=0, description="Minimum average rate of a request, upload and reply together, in KiB/s: after a "
        "grace of `timeout` seconds a request fails (and is retried) once it has taken longer than grace + bytes "
        "moved / this rate, so a server that trickles its reply frees the dispatch worker; a big video that moves "
        "at least this fast takes as long as it needs. 0: no minimum.")
    tls: ClientTls | None = Field(None, description="For an https URL: the authorities to trust, a client "
                                  "certificate; null: the system's trust store.")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("url must be an http:// or https:// URL with a host")
        if parts.query or parts.fragment:
            raise ValueError("url must not have a query or a fragment")
        if parts.username or parts.password:
            raise ValueError("credentials go in username and password, or token, not in url (it is logged)")
        try:
            parts.port  # noqa: B018 - raises for a port that is not a number in 0-65535
        except ValueError:
            raise ValueError("url has a port that is not a number from 1 to 65535") from None
        return value.strip().rstrip("/")

    @field_validator("token")
    @classmethod
    def _header_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        text = value.get_secret_value().strip()  # a token read from a file keeps its newline
        if not text or any(not 0x21 <= ord(c) <= 0x7E for c in text):
            raise ValueError("token must be printable ASCII without spaces (an HTTP bearer token)")
        return SecretStr(text)

    @field_validator("username", "password")
    @classmethod
    def _no_control_characters(cls, value: str | SecretStr | None) -> str | SecretStr | None:
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if text is not None and any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
            raise ValueError("must not contain control characters (a line break read from a file?)")
        if isinstance(value, str) and ":" in value:
            raise ValueError("a username must not contain ':' (HTTP basic authentication)")
        return value

    @model_validator(mode="after")
    def _one_credential(self) -> "DicomWebDestination":
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        if self.username is not None and self.token is not None:
            raise ValueError("give username and password, or token, not both")
        if self.tls is not None and not self.url.startswith("https://"):
            raise ValueError("tls needs an https:// url")
        return self


def _destination_kind(value: Any) -> str:
    if isinstance(value, DicomWebDestination) or (isinstance(value, Mapping) and "url" in value):
        return "dicomweb"
    return "dimse"


#: A destination of either kind: one with ``url`` is DICOMweb, the others DIMSE.
AnyDestination = Annotated[
    Annotated[Destination, Tag("dimse")] | Annotated[DicomWebDestination, Tag("dicomweb")],
    Discriminator(_destination_kind),
]
