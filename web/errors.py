"""Errors: JSON `{"error": "..."}` on every /api/ route; Flask's pages elsewhere."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException, InternalServerError, RequestEntityTooLarge

from web.request import FormLimitExceeded

log = logging.getLogger(__name__)


def _is_api() -> bool:
    return request.path.startswith("/api/")


def register_error_handlers(app: Flask) -> None:
    max_mib = app.config["MAX_CONTENT_LENGTH"] // (1024 * 1024)

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc: RequestEntityTooLarge) -> tuple[Response, int] | HTTPException:
        message = exc.description if isinstance(exc, FormLimitExceeded) else (
            f"The upload is larger than the {max_mib} MiB limit per request: send fewer files at a time.")
        if _is_api():
            return jsonify(error=message), 413
        exc.description = message
        return exc

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int] | HTTPException:
        if not _is_api():
            return exc
        response = jsonify(error=exc.description or exc.name)
        if exc.code == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        return response, exc.code or 500

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> tuple[Response, int] | HTTPException:
        log.exception("unhandled error on %s %s", request.method, request.path)
        if not _is_api():
            return InternalServerError()
        return jsonify(error="Something went wrong on the server; it has been logged. Please retry."), 500
