"""Prometheus metrics (text exposition format 0.0.4), computed when scraped.

Scrape with the API's bearer token (Prometheus: ``authorization: {credentials: ...}``).
Every value is a count, a size or a duration: no UIDs, no patient data.
"""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from dicom_service import __version__
from dicom_service.api.auth import Authenticated
from dicom_service.service import Service

router = APIRouter(tags=["metrics"], dependencies=[Authenticated])

PREFIX = "dicom_service"


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    """An exact text for a sample value (integers as integers, no rounding)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _family(name: str, kind: str, help_text: str, samples: Iterable[tuple[dict[str, str], float]]) -> list[str]:
    """``# HELP``/``# TYPE`` lines and one line per sample of a metric family."""
    lines = [f"# HELP {PREFIX}_{name} {help_text}", f"# TYPE {PREFIX}_{name} {kind}"]
    for labels, value in samples:
        text = ",".join(f'{k}="{_label_value(v)}"' for k, v in labels.items())
        lines.append(f"{PREFIX}_{name}{{{text}}} {_number(value)}" if text else f"{PREFIX}_{name} {_number(value)}")
    return lines


def exposition(service: Service) -> str:
    """The metrics of a running service, as Prometheus text."""
    lines: list[str] = []
    lines += _family("build_info", "gauge", "Version of the service (value 1).", [({"version": __version__}, 1)])
    checks = service.readiness()
    lines += _family("ready", "gauge", "1 when every readiness check passes.", [({}, float(all(checks.values())))])
    lines += _family("readiness_check", "gauge", "Each readiness check (1 passes).",
                     [({"check": name}, float(ok)) for name, ok in checks.items()])
    received = service.received_counts()
    lines += _family("instances_received_total", "counter", "C-STORE instances stored since the start, by result.",
                     [({"result": k}, v) for k, v in received.items()])
    store, queue, node = service.store, service.queue, service.node
    if store is not None:
        counts = store.counts()
        lines += _family("instances_held", "gauge", "Received instances held in storage.", [({}, counts["instances"])])
        lines += _family("studies_held", "gauge", "Studies held in storage.", [({}, counts["studies"])])
        lines += _family("storage_free_bytes", "gauge", "Free bytes on the storage volume.", [({}, store.free_bytes())])
    if node is not None:
        lines += _family("dicom_associations_active", "gauge", "Inbound DICOM associations now open.",
                         [({}, len(node.ae.active_associations))])
    audit = service.audit
    if audit is not None:
        lines += _family("audit_rows_lost_total", "counter", "Audit trail rows that could not be written since the "
                         "start (each logged); alert on any.", [({}, audit.lost)])
    forwarder = service.audit_forwarder
    if forwarder is not None:
        labels = {"repository": forwarder.repository.address}
        lines += _family("audit_messages_sent_total", "counter", "Audit messages sent to the audit record "
                         "repository since the start.", [(labels, forwarder.forwarded)])
        lines += _family("audit_messages_backlog", "gauge", "Audit trail rows not yet sent to the repository "
                         "(they wait in the trail; alert when it grows).", [(labels, forwarder.backlog())])
        lines += _family("audit_repository_up", "gauge", "1 when the last try to send audit messages succeeded.",
                         [(labels, float(forwarder.up))])
    if queue is not None:
        lines += _family("jobs", "gauge", "Jobs by kind and state.",
                         [({"kind": k, "state": s}, n) for (k, s), n in sorted(queue.kind_counts().items())])
        lines += _family("job_attempt_seconds", "summary", "Finished job attempts by kind and outcome: their "
                         "number (_count) and total seconds (_sum).", [])
        for (kind, ok), (count, total) in sorted(queue.attempt_seconds().items()):
            labels = f'kind="{kind}",ok="{str(ok).lower()}"'
            lines += [f"{PREFIX}_job_attempt_seconds_sum{{{labels}}} {_number(total)}",
                      f"{PREFIX}_job_attempt_seconds_count{{{labels}}} {count}"]
    return "\n".join(lines) + "\n"


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
def metrics(request: Request) -> PlainTextResponse:
    return PlainTextResponse(exposition(request.app.state.service),
                             media_type="text/plain; version=0.0.4; charset=utf-8")
