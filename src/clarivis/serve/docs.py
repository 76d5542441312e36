"""The API docs, /docs (Swagger UI) and /redoc (ReDoc), from files served by the service itself
under /docs-assets: FastAPI's own pages load their scripts from a CDN, which a machine without
internet (or a browser that blocks third parties) cannot reach. The files come from the
fastapi-offline package (the serve extra); nothing on the pages names another host, and Swagger
UI's online validator badge is off (it would send the schema's URL to swagger.io)."""

from __future__ import annotations

from importlib.resources import files

from clarivis.extras import needs

with needs("serve", "clarivis serve"):
    from fastapi import FastAPI, Request
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
    from fastapi.responses import HTMLResponse
    from fastapi.staticfiles import StaticFiles

ASSETS = "/docs-assets"
ASSET_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")


def add_docs_routes(app: FastAPI) -> None:
    """/docs, /redoc and their files; create the app with docs_url=None, redoc_url=None."""
    folder = files("fastapi_offline") / "static"
    app.mount(ASSETS, StaticFiles(directory=str(folder)), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = _root(request)
        return get_swagger_ui_html(
            openapi_url=root + openapi_url, title=f"{app.title}: API",
            swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None})

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = _root(request)
        return get_redoc_html(openapi_url=root + openapi_url, title=f"{app.title}: API",
                              redoc_js_url=f"{root}{ASSETS}/redoc.standalone.js",
                              redoc_favicon_url=f"{root}{ASSETS}/favicon.png", with_google_fonts=False)


def _root(request: Request) -> str:
    """The path prefix a reverse proxy serves the app under (uvicorn --root-path), or ''."""
    return str(request.scope.get("root_path", "")).rstrip("/")
