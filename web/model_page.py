"""GET /model: the served model's card in readable form for radiologists and admins (intended use,
data, split, version, the runtime and version each worker serves, per-finding AUROC with intervals,
thresholds, calibration, the ROC curves and the reliability diagram); GET /model/charts/<name>
serves those two charts from the bundle folder."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, abort, render_template, send_file
from werkzeug.wrappers import Response

from shared.classifier import BundleError, ModelCard, read_card
from shared.findings import DISPLAY_NAMES, FINDINGS
from web.context import services

log = logging.getLogger(__name__)
bp = Blueprint("model", __name__)
CHARTS = {"roc": "roc.png", "reliability": "reliability.png"}


def _workers() -> list[dict[str, Any]] | None:
    """What each live worker serves (its heartbeat); None when Redis cannot be asked."""
    from web.health import worker_heartbeats as heartbeats

    try:
        return heartbeats(services())
    except Exception as exc:  # no Redis configured or reachable: the page still shows the card
        log.warning("model page: worker heartbeats unavailable (%s)", type(exc).__name__)
        return None


def finding_rows(card: ModelCard) -> list[dict[str, Any]]:
    """One row per finding: test AUROC and interval, positives, threshold and how it was chosen."""
    metrics = card.metrics or {}
    test = metrics.get("test", {}).get("per_finding", {})
    sources = metrics.get("threshold_sources", {})
    return [
        {
            "label": label,
            "display_name": DISPLAY_NAMES[label],
            "threshold": card.thresholds[label],
            "threshold_source": sources.get(label, ""),
            **{key: test.get(label, {}).get(key) for key in ("auroc", "auroc_ci95", "n_positive",
                                                             "n_positive_patients", "precision", "recall")},
        }
        for label in FINDINGS
    ]


@bp.get("/model")
def page() -> str:
    directory = services().settings.model_dir
    try:
        card = read_card(directory)
    except BundleError as exc:
        abort(503, description=f"The model bundle cannot be read: {exc}")
    charts = {name: (directory / file).is_file() for name, file in CHARTS.items()}
    return render_template("model.html", card=card, rows=finding_rows(card), metrics=card.metrics or {},
                           training=card.training or {}, workers=_workers(), charts=charts)


@bp.get("/model/charts/<name>.png")
def chart(name: str) -> Response:
    file = CHARTS.get(name)
    path = services().settings.model_dir / file if file else None
    if path is None or not path.is_file():
        abort(404, description=f"The model bundle has no {name} chart.")
    return send_file(path, mimetype="image/png", max_age=0)
