"""Suite-wide fixtures: strict pydicom, settings in a temporary folder, a running service."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom.config
import pytest

from dicom_service.config import Settings, load_settings
from tests.tlscerts import Pki, make_pki

TEST_TOKEN = "test-token-0123456789abcdef"


@pytest.fixture(autouse=True, scope="session")
def _strict_pydicom() -> Iterator[None]:
    """Writing invalid values raises for the whole suite (as highdicom's suite does)."""
    old = pydicom.config.settings.writing_validation_mode
    pydicom.config.settings.writing_validation_mode = pydicom.config.RAISE
    yield
    pydicom.config.settings.writing_validation_mode = old


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Build settings with storage in ``tmp_path``, free ports and a test token.

    Keyword arguments are top-level sections merged over those defaults, e.g.
    ``make_settings(routing={"stability_seconds": 0})``.
    """

    def build(**sections: dict) -> Settings:
        base: dict = {
            "dicom": {"port": 0, "bind_address": "127.0.0.1"},
            "http": {"tokens": [TEST_TOKEN]},
            "storage": {"path": str(tmp_path / "var"), "min_free_mb": 0},
            "routing": {"stability_seconds": 0.2},
            "retry": {"backoff_initial": 0.1, "backoff_max": 0.5},
            "workers": {"poll_seconds": 0.05},
        }
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                base[key] = {**base[key], **value}
            else:
                base[key] = value
        return load_settings(None, **base)

    return build


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A test authority and certificates for TLS (``tests.tlscerts``), made once per run."""
    return make_pki(tmp_path_factory.mktemp("pki"))
