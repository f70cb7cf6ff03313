"""Settings: defaults, YAML, environment precedence and error messages naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_service.config import Settings, apply_overrides, load_settings, make_folder
from dicom_service.domain import ConfigError, Workflow

REPO = Path(__file__).resolve().parents[2]


def test_defaults_match_the_issue() -> None:
    s = load_settings(None)
    assert (s.dicom.ae_title, s.dicom.port, s.http.port) == ("DENTAL_AI", 11112, 8000)
    assert s.storage.path == Path("./var")
    assert s.routing.stability_seconds == 10
    assert s.device == "auto"


def test_annotated_example_is_valid() -> None:
    s = load_settings(REPO / "deploy" / "config.example.yaml")
    assert s.destinations[0].ae_title == "ORTHANC"
    assert Workflow.RADIOGRAPH in s.destinations[0].workflows


def test_environment_overrides_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("dicom:\n  port: 11113\n  ae_title: FROM_FILE\n")
    monkeypatch.setenv("DICOM_SERVICE_DICOM__PORT", "11114")
    s = load_settings(cfg)
    assert s.dicom.port == 11114
    assert s.dicom.ae_title == "FROM_FILE"


def test_config_file_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("log_level: DEBUG\n")
    monkeypatch.setenv("DICOM_SERVICE_CONFIG", str(cfg))
    assert load_settings().log_level == "DEBUG"


@pytest.mark.parametrize(
    ("yaml_text", "key"),
    [
        ("dicom:\n  port: 70000\n", "dicom.port"),
        ("dicom:\n  portt: 1\n", "dicom.portt"),
        ("dicom:\n  ae_title: THIS_TITLE_IS_FAR_TOO_LONG\n", "dicom.ae_title"),
        ("dicom:\n  accepted_calling_aets: ['BAD\\\\AE']\n", "dicom.accepted_calling_aets"),
        ("http:\n  tokens: [short]\n", "http"),
        ("routing:\n  default_workflow: teleport\n", "routing.default_workflow"),
        ("destinations:\n  - {name: a, ae_title: X, host: h, port: 1}\n"
         "  - {name: a, ae_title: Y, host: h, port: 2}\n", "destinations"),
        ("destinations:\n  - {name: a, ae_title: X, host: h, port: 1, results: [pdf]}\n",
         "destinations.0.results.0"),
        ("device: tpu\n", "device"),
        ("models:\n  precision: int8\n", "models.precision"),
        ("models:\n  compile: maybe\n", "models.compile"),
        ("models:\n  stabilisation_seconds: 0\n", "models.stabilisation_seconds"),
        ("models:\n  stabilisation_seconds: 60\n", "models.stabilisation_seconds"),
        ("models:\n  segment_every: 0\n", "models.segment_every"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, yaml_text: str, key: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert key in str(info.value)


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("dicom: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(listy)


def test_default_stabilisation_length_is_the_runtimes_default() -> None:
    from dicom_service.vision.stabilisation import DEFAULT_SMOOTHING_SECONDS

    assert Settings().models.stabilisation_seconds == DEFAULT_SMOOTHING_SECONDS


def test_overrides_are_validated_and_win_over_environment_and_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("storage:\n  path: from-file\nhttp:\n  port: 8001\n")
    monkeypatch.setenv("DICOM_SERVICE_STORAGE__PATH", "from-env")
    monkeypatch.setenv("DICOM_SERVICE_DICOM__PORT", "11114")
    settings = load_settings(cfg)
    assert (settings.storage.path, settings.dicom.port) == (Path("from-env"), 11114)
    flagged = apply_overrides(settings, {"storage": {"path": tmp_path / "flag"}, "dicom": {"port": 11115},
                                         "http": {"port": 8002}})
    assert (flagged.storage.path, flagged.dicom.port, flagged.http.port) == (tmp_path / "flag", 11115, 8002)
    assert flagged.storage.min_free_mb == settings.storage.min_free_mb  # the rest of the section kept
    for section, value, key in (("dicom", 99999, "dicom.port"), ("dicom", -5, "dicom.port"),
                                ("http", 99999, "http.port")):
        with pytest.raises(ConfigError, match=key):
            apply_overrides(settings, {section: {"port": value}})


@pytest.mark.parametrize("name", ["DICOM_SERVICE_FOO", "DICOM_SERVICE_DICOM_PORT", "dicom_service_dicom_port"])
def test_unknown_environment_variable_is_refused(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "1")
    with pytest.raises(ConfigError, match=f"unknown environment variable.*{name}"):
        load_settings(None)


@pytest.mark.parametrize(("name", "value"), [
    ("DICOM_SERVICE_DESTINATIONS", "[{"),
    ("DICOM_SERVICE_DICOM", "notjson"),
    ("DICOM_SERVICE_DICOM__ACCEPTED_CALLING_AETS", "[bad"),
])
def test_malformed_json_in_environment_names_the_variable(
        monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=f"environment variable {name}: not valid JSON"):
        load_settings(None)


def test_make_folder_names_the_file_in_the_way(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert make_folder(tmp_path / "a" / "b", "storage.path").is_dir()
    for target in (blocker, blocker / "sub"):
        with pytest.raises(ConfigError, match=f"storage.path: cannot create the folder {target}: {blocker} is a file"):
            make_folder(target, "storage.path")
