"""`/docs` without the internet: Swagger UI's files come from the `swagger-ui-bundle-v2` package
(Swagger UI 5, which reads FastAPI's OpenAPI 3.1) and are served by this app; FastAPI's default
page loads them from a CDN, so offline it is blank."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.staticfiles import StaticFiles


def add_offline_docs(app: FastAPI) -> None:
    """Serve the interactive API docs at /docs from local files (ReDoc, CDN-only, is left out)."""
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/static/swagger", StaticFiles(directory=swagger_ui_path), name="swagger")

    @app.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title="qscope API",
                                   swagger_js_url="/static/swagger/swagger-ui-bundle.js",
                                   swagger_css_url="/static/swagger/swagger-ui.css",
                                   swagger_favicon_url="/static/favicon.svg")
