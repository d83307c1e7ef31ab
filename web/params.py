"""Bounds on the numbers clients send in paths and query strings.

Ids are the database's INTEGER columns (32-bit in PostgreSQL; SQLite overflows at 64 bits), so a
larger number names nothing: a route answers 404 and a query parameter 400, before any query runs,
instead of an overflow deep in the driver (500).
"""

from __future__ import annotations

from typing import Any

from flask import Flask
from werkzeug.routing import IntegerConverter, Map

MAX_ID = 2**31 - 1


class IdConverter(IntegerConverter):
    """`<int:...>` in every route: a whole number from 0 to MAX_ID; anything larger does not match (404)."""

    def __init__(self, url_map: Map, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("max", MAX_ID)
        super().__init__(url_map, *args, **kwargs)


def register_converters(app: Flask) -> None:
    """Call before any blueprint is registered: rules pick their converter when they are added."""
    app.url_map.converters["int"] = IdConverter
