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


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_serve_then_ctrl_c_or_sigterm_shuts_down_cleanly(tmp_path: Path, stop: signal.Signals) -> None:
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
        proc.send_signal(stop)
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
    # TLS files are loaded before anything listens
    ("dicom:\n  tls:\n    certificate: /nonexistent/node.pem\n    private_key: /nonexistent/node.key\n",
     "dicom.tls.certificate: no such file: /nonexistent/node.pem"),
    ("dicom:\n  plain: false\n", "dicom.plain is false (TLS only) but dicom.tls is not set"),
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


def _serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``serve`` expected to stop at a start check (a failure to stop would time out)."""
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"dicom": {"bind_address": "127.0.0.1"}, "http": {"tokens": [TEST_TOKEN]},
                                      "storage": {"path": str(tmp_path / "var"), "min_free_mb": 0}}))
    return subprocess.run([sys.executable, "-m", "dicom_service", "serve", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize(("flags", "message"), [
    (["--dicom-port", "99999"], "dicom.port: Input should be less than or equal to 65535"),
    (["--dicom-port", "-5"], "dicom.port: Input should be greater than or equal to 0"),
    (["--http-port", "99999"], "http.port: Input should be less than or equal to 65535"),
])
def test_bad_port_flag_is_a_config_error(tmp_path: Path, flags: list[str], message: str) -> None:
    proc = _serve(tmp_path, *flags)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert "vision runtimes" not in proc.stderr  # refused before any model loads


@pytest.mark.parametrize("source", ["environment", "file"])
def test_data_flag_wins_over_environment_and_file(tmp_path: Path, source: str) -> None:
    """storage.path names a file in the environment or the file, --data a usable folder: the
    storage check passes, and the start stops at the next check (an HTTP port in use)."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    env = dict(os.environ)
    args = ["--data", str(tmp_path / "flag-var")]
    if source == "environment":
        env["DICOM_SERVICE_STORAGE__PATH"] = str(blocker)
    else:
        config = tmp_path / "file.yaml"
        config.write_text(f"storage:\n  path: {blocker}\nhttp:\n  tokens: [{TEST_TOKEN}]\n")
        args += ["--config", str(config)]  # the last --config wins
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        proc = _serve(tmp_path, *args, "--http-port", str(busy.getsockname()[1]), env=env)
    assert proc.returncode == 2, proc.stderr
    assert "http.port" in proc.stderr and "storage.path" not in proc.stderr and "Traceback" not in proc.stderr
    assert (tmp_path / "flag-var").is_dir()


@pytest.mark.parametrize("flag", ["--dicom-port", "--http-port"])
def test_port_in_use_is_named_and_exits_2(tmp_path: Path, flag: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        other = "--http-port" if flag == "--dicom-port" else "--dicom-port"
        proc = _serve(tmp_path, flag, str(port), other, "0")
    key = flag.removeprefix("--").replace("-", ".")  # dicom.port, http.port
    assert proc.returncode == 2
    assert f"{key}: cannot listen on 127.0.0.1:{port}" in proc.stderr and "Address already in use" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("under", [False, True])
def test_storage_path_that_is_a_file_exits_2(tmp_path: Path, under: bool) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    proc = _serve(tmp_path, "--data", str(blocker / "var" if under else blocker))
    assert proc.returncode == 2
    assert f"storage.path: cannot create the folder {blocker}" in proc.stderr and f"{blocker} is a file" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(("name", "value", "message"), [
    ("DICOM_SERVICE_DESTINATIONS", "[{", "environment variable DICOM_SERVICE_DESTINATIONS: not valid JSON"),
    ("DICOM_SERVICE_DICOM", "notjson", "environment variable DICOM_SERVICE_DICOM: not valid JSON"),
    ("DICOM_SERVICE_FOO", "1", "unknown environment variable(s) DICOM_SERVICE_FOO"),
    ("DICOM_SERVICE_DICOM_PORT", "1", "unknown environment variable(s) DICOM_SERVICE_DICOM_PORT"),
])
def test_bad_environment_variable_is_named_and_exits_2(tmp_path: Path, name: str, value: str, message: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("DICOM_SERVICE_")} | {name: value}
    proc = subprocess.run([sys.executable, "-m", "dicom_service", "echo"], capture_output=True, text=True,
                          timeout=60, env=env, cwd=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_echo_without_destinations_says_so(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("DICOM_SERVICE_")}
    proc = subprocess.run([sys.executable, "-m", "dicom_service", "echo"], capture_output=True, text=True,
                          timeout=60, env=env, cwd=tmp_path)
    assert proc.returncode == 0
    assert "no destinations configured" in proc.stdout


def test_echo_reports_every_destination_even_after_a_bad_one(tmp_path: Path) -> None:
    """A destination whose TLS file is missing is one FAILED line; the others are still checked."""
    from tests.integration.tools import free_port

    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("DICOM_SERVICE_")}
    config = tmp_path / "c.yaml"
    config.write_text(
        "destinations:\n"
        f"  - {{name: broken, ae_title: PACS, host: 127.0.0.1, port: {free_port()},"
        f" tls: {{ca_certificates: {tmp_path / 'missing.pem'}}}}}\n"
        f"  - {{name: down, ae_title: PACS, host: 127.0.0.1, port: {free_port()}}}\n"
        f"  - {{name: web, url: 'http://127.0.0.1:{free_port()}/dicom-web', token: tok-0123456789}}\n")
    proc = subprocess.run([sys.executable, "-m", "dicom_service", "echo", "--config", str(config)],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("broken: FAILED (C-ECHO, TLS): destinations[broken].tls.ca_certificates: no such file")
    assert lines[1:] == ["down: FAILED (C-ECHO)", "web: FAILED (QIDO-RS)"]
    assert "Traceback" not in proc.stderr and "tok-0123456789" not in proc.stderr + proc.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["implants", "--periapical", "-1"], "scene counts must be >= 0"),
    (["implants", "--panoramic", "-2"], "scene counts must be >= 0"),
    (["video", "--train", "-1"], "clip counts must be >= 0"),
    (["video", "--train", "1", "--val", "0", "--test", "0", "--frames", "0"], "frames must be >= 2"),
    (["video", "--train", "1", "--val", "0", "--test", "0", "--height", "5"], "height and width must be >= 32"),
    (["video", "--train", "1", "--val", "0", "--test", "0", "--height", "-5"], "height and width must be >= 32"),
])
def test_phantoms_bad_arguments_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "dicom_service", "phantoms", *args, "--out", str(tmp_path / "ds"),
                           "--no-progress"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(("kind", "under"), [("implants", False), ("video", True)])
def test_phantoms_out_that_is_a_file_exits_2(tmp_path: Path, kind: str, under: bool) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    out = blocker / "ds" if under else blocker
    proc = subprocess.run([sys.executable, "-m", "dicom_service", "phantoms", kind, "--out", str(out),
                           "--no-progress"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"--out: cannot create the folder {out}: {blocker} is a file" in proc.stderr
    assert "Traceback" not in proc.stderr
