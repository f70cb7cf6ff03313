"""Helpers for integration tests and benchmarks: real Orthanc, real DCMTK, the real service.

Everything here starts real processes on localhost with free ports and waits for them by
polling with deadlines (socket connect attempts, HTTP probes, waits on an
:class:`threading.Event`), never by sleeping a fixed time.

* :class:`OrthancServer` runs Debian's ``Orthanc`` with a configuration generated from
  ``deploy/orthanc/orthanc.json`` (ports, storage, the node's address, StableAge and the
  HTTP credentials replaced; the Lua routing script of ``deploy/orthanc`` loaded as is).
* :class:`NodeProcess` runs ``python -m dicom_service serve`` with a generated YAML file.
* :func:`storescu` and :func:`echoscu` wrap DCMTK (with ``TCP_NODELAY=1``); storescu
  groups files by transfer syntax so videos and JPEG go out unconverted, and counts the
  success responses (its exit code alone misses failures with some options).
* :func:`require_tool` skips a test when a tool is missing, except with ``CI=true``,
  where it fails it: CI must never lose these tests silently.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml

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

T = TypeVar("T")


class ProcessDied(RuntimeError):
    """A server process exited while we waited for it; the message holds its log tail."""


# --------------------------------------------------------------------------- small tools
def in_ci() -> bool:
    """True when the environment says ``CI=true`` (missing tools then fail, never skip)."""
    return os.environ.get("CI", "").strip().lower() == "true"


def require_tool(name: str, package: str) -> str:
    """Absolute path of an executable, or skip the test (fail it under ``CI=true``).

    Parameters
    ----------
    name : str
        Executable name looked up on ``PATH`` (``/usr/sbin`` included).
    package : str
        Debian package that provides it, for the message.
    """
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    found = shutil.which(name, path=search)
    if found is None:
        message = f"{name} (Debian package {package}) is not installed"
        if in_ci():
            pytest.fail(f"{message}; it is required when CI=true")
        pytest.skip(message)
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    probe: Callable[[], T | None],
    timeout: float,
    *,
    interval: float = 0.1,
    what: str = "condition",
    alive: Callable[[], None] | None = None,
) -> T:
    """Call ``probe`` until it returns a truthy value; return that value.

    Parameters
    ----------
    probe : callable
        Returns a falsy value while the condition does not hold.
    timeout : float
        Seconds before :class:`TimeoutError`.
    interval : float
        Seconds between probes (an :class:`threading.Event` wait, not a sleep).
    what : str
        Description used in the timeout message.
    alive : callable, optional
        Called before each probe; raises (e.g. :class:`ProcessDied`) to stop early.
    """
    pause = threading.Event()
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        if alive is not None:
            alive()
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")
        pause.wait(interval)


def port_open(host: str, port: int) -> bool:
    """True if a TCP connection to ``host:port`` is accepted right now."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _log_tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def dcmtk_env() -> dict[str, str]:
    """Environment for DCMTK tools: ``TCP_NODELAY=1`` (no 40 ms delayed-ACK stalls)."""
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    return env


#: DCMTK storescu option that proposes a file's transfer syntax (``-R`` proposes only it).
STORESCU_SYNTAX_OPTIONS: dict[str, tuple[str, ...]] = {
    "1.2.840.10008.1.2": (), "1.2.840.10008.1.2.1": (), "1.2.840.10008.1.2.2": (),
    "1.2.840.10008.1.2.1.99": ("-xd",), "1.2.840.10008.1.2.5": ("-xr",),
    "1.2.840.10008.1.2.4.50": ("-xy",), "1.2.840.10008.1.2.4.51": ("-xx",),
    "1.2.840.10008.1.2.4.70": ("-xs",), "1.2.840.10008.1.2.4.80": ("-xt",),
    "1.2.840.10008.1.2.4.81": ("-xu",), "1.2.840.10008.1.2.4.90": ("-xv",),
    "1.2.840.10008.1.2.4.91": ("-xw",), "1.2.840.10008.1.2.4.100": ("-xm",),
    "1.2.840.10008.1.2.4.101": ("-xh",), "1.2.840.10008.1.2.4.102": ("-xn",),
    "1.2.840.10008.1.2.4.103": ("-xl",), "1.2.840.10008.1.2.4.104": ("-x2",),
    "1.2.840.10008.1.2.4.105": ("-x3",), "1.2.840.10008.1.2.4.106": ("-xo",),
    "1.2.840.10008.1.2.4.107": ("-x4",), "1.2.840.10008.1.2.4.108": ("-x5",),
}

_STORED = re.compile(r"Received Store Response \((Success|Warning)")


