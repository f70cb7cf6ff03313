"""Debian's Orthanc, configured from ``deploy/orthanc``, for integration tests and benchmarks.

:class:`OrthancServer` runs ``Orthanc`` with a configuration generated from
``deploy/orthanc/orthanc.json`` (ports, storage, the node's address, StableAge and the
HTTP credentials replaced; the Lua routing script of ``deploy/orthanc`` loaded as is) and
waits until its REST API and DICOM port answer.
"""

from __future__ import annotations

import json
import secrets
import ssl
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.dicomcheck import in_ci
from tests.integration.tools import (
    ProcessDied,
    free_port,
    log_tail,
    port_open,
    require_tool,
    stop_process,
    wait_until,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
ORTHANC_DEPLOY_DIR = REPO_ROOT / "deploy" / "orthanc"
ORTHANC_TEMPLATE = ORTHANC_DEPLOY_DIR / "orthanc.json"
ORTHANC_LUA = ORTHANC_DEPLOY_DIR / "route-to-dental-ai.lua"

NODE_AET = "DENTAL_AI"
ORTHANC_AET = "ORTHANC"
ORTHANC_NODE_MODALITY = "dental-ai"
RESULT_MANUFACTURER = "Dental AI Node"

#: SOP Class UID → result kind (the names of ``destinations[].results``).
RESULT_KINDS: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.88.34": "sr",   # Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.88.33": "sr",   # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.66.4": "seg",   # Segmentation
    "1.2.840.10008.5.1.4.1.1.11.1": "pr",    # Grayscale Softcopy Presentation State
    "1.2.840.10008.5.1.4.1.1.11.2": "pr",    # Color Softcopy Presentation State
    "1.2.840.10008.5.1.4.1.1.7": "sc",       # Secondary Capture
    "1.2.840.10008.5.1.4.1.1.77.1.4.1": "video",  # Video Photographic
}


