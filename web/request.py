"""The request class of the web: where uploaded files wait while the form is parsed, and which form
limit a refused request went over.

- Werkzeug spools each file part larger than 500 KiB to a temporary file in the system temp folder,
  raw (identifiable) and readable by whoever can read that folder's files. Here such parts go to
  `<XRAY_VAR_DIR>/spool` (mode 0700, made at start), as unnamed files (O_TMPFILE where the kernel
  has it, else unlinked at once): nothing is left behind by a crash, and the bytes are gone when the
  request ends. Smaller parts stay in memory, as with Werkzeug.
- Werkzeug answers every form limit with the same 413. `FormLimitExceeded` says which one: the
  request's size, the number of parts, or a text field's size.
"""

from __future__ import annotations

import io
import os
import tempfile
import traceback
from pathlib import Path
from typing import IO

from flask import Flask, Request, current_app
from werkzeug.exceptions import RequestEntityTooLarge

SPOOL_DIR_KEY = "XRAY_UPLOAD_SPOOL_DIR"
IN_MEMORY_BYTES = 500 * 1024  # Werkzeug's own threshold for keeping a part in memory


class FormLimitExceeded(RequestEntityTooLarge):
    """A 413 whose description names the limit that was exceeded, for a person."""


def make_spool_dir(var_dir: Path) -> Path:
    """The private folder for uploads in transit: made 0700 (and set to it if it already existed)."""
    spool = var_dir / "spool"
    spool.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(spool, 0o700)
    return spool


def _limit_reason(request: Request, exc: RequestEntityTooLarge) -> str:
    limit = request.max_content_length
    size = (f"The upload is larger than the {limit // (1024 * 1024)} MiB limit per request: send fewer files "
            "at a time.") if limit else "The upload is too large."
    if request.content_length is not None and limit is not None and request.content_length > limit:
        return size
    # Werkzeug raises the same exception for each limit: where it was raised tells them apart.
    where = traceback.extract_tb(exc.__traceback__)[-1].name if exc.__traceback__ else ""
    if where == "next_event":
        return (f"The upload has more than {request.max_form_parts} parts (files and form fields) in one request: "
                "send at most that many files at a time.")
    if where in {"receive_data", "parse"}:
        kib = (request.max_form_memory_size or 0) // 1024
        return f"A form field other than the files is larger than the {kib} KiB limit."
    return size


class XrayRequest(Request):
    def _get_file_stream(self, total_content_length: int | None, content_type: str | None,
                         filename: str | None = None, content_length: int | None = None) -> IO[bytes]:
        if total_content_length is not None and total_content_length <= IN_MEMORY_BYTES:
            return io.BytesIO()
        return tempfile.TemporaryFile("rb+", dir=current_app.config[SPOOL_DIR_KEY])

    def _load_form_data(self) -> None:
        try:
            super()._load_form_data()
        except FormLimitExceeded:
            raise
        except RequestEntityTooLarge as exc:
            raise FormLimitExceeded(_limit_reason(self, exc)) from exc


def install(app: Flask, var_dir: Path) -> None:
    app.request_class = XrayRequest
    app.config[SPOOL_DIR_KEY] = str(make_spool_dir(var_dir))
