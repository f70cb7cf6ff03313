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


def in_ci() -> bool:
    """True when the environment says ``CI=true`` (missing tools then fail, never skip)."""
    return os.environ.get("CI", "").strip().lower() == "true"


def require_tool(name: str, package: str = "") -> str:
    """Absolute path of an executable, or skip the test (fail it under ``CI=true``).

    Parameters
    ----------
    name : str
        Executable name looked up on ``PATH`` (``/usr/sbin`` included, for Orthanc).
    package : str
        Debian package that provides it, for the message.
    """
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    found = shutil.which(name, path=search)
    if found is None:
        message = f"{name}{f' (Debian package {package})' if package else ''} is not installed"
        if in_ci():
            pytest.fail(f"{message}; it is required when CI=true")
        pytest.skip(message)
    return found


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


def require_module(name: str):  # noqa: ANN201 - returns the module
    """Import a Python module, or skip the calling test module (fail under ``CI=true``)."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        if in_ci():
            pytest.fail(f"Python module {name} is required when CI=true", pytrace=False)
        pytest.skip(f"Python module {name} is not installed", allow_module_level=True)
