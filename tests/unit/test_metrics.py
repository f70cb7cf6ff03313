"""GET /metrics on a running service: Prometheus text that follows what the node did."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from dicom_service.api.app import create_app
from dicom_service.service import Service
from tests import builders
from tests.conftest import TEST_TOKEN
from tests.dicomnet import store
from tests.integration.tools import wait_until

AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}
#: One sample line of the text exposition format: name, optional labels, a number.
SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? '
                    r'-?[0-9.e+-]+$')


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) dicom_service_[a-z_]+ ", line), line
            continue
        assert SAMPLE.match(line), f"not a Prometheus sample: {line!r}"
        name, value = line.rsplit(" ", 1)
        out[name] = float(value)
    return out


def test_metrics_follow_the_node(make_settings) -> None:
    settings = make_settings(models={"radiograph": "baseline"})
    with TestClient(create_app(Service(settings))) as client:
        assert client.get("/metrics").status_code == 401
        ds = builders.make_intraoral_radiograph()
        port = client.app.state.service.node.port
        assert store(port, ds) == 0 and store(port, ds) == 0  # the second is a duplicate

        def processed() -> dict[str, float] | None:
            response = client.get("/metrics", headers=AUTH)
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
            samples = _samples(response.text)
            return samples if samples.get('dicom_service_jobs{kind="process",state="succeeded"}') == 1 else None

        samples = wait_until(processed, 60.0, interval=0.1, what="the process job in /metrics")
    assert samples['dicom_service_instances_received_total{result="new"}'] == 1
    assert samples['dicom_service_instances_received_total{result="duplicate"}'] == 1
    assert samples["dicom_service_instances_held"] == 1 and samples["dicom_service_studies_held"] == 1
    assert samples["dicom_service_ready"] == 1
    assert samples['dicom_service_job_attempt_seconds_count{kind="process",ok="true"}'] == 1
    assert samples['dicom_service_job_attempt_seconds_sum{kind="process",ok="true"}'] > 0
    assert samples["dicom_service_storage_free_bytes"] > 0
    assert str(ds.StudyInstanceUID) not in "".join(samples)  # counts only, no identifiers
