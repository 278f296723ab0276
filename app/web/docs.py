"""/docs (Swagger UI) and /redoc (ReDoc) from assets installed with the package.

FastAPI's own pages load Swagger UI, ReDoc, a favicon and Google Fonts from CDNs, so on a
machine without internet access they are blank. The built assets come from the
`fastapi-offline` package (a pinned runtime dependency: Swagger UI and ReDoc's standalone
bundle as package data, upgraded with pip like everything else) and are served from
/static/docs. Each page also carries a Content-Security-Policy that lets it load nothing but
this server's own URLs, so a future asset that tries to reach out is refused by the browser.
ReDoc's bundle has one such URL built in, the vendor logo in its sidebar footer (no option
turns it off), which a browser would still try (and a CSP refusal still shows as an attempted
request): the bundle is served with that URL replaced by an empty inline image.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

STATIC_URL = "/static/docs"

# Only this origin; inline script and styles are what Swagger UI's page and ReDoc's
# styled-components use; data: and blob: for their icons and ReDoc's search worker.
CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; "
       "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; "
       "worker-src 'self' blob:; connect-src 'self'; frame-ancestors 'self'")

SWAGGER_PARAMETERS = {
    # No badge from the public validator service (a request to another host).
    "validatorUrl": None,
    "docExpansion": "list",
    "deepLinking": True,
    "displayOperationId": True,
    "defaultModelsExpandDepth": 0,
    "tryItOutEnabled": False,
    "displayRequestDuration": True,
}


REDOC_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
EMPTY_IMAGE = b"data:image/svg+xml,%3Csvg xmlns=%27http://www.w3.org/2000/svg%27/%3E"


@cache
def redoc_bundle() -> bytes:
    """ReDoc's standalone bundle with its one built-in remote URL made local."""
    return (asset_dir() / "redoc.standalone.js").read_bytes().replace(REDOC_LOGO, EMPTY_IMAGE)


def asset_dir() -> Path:
    """Where fastapi-offline installed the Swagger UI and ReDoc bundles."""
    return Path(str(files("fastapi_offline") / "static"))


def install(app: FastAPI) -> None:
    """Add /docs, /redoc and the static assets they load (none in the OpenAPI document).
    The app must be built with docs_url=None and redoc_url=None."""
    title = app.title

    # Before the mount: Starlette takes the first route that matches.
    @app.get(f"{STATIC_URL}/redoc.standalone.js", include_in_schema=False)
    async def redoc_js() -> Response:
        return Response(redoc_bundle(), media_type="text/javascript",
                        headers={"cache-control": "public, max-age=3600"})

    app.mount(STATIC_URL, StaticFiles(directory=asset_dir()), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        spec, static = _urls(request, app)
        return _same_origin(get_swagger_ui_html(
            openapi_url=spec, title=f"{title} - Swagger UI",
            swagger_js_url=f"{static}/swagger-ui-bundle.js",
            swagger_css_url=f"{static}/swagger-ui.css",
            swagger_favicon_url=f"{static}/favicon.png",
            swagger_ui_parameters=SWAGGER_PARAMETERS))

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        spec, static = _urls(request, app)
        return _same_origin(get_redoc_html(
            openapi_url=spec, title=f"{title} - ReDoc",
            redoc_js_url=f"{static}/redoc.standalone.js",
            redoc_favicon_url=f"{static}/favicon.png", with_google_fonts=False))


def _urls(request: Request, app: FastAPI) -> tuple[str, str]:
    """The OpenAPI document's and the assets' URLs under the app's root path."""
    root = request.scope.get("root_path", "")
    return f"{root}{app.openapi_url}", f"{root}{STATIC_URL}"


def _same_origin(page: HTMLResponse) -> HTMLResponse:
    page.headers["content-security-policy"] = CSP
    return page
