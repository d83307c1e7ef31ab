"""Response headers (CSP without inline scripts) and a cross-site request guard for the API.

A layer in front of the login gate and its CSRF tokens (web/auth.py): unsafe requests whose Origin
(or Sec-Fetch-Site) says cross-site are refused before anything else. Non-browser clients (the CLI,
curl) send neither header and pass on to the gate.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Flask, Response, abort, request

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


def _cross_site() -> bool:
    if request.headers.get("Sec-Fetch-Site") == "cross-site":
        return True
    origin = request.headers.get("Origin")
    if not origin:
        return False
    if origin == "null":
        return True
    return urlsplit(origin).netloc.lower() != request.host.lower()


def register_security(app: Flask) -> None:
    @app.before_request
    def refuse_cross_site() -> None:
        if request.method not in SAFE_METHODS and _cross_site():
            abort(403, description="Cross-site requests are not accepted.")

    @app.after_request
    def headers(response: Response) -> Response:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Content-Security-Policy", CSP)
        return response
