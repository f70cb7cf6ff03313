"""CONFORMANCE.md embeds the accepted presentation contexts generated from the code."""

from __future__ import annotations

from pathlib import Path

from dicom_service.node.contexts import conformance_tables

REPO = Path(__file__).resolve().parents[2]


def test_conformance_statement_matches_the_code() -> None:
    text = (REPO / "CONFORMANCE.md").read_text(encoding="utf-8")
    assert conformance_tables().strip() in text, "run `dicom-service conformance` and update CONFORMANCE.md"
