"""Independent checks of written DICOM files, shared by the writer tests.

``run_dciodvfy`` runs dicom3tools' IOD validator and returns its error lines;
``require_tool`` skips a test when an external tool is missing, except with
``CI=true`` in the environment, where it fails the test (CI must not silently lose
a check).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def require_tool(name: str) -> str:
    """Return the path of executable ``name``; skip (or fail when ``CI=true``) if absent."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}, and it is required when CI=true")
        pytest.skip(message)
    return path


def run_dciodvfy(path: str | Path) -> list[str]:
    """Validate a DICOM file with ``dciodvfy``; return the lines that report an error.

    Warnings (for example on our private coding scheme or on attributes newer than
    the installed dicom3tools) are not returned.
    """
    tool = require_tool("dciodvfy")
    proc = subprocess.run(
        [tool, str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    lines = (proc.stdout + proc.stderr).splitlines()
    return [line for line in lines if "Error" in line]
