"""The correction pages, in a browser: a dentist's clicks and boxes on a frame of a photo or
video (``/ui/correct``), and their review of the implants found on a radiograph
(``/ui/implants``).

The pages hold no data and need no token; everything it shows or sends goes
through the authenticated API (the dentist types the token in, kept for the browser
tab's session only). Static files: ``api/static``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import FileResponse, RedirectResponse

#: The page's HTML and scripts.
STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
#: Only this server's scripts, images from this server or the page's own blobs, no framing.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; style-src 'self' 'unsafe-inline'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

router = APIRouter(tags=["correction page"])


@router.get("/ui/correct", response_class=FileResponse, summary="The correction page (HTML)")
def correction_page() -> FileResponse:
    return FileResponse(STATIC_DIR / "correct.html", media_type="text/html; charset=utf-8",
                        headers=SECURITY_HEADERS)


@router.get("/ui/implants", response_class=FileResponse, summary="The implant review page (HTML)")
def implant_review_page() -> FileResponse:
    return FileResponse(STATIC_DIR / "implants.html", media_type="text/html; charset=utf-8",
                        headers=SECURITY_HEADERS)


@router.get("/ui/correct/", include_in_schema=False)
def correction_page_slash() -> RedirectResponse:
    """``/ui/correct/`` → the page, by a relative redirect: the page's scripts are relative
    (``static/…``) and must resolve under ``/ui/``, and a relative ``Location`` stays right
    behind a reverse proxy that changes the scheme, host or path prefix."""
    return RedirectResponse("../correct", status_code=status.HTTP_308_PERMANENT_REDIRECT)


#: The scripts the pages load and their icon; nothing else under ``static`` is served.
SCRIPTS = ("correct.js", "correct_logic.js", "implants.js", "implants_logic.js", "page_common.js")
ICON = "favicon.svg"


@router.get("/ui/static/{name}", response_class=FileResponse, summary="A script (or the icon) of the correction page",
            responses={404: {"description": "Not one of the page's scripts"}})
def page_script(name: str) -> FileResponse:
    if name == ICON:
        return FileResponse(STATIC_DIR / name, media_type="image/svg+xml", headers=SECURITY_HEADERS)
    if name not in SCRIPTS:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such script")
    return FileResponse(STATIC_DIR / name, media_type="text/javascript; charset=utf-8", headers=SECURITY_HEADERS)
