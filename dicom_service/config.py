"""One validated settings object, read from a YAML file and the environment.

Precedence, highest first: command-line flags (laid over by :func:`apply_overrides`),
environment variables (prefix ``DICOM_SERVICE_``, nested keys joined with ``__``, e.g.
``DICOM_SERVICE_DICOM__PORT=11113``), then the YAML file, then the defaults below. Unknown
keys are errors, so a typo is named instead of ignored; that includes a ``DICOM_SERVICE_*``
variable that names no setting (``DICOM_SERVICE_CONFIG``, the file, apart).

The object is built once by :func:`load_settings` and passed explicitly; nothing here
reads the environment at import time.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from dicom_service.atna.settings import AuditRepository
from dicom_service.destination_settings import (
    ALL_RESULT_KINDS,
    AnyDestination,
    Destination,
    DicomWebDestination,
    ResultKind,
    check_ae_title,
)
from dicom_service.domain import ConfigError, Precision, Workflow
from dicom_service.tls import NodeTls, ServerTls

__all__ = ["ALL_RESULT_KINDS", "AnyDestination", "DicomWebDestination", "Destination", "ResultKind", "Settings",
           "apply_overrides", "load_settings", "make_folder"]

log = logging.getLogger(__name__)

ENV_PREFIX = "DICOM_SERVICE_"
ENV_CONFIG_FILE = "DICOM_SERVICE_CONFIG"



class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DicomSettings(_Section):
    """The DICOM node (SCP side) and its association limits."""

    ae_title: str = "DENTAL_AI"
    bind_address: str = "0.0.0.0"
    port: int = Field(11112, ge=0, le=65535)
    accepted_calling_aets: list[str] = Field(
        default_factory=list,
        description="Calling AE titles allowed to associate; empty accepts every peer.",
    )
    max_associations: int = Field(10, ge=1, le=1000)
    acse_timeout: float = Field(30.0, gt=0)
    dimse_timeout: float = Field(30.0, gt=0)
    network_timeout: float = Field(60.0, gt=0)
    max_pdu: int = Field(0, ge=0, description="Largest PDU we accept; 0 means no limit.")
    tls: NodeTls | None = Field(None, description="A DICOM TLS listener on tls.port beside the plain one "
                                "(tls.py); null: no TLS.")
    plain: bool = Field(True, description="Listen without TLS on port; false: TLS only (needs tls).")

    _ae = field_validator("ae_title")(classmethod(lambda cls, v: check_ae_title(v)))

    @model_validator(mode="after")
    def _some_listener(self) -> "DicomSettings":
        if not self.plain and self.tls is None:
            raise ValueError("dicom.plain is false (TLS only) but dicom.tls is not set")
        if self.plain and self.tls is not None and self.tls.port == self.port != 0:
            raise ValueError(f"dicom.tls.port and dicom.port are both {self.port}: the TLS listener needs a port "
                             "of its own")
        return self

    @field_validator("accepted_calling_aets")
    @classmethod
    def _aets(cls, value: list[str]) -> list[str]:
        return [check_ae_title(v) for v in value]

    @field_validator("max_pdu")
    @classmethod
    def _pdu(cls, value: int) -> int:
        if value != 0 and value < 4096:
            raise ValueError("max_pdu must be 0 (no limit) or at least 4096 bytes")
        return value


#: Characters a person's name may not hold (PS3.5 6.2: PN has no backslash and no control
#: characters but ESC, which the node never writes itself).
_PN_FORBIDDEN = re.compile(r"[\\\x00-\x1f\x7f-\x9f\u2028\u2029]")
#: Labels the audit trail gives callers who are not named users: no user may be named so.
_RESERVED_ACTORS = re.compile(r"^(unauthenticated|unknown|auth disabled|service token \d+)$", re.IGNORECASE)
#: A bearer token: printable ASCII without spaces (RFC 6750's b64token and more).
_TOKEN = re.compile(r"^[\x21-\x7e]{16,}$")


def check_person_name(value: str) -> str:
    """Validate a person's name as a DICOM PN value of one component group: at most five
    ``^``-separated components (family, given, middle, prefix, suffix), 1 to 64
    characters and at most 64 bytes in UTF-8 (what a validator counts in an object written
    in UTF-8), no backslash or control character, not only carets or spaces."""
    text = value.strip()
    if not 1 <= len(text) <= 64 or len(text.encode()) > 64:
        raise ValueError("a person's name (DICOM PN) has 1 to 64 characters, and at most 64 bytes in UTF-8")
    if _PN_FORBIDDEN.search(text) or "=" in text:
        raise ValueError("a person's name may not contain '\\', '=' or control characters")
    if text.count("^") > 4:
        raise ValueError("a person's name has at most 5 components: Family^Given^Middle^Prefix^Suffix")
    if not text.replace("^", "").strip():
        raise ValueError("a person's name needs at least one non-empty component")
    if _RESERVED_ACTORS.match(text):
        raise ValueError(f"{text!r} is what the audit trail calls callers who are not named users: choose another "
                         "name")
    return text


class HttpUser(_Section):
    """A person who uses the API (a dentist): what they correct carries their name, and the
    audit trail says what they did."""

    name: str = Field(description="The person's name as DICOM writes it: Family^Given^Middle^Prefix^Suffix, "
                                  "e.g. 'Smith^Anna^^Dr'; recorded as the Content Creator's Name of their "
                                  "corrections and in the audit trail.")
    token: str = Field(description="Their own bearer token (at least 16 characters).")
    role: Literal["dentist", "admin"] = Field(
        "dentist", description="dentist: everything but removing studies and reading the audit trail; admin: "
                               "everything (as a service token).")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_person_name(value)


class HttpSettings(_Section):
    """The HTTP API."""

    bind_address: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    tokens: list[str] = Field(
        default_factory=list,
        description="Accepted service bearer tokens (no person's name: corrections made with one are not "
                    "attributed); empty: the service creates one in <storage>/api-token and accepts it.",
    )
    users: list[HttpUser] = Field(
        default_factory=list,
        description="Named people, each with a token of their own: their corrections carry their name.",
    )
    auth_disabled: bool = Field(
        False, description="Development switch: accept requests without a token (logged loudly)."
    )
    tls: ServerTls | None = Field(None, description="Serve the API over HTTPS with this certificate; null: HTTP.")

    @model_validator(mode="after")
    def _needs_token(self) -> "HttpSettings":
        if any(not _TOKEN.match(t) for t in self.tokens):
            raise ValueError("http.tokens: each token must have at least 16 characters, printable ASCII without "
                             "spaces")
        if any(not _TOKEN.match(u.token) for u in self.users):
            raise ValueError("http.users: each user's token must have at least 16 characters, printable ASCII "
                             "without spaces")
        every = [*self.tokens, *(u.token for u in self.users)]
        if len(set(every)) != len(every):
            raise ValueError("http.tokens and http.users: a token is given twice (each must tell its holder apart)")
        names = [u.name for u in self.users]
        if len(set(names)) != len(names):
            raise ValueError("http.users: a name is given twice")
        return self


class StorageSettings(_Section):
    """Where instances, results and the SQLite databases live."""

    path: Path = Path("./var")
    min_free_mb: int = Field(
        500, ge=0, description="Below this free space, stores fail with 0xA700 and associations are refused."
    )
    fsync: bool = Field(
        True,
        description="fsync each received instance and index commit before answering success; "
        "false survives a killed process but not a power loss.",
    )
    retention_days: float = Field(
        0.0, ge=0, description="Remove a study's instances and results once it has been quiet this many days, its "
        "jobs finished and its results delivered (retention.py); 0 keeps everything.")
    audit_days: float = Field(
        0.0, ge=0, description="Remove audit trail rows (audit.sqlite3) older than this many days, checked hourly; "
        "0 keeps them all. Audit rows outlive the studies they name.")


class RoutingMatch(_Section):
    """Conditions of a rule; each list matches if empty or if it contains the value."""

    sop_class: list[str] = Field(default_factory=list)
    modality: list[str] = Field(default_factory=list)
    calling_ae: list[str] = Field(default_factory=list)
    body_part: list[str] = Field(default_factory=list)


class RoutingRule(_Section):
    """First matching rule wins."""

    name: str
    match: RoutingMatch = RoutingMatch()
    workflow: Workflow


class RoutingSettings(_Section):
    """How studies become jobs."""

    stability_seconds: float = Field(10.0, ge=0, description="Quiet window before a study becomes a job.")
    rules: list[RoutingRule] | None = Field(
        None, description="Routing rules; null uses the built-in defaults (see routing.default_rules)."
    )
    default_workflow: Workflow = Workflow.IGNORE


class RetrySettings(_Section):
    """Retry policy for processing and dispatch jobs (exponential back-off)."""

    max_attempts: int = Field(4, ge=1, description="Attempts of a processing job before it is dead.")
    dispatch_max_attempts: int = Field(
        200, ge=1, description="Attempts to deliver a result before it is dead (the files are kept)."
    )
    backoff_initial: float = Field(2.0, gt=0)
    backoff_factor: float = Field(2.0, ge=1.0)
    backoff_max: float = Field(300.0, gt=0)


class WorkerSettings(_Section):
    """In-process workers."""

    processing: int = Field(1, ge=1, le=64, description="Workers for processing jobs and for restore jobs (a "
                                                         "clip enhanced again after a correction).")
    dispatch: int = Field(1, ge=1, le=64)
    corrections: int = Field(1, ge=1, le=16, description="Workers for doctor-in-the-loop corrections "
                             "(POST /corrections/tooth-masks), apart from the processing ones so that a "
                             "dentist does not wait behind auto-routed studies.")
    poll_seconds: float = Field(0.5, gt=0)
    malloc_mmap_threshold_kb: int = Field(
        0, ge=0, le=32768, description="Allocations of at least this many KiB get their own memory mapping, "
        "given back when freed (glibc's M_MMAP_THRESHOLD, fixed at start): frame-sized arrays no longer fragment "
        "the heap, so a video's memory stops growing with its length (256: a third less peak, 3 h of 640x480 "
        "admitted instead of 88 min on 23.5 GiB), but every large array is mapped afresh, which halved the "
        "video speed on a 2-core CPU. 0 (default): the C library's own (glibc: a dynamic threshold)")
    video_memory_mb: int = Field(
        0, ge=0, description="Memory one video job may plan for, MiB: a clip whose estimate (read from its header "
        "before decoding) is larger fails with a clear error instead of exhausting the machine; 0: automatic "
        "(75 % of the physical or cgroup memory limit, less what the service holds, shared by the processing workers)")


class ModelSettings(_Section):
    """Which vision runtime each workflow uses."""

    video: str = Field("learned", description="'learned' (tooth SAM + restoration bundles in <path>, the "
                       "default), 'learned-unstabilised', 'learned-sr2', 'learned-interp2', "
                       "'learned-sr2-interp2', 'learned-noprior' (restoration without the tooth prior), "
                       "'baseline' or 'baseline-unstabilised' (OpenCV only)")
    radiograph: str = Field("implants", description="'implants' (the trained bundle in <path>/implants, the "
                            "default) or 'baseline' (classical detector, no torch needed)")
    path: Path | None = Field(None, description="Folder of bundled models; null: the repository's models/.")
    precision: Precision = Field(
        "auto", description="Compute precision of the learned video models: 'auto' (float16 on CUDA, bfloat16 on "
        "a CPU with native bfloat16 (AVX512-BF16/AMX), else float32), 'float32', 'bfloat16', or 'float16' (CUDA only)")
    compile: bool = Field(
        False, description="torch.compile the restoration network (faster frames after a one-off compilation of "
        "about a minute per frame size, paid by the first study of that size; on the CPU it needs a C++ compiler)")
    stabilisation_seconds: float = Field(
        1.0, gt=0, le=10, description="Camera-path smoothing length of the video stabilisation, seconds: longer "
        "removes more shake but follows deliberate camera moves later and moves more border into view")
    segment_every: int = Field(
        1, ge=1, le=30, description="Run the tooth model of the learned video runtimes on every n-th frame (and "
        "on scene cuts) and carry its mask to the frames between by optical flow: 1 (the default) segments every "
        "frame; 2 halves the tooth model's work (the slowest stage of the stream on a GPU) for a small loss of "
        "mask accuracy (README, 'Tooth masks on keyframes')")


class Settings(BaseSettings):
    """All settings of the service."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True
    )

    dicom: DicomSettings = DicomSettings()
    http: HttpSettings = HttpSettings()
    storage: StorageSettings = StorageSettings()
    routing: RoutingSettings = RoutingSettings()
    retry: RetrySettings = RetrySettings()
    destinations: list[AnyDestination] = Field(default_factory=list)
    workers: WorkerSettings = WorkerSettings()
    models: ModelSettings = ModelSettings()
    audit_repository: AuditRepository | None = Field(
        None, description="Send the audit trail as DICOM audit messages over syslog to this IHE ATNA audit record "
        "repository (dicom_service.atna); null: the trail stays in <storage>/audit.sqlite3 only.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("destinations")
    @classmethod
    def _unique_names(cls, value: list[Destination | DicomWebDestination]) -> list[Destination | DicomWebDestination]:
        names = [d.name for d in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"destination names must be unique; repeated: {', '.join(dupes)}")
        return value

    @model_validator(mode="after")
    def _http_port_of_its_own(self) -> "Settings":
        # the two DICOM listeners' ports are checked by DicomSettings
        dicom = {"dicom.port": self.dicom.port if self.dicom.plain else 0,
                 "dicom.tls.port": self.dicom.tls.port if self.dicom.tls is not None else 0}
        for key, port in dicom.items():
            if port and port == self.http.port:
                raise ValueError(f"{key} and http.port are both {port}: each listener needs a port of its own")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file arrives as init kwargs; the environment overrides it.
        return (env_settings, init_settings)


#: Tags of the destination union, which pydantic puts in error locations (not settings).
_UNION_TAGS = frozenset({"dimse", "dicomweb"})


def _format_errors(err: ValidationError, section: str = "") -> str:
    lines = []
    for item in err.errors():
        path = ([section] if section else []) + [str(p) for p in item["loc"] if p not in _UNION_TAGS]
        key = ".".join(path) or "(top level)"
        lines.append(f"{key}: {item['msg']}")
    return "; ".join(lines)


def _environment_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """The ``DICOM_SERVICE_*`` variables that carry settings, each with the top-level key it
    sets (``DICOM_SERVICE_DICOM__PORT`` → ``dicom``); matched without regard to case, as
    pydantic-settings reads them. ``DICOM_SERVICE_CONFIG`` names the file and is left out."""
    found = {}
    for name in environ:
        upper = name.upper()
        if upper.startswith(ENV_PREFIX) and upper != ENV_CONFIG_FILE:
            found[name] = upper[len(ENV_PREFIX):].split("__", 1)[0].lower()
    return found


def _check_environment(environ: Mapping[str, str]) -> None:
    """Refuse ``DICOM_SERVICE_*`` variables that name no setting (pydantic-settings ignores them).

    Raises
    ------
    ConfigError
        Naming each such variable, e.g. ``DICOM_SERVICE_DICOM_PORT`` (one underscore).
    """
    unknown = sorted(name for name, key in _environment_settings(environ).items() if key not in Settings.model_fields)
    if unknown:
        raise ConfigError(
            f"invalid configuration: unknown environment variable(s) {', '.join(unknown)}: the name after "
            f"{ENV_PREFIX} must be a setting ({', '.join(Settings.model_fields)}), nested keys joined with "
            f"'__' (e.g. {ENV_PREFIX}DICOM__PORT); {ENV_CONFIG_FILE} names the YAML file")


def _environment_error(exc: SettingsError, environ: Mapping[str, str]) -> ConfigError:
    """A :class:`ConfigError` naming the variables of the setting whose value pydantic-settings
    could not parse (a section or list must be JSON: ``DICOM_SERVICE_DESTINATIONS='[{...}]'``)."""
    match = re.search(r'field "(\w+)"', str(exc))
    names = sorted(n for n, key in _environment_settings(environ).items() if match and key == match.group(1))
    if not names:
        return ConfigError(f"invalid configuration: {exc}")
    return ConfigError(f"invalid configuration: environment variable {' or '.join(names)}: not valid JSON "
                       f"({exc.__cause__ or exc})")


def load_settings(path: Path | str | None = None, **overrides: Any) -> Settings:
    """Build and validate the settings.

    Parameters
    ----------
    path : Path or str, optional
        YAML file. When None, ``$DICOM_SERVICE_CONFIG`` is used if set; with neither,
        only the environment and defaults apply.
    **overrides
        Top-level values that replace those of the file (used by tests); the environment
        still wins over them (the command line's flags go through :func:`apply_overrides`).

    Raises
    ------
    ConfigError
        With every bad key named, e.g. ``"dicom.port: Input should be less than or
        equal to 65535"``, or the environment variable that is unknown or not valid JSON.
    """
    if path is None and os.environ.get(ENV_CONFIG_FILE):
        path = os.environ[ENV_CONFIG_FILE]
    data: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        try:
            loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"configuration file not found: {file}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"configuration file {file} is not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"configuration file {file} must hold a mapping at the top level")
        data.update(loaded)
    data.update(overrides)
    _check_environment(os.environ)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {_format_errors(exc)}") from None
    except SettingsError as exc:
        raise _environment_error(exc, os.environ) from None