#: Orthanc's DICOMweb plugin (Debian package orthanc-dicomweb).
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def dicomweb_overrides() -> dict[str, Any]:
    """Orthanc configuration keys that load the DICOMweb plugin at ``/dicom-web``.

    Skips the test when the plugin is not installed, and fails it under ``CI=true``.
    """
    if not DICOMWEB_PLUGIN.is_file():
        message = f"{DICOMWEB_PLUGIN} (Debian package orthanc-dicomweb) is not installed"
        if in_ci():
            pytest.fail(f"{message}; it is required when CI=true")
        pytest.skip(message)
    return {"Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}


# --------------------------------------------------------------------------- Orthanc
def render_orthanc_config(
    target_dir: Path,
    *,
    http_port: int,
    dicom_port: int,
    node_host: str,
    node_port: int,
    node_aet: str = NODE_AET,
    stable_age: int = 1,
    username: str = "tester",
    password: str = "",
    template: Path = ORTHANC_TEMPLATE,
    overrides: dict[str, Any] | None = None,
    node_entry: dict[str, Any] | None = None,
) -> Path:
    """Write ``orthanc.json`` for a test from the deployment template.

    Only what a test must change is replaced: ports, storage folders (under
    ``target_dir``), the node's address, ``StableAge``, the HTTP user and the absolute
    path of the Lua script; everything else (accepted SOP classes and transfer
    syntaxes, called-AE check, the routing section) is the template's.

    Parameters
    ----------
    target_dir : Path
        Folder for the configuration and Orthanc's storage.
    http_port, dicom_port : int
        Orthanc's REST and DICOM ports.
    node_host, node_port, node_aet : str, int, str
        Where the dental AI node listens.
    stable_age : int
        Orthanc's ``StableAge`` in seconds (its quiet window before ``OnStableStudy``).
    username, password : str
        HTTP basic-auth user that replaces the template's placeholder.
    template : Path
        The JSON template.
    overrides : dict, optional
        Further top-level keys to replace.
    node_entry : dict, optional
        Further keys of the node's ``DicomModalities`` entry (``{"UseDicomTls": True}``).

    Returns
    -------
    Path
        The written configuration file.
    """
    config = json.loads(template.read_text(encoding="utf-8"))
    storage = target_dir / "orthanc-db"
    storage.mkdir(parents=True, exist_ok=True)
    modality = config["DentalAiRouting"]["Modality"]
    entry = dict(config["DicomModalities"][modality])
    entry.update({"AET": node_aet, "Host": node_host, "Port": int(node_port), **(node_entry or {})})
    config.update({
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": int(http_port),
        "DicomPort": int(dicom_port),
        "StableAge": int(stable_age),
        "RegisteredUsers": {username: password},
        "LuaScripts": [str(ORTHANC_LUA if Path(p).name == ORTHANC_LUA.name else p)
                       for p in config.get("LuaScripts", [])],
        "SaveJobs": False,
        "DicomModalities": {**config["DicomModalities"], modality: entry},
    })
    config.update(overrides or {})
    path = target_dir / "orthanc.json"
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return path


@dataclass
class OrthancServer:
    """A real Orthanc on free ports, storage in ``workdir``.

    Parameters
    ----------
    workdir : Path
        Configuration, storage and ``orthanc.log`` go here.
    node_port : int
        DICOM port of the dental AI node (may not be listening yet).
    node_host : str
    stable_age : int
        Orthanc's ``StableAge`` in seconds.
    http_port, dicom_port : int
        0 picks free ports; a fixed ``dicom_port`` lets a test start Orthanc later on a
        port the node already sends to.
    overrides, node_entry : dict
        As :func:`render_orthanc_config` (DICOM TLS: ``DicomTls*`` keys and
        ``{"UseDicomTls": True}``).
    https_ca : Path or None
        With ``SslEnabled`` in ``overrides``: the authority that signed Orthanc's
        certificate (the REST client then speaks HTTPS and checks it).
    """

    workdir: Path
    node_port: int
    node_host: str = "127.0.0.1"
    stable_age: int = 1
    http_port: int = 0
    dicom_port: int = 0
    username: str = "tester"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    overrides: dict[str, Any] = field(default_factory=dict)
    node_entry: dict[str, Any] = field(default_factory=dict)
    https_ca: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    config_path: Path | None = None

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.http_port = self.http_port or free_port()
        self.dicom_port = self.dicom_port or free_port()
        self.log_path = self.workdir / "orthanc.log"
        self._client: httpx.Client | None = None

    # ------------------------------------------------------------------ life cycle
    @property
    def url(self) -> str:
        """Base URL of the REST API."""
        return f"{'https' if self.https_ca else 'http'}://127.0.0.1:{self.http_port}"

    @property
    def client(self) -> httpx.Client:
        """An authenticated HTTP client (created on first use)."""
        if self._client is None:
            verify = ssl.create_default_context(cafile=str(self.https_ca)) if self.https_ca else True
            self._client = httpx.Client(base_url=self.url, auth=(self.username, self.password),
                                        timeout=30.0, verify=verify)
        return self._client

    def start(self, timeout: float = 60.0) -> OrthancServer:
        """Write the configuration, start Orthanc and wait until REST and DICOM answer."""
        exe = require_tool("Orthanc", "orthanc")
        self.config_path = render_orthanc_config(
            self.workdir, http_port=self.http_port, dicom_port=self.dicom_port,
            node_host=self.node_host, node_port=self.node_port, stable_age=self.stable_age,
            username=self.username, password=self.password, overrides=self.overrides,
            node_entry=self.node_entry,
        )
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([exe, "--verbose", str(self.config_path)], stdout=log,
                                         stderr=subprocess.STDOUT, cwd=self.workdir)
        wait_until(self._rest_ready, timeout, what=f"Orthanc REST API on {self.url}",
                   alive=self.check_alive)
        wait_until(lambda: port_open("127.0.0.1", self.dicom_port), timeout,
                   what=f"Orthanc DICOM port {self.dicom_port}", alive=self.check_alive)
        return self

    def _rest_ready(self) -> bool:
        try:
            return self.client.get("/system", timeout=2.0).status_code == 200
        except httpx.TransportError:
            return False

    def check_alive(self) -> None:
        """Raise :class:`ProcessDied` (with the log tail) if Orthanc has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise ProcessDied(f"Orthanc exited with {self.proc.returncode}:\n{log_tail(self.log_path)}")

    def stop(self, grace: float = 15.0) -> int | None:
        """Terminate Orthanc (kill after ``grace`` seconds); return its exit code."""
        if self._client is not None:
            self._client.close()
            self._client = None
        code = stop_process(self.proc, grace)
        self.proc = None
        return code

    def log_tail(self, lines: int = 60) -> str:
        """The last lines of Orthanc's log."""
        return log_tail(self.log_path, lines)

    # ------------------------------------------------------------------ REST helpers
    def get_json(self, path: str) -> Any:
        """GET a REST resource and decode its JSON (raises on HTTP errors)."""
        response = self.client.get(path)
        response.raise_for_status()
        return response.json()

    def study_id(self, study_uid: str) -> str | None:
        """Orthanc's ID of the study with this Study Instance UID, or None."""
        response = self.client.post("/tools/lookup", content=study_uid)
        response.raise_for_status()
        for item in response.json():
            if item.get("Type") == "Study":
                return str(item["ID"])
        return None

    def study_series(self, study_uid: str) -> list[dict[str, Any]]:
        """The series of a study (Orthanc's expanded series objects), or [] if unknown."""
        study = self.study_id(study_uid)
        if study is None:
            return []
        return list(self.get_json(f"/studies/{study}/series"))

    def instance_file(self, instance_id: str) -> bytes:
        """The stored DICOM file of an instance."""
        response = self.client.get(f"/instances/{instance_id}/file")
        response.raise_for_status()
        return response.content

    def instance_metadata(self, instance_id: str) -> dict[str, str]:
        """Every metadata item of an instance (``RemoteAET``, ``SopClassUid``, ...)."""
        return dict(self.get_json(f"/instances/{instance_id}/metadata?expand"))

    def jobs(self) -> list[dict[str, Any]]:
        """Orthanc's jobs, expanded."""
        return list(self.get_json("/jobs?expand"))


def result_instances(orthanc: OrthancServer, study_uid: str) -> dict[str, list[str]]:
    """Orthanc instance IDs of the node's results in a study, by result kind.

    Results are the instances of series whose Manufacturer is the node's.
    """
    found: dict[str, list[str]] = {}
    for series in orthanc.study_series(study_uid):
        if series["MainDicomTags"].get("Manufacturer") != RESULT_MANUFACTURER:
            continue
        for instance in series["Instances"]:
            sop_class = orthanc.instance_metadata(instance).get("SopClassUid", "")
            found.setdefault(RESULT_KINDS.get(sop_class, sop_class), []).append(instance)
    return found
