"""Settings of the audit record repository the node sends its audit messages to."""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dicom_service.tls import ClientTls

#: The registered syslog ports: syslog-tls (RFC 5425), syslog over TCP (RFC 6587), syslog (UDP).
DEFAULT_PORTS = {"tls": 6514, "tcp": 601, "udp": 514}


#: A host name: dot-separated labels of letters, digits, hyphens and underscores.
_HOST_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})?(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})?)*\.?")


class AuditRepository(BaseModel):
    """Where the audit messages go (IHE ATNA Audit Record Repository)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(min_length=1, description="The repository's host name or address.")
    port: int = Field(0, ge=0, le=65535, description="0: the transport's registered port (tls 6514, tcp 601, "
                      "udp 514).")
    transport: Literal["tls", "tcp", "udp"] = Field(
        "tls", description="tls: syslog over TLS (RFC 5425, what IHE ATNA requires between nodes); tcp: plain "
        "TCP with octet counting (RFC 6587); udp: one datagram per message (RFC 5426), nothing resent.")
    tls: ClientTls | None = Field(
        None, description="For transport tls: the authorities that sign the repository's certificate (null: the "
        "system's trust store) and the node's client certificate (ATNA node authentication).")
    source_id: str | None = Field(
        None, max_length=64, description="AuditSourceID of the messages; null: the node's AE title.")
    site_id: str | None = Field(
        None, max_length=64, description="AuditEnterpriseSiteID (the clinic, e.g. an OID); null: left out.")
    patient_ids: bool = Field(
        True, description="Name the patient (Patient ID, from the stored study) in messages about a study, as "
        "ATNA expects; false: studies by UID only.")

    @field_validator("host")
    @classmethod
    def _plain_host(cls, value: str) -> str:
        literal = value[1:-1] if value.startswith("[") and value.endswith("]") else value
        try:
            return str(ipaddress.ip_address(literal))  # an IPv4 or IPv6 address (IPv6 with or without brackets)
        except ValueError:
            pass
        if _HOST_NAME.fullmatch(value):
            return value
        if ":" in value and "/" not in value and not value.startswith("["):
            raise ValueError(f"audit_repository.host {value!r}: give the port in audit_repository.port")
        raise ValueError(f"audit_repository.host {value!r}: a host name (letters, digits, '-', '.', '_') or an IP "
                         "address, not a URL (the transport and port are settings of their own)")

    @model_validator(mode="after")
    def _tls_for_tls(self) -> AuditRepository:
        if self.tls is not None and self.transport != "tls":
            raise ValueError(f"audit_repository.tls is set but the transport is {self.transport}")
        return self

    @property
    def effective_port(self) -> int:
        """The port messages go to."""
        return self.port or DEFAULT_PORTS[self.transport]

    @property
    def address(self) -> str:
        """``transport://host:port``, as logs and metrics name the repository."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}://{host}:{self.effective_port}"
