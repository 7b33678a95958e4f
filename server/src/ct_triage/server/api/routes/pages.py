"""The worklist web page (HTML shell + JS + CSS; the data comes from the API with a token).

The page itself holds no data, so it is served without a token: the browser cannot send an
``Authorization`` header when navigating. The script asks for the token once, keeps it in
``sessionStorage`` and sends it with every API call.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, RedirectResponse, Response

router = APIRouter(include_in_schema=False)

_STATIC = files("ct_triage.server.api") / "static"
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _asset(name: str, media_type: str) -> Response:
    return Response(
        content=(_STATIC / name).read_bytes(),
        media_type=media_type,
        headers={"Cache-Control": "no-cache", "Content-Security-Policy": _CSP},
    )


@router.get("/")
async def root() -> RedirectResponse:
    """Redirect to the worklist page."""
    return RedirectResponse("/worklist", status_code=307)


@router.get("/worklist", response_class=HTMLResponse)
async def worklist_page() -> Response:
    """The worklist page."""
    return _asset("worklist.html", "text/html; charset=utf-8")


@router.get("/static/worklist.js")
async def worklist_js() -> Response:
    """The worklist script."""
    return _asset("worklist.js", "text/javascript; charset=utf-8")


@router.get("/static/worklist.css")
async def worklist_css() -> Response:
    """The worklist style sheet."""
    return _asset("worklist.css", "text/css; charset=utf-8")