class StoreFailed(RuntimeError):
    """storescu did not get a success (or warning) status for every file."""


def _expand(files: Sequence[Path] | Path) -> list[Path]:
    targets = [files] if isinstance(files, Path) else list(files)
    out: list[Path] = []
    for target in targets:
        out.extend(sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target])
    return out


def storescu(
    files: Sequence[Path] | Path,
    port: int,
    *,
    host: str = "127.0.0.1",
    called_aet: str,
    calling_aet: str = "STORESCU",
    timeout: float = 300.0,
) -> list[subprocess.CompletedProcess[str]]:
    """Send DICOM files (folders are expanded) with DCMTK ``storescu``.

    Files are grouped by transfer syntax and each group goes over one association with
    ``-R`` and the option that proposes that syntax (``-xn`` for H.264 High Profile
    4.1, ...), so videos and JPEG photos are sent as they are, not converted.

    Returns
    -------
    list of CompletedProcess
        One per association.

    Raises
    ------
    StoreFailed
        A storescu run exited non-zero, or fewer success/warning responses than files
        came back (storescu's exit code alone misses failures in some modes).
    ValueError
        A file's transfer syntax has no storescu option.
    """
    from pydicom.filereader import read_file_meta_info

    exe = require_tool("storescu", "dcmtk")
    groups: dict[tuple[str, ...], list[Path]] = {}
    for path in _expand(files):
        syntax = str(read_file_meta_info(path).TransferSyntaxUID)
        if syntax not in STORESCU_SYNTAX_OPTIONS:
            raise ValueError(f"no storescu option proposes transfer syntax {syntax} ({path.name})")
        groups.setdefault(STORESCU_SYNTAX_OPTIONS[syntax], []).append(path)
    runs = []
    for options, paths in groups.items():
        args = [exe, "-v", "-aet", calling_aet, "-aec", called_aet, "-R", *options, host, str(port),
                *[str(p) for p in paths]]
        proc = subprocess.run(args, env=dcmtk_env(), capture_output=True, text=True,
                              timeout=timeout, check=False)
        stored = len(_STORED.findall(proc.stdout + proc.stderr))
        if proc.returncode != 0 or stored != len(paths):
            raise StoreFailed(f"storescu stored {stored} of {len(paths)} files (exit "
                              f"{proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
        runs.append(proc)
    return runs


def echoscu(port: int, *, host: str = "127.0.0.1", called_aet: str, calling_aet: str = "ECHOSCU",
            timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """C-ECHO with DCMTK ``echoscu``; returns the finished process (exit code 0 = success)."""
    exe = require_tool("echoscu", "dcmtk")
    args = [exe, "-aet", calling_aet, "-aec", called_aet, host, str(port)]
    return subprocess.run(args, env=dcmtk_env(), capture_output=True, text=True, timeout=timeout,
                          check=False)


def _stop_process(proc: subprocess.Popen[bytes] | None, grace: float) -> int | None:
    """Terminate, then kill after ``grace`` seconds; return the exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
    return proc.returncode


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
    entry.update({"AET": node_aet, "Host": node_host, "Port": int(node_port)})
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
    """

    workdir: Path
    node_port: int
    node_host: str = "127.0.0.1"
    stable_age: int = 1
    http_port: int = 0
    dicom_port: int = 0
    username: str = "tester"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
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
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def client(self) -> httpx.Client:
        """An authenticated HTTP client (created on first use)."""
        if self._client is None:
            self._client = httpx.Client(base_url=self.url, auth=(self.username, self.password),
                                        timeout=30.0)
        return self._client

    def start(self, timeout: float = 60.0) -> OrthancServer:
        """Write the configuration, start Orthanc and wait until REST and DICOM answer."""
        exe = require_tool("Orthanc", "orthanc")
        self.config_path = render_orthanc_config(
            self.workdir, http_port=self.http_port, dicom_port=self.dicom_port,
            node_host=self.node_host, node_port=self.node_port, stable_age=self.stable_age,
            username=self.username, password=self.password,
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
            raise ProcessDied(f"Orthanc exited with {self.proc.returncode}:\n{_log_tail(self.log_path)}")

    def stop(self, grace: float = 15.0) -> int | None:
        """Terminate Orthanc (kill after ``grace`` seconds); return its exit code."""
        if self._client is not None:
            self._client.close()
            self._client = None
        code = _stop_process(self.proc, grace)
        self.proc = None
        return code

    def log_tail(self, lines: int = 60) -> str:
        """The last lines of Orthanc's log."""
        return _log_tail(self.log_path, lines)

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


# --------------------------------------------------------------------------- our service
@dataclass
class NodeProcess:
    """``python -m dicom_service serve`` as a real subprocess.

    Parameters
    ----------
    workdir : Path
        ``config.yaml``, ``node.log`` and (by default) ``storage.path`` go here.
    destination_port : int or None
        DICOM port of the Orthanc that receives results (None: no destination).
    stability_seconds : float
        ``routing.stability_seconds``.
    dicom_port, http_port : int
        0 picks free ports (kept across restarts of the same object).
    settings : dict
        Top-level sections merged over the generated ones (e.g. ``{"storage":
        {"fsync": False}}``).
    """

    workdir: Path
    destination_port: int | None = None
    stability_seconds: float = 1.0
    dicom_port: int = 0
    http_port: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    token: str = field(default_factory=lambda: "itest-" + secrets.token_hex(16))
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.dicom_port = self.dicom_port or free_port()
        self.http_port = self.http_port or free_port()
        self.storage_path = self.workdir / "var"
        self.config_path = self.workdir / "config.yaml"
        self.log_path = self.workdir / "node.log"
        self._client: httpx.Client | None = None

    def config(self) -> dict[str, Any]:
        """The settings written to ``config.yaml``."""
        base: dict[str, Any] = {
            "dicom": {"ae_title": NODE_AET, "bind_address": "127.0.0.1", "port": self.dicom_port,
                      "accepted_calling_aets": [], "max_associations": 25},
            "http": {"bind_address": "127.0.0.1", "port": self.http_port, "tokens": [self.token]},
            "storage": {"path": str(self.storage_path), "min_free_mb": 0, "fsync": True},
            "routing": {"stability_seconds": self.stability_seconds},
            "retry": {"backoff_initial": 0.5, "backoff_factor": 2.0, "backoff_max": 2.0},
            "workers": {"processing": 1, "dispatch": 1, "poll_seconds": 0.1},
            "device": "cpu",
            "log_level": "INFO",
            "destinations": [],
        }
        if self.destination_port is not None:
            base["destinations"] = [{
                "name": "orthanc", "ae_title": ORTHANC_AET, "host": "127.0.0.1",
                "port": self.destination_port,
            }]
        for key, value in self.settings.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                base[key] = {**base[key], **value}
            else:
                base[key] = value
        return base

    @property
    def url(self) -> str:
        """Base URL of the HTTP API."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def client(self) -> httpx.Client:
        """An HTTP client with the bearer token."""
        if self._client is None:
            self._client = httpx.Client(base_url=self.url, timeout=30.0,
                                        headers={"Authorization": f"Bearer {self.token}"})
        return self._client

    def start(self, timeout: float = 120.0) -> NodeProcess:
        """Write ``config.yaml``, start the service and wait for ``/readyz`` = 200."""
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False), encoding="utf-8")
        env = dict(os.environ)
        env.pop("DICOM_SERVICE_CONFIG", None)
        for key in [k for k in env if k.startswith("DICOM_SERVICE_")]:
            env.pop(key)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dicom_service", "serve", "--config", str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, env=env,
            )
        wait_until(self._ready, timeout, what=f"dicom-service /readyz on {self.url}",
                   alive=self.check_alive)
        return self

    def _ready(self) -> bool:
        try:
            return self.client.get("/readyz", timeout=2.0).status_code == 200
        except httpx.TransportError:
            return False

    def check_alive(self) -> None:
        """Raise :class:`ProcessDied` (with the log tail) if the service has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise ProcessDied(f"dicom-service exited with {self.proc.returncode}:\n"
                              f"{_log_tail(self.log_path)}")

    def stop(self, grace: float = 30.0) -> int | None:
        """SIGTERM (graceful: jobs go back to the queue), SIGKILL after ``grace`` s."""
        self._close_client()
        code = _stop_process(self.proc, grace)
        self.proc = None
        return code

    def kill9(self) -> None:
        """``kill -9`` the service: no cleanup of any kind runs."""
        self._close_client()
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None

    def _close_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def log_tail(self, lines: int = 80) -> str:
        """The last lines of the service's log."""
        return _log_tail(self.log_path, lines)

    # ------------------------------------------------------------------ API helpers
    def jobs(self, **params: Any) -> list[dict[str, Any]]:
        """``GET /jobs`` with query parameters (e.g. ``kind="dispatch"``)."""
        response = self.client.get("/jobs", params={"limit": 1000, **params})
        response.raise_for_status()
        return list(response.json())

    def job(self, job_id: int) -> dict[str, Any]:
        """``GET /jobs/{id}``."""
        response = self.client.get(f"/jobs/{job_id}")
        response.raise_for_status()
        return dict(response.json())
