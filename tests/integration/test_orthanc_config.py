"""The Orthanc deployment files agree with the node and start as shipped."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from dicom_service.config import DicomSettings
from dicom_service.node.contexts import INPUT_CLASSES
from tests.integration.orthanc import (
    ORTHANC_DEPLOY_DIR,
    ORTHANC_LUA,
    ORTHANC_TEMPLATE,
    RESULT_MANUFACTURER,
    render_orthanc_config,
)
from tests.integration.tools import free_port, port_open, require_tool, wait_until


def _template() -> dict:
    return json.loads(ORTHANC_TEMPLATE.read_text(encoding="utf-8"))


def test_routing_sop_classes_are_the_node_input_classes() -> None:
    """The Lua filter sends exactly the classes the node accepts."""
    routing = _template()["DentalAiRouting"]
    assert sorted(routing["SopClasses"]) == sorted(cls.uid for cls in INPUT_CLASSES)
    assert routing["ResultManufacturer"] == RESULT_MANUFACTURER


def test_node_modality_matches_the_node_defaults() -> None:
    config = _template()
    entry = config["DicomModalities"][config["DentalAiRouting"]["Modality"]]
    defaults = DicomSettings()
    assert entry["AET"] == defaults.ae_title
    assert entry["Port"] == defaults.port
    assert config["LuaScripts"] == [ORTHANC_LUA.name]
    assert config["UnknownSopClassAccepted"] is True
    assert config["Mpeg4TransferSyntaxAccepted"] is True


def test_render_replaces_only_test_values(tmp_path: Path) -> None:
    path = render_orthanc_config(tmp_path, http_port=18042, dicom_port=14242, node_host="127.0.0.2",
                                 node_port=11999, stable_age=2, password="pw")
    rendered, template = json.loads(path.read_text()), _template()
    assert rendered["HttpPort"] == 18042 and rendered["DicomPort"] == 14242
    assert rendered["StableAge"] == 2
    entry = rendered["DicomModalities"]["dental-ai"]
    assert (entry["Host"], entry["Port"], entry["AET"]) == ("127.0.0.2", 11999, "DENTAL_AI")
    assert rendered["LuaScripts"] == [str(ORTHANC_LUA)]
    for key in ("AcceptedTransferSyntaxes", "DentalAiRouting", "DicomCheckCalledAet", "DicomAet"):
        assert rendered[key] == template[key]


@pytest.mark.integration
def test_orthanc_starts_on_the_shipped_files(tmp_path: Path) -> None:
    """A copy of deploy/orthanc with only storage and ports changed: Orthanc starts, loads
    the Lua script through its relative path and asks for the template's credentials."""
    exe = require_tool("Orthanc", "orthanc")
    folder = tmp_path / "etc-orthanc"
    shutil.copytree(ORTHANC_DEPLOY_DIR, folder)
    config = _template()
    http_port, dicom_port = free_port(), free_port()
    config.update({"StorageDirectory": str(tmp_path / "db"), "IndexDirectory": str(tmp_path / "db"),
                   "HttpPort": http_port, "DicomPort": dicom_port})
    (folder / "orthanc.json").write_text(json.dumps(config, indent=2))
    log_path = tmp_path / "orthanc.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([exe, "--verbose", str(folder / "orthanc.json")], stdout=log,
                                stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        def alive() -> None:
            if proc.poll() is not None:
                pytest.fail(f"Orthanc exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")

        wait_until(lambda: port_open("127.0.0.1", http_port) and port_open("127.0.0.1", dicom_port),
                   60, what="Orthanc ports", alive=alive)
        user, password = next(iter(config["RegisteredUsers"].items()))
        url = f"http://127.0.0.1:{http_port}/system"
        assert httpx.get(url, timeout=10).status_code == 401
        assert httpx.get(url, auth=(user, password), timeout=10).json()["DicomAet"] == "ORTHANC"
        assert f"Installing the Lua scripts from: {folder / ORTHANC_LUA.name}" in log_path.read_text()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def test_missing_tool_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """Never a silent skip in CI: with CI=true a missing tool fails the test."""
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        require_tool("no-such-dicom-tool", "nothing")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="required when CI=true"):
        require_tool("no-such-dicom-tool", "nothing")
