"""The correction pages: served without a token, with their scripts and security headers;
their logic tested under node (tests/js/), their wiring at least parsed."""

from __future__ import annotations

import subprocess
from pathlib import Path

from fastapi.testclient import TestClient

from dicom_service.api.app import create_app
from dicom_service.api.routers.ui import SCRIPTS, STATIC_DIR
from dicom_service.service import Service
from tests.dicomcheck import require_tool

REPO = Path(__file__).resolve().parents[2]


def test_page_logic_under_node() -> None:
    node = require_tool("node", "nodejs")
    tests = [str(REPO / "tests" / "js" / name) for name in ("correct_logic.test.js", "implants_logic.test.js")]
    proc = subprocess.run([node, "--test", *tests], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "# fail 0" in proc.stdout and "# pass 14" in proc.stdout
    for script in SCRIPTS:
        check = subprocess.run([node, "--check", str(STATIC_DIR / script)], capture_output=True, text=True,
                               timeout=60, check=False)
        assert check.returncode == 0, check.stderr


def test_page_and_scripts_are_served(make_settings) -> None:
    with TestClient(create_app(Service(make_settings()))) as client:
        page = client.get("/ui/correct")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert 'src="static/correct_logic.js"' in page.text and 'src="static/correct.js"' in page.text
        for script in ("correct_logic.js", "page_common.js", "correct.js"):
            served = client.get(f"/ui/static/{script}")
            assert served.status_code == 200 and served.text == (STATIC_DIR / script).read_text(encoding="utf-8")
            assert served.headers["x-content-type-options"] == "nosniff"
        icon = client.get("/ui/static/favicon.svg")
        assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml"
        assert 'href="static/favicon.svg"' in page.text
        slash = client.get("/ui/correct/", follow_redirects=False)
        assert slash.status_code == 308 and slash.headers["location"] == "../correct"  # relative: proxy-proof
        assert client.get("/ui/correct/").url.path == "/ui/correct"
        assert client.get("/ui/static/../routers/ui.py").status_code == 404
        assert client.get("/ui/static/missing.js").status_code == 404
        assert client.get("/ui/static/correct.html").status_code == 404  # only via /ui/correct, with its headers
        review = client.get("/ui/implants")
        assert review.status_code == 200 and "frame-ancestors 'none'" in review.headers["content-security-policy"]
        for script in ("correct_logic.js", "page_common.js", "implants_logic.js", "implants.js"):
            assert f'src="static/{script}"' in review.text
            assert client.get(f"/ui/static/{script}").status_code == 200
