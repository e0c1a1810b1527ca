"""GET /docs: the API's interactive documentation (Swagger UI), served by the app itself.

Swagger UI's files come from the pinned `swagger-ui-bundle` package (no CDN: the page works
offline and under the app's `default-src 'self'` Content-Security-Policy). Its initializer is a
static file (app/static/api_docs.js); the page reads /api/v1/openapi.json, whose examples are
taken from the served model (app/examples.py), so "Try it out" works as shown.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, abort, render_template, send_from_directory
from swagger_ui_bundle import swagger_ui_path

from app.state import serving_state

docs = Blueprint("docs", __name__)
SWAGGER_UI_DIR = Path(str(swagger_ui_path))
SWAGGER_UI_VERSION = SWAGGER_UI_DIR.name.removeprefix("swagger-ui-")  # the package names its folder by version
SWAGGER_UI_FILES = frozenset({"swagger-ui.css", "swagger-ui-bundle.js"})  # all the page needs
ASSET_MAX_AGE_S = 24 * 3600


@docs.get("/docs")
def api_docs():
    # without a model its examples are the README's defaults and every forecast is a 503: the page says so
    return render_template("docs.html", swagger_ui_version=SWAGGER_UI_VERSION,
                           model_loaded=serving_state().predictor.model is not None)


@docs.get("/docs/swagger-ui/<name>")
def swagger_ui_asset(name: str):
    if name not in SWAGGER_UI_FILES:
        abort(404)
    return send_from_directory(SWAGGER_UI_DIR, name, max_age=ASSET_MAX_AGE_S)
