"""The service as a real subprocess (``python -m dicom_service serve``) for tests and benchmarks."""

from __future__ import annotations

import os
import secrets
import signal
import ssl
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.integration.orthanc import NODE_AET, ORTHANC_AET
from tests.integration.tools import (
    ProcessDied,
    free_port,
    log_tail,
    stop_process,
    wait_until,
)


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
    https_ca : Path or None
        With ``http.tls`` in ``settings``: the authority that signed the API's
        certificate (the client then speaks HTTPS and checks it).
    """

    workdir: Path
    destination_port: int | None = None
    stability_seconds: float = 1.0
    dicom_port: int = 0
    http_port: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    https_ca: Path | None = None
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
        return f"{'https' if self.https_ca else 'http'}://127.0.0.1:{self.http_port}"

    @property
    def client(self) -> httpx.Client:
        """An HTTP client with the bearer token."""
        if self._client is None:
            verify = ssl.create_default_context(cafile=str(self.https_ca)) if self.https_ca else True
            self._client = httpx.Client(base_url=self.url, timeout=30.0, verify=verify,
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
                              f"{log_tail(self.log_path)}")

    def stop(self, grace: float = 30.0) -> int | None:
        """SIGTERM (graceful: jobs go back to the queue), SIGKILL after ``grace`` s."""
        self._close_client()
        code = stop_process(self.proc, grace)
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
        return log_tail(self.log_path, lines)

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