def apply_overrides(settings: Settings, changes: Mapping[str, Mapping[str, Any]]) -> Settings:
    """``settings`` with ``changes`` laid over them, each changed section validated again.

    The command line's flags (``--data``, ``--dicom-port``, ``--http-port``) use this, so
    they win over the environment and the file alike.

    Parameters
    ----------
    settings : Settings
        Loaded by :func:`load_settings`.
    changes : mapping
        Section name → {key: value}, e.g. ``{"dicom": {"port": 11113}}``.

    Raises
    ------
    ConfigError
        Naming the key, e.g. ``"dicom.port: Input should be less than or equal to 65535"``.
    """
    sections: dict[str, BaseModel] = {}
    for name, values in changes.items():
        current: BaseModel = getattr(settings, name)
        try:
            sections[name] = type(current).model_validate({**current.model_dump(), **values})
        except ValidationError as exc:
            raise ConfigError(f"invalid configuration: {_format_errors(exc, name)}") from None
    return settings.model_copy(update=sections) if sections else settings


def make_folder(path: Path | str, key: str) -> Path:
    """Create the folder ``path`` and its parents where missing; ``key`` names it in errors.

    Used at the start (``storage.path``, an output folder), before any model loads.

    Raises
    ------
    ConfigError
        When a file is in the way or the folder cannot be created, e.g.
        ``"storage.path: cannot create the folder /data/x/var: /data/x is a file"``.
    """
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocking = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), folder)
        raise ConfigError(f"{key}: cannot create the folder {folder}: {blocking} is a file") from None
    except OSError as exc:
        raise ConfigError(f"{key}: cannot create the folder {folder}: {exc.strerror or exc}") from None
    return folder
