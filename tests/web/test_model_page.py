"""The model page: the served bundle's card in readable form (use, data, split, version, workers,
per-finding AUROC with intervals, thresholds, calibration, ROC and reliability charts)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from markupsafe import escape

from shared.classifier import CARD_FILE, read_card
from shared.config import Settings
from tests.web.support import make_app

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo"


def _bundle_copy(tmp_path: Path) -> Path:
    """The demo's card and charts (not its weights: the page never loads them)."""
    target = tmp_path / "bundle"
    target.mkdir()
    for name in (CARD_FILE, "roc.png", "reliability.png"):
        if (DEMO / name).is_file():
            shutil.copy(DEMO / name, target / name)
    return target


def test_model_page_shows_the_card(settings: Settings, tmp_path: Path) -> None:
    bundle = _bundle_copy(tmp_path)
    app, _ = make_app(dataclasses.replace(settings, model_dir=bundle))
    client = app.test_client()
    card = read_card(bundle)
    html = client.get("/model").get_data(as_text=True)
    assert card.version in html and str(escape(card.intended_use)) in html
    assert 'id="per-finding"' in html and html.count("<tr><td>") >= 14
    assert "resampling patients" in html and 'id="mean-auroc"' in html
    assert 'href="/model"' in html  # in the navigation
    for name in ("roc", "reliability"):
        if (bundle / f"{name}.png").is_file():
            assert f'src="/model/charts/{name}.png"' in html
            response = client.get(f"/model/charts/{name}.png")
            assert response.status_code == 200 and response.data[:4] == b"\x89PNG"
    assert client.get("/model/charts/weights.png").status_code == 404


def test_model_page_without_a_bundle_says_why(settings: Settings, tmp_path: Path) -> None:
    app, _ = make_app(dataclasses.replace(settings, model_dir=tmp_path / "missing"))
    response = app.test_client().get("/model")
    assert response.status_code == 503 and "no model bundle" in response.get_data(as_text=True)
