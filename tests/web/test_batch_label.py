"""A batch label is kept as the person typed it ("Ward 4/5 morning"), not cut like a file name; it is
still made safe (no control or bidi characters, whitespace collapsed) and at most 200 characters,
and the batch page shows it escaped."""

from __future__ import annotations

import io

import pytest

from shared.config import Settings
from shared.intake import clean_label
from tests.web.support import make_app, upload


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (128, 128), 90).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("raw,stored", [
    ("Ward 4/5 morning", "Ward 4/5 morning"),
    (r"C:\scans\ward 7", r"C:\scans\ward 7"),
    ("  Ward\t4 \n night\u202e ", "Ward 4 night"),
    ("<b>ward</b> & \"ICU\"", "<b>ward</b> & \"ICU\""),
    ("\x00\x01", None),
    ("", None),
    ("x" * 500, "x" * 200),
])
def test_clean_label(raw: str, stored: str | None) -> None:
    assert clean_label(raw) == stored


def test_a_label_with_a_slash_is_stored_whole(settings: Settings) -> None:
    app, _ = make_app(settings)
    client = app.test_client()
    response = upload(client, [(_png(), "a.png")], label="Ward 4/5 <morning>")
    assert response.status_code == 201, response.get_json()
    batch_id = response.get_json()["batch_id"]
    assert client.get(f"/api/v1/batches/{batch_id}").get_json()["label"] == "Ward 4/5 <morning>"
    page = client.get(f"/batches/{batch_id}").get_data(as_text=True)
    assert "Ward 4/5 &lt;morning&gt;" in page and "<morning>" not in page
