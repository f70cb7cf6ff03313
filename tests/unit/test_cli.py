"""The console script: serve starts everything, Ctrl-C stops it cleanly; config errors are clear."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import TEST_TOKEN
from tests.dicomnet import echo_ok


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"service exited early: {proc.stderr.read()}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            try:  # not listening yet: wait a moment on the process itself, then poll again
                proc.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                pass
    raise AssertionError("service not ready in time")


def test_serve_then_ctrl_c_shuts_down_cleanly(tmp_path: Path) -> None:
    dicom_port, http_port = _free_port(), _free_port()
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "dicom": {"port": dicom_port, "bind_address": "127.0.0.1"},
        "http": {"port": http_port, "tokens": [TEST_TOKEN]},
        "storage": {"path": str(tmp_path / "var"), "min_free_mb": 0},
    }))
    proc = subprocess.Popen([sys.executable, "-m", "dicom_service", "serve", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_ready(f"http://127.0.0.1:{http_port}/readyz", proc)
        assert echo_ok(dicom_port)
        jobs = httpx.get(f"http://127.0.0.1:{http_port}/jobs",
                         headers={"Authorization": f"Bearer {TEST_TOKEN}"}, timeout=5)
        assert jobs.status_code == 200 and jobs.json() == []
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read()
    assert "service stopped" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(("yaml_text", "message"), [
    ("dicom:\n  port: 99999\n", "dicom.port"),
    # a precision the device cannot run is refused before anything listens
    ("device: cpu\nmodels:\n  precision: float16\n", "models.precision: float16 needs a CUDA device"),
])
def test_bad_config_names_the_key_and_exits_2(tmp_path: Path, yaml_text: str, message: str) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml_text + f"storage:\n  path: {tmp_path / 'var'}\n")
    proc = subprocess.run([sys.executable, "-m", "dicom_service", "serve", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_compile_without_a_cpu_compiler_exits_2(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "CXX"} | {"PATH": str(tmp_path / "empty")}
    config = tmp_path / "c.yaml"
    config.write_text(f"device: cpu\nmodels:\n  compile: true\nstorage:\n  path: {tmp_path / 'var'}\n")
    proc = subprocess.run([sys.executable, "-m", "dicom_service", "serve", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2
    assert "models.compile" in proc.stderr and "C++ compiler" in proc.stderr and "Traceback" not in proc.stderr


def test_conformance_table_lists_every_input_class() -> None:
    proc = subprocess.run([sys.executable, "-m", "dicom_service", "conformance"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "Video Photographic Image Storage" in proc.stdout
    assert "1.2.840.10008.1.2.4.102" in proc.stdout


def test_unknown_runtime_name_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"models:\n  radiograph: magic\nstorage:\n  path: {tmp_path / 'var'}\n")
    proc = subprocess.run([sys.executable, "-m", "dicom_service", "serve", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "models.radiograph" in proc.stderr and "baseline" in proc.stderr


def test_phantoms_command_writes_a_coco_data_set(tmp_path: Path) -> None:
    from dicom_service.training.coco import load_coco

    proc = subprocess.run([sys.executable, "-m", "dicom_service", "phantoms", "implants", "--out",
                           str(tmp_path / "ds"), "--periapical", "3", "--panoramic", "0", "--seed", "7",
                           "--no-progress"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    dataset = load_coco(tmp_path / "ds" / "annotations.json")
    assert len(dataset.images) == 3


def test_phantoms_video_command_in_two_processes_and_a_bad_worker_count(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "dicom_service", "phantoms", "video", "--train", "2", "--val", "0", "--test", "1",
            "--frames", "2", "--height", "48", "--width", "64", "--no-progress"]
    proc = subprocess.run([*base, "--out", str(tmp_path / "ds"), "--workers", "2"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["clips"] == 3 and len(list((tmp_path / "ds" / "train").glob("*.npz"))) == 2
    bad = subprocess.run([*base, "--out", str(tmp_path / "bad"), "--workers", "0"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "--workers must be >= 1" in bad.stderr and "Traceback" not in bad.stderr


def test_learned_runtime_without_its_bundle_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"models:\n  radiograph: implants\n  path: {tmp_path / 'models'}\n"
                      f"storage:\n  path: {tmp_path / 'var'}\n")
    proc = subprocess.run([sys.executable, "-m", "dicom_service", "serve", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "no trained bundle" in proc.stderr
